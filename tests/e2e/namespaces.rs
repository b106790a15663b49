//! Sockets in other network namespaces (containers) are seen too, each namespace read once, with
//! their owners; the test makes its own namespace with `ip netns` and removes it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hostwatch_proto::v1 as proto;

use crate::support::{Guard, bin, unique};

/// A network namespace deleted when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = unique("hwns");
        let st = Command::new("ip").args(["netns", "add", &name]).status().expect("run ip (iproute2)");
        assert!(st.success(), "ip netns add {name} failed (root needed)");
        let ns = Netns(name);
        let st = Command::new("ip")
            .args(["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success());
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn listeners_inside_another_namespace_are_reported_with_it() {
    let ns = Netns::new();
    // A listener on a port this test picks, inside the namespace only.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut server = Guard(
        Command::new("ip")
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
        let out = Command::new(bin("hostwatch-agent")).arg("snapshot").env_clear().output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: proto::Report = serde_json::from_slice(&out.stdout).unwrap();
        let snap = report.snapshot.unwrap();
        if let Some(l) = snap.listeners.iter().find(|l| l.port == port && l.netns.is_some()).cloned() {
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
