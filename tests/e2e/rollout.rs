//! Roll-out as ops do it: an image baked with a golden manifest, the unit's start condition
//! (`hostwatch-agent check`), and `packaging/install.sh` run from user-data, into a root of the
//! test's own (the CI package check installs the real packages on the machine).

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::files::{agent_ready, make_tree};
use crate::support::{
    Collector, Turn, agent_log, bin, build_deb, on_both_stores, start_agent_with, text, unique, wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin("hostwatch-agent")).args(args).env_clear().envs(env.iter().copied()).output().unwrap()
}

fn bake_events(c: &Collector, host: i64) -> Vec<proto::FileEvent> {
    let all: Vec<proto::FileEvent> = c.cli_json(&["files", "--host", &host.to_string(), "--limit", "10000"]);
    all.into_iter().filter(|e| e.change.origin == proto::ChangeOrigin::Bake).collect()
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread")]
    an_instance_of_a_baked_image_reports_what_differs_from_the_golden_manifest_once
);
async fn an_instance_of_a_baked_image_reports_what_differs_from_the_golden_manifest_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let tree = dir.path().join("image");
    make_tree(&tree);
    let state = dir.path().join("agent-state");
    let paths = tree.to_str().unwrap().to_owned();
    let bake_env = [
        ("HOSTWATCH_STATE_DIR", state.to_str().unwrap()),
        ("HOSTWATCH_FILES_DEFAULTS", "false"),
        ("HOSTWATCH_FILES_PATHS", paths.as_str()),
        ("HOSTWATCH_CLOUD_PROVIDER", "none"),
    ];

    // A state directory with an identity is refused: an image must not carry a node key.
    let enrolled = dir.path().join("enrolled-state");
    std::fs::create_dir_all(&enrolled).unwrap();
    std::fs::write(enrolled.join("node-key"), "hwn_x").unwrap();
    let refused =
        agent(&["bake"], &[("HOSTWATCH_STATE_DIR", enrolled.to_str().unwrap()), bake_env[1], bake_env[2]]);
    assert!(!refused.status.success() && text(&refused).contains("reset-identity"), "{}", text(&refused));
    assert!(!enrolled.join("files.manifest").exists());

    // The image build: bake records the tree.
    let baked = agent(&["bake"], &bake_env);
    assert!(baked.status.success(), "{}", text(&baked));
    assert!(text(&baked).contains("golden manifest: "), "{}", text(&baked));
    let header = std::fs::read_to_string(state.join("files.manifest")).unwrap();
    assert!(header.lines().next().unwrap().contains("\"baked\":true"), "{header:.200}");

    // Between the bake and the first boot: changed, created, deleted, and a content change
    // that keeps size and mtime (only rehashing finds it).
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\nevil:x:0:0::/:/bin/sh\n")
        .unwrap();
    std::fs::write(tree.join("etc/planted"), "new\n").unwrap();
    std::fs::remove_file(tree.join("etc/motd")).unwrap();
    let stamp = tree.join("etc/stamp");
    let mtime = std::fs::metadata(&stamp).unwrap().modified().unwrap();
    std::fs::write(&stamp, "SAME CONTENT\n").unwrap();
    std::fs::File::options().write(true).open(&stamp).unwrap().set_modified(mtime).unwrap();

    // First boot: the agent enrolls and reports exactly those, as `bake`, each a finding.
    let role = unique("bake");
    let tags = format!("role={role}");
    let env = [("HOSTWATCH_FILES_PATHS", paths.as_str())];
    let mut agent_proc = start_agent_with(&c, dir.path(), &tags, &env);
    let host = wait_for("the instance online", WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        hosts.into_iter().find(|h| h.tags.get("role") == Some(&role))
    })
    .await;
    let path = |p: &str| tree.join(p).display().to_string();
    let expected: BTreeSet<(String, &str)> = [
        (path("etc/passwd"), "modified"),
        (path("etc/planted"), "created"),
        (path("etc/motd"), "deleted"),
        (path("etc/stamp"), "modified"),
    ]
    .into_iter()
    .collect();
    let events = wait_for("the changes since the bake", WAIT, async || {
        let ev = bake_events(&c, host.id);
        (ev.len() >= expected.len()).then_some(ev)
    })
    .await;
    let seen: BTreeSet<(String, &str)> =
        events.iter().map(|e| (e.change.path.clone(), e.change.change.as_str())).collect();
    assert_eq!(seen, expected, "{}", agent_log(dir.path()));
    let findings = c.findings(host.id, "file_changed", "open");
    for (p, _) in &expected {
        let f = findings.iter().find(|f| &f.subject == p);
        let origin = f.and_then(|f| f.detail.get("origin")).and_then(|o| o.as_str());
        assert_eq!(origin, Some("bake"), "finding for {p}: {f:?}");
    }

    // Once: the instance's manifest is its own now; a restart reports no bake again. The
    // positive marker: a change made after the restart arrives, and nothing from the bake with it.
    wait_for("the manifest saved as the instance's", WAIT, async || {
        let text = std::fs::read_to_string(state.join("files.manifest")).ok()?;
        (!text.lines().next()?.contains("baked")).then_some(())
    })
    .await;
    assert!(agent_proc.terminate(Duration::from_secs(10)).success());
    let mut agent_proc = start_agent_with(&c, dir.path(), &tags, &env);
    wait_for("the agent back", WAIT, async || {
        let h: proto::HostDetail = c.get(&format!("{}/{}", proto::HOSTS_PATH, host.id)).await;
        let scanned = h.agent_stats.as_ref().and_then(|s| s.files.as_ref()).and_then(|f| f.last_scan);
        scanned.filter(|t| *t > events[0].change.at).map(|_| ())
    })
    .await;
    std::fs::write(tree.join("etc/after-boot"), "later\n").unwrap();
    let all = wait_for("a change after the restart", WAIT, async || {
        let all: Vec<proto::FileEvent> = c.cli_json(&["files", "--host", &host.id.to_string()]);
        all.iter().any(|e| e.change.path == path("etc/after-boot")).then_some(all)
    })
    .await;
    let after = all.iter().find(|e| e.change.path == path("etc/after-boot")).unwrap();
    assert_eq!(after.change.origin, proto::ChangeOrigin::Live);
    assert_eq!(bake_events(&c, host.id).len(), expected.len(), "{}", agent_log(dir.path()));
    assert!(agent_proc.terminate(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_from_another_machine_without_the_mark_is_a_clone_not_a_bake() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let tree = dir.path().join("watched");
    make_tree(&tree);
    let paths = tree.to_str().unwrap().to_owned();
    let role = unique("clone");
    let env = [("HOSTWATCH_FILES_PATHS", paths.as_str())];
    let (mut agent_proc, host) = agent_ready(&c, dir.path(), &role, &env).await;
    assert!(agent_proc.terminate(Duration::from_secs(10)).success());
    // The disk copied to another machine: the manifest names another machine id, unmarked.
    let manifest = dir.path().join("agent-state/files.manifest");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let (header, rest) = text.split_once('\n').unwrap();
    let mut h: serde_json::Value = serde_json::from_str(header).unwrap();
    h["machine_id"] = "0123456789abcdef0123456789abcdef".into();
    std::fs::write(&manifest, format!("{h}\n{rest}")).unwrap();
    std::fs::write(tree.join("etc/hosts"), "10.0.0.1 evil\n").unwrap();
    let mut agent_proc = start_agent_with(&c, dir.path(), &format!("role={role}"), &env);
    let hosts_path = tree.join("etc/hosts").display().to_string();
    let event = wait_for("the change", WAIT, async || {
        let all: Vec<proto::FileEvent> = c.cli_json(&["files", "--host", &host.id.to_string()]);
        all.into_iter().find(|e| e.change.path == hosts_path)
    })
    .await;
    assert_eq!(event.change.origin, proto::ChangeOrigin::Downtime, "{}", agent_log(dir.path()));
    assert!(agent_log(dir.path()).contains("not an image's"), "{}", agent_log(dir.path()));
    assert!(agent_proc.terminate(Duration::from_secs(10)).success());
}

#[test]
fn check_tells_systemd_whether_the_agent_is_configured_to_run() {
    let _turn = Turn::shared();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let state_line = format!("state_dir = {:?}\n", state.display().to_string());
    let run = |path: &str| agent(&["--config", path, "check"], &[]);

    // Installed, not configured: 1, which ExecCondition takes as "skip", not "fail".
    let out = run(&config("empty.toml", &state_line));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no collector named"), "{}", text(&out));

    // Configured: 0.
    let ready =
        format!("{state_line}server = \"https://collector.example:8443\"\nenroll_secret = \"hwe_x\"\n");
    let out = run(&config("ready.toml", &ready));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("https://collector.example:8443"), "{}", text(&out));

    // Broken: 255, which fails the unit, naming what is wrong.
    for (name, body, why) in [
        ("unknown.toml", format!("{state_line}colector = \"x\"\n"), "unknown field `colector`"),
        ("nosecret.toml", format!("{state_line}server = \"https://c.example\"\n"), "no enroll secret"),
        (
            "plain.toml",
            format!("{state_line}server = \"http://c.example\"\nenroll_secret = \"hwe_x\"\n"),
            "http",
        ),
        (
            "ca.toml",
            format!(
                "{state_line}server = \"https://c.example\"\nenroll_secret = \"hwe_x\"\nca_cert = \"/nonexistent/ca.pem\"\n"
            ),
            "/nonexistent/ca.pem",
        ),
    ] {
        let out = run(&config(name, &body));
        assert_eq!(out.status.code(), Some(255), "{name}: {}", text(&out));
        assert!(text(&out).contains(why), "{name}: {}", text(&out));
    }

    // Enrolled earlier (a node key in state_dir), no secret needed any more.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("node-key"), "hwn_x").unwrap();
    let out = run(&config("enrolled.toml", &format!("{state_line}server = \"https://c.example\"\n")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A package standing in for hostwatch-agent's: the binary under test and the real unit, laid
/// out as the .deb lays them out.
fn agent_package(dir: &Path) -> PathBuf {
    let binary = std::fs::read(bin("hostwatch-agent")).unwrap();
    let unit = std::fs::read(repo().join("packaging/systemd/hostwatch-agent.service")).unwrap();
    build_deb(
        dir,
        "hostwatch-agent",
        "0.1.0-1",
        &[
            ("usr/bin/hostwatch-agent", &binary, 0o755),
            ("lib/systemd/system/hostwatch-agent.service", &unit, 0o644),
        ],
    )
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn install_sh(root: &Path, env: &[(&str, &str)]) -> Output {
    Command::new("sh")
        .arg(repo().join("packaging/install.sh"))
        .arg("--root")
        .arg(root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_sh_writes_a_configuration_the_agent_accepts_and_is_idempotent() {
    let _turn = Turn::shared();
    let dir = tempfile::tempdir().unwrap();
    let deb = agent_package(dir.path());
    let sum = sha256(&deb);
    let pkg = deb.to_str().unwrap();

    // With a secret file and a CA file already on the machine, the written configuration is
    // the agent's whole configuration: it must pass `check` and carry the tags.
    let ca = crate::tls::Ca::new(dir.path(), "install");
    let pem = std::fs::read_to_string(&ca.pem).unwrap();
    let pem = pem.as_str();
    let ca_file = ca.pem.clone();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "hwe_0123\n").unwrap();
    let root = dir.path().join("root");
    let env = [
        ("HOSTWATCH_PACKAGE", pkg),
        ("HOSTWATCH_PACKAGE_SHA256", sum.as_str()),
        ("HOSTWATCH_SERVER", "https://collector.example.internal:8443"),
        ("HOSTWATCH_ENROLL_SECRET_FILE", secret_file.to_str().unwrap()),
        ("HOSTWATCH_CA_CERT", ca_file.to_str().unwrap()),
        ("HOSTWATCH_TAGS", "role=web,env=prod"),
    ];
    let out = install_sh(&root, &env);
    assert!(out.status.success(), "{}", text(&out));
    let config = root.join("etc/hostwatch/agent.toml");
    assert_eq!(mode(&config), 0o600);
    assert!(root.join("usr/bin/hostwatch-agent").exists());
    // Enabled as `systemctl enable` does it: the unit linked from multi-user.target.wants.
    let wants = root.join("etc/systemd/system/multi-user.target.wants/hostwatch-agent.service");
    assert!(wants.symlink_metadata().is_ok(), "{}", text(&out));
    let config_str = config.to_str().unwrap();
    let checked = agent(&["--config", config_str, "check"], &[]);
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{}\n{}",
        text(&checked),
        std::fs::read_to_string(&config).unwrap()
    );
    assert!(text(&checked).contains("https://collector.example.internal:8443"), "{}", text(&checked));
    let written = std::fs::read_to_string(&config).unwrap();
    let parsed: toml::Table = toml::from_str(&written).unwrap();
    assert_eq!(parsed["tags"]["role"].as_str(), Some("web"), "{written}");
    assert_eq!(parsed["tags"]["env"].as_str(), Some("prod"), "{written}");
    assert_eq!(parsed["ca_cert"].as_str(), ca_file.to_str());
    // No installer variable reaches the agent: nothing of them outside its configuration.
    assert!(!root.join("etc/default/hostwatch-agent").exists());
    assert!(!written.contains(&sum) && !written.contains("HOSTWATCH_"), "{written}");

    // Again, unchanged: the same file, not rewritten.
    let before = std::fs::metadata(&config).unwrap();
    let again = install_sh(&root, &env);
    assert!(again.status.success(), "{}", text(&again));
    assert!(!text(&again).contains("wrote"), "{}", text(&again));
    let after = std::fs::metadata(&config).unwrap();
    assert_eq!((before.ino(), before.mtime_nsec()), (after.ino(), after.mtime_nsec()));

    // User-data's form: the secret and the CA's PEM text in variables, written as private files.
    let root2 = dir.path().join("root2");
    let env2 = [
        ("HOSTWATCH_PACKAGE", pkg),
        ("HOSTWATCH_SERVER", "https://collector.example.internal:8443"),
        ("HOSTWATCH_ENROLL_SECRET", "hwe_abcdef"),
        ("HOSTWATCH_CA_CERT_PEM", pem),
    ];
    let out = install_sh(&root2, &env2);
    assert!(out.status.success(), "{}", text(&out));
    let etc = root2.join("etc/hostwatch");
    assert_eq!(std::fs::read_to_string(etc.join("enroll-secret")).unwrap(), "hwe_abcdef\n");
    assert_eq!(mode(&etc.join("enroll-secret")), 0o600);
    assert_eq!(std::fs::read_to_string(etc.join("ca.pem")).unwrap(), pem);
    let written = std::fs::read_to_string(etc.join("agent.toml")).unwrap();
    assert!(!written.contains("hwe_abcdef"), "the secret is in its own file: {written}");
    let parsed: toml::Table = toml::from_str(&written).unwrap();
    assert_eq!(parsed["enroll_secret_file"].as_str(), Some("/etc/hostwatch/enroll-secret"));
    assert_eq!(parsed["ca_cert"].as_str(), Some("/etc/hostwatch/ca.pem"));
}

#[test]
fn install_sh_refuses_what_it_cannot_trust_and_says_why() {
    let _turn = Turn::shared();
    let dir = tempfile::tempdir().unwrap();
    let deb = agent_package(dir.path());
    let pkg = deb.to_str().unwrap();
    let base = [
        ("HOSTWATCH_SERVER", "https://collector.example.internal:8443"),
        ("HOSTWATCH_ENROLL_SECRET", "hwe_abc"),
    ];
    let wrong = "0".repeat(64);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("HOSTWATCH_PACKAGE", pkg), ("HOSTWATCH_PACKAGE_SHA256", wrong.as_str())], "not the expected"),
        (vec![("HOSTWATCH_PACKAGE", "http://repo.example/hostwatch-agent.deb")], "https"),
        (
            vec![("HOSTWATCH_PACKAGE", "https://repo.example/hostwatch-agent.deb")],
            "HOSTWATCH_PACKAGE_SHA256 must",
        ),
        (vec![], "HOSTWATCH_PACKAGE is not set"),
        (vec![("HOSTWATCH_PACKAGE", pkg), ("HOSTWATCH_TAGS", "role")], "not key=value"),
        (vec![("HOSTWATCH_PACKAGE", pkg), ("HOSTWATCH_TAGS", "role=\"web\"")], "double quote"),
        (
            vec![("HOSTWATCH_PACKAGE", pkg), ("HOSTWATCH_CA_CERT_PEM", "not a certificate")],
            "no PEM certificate",
        ),
        (vec![("HOSTWATCH_PACKAGE", pkg), ("HOSTWATCH_ENROLL_SECRET_FILE", "/x")], "not both"),
    ];
    for (i, (extra, why)) in cases.iter().enumerate() {
        let root = dir.path().join(format!("root{i}"));
        let mut env: Vec<(&str, &str)> = base.to_vec();
        env.extend(extra.iter().copied());
        let out = install_sh(&root, &env);
        assert!(!out.status.success(), "{extra:?} was accepted: {}", text(&out));
        assert!(text(&out).contains(why), "{extra:?}: {}", text(&out));
        assert!(!root.join("etc/hostwatch/agent.toml").exists(), "{extra:?} wrote a configuration");
    }
    // Without a server, nothing at all.
    let out = install_sh(&dir.path().join("none"), &[("HOSTWATCH_PACKAGE", pkg)]);
    assert!(text(&out).contains("HOSTWATCH_SERVER is not set"), "{}", text(&out));
}

#[test]
fn the_shipped_configurations_load_as_they_are() {
    let _turn = Turn::shared();
    // The agent's: loads, names no collector yet (the package installs it so).
    let agent_conf = repo().join("packaging/config/agent.toml");
    let out = agent(&["--config", agent_conf.to_str().unwrap(), "check"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // The collector's.
    let server_conf = repo().join("packaging/config/server.toml");
    let out = Command::new(bin("hostwatch"))
        .args(["serve", "--check", "--config", server_conf.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success() && text(&out).contains("configuration OK"), "{}", text(&out));
    // And a broken one is refused with where.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("server.toml");
    std::fs::write(&broken, "listen = \"127.0.0.1:8080\"\nlisten_typo = 1\n").unwrap();
    let out = Command::new(bin("hostwatch"))
        .args(["serve", "--check", "--config", broken.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(text(&out).contains("server.toml:2"), "{}", text(&out));
}

/// Serves `dir` over https on loopback with `cert` and `key` (python3's http.server in TLS).
fn https_server(dir: &Path, cert: &Path, key: &Path) -> (crate::support::Guard, u16) {
    use std::io::BufRead;
    let script = "import http.server, ssl, sys, os\n\
                  os.chdir(sys.argv[1])\n\
                  srv = http.server.HTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
                  ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
                  ctx.load_cert_chain(sys.argv[2], sys.argv[3])\n\
                  srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n\
                  print(srv.server_address[1], flush=True)\n\
                  srv.serve_forever()\n";
    let mut child = crate::support::tool("python3")
        .args(["-u", "-c", script])
        .arg(dir)
        .arg(cert)
        .arg(key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = crate::support::Guard(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    (guard, line.trim().parse().expect("the server's port"))
}

#[test]
fn install_sh_downloads_over_https_and_installs_only_what_matches_its_sha256() {
    let _turn = Turn::shared();
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let deb = agent_package(&www);
    let sum = sha256(&deb);
    let ca = crate::tls::Ca::new(dir.path(), "downloads");
    let (cert, key, _) =
        ca.issue(dir.path(), "www", &["localhost"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (_server, port) = https_server(&www, &cert, &key);
    let url = format!("https://localhost:{port}/{}", deb.file_name().unwrap().to_str().unwrap());
    // curl trusts the test's CA for this download (as a fleet's own CA would be in its roots).
    let ca_bundle = ca.pem.display().to_string();
    let base = [
        ("CURL_CA_BUNDLE", ca_bundle.as_str()),
        ("HOSTWATCH_SERVER", "https://collector.example.internal:8443"),
        ("HOSTWATCH_ENROLL_SECRET", "hwe_abc"),
        ("HOSTWATCH_PACKAGE", url.as_str()),
    ];

    // The right digest: downloaded, unpacked, configured.
    let root = dir.path().join("root");
    let out = install_sh(&root, &[&base[..], &[("HOSTWATCH_PACKAGE_SHA256", sum.as_str())]].concat());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("downloading"), "{}", text(&out));
    assert_eq!(
        std::fs::read(root.join("usr/bin/hostwatch-agent")).unwrap(),
        std::fs::read(bin("hostwatch-agent")).unwrap()
    );
    assert!(root.join("etc/hostwatch/agent.toml").exists());

    // A package that is not the one named by its digest (a tampered mirror): nothing installed.
    let root = dir.path().join("tampered");
    let wrong = sum.chars().rev().collect::<String>();
    let out = install_sh(&root, &[&base[..], &[("HOSTWATCH_PACKAGE_SHA256", wrong.as_str())]].concat());
    assert!(!out.status.success() && text(&out).contains("not the expected"), "{}", text(&out));
    assert!(!root.join("usr/bin/hostwatch-agent").exists() && !root.join("etc/hostwatch").exists());

    // A URL that answers 404: said, nothing installed.
    let missing = format!("https://localhost:{port}/nothing-here.deb");
    let root = dir.path().join("missing");
    let out = install_sh(
        &root,
        &[&base[..3], &[("HOSTWATCH_PACKAGE", missing.as_str()), ("HOSTWATCH_PACKAGE_SHA256", sum.as_str())]]
            .concat(),
    );
    assert!(!out.status.success() && text(&out).contains("cannot download"), "{}", text(&out));
    assert!(!root.join("usr/bin/hostwatch-agent").exists());
}
