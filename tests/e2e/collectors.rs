//! Two collectors on one PostgreSQL (issue 17): agents split across them see one fleet; every
//! finding, alert event and agent_offline is decided once whichever collector decides it; a
//! host's turn held by a collector that dies passes to the other; a collector killed outright
//! leaves the other to carry its agents (behind a load balancer, as in production).

use std::io::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;

use crate::alerts::{Receiver, explaining_everything, run_from, sleep_in_shm};
use crate::support::postgres::{PgServer, USER};
use crate::support::{Collector, start_agent, unique, wait_for};

const WAIT: Duration = Duration::from_secs(45);

/// A load balancer as small as can be: each connection goes to the first backend that takes
/// it, in order; a backend that is down is skipped.
struct Balancer {
    url: String,
    _stop: Arc<AtomicBool>,
}

impl Balancer {
    async fn start(backends: Vec<u16>) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        tokio::spawn(async move {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                let backends = backends.clone();
                tokio::spawn(async move {
                    for port in backends {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { url, _stop: stop }
    }
}

/// A fleet as a collector shows it: hosts (id, hostname, status) and findings (id, host, kind,
/// subject).
type View = (Vec<(i64, String, proto::HostStatus)>, Vec<(i64, i64, String, String)>);

/// What a collector shows of the fleet, without what moves between two calls (last seen).
fn view(c: &Collector, role: &str) -> View {
    let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
    let mut hosts: Vec<(i64, String, proto::HostStatus)> = hosts
        .into_iter()
        .filter(|h| h.tags.get("role").map(String::as_str) == Some(role))
        .map(|h| (h.id, h.hostname, h.status))
        .collect();
    hosts.sort_by_key(|h| h.0);
    let findings: Vec<proto::Finding> = c.cli_json(&["findings", "--status", "all"]);
    let mut findings: Vec<(i64, i64, String, String)> =
        findings.into_iter().map(|f| (f.id, f.host_id, f.kind.as_str().to_owned(), f.subject)).collect();
    findings.sort();
    (hosts, findings)
}

/// The events the webhook heard about `kind` on `host` (of `subject`, if given): (event,
/// finding id). The machine runs more than the test (a suspicious memfd program of the sandbox,
/// for one): a subject keeps to the test's own.
fn heard(hook: &Receiver, host: i64, kind: &str, subject: Option<&str>) -> Vec<(String, i64)> {
    hook.got
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p["finding"]["host_id"] == host && p["finding"]["kind"] == kind)
        .filter(|p| subject.is_none_or(|s| p["finding"]["subject"] == s))
        .map(|p| {
            (p["event"].as_str().unwrap_or_default().to_owned(), p["finding"]["id"].as_i64().unwrap_or(0))
        })
        .collect()
}

/// Every event heard about a host, for a failure to show.
fn payloads(hook: &Receiver, host: i64) -> String {
    let got = hook.got.lock().unwrap();
    let mine: Vec<String> = got
        .iter()
        .filter(|p| p["finding"]["host_id"] == host)
        .map(|p| {
            format!(
                "{} #{} {} {} {} {}",
                p["event"],
                p["event_id"],
                p["finding"]["id"],
                p["finding"]["kind"],
                p["finding"]["subject"],
                p["at"]
            )
        })
        .collect();
    mine.join("\n")
}

fn last_seen(c: &Collector, host: i64) -> OffsetDateTime {
    let d: proto::HostDetail = c.cli_json(&["host", &host.to_string()]);
    d.host.last_seen.expect("a host that reported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_on_one_postgres_show_one_fleet_and_decide_each_thing_once() {
    let pg = PgServer::start();
    pg.psql("postgres", "CREATE DATABASE hw");
    let hook = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let query_url = format!("postgres://hw_query@/hw?host={}", pg.socket_dir().display());
    let extra = format!(
        "database = {:?}\nquery_database = {query_url:?}\noffline_after = \"10s\"\n\
         [[alerts]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\nresolved = true\n",
        pg.url("hw"),
        hook.port
    );
    // One data directory: the first to start finds the store empty and writes the credentials
    // both use; the second finds them in the store.
    let mut a = Collector::start(dir.path(), &extra);
    let mut b = Collector::start(dir.path(), &extra);
    // The analysts' role, as docs/scaling.md has the administrator make it.
    pg.psql(
        "hw",
        "CREATE ROLE hw_query LOGIN; GRANT USAGE ON SCHEMA hostwatch_views TO hw_query; \
         GRANT SELECT ON ALL TABLES IN SCHEMA hostwatch_views TO hw_query",
    );

    let role = unique("pair");
    let baseline = dir.path().join("all.toml");
    std::fs::write(&baseline, explaining_everything(&role, "")).unwrap();
    let _: Vec<proto::BaselineSummary> = a.cli_json(&["baseline", "apply", baseline.to_str().unwrap()]);

    // Agent one through a balancer that prefers collector a; agent two to collector b.
    let balancer = Balancer::start(vec![a.port, b.port]).await;
    let (d1, d2) = (dir.path().join("one"), dir.path().join("two"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let tags = format!("role={role}");
    let online = async |n: usize| {
        wait_for(&format!("{n} hosts online"), WAIT, async || {
            let (hosts, _) = view(&b, &role);
            (hosts.len() == n && hosts.iter().all(|h| h.2 == proto::HostStatus::Online)).then_some(hosts)
        })
        .await
    };
    let _one = crate::support::start_agent_with(&a, &d1, &tags, &[("HOSTWATCH_SERVER", &balancer.url)]);
    let h1 = online(1).await[0].0;
    let mut two = start_agent(&b, &d2, &tags);
    let h2 = online(2).await.iter().map(|h| h.0).find(|&id| id != h1).expect("the second host");

    // Two agents on one machine claim one machine id: a duplicate_identity on each host, once,
    // heard once each, whichever collector enrolled which.
    wait_for("each twin heard of", WAIT, async || {
        (heard(&hook, h1, "duplicate_identity", None).len() == 1
            && heard(&hook, h2, "duplicate_identity", None).len() == 1)
            .then_some(())
    })
    .await;

    // A suspicious program both hosts see: one finding on each, its opening heard once, and its
    // resolution after (a positive mark: the sink's cursor passed every event before it).
    let (_shm, exe) = sleep_in_shm("paired");
    let subject = exe.to_str().unwrap().to_owned();
    let mut p = run_from(&exe);
    let on = |c: &Collector, host: i64, status: &str| {
        c.findings(host, "suspicious_process", status).into_iter().filter(|f| f.subject == subject).count()
    };
    wait_for("the program found on both hosts", WAIT, async || {
        (on(&a, h1, "open") == 1 && on(&b, h2, "open") == 1).then_some(())
    })
    .await;
    p.terminate(Duration::from_secs(5));
    wait_for("both resolutions heard", WAIT, async || {
        let resolved =
            |h| heard(&hook, h, "suspicious_process", Some(&subject)).iter().any(|(e, _)| e == "resolved");
        (resolved(h1) && resolved(h2)).then_some(())
    })
    .await;
    for host in [h1, h2] {
        let events: Vec<String> =
            heard(&hook, host, "suspicious_process", Some(&subject)).into_iter().map(|(e, _)| e).collect();
        assert_eq!(
            events,
            ["opened", "resolved"],
            "host {host}: each event once, in order: {}",
            payloads(&hook, host)
        );
        assert_eq!(on(&a, host, "all"), 1, "one finding for the program on host {host}");
    }

    // One view of the fleet, whichever collector is asked.
    let (va, vb) = (view(&a, &role), view(&b, &role));
    assert_eq!(va, vb, "the same hosts and findings through either collector");
    let ids: Vec<i64> = vb.1.iter().map(|f| f.0).collect();
    let mut unique_ids = ids.clone();
    unique_ids.dedup();
    assert_eq!(ids, unique_ids);
    // Analysts' SQL through the other collector sees the same, as its own role.
    let sql = format!("SELECT id, status FROM hosts WHERE tags->>'role' = '{role}' ORDER BY id");
    let rows: Vec<serde_json::Value> = b.cli_json(&["query", &sql]);
    let row = |id: i64| serde_json::json!({ "id": id, "status": "online" });
    assert_eq!(rows, vec![row(h1), row(h2)]);
    let refused = b.cli(&["query", "SELECT * FROM public.api_tokens"]);
    assert!(!refused.status.success(), "a credential table is out of the analysts' reach");

    // Agent two killed (no goodbye): agent_offline once, heard once; back, resolved once.
    let _ = two.0.kill();
    let _ = two.0.wait();
    wait_for("agent_offline heard", WAIT, async || {
        heard(&hook, h2, "agent_offline", None).iter().any(|(e, _)| e == "opened").then_some(())
    })
    .await;
    let mut two = start_agent(&b, &d2, &tags);
    wait_for("agent_offline resolved and heard", WAIT, async || {
        heard(&hook, h2, "agent_offline", None).iter().any(|(e, _)| e == "resolved").then_some(())
    })
    .await;
    let events: Vec<String> = heard(&hook, h2, "agent_offline", None).into_iter().map(|(e, _)| e).collect();
    assert_eq!(events, ["opened", "resolved"], "decided once by two collectors' chores");
    assert_eq!(a.findings(h2, "agent_offline", "all").len(), 1);

    // A host's turn held by a session that dies (as a collector's would): reports of the host
    // wait for it, and go on once PostgreSQL ends the session.
    let mut holder = crate::support::tool("psql")
        .args(["-X", "-q", "-h"])
        .arg(pg.socket_dir())
        .args(["-U", USER, "-d", "hw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(stdin, "SELECT pg_advisory_lock({h2});").unwrap();
    let waiting =
        format!("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = {h2}");
    wait_for("a collector waiting for the host's turn", WAIT, async || {
        (pg.psql("hw", &waiting) != "0").then_some(())
    })
    .await;
    let held_since = last_seen(&b, h2);
    let _ = holder.kill();
    let _ = holder.wait();
    drop(stdin);
    wait_for("the host reported again once the turn was free", WAIT, async || {
        (last_seen(&b, h2) > held_since).then_some(())
    })
    .await;

    // Collector a killed outright: agent one's reports go to b through the balancer.
    let _ = a.process.0.kill();
    let _ = a.process.0.wait();
    let killed_at = OffsetDateTime::now_utc();
    wait_for("agent one carried by the other collector", WAIT, async || {
        (last_seen(&b, h1) > killed_at).then_some(())
    })
    .await;
    let _ = two.0.kill();
    let _ = two.0.wait();
    b.process.terminate(Duration::from_secs(10));
}
