//! The `hostwatch-agent` binary: configuration refusals and the local snapshot.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::Command;

use hostwatch_proto::v1 as proto;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hostwatch-agent"));
    c.env_clear();
    c
}

#[test]
fn an_unknown_key_in_the_config_file_refuses_to_start_and_says_which() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("agent.toml");
    std::fs::write(&f, "server = \"http://127.0.0.1:1\"\nbogus_key = 1\n").unwrap();
    let out = agent().arg("--config").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:1: unknown field `bogus_key`", f.display())), "{err}");
}

#[test]
fn a_missing_config_file_and_bad_variables_are_named() {
    let out = agent().args(["--config", "/nonexistent/agent.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/agent.toml"));
    let out = agent().env("HOSTWATCH_INTERVAL", "fast").arg("snapshot").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOSTWATCH_INTERVAL"));
}

#[test]
fn running_without_a_collector_says_what_to_set() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("agent.toml");
    std::fs::write(&f, "").unwrap();
    let out =
        agent().arg("--config").arg(&f).env("HOSTWATCH_STATE_DIR", d.path().join("state")).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "a missing setting is configuration: EX_CONFIG, no restart loop");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no collector configured"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn snapshot_prints_what_would_be_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let me = std::process::id();
    let out = agent()
        .arg("snapshot")
        .env("HOSTWATCH_TAGS", "role=test")
        .env("HOSTWATCH_SERVRE", "typo")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown environment variable HOSTWATCH_SERVRE"), "{stderr}");
    let report: proto::Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.seq, 0, "a local snapshot is not a sent report");
    assert_eq!(report.host.tags.get("role").map(String::as_str), Some("test"));
    let snap = report.snapshot.unwrap();
    let l = snap
        .listeners
        .iter()
        .find(|l| l.port == port && l.protocol == proto::Protocol::Tcp)
        .expect("the test's listener");
    assert_eq!(l.pid, Some(me), "the listener's owner is this test process");
    let p = snap.processes.iter().find(|p| p.pid == me).expect("this test process");
    // Other tests of this binary start children of this process too: the agent by its name.
    let child = snap
        .processes
        .iter()
        .find(|p| p.ppid == me && p.name == "hostwatch-agent")
        .expect("the agent, child of this test");
    assert_eq!(child.exe.as_deref(), Some(env!("CARGO_BIN_EXE_hostwatch-agent")));
    assert_eq!(p.exe.as_deref(), std::env::current_exe().unwrap().to_str());
    use proto::Validate;
    report.host.validate().unwrap();
}
