//! A whole scan of the watched paths: every file, directory and link under them, stat'ed and
//! (regular files up to the size cap) hashed, into a new manifest; then the changes from the
//! manifest before.
//!
//! A routine scan trusts a file whose inode, size, mtime and ctime are unchanged and keeps its
//! hash; a full one (`rehash`) reads everything again. Symbolic links are recorded, never
//! followed. Reads go through the byte budget ([`crate::ratelimit`]).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hostwatch_proto::v1 as proto;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::FilesConfig;
use super::manifest::{Entry, Manifest, compare};
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

/// Scans every watched path. `old` lends the hashes of files whose metadata did not change,
/// unless `rehash`. `stop` is checked between files: a scan cut short returns `None`.
pub fn scan(
    config: &FilesConfig,
    old: Option<&Manifest>,
    rehash: bool,
    budget: &mut TokenBucket,
    stop: &dyn Fn() -> bool,
) -> Option<ScanOutcome> {
    scan_roots(config, &config.roots(), old, rehash, budget, stop, &mut |_, _| {})
}

/// Scans `roots` (host paths) and everything below them. `on_dir` is called with each
/// directory's host path and real path before it is listed: a watch added there sees every
/// change the listing might miss.
pub fn scan_roots(
    config: &FilesConfig,
    roots: &[PathBuf],
    old: Option<&Manifest>,
    rehash: bool,
    budget: &mut TokenBucket,
    stop: &dyn Fn() -> bool,
    on_dir: &mut dyn FnMut(&Path, &Path),
) -> Option<ScanOutcome> {
    let mut out = ScanOutcome::default();
    let mut hasher = Hasher { budget, max_size: config.budget.hash_max_size, buf: vec![0u8; 256 << 10] };
    for root in roots.iter().cloned() {
        match std::fs::symlink_metadata(config.real(&root)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.missing.push(root);
                continue;
            }
            Err(e) => {
                out.note_problem(&root, &e);
                continue;
            }
        }
        // An explicit root is scanned even where an exclude matches below it; the excludes prune
        // what is found inside.
        let mut stack = vec![root];
        while let Some(path) = stack.pop() {
            if stop() {
                return None;
            }
            if out.manifest.entries.contains_key(&path) {
                continue; // two roots overlap
            }
            let real = config.real(&path);
            let meta = match std::fs::symlink_metadata(&real) {
                Ok(m) => m,
                // Gone between listing and stat: it is simply not there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    out.note_problem(&path, &e);
                    continue;
                }
            };
            let mut entry = Entry::of(&meta);
            match entry.kind {
                proto::FileKind::Dir => {
                    on_dir(&path, &real);
                    match std::fs::read_dir(&real) {
                        Ok(dir) => {
                            for child in dir.flatten() {
                                let p = path.join(child.file_name());
                                if !config.excluded(&p) {
                                    stack.push(p);
                                }
                            }
                        }
                        Err(e) => out.note_problem(&path, &e),
                    }
                }
                proto::FileKind::Symlink => {
                    entry.target = std::fs::read_link(&real)
                        .ok()
                        .map(|t| t.into_os_string().into_encoded_bytes().into_boxed_slice());
                }
                proto::FileKind::File => {
                    let known = old.and_then(|m| m.entries.get(&path));
                    match known {
                        Some(k)
                            if !rehash
                                && k.same_content_metadata(&entry)
                                && (k.hash.is_some() || k.metadata_only) =>
                        {
                            entry.hash = k.hash;
                            entry.metadata_only = k.metadata_only;
                        }
                        _ => match hasher.hash(&real, &mut entry) {
                            Ok(n) => out.hashed_bytes += n,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(e) => out.note_problem(&path, &e),
                        },
                    }
                }
                proto::FileKind::Other => {}
            }
            out.manifest.entries.insert(path, entry);
        }
    }
    out.manifest.scanned_at = Some(OffsetDateTime::now_utc());
    Some(out)
}

impl ScanOutcome {
    fn note_problem(&mut self, path: &Path, e: &std::io::Error) {
        self.unreadable += 1;
        if self.problems.len() < 5 {
            self.problems.push(format!("{}: {e}", path.display()));
        }
    }
}

/// Reads files for their hash within the byte budget.
struct Hasher<'a> {
    budget: &'a mut TokenBucket,
    max_size: u64,
    buf: Vec<u8>,
}

impl Hasher<'_> {
    /// Hashes the regular file at `path` into `entry`, whose metadata is taken again from the
    /// open file (what was hashed is what is recorded; a change during the read moves its ctime,
    /// which the next scan sees). Returns the bytes read.
    fn hash(&mut self, path: &Path, entry: &mut Entry) -> std::io::Result<u64> {
        if entry.size > self.max_size {
            entry.metadata_only = true;
            return Ok(0);
        }
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
        if !meta.file_type().is_file() {
            *entry = Entry::of(&meta);
            return Ok(0);
        }
        *entry = Entry::of(&meta);
        if entry.size > self.max_size {
            entry.metadata_only = true;
            return Ok(0);
        }
        let mut h = Sha256::new();
        let mut total = 0u64;
        loop {
            let n = f.read(&mut self.buf)?;
            if n == 0 {
                break;
            }
            self.budget.take(n as u64);
            h.update(&self.buf[..n]);
            total += n as u64;
        }
        entry.hash = Some(h.finalize().into());
        Ok(total)
    }
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
    let mut gone: HashMap<(u64, u64), &Path> = HashMap::new();
    for (path, o) in &old.entries {
        if !new.entries.contains_key(path) {
            gone.insert((o.dev, o.inode), path);
        }
    }
    let mut renamed_from: HashSet<&Path> = HashSet::new();
    for (path, n) in &new.entries {
        let o = old.entries.get(path);
        let Some(kind) = compare(o, Some(n)) else { continue };
        if kind == K::Created
            && let Some(from) = gone.get(&(n.dev, n.inode))
            && let Some(before) = old.entries.get(*from)
            && before.kind == n.kind
            && before.hash == n.hash
            && before.target == n.target
        {
            renamed_from.insert(from);
            out.push(change(path, K::Renamed, origin, at, Some(before), Some(n), Some(from)));
            continue;
        }
        out.push(change(path, kind, origin, at, o, Some(n), None));
    }
    for (path, o) in &old.entries {
        if !new.entries.contains_key(path) && !renamed_from.contains(path.as_path()) {
            out.push(change(path, K::Deleted, origin, at, Some(o), None, None));
        }
    }
    out
}

/// One change, for the wire.
pub fn change(
    path: &Path,
    kind: proto::FileChangeKind,
    origin: proto::ChangeOrigin,
    at: OffsetDateTime,
    old: Option<&Entry>,
    new: Option<&Entry>,
    from: Option<&Path>,
) -> proto::FileChange {
    proto::FileChange {
        path: path.to_string_lossy().into_owned(),
        change: kind,
        origin,
        at,
        old: old.map(Entry::to_wire),
        new: new.map(Entry::to_wire),
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
        let e = &out.manifest.entries;
        let a = &e[&root.join("sub/a")];
        assert_eq!(
            a.hash.map(hex::encode).as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert!(e[&root.join("big")].metadata_only && e[&root.join("big")].hash.is_none(), "above the cap");
        assert_eq!(e[&root.join("l")].target.as_deref(), Some(&b"/nowhere"[..]));
        assert!(!e.contains_key(&root.join("sub/cache")) && !e.contains_key(&root.join("sub/cache/x")));
        assert_eq!(e[&root].kind, proto::FileKind::Dir);
        assert_eq!(out.hashed_bytes, 3);

        // A routine rescan trusts unchanged metadata and reads nothing; a full one reads again.
        let again = run(&c, Some(&out.manifest), false);
        assert_eq!((again.hashed_bytes, again.manifest.entries.len()), (0, e.len()));
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
