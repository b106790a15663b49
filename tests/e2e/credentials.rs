//! Credentials people manage: API tokens and enroll secrets created, listed, expired and revoked
//! through the CLI, host node keys revoked, every change audited; every route refusing every
//! credential that may not use it; tags a host cannot choose.

use std::time::{Duration, Instant};

use hostwatch_proto::v1::{self as proto};

use crate::bad_input::error_of;
use crate::support::{Collector, agent_log, on_both_stores, start_agent_with, unique, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `hostwatch token create`: the token alone on stdout.
fn create_token(c: &Collector, name: &str, role: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--name", name, "--role", role];
    args.extend(extra);
    let out = c.cli(&args);
    assert!(out.status.success(), "token create: {}", stderr(&out));
    assert!(stderr(&out).contains("shown this once"), "{}", stderr(&out));
    let token = stdout(&out);
    assert!(token.starts_with(proto::API_TOKEN_PREFIX) && token.len() == 68, "{token:?}");
    token
}

fn token_id(c: &Collector, name: &str) -> i64 {
    let list: Vec<proto::TokenInfo> = c.cli_json(&["token", "list"]);
    list.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("token {name} in {list:?}")).id
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    tokens_are_shown_once_stored_hashed_expire_revoke_at_once_and_are_audited
);
async fn tokens_are_shown_once_stored_hashed_expire_revoke_at_once_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");

    // A reader reads and manages nothing.
    let reader = create_token(&c, "ci-read", "reader", &[]);
    assert!(c.cli_as(&reader, &["hosts"]).status.success());
    let out = c.cli_as(&reader, &["token", "list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("needs the admin role"), "{}", stderr(&out));

    // Listed without its value; stored only as a hash.
    let listed = c.cli(&["token", "list", "--output", "json"]);
    assert!(!stdout(&listed).contains(&reader), "a listing shows no token");
    let list: Vec<proto::TokenInfo> = serde_json::from_slice(&listed.stdout).unwrap();
    let info = list.iter().find(|t| t.name == "ci-read").unwrap();
    assert_eq!(
        (info.role.as_str(), info.state, info.expires_at),
        ("reader", proto::CredentialState::Active, None)
    );
    let stored = c.store_contents();
    assert!(stored.contains("ci-read"), "the store's contents are read: the token's name is there");
    assert!(!stored.contains(&reader) && !stored.contains(&c.admin_token), "a token in clear in the store");

    // Revoked: refused at the next request, and said so to its holder.
    let out = c.cli(&["token", "revoke", &info.id.to_string(), "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = c.cli_as(&reader, &["hosts"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("API token `ci-read` was revoked"), "{}", stderr(&out));

    // Expiring: works, then is refused as expired.
    let brief = create_token(&c, "brief", "analyst", &["--expires", "2s"]);
    assert!(c.cli_as(&brief, &["findings"]).status.success(), "works before it expires");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = c.cli_as(&brief, &["findings"]);
        if stderr(&out).contains("API token `brief` has expired") {
            break;
        }
        assert!(Instant::now() < deadline, "still accepted 10 s after a 2 s expiry: {}", stderr(&out));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list: Vec<proto::TokenInfo> = c.cli_json(&["token", "list"]);
    assert_eq!(
        list.iter().find(|t| t.name == "brief").map(|t| t.state),
        Some(proto::CredentialState::Expired)
    );

    // The last working admin token cannot be revoked: nobody could manage credentials after.
    let first = token_id(&c, "bootstrap-admin");
    let out = c.cli(&["token", "revoke", &first.to_string()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("last working admin token"), "{}", stderr(&out));
    let second = create_token(&c, "second-admin", "admin", &[]);
    let out = c.cli_as(&second, &["token", "revoke", &first.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!c.cli(&["hosts"]).status.success(), "the revoked bootstrap token is refused");

    // Every change in the audit trail, by whom.
    let out = c.cli_as(&second, &["audit", "--since", "1h", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let trail: Vec<proto::AuditEntry> = serde_json::from_slice(&out.stdout).unwrap();
    let had = |action: &str, target: String, actor: &str| {
        trail.iter().any(|e| e.action == action && e.target == target && e.actor.starts_with(actor))
    };
    assert!(had("create_token", format!("token:{}", info.id), "token:bootstrap-admin#"), "{trail:#?}");
    assert!(had("revoke_token", format!("token:{}", info.id), "token:bootstrap-admin#"), "{trail:#?}");
    assert!(had("revoke_token", format!("token:{first}"), "token:second-admin#"), "{trail:#?}");
    assert!(trail.windows(2).all(|w| w[0].at >= w[1].at), "newest first");
    let out = c.cli_as(&reader, &["audit"]);
    assert!(!out.status.success(), "the trail is the admin's");
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_secret_assigns_tags_a_host_cannot_change_and_a_revoked_host_enrolls_again
);
async fn a_secret_assigns_tags_a_host_cannot_change_and_a_revoked_host_enrolls_again() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let role = unique("fleet");
    let out = c.cli(&["secret", "create", "--name", "web-fleet", "--tags", &format!("role={role}")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let secret = stdout(&out);
    assert!(secret.starts_with(proto::ENROLL_SECRET_PREFIX), "{secret:?}");
    let secret_file = dir.path().join("web-secret");
    std::fs::write(&secret_file, &secret).unwrap();
    let secret_file = secret_file.to_str().unwrap().to_owned();

    // The host says it is a database; its secret says web, and web it is.
    let agent_dir = dir.path().join("a1");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let mut agent =
        start_agent_with(&c, &agent_dir, "role=db,team=x", &[("HOSTWATCH_ENROLL_SECRET_FILE", &secret_file)]);
    let host = wait_for("the host enrolled with its secret's tags", WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        hosts.into_iter().find(|h| h.tags.get("role") == Some(&role))
    })
    .await;
    assert_eq!(host.tags.get("team").map(String::as_str), Some("x"), "{:?}", host.tags);
    let id = host.id.to_string();
    let secrets: Vec<proto::SecretInfo> = c.cli_json(&["secret", "list"]);
    let s = secrets.iter().find(|s| s.name == "web-fleet").unwrap();
    assert_eq!((s.hosts, s.state), (1, proto::CredentialState::Active));
    assert!(!serde_json::to_string(&secrets).unwrap().contains(&secret), "a listing shows no secret");

    // Restarted with other tags, the same host is judged by the tags it enrolled with; what it
    // reports is shown beside.
    agent.terminate(Duration::from_secs(10));
    let _agent =
        start_agent_with(&c, &agent_dir, "role=db,team=y", &[("HOSTWATCH_ENROLL_SECRET_FILE", &secret_file)]);
    let detail = wait_for("the restarted agent's tags reported", WAIT, async || {
        let d: proto::HostDetail = c.cli_json(&["host", &id]);
        (d.reported_tags.get("team").map(String::as_str) == Some("y")).then_some(d)
    })
    .await;
    assert_eq!(detail.host.tags.get("team").map(String::as_str), Some("x"), "a host cannot move itself");
    assert_eq!(detail.host.tags.get("role"), Some(&role));
    let shown = c.cli(&["host", &id]);
    assert!(stdout(&shown).contains("reported tags"), "{}", stdout(&shown));

    // `host revoke` needs a host; `host show revoke` is a host named "revoke".
    let out = c.cli(&["host", "revoke"]);
    assert!(!out.status.success() && stderr(&out).contains("required"), "{}", stderr(&out));
    let out = c.cli(&["host", "show", "revoke"]);
    assert!(stderr(&out).contains("no host named \"revoke\""), "{}", stderr(&out));

    // Revoked: the agent is refused at its next report and enrolls again, as a new host, with no
    // duplicate_identity for the host it was.
    let out = c.cli_json::<proto::HostRevoked>(&["host", "revoke", &id]);
    assert_eq!((out.host_id, out.keys_revoked), (host.id, 1));
    let again = wait_for("the agent enrolled again as a new host", WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        hosts.into_iter().find(|h| h.tags.get("role") == Some(&role) && h.id != host.id)
    })
    .await;
    assert!(
        agent_log(&agent_dir).contains("collector no longer accepts this node key"),
        "{}",
        agent_log(&agent_dir)
    );
    let twins = c.findings(again.id, "duplicate_identity", "all");
    assert!(
        twins.is_empty(),
        "a revoked host is not a twin: {:#?}\nhosts: {:#?}",
        twins.iter().map(|f| (&f.subject, &f.detail, f.first_seen)).collect::<Vec<_>>(),
        c.cli_json::<Vec<proto::Host>>(&["hosts", "--all"])
    );

    // With its secret revoked too, it cannot enroll again, and says why.
    let s_id = s.id.to_string();
    assert!(c.cli(&["secret", "revoke", &s_id]).status.success());
    let out = c.cli_json::<proto::HostRevoked>(&["host", "revoke", &again.id.to_string()]);
    assert_eq!(out.keys_revoked, 1);
    wait_for("the agent told its enroll secret was revoked", WAIT, async || {
        agent_log(&agent_dir).contains("enroll secret `web-fleet` was revoked").then_some(())
    })
    .await;
    let trail: Vec<proto::AuditEntry> = c.cli_json(&["audit"]);
    // The agent logged neither its secret nor any node key it held.
    assert_eq!(crate::support::credential_in(&agent_log(&agent_dir)), None);
    for (action, target) in [
        ("create_secret", format!("secret:{s_id}")),
        ("revoke_secret", format!("secret:{s_id}")),
        ("revoke_host", format!("host:{}", host.id)),
        ("enroll", format!("host:{}", again.id)),
    ] {
        assert!(
            trail.iter().any(|e| e.action == action && e.target == target),
            "{action} {target}: {trail:#?}"
        );
    }
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    every_route_refuses_every_credential_below_it
);
/// Every people's route, with every credential that must not pass: nothing answered but 401 or
/// 403, and nothing changed.
async fn every_route_refuses_every_credential_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let reader = create_token(&c, "reader", "reader", &[]);
    let analyst = create_token(&c, "analyst", "analyst", &[]);
    let revoked = create_token(&c, "revoked", "admin", &[]);
    assert!(c.cli(&["token", "revoke", &token_id(&c, "revoked").to_string()]).status.success());
    let expired = create_token(&c, "expired", "admin", &["--expires", "1s"]);
    // A node key, of a host enrolled by hand.
    let enroll = proto::EnrollRequest {
        enroll_secret: std::fs::read_to_string(&c.enroll_secret_file).unwrap().trim().to_owned(),
        host: proto::HostFacts::new("route-table", "machine-route-table"),
        agent: proto::AgentStatus::new("0.0.1", 10, time::OffsetDateTime::now_utc()),
        instance_identity: None,
    };
    let (code, body) = c.post(proto::ENROLL_PATH, None, serde_json::to_vec(&enroll).unwrap()).await;
    assert_eq!(code, 200, "{body}");
    let node_key = serde_json::from_str::<proto::EnrollResponse>(&body).unwrap().node_key;
    let host = serde_json::from_str::<proto::EnrollResponse>(&body).unwrap().host_id;
    // The expired token has expired (a positive check, not a sleep).
    wait_for("the 1 s token expired", Duration::from_secs(10), async || {
        stderr(&c.cli_as(&expired, &["hosts"])).contains("has expired").then_some(())
    })
    .await;

    let (
        hosts_path,
        findings_path,
        silences_path,
        learn_path,
        processes_path,
        listeners_path,
        connections_path,
        process_history_path,
        socket_history_path,
        current_files_path,
        files_path,
        baselines_path,
        tokens_path,
        secrets_path,
        audit_path,
    ) = (
        proto::HOSTS_PATH,
        proto::FINDINGS_PATH,
        proto::SILENCES_PATH,
        proto::LEARN_PATH,
        proto::PROCESSES_PATH,
        proto::LISTENERS_PATH,
        proto::CONNECTIONS_PATH,
        proto::PROCESS_HISTORY_PATH,
        proto::SOCKET_HISTORY_PATH,
        proto::CURRENT_FILES_PATH,
        proto::FILES_PATH,
        proto::BASELINES_PATH,
        proto::TOKENS_PATH,
        proto::SECRETS_PATH,
        proto::AUDIT_PATH,
    );
    let (h, id) = (format!("{hosts_path}/{host}"), 1);
    // (method, path, body, the least role it needs)
    let routes: Vec<(&str, String, serde_json::Value, &str)> = vec![
        ("GET", hosts_path.into(), serde_json::Value::Null, "reader"),
        ("GET", h.clone(), serde_json::Value::Null, "reader"),
        ("POST", format!("{h}/revoke"), serde_json::json!({}), "admin"),
        ("GET", findings_path.into(), serde_json::Value::Null, "reader"),
        ("POST", format!("{findings_path}/{id}/ack"), serde_json::json!({ "note": "x" }), "analyst"),
        ("GET", silences_path.into(), serde_json::Value::Null, "reader"),
        (
            "POST",
            silences_path.into(),
            serde_json::json!({ "host": host.to_string(), "seconds": 60, "reason": "x" }),
            "analyst",
        ),
        ("GET", format!("{learn_path}?host={host}"), serde_json::Value::Null, "reader"),
        ("GET", processes_path.into(), serde_json::Value::Null, "reader"),
        ("GET", listeners_path.into(), serde_json::Value::Null, "reader"),
        ("GET", connections_path.into(), serde_json::Value::Null, "reader"),
        ("GET", process_history_path.into(), serde_json::Value::Null, "reader"),
        ("GET", socket_history_path.into(), serde_json::Value::Null, "reader"),
        ("GET", files_path.into(), serde_json::Value::Null, "reader"),
        ("GET", current_files_path.into(), serde_json::Value::Null, "reader"),
        ("GET", baselines_path.into(), serde_json::Value::Null, "reader"),
        (
            "POST",
            baselines_path.into(),
            serde_json::json!({ "source": "name = \"x\"\nselector = { role = \"x\" }\n" }),
            "admin",
        ),
        ("GET", tokens_path.into(), serde_json::Value::Null, "admin"),
        ("POST", tokens_path.into(), serde_json::json!({ "name": "x", "role": "admin" }), "admin"),
        ("POST", format!("{tokens_path}/{id}/revoke"), serde_json::json!({}), "admin"),
        ("GET", secrets_path.into(), serde_json::Value::Null, "admin"),
        ("POST", secrets_path.into(), serde_json::json!({ "name": "x" }), "admin"),
        ("POST", format!("{secrets_path}/{id}/revoke"), serde_json::json!({}), "admin"),
        ("GET", audit_path.into(), serde_json::Value::Null, "admin"),
    ];
    let rank = |role: &str| ["reader", "analyst", "admin"].iter().position(|r| *r == role).unwrap();
    // (credential, its role if it is a working token)
    let callers: Vec<(&str, Option<&str>, Option<&str>)> = vec![
        ("no credential", None, None),
        (
            "an unknown token",
            Some("hwt_0000000000000000000000000000000000000000000000000000000000000000"),
            None,
        ),
        ("a revoked admin token", Some(revoked.as_str()), None),
        ("an expired admin token", Some(expired.as_str()), None),
        ("a node key", Some(node_key.as_str()), None),
        ("an enroll secret", Some(enroll.enroll_secret.as_str()), None),
        ("a reader token", Some(reader.as_str()), Some("reader")),
        ("an analyst token", Some(analyst.as_str()), Some("analyst")),
    ];
    let before =
        (c.cli(&["audit", "--output", "json"]).stdout, c.cli(&["token", "list", "--output", "json"]).stdout);
    let http = reqwest::Client::new();
    let mut checked = 0;
    for (method, path, body, needs) in &routes {
        for (who, credential, role) in &callers {
            if role.is_some_and(|r| rank(r) >= rank(needs)) {
                continue;
            }
            let url = format!("{}{path}", c.url);
            let mut req = match *method {
                "GET" => http.get(&url),
                _ => http.post(&url).header("content-type", "application/json").body(body.to_string()),
            };
            if let Some(cred) = credential {
                req = req.bearer_auth(cred);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let want = if role.is_some() { 403 } else { 401 };
            assert_eq!(status, want, "{method} {path} with {who}: {text}");
            assert!(!error_of(&text).is_empty(), "{method} {path} with {who}: a reason");
            checked += 1;
        }
    }
    assert!(checked > routes.len() * 6, "{checked} refusals checked");
    let after =
        (c.cli(&["audit", "--output", "json"]).stdout, c.cli(&["token", "list", "--output", "json"]).stdout);
    assert!(before == after, "a refused request changed the audit trail or the tokens");
    // An agent's route refuses a person's token, whatever its role.
    let (code, text) = c.post(proto::REPORT_PATH, Some(&c.admin_token), b"{}".to_vec()).await;
    assert_eq!(code, 401, "{text}");
    // And the node key still works where it belongs: none of the refused revocations took.
    let report = crate::bad_input::report(1, "machine-route-table");
    let (code, text) =
        c.post(proto::REPORT_PATH, Some(&node_key), serde_json::to_vec(&report).unwrap()).await;
    assert_eq!(code, 200, "{text}");
}
