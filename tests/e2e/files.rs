//! File integrity as the file-integrity issue asks: a manifest built at first start, and every
//! change made while the agent was down reported once at the next start, each a finding.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::support::{Collector, agent_log, start_agent_with, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A small tree of every kind of entry.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc/cron.d")).unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    write(&root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n");
    write(&root.join("etc/hosts"), "127.0.0.1 localhost\n");
    write(&root.join("etc/motd"), "hello\n");
    write(&root.join("etc/cron.d/job"), "* * * * * root true\n");
    write(&root.join("bin/tool"), "#!/bin/sh\necho tool\n");
    write(&root.join("bin/old-name"), "moved\n");
    write(&root.join("etc/stamp"), "same content\n");
    std::os::unix::fs::symlink("/bin/tool", root.join("bin/link")).unwrap();
}

fn file_events(c: &Collector, host: i64) -> Vec<proto::FileEvent> {
    c.cli_json(&["files", "--host", &host.to_string(), "--limit", "10000"])
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_made_while_the_agent_was_down_are_reported_once_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let tree = dir.path().join("watched");
    make_tree(&tree);
    let role = unique("fim");
    let tags = format!("role={role}");
    let env = [("HOSTWATCH_FILES_PATHS", tree.to_str().unwrap())];
    let manifest = dir.path().join("agent-state").join("files.manifest");

    let mut agent = start_agent_with(&c, dir.path(), &tags, &env);
    wait_for("the first manifest", WAIT, async || manifest.exists().then_some(())).await;
    let host = wait_for("the host online", WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        hosts.into_iter().find(|h| h.tags.get("role") == Some(&role) && h.status == proto::HostStatus::Online)
    })
    .await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    // Building the manifest reports nothing (as `aide --init`).
    assert_eq!(file_events(&c, host.id), vec![], "{}", agent_log(dir.path()));

    // While the agent is down: one change of every kind.
    write(&tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\nevil:x:0:0::/:/bin/sh\n");
    write(&tree.join("etc/new-file"), "new\n");
    std::fs::remove_file(tree.join("etc/motd")).unwrap();
    std::fs::set_permissions(tree.join("bin/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::rename(tree.join("bin/old-name"), tree.join("bin/new-name")).unwrap();
    std::fs::remove_file(tree.join("bin/link")).unwrap();
    std::os::unix::fs::symlink("/tmp/evil", tree.join("bin/link")).unwrap();
    std::fs::OpenOptions::new().write(true).truncate(true).open(tree.join("etc/hosts")).unwrap();
    let stamp = std::fs::File::options().write(true).open(tree.join("etc/stamp")).unwrap();
    stamp.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)).unwrap();
    drop(stamp);

    let mut agent = start_agent_with(&c, dir.path(), &tags, &env);
    let path = |p: &str| tree.join(p).display().to_string();
    let expected: BTreeSet<(String, &str)> = [
        (path("etc/passwd"), "modified"),
        (path("etc/new-file"), "created"),
        (path("etc/motd"), "deleted"),
        (path("bin/tool"), "metadata"),
        (path("bin/new-name"), "renamed"),
        (path("bin/link"), "modified"),
        (path("etc/hosts"), "modified"),
        (path("etc/stamp"), "metadata"),
    ]
    .into_iter()
    .collect();
    let events = wait_for("the downtime changes", WAIT, async || {
        let ev = file_events(&c, host.id);
        (ev.len() >= expected.len()).then_some(ev)
    })
    .await;
    let seen: BTreeSet<(String, &str)> =
        events.iter().map(|e| (e.change.path.clone(), e.change.change.as_str())).collect();
    assert_eq!(seen, expected, "{}", agent_log(dir.path()));
    assert!(events.iter().all(|e| e.change.origin == proto::ChangeOrigin::Downtime));
    let passwd = events.iter().find(|e| e.change.path == path("etc/passwd")).unwrap();
    let (old, new) = (passwd.change.old.as_ref().unwrap(), passwd.change.new.as_ref().unwrap());
    assert_ne!(old.sha256, new.sha256);
    assert_eq!(new.sha256.as_deref().map(str::len), Some(64));
    let renamed = events.iter().find(|e| e.change.change == proto::FileChangeKind::Renamed).unwrap();
    assert_eq!(renamed.change.from_path.as_deref(), Some(path("bin/old-name").as_str()));
    let tool = events.iter().find(|e| e.change.path == path("bin/tool")).unwrap();
    assert_eq!(tool.change.new.as_ref().unwrap().mode, 0o4755);

    // Each is a finding (no baseline allows anything), subject the path.
    let findings = c.findings(host.id, "file_changed", "open");
    let subjects: BTreeSet<&str> = findings.iter().map(|f| f.subject.as_str()).collect();
    for (p, _) in &expected {
        assert!(subjects.contains(p.as_str()), "no finding for {p}: {subjects:?}");
    }

    // Reported once: a restart with nothing changed reports nothing more.
    assert!(agent.terminate(Duration::from_secs(10)).success());
    let before = file_events(&c, host.id).len();
    let mut agent = start_agent_with(&c, dir.path(), &tags, &env);
    // Wait for the agent to have scanned (its heartbeat carries the manifest's size) ...
    wait_for("the agent's scan after the restart", WAIT, async || {
        let h: proto::HostDetail = c.get(&format!("{}/{}", proto::HOSTS_PATH, host.id)).await;
        let scanned = h.agent_stats.as_ref().and_then(|s| s.files.as_ref()).and_then(|f| f.last_scan);
        scanned.filter(|t| *t > renamed.change.at).map(|_| ())
    })
    .await;
    // ... and for the report after it to be applied.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(file_events(&c, host.id).len(), before, "{}", agent_log(dir.path()));
    assert!(agent.terminate(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_baseline_allows_what_the_workload_changes_and_denies_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let tree = dir.path().join("srv");
    std::fs::create_dir_all(tree.join("www")).unwrap();
    std::fs::create_dir_all(tree.join("conf")).unwrap();
    write(&tree.join("www/index.html"), "v1\n");
    write(&tree.join("www/.htaccess"), "deny\n");
    write(&tree.join("conf/app.conf"), "a=1\n");
    let role = unique("fimrules");
    let baseline = dir.path().join("b.toml");
    write(
        &baseline,
        &format!(
            r#"
name = "{role}"
selector = {{ role = "{role}" }}
[[process]]
name = "*"
[[listen]]
protocol = "tcp"
port = "1-65535"
[[listen]]
protocol = "udp"
port = "1-65535"
[[file]]
path = "{www}/**"
change = "allow"
reason = "the site is deployed here"
[[file]]
path = "{www}/.htaccess"
change = "deny"
[[file]]
path = "{www}"
change = "allow"
"#,
            www = tree.join("www").display()
        ),
    );
    let out = c.cli(&["baseline", "apply", baseline.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let env = [("HOSTWATCH_FILES_PATHS", tree.to_str().unwrap())];
    let manifest = dir.path().join("agent-state").join("files.manifest");
    let mut agent = start_agent_with(&c, dir.path(), &format!("role={role}"), &env);
    wait_for("the first manifest", WAIT, async || manifest.exists().then_some(())).await;
    let host = wait_for("the host online", WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        hosts.into_iter().find(|h| h.tags.get("role") == Some(&role))
    })
    .await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    write(&tree.join("www/index.html"), "v2\n");
    write(&tree.join("www/.htaccess"), "allow from all\n");
    write(&tree.join("conf/app.conf"), "a=2\n");
    let mut agent = start_agent_with(&c, dir.path(), &format!("role={role}"), &env);
    wait_for("three changes recorded", WAIT, async || (file_events(&c, host.id).len() >= 3).then_some(()))
        .await;
    let findings = c.findings(host.id, "file_changed", "open");
    let subjects: BTreeSet<String> = findings.iter().map(|f| f.subject.clone()).collect();
    let p = |s: &str| tree.join(s).display().to_string();
    // The content of the site is allowed; .htaccess is denied whatever allows its directory; the
    // configuration is watched and nothing allows its change.
    assert_eq!(
        subjects,
        [p("www/.htaccess"), p("conf/app.conf")].into_iter().collect::<BTreeSet<_>>(),
        "{}",
        agent_log(dir.path())
    );
    assert!(agent.terminate(Duration::from_secs(10)).success());
}
