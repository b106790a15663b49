//! The agent's probes of its own listeners (issue 19), against real servers Debian has
//! (redis-server, memcached) started by the test on free ports, reached through an address the
//! test gives this host on a veth pair (never the machine's own network address): the verdict
//! on the listener and the `unauthenticated_service` finding a user sees, or its absence beside
//! a positive mark (the listener's verdict `authenticated`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use hostwatch_proto::v1 as proto;
use proto::{AuthVerdict, Located, Severity};

use crate::support::netns::Linked;
use crate::support::{Collector, Guard, copy_program, start_agent_under, start_agent_with, tool, wait_for};

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts on 127.0.0.1:`port`.
async fn listening(port: u16) {
    wait_for(&format!("a server on port {port}"), Duration::from_secs(20), async || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
    })
    .await;
}

/// What every test Redis runs with: nothing saved, in the foreground, its log on stdout.
const REDIS_QUIET: [&str; 8] = ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""];

/// redis-server on `port` with `args`, its files in `dir`.
async fn redis(dir: &Path, port: u16, args: &[&str]) -> Guard {
    let data = dir.join(format!("redis-{port}"));
    std::fs::create_dir_all(&data).expect("redis dir");
    let child = tool("redis-server")
        .args(["--port", &port.to_string(), "--dir"])
        .arg(&data)
        .args(REDIS_QUIET)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    let g = Guard(child);
    listening(port).await;
    g
}

/// One command to a Redis on loopback (as its own host's client, which protected mode allows),
/// with `auth` first where given; the reply's text.
fn redis_ask(port: u16, auth: Option<&str>, command: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let resp = |args: &[&str]| {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        out
    };
    let mut req = String::new();
    if let Some(pw) = auth {
        req.push_str(&resp(&["AUTH", pw]));
    }
    req.push_str(&resp(command));
    s.write_all(req.as_bytes()).expect("write to redis");
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    // Replies end with CRLF; INFO's bulk string is read whole within the timeout.
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let replies = text.matches("\r\n").count();
        if (command[0] != "INFO" && replies > usize::from(auth.is_some()))
            || (command[0] == "INFO" && text.contains("\r\n\r\n"))
        {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The listener on `port` of host `host` as `hostwatch ports` shows it, once its probe's verdict is in.
async fn probed(c: &Collector, host: i64, port: u16) -> proto::Listener {
    wait_for(&format!("the probe's verdict on port {port}"), Duration::from_secs(30), async || {
        let ls: Vec<Located<proto::Listener>> =
            c.cli_json(&["ports", "--host", &host.to_string(), "--port", &port.to_string()]);
        ls.into_iter().map(|l| l.item).find(|l| l.auth.is_some())
    })
    .await
}

async fn finding(c: &Collector, host: i64, subject: &str) -> proto::Finding {
    wait_for(&format!("the finding {subject:?}"), Duration::from_secs(30), async || {
        c.findings(host, "unauthenticated_service", "open").into_iter().find(|f| f.subject == subject)
    })
    .await
}

/// A collector and an agent with probes on, which reach listeners on every address through the
/// address the test gives this host on a veth pair; `env`: more variables for the agent. The
/// link, the directory, the collector, the agent, and the agent's host id.
async fn probing(role: &str, env: &[(&str, &str)]) -> (Linked, tempfile::TempDir, Collector, Guard, i64) {
    let link = Linked::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Collector::start(dir.path(), "");
    let mut vars = vec![("HOSTWATCH_PROBES", "true"), ("HOSTWATCH_PROBES_VIA", link.host_ip.as_str())];
    vars.extend_from_slice(env);
    let agent = start_agent_with(&c, dir.path(), &format!("role={role}"), &vars);
    let host = c.online(role).await.id;
    (link, dir, c, agent, host)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_redis_is_critical_a_protected_one_low_and_one_with_a_password_no_finding() {
    let (_link, dir, c, _agent, host) = probing("probe-redis", &[]).await;
    let (open, protected, locked) = (free_port(), free_port(), free_port());
    let _open = redis(dir.path(), open, &["--bind", "0.0.0.0", "--protected-mode", "no"]).await;
    // Redis's own default: every address, protected mode on, no password.
    let _protected = redis(dir.path(), protected, &["--protected-mode", "yes"]).await;
    let _locked =
        redis(dir.path(), locked, &["--bind", "0.0.0.0", "--requirepass", "correct-horse-battery"]).await;

    let f = finding(&c, host, &format!("redis on tcp/0.0.0.0:{open}")).await;
    assert_eq!(f.severity, Severity::Critical, "{f:?}");
    assert_eq!(f.detail["exposure"], "every address", "{f:?}");
    assert_eq!(f.detail["process"], "redis-server", "{f:?}");
    assert!(f.detail["reason"].as_str().is_some_and(|r| r.contains("INFO")), "{f:?}");

    let f = finding(&c, host, &format!("redis on tcp/0.0.0.0:{protected}")).await;
    assert_eq!(f.severity, Severity::Low, "protected mode answers this host's clients only: {f:?}");
    assert_eq!(f.detail["verdict"], "local_only", "{f:?}");

    // The password-protected one: probed (a positive mark), and no finding.
    let l = probed(&c, host, locked).await;
    let auth = l.auth.expect("probed");
    assert_eq!((auth.verdict, auth.service.as_str()), (AuthVerdict::Authenticated, "redis"), "{auth:?}");
    let all = c.findings(host, "unauthenticated_service", "open");
    assert!(!all.iter().any(|f| f.subject.contains(&format!(":{locked}"))), "{all:?}");

    // `ports --unauthenticated` lists the two that answer without a password, not the third.
    let listed: Vec<Located<proto::Listener>> =
        c.cli_json(&["ports", "--host", &host.to_string(), "--unauthenticated"]);
    let ports: std::collections::BTreeSet<u16> = listed.iter().map(|l| l.item.port).collect();
    assert!(ports.contains(&open) && ports.contains(&protected), "{listed:?}");
    assert!(!ports.contains(&locked), "{listed:?}");

    // The probes wrote nothing: no key, no change since the (never made) last save.
    for (port, auth) in [(open, None), (protected, None), (locked, Some("correct-horse-battery"))] {
        let size = redis_ask(port, auth, &["DBSIZE"]);
        assert!(size.ends_with(":0\r\n"), "port {port}: DBSIZE {size:?}");
        let info = redis_ask(port, auth, &["INFO", "persistence"]);
        assert!(info.contains("rdb_changes_since_last_save:0\r\n"), "port {port}: {info}");
    }
}

/// A container's Redis: open, on every address of a network namespace of its own, which only that
/// namespace's addresses reach. An agent that may enter the namespace (root here) probes it from
/// inside and it is a finding; one without CAP_SYS_ADMIN (as the shipped unit runs it) says it
/// could not, and files nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_in_another_network_namespace_is_probed_inside_it_where_the_agent_may_enter() {
    let (link, dir, c, _agent, host) = probing("probe-netns", &[]).await;
    let bare_dir = tempfile::tempdir().expect("tempdir");
    let _bare = start_agent_under(
        &["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--"],
        &c,
        bare_dir.path(),
        "role=probe-netns-bare",
        &[("HOSTWATCH_PROBES", "true")],
    );
    let bare = c.online("probe-netns-bare").await.id;
    let port = free_port();
    let data = dir.path().join("redis-netns");
    std::fs::create_dir_all(&data).expect("redis dir");
    let _redis = Guard(
        tool("ip")
            .args(["netns", "exec", &link.ns.0, "redis-server", "--port", &port.to_string(), "--dir"])
            .arg(&data)
            .args(REDIS_QUIET)
            .args(["--bind", "0.0.0.0", "--protected-mode", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server in the namespace"),
    );

    let subject = format!("redis on tcp/0.0.0.0:{port}");
    let f = finding(&c, host, &subject).await;
    assert_eq!(f.severity, Severity::Critical, "{f:?}");
    assert!(f.detail["reason"].as_str().is_some_and(|r| r.contains("INFO")), "{f:?}");
    let l = probed(&c, host, port).await;
    assert!(l.netns.is_some(), "the listener is the namespace's: {l:?}");

    // Without CAP_SYS_ADMIN: a verdict that says why (a positive mark), and no finding.
    let l = probed(&c, bare, port).await;
    assert!(l.netns.is_some(), "{l:?}");
    let auth = l.auth.expect("a verdict");
    assert_eq!(auth.verdict, AuthVerdict::Unknown, "{auth:?}");
    assert!(auth.reason.contains("may not enter"), "{auth:?}");
    let all = c.findings(bare, "unauthenticated_service", "all");
    assert!(!all.iter().any(|f| f.subject == subject), "{all:?}");
    // Nor in the host's own namespace, where nothing listens on the port.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the namespace's port is not the host's");
}

/// memcached on `port` with `args` (as `nobody`: it refuses to run as root).
async fn memcached(port: u16, args: &[&str]) -> Guard {
    let child = tool("memcached")
        .args(["-p", &port.to_string(), "-U", "0", "-l", "0.0.0.0", "-u", "nobody"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start memcached");
    let g = Guard(child);
    listening(port).await;
    g
}

/// memcached's counters as its `stats` lists them, asked on loopback.
fn memcached_stats(port: u16) -> std::collections::BTreeMap<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to memcached");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"stats\r\n").expect("stats");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while !got.ends_with(b"END\r\n") {
        let n = s.read(&mut buf).expect("stats answer");
        assert!(n > 0, "memcached closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .filter_map(|l| l.strip_prefix("STAT ")?.split_once(' ').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn memcached_without_credentials_is_a_finding_and_with_an_auth_file_is_not() {
    let (_link, dir, c, _agent, host) = probing("probe-memcached", &[]).await;
    let auth_file = dir.path().join("memcached-auth");
    std::fs::write(&auth_file, "probe-test:correct-horse-battery\n").expect("auth file");
    // memcached reads it as `nobody`.
    let mut perms = std::fs::metadata(&auth_file).expect("auth file").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&auth_file, perms).expect("chmod");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod dir");
    let (open, locked) = (free_port(), free_port());
    let _open = memcached(open, &[]).await;
    let auth_arg = auth_file.to_str().expect("utf-8 path");
    let _locked = memcached(locked, &["-Y", auth_arg]).await;

    let f = finding(&c, host, &format!("memcached on tcp/0.0.0.0:{open}")).await;
    assert_eq!(f.severity, Severity::Critical, "{f:?}");
    let l = probed(&c, host, locked).await;
    assert_eq!(l.auth.as_ref().map(|a| a.verdict), Some(AuthVerdict::Authenticated), "{l:?}");
    let all = c.findings(host, "unauthenticated_service", "open");
    assert!(!all.iter().any(|f| f.subject.contains(&format!(":{locked}"))), "{all:?}");

    // The probe of the open one got through, and its `stats` stored nothing.
    let stats = memcached_stats(open);
    for counter in ["curr_items", "total_items", "cmd_set"] {
        assert_eq!(stats.get(counter).map(String::as_str), Some("0"), "{counter}: {stats:?}");
    }
}

/// A double from `support/services.py` speaking `kind` (`open` or `auth`), run by a copy of
/// python3 named `name` (the process name the agent guesses the protocol from), on every
/// address at `port`; what it was asked is appended to `log`.
async fn double(dir: &Path, name: &str, kind: &str, mode: &str, port: u16, log: &Path) -> Guard {
    double_over(dir, name, kind, mode, port, log, None).await
}

/// [`double`], over TLS with `tls`'s certificate and key where given.
async fn double_over(
    dir: &Path,
    name: &str,
    kind: &str,
    mode: &str,
    port: u16,
    log: &Path,
    tls: Option<(&Path, &Path)>,
) -> Guard {
    let exe = dir.join(name);
    if !exe.exists() {
        let python = std::fs::canonicalize("/usr/bin/python3").expect("python3 (Debian's python3 package)");
        copy_program(python, &exe);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/support/services.py");
    let child = std::process::Command::new(&exe)
        .arg(script)
        .args([kind, mode, &port.to_string()])
        .args(tls.iter().flat_map(|(cert, key)| [cert.as_os_str(), key.as_os_str()]))
        .env("SERVICES_LOG", log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start a service double");
    let g = Guard(child);
    listening(port).await;
    g
}

#[tokio::test(flavor = "multi_thread")]
async fn doubles_of_docker_mongodb_jupyter_and_an_exporter_are_judged_both_ways_and_strangers_stay_unknown() {
    let (_link, dir, c, _agent, host) = probing("probe-doubles", &[("HOSTWATCH_PROBES_TIMEOUT", "1s")]).await;
    let log = dir.path().join("asked.log");
    let mut servers = Vec::new();
    let mut open = Vec::new();
    let mut closed = Vec::new();
    for (name, kind, service) in [
        ("dockerd", "docker", "docker"),
        ("mongod", "mongodb", "mongodb"),
        ("jupyter-lab", "jupyter", "jupyter"),
        ("node_exporter", "metrics", "metrics"),
    ] {
        let (a, b) = (free_port(), free_port());
        servers.push(double(dir.path(), name, kind, "open", a, &log).await);
        servers.push(double(dir.path(), name, kind, "auth", b, &log).await);
        open.push((service, a));
        closed.push((service, b));
    }
    // On Redis's and memcached's names: one that answers nonsense, one that never answers.
    let (garbage, silent) = (free_port(), free_port());
    servers.push(double(dir.path(), "redis-server", "garbage", "open", garbage, &log).await);
    servers.push(double(dir.path(), "memcached", "silent", "open", silent, &log).await);

    for (service, port) in &open {
        let f = finding(&c, host, &format!("{service} on tcp/0.0.0.0:{port}")).await;
        assert_eq!(f.severity, Severity::Critical, "{f:?}");
        assert_eq!(f.detail["verdict"], "unauthenticated", "{f:?}");
    }
    for (service, port) in &closed {
        let auth = probed(&c, host, *port).await.auth.expect("probed");
        assert_eq!((auth.verdict, auth.service.as_str()), (AuthVerdict::Authenticated, *service), "{auth:?}");
    }
    for port in [garbage, silent] {
        let auth = probed(&c, host, port).await.auth.expect("probed");
        assert_eq!(auth.verdict, AuthVerdict::Unknown, "{auth:?}");
        assert!(!auth.reason.contains('\u{1b}'), "what a service says is kept printable: {:?}", auth.reason);
    }
    let all = c.findings(host, "unauthenticated_service", "open");
    for (_, port) in closed.iter().chain(&[("redis", garbage), ("memcached", silent)]) {
        assert!(!all.iter().any(|f| f.subject.ends_with(&format!(":{port}"))), "{all:?}");
    }

    // What the probes asked: reads only, each saying who it is.
    let asked = std::fs::read_to_string(&log).expect("the doubles' log");
    for line in asked.lines() {
        let ok = (line.starts_with("GET ") && line.contains("hostwatch-probe/"))
            || line == "OP_MSG hello"
            || line == "OP_MSG listDatabases"
            || line.starts_with("received ")
            || line == "connected";
        assert!(ok, "a probe asked {line:?}:\n{asked}");
    }
    assert!(asked.contains("GET /containers/json"), "{asked}");
    assert!(asked.contains("OP_MSG listDatabases"), "{asked}");
}

/// A self-signed certificate and key for a TLS double (the probes accept any).
fn certificate(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    let out = tool("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// The ports these services own by convention, where the agent knows them by port alone
/// (Elasticsearch runs as `java`; pprof inside any Go program): each open first, then, on the
/// same port under a new owner, closed. The kubelet's read-only port (10255, plain HTTP) and its
/// main one (10250, TLS) are each probed with the scheme they speak.
#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_pprof_and_the_kubelet_on_their_ports_open_then_closed() {
    let (_link, dir, c, _agent, host) = probing("probe-ports", &[]).await;
    let log = dir.path().join("asked.log");
    for (name, kind, service, port) in
        [("es-double", "elasticsearch", "elasticsearch", 9200), ("pprof-double", "pprof", "pprof", 6060)]
    {
        let mut open = double(dir.path(), name, kind, "open", port, &log).await;
        let f = finding(&c, host, &format!("{service} on tcp/0.0.0.0:{port}")).await;
        assert_eq!(f.severity, Severity::Critical, "{f:?}");
        open.terminate(Duration::from_secs(10));
        let _closed = double(dir.path(), name, kind, "auth", port, &log).await;
        // A new owner is probed again: its verdict replaces the old one, and the finding goes.
        wait_for(&format!("{service} closed on {port}"), Duration::from_secs(30), async || {
            let l = probed(&c, host, port).await;
            (l.auth.as_ref().map(|a| a.verdict) == Some(AuthVerdict::Authenticated)).then_some(())
        })
        .await;
        wait_for(&format!("the {service} finding resolved"), Duration::from_secs(30), async || {
            let open = c.findings(host, "unauthenticated_service", "open");
            (!open.iter().any(|f| f.subject == format!("{service} on tcp/0.0.0.0:{port}"))).then_some(())
        })
        .await;
    }
    // The kubelet: 10250 over TLS answering anyone (critical), 10255 plain asking (no finding).
    let (cert, key) = certificate(dir.path(), "kubelet");
    let tls = double_over(dir.path(), "kubelet", "kubelet", "open", 10250, &log, Some((&cert, &key))).await;
    let _plain = double(dir.path(), "kubelet", "kubelet", "auth", 10255, &log).await;
    let f = finding(&c, host, "kubelet on tcp/0.0.0.0:10250").await;
    assert_eq!(f.severity, Severity::Critical, "{f:?}");
    let auth = probed(&c, host, 10255).await.auth.expect("probed");
    assert_eq!(auth.verdict, AuthVerdict::Authenticated, "{auth:?}");
    drop(tls);
    let asked = std::fs::read_to_string(&log).expect("the doubles' log");
    assert!(asked.contains("GET /pods"), "{asked}");
    for line in asked.lines() {
        assert!(line.starts_with("GET ") && line.contains("hostwatch-probe/"), "a probe asked {line:?}");
    }
}

/// etcd-server on `port` (client) and `peer`, its data in `dir`; over TLS asking for a client
/// certificate when `tls` names a CA, a certificate and a key.
async fn etcd(dir: &Path, port: u16, peer: u16, tls: Option<(&Path, &Path, &Path)>) -> Guard {
    let data = dir.join(format!("etcd-{port}"));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut cmd = tool("etcd");
    cmd.args(["--name", &format!("t{port}")])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-client-urls", &format!("{scheme}://0.0.0.0:{port}")])
        .args(["--advertise-client-urls", &format!("{scheme}://127.0.0.1:{port}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("t{port}=http://127.0.0.1:{peer}")])
        .args(["--log-outputs", "stderr", "--logger", "zap"]);
    if let Some((ca, cert, key)) = tls {
        cmd.arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(ca)
            .arg("--cert-file")
            .arg(cert)
            .arg("--key-file")
            .arg(key);
    }
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start etcd");
    let g = Guard(child);
    listening(port).await;
    g
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_without_client_certificates_is_a_finding_and_with_them_is_not() {
    let (_link, dir, c, _agent, host) = probing("probe-etcd", &[]).await;
    let (cert, key) = certificate(dir.path(), "etcd");
    let (open, locked) = (free_port(), free_port());
    let _open = etcd(dir.path(), open, free_port(), None).await;
    let _locked = etcd(dir.path(), locked, free_port(), Some((&cert, &cert, &key))).await;
    // Go binds "0.0.0.0" as one socket for both families: `::`.
    let f = finding(&c, host, &format!("etcd on tcp/[::]:{open}")).await;
    assert_eq!(f.severity, Severity::Critical, "{f:?}");
    let auth = probed(&c, host, locked).await.auth.expect("probed");
    assert_eq!(auth.verdict, AuthVerdict::Authenticated, "{auth:?}");
    assert!(auth.reason.contains("client certificate"), "{auth:?}");
}
