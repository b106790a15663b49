//! SHA-256 of running executables, read through `/proc/PID/exe` (so a deleted or replaced binary
//! is hashed as it runs, and a container's binary as the container sees it).
//!
//! Cached by (device, inode, size, mtime): a thousand processes of one program cost one hash.
//! Rate-limited by a byte budget (a token bucket refilled every second) so that a burst of new
//! programs never turns into a burst of disk reads; a process whose turn has not come is reported
//! without a hash and gets one on a later scan. Files above the size cap are not hashed.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use super::HostRoot;
use crate::ratelimit::TokenBucket;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

/// Entries kept at most; beyond, the cache starts afresh (programs still running are hashed again).
const MAX_ENTRIES: usize = 16_384;

#[derive(Debug)]
pub struct HashCache {
    known: HashMap<FileKey, Option<String>>,
    max_size: u64,
    budget: TokenBucket,
    /// Bytes hashed since start, for measurements.
    pub hashed_bytes: u64,
}

impl HashCache {
    /// Hashes at most `rate` bytes a second on average, and no file above `max_size` bytes.
    pub fn new(rate: u64, max_size: u64) -> Self {
        // A rate of 0 hashes nothing here (unlike the bucket's "no limit"): see `without_hashing`.
        HashCache {
            known: HashMap::new(),
            max_size: if rate == 0 { 0 } else { max_size },
            budget: TokenBucket::new(rate),
            hashed_bytes: 0,
        }
    }

    /// The hash of `pid`'s executable: from the cache, computed now if the budget allows, or
    /// `None` (too large, unreadable, or later).
    pub fn of_pid(&mut self, root: &HostRoot, pid: u32) -> Option<String> {
        let path = root.proc.join(pid.to_string()).join("exe");
        let meta = std::fs::metadata(&path).ok()?;
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        };
        if let Some(known) = self.known.get(&key) {
            return known.clone();
        }
        if key.size > self.max_size {
            self.known.insert(key, None);
            return None;
        }
        // A file may overdraw a full bucket: the debt is paid before the next one is hashed.
        if !self.budget.try_take(key.size) {
            return None;
        }
        let hash = hash_file(&path).ok()?;
        self.hashed_bytes += key.size;
        if self.known.len() >= MAX_ENTRIES {
            self.known.clear();
        }
        self.known.insert(key, Some(hash.clone()));
        Some(hash)
    }

    /// Whether the budget is spent: a `None` from [`HashCache::of_pid`] may then mean "later".
    pub fn starved(&self) -> bool {
        self.budget.starved()
    }
}

/// SHA-256 of a file, lowercase hex.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let (digest, _) = digest_reader::<Sha256>(&mut f, &mut vec![0u8; 128 * 1024], |_| {})?;
    Ok(hex::encode(digest))
}

/// The digest `D` of everything `r` yields, read through `buf`, and the bytes read; `on_read` is
/// told of each read (for a byte budget). The one read loop of every hash the agent takes.
pub fn digest_reader<D: Digest>(
    r: &mut impl Read,
    buf: &mut [u8],
    mut on_read: impl FnMut(u64),
) -> std::io::Result<(sha2::digest::Output<D>, u64)> {
    let mut hasher = D::new();
    let mut total = 0u64;
    loop {
        let n = r.read(buf)?;
        if n == 0 {
            break;
        }
        on_read(n as u64);
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            hash_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn own_executable_hashed_once_and_deleted_ones_too() {
        let root = HostRoot::default();
        let mut cache = HashCache::new(1 << 30, 1 << 30);
        let me = std::process::id();
        let h = cache.of_pid(&root, me).unwrap();
        assert_eq!(h, hash_file(&std::env::current_exe().unwrap()).unwrap());
        let spent = cache.hashed_bytes;
        assert_eq!(cache.of_pid(&root, me).as_deref(), Some(h.as_str()));
        assert_eq!(cache.hashed_bytes, spent, "the second time from the cache");

        // A binary deleted while it runs is still hashed through /proc/PID/exe.
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("gone");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let mut kid = std::process::Command::new(&exe).arg("5").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::remove_file(&exe).unwrap();
        let h = cache.of_pid(&root, kid.id());
        kid.kill().unwrap();
        kid.wait().unwrap();
        assert_eq!(h, Some(hash_file(std::path::Path::new("/bin/sleep")).unwrap()));
    }

    #[test]
    fn the_budget_and_the_cap() {
        let root = HostRoot::default();
        let me = std::process::id();
        assert_eq!(HashCache::new(1 << 30, 10).of_pid(&root, me), None, "above the cap");
        let mut poor = HashCache::new(1, 1 << 30);
        assert!(poor.of_pid(&root, me).is_some(), "a full bucket may be overdrawn once");
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("other");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let mut kid = std::process::Command::new(&exe).arg("5").spawn().unwrap();
        let later = poor.of_pid(&root, kid.id());
        kid.kill().unwrap();
        kid.wait().unwrap();
        assert_eq!(later, None, "the debt is paid first");
    }
}
