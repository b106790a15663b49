//! The walking skeleton, end to end: a process and a listener that a baseline does not explain
//! become findings, resolve when they go and reopen when they return; a required process that
//! stops becomes missing_process; the agent says goodbye on SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::support::{Collector, Guard, on_both_stores, python_http_server, start_agent, unique, wait_for};

/// Bound on every wait: generous for a loaded 2-core CI machine, while the agent reports every 1 s.
const WAIT: Duration = Duration::from_secs(30);

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    listener_and_process_findings_open_resolve_and_reopen
);
async fn listener_and_process_findings_open_resolve_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), "");

    // A required process under a name unique to this run.
    let req_name = unique("hwreq");
    let req_exe = dir.path().join(&req_name);
    crate::support::copy_program("/bin/sleep", &req_exe);
    let mut required = Guard(Command::new(&req_exe).arg("600").spawn().unwrap());

    let role = unique("e2e");
    let baseline = dir.path().join("e2e.toml");
    std::fs::write(
        &baseline,
        format!(
            "name = \"{role}\"\nselector = {{ role = \"{role}\" }}\n\n\
             [[process]]\nname = \"{req_name}\"\ncount = {{ min = 1 }}\n\n\
             [[listen]]\nprotocol = \"tcp\"\nport = {port}\nprocess = \"hostwatch\"\nrequired = true\n",
            port = collector.port
        ),
    )
    .unwrap();
    let applied: Vec<proto::BaselineSummary> =
        collector.cli_json(&["baseline", "apply", baseline.to_str().unwrap()]);
    assert_eq!((applied[0].name.as_str(), applied[0].rules), (role.as_str(), 2));

    let mut agent = start_agent(&collector, dir.path(), &format!("role={role},team=e2e"));
    let host: proto::Host = wait_for("the agent's host online with its workload", WAIT, async || {
        let hosts: Vec<proto::Host> = collector.cli_json(&["hosts"]);
        hosts.into_iter().find(|h| {
            h.tags.get("role") == Some(&role)
                && h.status == proto::HostStatus::Online
                && h.workload.as_deref() == Some(role.as_str())
        })
    })
    .await;
    assert_eq!(host.tags.get("team").map(String::as_str), Some("e2e"));
    let key = dir.path().join("agent-state/node-key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "node key is private");

    // Fleet-wide state: the collector's listener, and a connection this test holds to it.
    let ports: Vec<proto::Located<proto::Listener>> =
        collector.cli_json(&["ports", "--host", &host.id.to_string(), "--port", &collector.port.to_string()]);
    assert!(ports.iter().any(|l| l.item.process.as_deref() == Some("hostwatch")), "{ports:?}");
    let held = std::net::TcpStream::connect(("127.0.0.1", collector.port)).unwrap();
    let held_port = held.local_addr().unwrap().port();
    let me = std::process::id();
    let conn = wait_for("the test's connection to the collector", WAIT, async || {
        let conns: Vec<proto::Located<proto::Connection>> = collector.cli_json(&[
            "conns",
            "--host",
            &host.id.to_string(),
            "--port",
            &collector.port.to_string(),
        ]);
        conns.into_iter().find(|c| c.item.local_port == held_port)
    })
    .await;
    assert_eq!((conn.item.pid, conn.item.direction), (Some(me), proto::Direction::Outbound));
    let mine: Vec<proto::Located<proto::Process>> =
        collector.cli_json(&["ps", "--host", &host.id.to_string(), "--name", &req_name]);
    assert_eq!(mine.len(), 1, "{mine:?}");
    drop(held);

    // Both requirements are met: nothing missing.
    assert!(collector.findings(host.id, "missing_process", "open").is_empty());
    assert!(collector.findings(host.id, "missing_listener", "open").is_empty());

    // An unexpected listener.
    let (mut python, port) = python_http_server(0);
    let subject = format!("tcp/127.0.0.1:{port}");
    let finding = wait_for("an unexpected_listener finding for python3's port", WAIT, async || {
        collector.findings(host.id, "unexpected_listener", "open").into_iter().find(|f| f.subject == subject)
    })
    .await;
    assert_eq!(finding.severity, proto::Severity::High);
    assert_eq!(finding.detail["port"].as_u64(), Some(u64::from(port)));
    let owner = finding.detail["process"].as_str().unwrap_or_default();
    assert!(owner.starts_with("python3"), "owner named in the finding: {}", finding.detail);
    assert!(finding.detail["exe"].as_str().unwrap_or_default().contains("python3"), "{}", finding.detail);
    // Its process is unexpected too: a finding for the executable that owns the listener.
    let exe = finding.detail["exe"].as_str().unwrap().to_owned();
    let procs = collector.findings(host.id, "unexpected_process", "open");
    assert!(procs.iter().any(|f| f.subject == exe), "{exe} among the unexpected processes");

    // Gone: resolved.
    python.terminate(Duration::from_secs(10));
    wait_for("the listener finding resolved", WAIT, async || {
        collector
            .findings(host.id, "unexpected_listener", "resolved")
            .into_iter()
            .find(|f| f.id == finding.id)
    })
    .await;

    // Back on the same port: the same finding reopens.
    let (_python_again, again) = python_http_server(port);
    assert_eq!(again, port);
    let reopened = wait_for("the same finding reopened", WAIT, async || {
        collector.findings(host.id, "unexpected_listener", "open").into_iter().find(|f| f.id == finding.id)
    })
    .await;
    assert_eq!(reopened.first_seen, finding.first_seen, "a reopened finding keeps its history");

    // The required process stops: missing_process.
    required.terminate(Duration::from_secs(10));
    let missing = wait_for("a missing_process finding", WAIT, async || {
        collector.findings(host.id, "missing_process", "open").into_iter().find(|f| f.subject == req_name)
    })
    .await;
    assert_eq!(missing.detail["found"].as_u64(), Some(0));
    assert_eq!(missing.detail["min"].as_u64(), Some(1));

    // SIGTERM: the agent exits cleanly and says goodbye, so the host is stopped, not silent. The
    // goodbye is sent before the agent exits, so one look after the exit is enough.
    let status = agent.terminate(Duration::from_secs(15));
    assert!(status.success(), "agent exit status {status:?}");
    let hosts: Vec<proto::Host> = collector.cli_json(&["hosts"]);
    let h = hosts.iter().find(|h| h.id == host.id).unwrap();
    assert_eq!(h.status, proto::HostStatus::Stopped);

    let mut collector = collector;
    let status = collector.process.terminate(Duration::from_secs(15));
    assert!(status.success(), "collector exit status {status:?}; log:\n{}", collector.log());
}
