//! Which processes hold which sockets, from `/proc/PID/fd`, with a cache.
//!
//! Reading every descriptor of every process is most of the cost of `ss -p`. The cache keeps,
//! per process (pid and start time, so a reused pid is a new process), the socket inodes it held
//! when last read. A rescan reads descriptors only while some wanted socket has no known owner,
//! and in the order most likely to find it: processes not read yet, then processes that held
//! sockets (servers accept new connections), then the rest. Every `FULL_EVERY`-th resolve reads
//! everything again, so sockets passed between processes are not misattributed for long.
//!
//! A socket no process holds where the agent can see it (one held by a process of another PID
//! namespace, a kernel socket, one whose holder just closed it) would otherwise make every
//! rescan read every descriptor of every process looking for it: once a complete read has not
//! found it, it is left unowned until the next full read.

use std::collections::{HashMap, HashSet};

use super::super::{HostRoot, Problems, ReadFailure};

/// A process: pid and start time (clock ticks after boot).
pub type ProcKey = (u32, u64);

/// Resolves in this many count as one full read of every process.
const FULL_EVERY: u32 = 30;

#[derive(Debug, Default)]
pub struct OwnerCache {
    held: HashMap<ProcKey, Vec<u64>>,
    /// Sockets a complete read found no holder for.
    ownerless: HashSet<u64>,
    resolves: u32,
    /// Descriptor directories read by the last resolve, for measurements.
    pub last_reads: usize,
}

impl OwnerCache {
    /// Maps each inode of `wanted` to the pids holding it (sorted), given the processes alive now.
    pub fn resolve(
        &mut self,
        root: &HostRoot,
        wanted: &HashSet<u64>,
        procs: &[ProcKey],
    ) -> (HashMap<u64, Vec<u32>>, Problems) {
        let mut problems = Problems::default();
        self.last_reads = 0;
        let alive: HashSet<ProcKey> = procs.iter().copied().collect();
        self.held.retain(|k, _| alive.contains(k));
        self.resolves += 1;
        if self.resolves % FULL_EVERY == 1 {
            self.held.clear();
            self.ownerless.clear();
        }
        self.ownerless.retain(|i| wanted.contains(i));
        let mut known: HashSet<u64> = self.held.values().flatten().copied().collect();
        // Inode 0 is a socket no descriptor refers to any more (an orphaned connection).
        let mut missing: HashSet<u64> = wanted
            .iter()
            .filter(|i| **i != 0 && !known.contains(i) && !self.ownerless.contains(i))
            .copied()
            .collect();
        if !missing.is_empty() || !self.ownerless.is_empty() {
            let (mut unread, mut servers, mut rest) = (Vec::new(), Vec::new(), Vec::new());
            for k in procs {
                match self.held.get(k) {
                    None => unread.push(*k),
                    Some(v) if !v.is_empty() => servers.push(*k),
                    Some(_) => rest.push(*k),
                }
            }
            // Processes never read may hold what was ownerless (one that started between the
            // process listing and the socket dump): they are read while anything is unresolved.
            // The processes read before are read again only for sockets new since.
            let unread_len = unread.len();
            for (n, k) in unread.into_iter().chain(servers).chain(rest).enumerate() {
                if missing.is_empty() && (n >= unread_len || self.ownerless.is_empty()) {
                    break;
                }
                match read_fds(root, k.0) {
                    Ok(inodes) => {
                        for i in &inodes {
                            missing.remove(i);
                            self.ownerless.remove(i);
                            known.insert(*i);
                        }
                        self.held.insert(k, inodes);
                    }
                    Err(f) => {
                        f.record(&mut problems);
                        self.held.insert(k, Vec::new());
                    }
                }
                self.last_reads += 1;
            }
            // Every process was read: what is still missing has no holder to be found.
            self.ownerless.extend(missing);
        }
        let mut owners: HashMap<u64, Vec<u32>> = HashMap::new();
        for (k, inodes) in &self.held {
            for i in inodes.iter().filter(|i| wanted.contains(i)) {
                owners.entry(*i).or_default().push(k.0);
            }
        }
        for pids in owners.values_mut() {
            pids.sort_unstable();
            pids.dedup();
        }
        (owners, problems)
    }
}

/// The socket inodes a process holds.
fn read_fds(root: &HostRoot, pid: u32) -> Result<Vec<u64>, ReadFailure> {
    let dir = root.proc.join(pid.to_string()).join("fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| ReadFailure::of_io(&dir, &e))?;
    let mut inodes = Vec::new();
    for entry in entries.flatten() {
        // A descriptor closed between listing and reading is simply gone.
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if let Some(inode) = socket_inode(target.as_os_str().as_encoded_bytes()) {
            inodes.push(inode);
        }
    }
    inodes.sort_unstable();
    inodes.dedup();
    Ok(inodes)
}

/// The inode of a descriptor link target `socket:[12345]`.
pub fn socket_inode(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn inode_from_link() {
        assert_eq!(socket_inode(b"socket:[4242]"), Some(4242));
        assert_eq!(socket_inode(b"pipe:[4242]"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);
    }

    #[test]
    fn finds_owners_and_reads_less_the_second_time() {
        let root = HostRoot::default();
        let me = std::process::id();
        let start = 1; // any stable key for this process
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let inode_of = |l: &TcpListener| {
            use std::os::fd::AsRawFd;
            std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap().ino()
        };
        let procs = [(me, start)];
        let mut cache = OwnerCache::default();
        let wanted: HashSet<u64> = [inode_of(&a)].into();
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!(owners[&inode_of(&a)], vec![me]);
        assert_eq!(cache.last_reads, 1);
        // Nothing new: nothing read.
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!((owners[&inode_of(&a)].clone(), cache.last_reads), (vec![me], 0));
        // A new socket in a known server: read again, and found.
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let wanted: HashSet<u64> = [inode_of(&a), inode_of(&b)].into();
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!(owners[&inode_of(&b)], vec![me]);
        assert_eq!(cache.last_reads, 1);
        // A socket no known process holds is looked for once, then not again until a full read.
        let ghost = u64::MAX - 7;
        let mut wanted = wanted.clone();
        wanted.insert(ghost);
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!((owners.contains_key(&ghost), cache.last_reads), (false, 1), "looked for once");
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!((owners.contains_key(&ghost), cache.last_reads), (false, 0), "not again");
        assert_eq!(owners[&inode_of(&b)], vec![me], "the others still known");
        // A process not read before is read while a socket is ownerless: it may be the holder.
        let c = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cache = OwnerCache::default();
        let wanted: HashSet<u64> = [inode_of(&c)].into();
        cache.resolve(&root, &wanted, &[]);
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!((owners[&inode_of(&c)].clone(), cache.last_reads), (vec![me], 1));
    }
}
