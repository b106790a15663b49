//! Connections and listeners too short for any scan, seen through the eBPF source with their
//! owners and judged: real loopback sockets made by real child processes (copies of python3
//! under names of the test's own, so that owner and executable are the test's to check).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::events::{NO_BUDGET, finding_where, host_with_workload_env};

/// The agent's environment in these tests: the eBPF source on (the other tests turn it off).
const EVENTS_ON: &[(&str, &str)] = &[("HOSTWATCH_SOCKET_EVENTS", "true")];
use crate::support::{Collector, Guard, agent_log, bin, unique, wait_for};

const WAIT: Duration = Duration::from_secs(45);

/// A copy of python3 named `name` in a directory of the test's own under /run (not a temporary
/// directory: the built-in rules would add findings of their own).
fn python_copy(dir: &Path, name: &str) -> PathBuf {
    let exe = dir.join(name);
    crate::support::copy_program(std::fs::canonicalize("/usr/bin/python3").unwrap(), &exe);
    exe
}

/// Runs `script` under `exe` to its end; its pid.
fn run(exe: &Path, script: &str) -> u32 {
    let mut child = Command::new(exe).args(["-c", script]).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "{} -c {script:?}", exe.display());
    pid
}

/// The agent's own account of its connection source, once it has sent one; the test cannot
/// judge short connections where eBPF is not running, and says why.
async fn ebpf_running(c: &Collector, host: i64, dir: &Path) -> proto::AgentStats {
    let stats = wait_for("the agent's stats", WAIT, async || {
        let detail: proto::HostDetail = c.cli_json(&["host", &host.to_string()]);
        detail.agent_stats.filter(|s| s.connection_source.is_some())
    })
    .await;
    assert_eq!(
        stats.connection_source.as_deref(),
        Some("ebpf"),
        "the eBPF connection source does not run here ({:?}); it needs root with CAP_BPF and \
         CAP_PERFMON and a kernel with BTF\n{}",
        stats.connection_source_why,
        agent_log(dir)
    );
    stats
}

/// Socket history of `host`: every open and close.
fn socket_history(c: &Collector, host: i64) -> Vec<proto::SocketEvent> {
    c.cli_json(&["history", "sockets", "--host", &host.to_string(), "--limit", "100000"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_of_20ms_and_200_udp_sockets_are_reported_with_their_owners() {
    let dir = tempfile::tempdir().unwrap();
    // The machine to itself: the capture rate is the claim.
    let c = Collector::start_alone(dir.path(), NO_BUDGET);
    let (_agent, host) = host_with_workload_env(&c, dir.path(), "", EVENTS_ON).await;
    let h = host.id;
    ebpf_running(&c, h, dir.path()).await;

    let run_dir = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();
    let exe = python_copy(run_dir.path(), &unique("hwconn"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepting = std::thread::spawn(move || {
        for _ in 0..1000 {
            drop(listener.accept());
        }
    });
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let pid = run(
        &exe,
        &format!(
            "import socket,time\n\
             for _ in range(1000):\n\
             \x20   s = socket.create_connection(('127.0.0.1', {port})); time.sleep(0.02); s.close()\n\
             for _ in range(200):\n\
             \x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(('127.0.0.1', {udp_port}))\n\
             \x20   time.sleep(0.02); u.close()\n"
        ),
    );
    accepting.join().unwrap();

    let owned = |e: &proto::SocketEvent, protocol, remote_port| {
        e.kind == "open"
            && e.socket == "connection"
            && e.protocol == protocol
            && e.remote_port == Some(remote_port)
            && e.direction == Some(proto::Direction::Outbound)
            && e.pid == Some(pid)
            && e.exe.as_deref() == exe.to_str()
    };
    // Each connection is one opening (not one local port: on loopback the kernel reuses a port
    // still in TIME_WAIT, tcp_tw_reuse = 2), and none is counted twice (the bound below).
    let count = |protocol, remote_port| -> usize {
        socket_history(&c, h).iter().filter(|e| owned(e, protocol, remote_port)).count()
    };
    // Every one (the issue asks 99%), with its owner: the last UDP sockets' events are read
    // after the program's exit, whose name and executable the agent keeps for them. The last of
    // them reach the collector within a report or two.
    let tcp = wait_for("all 1,000 TCP connections with their owner", WAIT, async || {
        let n = count(proto::Protocol::Tcp, port);
        (n >= 1000).then_some(n)
    })
    .await;
    // A miss says which openings lacked their owner (what to look at in the agent's naming).
    let deadline = std::time::Instant::now() + WAIT;
    let udp_seen = loop {
        let n = count(proto::Protocol::Udp, udp_port);
        if n >= 200 {
            break n;
        }
        if std::time::Instant::now() > deadline {
            let unowned: Vec<proto::SocketEvent> = socket_history(&c, h)
                .into_iter()
                .filter(|e| e.protocol == proto::Protocol::Udp && e.remote_port == Some(udp_port))
                .filter(|e| e.kind == "open" && !owned(e, proto::Protocol::Udp, udp_port))
                .collect();
            panic!(
                "timed out after {WAIT:?} waiting for all 200 UDP sockets with their owner: {n}; openings without it: {unowned:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(tcp <= 1000 && udp_seen <= 200, "{tcp} TCP, {udp_seen} UDP: more than were made");
    let detail: proto::HostDetail = c.cli_json(&["host", &h.to_string()]);
    let stats = detail.agent_stats.unwrap();
    assert!(stats.socket_events >= 2400, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_of_50ms_and_a_connection_of_20ms_to_a_pool_port_are_judged() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), NO_BUDGET);
    let (_agent, host) = host_with_workload_env(&c, dir.path(), "", EVENTS_ON).await;
    let h = host.id;
    ebpf_running(&c, h, dir.path()).await;
    let run_dir = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();

    // A listener that lives 50 ms, between two of the agent's looks.
    let exe = python_copy(run_dir.path(), &unique("hwlisten"));
    let out = Command::new(&exe)
        .args([
            "-c",
            "import socket,time\n\
             s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
             print(s.getsockname()[1], flush=True); time.sleep(0.05); s.close()\n",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let lport: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let subject = format!("tcp/127.0.0.1:{lport}");
    let f = finding_where(&c, h, "unexpected_listener", None, &subject, "transient", |f| f.transient).await;
    assert_eq!(f.detail["exe"].as_str(), exe.to_str(), "{}", f.detail);
    assert!(f.detail["closed_at"].is_string(), "{}", f.detail);

    // One connection of 20 ms to a mining pool's port (on 127.0.0.2: the built-in rules test
    // holds 127.0.0.1:3333).
    let pool = std::net::TcpListener::bind("127.0.0.2:3333")
        .expect("port 3333 on 127.0.0.2 is needed free for the mining-pool test");
    let miner = python_copy(run_dir.path(), &unique("hwpool"));
    // The kernel completes the handshake without an accept().
    run(
        &miner,
        "import socket,time; s=socket.create_connection(('127.0.0.2',3333)); time.sleep(0.02); s.close()",
    );
    let pool_subject = format!("tcp/127.0.0.2:3333 by {}", miner.display());
    let f = finding_where(
        &c,
        h,
        "suspicious_process",
        Some("mining-pool-port"),
        &pool_subject,
        "transient",
        |f| f.transient,
    )
    .await;
    assert_eq!(f.detail["remote"], "127.0.0.2:3333", "{}", f.detail);
    // The connection's socket was born a copy of the listener and left LISTEN for SYN_RECV: no
    // listener closed. The pool's is still there, opened once and never closed in the history.
    let detail: proto::HostDetail = c.cli_json(&["host", &h.to_string()]);
    let pool_ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    assert!(
        detail.listeners.iter().any(|l| l.port == 3333 && l.address == pool_ip),
        "{:?}",
        detail.listeners
    );
    let history: Vec<(String, String)> = socket_history(&c, h)
        .into_iter()
        .filter(|e| e.socket == "listener" && e.local_port == 3333 && e.local_address == pool_ip)
        .map(|e| (e.kind, e.at.to_string()))
        .collect();
    assert_eq!(history.iter().filter(|(kind, _)| kind == "close").count(), 0, "{history:?}");
    drop(pool);
}

/// Under a burst faster than the agent reads, a ring of one page fills: the kernel's drops are
/// counted and reported, not hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ring_is_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), NO_BUDGET);
    let role = unique("ring");
    let _agent = crate::support::start_agent_with(
        &c,
        dir.path(),
        &format!("role={role}"),
        &[("HOSTWATCH_SOCKET_EVENT_RING_BYTES", "4096"), EVENTS_ON[0]],
    );
    let host = c.online(&role).await;
    ebpf_running(&c, host.id, dir.path()).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepting = std::thread::spawn(move || {
        for _ in 0..3000 {
            drop(listener.accept());
        }
    });
    // 3,000 connections as fast as python makes them: about 6,000 events against a ring of
    // about 45.
    let exe = python_copy(dir.path(), &unique("hwburst"));
    run(
        &exe,
        &format!(
            "import socket\nfor _ in range(3000):\n    socket.create_connection(('127.0.0.1', {port})).close()\n"
        ),
    );
    accepting.join().unwrap();
    // Every one of the burst's events is either read or counted dropped, some dropped: waited
    // for together, since a report can leave mid-burst.
    wait_for("dropped events in the agent's stats, and all 6,000 accounted for", WAIT, async || {
        let detail: proto::HostDetail = c.cli_json(&["host", &host.id.to_string()]);
        detail
            .agent_stats
            .filter(|s| s.socket_events_dropped > 0 && s.socket_events_dropped + s.socket_events >= 6000)
    })
    .await;
}

/// Without CAP_BPF and CAP_PERFMON the agent runs on its scans, says so in its stats and its
/// coverage, and still reports an established connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bpf_privileges_the_agent_scans_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let role = unique("nobpf");
    std::fs::write(dir.path().join("agent.toml"), "").unwrap();
    let _agent = Guard(
        crate::support::tool("setpriv")
            .args(["--bounding-set", "-bpf,-perfmon,-sys_admin", "--"])
            .arg(bin("hostwatch-agent"))
            .arg("--config")
            .arg(dir.path().join("agent.toml"))
            .env_clear()
            .env("HOSTWATCH_SERVER", &c.url)
            .env("HOSTWATCH_ENROLL_SECRET_FILE", &c.enroll_secret_file)
            .env("HOSTWATCH_STATE_DIR", dir.path().join("agent-state"))
            .env("HOSTWATCH_INTERVAL", "1s")
            .env("HOSTWATCH_TAGS", format!("role={role}"))
            .env("HOSTWATCH_CLOUD_PROVIDER", "none")
            .env("HOSTWATCH_FILES_DEFAULTS", "false")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
            .spawn()
            .expect("setpriv (util-linux)"),
    );
    let host = c.online(&role).await;
    let stats = wait_for("the agent's stats", WAIT, async || {
        let detail: proto::HostDetail = c.cli_json(&["host", &host.id.to_string()]);
        detail.agent_stats.filter(|s| s.connection_source.is_some())
    })
    .await;
    assert_eq!(stats.connection_source.as_deref(), Some("scans"), "{stats:?}\n{}", agent_log(dir.path()));
    let why = stats.connection_source_why.unwrap_or_default();
    assert!(why.contains("Operation not permitted") || why.contains("EPERM"), "{why}");
    let detail: proto::HostDetail = c.cli_json(&["host", &host.id.to_string()]);
    let coverage = &detail.host.coverage;
    assert_eq!(coverage.state, proto::CoverageState::Degraded, "{coverage:?}");
    assert!(coverage.why.iter().any(|w| w.contains("shorter than a scan")), "{coverage:?}");

    // An established connection is still seen, by the scans.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_accepted, _) = listener.accept().unwrap();
    let local = held.local_addr().unwrap().port();
    wait_for("the established connection reported", WAIT, async || {
        let detail: proto::HostDetail = c.cli_json(&["host", &host.id.to_string()]);
        detail.connections.into_iter().find(|x| x.local_port == local)
    })
    .await;
}
