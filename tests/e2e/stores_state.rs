//! The two stores against one contract, continued: reports and the state they leave, the
//! history, findings and the outbox, every listing and its pages. Each scenario runs the same
//! calls on SQLite and on a private PostgreSQL and writes down everything each call answered;
//! the two records must be the same line for line (SQLite's answers are the reference: its own
//! unit tests pin them), and a few lines are checked for what they must say, so that the two
//! agreeing on nothing cannot pass.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hostwatch_proto::v1::{self as proto, Direction, FindingKind, Protocol, Severity};
use hostwatch_server::model::{
    AgentInfo, ChangeSet, Connection, Content, ExecExplained, HostFacts, HostState, Listener, Observation,
    PassedExec, Process, ReportRecord, Silence, SilenceScope, StateDelta,
};
use hostwatch_server::store::{
    Enrollment, FindingFilter, HistoryFilter, NewCredential, ReportTerms, StateFilter, Store, Verdict,
    parse_net,
};
use time::OffsetDateTime;

use crate::stores::both;

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
}

fn process(pid: u32, name: &str, start: i64) -> Process {
    Process {
        exe: Some(format!("/usr/bin/{name}")),
        cmdline: vec![name.into(), "--flag".into()],
        user: Some("root".into()),
        ..Process::from(proto::Process::new(pid, 1, name, 0, at(start)))
    }
}

fn listener(port: u16, address: &str, pid: u32) -> Listener {
    Listener {
        protocol: Protocol::Tcp,
        address: address.parse().unwrap(),
        port,
        pid: Some(pid),
        process: Some("sshd".into()),
        exe: Some("/usr/sbin/sshd".into()),
        uid: 0,
        netns: None,
        // Port 22's listeners were probed: both stores keep the verdict with them.
        auth: (port == 22).then(|| proto::ListenerAuth {
            verdict: proto::AuthVerdict::Authenticated,
            service: "ssh".into(),
            reason: "asked for credentials".into(),
            probed_at: at(100),
        }),
    }
}

fn connection(local: &str, remote: &str, direction: Direction) -> Connection {
    Connection {
        protocol: Protocol::Tcp,
        local: local.parse::<SocketAddr>().unwrap(),
        remote: remote.parse::<SocketAddr>().unwrap(),
        direction,
        pid: Some(10),
        process: Some("nginx".into()),
        exe: Some("/usr/bin/nginx".into()),
        uid: 33,
        netns: Some(4_026_531_840),
    }
}

fn facts(machine: &str) -> HostFacts {
    HostFacts {
        hostname: format!("web-{machine}"),
        machine_id: machine.into(),
        os: "Debian".into(),
        kernel: "6.1".into(),
        arch: "x86_64".into(),
        boot_time: Some(at(-1000)),
        tags: BTreeMap::from([("role".into(), "web".into())]),
        reported_tags: BTreeMap::from([("role".into(), "web".into())]),
        cloud: None,
    }
}

fn record(machine: &str, session: u64, seq: u64, backlog: u64, content: Content) -> ReportRecord {
    ReportRecord {
        session,
        seq,
        facts: facts(machine),
        agent: AgentInfo {
            version: "0.1.0".into(),
            interval_secs: 10,
            coverage_degraded: false,
            coverage_why: vec![],
            stats: Some(proto::AgentStats { exec_source: "netlink".into(), ..Default::default() }),
        },
        content,
        lost: 0,
        goodbye: None,
        backlog,
    }
}

async fn enroll(s: &dyn Store, machine: &str, now: OffsetDateTime) -> i64 {
    let hash = format!("secret-{machine}");
    let new = NewCredential { name: machine, hash: &hash, created_by: "test", expires_at: None, now };
    let secret = s.create_enroll_secret(&new, &BTreeMap::new()).await.unwrap();
    let f = facts(machine);
    let key = format!("key-{machine}");
    s.enroll_host(&Enrollment {
        facts: &f,
        agent_version: "0.1.0",
        key_hash: &key,
        enroll_secret: secret.id,
        verified_instance: None,
        now,
    })
    .await
    .unwrap()
}

fn file_created(path: &str, at_: OffsetDateTime) -> proto::FileChange {
    proto::FileChange {
        path: path.into(),
        change: proto::FileChangeKind::Created,
        origin: proto::ChangeOrigin::Live,
        at: at_,
        old: None,
        new: Some(proto::FileState {
            kind: proto::FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 42,
            mtime: at_,
            inode: 1234,
            sha256: Some("ab".repeat(32)),
            metadata_only: false,
            target: None,
        }),
        from_path: None,
        package: None,
    }
}

/// Every answer a scenario saw, a line each, to compare across stores.
#[derive(Default)]
struct Record(Vec<String>);

impl Record {
    fn add(&mut self, what: &str, v: impl std::fmt::Debug) {
        self.0.push(format!("{what}: {v:?}"));
    }
}

/// The two records the same, line by line; the first difference shown.
fn same(sqlite: &Record, pg: &Record) {
    for (i, (a, b)) in sqlite.0.iter().zip(&pg.0).enumerate() {
        assert_eq!(b, a, "line {i} differs (left PostgreSQL, right SQLite)");
    }
    assert_eq!(pg.0.len(), sqlite.0.len(), "as many answers");
}

/// Two hosts report: snapshots, deltas with starts that ended in the same report, a hash that
/// came after its exec, an exec without a new pid, unread and passed execs, a file change, a
/// replay, a gap, a new session and an old one come back; then every listing with each filter,
/// paged.
async fn reports_scenario(s: &dyn Store) -> Record {
    let mut r = Record::default();
    let h1 = enroll(s, "m1", at(0)).await;
    let h2 = enroll(s, "m2", at(1)).await;
    let mut hot = process(11, "sshd", 0);
    hot.cpu_percent = Some(97.5);
    hot.rss_bytes = Some(u64::MAX);
    let snapshot = HostState {
        processes: vec![process(10, "nginx", 0), hot.clone()],
        listeners: vec![listener(22, "0.0.0.0", 11), listener(22, "::", 11)],
        connections: vec![
            connection("10.0.0.5:40000", "10.1.2.3:5432", Direction::Outbound),
            connection("[::ffff:10.0.0.6]:5432", "[::ffff:10.9.9.9]:50000", Direction::Inbound),
        ],
    };
    let mut hashed = process(10, "nginx", 0);
    hashed.sha256 = Some("aa".repeat(32));
    let mut execed = hot.clone();
    execed.exe = Some("/usr/sbin/sshd2".into());
    let delta = StateDelta {
        processes: ChangeSet {
            added: vec![process(12, "curl", 150), process(14, "python3", 150)],
            updated: vec![hashed, execed],
            removed: vec![(process(12, "curl", 150).key(), at(160))],
        },
        listeners: ChangeSet {
            added: vec![listener(8080, "0.0.0.0", 12)],
            updated: vec![],
            removed: vec![(listener(8080, "0.0.0.0", 12).key(), at(165))],
        },
        connections: ChangeSet {
            added: vec![connection("10.0.0.5:40001", "203.0.113.7:443", Direction::Outbound)],
            updated: vec![],
            removed: vec![],
        },
        unread_execs: vec![(99, at(155))],
        passed_execs: vec![PassedExec { process: process(13, "sh", 151), at: at(151), until: at(152) }],
        files: vec![file_created("/etc/cron.d/x", at(158))],
    };
    let mut python_hashed = process(14, "python3", 150);
    python_hashed.sha256 = Some("bb".repeat(32));
    let later = StateDelta {
        processes: ChangeSet {
            added: vec![],
            updated: vec![python_hashed],
            removed: vec![(process(10, "nginx", 0).key(), at(180))],
        },
        connections: ChangeSet {
            added: vec![],
            updated: vec![],
            removed: vec![(
                connection("10.0.0.5:40001", "203.0.113.7:443", Direction::Outbound).key(),
                at(181),
            )],
        },
        ..StateDelta::default()
    };
    let reports = [
        (h1, record("m1", 7, 1, 0, Content::Snapshot(snapshot.clone())), at(100)),
        (h2, record("m2", 3, 1, 0, Content::Snapshot(snapshot.clone())), at(101)),
        (h1, record("m1", 7, 2, 2, Content::Delta(Box::new(delta.clone()))), at(170)),
        (h1, record("m1", 7, 2, 2, Content::Delta(Box::new(delta))), at(175)),
        (h1, record("m1", 7, 4, 0, Content::Delta(Box::new(later))), at(190)),
        (
            h1,
            record(
                "m1",
                9,
                1,
                0,
                Content::Snapshot(HostState {
                    processes: vec![process(10, "nginx", 200)],
                    listeners: vec![listener(22, "0.0.0.0", 11)],
                    connections: vec![],
                }),
            ),
            at(210),
        ),
        (h1, record("m1", 7, 5, 0, Content::Heartbeat), at(220)),
    ];
    for (i, (host, report, now)) in reports.into_iter().enumerate() {
        let o = s.record_report(host, report, now, ReportTerms::default()).await.unwrap();
        r.add(&format!("report {i} applied"), o.applied);
        r.add(&format!("report {i} recorded"), &o.recorded);
        r.add(&format!("report {i} host"), &o.host);
        r.add(&format!("report {i} tags before"), (&o.tags_before.held, &o.tags_before.reported));
        let state = s.host_state(host).await.unwrap();
        // A probe's verdict is kept with its listener, not lost on the way in or out.
        for l in state.listeners.iter().filter(|l| l.port == 22) {
            assert_eq!(l.auth.as_ref().map(|a| a.service.as_str()), Some("ssh"), "{l:?}");
        }
        r.add(&format!("report {i} state"), state);
    }
    r.add("hot", s.hosts_running_hot(at(0), at(1000)).await.unwrap());
    let verdict = Verdict { workload: Some("web".into()), ..Verdict::default() };
    s.apply_verdict(h2, verdict, 100, at(230)).await.unwrap();
    let peers = s.peer_items("web").await.unwrap();
    type Sorted = (Vec<String>, Vec<(Protocol, u16)>, Vec<String>);
    let peers: BTreeMap<i64, Sorted> = peers
        .into_iter()
        .map(|(id, p)| {
            let mut procs: Vec<String> = p.processes.into_iter().collect();
            procs.sort();
            let mut ls: Vec<(Protocol, u16)> = p.listeners.into_iter().collect();
            ls.sort();
            let mut cs: Vec<String> = p.connections.into_iter().collect();
            cs.sort();
            (id, (procs, ls, cs))
        })
        .collect();
    r.add("peers", peers);

    let all = |limit| StateFilter { limit, ..StateFilter::default() };
    let state_filters = [
        ("all", all(100)),
        ("exe glob", StateFilter { exe: Some("/usr/*".into()), ..all(100) }),
        ("exe glob end", StateFilter { exe: Some("*/ngin?".into()), ..all(100) }),
        ("exe class", StateFilter { exe: Some("/usr/[a-s]bin/*".into()), ..all(100) }),
        ("user", StateFilter { user: Some("root".into()), ..all(100) }),
        ("uid", StateFilter { user: Some("0".into()), ..all(100) }),
        ("name", StateFilter { name: Some("nginx".into()), host_id: Some(h2), ..all(100) }),
        ("port", StateFilter { port: Some(22), ..all(100) }),
        ("address", StateFilter { address: Some("::".parse().unwrap()), ..all(100) }),
        ("remote v4 block", StateFilter { remote: Some(parse_net("10.0.0.0/8").unwrap()), ..all(100) }),
        (
            "remote mapped block",
            StateFilter { remote: Some(parse_net("::ffff:10.9.0.0/112").unwrap()), ..all(100) },
        ),
        ("remote one", StateFilter { remote: Some(parse_net("10.1.2.3").unwrap()), ..all(100) }),
        ("remote port", StateFilter { port: Some(5432), ..all(100) }),
        ("direction", StateFilter { direction: Some(Direction::Inbound), ..all(100) }),
        ("protocol", StateFilter { protocol: Some(Protocol::Udp), ..all(100) }),
    ];
    for (what, f) in &state_filters {
        // Processes have no protocol to filter by (the CLI offers none).
        if f.protocol.is_none() {
            r.add(&format!("processes {what}"), s.list_processes(f).await.unwrap());
        }
        r.add(&format!("listeners {what}"), s.list_listeners(f).await.unwrap());
        r.add(&format!("connections {what}"), s.list_connections(f).await.unwrap());
    }
    // Pages of one through each state listing.
    for which in ["processes", "listeners", "connections"] {
        let mut after = None;
        for _ in 0..20 {
            let f = StateFilter { after: after.clone(), ..all(1) };
            let next = match which {
                "processes" => {
                    let p = s.list_processes(&f).await.unwrap();
                    r.add(which, &p);
                    p.next
                }
                "listeners" => {
                    let p = s.list_listeners(&f).await.unwrap();
                    r.add(which, &p);
                    p.next
                }
                _ => {
                    let p = s.list_connections(&f).await.unwrap();
                    r.add(which, &p);
                    p.next
                }
            };
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    let hist = |limit| HistoryFilter { limit, ..HistoryFilter::default() };
    let history_filters = [
        ("all", hist(100)),
        ("host", HistoryFilter { host_id: Some(h2), ..hist(100) }),
        ("since", HistoryFilter { since: Some(at(160)), ..hist(100) }),
        ("name", HistoryFilter { name: Some("curl".into()), ..hist(100) }),
        ("sha256", HistoryFilter { sha256: Some("AA".repeat(32)), ..hist(100) }),
        ("sha256 later", HistoryFilter { sha256: Some("BB".repeat(32)), ..hist(100) }),
        ("exe", HistoryFilter { exe: Some("/usr/sbin/*".into()), ..hist(100) }),
        ("remote", HistoryFilter { remote: Some(parse_net("203.0.113.0/24").unwrap()), ..hist(100) }),
        ("port", HistoryFilter { port: Some(8080), ..hist(100) }),
        ("path", HistoryFilter { path: Some("/etc/*".into()), ..hist(100) }),
        ("path none", HistoryFilter { path: Some("/usr/*".into()), ..hist(100) }),
    ];
    for (what, f) in &history_filters {
        r.add(&format!("process events {what}"), s.process_events(f).await.unwrap());
        r.add(&format!("socket events {what}"), s.socket_events(f).await.unwrap());
        r.add(&format!("file events {what}"), s.file_events(f).await.unwrap());
        r.add(&format!("current files {what}"), s.current_files(f).await.unwrap());
    }
    let mut after = None;
    for _ in 0..30 {
        let page = s.process_events(&HistoryFilter { after: after.clone(), ..hist(2) }).await.unwrap();
        r.add("process events page", &page);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    r.add(
        "bad cursor",
        s.process_events(&HistoryFilter { after: Some("x/1".into()), ..hist(2) }).await.err(),
    );
    r.add(
        "bad state cursor",
        s.list_connections(&StateFilter { after: Some("1.2".into()), ..all(2) }).await.err(),
    );
    r
}

#[tokio::test]
async fn reports_state_history_and_every_listing_are_the_same_on_both_stores() {
    let (_dir, sqlite, _pg, pg) = both().await;
    let on_sqlite = reports_scenario(&sqlite).await;
    let on_pg = reports_scenario(&pg).await;
    same(&on_sqlite, &on_pg);

    // What the scenario must have seen, on either.
    let line = |what: &str| {
        on_pg
            .0
            .iter()
            .find(|l| l.starts_with(&format!("{what}: ")))
            .cloned()
            .unwrap_or_else(|| panic!("no {what}"))
    };
    assert_eq!(line("report 0 applied"), "report 0 applied: Applied { gap: None, resync: false }");
    assert_eq!(line("report 3 applied"), "report 3 applied: Replay", "the same report again");
    assert_eq!(line("report 4 applied"), "report 4 applied: Applied { gap: Some((3, 4)), resync: true }");
    assert!(
        line("report 6 recorded").contains("sessions_alternate: Some((9, 7))"),
        "{}",
        line("report 6 recorded")
    );
    let started = line("report 2 recorded");
    for what in ["curl", "sh", "8080", "203.0.113.7", "sshd2"] {
        assert!(started.contains(what), "{what} started in report 2: {started}");
    }
    assert!(line("report 4 recorded").contains("new: false"), "a connection judged before its end came back");
    assert_eq!(line("hot"), "hot: [2]", "the first host's hot process went with its new session");
    let v4 = line("connections remote v4 block");
    assert!(v4.contains("10.1.2.3") && v4.contains("::ffff:10.9.9.9"), "{v4}");
    assert!(!line("connections remote one").contains("10.9.9.9"));
    assert!(
        line("process events sha256 later").contains("python3"),
        "the hash that came later is in the exec's history"
    );
    assert!(line("current files path").contains("/etc/cron.d/x"));
    assert!(line("bad cursor").contains("is not one this listing gave"));
}

fn obs(kind: FindingKind, subject: &str, severity: Severity) -> Observation {
    Observation {
        occurrences: 1,
        transient: false,
        kind,
        rule: None,
        severity,
        subject: subject.into(),
        detail: serde_json::json!({ "s": subject, "n": [1, 2.5, null] }),
    }
}

/// A host's findings through their whole life: opened, refreshed and escalated, resolved by
/// absence, acknowledged, reopened, transient ones counted, a burst held back past the budget, a
/// silence, retirement; the outbox's events with a sink's lease and pruning; every findings
/// listing, paged.
async fn findings_scenario(s: &dyn Store) -> Record {
    use FindingKind::{UnexpectedListener as L, UnexpectedProcess as P};
    let mut r = Record::default();
    let h1 = enroll(s, "m1", at(0)).await;
    let h2 = enroll(s, "m2", at(1)).await;
    for (host, m) in [(h1, "m1"), (h2, "m2")] {
        let empty = Content::Snapshot(HostState::default());
        s.record_report(host, record(m, 1, 1, 0, empty), at(90), ReportTerms::default()).await.unwrap();
        let curl = StateDelta {
            processes: ChangeSet { added: vec![process(12, "curl", 150)], updated: vec![], removed: vec![] },
            ..StateDelta::default()
        };
        let delta = Content::Delta(Box::new(curl));
        s.record_report(host, record(m, 1, 2, 0, delta), at(100), ReportTerms::default()).await.unwrap();
    }
    let kinds = vec![P, L];
    let verdict = |observed: Vec<Observation>| Verdict {
        workload: Some("web".into()),
        observed,
        state_kinds: kinds.clone(),
        kept: vec![],
        explained: vec![ExecExplained { pid: 12, start_time: at(150), why: "allowed by web".into() }],
    };
    let steps: Vec<(i64, Vec<Observation>, u32)> = vec![
        (h1, vec![obs(P, "/usr/bin/curl", Severity::High), obs(L, "tcp/8080", Severity::Medium)], 100),
        (h1, vec![obs(P, "/usr/bin/curl", Severity::Critical)], 100),
        (h1, vec![], 100),
        (h1, vec![obs(P, "/usr/bin/curl", Severity::High)], 100),
        (
            h1,
            vec![
                obs(P, "/usr/bin/curl", Severity::High),
                Observation { transient: true, occurrences: 3, ..obs(P, "/tmp/x", Severity::High) },
            ],
            100,
        ),
        (h1, vec![obs(P, "/usr/bin/curl", Severity::High), obs(L, "tcp/22", Severity::Medium)], 100),
        (h2, (0..5).map(|i| obs(L, &format!("tcp/{}", 9000 + i), Severity::Medium)).collect(), 2),
    ];
    for (i, (host, observed, limit)) in steps.into_iter().enumerate() {
        if i == 2 {
            let open = s
                .list_findings(&FindingFilter { host_id: Some(h1), ..FindingFilter::default() })
                .await
                .unwrap();
            let first = open.items.iter().map(|f| f.id).min().unwrap();
            r.add(
                "acknowledged",
                s.acknowledge(first, "token:ops#1", Some("looked \"at\""), at(305)).await.unwrap(),
            );
            r.add("acknowledge missing", s.acknowledge(9999, "x", None, at(305)).await.unwrap());
        }
        if i == 5 {
            let silence = Silence {
                id: 0,
                scope: SilenceScope::Host(h1),
                starts_at: at(340),
                ends_at: at(10_000),
                reason: "maintenance".into(),
                created_by: "ops".into(),
            };
            s.create_silence(&silence).await.unwrap();
        }
        let now = at(300 + 10 * i as i64);
        r.add(&format!("verdict {i}"), s.apply_verdict(host, verdict(observed), limit, now).await.unwrap());
    }
    let dup = obs(FindingKind::DuplicateIdentity, "machine-id m2", Severity::High);
    r.add("record findings", s.record_findings(h2, &[dup], 100, at(400)).await.unwrap());
    r.add("lease", s.lease_alert_cursor("slack", "collector-a", at(400), at(460)).await.unwrap());
    r.add("lease taken", s.lease_alert_cursor("slack", "collector-b", at(401), at(461)).await.unwrap());
    let events = s.alert_events(0, 100).await.unwrap();
    r.add("events", &events);
    let last = events.iter().map(|e| e.id).max().unwrap_or(0);
    r.add("advance", s.advance_alert_cursor("slack", "collector-a", last - 2).await.unwrap());
    r.add("advance by another", s.advance_alert_cursor("slack", "collector-b", last).await.unwrap());
    // The store's own memory is SQLite's alone (PostgreSQL's is its server's): not compared.
    r.add(
        "fleet counts",
        hostwatch_server::store::FleetCounts { memory: None, ..s.fleet_counts().await.unwrap() },
    );
    r.add("retired", s.retire_host(h1, at(500)).await.unwrap());
    r.add("pruned", s.prune_alert_events(3, at(500)).await.unwrap());
    r.add("events left", s.alert_events(0, 100).await.unwrap());
    let every = FindingFilter::default();
    let filters = [
        ("all", every.clone()),
        ("host", FindingFilter { host_id: Some(h2), ..every.clone() }),
        ("kind", FindingFilter { kind: Some(L), ..every.clone() }),
        ("open", FindingFilter { statuses: vec![proto::FindingStatus::Open], ..every.clone() }),
        ("high", FindingFilter { severity: Some(Severity::High), ..every.clone() }),
        ("workload", FindingFilter { workload: Some("web".into()), ..every.clone() }),
        ("since", FindingFilter { since: Some(at(355)), ..every.clone() }),
    ];
    for (what, f) in &filters {
        r.add(&format!("findings {what}"), s.list_findings(f).await.unwrap());
    }
    let mut after = None;
    for _ in 0..30 {
        let page = s
            .list_findings(&FindingFilter { after: after.clone(), limit: Some(2), ..every.clone() })
            .await
            .unwrap();
        r.add("findings page", &page);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    r.add(
        "explained",
        s.process_events(&HistoryFilter { limit: 10, ..HistoryFilter::default() }).await.unwrap(),
    );
    r
}

#[tokio::test]
async fn findings_and_the_outbox_are_the_same_on_both_stores() {
    let (_dir, sqlite, _pg, pg) = both().await;
    let on_sqlite = findings_scenario(&sqlite).await;
    let on_pg = findings_scenario(&pg).await;
    same(&on_sqlite, &on_pg);

    let line = |what: &str| {
        on_pg
            .0
            .iter()
            .find(|l| l.starts_with(&format!("{what}: ")))
            .cloned()
            .unwrap_or_else(|| panic!("no {what}"))
    };
    assert!(line("verdict 0").matches("Opened").count() == 2, "{}", line("verdict 0"));
    assert!(
        line("verdict 1").contains("Resolved") && line("verdict 1").contains("tcp/8080"),
        "{}",
        line("verdict 1")
    );
    assert!(
        line("verdict 2").contains("Resolved"),
        "absence resolves an acknowledged one too: {}",
        line("verdict 2")
    );
    assert!(line("verdict 3").contains("Reopened"), "{}", line("verdict 3"));
    assert!(line("verdict 6").contains("FindingsHeldBack"), "a burst past the budget: {}", line("verdict 6"));
    assert!(
        line("events").contains("escalated") && line("events").contains("silenced: true"),
        "{}",
        line("events")
    );
    assert_eq!(line("lease taken"), "lease taken: None", "one collector holds a sink");
    assert_eq!(line("advance by another"), "advance by another: false");
    assert!(line("explained").contains("allowed by web"), "{}", line("explained"));
}

/// History pruned past the retention: on PostgreSQL a whole day's partition is dropped and the
/// rows of days without one (the default partition) are deleted in batches; both stores keep the
/// same rows, and say how many went.
#[tokio::test]
async fn history_past_the_retention_goes_alike_and_whole_days_as_partitions() {
    let (_dir, sqlite, pg_server, pg) = both().await;
    let now = OffsetDateTime::now_utc();
    let midnight = now.replace_time(time::Time::MIDNIGHT);
    // Execs at the start of each process: today, yesterday (a partition made at start) and five
    // and ten days ago (no partition: the default one).
    let starts = [
        midnight + time::Duration::minutes(1),
        midnight - time::Duration::hours(12),
        midnight - time::Duration::hours(13),
        midnight - time::Duration::days(5),
        midnight - time::Duration::days(10),
    ];
    let mut seen = Vec::new();
    for s in [&sqlite as &dyn Store, &pg as &dyn Store] {
        let h = enroll(s, "m1", now).await;
        let empty = Content::Snapshot(HostState::default());
        s.record_report(h, record("m1", 1, 1, 0, empty), now, ReportTerms::default()).await.unwrap();
        let added = starts
            .iter()
            .enumerate()
            .map(|(i, t)| Process { start_time: *t, ..process(100 + i as u32, "old", 0) })
            .collect();
        let delta = StateDelta {
            processes: ChangeSet { added, updated: vec![], removed: vec![] },
            ..StateDelta::default()
        };
        s.record_report(
            h,
            record("m1", 1, 2, 0, Content::Delta(Box::new(delta))),
            now,
            ReportTerms::default(),
        )
        .await
        .unwrap();
        let mut gone = 0;
        // In batches of two, until nothing is left to go.
        for _ in 0..10 {
            let n = s.prune_history(midnight, 2).await.unwrap();
            gone += n;
            if n == 0 {
                break;
            }
        }
        let left = s.process_events(&HistoryFilter { limit: 100, ..HistoryFilter::default() }).await.unwrap();
        seen.push((gone, left.items.iter().map(|e| (e.pid, e.at)).collect::<Vec<_>>()));
    }
    assert_eq!(seen[1], seen[0], "PostgreSQL and SQLite keep the same history");
    assert_eq!(seen[0].0, 4, "the four execs before midnight went");
    assert_eq!(seen[0].1.len(), 1, "today's stays: {:?}", seen[0].1);
    // Yesterday's partition is gone whole; today's and the coming days' stay.
    let yesterday = (midnight - time::Duration::days(1)).date();
    let name = format!(
        "process_events_p{:04}{:02}{:02}",
        yesterday.year(),
        u8::from(yesterday.month()),
        yesterday.day()
    );
    let exists = |n: &str| pg_server.psql("hw", &format!("SELECT to_regclass('{n}') IS NOT NULL"));
    assert_eq!(exists(&name), "f", "{name} dropped");
    let today = midnight.date();
    let kept = format!("process_events_p{:04}{:02}{:02}", today.year(), u8::from(today.month()), today.day());
    assert_eq!(exists(&kept), "t", "{kept} kept");
}
