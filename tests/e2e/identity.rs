//! Clone-proof identity: a copied state directory on another machine enrolls as a new host, a
//! whole-disk clone (same machine id, same key) running beside its original raises
//! duplicate_identity, and `reset-identity` readies a state directory for an image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hostwatch_proto::v1::{self as proto};

use crate::support::{Collector, Guard, agent_log, bin, on_both_stores, start_agent_with, unique, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// A host root for an agent: this machine's `/proc` and `/sys`, and an `/etc` of its own whose
/// machine id is `machine_id` (the rest of `/etc` the agent reads, linked).
fn machine(dir: &Path, machine_id: &str) -> PathBuf {
    let root = dir.join(format!("root-{machine_id}"));
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::os::unix::fs::symlink("/proc", root.join("proc")).unwrap();
    std::os::unix::fs::symlink("/sys", root.join("sys")).unwrap();
    for f in ["os-release", "passwd", "group", "hostname"] {
        if Path::new("/etc").join(f).exists() {
            std::os::unix::fs::symlink(Path::new("/etc").join(f), etc.join(f)).unwrap();
        }
    }
    std::fs::write(etc.join("machine-id"), format!("{machine_id}\n")).unwrap();
    root
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

fn agent(c: &Collector, dir: &Path, role: &str, root: &Path, state: &Path) -> Guard {
    std::fs::create_dir_all(dir).unwrap();
    start_agent_with(
        c,
        dir,
        &format!("role={role}"),
        &[("HOSTWATCH_HOST_ROOT", root.to_str().unwrap()), ("HOSTWATCH_STATE_DIR", state.to_str().unwrap())],
    )
}

async fn hosts_of(c: &Collector, role: &str, n: usize) -> Vec<proto::Host> {
    wait_for(&format!("{n} hosts of {role}"), WAIT, async || {
        let hosts: Vec<proto::Host> = c.cli_json(&["hosts"]);
        let mine: Vec<proto::Host> =
            hosts.into_iter().filter(|h| h.tags.get("role").map(String::as_str) == Some(role)).collect();
        (mine.len() == n).then_some(mine)
    })
    .await
}

on_both_stores!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_copied_identity_enrolls_anew_elsewhere_and_a_running_clone_is_a_duplicate
);
async fn a_copied_identity_enrolls_anew_elsewhere_and_a_running_clone_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let role = unique("clone");
    let m1 = unique("aaaa");
    let root1 = machine(dir.path(), &m1);
    let state1 = dir.path().join("state1");
    let mut first = agent(&c, &dir.path().join("a1"), &role, &root1, &state1);
    let original = hosts_of(&c, &role, 1).await.remove(0);
    first.terminate(Duration::from_secs(10));

    // The state directory copied onto another machine: a new host, and the agent says why.
    let state2 = dir.path().join("state2");
    copy_dir(&state1, &state2);
    let root2 = machine(dir.path(), &unique("bbbb"));
    let a2 = dir.path().join("a2");
    let second = agent(&c, &a2, &role, &root2, &state2);
    let two = hosts_of(&c, &role, 2).await;
    assert!(two.iter().any(|h| h.id != original.id));
    assert!(agent_log(&a2).contains("not the one the node key was issued to"), "{}", agent_log(&a2));
    drop(second);

    // A whole-disk clone: the same machine id and the same key, running beside the original.
    let state3 = dir.path().join("state3");
    copy_dir(&state1, &state3);
    let _original = agent(&c, &dir.path().join("a1"), &role, &root1, &state1);
    let _clone = agent(&c, &dir.path().join("a3"), &role, &root1, &state3);
    let dup = wait_for("duplicate_identity about the shared node key", WAIT, async || {
        c.findings(original.id, "duplicate_identity", "open").into_iter().find(|f| f.subject == "node key")
    })
    .await;
    assert_eq!(dup.detail["sessions"].as_array().map(Vec::len), Some(2), "{}", dup.detail);
    // Still two hosts: the clone posed as the original rather than enrolling.
    hosts_of(&c, &role, 2).await;
}

#[tokio::test]
async fn reset_identity_readies_a_state_directory_for_an_image() {
    // The agent it runs is news to every host watching this machine.
    let _turn = crate::support::Turn::shared();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("spool")).unwrap();
    std::fs::write(state.join("node-key"), "hwn_x").unwrap();
    std::fs::write(state.join("identity.json"), r#"{"host_id":1,"machine_id":"m","server":"http://x/"}"#)
        .unwrap();
    std::fs::write(state.join("spool").join("00000000000000000001.json"), "{}").unwrap();
    std::fs::write(state.join("files.manifest"), "kept").unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "").unwrap();
    let reset = || {
        Command::new(bin("hostwatch-agent"))
            .args(["--config", config.to_str().unwrap(), "reset-identity"])
            .env_clear()
            .env("HOSTWATCH_STATE_DIR", &state)
            .output()
            .unwrap()
    };
    let out = reset();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("node-key") && said.contains("spool"), "{said}");
    assert!(!state.join("node-key").exists() && !state.join("identity.json").exists());
    assert!(!state.join("spool").exists());
    assert_eq!(std::fs::read_to_string(state.join("files.manifest")).unwrap(), "kept");
    let again = reset();
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to reset"));
}
