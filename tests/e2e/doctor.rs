//! `hostwatch-agent doctor` against a healthy setup (an agent enrolled at a collector over
//! verified TLS) and against each broken one it checks: each names the check, says FAIL or warn,
//! and gives the fix; the exit status says whether the agent can do its job.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::support::{bin, start_agent_with, text, unique, wait_for};
use crate::tls::Ca;

/// `doctor` in an empty environment but `env`, through `setpriv` with `pre` when given.
fn doctor(env: &[(&str, &str)], pre: &[&str]) -> Output {
    let mut cmd = match pre.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin("hostwatch-agent"));
            c
        }
        None => Command::new(bin("hostwatch-agent")),
    };
    cmd.arg("doctor").env_clear().env("HOSTWATCH_CLOUD_PROVIDER", "none").envs(env.iter().copied());
    cmd.output().unwrap()
}

/// The verdict doctor printed for `check`.
fn verdict(out: &Output, check: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(check))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {check} line in:\n{stdout}"))
        .to_owned()
}

fn assert_verdict(out: &Output, check: &str, expected: &str, says: &str) {
    assert_eq!(verdict(out, check), expected, "{check}:\n{}", text(out));
    assert!(text(out).contains(says), "{check} should say {says:?}:\n{}", text(out));
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_a_healthy_agent_and_names_each_broken_part_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let (c, ca, _) = crate::tls::tls_collector(dir.path());
    let url = c.url.replace("127.0.0.1", "localhost");
    let ca_path = ca.pem.display().to_string();
    let secret = c.enroll_secret_file.display().to_string();
    let state = dir.path().join("agent-state").display().to_string();
    let watched = dir.path().join("watched");
    std::fs::create_dir_all(watched.join("a/b")).unwrap();
    let watched = watched.display().to_string();
    let healthy = vec![
        ("HOSTWATCH_SERVER", url.as_str()),
        ("HOSTWATCH_CA_CERT", ca_path.as_str()),
        ("HOSTWATCH_ENROLL_SECRET_FILE", secret.as_str()),
        ("HOSTWATCH_STATE_DIR", state.as_str()),
        ("HOSTWATCH_FILES_DEFAULTS", "false"),
        ("HOSTWATCH_FILES_PATHS", watched.as_str()),
    ];
    let with = |changes: &[(&'static str, &'static str)]| -> Vec<(&str, String)> {
        let mut env: Vec<(&str, String)> = healthy
            .iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect();
        env.extend(changes.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (*k, (*v).to_owned())));
        env
    };
    let run = |env: &[(&str, String)], pre: &[&str]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        doctor(&env, pre)
    };

    // Healthy, before enrolling: everything ok, and it says the agent will enroll.
    let out = doctor(&healthy, &[]);
    assert!(out.status.success(), "{}", text(&out));
    for check in
        ["configuration", "privileges", "cloud", "state", "collector", "enrollment", "sockets", "connections"]
    {
        assert_eq!(verdict(&out, check), "ok", "{check}:\n{}", text(&out));
    }
    assert!(text(&out).contains("certificate and name verified"), "{}", text(&out));
    assert!(text(&out).contains("enrolls with its enroll secret"), "{}", text(&out));

    // Enrolled: doctor names the host the collector gave it.
    let role = unique("doctor");
    let mut agent = start_agent_with(
        &c,
        dir.path(),
        &format!("role={role}"),
        &[("HOSTWATCH_SERVER", url.as_str()), ("HOSTWATCH_CA_CERT", ca_path.as_str())],
    );
    let host = wait_for("the agent online", Duration::from_secs(30), async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["--ca-cert", &ca_path, "hosts"]);
        hosts.into_iter().find(|h| h.tags.get("role") == Some(&role) && h.status == proto::HostStatus::Online)
    })
    .await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    let out = doctor(&healthy, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_verdict(&out, "enrollment", "ok", &format!("enrolled as host {}", host.id));

    // Each broken part, one at a time.
    let out = run(&with(&[("HOSTWATCH_SERVER", "")]), &[]);
    assert!(!out.status.success());
    assert_verdict(&out, "collector", "FAIL", "set `server`");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let down = format!("https://localhost:{closed}");
    let out = run(&[with(&[]), vec![("HOSTWATCH_SERVER", down)]].concat(), &[]);
    assert!(!out.status.success());
    assert_verdict(&out, "collector", "FAIL", "nothing listens there");

    let other = Ca::new(&pki, "other");
    let other_pem = other.pem.display().to_string();
    let out =
        run(&[with(&[("HOSTWATCH_CA_CERT", "")]), vec![("HOSTWATCH_CA_CERT", other_pem)]].concat(), &[]);
    assert!(!out.status.success());
    assert_verdict(&out, "collector", "FAIL", "set ca_cert to the CA that signed it");

    let out = run(&with(&[]), &["setpriv", "--bounding-set=-all", "--inh-caps=-all"]);
    assert!(!out.status.success());
    assert_verdict(&out, "privileges", "FAIL", "CAP_SYS_PTRACE");

    let fresh = dir.path().join("fresh-state").display().to_string();
    let out = run(
        &[
            with(&[("HOSTWATCH_ENROLL_SECRET_FILE", ""), ("HOSTWATCH_STATE_DIR", "")]),
            vec![("HOSTWATCH_STATE_DIR", fresh)],
        ]
        .concat(),
        &[],
    );
    assert!(!out.status.success());
    assert_verdict(&out, "enrollment", "FAIL", "cannot enroll");

    // A state directory copied from another machine: the agent will enroll anew (a warning).
    let copied = dir.path().join("copied-state");
    std::fs::create_dir_all(&copied).unwrap();
    for f in ["node-key", "identity.json"] {
        std::fs::copy(Path::new(&state).join(f), copied.join(f)).unwrap();
    }
    let identity = std::fs::read_to_string(copied.join("identity.json")).unwrap();
    let mut id: serde_json::Value = serde_json::from_str(&identity).unwrap();
    id["machine_id"] = "0123456789abcdef0123456789abcdef".into();
    std::fs::write(copied.join("identity.json"), id.to_string()).unwrap();
    let copied_s = copied.display().to_string();
    let out =
        run(&[with(&[("HOSTWATCH_STATE_DIR", "")]), vec![("HOSTWATCH_STATE_DIR", copied_s)]].concat(), &[]);
    assert!(out.status.success(), "a warning is not a failure: {}", text(&out));
    assert_verdict(&out, "enrollment", "warn", "another machine's");

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let under_file = blocker.join("state").display().to_string();
    let out =
        run(&[with(&[("HOSTWATCH_STATE_DIR", "")]), vec![("HOSTWATCH_STATE_DIR", under_file)]].concat(), &[]);
    assert!(!out.status.success());
    assert_verdict(&out, "state", "FAIL", "writable directory");

    // A host whose inotify limit is below what is watched: a warning with the sysctl to raise it.
    let host_root = dir.path().join("host");
    std::fs::create_dir_all(host_root.join("proc/sys/fs/inotify")).unwrap();
    std::fs::write(host_root.join("proc/sys/fs/inotify/max_user_watches"), "4\n").unwrap();
    std::os::unix::fs::symlink("/proc/self", host_root.join("proc/self")).unwrap();
    std::fs::create_dir_all(host_root.join("watched/1/2/3/4/5")).unwrap();
    let host_root_s = host_root.display().to_string();
    let out = run(
        &[
            with(&[("HOSTWATCH_FILES_PATHS", "")]),
            vec![("HOSTWATCH_HOST_ROOT", host_root_s), ("HOSTWATCH_FILES_PATHS", "/watched".to_owned())],
        ]
        .concat(),
        &[],
    );
    assert_verdict(&out, "watches", "warn", "sysctl -w fs.inotify.max_user_watches=");

    // A cloud whose metadata service does not answer: a warning, the agent still runs.
    let imds = format!("http://127.0.0.1:{closed}");
    let out = run(
        &[
            with(&[]),
            vec![("HOSTWATCH_CLOUD_PROVIDER", "aws".to_owned()), ("HOSTWATCH_CLOUD_ENDPOINT", imds)],
        ]
        .concat(),
        &[],
    );
    assert_verdict(&out, "cloud", "warn", "metadata");

    // A configuration that does not load: FAIL, and where.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "interval = \"ten seconds\"\n").unwrap();
    let out = Command::new(bin("hostwatch-agent"))
        .args(["--config", bad.to_str().unwrap(), "doctor"])
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_verdict(&out, "configuration", "FAIL", "bad.toml:1");
    drop(c);
}
