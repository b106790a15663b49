//! What the collector refuses, each with a clear message and nothing stored.

use std::collections::BTreeMap;

use hostwatch_proto::v1::{self as proto};
use serde_json::json;
use time::OffsetDateTime;

use crate::support::{Collector, on_both_stores};

fn facts(machine_id: &str) -> proto::HostFacts {
    proto::HostFacts {
        tags: BTreeMap::from([("role".to_owned(), "bad-input".to_owned())]),
        ..proto::HostFacts::new("bad-input-host", machine_id)
    }
}

fn status() -> proto::AgentStatus {
    proto::AgentStatus::new("0.0.1", 10, OffsetDateTime::now_utc())
}

pub(crate) fn report(seq: u64, machine_id: &str) -> proto::Report {
    let now = OffsetDateTime::now_utc();
    proto::Report {
        session: 1,
        seq,
        sent_at: now,
        host: facts(machine_id),
        agent: status(),
        snapshot: Some(proto::Snapshot {
            taken_at: now,
            processes: vec![proto::Process {
                pid: 4242,
                ppid: 1,
                name: "app".into(),
                exe: Some("/usr/bin/app".into()),
                exe_deleted: false,
                cmdline: vec!["app".into()],
                cmdline_truncated: false,
                uid: 0,
                user: Some("root".into()),
                start_time: now,
                ..proto::Process::new(0, 0, "", 0, now)
            }],
            listeners: vec![],
            connections: vec![],
        }),
        delta: None,
        lost: 0,
        goodbye: None,
    }
}

pub(crate) async fn enroll(c: &Collector, machine_id: &str) -> proto::EnrollResponse {
    let secret = std::fs::read_to_string(&c.enroll_secret_file).unwrap().trim().to_owned();
    let req = proto::EnrollRequest {
        enroll_secret: secret,
        host: facts(machine_id),
        agent: status(),
        instance_identity: None,
    };
    let (code, body) = c.post(proto::ENROLL_PATH, None, serde_json::to_vec(&req).unwrap()).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn apply(c: &Collector, source: &str, file: &str) -> (u16, String) {
    let req = proto::ApplyBaseline { source: source.into(), file: Some(file.into()) };
    c.post(proto::BASELINES_PATH, Some(&c.admin_token), serde_json::to_vec(&req).unwrap()).await
}

pub(crate) fn error_of(body: &str) -> String {
    serde_json::from_str::<proto::ErrorBody>(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"))
        .error
}

on_both_stores!(
    #[tokio::test]
    bad_reports_are_refused_with_a_reason_and_change_nothing
);
async fn bad_reports_are_refused_with_a_reason_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "max_report_bytes = 65536\n");
    let e = enroll(&c, "machine-bad-input").await;
    let key = e.node_key.as_str();

    let (code, body) = c
        .post(proto::REPORT_PATH, Some(key), serde_json::to_vec(&report(1, "machine-bad-input")).unwrap())
        .await;
    assert_eq!(code, 200, "{body}");
    let before: proto::HostDetail = c.get(&format!("{}/{}", proto::HOSTS_PATH, e.host_id)).await;
    assert_eq!((before.last_seq, before.processes.len()), (1, 1));

    // Malformed JSON: 400, saying where.
    let (code, body) = c.post(proto::REPORT_PATH, Some(key), br#"{"seq": 2, "sent_at": "#.to_vec()).await;
    assert_eq!(code, 400);
    let msg = error_of(&body);
    assert!(msg.starts_with("malformed report:") && msg.contains("line 1 column"), "{msg}");

    // Well-formed but of the wrong type.
    let (code, body) = c.post(proto::REPORT_PATH, Some(key), br#"{"seq": "two"}"#.to_vec()).await;
    assert_eq!(code, 400);
    assert!(error_of(&body).contains("invalid type"), "{body}");

    // Valid JSON beyond the limits of the contract: the path of the offending field.
    let mut bad = report(2, "machine-bad-input");
    bad.snapshot.as_mut().unwrap().processes[0].name = String::new();
    let (code, body) = c.post(proto::REPORT_PATH, Some(key), serde_json::to_vec(&bad).unwrap()).await;
    assert_eq!(code, 400);
    assert_eq!(error_of(&body), "invalid report: snapshot.processes[0].name: must not be empty");

    // No key, a wrong key, a key of the wrong kind: 401.
    let body = serde_json::to_vec(&report(2, "machine-bad-input")).unwrap();
    let (code, text) = c.post(proto::REPORT_PATH, None, body.clone()).await;
    assert_eq!(code, 401);
    assert!(error_of(&text).contains("missing credential"), "{text}");
    let (code, text) = c.post(proto::REPORT_PATH, Some("hwn_0000"), body.clone()).await;
    assert_eq!((code, error_of(&text).as_str()), (401, "unknown or revoked node key"));
    let (code, text) = c.post(proto::REPORT_PATH, Some(&c.admin_token), body.clone()).await;
    assert_eq!(code, 401);
    assert!(error_of(&text).contains("wrong kind of credential"), "{text}");

    // Oversized: 413.
    let mut big = report(2, "machine-bad-input");
    big.snapshot.as_mut().unwrap().processes[0].cmdline =
        (0..40).map(|i| format!("{i:04}{}", "x".repeat(2000))).collect();
    let big = serde_json::to_vec(&big).unwrap();
    assert!(big.len() > 65536);
    let (code, text) = c.post(proto::REPORT_PATH, Some(key), big).await;
    assert_eq!(code, 413, "{text}");
    assert!(error_of(&text).contains("larger than the limit of 65536 bytes"), "{text}");

    // A backlog that is no number of reports: 400, naming the header.
    for backlog in ["-1", "many", "99999999999", ""] {
        let (code, text) = c
            .post_with(proto::REPORT_PATH, Some(key), &[(proto::BACKLOG_HEADER, backlog)], body.clone())
            .await;
        assert_eq!(code, 400, "{backlog:?}: {text}");
        assert!(error_of(&text).starts_with("header hostwatch-backlog: not a number"), "{text}");
    }

    // Nothing of all that was stored.
    let after: proto::HostDetail = c.get(&format!("{}/{}", proto::HOSTS_PATH, e.host_id)).await;
    assert_eq!((after.last_seq, after.processes.len()), (1, 1));
    assert_eq!(after.processes[0].cmdline, ["app"]);
    assert_eq!(after.host.last_seen, before.host.last_seen);

    // A newer agent's extra fields are ignored, not refused.
    let mut v = serde_json::to_value(report(2, "machine-bad-input")).unwrap();
    v["from_the_future"] = json!({"x": 1});
    v["snapshot"]["processes"][0]["selinux_label"] = json!("system_u:system_r:httpd_t:s0");
    let (code, text) = c.post(proto::REPORT_PATH, Some(key), serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(code, 200, "{text}");
    let accepted: proto::ReportResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(accepted.seq, 2);

    // The counters saw all of it: 2 accepted; malformed, mistyped, invalid and the four bad
    // backlogs refused as invalid (400), the oversized one as too large (413). The 401s were
    // refused before the report handler: no report.
    assert_eq!(c.metric(r#"hostwatch_reports_total{outcome="accepted"}"#).await, 2);
    assert_eq!(c.metric(r#"hostwatch_reports_total{outcome="invalid"}"#).await, 7);
    assert_eq!(c.metric(r#"hostwatch_reports_total{outcome="too_large"}"#).await, 1);
    assert_eq!(c.metric("hostwatch_unknown_fields_total").await, 2);
}

on_both_stores!(
    #[tokio::test]
    bad_credentials_and_baselines_are_refused
);
async fn bad_credentials_and_baselines_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");

    // A wrong enroll secret enrolls nobody.
    let req = proto::EnrollRequest {
        enroll_secret: "hwe_wrong".into(),
        host: facts("m-x"),
        agent: status(),
        instance_identity: None,
    };
    let (code, body) = c.post(proto::ENROLL_PATH, None, serde_json::to_vec(&req).unwrap()).await;
    assert_eq!((code, error_of(&body).as_str()), (401, "unknown enroll secret"));
    let hosts: Vec<proto::Host> = c.get(proto::HOSTS_PATH).await;
    assert!(hosts.is_empty());

    // People's endpoints need an API token, not a node key.
    let e = enroll(&c, "m-y").await;
    let resp = reqwest::Client::new()
        .get(format!("{}{}", c.url, proto::HOSTS_PATH))
        .bearer_auth(&e.node_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = reqwest::Client::new().get(format!("{}{}", c.url, proto::FINDINGS_PATH)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));

    // A baseline with a TOML error: 400 naming file, line and column; nothing stored.
    let before: Vec<proto::BaselineSummary> = c.get(proto::BASELINES_PATH).await;
    let (code, body) = apply(&c, "name = \"x\"\n[[process]]\nname = \"a\"\nnmae = \"b\"\n", "x.toml").await;
    assert_eq!(code, 400);
    assert!(error_of(&body).starts_with("x.toml:4:1: unknown field `nmae`"), "{body}");
    // An include of nothing known.
    let (code, body) = apply(&c, "name = \"y\"\ninclude = [\"nowhere\"]\n", "y.toml").await;
    assert_eq!(code, 400);
    assert!(error_of(&body).contains("includes `nowhere`, which is not a known baseline"), "{body}");
    let after: Vec<proto::BaselineSummary> = c.get(proto::BASELINES_PATH).await;
    assert_eq!(before, after);

    // Unknown kinds and statuses are named.
    let out = c.cli(&["findings", "--kind", "bogus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown finding kind \"bogus\""));
    let out = c.cli(&["findings", "--host", "no-such-host"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no host named \"no-such-host\""));
}

on_both_stores!(
    #[tokio::test]
    hostile_agents_cannot_crash_impersonate_or_forge
);
/// What a hostile or broken agent sends must neither crash the collector nor take anything over.
async fn hostile_agents_cannot_crash_impersonate_or_forge() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let secret = std::fs::read_to_string(&c.enroll_secret_file).unwrap().trim().to_owned();

    // A timestamp that cannot be converted to UTC: refused, not a panic, with or without the secret.
    for secret in ["hwe_wrong", secret.as_str()] {
        let mut req = serde_json::to_value(proto::EnrollRequest {
            enroll_secret: secret.into(),
            host: facts("m-t"),
            agent: status(),
            instance_identity: None,
        })
        .unwrap();
        req["agent"]["started_at"] = json!("9999-12-31T23:59:59-05:00");
        let (code, body) = c.post(proto::ENROLL_PATH, None, serde_json::to_vec(&req).unwrap()).await;
        assert_eq!(code, 400, "{body}");
        assert!(error_of(&body).contains("outside the years 1970 to 9999"), "{body}");
        req["agent"]["started_at"] = json!("2026-01-01T00:00:00Z");
        req["host"]["boot_time"] = json!("0000-01-01T00:00:00+01:00");
        let (code, _) = c.post(proto::ENROLL_PATH, None, serde_json::to_vec(&req).unwrap()).await;
        assert_eq!(code, 400);
    }
    let hosts: Vec<proto::Host> = c.get(proto::HOSTS_PATH).await;
    assert!(hosts.is_empty(), "nothing enrolled, and the listing still works");

    // Knowing a host's machine id and the fleet's secret is not being that host.
    let victim = enroll(&c, "m-victim").await;
    let (code, _) = c
        .post(proto::REPORT_PATH, Some(&victim.node_key), serde_json::to_vec(&report(1, "m-victim")).unwrap())
        .await;
    assert_eq!(code, 200);
    let impostor = enroll(&c, "m-victim").await;
    assert_ne!(impostor.host_id, victim.host_id, "a second enrollment is a second host");
    let (code, _) = c
        .post(proto::REPORT_PATH, Some(&victim.node_key), serde_json::to_vec(&report(2, "m-victim")).unwrap())
        .await;
    assert_eq!(code, 200, "the victim's key still works");
    for host in [victim.host_id, impostor.host_id] {
        let dup = c.findings(host, "duplicate_identity", "open");
        assert_eq!(dup.len(), 1, "host {host}");
        assert_eq!(dup[0].detail["hosts"], json!([victim.host_id, impostor.host_id]));
        assert_eq!(dup[0].severity, proto::Severity::High);
    }

    // A host cannot claim it need never report.
    let mut lazy = report(3, "m-victim");
    lazy.agent.interval_secs = u32::MAX;
    let (code, body) =
        c.post(proto::REPORT_PATH, Some(&victim.node_key), serde_json::to_vec(&lazy).unwrap()).await;
    assert_eq!(code, 400);
    assert!(error_of(&body).contains("agent.interval_secs"), "{body}");

    // Agent text echoed into an error cannot forge a line of the collector's log.
    let mut forged = serde_json::to_value(report(3, "m-victim")).unwrap();
    forged["snapshot"]["listeners"] = json!([{
        "protocol": "tcp\n2026-01-01T00:00:00Z  INFO hostwatch_server: FORGED admin token rotated",
        "address": "0.0.0.0", "port": 1, "uid": 0
    }]);
    let (code, _) =
        c.post(proto::REPORT_PATH, Some(&victim.node_key), serde_json::to_vec(&forged).unwrap()).await;
    assert_eq!(code, 400);
    // The refusal is logged (bounded wait for the log line), and no line starts with the forgery.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !c.log().contains("report refused") {
        assert!(std::time::Instant::now() < deadline, "refusal not logged:\n{}", c.log());
        tokio::time::sleep(crate::support::POLL).await;
    }
    let log = c.log();
    assert!(
        log.lines().all(|l| !l.starts_with("2026-01-01T00:00:00Z")),
        "a forged line reached the log:\n{log}"
    );
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    bad_triage_requests_are_refused_with_a_reason
);
async fn bad_triage_requests_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let token = Some(c.admin_token.as_str());
    let silence = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let cases = [
        (serde_json::json!({}), 400, "malformed silence"),
        (
            serde_json::json!({"host": "1", "selector": {"a": "b"}, "seconds": 60, "reason": "x"}),
            400,
            "exactly one of host",
        ),
        (serde_json::json!({"selector": {}, "seconds": 60, "reason": "x"}), 400, "exactly one of host"),
        (
            serde_json::json!({"selector": {"role": "web"}, "seconds": 60, "reason": "  "}),
            400,
            "needs a reason",
        ),
        (
            serde_json::json!({"selector": {"role": "web"}, "seconds": 0, "reason": "x"}),
            400,
            "1 s to 30 days",
        ),
        (
            serde_json::json!({"selector": {"role": "web"}, "seconds": 99_999_999u64, "reason": "x"}),
            400,
            "1 s to 30 days",
        ),
        (serde_json::json!({"host": "no-such-host", "seconds": 60, "reason": "x"}), 404, "no-such-host"),
    ];
    for (body, want, says) in cases {
        let (code, text) = c.post(proto::SILENCES_PATH, token, silence(body.clone())).await;
        assert_eq!(code, want, "{body}: {text}");
        assert!(error_of(&text).contains(says), "{body}: {text}");
    }
    let ack = |id: &str| format!("{}/{id}/ack", proto::FINDINGS_PATH);
    let (code, text) = c.post(&ack("999"), token, br#"{"note": "fine"}"#.to_vec()).await;
    assert_eq!((code, error_of(&text).contains("no finding with id 999")), (404, true), "{text}");
    let (code, text) = c
        .post(&ack("999"), token, serde_json::to_vec(&serde_json::json!({"note": "x".repeat(5000)})).unwrap())
        .await;
    assert_eq!((code, error_of(&text).contains("note longer than 4096 bytes")), (400, true), "{text}");
    // A person's request with a field misspelt is refused, not half taken.
    let (code, text) = c.post(&ack("999"), token, br#"{"nopte": "x"}"#.to_vec()).await;
    assert_eq!((code, error_of(&text).contains("unknown field `nopte`")), (400, true), "{text}");
    let (code, _) = c.post(&ack("abc"), token, Vec::new()).await;
    assert_eq!(code, 400);
    let (code, _) = c.post(&ack("1"), None, Vec::new()).await;
    assert_eq!(code, 401, "no token, no acknowledgement");

    // Learning: what is wrong with the request, said.
    for (args, says) in [
        (vec!["--selector", "role=nobody-has-this"], "no host's tags hold that selector"),
        (vec!["--selector", "=x"], "empty key"),
        (vec!["--host", "1", "--since", "100000years"], "too long"),
    ] {
        let mut all = vec!["baseline", "learn"];
        all.extend(args.iter().copied());
        let out = c.cli(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    }
}
