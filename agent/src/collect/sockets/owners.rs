//! Which processes hold which sockets, from `/proc/PID/fd`, with a cache.
//!
//! Reading every descriptor of every process is most of the cost of `ss -p`. The cache keeps,
//! per process (pid and start time, so a reused pid is a new process), the socket inodes it held
//! when last read. A rescan reads descriptors only while some wanted socket has no known owner,
//! and in the order most likely to find it: processes not read yet, then processes that held
//! sockets (servers accept new connections), then the rest. Every `FULL_EVERY` a resolve reads
//! everything again, so sockets passed between processes are not misattributed for long.
//!
//! A socket no process holds where the agent can see it (one held by a process of another PID
//! namespace, a kernel socket, one whose holder just closed it) would otherwise make every
//! rescan read every descriptor of every process looking for it: once a complete read has not
//! found it, it is left unowned until the next full read.

// Keys are inode numbers and pids the kernel hands out, not chosen by anyone: a fast hash (a
// host's 10,000 sockets are looked up at every scan) with a random seed is enough.
use foldhash::{HashMap, HashSet};

use super::super::{HostRoot, Problems, ReadFailure};

/// A process: pid and start time (clock ticks after boot).
pub type ProcKey = (u32, u64);

/// Every descriptor of every process is read again this often, so that sockets passed between
/// processes (inherited by a fork, sent over a Unix socket) are not misattributed for longer.
const FULL_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct OwnerCache {
    held: HashMap<ProcKey, Vec<u64>>,
    /// The same, inverted: the pids holding each socket inode, sorted. Kept in step with `held`
    /// so that placing a socket is one lookup, not a walk over every descriptor known.
    holders: HashMap<u64, Vec<u32>>,
    /// Sockets a complete read found no holder for.
    ownerless: HashSet<u64>,
    /// When every descriptor was last read; `None` before the first resolve.
    full_read: Option<std::time::Instant>,
    /// Descriptor directories read by the last resolve, for measurements.
    pub last_reads: usize,
}

impl OwnerCache {
    /// Maps each inode of `wanted` that some process holds to the lowest pid holding it, given
    /// the processes alive now.
    pub fn resolve(
        &mut self,
        root: &HostRoot,
        wanted: &HashSet<u64>,
        procs: &[ProcKey],
    ) -> (HashMap<u64, u32>, Problems) {
        let mut problems = Problems::default();
        self.last_reads = 0;
        if self.full_read.is_none_or(|t| t.elapsed() >= FULL_EVERY) {
            self.full_read = Some(std::time::Instant::now());
            self.held.clear();
            self.holders.clear();
            self.ownerless.clear();
        } else {
            let alive: HashSet<ProcKey> = procs.iter().copied().collect();
            let gone: Vec<ProcKey> = self.held.keys().filter(|k| !alive.contains(k)).copied().collect();
            for k in gone {
                self.hold(k, None);
            }
        }
        self.ownerless.retain(|i| wanted.contains(i));
        // Inode 0 is a socket no descriptor refers to any more (an orphaned connection).
        let mut missing: HashSet<u64> = wanted
            .iter()
            .filter(|i| **i != 0 && !self.holders.contains_key(i) && !self.ownerless.contains(i))
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
                let inodes = match read_fds(root, k.0) {
                    Ok(inodes) => inodes,
                    Err(f) => {
                        f.record(&mut problems);
                        Vec::new()
                    }
                };
                for i in &inodes {
                    missing.remove(i);
                    self.ownerless.remove(i);
                }
                self.hold(k, Some(inodes));
                self.last_reads += 1;
            }
            // Every process was read: what is still missing has no holder to be found.
            self.ownerless.extend(missing);
        }
        let owners = wanted.iter().filter_map(|i| Some((*i, *self.holders.get(i)?.first()?))).collect();
        (owners, problems)
    }

    /// Reads the descriptors of one process now (one that just started); whether it holds a
    /// socket it did not hold when last read. What was read is kept, as a resolve would keep it.
    pub fn look_at(&mut self, root: &HostRoot, key: ProcKey) -> bool {
        let Ok(inodes) = read_fds(root, key.0) else { return false };
        let before = self.held.get(&key);
        let new = inodes.iter().any(|i| before.is_none_or(|b| b.binary_search(i).is_err()));
        self.hold(key, Some(inodes));
        new
    }

    /// Records what `key` holds now (`None`: it is gone), keeping `holders` in step.
    fn hold(&mut self, key: ProcKey, inodes: Option<Vec<u64>>) {
        let old = match inodes {
            Some(new) => {
                for i in &new {
                    let pids = self.holders.entry(*i).or_default();
                    if let Err(at) = pids.binary_search(&key.0) {
                        pids.insert(at, key.0);
                    }
                }
                let old = self.held.insert(key, new);
                // What it held before and holds no longer.
                old.map(|old| {
                    let now = &self.held[&key];
                    old.into_iter().filter(|i| now.binary_search(i).is_err()).collect::<Vec<_>>()
                })
            }
            None => self.held.remove(&key),
        };
        for i in old.unwrap_or_default() {
            if let Some(pids) = self.holders.get_mut(&i) {
                pids.retain(|p| *p != key.0);
                if pids.is_empty() {
                    self.holders.remove(&i);
                }
            }
        }
    }
}

/// The socket inodes a process holds, sorted.
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
        let wanted: HashSet<u64> = [inode_of(&a)].into_iter().collect();
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!(owners[&inode_of(&a)], me);
        assert_eq!(cache.last_reads, 1);
        // Nothing new: nothing read.
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!((owners[&inode_of(&a)], cache.last_reads), (me, 0));
        // A new socket in a known server: read again, and found.
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let wanted: HashSet<u64> = [inode_of(&a), inode_of(&b)].into_iter().collect();
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!(owners[&inode_of(&b)], me);
        assert_eq!(cache.last_reads, 1);
        // A socket no known process holds is looked for once, then not again until a full read.
        let ghost = u64::MAX - 7;
        let mut wanted = wanted.clone();
        wanted.insert(ghost);
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!((owners.contains_key(&ghost), cache.last_reads), (false, 1), "looked for once");
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!((owners.contains_key(&ghost), cache.last_reads), (false, 0), "not again");
        assert_eq!(owners[&inode_of(&b)], me, "the others still known");
        // Looking at one process says whether it holds a socket not seen before.
        let mut fresh = OwnerCache::default();
        assert!(fresh.look_at(&root, procs[0]), "never read: its sockets are new");
        assert!(!fresh.look_at(&root, procs[0]), "nothing opened since");
        let _d = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(fresh.look_at(&root, procs[0]), "a socket opened since");
        // A socket closed is no longer held by anyone; a process gone holds nothing.
        let ia = inode_of(&a);
        assert_eq!(fresh.holders.get(&ia), Some(&vec![me]));
        drop(a);
        fresh.look_at(&root, procs[0]);
        assert!(!fresh.holders.contains_key(&ia));
        fresh.hold(procs[0], None);
        assert!(fresh.holders.is_empty() && fresh.held.is_empty());
        // A process not read before is read while a socket is ownerless: it may be the holder.
        let c = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cache = OwnerCache::default();
        let wanted: HashSet<u64> = [inode_of(&c)].into_iter().collect();
        cache.resolve(&root, &wanted, &[]);
        let (owners, _) = cache.resolve(&root, &wanted, &procs);
        assert_eq!((owners[&inode_of(&c)], cache.last_reads), (me, 1));
    }
}
