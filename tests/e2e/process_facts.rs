//! What the agent says about a process beyond its name, end to end through the collector: the
//! executable's SHA-256, a program run from memory (memfd), one run from a world-writable
//! directory, and the container a process runs in (from its cgroup).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hostwatch_proto::v1 as proto;

use crate::support::{Collector, Guard, start_agent_with, unique, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A cgroup made for the test (v2, or v1's `pids` hierarchy), removed when dropped.
struct Cgroup {
    leaf: PathBuf,
    top: PathBuf,
}

impl Cgroup {
    /// `top/docker-ID.scope`, the shape systemd gives Docker containers.
    fn docker_like(id: &str) -> Cgroup {
        let v2 = Command::new("stat")
            .args(["-fc", "%T", "/sys/fs/cgroup"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "cgroup2fs")
            .unwrap_or(false);
        let root = if v2 { PathBuf::from("/sys/fs/cgroup") } else { PathBuf::from("/sys/fs/cgroup/pids") };
        assert!(root.join("cgroup.procs").exists(), "no writable cgroup hierarchy at {}", root.display());
        let top = root.join(unique("hwtest"));
        let leaf = top.join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&leaf)
            .unwrap_or_else(|e| panic!("mkdir {}: {e} (root needed)", leaf.display()));
        Cgroup { leaf, top }
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.leaf.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Only empty cgroups can be removed: the test kills its process first.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.leaf).is_ok() || !self.leaf.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir(&self.top);
    }
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum (coreutils)");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

fn spawn(exe: &Path, args: &[&str]) -> Guard {
    Guard(Command::new(exe).args(args).stdout(Stdio::null()).spawn().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashes_memfd_world_writable_and_containers_reach_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(dir.path(), "");
    let role = unique("facts");
    let _agent = start_agent_with(&c, dir.path(), &format!("role={role}"), &[("HOSTWATCH_INTERVAL", "2s")]);

    // A copy of sleep in a sticky world-writable directory, like /tmp.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let dropped = shared.join(unique("dropped"));
    crate::support::copy_program("/bin/sleep", &dropped);
    let in_tmp = spawn(&dropped, &["120"]);

    // sleep run from an anonymous memory file, as fileless malware does.
    let memfd_name = unique("hwmem");
    let in_memory = Guard(
        crate::support::tool("python3")
            .args([
                "-c",
                "import os, sys; fd = os.memfd_create(sys.argv[1], 0); \
                 os.write(fd, open('/bin/sleep', 'rb').read()); \
                 os.execv(f'/proc/self/fd/{fd}', ['sleep', '120'])",
                &memfd_name,
            ])
            .spawn()
            .expect("python3"),
    );

    // sleep inside a cgroup shaped like a Docker container's.
    let id: String = (0..64).map(|i| char::from(b"0123456789abcdef"[(i * 7 + 3) % 16])).collect();
    let cgroup = Cgroup::docker_like(&id);
    let contained = spawn(Path::new("/bin/sleep"), &["120"]);
    cgroup.enter(contained.0.id());

    let find = |pid: u32| {
        let rows: Vec<proto::Located<proto::Process>> = c.cli_json(&["ps"]);
        rows.into_iter().find(|r| r.item.pid == pid).map(|r| r.item)
    };
    // Hashing is rate-limited, so the hash may come a scan or two after the process.
    let tmp = wait_for("the world-writable copy, hashed", WAIT, async || {
        find(in_tmp.0.id()).filter(|p| p.sha256.is_some())
    })
    .await;
    assert!(tmp.exe_writable_dir, "{tmp:?}");
    assert!(!tmp.exe_memfd);
    assert_eq!(tmp.sha256.as_deref(), Some(sha256_of(&dropped).as_str()));
    assert!(tmp.rss_bytes.is_some_and(|r| r > 0), "{tmp:?}");

    let mem = wait_for("the memfd program", WAIT, async || {
        find(in_memory.0.id()).filter(|p| p.exe_memfd && p.sha256.is_some())
    })
    .await;
    assert!(mem.exe.as_deref().is_some_and(|e| e.contains(&memfd_name)), "{mem:?}");
    assert!(!mem.exe_writable_dir);
    // The hash is of what runs, even though no file on disk holds it.
    assert_eq!(mem.sha256.as_deref(), Some(sha256_of(Path::new("/bin/sleep")).as_str()));

    let boxed = wait_for("the contained sleep, with its container", WAIT, async || {
        find(contained.0.id()).filter(|p| p.container_id.is_some())
    })
    .await;
    assert_eq!(boxed.container_id.as_deref(), Some(id.as_str()));
    assert!(boxed.cgroup.as_deref().is_some_and(|g| g.ends_with(&format!("docker-{id}.scope"))), "{boxed:?}");
    assert_eq!(boxed.unit, Some(format!("docker-{id}.scope")));

    // The table flags what deserves a look.
    let out = c.cli(&["ps"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("[world-writable dir]") && table.contains("[memfd]"), "{table}");
    assert!(table.contains(&format!("container:{}", &id[..12])), "{table}");

    drop(contained);
    drop(cgroup);
}

#[test]
fn command_lines_are_redacted_by_built_in_and_site_rules_before_they_leave() {
    let _turn = crate::support::Turn::shared();
    let marker = unique("hwredact");
    let secret = format!("{marker}-tok-31337");
    let _kid = Guard(
        crate::support::tool("python3")
            .args(["-c", "import time; time.sleep(60)", &marker, "--password=hunter2", &secret])
            .spawn()
            .expect("python3"),
    );
    let pattern = format!("{marker}-tok-(\\d+)");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let cmdline = loop {
        let (report, text, _) = crate::support::agent_snapshot(&[
            ("HOSTWATCH_CLOUD_PROVIDER", "none"),
            ("HOSTWATCH_REDACT_PATTERNS", &pattern),
        ]);
        assert!(!text.contains("hunter2") && !text.contains("31337"), "a secret left the agent");
        if let Some(p) = report.snapshot.unwrap().processes.into_iter().find(|p| p.cmdline.contains(&marker))
        {
            break p.cmdline;
        }
        assert!(std::time::Instant::now() < deadline, "the python process never showed");
        std::thread::sleep(Duration::from_millis(200));
    };
    // (The process may be reached through a launcher, pyenv's shim: compare the end.)
    let expected = [marker.clone(), "--password=<redacted>".into(), format!("{marker}-tok-<redacted>")];
    assert!(cmdline.ends_with(&expected), "{cmdline:?}");
}
