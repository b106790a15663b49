//! A whole scan of the watched paths: every file, directory and link under them, stat'ed and
//! (regular files up to the size cap) hashed, into a new manifest; then the changes from the
//! manifest before.
//!
//! A routine scan trusts a file whose inode, size, mtime and ctime are unchanged and keeps its
//! hash; a full one (`rehash`) reads everything again. Symbolic links are recorded, never
//! followed. Reads go through the byte budget ([`crate::ratelimit`]).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hostwatch_proto::v1 as proto;
use sha2::Sha256;
use time::OffsetDateTime;

use super::FilesConfig;
use super::manifest::{Builder, Entry, Item, Manifest, compare, key};
use crate::ratelimit::TokenBucket;

/// What a scan came to.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    pub manifest: Manifest,
    /// Configured paths that do not exist.
    pub missing: Vec<PathBuf>,
    /// Paths that could not be read, with why (at most a few kept).
    pub problems: Vec<String>,
    pub unreadable: u64,
    /// Bytes read for hashing.
    pub hashed_bytes: u64,
}

/// Files hashed at once: reads in flight keep a disk (or a network volume) busy while the walk
/// goes on; on a cold cache this, not the CPU, bounds a scan. Over /usr with a cold cache here,
/// 8 (with sequential read-ahead advice) took 8.0-8.4 s where 4 took 8.7-9.7 s.
const HASH_THREADS: usize = 8;
/// Files waiting for a hashing thread, at most (the walk waits beyond): bounds memory.
const HASH_QUEUE: usize = 1024;

/// What stops a scan; shared with the hashing threads.
pub type Stop<'a> = &'a (dyn Fn() -> bool + Sync);

/// Scans every watched path. `old` lends the hashes of files whose metadata did not change,
/// unless `rehash`. `stop` is checked between files: a scan cut short returns `None`.
pub fn scan(
    config: &FilesConfig,
    old: Option<&Manifest>,
    rehash: bool,
    budget: &mut TokenBucket,
    stop: Stop<'_>,
) -> Option<ScanOutcome> {
    scan_roots(config, &config.roots(), old, rehash, budget, stop, &mut |_, _| {})
}

/// A file for a hashing thread: its index in the manifest being built, and where it is read.
type Job = (usize, PathBuf);
/// What a hashing thread found: the entry from the open file and the bytes read.
type Hashed = (usize, std::io::Result<(Entry, u64)>);

/// Scans `roots` (host paths) and everything below them. `on_dir` is called with each
/// directory's host path and real path before it is listed: a watch added there sees every
/// change the listing might miss.
///
/// This thread walks and stats; files to hash go to [`HASH_THREADS`] threads through a bounded
/// queue, and their results come back to this thread, which alone writes the manifest.
pub fn scan_roots(
    config: &FilesConfig,
    roots: &[PathBuf],
    old: Option<&Manifest>,
    rehash: bool,
    budget: &mut TokenBucket,
    stop: Stop<'_>,
    on_dir: &mut dyn FnMut(&Path, &Path),
) -> Option<ScanOutcome> {
    let max_size = config.budget.hash_max_size;
    let budget = std::sync::Mutex::new(budget);
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(HASH_QUEUE);
    let job_rx = std::sync::Mutex::new(job_rx);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Hashed>();
    std::thread::scope(|s| {
        for i in 0..HASH_THREADS {
            let done_tx = done_tx.clone();
            let (job_rx, budget) = (&job_rx, &budget);
            let spawned = std::thread::Builder::new()
                .name(format!("files-hash-{i}"))
                .spawn_scoped(s, move || hash_worker(job_rx, &done_tx, budget, max_size, stop));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a hashing thread");
            }
        }
        drop(done_tx);
        let mut out = Walk::default();
        let walked = walk(config, roots, old, rehash, stop, on_dir, &mut out, &job_tx, &done_rx, max_size);
        drop(job_tx);
        for done in done_rx.iter() {
            out.take_hashed(done);
        }
        walked.then(|| {
            let mut manifest = out.built.build();
            manifest.scanned_at = Some(OffsetDateTime::now_utc());
            let Walk { outcome, .. } = out;
            ScanOutcome { manifest, ..outcome }
        })
    })
}

/// The walk itself; `false` if stopped.
#[allow(clippy::too_many_arguments)]
fn walk(
    config: &FilesConfig,
    roots: &[PathBuf],
    old: Option<&Manifest>,
    rehash: bool,
    stop: Stop<'_>,
    on_dir: &mut dyn FnMut(&Path, &Path),
    out: &mut Walk,
    jobs: &std::sync::mpsc::SyncSender<Job>,
    done: &std::sync::mpsc::Receiver<Hashed>,
    max_size: u64,
) -> bool {
    // A root inside another is walked once, as itself.
    let is_root: HashSet<&Path> = roots.iter().map(PathBuf::as_path).collect();
    for root in roots.iter().cloned() {
        match std::fs::symlink_metadata(config.real(&root)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.outcome.missing.push(root);
                continue;
            }
            Err(e) => {
                out.outcome.note_problem(&root, &e);
                continue;
            }
        }
        // An explicit root is scanned even where an exclude matches below it; the excludes prune
        // what is found inside.
        let mut stack = vec![root];
        while let Some(path) = stack.pop() {
            if stop() {
                return false;
            }
            // What the hashing threads finished, taken in as the walk goes (memory stays flat).
            while let Ok(d) = done.try_recv() {
                out.take_hashed(d);
            }
            let real = config.real(&path);
            let meta = match std::fs::symlink_metadata(&real) {
                Ok(m) => m,
                // Gone between listing and stat: it is simply not there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    out.outcome.note_problem(&path, &e);
                    continue;
                }
            };
            let mut entry = Entry::of(&meta);
            let mut target = None;
            let mut hash_at = None;
            match entry.kind {
                proto::FileKind::Dir => {
                    on_dir(&path, &real);
                    match std::fs::read_dir(&real) {
                        Ok(dir) => {
                            for child in dir.flatten() {
                                let p = path.join(child.file_name());
                                if !config.excluded(&p) && !is_root.contains(p.as_path()) {
                                    stack.push(p);
                                }
                            }
                        }
                        Err(e) => out.outcome.note_problem(&path, &e),
                    }
                }
                proto::FileKind::Symlink => {
                    target = std::fs::read_link(&real).ok().map(|t| t.into_os_string().into_encoded_bytes());
                }
                proto::FileKind::File => {
                    let known = old.and_then(|m| m.get(&path));
                    match known {
                        Some(k)
                            if !rehash
                                && k.entry.same_content_metadata(&entry)
                                && (k.entry.hash.is_some() || k.entry.metadata_only) =>
                        {
                            entry.hash = k.entry.hash;
                            entry.metadata_only = k.entry.metadata_only;
                        }
                        _ if entry.size > max_size => entry.metadata_only = true,
                        _ => hash_at = Some(real),
                    }
                }
                proto::FileKind::Other => {}
            }
            let Some(i) = out.built.push(key(&path), entry, target.as_deref()) else {
                out.outcome.note_problem(&path, &std::io::Error::other("path too long to keep"));
                continue;
            };
            if let Some(real) = hash_at
                && jobs.send((i, real)).is_err()
            {
                return false;
            }
        }
    }
    true
}

impl ScanOutcome {
    fn note_problem(&mut self, path: &Path, e: &std::io::Error) {
        self.unreadable += 1;
        if self.problems.len() < 5 {
            self.problems.push(format!("{}: {e}", path.display()));
        }
    }
}

/// A scan under way: the manifest being built, and the rest of what it will come to.
#[derive(Default)]
struct Walk {
    built: Builder,
    outcome: ScanOutcome,
}

impl Walk {
    /// Takes in a hashing thread's result: the entry as the open file had it, with its hash.
    fn take_hashed(&mut self, (i, result): Hashed) {
        match result {
            Ok((entry, n)) => {
                self.outcome.hashed_bytes += n;
                self.built.set(i, entry);
            }
            // Gone between the stat and the open: not there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.built.remove(i),
            // Recorded without a hash, and said so.
            Err(e) => {
                let path = self.built.path(i).to_owned();
                self.outcome.note_problem(&path, &e);
            }
        }
    }
}

/// A hashing thread: takes files from `jobs` until the walk is done, hashes each within the
/// shared budget, and hands back what it found.
fn hash_worker(
    jobs: &std::sync::Mutex<std::sync::mpsc::Receiver<Job>>,
    done: &std::sync::mpsc::Sender<Hashed>,
    budget: &std::sync::Mutex<&mut TokenBucket>,
    max_size: u64,
    stop: Stop<'_>,
) {
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((path, real)) = job else { return };
        if stop() {
            continue; // drain, so the walk never waits on a full queue
        }
        let result = hash_file(&real, max_size, &mut buf, &|n| {
            if let Ok(mut b) = budget.lock() {
                b.take(n);
            }
        });
        if done.send((path, result)).is_err() {
            return;
        }
    }
}

/// Hashes the regular file at `path`: its entry taken from the open file (what was hashed is
/// what is recorded; a change during the read moves its ctime, which the next scan sees), and the
/// bytes read. `take` is told of every read, for the budget.
fn hash_file(
    path: &Path,
    max_size: u64,
    buf: &mut [u8],
    take: &dyn Fn(u64),
) -> std::io::Result<(Entry, u64)> {
    // O_NOFOLLOW: a file swapped for a link since the stat is not followed. O_NOATIME: a scan
    // leaves access times as they were (allowed to the owner and to root).
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME | libc::O_NONBLOCK)
        .open(path)
        .or_else(|_| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path)
        })?;
    let meta = f.metadata()?;
    // Read front to back once: a larger read-ahead window keeps the device busy between reads.
    // Advice: its failure changes nothing.
    let _ = nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
    let mut entry = Entry::of(&meta);
    if !meta.file_type().is_file() {
        return Ok((entry, 0));
    }
    if entry.size > max_size {
        entry.metadata_only = true;
        return Ok((entry, 0));
    }
    let (digest, total) = crate::collect::hash::digest_reader::<Sha256>(&mut f, buf, take)?;
    entry.hash = Some(digest.into());
    Ok((entry, total))
}

/// The changes from `old` to `new`, each once, renames paired: a path gone and another come with
/// the same inode and the same content is one file moved.
pub fn changes(
    old: &Manifest,
    new: &Manifest,
    origin: proto::ChangeOrigin,
    at: OffsetDateTime,
) -> Vec<proto::FileChange> {
    use proto::FileChangeKind as K;
    let mut out = Vec::new();
    let mut gone: HashMap<(u64, u64), Item<'_>> = HashMap::new();
    for o in old.iter() {
        if !new.contains_key(o.path) {
            gone.insert((o.entry.dev, o.entry.inode), o);
        }
    }
    let mut renamed_from: HashSet<&[u8]> = HashSet::new();
    for n in new.iter() {
        let o = old.get_key(n.path);
        let Some(kind) = compare(o, Some(n)) else { continue };
        if kind == K::Created
            && let Some(before) = gone.get(&(n.entry.dev, n.entry.inode))
            && before.entry.kind == n.entry.kind
            && before.entry.hash == n.entry.hash
            && before.target == n.target
        {
            renamed_from.insert(before.path);
            out.push(change(K::Renamed, origin, at, Some(*before), Some(n), Some(before.path())));
            continue;
        }
        out.push(change(kind, origin, at, o, Some(n), None));
    }
    for o in old.iter() {
        if !new.contains_key(o.path) && !renamed_from.contains(o.path) {
            out.push(change(K::Deleted, origin, at, Some(o), None, None));
        }
    }
    out
}

/// One change, for the wire; its path is `new`'s, or `old`'s where there is no new.
fn change(
    kind: proto::FileChangeKind,
    origin: proto::ChangeOrigin,
    at: OffsetDateTime,
    old: Option<Item<'_>>,
    new: Option<Item<'_>>,
    from: Option<&Path>,
) -> proto::FileChange {
    let path = new.or(old).map(|i| i.path().to_string_lossy().into_owned()).unwrap_or_default();
    proto::FileChange {
        path,
        change: kind,
        origin,
        at,
        old: old.map(|i| i.to_wire()),
        new: new.map(|i| i.to_wire()),
        from_path: from.map(|f| f.to_string_lossy().into_owned()),
        package: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{Budget, FilesConfig};
    use proto::FileChangeKind as K;
    use std::time::Duration;

    fn config(paths: &[&Path], exclude: &[&str], max: u64) -> FilesConfig {
        let budget = Budget {
            hash_rate: 0,
            hash_max_size: max,
            rescan_every: Duration::from_secs(3600),
            rehash_every: Duration::from_secs(86400),
            max_watches: 0,
        };
        let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        FilesConfig::new(false, &paths, &exclude, budget, PathBuf::from("/nonexistent")).unwrap()
    }

    fn run(c: &FilesConfig, old: Option<&Manifest>, rehash: bool) -> ScanOutcome {
        scan(c, old, rehash, &mut TokenBucket::new(0), &|| false).unwrap()
    }

    #[test]
    fn a_scan_records_every_kind_and_excludes_what_it_is_told() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("t");
        std::fs::create_dir_all(root.join("sub/cache")).unwrap();
        std::fs::write(root.join("sub/a"), "abc").unwrap();
        std::fs::write(root.join("big"), vec![0u8; 4096]).unwrap();
        std::fs::write(root.join("sub/cache/x"), "x").unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("l")).unwrap();
        let missing = d.path().join("not-yet");
        let c = config(&[&root, &missing], &[&format!("{}/sub/cache", root.display())], 1024);
        let out = run(&c, None, false);
        assert_eq!(out.missing, [missing]);
        let m = &out.manifest;
        let e = |p: &str| m.get(&root.join(p)).unwrap_or_else(|| panic!("{p} not in the manifest"));
        let a = e("sub/a");
        assert_eq!(
            a.entry.hash.map(hex::encode).as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert!(e("big").entry.metadata_only && e("big").entry.hash.is_none(), "above the cap");
        assert_eq!(e("l").target, Some(&b"/nowhere"[..]));
        assert!(!m.contains(&root.join("sub/cache")) && !m.contains(&root.join("sub/cache/x")));
        assert_eq!(m.get(&root).map(|x| x.entry.kind), Some(proto::FileKind::Dir));
        assert_eq!(out.hashed_bytes, 3);

        // A routine rescan trusts unchanged metadata and reads nothing; a full one reads again.
        let again = run(&c, Some(&out.manifest), false);
        assert_eq!((again.hashed_bytes, again.manifest.len()), (0, m.len()));
        assert_eq!(run(&c, Some(&out.manifest), true).hashed_bytes, 3);
    }

    #[test]
    fn changes_pair_renames_and_report_each_path_once() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("t");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::write(root.join("dir/f"), "f").unwrap();
        std::fs::write(root.join("keep"), "k").unwrap();
        std::fs::write(root.join("gone"), "g").unwrap();
        let c = config(&[&root], &[], 1 << 20);
        let before = run(&c, None, false).manifest;
        // A directory renamed with its content, a file deleted, one rewritten with the same size.
        std::fs::rename(root.join("dir"), root.join("moved")).unwrap();
        std::fs::remove_file(root.join("gone")).unwrap();
        std::fs::write(root.join("keep"), "K").unwrap();
        let after = run(&c, Some(&before), false).manifest;
        let at = OffsetDateTime::UNIX_EPOCH;
        let mut got: Vec<(String, K, Option<String>)> =
            changes(&before, &after, proto::ChangeOrigin::Rescan, at)
                .into_iter()
                .map(|c| {
                    (
                        c.path.strip_prefix(&root.display().to_string()).unwrap().to_owned(),
                        c.change,
                        c.from_path,
                    )
                })
                .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let from = |p: &str| Some(root.join(p).display().to_string());
        assert_eq!(
            got,
            [
                ("/gone".to_owned(), K::Deleted, None),
                ("/keep".to_owned(), K::Modified, None),
                ("/moved".to_owned(), K::Renamed, from("dir")),
                ("/moved/f".to_owned(), K::Renamed, from("dir/f")),
            ]
        );
        assert!(changes(&after, &after, proto::ChangeOrigin::Rescan, at).is_empty());
    }
}
