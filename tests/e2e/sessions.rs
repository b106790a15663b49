//! Login sessions judged as one thing: an allowed login's commands are explained in the history
//! as its session's, a login no rule allows is one `unexpected_session` finding whose list and
//! occurrences grow as it goes on, a rule may say where logins come from (the peer of the
//! session's sshd), and `baseline learn` writes the rule that explains the sessions it saw.
//!
//! Root may give a fresh process a login uid once (`/proc/self/loginuid`), which opens a new
//! audit session that its children inherit: a login as far as the kernel, the agent and the
//! collector can tell.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hostwatch_proto::v1 as proto;

use crate::events::{Group, NO_BUDGET, WAIT, host_with_workload, sleep_copy};
use crate::support::{Collector, on_both_stores, spawn_copy, unique, wait_for};

/// The logins these tests make are the machine's, seen by every agent on it, and their users
/// are fixed: the same test on each store at once would each see the other's sessions of the
/// same user. One at a time (taken before the test's turn on the machine, so no test waits on
/// another that waits on it).
static LOGINS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A login of `uid` (a shell given the login uid) that runs `script` in that same shell.
fn login(uid: u32, script: &str) -> Group {
    let script = format!("echo {uid} > /proc/self/loginuid && {{ {script}; }}");
    Group(spawn_copy(Command::new("sh").args(["-c", &script]).process_group(0)))
}

/// The exec of `exe` in host `h`'s history, once it is there and `until` holds for it.
async fn exec_of(
    c: &Collector,
    h: i64,
    exe: &Path,
    until: impl Fn(&proto::ProcessEvent) -> bool,
) -> proto::ProcessEvent {
    let name = exe.file_name().unwrap().to_str().unwrap();
    wait_for(&format!("the exec of {name} in the history"), WAIT, async || {
        let events: Vec<proto::ProcessEvent> =
            c.cli_json(&["history", "processes", "--host", &h.to_string(), "--since", "1h", "--name", name]);
        events.into_iter().find(|e| e.kind == "exec" && e.exe.as_deref() == exe.to_str() && until(e))
    })
    .await
}

/// A named pipe at `path`: a login's shell waits on it for the test's word.
fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

/// The `unexpected_session` findings of `h` whose user is `user`.
fn sessions_of(c: &Collector, h: i64, user: &str) -> Vec<proto::Finding> {
    let suffix = format!(" of {user}");
    c.findings(h, "unexpected_session", "all").into_iter().filter(|f| f.subject.ends_with(&suffix)).collect()
}

/// The names of what a session finding lists as having run, in order.
fn ran(f: &proto::Finding) -> Vec<String> {
    f.detail["ran"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect()
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    an_allowed_login_is_explained_and_any_other_is_one_finding_that_grows
);
async fn an_allowed_login_is_explained_and_any_other_is_one_finding_that_grows() {
    let _logins = LOGINS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collector::start(d, NO_BUDGET);
    // root by name (its login uid's name on this host), 4321 by number (no name here).
    let rules = "[[session]]\nuser = [\"root\", \"4321\"]\nreason = \"admins work here\"\n";
    let (_agent, host) = host_with_workload(&c, d, rules).await;
    let h = host.id;
    let (as_root, as_4321) = (sleep_copy(d, &unique("hw-sess-r")), sleep_copy(d, &unique("hw-sess-a")));
    let _root = login(0, &format!("exec {} 600", as_root.display()));
    let _admin = login(4321, &format!("exec {} 600", as_4321.display()));
    // Each allowed login's command: in the history, explained as its session's.
    let r = exec_of(&c, h, &as_root, |e| e.explained.is_some()).await;
    assert_eq!(r.explained.as_deref(), Some("interactive session of root"));
    let a = exec_of(&c, h, &as_4321, |e| e.explained.is_some()).await;
    assert_eq!((a.explained.as_deref(), a.login_uid), (Some("interactive session of 4321"), Some(4321)));

    // A login of a user no rule names: its first command opens one finding for the session...
    let (first, second) = (sleep_copy(d, &unique("hw-sess-1")), sleep_copy(d, &unique("hw-sess-2")));
    let fifo = d.join("go");
    mkfifo(&fifo);
    let _other = login(
        4322,
        &format!("{} 600 & read _ < {}; {} 600", first.display(), fifo.display(), second.display()),
    );
    let one = |f: &proto::Finding| ran(f).iter().any(|n| first.ends_with(n));
    let f = wait_for("the session's finding with its first command", WAIT, async || {
        sessions_of(&c, h, "4322").into_iter().find(one)
    })
    .await;
    assert_eq!(f.severity, proto::Severity::High);
    assert_eq!(f.detail["login_uid"], 4322, "{}", f.detail);
    let session = f.detail["session_id"].as_u64().expect("the session id");
    assert_eq!(f.subject, format!("session {session} of 4322"));
    let before = f.occurrences;
    // ... and its next command is the same finding, listed after the first, one more occurrence.
    std::fs::write(&fifo, "\n").unwrap();
    let f = wait_for("the session's finding with its second command", WAIT, async || {
        sessions_of(&c, h, "4322").into_iter().find(|f| ran(f).iter().any(|n| second.ends_with(n)))
    })
    .await;
    let names = ran(&f);
    let at = |p: &PathBuf| names.iter().position(|n| p.ends_with(n)).unwrap_or_else(|| panic!("{names:?}"));
    assert!(at(&first) < at(&second), "in the order they started: {names:?}");
    assert_eq!(f.occurrences, before + 1, "one start, one occurrence: {}", f.detail);
    assert_eq!(sessions_of(&c, h, "4322").len(), 1, "one finding for the session");
    // None of the login's commands is a finding of its own; the allowed logins are none at all.
    let programs = c.findings(h, "unexpected_process", "all");
    for p in [&as_root, &as_4321, &first, &second] {
        assert!(programs.iter().all(|f| f.subject != p.to_str().unwrap()), "{} filed alone", p.display());
    }
    assert!(sessions_of(&c, h, "root").is_empty() && sessions_of(&c, h, "4321").is_empty());
}

/// Stands in for sshd: a python3 under the name `sshd` that listens on loopback, accepts one
/// client, and once the client sends a byte, forks a login of `uid` that runs `argv`, keeping the
/// connection open as sshd does.
fn fake_sshd(dir: &Path, uid: u32, argv: &[&str]) -> (Group, SocketAddr) {
    let sshd = dir.join("sshd");
    if !sshd.exists() {
        crate::support::copy_program("/usr/bin/python3", &sshd);
    }
    let portfile = dir.join(unique("port"));
    let script = format!(
        "import os, socket, sys\n\
         s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
         open({tmp:?}, 'w').write(str(s.getsockname()[1])); os.rename({tmp:?}, {port:?})\n\
         c, _ = s.accept(); c.recv(1)\n\
         if os.fork() == 0:\n    open('/proc/self/loginuid', 'w').write('{uid}')\n    os.execv(sys.argv[1], sys.argv[1:])\n\
         os.wait()\n",
        tmp = format!("{}.tmp", portfile.display()),
        port = portfile.display().to_string(),
    );
    let child = spawn_copy(Command::new(&sshd).arg("-c").arg(&script).args(argv).process_group(0));
    let group = Group(child);
    let port: u16 = loop {
        if let Some(p) = std::fs::read_to_string(&portfile).ok().and_then(|s| s.parse().ok()) {
            break p;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (group, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Connects to `sshd` from `from` (a loopback address), waits until the collector knows the
/// connection (so the login is judged knowing where it came from), then lets the login start.
async fn log_in(c: &Collector, h: i64, sshd: SocketAddr, from: [u8; 4]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(sshd).await.unwrap();
    let port = stream.local_addr().unwrap().port();
    wait_for("the login's connection", WAIT, async || {
        let conns: Vec<proto::Located<proto::Connection>> =
            c.cli_json(&["conns", "--host", &h.to_string(), "--port", &port.to_string()]);
        conns
            .into_iter()
            .find(|l| l.item.local_port == sshd.port() && l.item.process.as_deref() == Some("sshd"))
    })
    .await;
    stream.write_all(b"g").await.unwrap();
    stream
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_rule_from_a_network_allows_only_logins_from_it_and_learn_writes_the_users_rule
);
async fn a_rule_from_a_network_allows_only_logins_from_it_and_learn_writes_the_users_rule() {
    let _logins = LOGINS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = Collector::start(d, NO_BUDGET);
    let rules = "[[session]]\nuser = [\"4323\"]\nfrom = [\"127.0.0.3/32\"]\n";
    let (_agent, host) = host_with_workload(&c, d, rules).await;
    let h = host.id;
    let role = host.tags["role"].clone();

    // From the allowed address: explained.
    let inside = sleep_copy(d, &unique("hw-from-in"));
    let (_sshd_in, addr_in) = fake_sshd(d, 4323, &[inside.to_str().unwrap(), "600"]);
    let _conn_in = log_in(&c, h, addr_in, [127, 0, 0, 3]).await;
    let e = exec_of(&c, h, &inside, |e| e.explained.is_some()).await;
    assert_eq!(e.explained.as_deref(), Some("interactive session of 4323"));

    // From elsewhere: the session's finding, saying where from and through what.
    let (outside, later) = (sleep_copy(d, &unique("hw-from-out")), sleep_copy(d, &unique("hw-from-later")));
    let fifo = d.join("go");
    mkfifo(&fifo);
    let script =
        format!("{} 600 & read _ < {}; exec {} 600", outside.display(), fifo.display(), later.display());
    std::fs::create_dir_all(d.join("out")).unwrap();
    let (_sshd_out, addr_out) = fake_sshd(&d.join("out"), 4323, &["/bin/sh", "-c", &script]);
    let _conn_out = log_in(&c, h, addr_out, [127, 0, 0, 4]).await;
    let f = wait_for("the outside login's finding", WAIT, async || {
        sessions_of(&c, h, "4323").into_iter().find(|f| ran(f).iter().any(|n| outside.ends_with(n)))
    })
    .await;
    assert_eq!(f.detail["from"], "127.0.0.4", "{}", f.detail);
    assert_eq!(f.detail["via"]["name"], "sshd", "{}", f.detail);
    assert_eq!(sessions_of(&c, h, "4323").len(), 1, "the allowed login is no finding");
    let before = f.occurrences;

    // Learnt from the host: a rule for the user, where the logins came from as a hint.
    let out = c.cli(&["baseline", "learn", "--host", &h.to_string(), "--name", &role]);
    assert!(out.status.success(), "learn failed: {}", String::from_utf8_lossy(&out.stderr));
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(toml.contains("[[session]]\nuser = [\"4323\"]\n"), "{toml}");
    assert!(toml.contains("\"127.0.0.3\", \"127.0.0.4\""), "where the logins came from: {toml}");
    assert!(!toml.contains(outside.to_str().unwrap()), "a login's command is no program rule: {toml}");
    let file = d.join("learned.toml");
    std::fs::write(&file, &toml).unwrap();
    let _: Vec<proto::BaselineSummary> = c.cli_json(&["baseline", "apply", file.to_str().unwrap()]);

    // Held to it, the outside login's next command is explained, and its finding grows no more.
    std::fs::write(&fifo, "\n").unwrap();
    let e = exec_of(&c, h, &later, |e| e.explained.is_some()).await;
    assert_eq!(e.explained.as_deref(), Some("interactive session of 4323"));
    let f = sessions_of(&c, h, "4323").pop().unwrap();
    assert_eq!(f.occurrences, before, "{}", f.detail);
    assert!(ran(&f).iter().all(|n| !later.ends_with(n)), "{}", f.detail);
    // And the history's table says so.
    let table = c.cli(&["history", "processes", "--host", &h.to_string(), "--since", "1h"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.lines().any(|l| l.contains(&e.pid.to_string()) && l.contains("interactive session of 4323")),
        "{table}"
    );
}
