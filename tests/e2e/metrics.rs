//! `/metrics` as Prometheus reads it: parsed by the Prometheus project's own Python client
//! parser (Debian's python3-prometheus-client), every refusal counted by what it was (a store
//! held by another writer included), the latency histograms and the fleet's gauges there, and
//! nothing without a token.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use hostwatch_proto::v1 as proto;

use crate::bad_input::{enroll, report};
use crate::support::{Collector, on_both_stores};

/// One sample as the parser read it.
#[derive(Debug, serde::Deserialize)]
struct Sample(String, BTreeMap<String, String>, f64);

/// Every sample of `text`, read by the Prometheus parser; the test fails where it refuses.
fn parse(text: &str) -> Vec<Sample> {
    let script = "import json, sys\n\
                  from prometheus_client.parser import text_string_to_metric_families as families\n\
                  print(json.dumps([[s.name, s.labels, s.value] for f in families(sys.stdin.read()) for s in f.samples]))";
    // Debian's interpreter, the one its package of the parser belongs to.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (with python3-prometheus-client) runs the Prometheus parser");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics (it needs `apt install python3-prometheus-client`):\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample named `name` whose labels include `labels`; 0 where there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.0 == name && labels.iter().all(|(k, v)| s.1.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.2)
        .sum()
}

async fn post_report(c: &Collector, key: &str, body: Vec<u8>) -> u16 {
    c.post(proto::REPORT_PATH, Some(key), body).await.0
}

/// Another writer holding the SQLite database's write lock (as a backup or a hand-run migration
/// would) until dropped.
struct WriteLock(std::process::Child);

impl WriteLock {
    fn take(db: &std::path::Path) -> WriteLock {
        use std::io::BufRead;
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
                      c.execute('BEGIN IMMEDIATE')\n\
                      print('locked', flush=True)\n\
                      sys.stdin.read()\n\
                      c.execute('ROLLBACK')";
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 takes the database's write lock");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "locked", "the lock taker did not say it holds the lock");
        WriteLock(child)
    }
}

impl WriteLock {
    /// The same on PostgreSQL: `table` locked whole by a psql session of the test's.
    fn take_table(c: &Collector, table: &str) -> WriteLock {
        use std::io::{BufRead, Write};
        let mut child = c.store_session();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT 'locked';").unwrap();
        child.stdin = Some(stdin);
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        while line.trim() != "locked" {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "psql ended before it held the lock");
        }
        WriteLock(child)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        // Its stdin closed, it rolls back and exits.
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

on_both_stores!(
    #[tokio::test]
    metrics_parse_as_prometheus_reads_them_and_count_every_refusal
);
async fn metrics_parse_as_prometheus_reads_them_and_count_every_refusal() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Six a minute: bursts of the floor, 10 reports per host and 5 enrollments per address.
    let c = Collector::start(
        dir.path(),
        "max_report_bytes = 65536\n[limits]\nreports_per_host_per_minute = 6\nenrollments_per_address_per_minute = 6\n",
    );

    // No token, no metrics: the fleet's findings by kind are not for anyone on the port.
    let anonymous = reqwest::get(format!("{}{}", c.url, proto::METRICS_PATH)).await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let a = enroll(&c, "m-metrics-a").await;
    let b = enroll(&c, "m-metrics-b").await;
    // Host a reports until its burst is spent: one 429.
    let mut accepted = 0;
    let mut seq = 1;
    loop {
        let code =
            post_report(&c, &a.node_key, serde_json::to_vec(&report(seq, "m-metrics-a")).unwrap()).await;
        if code == 429 {
            break;
        }
        assert_eq!(code, 200);
        accepted += 1;
        seq += 1;
        assert!(accepted <= 10, "no 429 past the burst");
    }
    // Host b: one accepted, one malformed (400), one oversized (413).
    let one = post_report(&c, &b.node_key, serde_json::to_vec(&report(1, "m-metrics-b")).unwrap()).await;
    assert_eq!(one, 200);
    accepted += 1;
    assert_eq!(post_report(&c, &b.node_key, b"{\"seq\": 2".to_vec()).await, 400);
    let mut big = report(2, "m-metrics-b");
    big.snapshot.as_mut().unwrap().processes[0].cmdline =
        (0..40).map(|i| format!("{i:04}{}", "x".repeat(2000))).collect();
    assert_eq!(post_report(&c, &b.node_key, serde_json::to_vec(&big).unwrap()).await, 413);
    // The store held by another writer past the collector's 5 s wait: 503, with Retry-After;
    // the same report sent again once it is free is taken.
    let second = serde_json::to_vec(&report(2, "m-metrics-b")).unwrap();
    {
        let _lock = if c.on_postgres() {
            WriteLock::take_table(&c, "hosts")
        } else {
            WriteLock::take(&dir.path().join("server").join("hostwatch.db"))
        };
        let (code, text) = c.post(proto::REPORT_PATH, Some(&b.node_key), second.clone()).await;
        assert_eq!(code, 503, "{text}");
        assert!(text.contains("retry later"), "{text}");
    }
    assert_eq!(post_report(&c, &b.node_key, second).await, 200);
    accepted += 1;
    // A key the collector never gave: refused at the credential, and counted all the same.
    let forged = format!("hwn_{}", "0".repeat(64));
    assert_eq!(post_report(&c, &forged, serde_json::to_vec(&report(1, "m-metrics-f")).unwrap()).await, 401);
    // Enrollments with a wrong secret until this address's burst is spent: 401s, then one 429.
    let mut unauthorized = 0;
    loop {
        let req = proto::EnrollRequest {
            enroll_secret: "hwe_wrong".into(),
            host: proto::HostFacts::new("metrics-x", "m-metrics-x"),
            agent: proto::AgentStatus::new("0.0.1", 10, time::OffsetDateTime::now_utc()),
            instance_identity: None,
        };
        let (code, text) = c.post(proto::ENROLL_PATH, None, serde_json::to_vec(&req).unwrap()).await;
        if code == 429 {
            break;
        }
        assert_eq!(code, 401, "{text}");
        unauthorized += 1;
        assert!(unauthorized <= 5, "no 429 past the burst");
    }

    let text = c.metrics_text().await;
    let samples = parse(&text);
    let reports = |outcome: &str| value(&samples, "hostwatch_reports_total", &[("outcome", outcome)]);
    assert_eq!(reports("accepted"), f64::from(accepted), "{text}");
    assert_eq!((reports("invalid"), reports("too_large"), reports("throttled")), (1.0, 1.0, 1.0), "{text}");
    assert_eq!((reports("busy"), reports("unauthorized"), reports("failed")), (1.0, 1.0, 0.0), "{text}");
    let enrollments = |outcome: &str| value(&samples, "hostwatch_enrollments_total", &[("outcome", outcome)]);
    assert_eq!(enrollments("accepted"), 2.0, "{text}");
    assert_eq!(enrollments("unauthorized"), f64::from(unauthorized), "{text}");
    assert_eq!(enrollments("throttled"), 1.0, "{text}");
    // Every refusal was counted; the log says so at a bounded rate (a line per 10 s at most),
    // not once per refusal.
    let refused_lines = c.log().matches("report refused").count() as u64;
    let bound = 1 + started.elapsed().as_secs() / 10;
    assert!((1..=bound).contains(&refused_lines), "{refused_lines} lines, at most {bound}");

    // Latency: every accepted report in the histogram, and the store's transactions timed.
    assert_eq!(
        value(&samples, "hostwatch_report_duration_seconds_count", &[]),
        f64::from(accepted),
        "{text}"
    );
    assert_eq!(
        value(&samples, "hostwatch_report_duration_seconds_bucket", &[("le", "+Inf")]),
        f64::from(accepted)
    );
    assert!(
        value(&samples, "hostwatch_store_transaction_seconds_count", &[]) >= f64::from(accepted),
        "{text}"
    );
    assert!(value(&samples, "hostwatch_store_wait_seconds_count", &[]) >= f64::from(accepted), "{text}");

    // The fleet: two online hosts, and the findings their reports opened, by kind and severity.
    assert_eq!(value(&samples, "hostwatch_hosts", &[("status", "online")]), 2.0, "{text}");
    // SQLite's memory is the collector's own, and counted; PostgreSQL's is the server's.
    let store_memory = value(&samples, "hostwatch_store_memory_bytes", &[]);
    if c.on_postgres() {
        assert_eq!(store_memory, 0.0, "{text}");
    } else {
        assert!(store_memory > 0.0 && store_memory < 200.0 * 1048576.0, "{text}");
    }
    let findings: Vec<proto::Finding> = c.get(proto::FINDINGS_PATH).await;
    assert!(!findings.is_empty(), "reports with no baseline open findings");
    for f in &findings {
        let want = findings.iter().filter(|g| g.kind == f.kind && g.severity == f.severity).count() as f64;
        let got = value(
            &samples,
            "hostwatch_findings",
            &[("kind", f.kind.as_str()), ("severity", f.severity.as_str()), ("status", "open")],
        );
        assert_eq!(got, want, "{:?} {:?}\n{text}", f.kind, f.severity);
    }
    assert!(text.contains("# TYPE hostwatch_connections_refused_total counter"), "{text}");
}
