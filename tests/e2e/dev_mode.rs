//! `hostwatch serve --dev`, the README's main command: one process that collects, watches this
//! machine, learns its baseline from the first snapshot and shows drift from then on.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::support::{Guard, bin, python_http_server, wait_for};

const WAIT: Duration = Duration::from_secs(30);

struct Dev {
    process: Guard,
    url: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(r: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

fn start_dev(data_dir: &Path) -> Dev {
    let mut child = Command::new(bin("hostwatch"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--interval", "1s", "--data-dir"])
        .arg(data_dir)
        .env_clear()
        // Tests never ask a real metadata service, even on a cloud machine.
        .env("HOSTWATCH_CLOUD_PROVIDER", "none")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (stdout, stderr) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    collect(child.stdout.take().unwrap(), stdout.clone());
    collect(child.stderr.take().unwrap(), stderr.clone());
    let process = Guard(child);
    let deadline = std::time::Instant::now() + WAIT;
    // The whole banner: its last line ends with the command to try.
    let url = loop {
        let lines = stdout.lock().unwrap().clone();
        if lines.iter().any(|l| l.trim_end().ends_with("-- findings"))
            && let Some(url) = lines.iter().find_map(|l| {
                l.strip_prefix("hostwatch dev collector on ")
                    .and_then(|r| r.split(',').next())
                    .map(str::to_owned)
            })
        {
            break url;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no banner; stderr:\n{}",
            stderr.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Dev { process, url, stdout, stderr }
}

fn cli_json<T: serde::de::DeserializeOwned>(dev: &Dev, token_file: &Path, args: &[&str]) -> T {
    let out = Command::new(bin("hostwatch"))
        .args(args)
        .args(["--output", "json"])
        .env_clear()
        .env("HOSTWATCH_SERVER", &dev.url)
        .env("HOSTWATCH_TOKEN_FILE", token_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn line_with<'a>(lines: &'a [String], prefix: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| l.trim_start().strip_prefix(prefix).map(str::trim))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_watches_this_machine_and_shows_drift() {
    let _turn = crate::support::Turn::shared();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = start_dev(&data);
    let token_file = data.join("admin-token");

    // Credentials: printed once, kept mode 0600, equal to what was printed.
    let printed = dev.stdout.lock().unwrap().clone();
    let token =
        line_with(&printed, "admin token:").and_then(|r| r.split_whitespace().next()).unwrap().to_owned();
    let secret =
        line_with(&printed, "enroll secret:").and_then(|r| r.split_whitespace().next()).unwrap().to_owned();
    assert!(
        token.starts_with(proto::API_TOKEN_PREFIX) && secret.starts_with(proto::ENROLL_SECRET_PREFIX),
        "{printed:?}"
    );
    for (file, value) in [(&token_file, &token), (&data.join("enroll-secret"), &secret)] {
        assert_eq!(std::fs::read_to_string(file).unwrap().trim(), value);
        assert_eq!(std::fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // This machine comes online under a baseline learned from its first snapshot.
    let host: proto::Host = wait_for("this machine online under a learned baseline", WAIT, async || {
        let hosts: Vec<proto::Host> = cli_json(&dev, &token_file, &["hosts"]);
        hosts.into_iter().find(|h| {
            h.status == proto::HostStatus::Online
                && h.workload.as_deref().is_some_and(|w| w.starts_with("dev-"))
        })
    })
    .await;
    // The dev agent's eBPF loader is this binary run again (agent/src/collect/sockets/loader.rs).
    let stats = wait_for("the dev agent's stats", WAIT, async || {
        let detail: proto::HostDetail = cli_json(&dev, &token_file, &["host", &host.id.to_string()]);
        detail.agent_stats.filter(|s| s.connection_source.is_some())
    })
    .await;
    assert_eq!(stats.connection_source.as_deref(), Some("ebpf"), "{:?}", stats.connection_source_why);
    let workload = host.workload.clone().unwrap();
    assert!(data.join("baselines").join(format!("{workload}.toml")).exists());
    let baselines: Vec<proto::BaselineSummary> = cli_json(&dev, &token_file, &["baseline", "list"]);
    let names: Vec<&str> = baselines.iter().map(|b| b.name.as_str()).collect();
    assert!(
        names.contains(&"linux-base") && names.contains(&"web") && names.contains(&workload.as_str()),
        "{names:?}"
    );
    let no_baseline: Vec<proto::Finding> =
        cli_json(&dev, &token_file, &["findings", "--kind", "no_baseline", "--status", "all"]);
    assert!(no_baseline.is_empty(), "the baseline was learned before the first evaluation");

    // The collector never reports its own process.
    let own = dev.process.pid() as u32;
    let ps: Vec<proto::Located<proto::Process>> = cli_json(&dev, &token_file, &["ps"]);
    assert!(ps.iter().any(|p| p.item.pid == std::process::id()), "this test is among the processes");
    assert!(ps.iter().all(|p| p.item.pid != own), "the dev collector reported itself");

    // Something new on this machine is a finding.
    let (_python, port) = python_http_server(0);
    let subject = format!("tcp/127.0.0.1:{port}");
    wait_for("the new listener as a finding", WAIT, async || {
        let f: Vec<proto::Finding> =
            cli_json(&dev, &token_file, &["findings", "--kind", "unexpected_listener"]);
        f.into_iter().find(|f| f.subject == subject)
    })
    .await;

    let status = dev.process.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit {status:?}; stderr:\n{}", dev.stderr.lock().unwrap().join("\n"));
    let log = dev.stderr.lock().unwrap().join("\n");
    assert!(!log.contains(&token) && !log.contains(&secret), "a secret reached the log");
    assert!(log.contains("said goodbye to the collector"), "{log}");

    // A second start keeps the store and the agent's identity, and shows no secret again.
    let mut again = start_dev(&data);
    let printed = again.stdout.lock().unwrap().clone().join("\n");
    assert!(!printed.contains(&token) && !printed.contains(&secret), "{printed}");
    let same: proto::Host = wait_for("the same host online again", WAIT, async || {
        let hosts: Vec<proto::Host> = cli_json(&again, &token_file, &["hosts"]);
        hosts.into_iter().find(|h| h.status == proto::HostStatus::Online)
    })
    .await;
    assert_eq!(same.id, host.id);
    let hosts: Vec<proto::Host> = cli_json(&again, &token_file, &["hosts"]);
    assert_eq!(hosts.len(), 1, "no second host for the same machine");
    assert!(again.process.terminate(Duration::from_secs(15)).success());
}
