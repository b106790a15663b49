//! The delta protocol over HTTP: snapshots and deltas reproduce the agent's state on the
//! collector; a replayed report changes nothing; a gap makes the collector ask for a snapshot;
//! reports the agent dropped become a data_lost finding.

use hostwatch_proto::v1::{self as proto, Changes, Delta, ProcessKey, Removed};
use time::OffsetDateTime;

use crate::support::{Collector, on_both_stores};

struct Agent<'a> {
    c: &'a Collector,
    key: String,
    host_id: i64,
    session: u64,
}

fn facts() -> proto::HostFacts {
    proto::HostFacts::new("protocol-host", "m-protocol")
}

fn status() -> proto::AgentStatus {
    proto::AgentStatus::new("0.0.1", 10, OffsetDateTime::now_utc())
}

fn process(pid: u32, name: &str) -> proto::Process {
    let start =
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000) + time::Duration::seconds(i64::from(pid));
    proto::Process {
        exe: Some(format!("/opt/{name}")),
        cmdline: vec![format!("/opt/{name}"), "--serve".into()],
        user: Some("root".into()),
        ..proto::Process::new(pid, 1, name, 0, start)
    }
}

impl Agent<'_> {
    async fn send(
        &self,
        seq: u64,
        snapshot: Option<Vec<proto::Process>>,
        delta: Option<Delta>,
        lost: u64,
    ) -> proto::ReportResponse {
        let now = OffsetDateTime::now_utc();
        let report = proto::Report {
            session: self.session,
            seq,
            sent_at: now,
            host: facts(),
            agent: status(),
            snapshot: snapshot.map(|processes| proto::Snapshot {
                taken_at: now,
                processes,
                listeners: vec![],
                connections: vec![],
            }),
            delta,
            lost,
            goodbye: None,
        };
        let (code, body) =
            self.c.post(proto::REPORT_PATH, Some(&self.key), serde_json::to_vec(&report).unwrap()).await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn pids(&self) -> Vec<u32> {
        let d: proto::HostDetail = self.c.get(&format!("{}/{}", proto::HOSTS_PATH, self.host_id)).await;
        d.processes.iter().map(|p| p.pid).collect()
    }

    async fn history(&self) -> Vec<(String, u32)> {
        let ev: Vec<proto::ProcessEvent> =
            self.c.get(&format!("{}?host={}", proto::PROCESS_HISTORY_PATH, self.host_id)).await;
        ev.into_iter().rev().map(|e| (e.kind, e.pid)).collect()
    }
}

fn delta(added: Vec<proto::Process>, removed: Vec<&proto::Process>) -> Delta {
    let at = OffsetDateTime::now_utc();
    Delta {
        processes: Changes {
            added,
            updated: vec![],
            removed: removed
                .into_iter()
                .map(|p| Removed { key: ProcessKey { pid: p.pid, start_time: p.start_time }, at })
                .collect(),
        },
        ..Default::default()
    }
}

on_both_stores!(
    #[tokio::test]
    snapshots_deltas_replays_and_gaps
);
async fn snapshots_deltas_replays_and_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let secret = std::fs::read_to_string(&c.enroll_secret_file).unwrap().trim().to_owned();
    let req = proto::EnrollRequest {
        enroll_secret: secret,
        host: facts(),
        agent: status(),
        instance_identity: None,
    };
    let (code, body) = c.post(proto::ENROLL_PATH, None, serde_json::to_vec(&req).unwrap()).await;
    assert_eq!(code, 200, "{body}");
    let e: proto::EnrollResponse = serde_json::from_str(&body).unwrap();
    let agent = Agent { c: &c, key: e.node_key, host_id: e.host_id, session: 42 };
    let (web, worker, blip) = (process(100, "web"), process(101, "worker"), process(102, "blip"));

    assert!(!agent.send(1, Some(vec![web.clone()]), None, 0).await.resync);
    assert_eq!(agent.pids().await, vec![100]);
    // worker starts, blip lives and dies between two reports.
    let d2 = delta(vec![worker.clone(), blip.clone()], vec![&blip]);
    assert!(!agent.send(2, None, Some(d2.clone()), 0).await.resync);
    assert_eq!(agent.pids().await, vec![100, 101]);
    let after_d2 = agent.history().await;
    assert_eq!(after_d2, [("exec".into(), 101), ("exec".into(), 102), ("exit".into(), 102)]);
    // The same report again changes nothing.
    assert!(!agent.send(2, None, Some(d2), 0).await.resync);
    assert_eq!(agent.pids().await, vec![100, 101]);
    assert_eq!(agent.history().await, after_d2);
    // A heartbeat in order.
    assert!(!agent.send(3, None, None, 0).await.resync);

    // Report 4 never arrives: 5 is applied (what it says happened), and the collector asks for
    // a snapshot, since what report 4 said is missing.
    let resp = agent.send(5, None, Some(delta(vec![], vec![&web])), 0).await;
    assert!(resp.resync);
    assert_eq!(agent.pids().await, vec![101]);
    let lost: Vec<proto::Finding> =
        c.cli_json(&["findings", "--host", &agent.host_id.to_string(), "--kind", "data_lost"]);
    assert_eq!(lost.len(), 1);
    let gap = &lost[0].detail["missing_seq"];
    assert_eq!((gap["from"].as_u64(), gap["before"].as_u64()), (Some(4), Some(5)));
    // The snapshot reproduces the agent's state exactly (report 4 had started a process).
    let stray = process(103, "stray");
    assert!(!agent.send(6, Some(vec![worker.clone(), stray]), None, 0).await.resync);
    assert_eq!(agent.pids().await, vec![101, 103]);
    // The agent says it dropped 3 reports (7 to 9): the gap is exactly those.
    assert!(agent.send(10, None, Some(delta(vec![web.clone()], vec![])), 3).await.resync);
    assert_eq!(agent.pids().await, vec![100, 101, 103]);
    let lost: Vec<proto::Finding> =
        c.cli_json(&["findings", "--host", &agent.host_id.to_string(), "--kind", "data_lost"]);
    assert_eq!(lost[0].detail["dropped_by_agent"], 3, "the agent's own count of dropped reports");
    assert_eq!(lost[0].detail["missing_seq"]["from"], 7);
    assert_eq!(lost[0].detail["missing_seq"]["before"], 10);

    // An exec the agent saw but could not read is history too: pid and time only.
    let mut d = delta(vec![], vec![]);
    d.unread_execs.push(proto::UnreadExec { pid: 4444, at: OffsetDateTime::now_utc() });
    assert!(!agent.send(11, None, Some(d), 0).await.resync);
    let ev: Vec<proto::ProcessEvent> =
        c.get(&format!("{}?host={}", proto::PROCESS_HISTORY_PATH, agent.host_id)).await;
    let unread: Vec<_> = ev.iter().filter(|e| e.pid == 4444).collect();
    assert_eq!(unread.len(), 1, "{ev:?}");
    assert_eq!(
        (unread[0].kind.as_str(), unread[0].name.as_deref(), unread[0].exe.as_deref()),
        ("exec", None, None)
    );

    // The CLI shows the history.
    let rows: Vec<proto::ProcessEvent> =
        c.cli_json(&["history", "processes", "--host", &agent.host_id.to_string(), "--name", "blip"]);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.exe.as_deref() == Some("/opt/blip") && r.cmdline.len() == 2));
}
