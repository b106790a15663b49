//! Network namespaces: which ones exist on the host (each distinct one is read once), and a
//! process inside each through which it can be reached.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::HostRoot;

/// A network namespace, identified by its inode, reachable through a process in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Netns {
    pub inode: u64,
    /// A process in the namespace: `/proc/PID/ns/net` enters it, `/proc/PID/net/*` shows it.
    pub pid: u32,
    /// The agent's own namespace.
    pub own: bool,
}

impl Netns {
    /// The file that enters the namespace with setns(2).
    pub fn ns_file(&self, root: &HostRoot) -> PathBuf {
        root.proc.join(self.pid.to_string()).join("ns/net")
    }

    /// The directory of its `/proc/net` tables.
    pub fn net_dir(&self, root: &HostRoot) -> PathBuf {
        if self.own { root.proc.join("self/net") } else { root.proc.join(self.pid.to_string()).join("net") }
    }
}

/// The inode in a namespace link target, `net:[4026531840]`.
pub fn parse_link(target: &[u8]) -> Option<u64> {
    std::str::from_utf8(target.strip_prefix(b"net:[")?.strip_suffix(b"]")?).ok()?.parse().ok()
}

fn link_inode(path: &Path) -> Option<u64> {
    let target = std::fs::read_link(path).ok()?;
    parse_link(target.as_os_str().as_encoded_bytes())
}

/// The namespace of a process; `None` if it exited or cannot be read.
pub fn of_pid(root: &HostRoot, pid: u32) -> Option<u64> {
    link_inode(&root.proc.join(pid.to_string()).join("ns/net"))
}

/// The agent's own namespace.
pub fn own(root: &HostRoot) -> Option<u64> {
    link_inode(&root.proc.join("self/ns/net"))
}

/// Every namespace that `pids` live in, the agent's own first (present even if no listed process
/// is in it), each with the lowest pid seen in it.
pub fn discover(root: &HostRoot, pids: &[u32]) -> Vec<Netns> {
    let own = own(root);
    let mut found: BTreeMap<u64, u32> = BTreeMap::new();
    for &pid in pids {
        if let Some(inode) = of_pid(root, pid) {
            let e = found.entry(inode).or_insert(pid);
            *e = (*e).min(pid);
        }
    }
    let mut out = Vec::new();
    if let Some(inode) = own {
        out.push(Netns { inode, pid: std::process::id(), own: true });
    }
    out.extend(found.into_iter().filter(|(inode, _)| Some(*inode) != own).map(|(inode, pid)| Netns {
        inode,
        pid,
        own: false,
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(parse_link(b"net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_link(b"mnt:[1]"), None);
    }

    #[test]
    fn own_namespace_comes_first() {
        let root = HostRoot::default();
        let all = discover(&root, &[std::process::id()]);
        assert!(all[0].own);
        assert_eq!(Some(all[0].inode), of_pid(&root, std::process::id()));
        assert_eq!(all.iter().filter(|n| n.inode == all[0].inode).count(), 1, "each namespace once");
    }
}
