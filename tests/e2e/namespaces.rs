//! Sockets in other network namespaces (containers) are seen too, each namespace read once, with
//! their owners; the test makes its own namespace with `ip netns` and removes it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hostwatch_proto::v1 as proto;

use crate::support::netns::{Linked, Netns};
use crate::support::{Guard, bin, unique};

#[test]
fn listeners_inside_another_namespace_are_reported_with_it() {
    let _turn = crate::support::Turn::shared();
    let ns = Netns::new();
    // A listener on a port this test picks, inside the namespace only.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut server = Guard(
        crate::support::tool("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "python3",
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let (listener, snap) = loop {
        let (report, _, _) = crate::support::agent_snapshot(&[("HOSTWATCH_CLOUD_PROVIDER", "none")]);
        let snap = report.snapshot.unwrap();
        // The server may still be exec'ing through a launcher (pyenv's shim is bash) when
        // the process list is read; wait for a snapshot that saw it as python.
        let found = snap.listeners.iter().find(|l| l.port == port && l.netns.is_some()).cloned();
        if let Some(l) = found
            && snap.processes.iter().any(|p| Some(p.pid) == l.pid && p.name.starts_with("python3"))
        {
            break (l, snap);
        }
        assert!(Instant::now() < deadline, "the namespace's listener never showed");
        assert!(server.0.try_wait().unwrap().is_none(), "the server in the namespace exited");
        std::thread::sleep(Duration::from_millis(200));
    };
    let pid = listener.pid.expect("owner of the namespace's listener");
    let owner = snap.processes.iter().find(|p| p.pid == pid).unwrap();
    assert!(owner.name.starts_with("python3"), "{owner:?}");
    // The host's own namespace has no such listener: it is not mistaken for one.
    assert!(!snap.listeners.iter().any(|l| l.port == port && l.netns.is_none()));
    server.terminate(Duration::from_secs(10));
}

/// In a network namespace of its own the kernel refuses the process connector: the agent says it
/// polls, and still sees what runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_the_process_connector_polls_and_says_so() {
    use crate::support::{Collector, wait_for};
    let link = Linked::new();
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start_at(dir.path(), "", &format!("{}:0", link.host_ip));
    std::fs::write(dir.path().join("agent.toml"), "").unwrap();
    let role = unique("polled");
    let _agent = Guard(
        crate::support::tool("ip")
            .args(["netns", "exec", &link.ns.0])
            .arg(bin("hostwatch-agent"))
            .arg("--config")
            .arg(dir.path().join("agent.toml"))
            .env_clear()
            .env("HOSTWATCH_SERVER", &c.url)
            // Plain http over the namespace's own link, which no other machine can see.
            .env("HOSTWATCH_ALLOW_INSECURE_HTTP", "true")
            .env("HOSTWATCH_ENROLL_SECRET_FILE", &c.enroll_secret_file)
            .env("HOSTWATCH_STATE_DIR", dir.path().join("agent-state"))
            .env("HOSTWATCH_TAGS", format!("role={role}"))
            .env("HOSTWATCH_CLOUD_PROVIDER", "none")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    const WAIT: Duration = Duration::from_secs(30);
    let host = c.online(&role).await;
    let detail: proto::HostDetail = c.cli_json(&["host", &host.id.to_string()]);
    let stats = detail.agent_stats.expect("agent stats");
    assert_eq!(stats.exec_source, "polling");
    assert!(stats.exec_source_why.as_deref().unwrap_or_default().contains("refused"), "{stats:?}");

    // Polling still sees a process that lives a few seconds, within about a second.
    let name = unique("hwpoll");
    let exe = dir.path().join(&name);
    crate::support::copy_program("/bin/sleep", &exe);
    let _kid = Guard(Command::new(&exe).arg("5").spawn().unwrap());
    wait_for("the process seen by polling", WAIT, async || {
        let rows: Vec<proto::Located<proto::Process>> =
            c.cli_json(&["ps", "--host", &host.id.to_string(), "--name", &name]);
        rows.into_iter().next()
    })
    .await;
}
