//! The manifest: every watched path with its type, owner, mode, size, times, inode and hash, kept
//! in `STATE_DIR/files.manifest` so that a change made while the agent was down, or lost to an
//! event queue overflow, is found by comparing a scan with it (as `aide --check` compares with
//! its database).
//!
//! In memory it is built for 100,000s of paths: their bytes (and links' targets) back to back in
//! one arena, and a vector of fixed-size slots sorted by path that point into it; no allocation
//! per path and no tree nodes half full. Lookups are binary searches; everything below a
//! directory `d` is contiguous from `d/`. Invariant: `slots` is sorted by path bytes, each path
//! once. A scan builds one through [`Builder`] (in the order it finds paths) and sorts once.
//!
//! On disk: a header line, then one JSON object a line, sorted by path. A path that is not UTF-8
//! is written in hex (`x`), so that every path is kept exactly. Written to a temporary file and
//! renamed: a crash leaves the old manifest or the new one, never half of one.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hostwatch_proto::v1 as proto;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::shared::private_file::{StateError, write_private_with};

/// Version of the file format; another version is not read (the agent builds a new manifest).
const FORMAT: u32 = 1;

/// One path as last seen, without its path or a link's target (which the manifest keeps in its
/// arena). Times in nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: proto::FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub dev: u64,
    pub inode: u64,
    /// SHA-256 of a regular file's content; `None` for other kinds, for a file above the size cap
    /// (`metadata_only`), and for one not hashed yet.
    pub hash: Option<[u8; 32]>,
    pub metadata_only: bool,
}

impl Entry {
    /// The entry of `meta` (from `symlink_metadata`), without hash.
    pub fn of(meta: &std::fs::Metadata) -> Entry {
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            proto::FileKind::File
        } else if ft.is_dir() {
            proto::FileKind::Dir
        } else if ft.is_symlink() {
            proto::FileKind::Symlink
        } else {
            proto::FileKind::Other
        };
        Entry {
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: if kind == proto::FileKind::Dir { 0 } else { meta.size() },
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec()),
            dev: meta.dev(),
            inode: meta.ino(),
            hash: None,
            metadata_only: false,
        }
    }

    /// Whether a file's content can be taken as unchanged from its metadata: same inode, size,
    /// mtime and ctime (a write moves mtime and ctime, and resetting mtime moves ctime).
    pub fn same_content_metadata(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.dev == other.dev
            && self.inode == other.inode
            && self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
    }
}

/// An entry as a manifest lends it: with its path and, for a link, its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    pub path: &'a [u8],
    pub entry: &'a Entry,
    pub target: Option<&'a [u8]>,
}

impl Item<'_> {
    pub fn path(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(self.path))
    }

    /// The wire's view of this entry.
    pub fn to_wire(&self) -> proto::FileState {
        let e = self.entry;
        proto::FileState {
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            mtime: OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.mtime_ns))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            inode: e.inode,
            sha256: e.hash.map(hex::encode),
            metadata_only: e.metadata_only,
            target: self.target.map(|t| String::from_utf8_lossy(t).into_owned()),
        }
    }
}

/// How `new` differs from `old` at one path, if it does. Content (or kind, or a link's target)
/// is a modification; mode, owner, group or mtime alone is a metadata change. ctime, link
/// count, and a directory's size and mtime say nothing of their own: a directory's mtime moves
/// when an entry comes or goes, and that entry is reported itself.
pub fn compare(old: Option<Item<'_>>, new: Option<Item<'_>>) -> Option<proto::FileChangeKind> {
    use proto::FileChangeKind as K;
    match (old, new) {
        (None, None) => None,
        (None, Some(_)) => Some(K::Created),
        (Some(_), None) => Some(K::Deleted),
        (Some(oi), Some(ni)) => {
            let (o, n) = (oi.entry, ni.entry);
            let content = o.kind != n.kind
                || oi.target != ni.target
                || (o.kind == proto::FileKind::File
                    && (o.size != n.size
                        || o.hash != n.hash
                        || (n.metadata_only || o.metadata_only) && o.mtime_ns != n.mtime_ns));
            if content {
                Some(K::Modified)
            } else if (o.mode, o.uid, o.gid) != (n.mode, n.uid, n.gid)
                || (n.kind != proto::FileKind::Dir && o.mtime_ns != n.mtime_ns)
            {
                Some(K::Metadata)
            } else {
                None
            }
        }
    }
}

/// How a manifest looks a path up: by its bytes, which compare far faster than `Path`'s
/// component-wise order (a rescan of 130,000 paths looks each up twice).
pub fn key(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// One entry: where its path (and then its target) lie in the arena.
#[derive(Debug, Clone, Copy)]
struct Slot {
    entry: Entry,
    at: usize,
    path_len: u32,
    target_len: u32,
}

/// Every watched path, sorted by path.
#[derive(Clone, Default)]
pub struct Manifest {
    /// Paths and targets, back to back; bytes no slot points to any more are `garbage`.
    bytes: Vec<u8>,
    slots: Vec<Slot>,
    garbage: usize,
    /// The machine the manifest was made on.
    pub machine_id: String,
    /// When it was last brought up to date by a whole scan.
    pub scanned_at: Option<OffsetDateTime>,
    /// The golden manifest of an image, recorded by `hostwatch-agent bake`: the first scan on an
    /// instance booted from it rehashes every file and reports what differs as `bake`, then
    /// saves the manifest unmarked. Only this mark says "image": a manifest from another
    /// machine without it is a cloned disk, not a bake.
    pub baked: bool,
}

impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        self.machine_id == other.machine_id
            && self.scanned_at == other.scanned_at
            && self.baked == other.baked
            && self.iter().eq(other.iter())
    }
}

impl Eq for Manifest {}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("entries", &self.slots.len())
            .field("machine_id", &self.machine_id)
            .field("scanned_at", &self.scanned_at)
            .field("baked", &self.baked)
            .finish()
    }
}

impl Manifest {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn path_of(&self, s: &Slot) -> &[u8] {
        &self.bytes[s.at..s.at + s.path_len as usize]
    }

    fn item<'a>(&'a self, s: &'a Slot) -> Item<'a> {
        let path_end = s.at + s.path_len as usize;
        let target = (s.target_len > 0).then(|| &self.bytes[path_end..path_end + s.target_len as usize]);
        Item { path: &self.bytes[s.at..path_end], entry: &s.entry, target }
    }

    /// Every entry, in path order.
    pub fn iter(&self) -> impl Iterator<Item = Item<'_>> + '_ {
        self.slots.iter().map(|s| self.item(s))
    }

    /// Where `key` is, or where it would go.
    fn find(&self, key: &[u8]) -> Result<usize, usize> {
        self.slots.binary_search_by(|s| self.path_of(s).cmp(key))
    }

    pub fn get(&self, path: &Path) -> Option<Item<'_>> {
        self.get_key(key(path))
    }

    pub fn get_key(&self, key: &[u8]) -> Option<Item<'_>> {
        self.find(key).ok().map(|i| self.item(&self.slots[i]))
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.find(key(path)).is_ok()
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.find(key).is_ok()
    }

    /// A slot for `path` and `target`, their bytes added to the arena; `None` if a length does
    /// not fit (no path or link target the kernel gives is near 4 GiB).
    fn slot(&mut self, path: &[u8], entry: Entry, target: Option<&[u8]>) -> Option<Slot> {
        let target = target.unwrap_or_default();
        let path_len = u32::try_from(path.len()).ok()?;
        let target_len = u32::try_from(target.len()).ok()?;
        let at = self.bytes.len();
        self.bytes.extend_from_slice(path);
        self.bytes.extend_from_slice(target);
        Some(Slot { entry, at, path_len, target_len })
    }

    /// Adds or replaces the entry at `path`, in order.
    pub fn insert(&mut self, path: &[u8], entry: Entry, target: Option<&[u8]>) {
        let Some(slot) = self.slot(path, entry, target) else { return };
        match self.find(path) {
            Ok(i) => {
                self.garbage += (self.slots[i].path_len + self.slots[i].target_len) as usize;
                self.slots[i] = slot;
            }
            Err(i) => self.slots.insert(i, slot),
        }
    }

    /// Removes and returns the entries at `path` and below (contiguous from `path/`).
    pub fn take_under(&mut self, path: &Path) -> Manifest {
        let exact = key(path);
        let mut from = exact.to_vec();
        if from.last() != Some(&b'/') {
            from.push(b'/');
        }
        // Everything from `path/` up to `path0` ('0' follows '/'); the path itself comes before
        // `path/`, maybe with siblings such as `path-x` between.
        let mut until = from.clone();
        if let Some(last) = until.last_mut() {
            *last = b'0';
        }
        let lo = self.slots.partition_point(|s| self.path_of(s) < &from[..]);
        let hi = self.slots.partition_point(|s| self.path_of(s) < &until[..]);
        let exact_at = self.find(exact).ok().filter(|&i| i < lo);
        let mut taken = Manifest::default();
        for i in exact_at.into_iter().chain(lo..hi) {
            taken.push_slot_of(self, i);
        }
        self.forget(lo..hi);
        if let Some(i) = exact_at {
            self.forget(i..i + 1);
        }
        self.compact_if_wasteful();
        taken
    }

    /// Copies slot `i` of `other` here, at the end (the caller keeps the order).
    fn push_slot_of(&mut self, other: &Manifest, i: usize) {
        let s = other.slots[i];
        let it = other.item(&s);
        if let Some(slot) = self.slot(it.path, s.entry, it.target) {
            self.slots.push(slot);
        }
    }

    fn forget(&mut self, range: std::ops::Range<usize>) {
        for s in self.slots.drain(range) {
            self.garbage += (s.path_len + s.target_len) as usize;
        }
    }

    /// Rewrites the arena once more than half of it is garbage: memory stays within twice what
    /// the entries need, at a cost spread over the removals that made the garbage.
    fn compact_if_wasteful(&mut self) {
        if self.garbage < 64 << 10 || self.garbage * 2 < self.bytes.len() {
            return;
        }
        let mut bytes = Vec::with_capacity(self.bytes.len() - self.garbage);
        for s in &mut self.slots {
            let len = (s.path_len + s.target_len) as usize;
            let at = bytes.len();
            bytes.extend_from_slice(&self.bytes[s.at..s.at + len]);
            s.at = at;
        }
        self.bytes = bytes;
        self.garbage = 0;
    }

    /// Takes in every entry of `other`; where both hold a path, `other`'s wins.
    pub fn merge(&mut self, other: Manifest) {
        if other.slots.len() <= 8 {
            // A live change or two: in place.
            for it in other.iter() {
                self.insert(it.path, *it.entry, it.target);
            }
            return;
        }
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.garbage += other.garbage;
        let mine = std::mem::take(&mut self.slots);
        let mut merged = Vec::with_capacity(mine.len() + other.slots.len());
        let theirs = other.slots.iter().map(|s| Slot { at: s.at + base, ..*s });
        let (mut a, mut b) = (mine.into_iter().peekable(), theirs.peekable());
        loop {
            let take_a = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(x), Some(y)) => match self.path_of(x).cmp(self.path_of(y)) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
                        self.garbage += (x.path_len + x.target_len) as usize;
                        a.next();
                        false
                    }
                },
            };
            let next = if take_a { a.next() } else { b.next() };
            merged.extend(next);
        }
        self.slots = merged;
        self.compact_if_wasteful();
    }
}

/// A manifest being built by a scan: entries in the order found, looked up by the index
/// [`Builder::push`] gave, sorted once in [`Builder::build`].
#[derive(Default)]
pub struct Builder {
    m: Manifest,
    removed: Vec<usize>,
}

impl Builder {
    /// Adds an entry; its index, or `None` if it cannot be kept (see [`Manifest::slot`]).
    pub fn push(&mut self, path: &[u8], entry: Entry, target: Option<&[u8]>) -> Option<usize> {
        let slot = self.m.slot(path, entry, target)?;
        self.m.slots.push(slot);
        Some(self.m.slots.len() - 1)
    }

    pub fn path(&self, i: usize) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(self.m.path_of(&self.m.slots[i])))
    }

    pub fn set(&mut self, i: usize, entry: Entry) {
        self.m.slots[i].entry = entry;
    }

    /// Drops the entry at `i` (indexes stay valid until `build`).
    pub fn remove(&mut self, i: usize) {
        self.removed.push(i);
    }

    /// The manifest, sorted; of a path pushed twice (roots that overlap), the later entry.
    pub fn build(self) -> Manifest {
        let Builder { mut m, mut removed } = self;
        removed.sort_unstable();
        removed.dedup();
        for &i in removed.iter().rev() {
            let s = m.slots.swap_remove(i);
            m.garbage += (s.path_len + s.target_len) as usize;
        }
        let Manifest { bytes, slots, garbage, .. } = &mut m;
        let path = |s: &Slot| &bytes[s.at..s.at + s.path_len as usize];
        // In place; by arena offset within a path, which is the order pushed: the later first.
        slots.sort_unstable_by(|a, b| path(a).cmp(path(b)).then(b.at.cmp(&a.at)));
        slots.dedup_by(|dup, kept| {
            let same = path(dup) == path(kept);
            if same {
                *garbage += (dup.path_len + dup.target_len) as usize;
            }
            same
        });
        m.compact_if_wasteful();
        m
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    machine_id: String,
    #[serde(default, with = "hostwatch_proto::v1::timestamp::option")]
    scanned_at: Option<OffsetDateTime>,
    entries: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    baked: bool,
}

/// One entry on disk; short names, since a manifest holds 100,000 of them.
#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    k: proto::FileKind,
    m: u32,
    u: u32,
    g: u32,
    s: u64,
    t: i64,
    c: i64,
    d: u64,
    i: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    h: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    mo: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<String>,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {problem}", path.display())]
    Damaged { path: PathBuf, line: usize, problem: String },
}

impl Manifest {
    /// Reads the manifest at `path`; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Manifest>, ManifestError> {
        let io = |source| ManifestError::Io { path: path.to_owned(), source };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let damaged =
            |line: usize, problem: String| ManifestError::Damaged { path: path.to_owned(), line, problem };
        let mut lines = BufReader::new(file).lines();
        let header: Header = match lines.next() {
            Some(l) => serde_json::from_str(&l.map_err(io)?).map_err(|e| damaged(1, e.to_string()))?,
            None => return Err(damaged(1, "empty".to_owned())),
        };
        if header.format != FORMAT {
            return Err(damaged(1, format!("format {} is not {FORMAT}", header.format)));
        }
        let mut m = Manifest {
            machine_id: header.machine_id,
            scanned_at: header.scanned_at,
            baked: header.baked,
            ..Manifest::default()
        };
        for (n, line) in lines.enumerate() {
            let line = line.map_err(io)?;
            let l: Line = serde_json::from_str(&line).map_err(|e| damaged(n + 2, e.to_string()))?;
            let (path, entry, target) = l.into_entry().map_err(|p| damaged(n + 2, p))?;
            // Written in order, so read in order: each path after the one before.
            if let Some(last) = m.slots.last()
                && m.path_of(last) >= &path[..]
            {
                return Err(damaged(n + 2, "not in path order (or a path twice)".to_owned()));
            }
            match m.slot(&path, entry, target.as_deref()) {
                Some(slot) => m.slots.push(slot),
                None => return Err(damaged(n + 2, "path or link target too long".to_owned())),
            }
        }
        if m.slots.len() as u64 != header.entries {
            return Err(damaged(
                1,
                format!("the header counts {} entries, the file holds {}", header.entries, m.slots.len()),
            ));
        }
        Ok(Some(m))
    }

    /// Writes the manifest to `path` (mode 0600), replacing what was there at once.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        write_private_with(path, |f| {
            let mut w = BufWriter::with_capacity(256 << 10, f);
            let header = Header {
                format: FORMAT,
                machine_id: self.machine_id.clone(),
                scanned_at: self.scanned_at,
                entries: self.slots.len() as u64,
                baked: self.baked,
            };
            serde_json::to_writer(&mut w, &header).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
            for item in self.iter() {
                serde_json::to_writer(&mut w, &Line::of(item)).map_err(std::io::Error::other)?;
                w.write_all(b"\n")?;
            }
            w.flush()
        })
    }
}

/// A line read back: path, entry, link target.
type Parsed = (Vec<u8>, Entry, Option<Vec<u8>>);

impl Line {
    fn of(item: Item<'_>) -> Line {
        let (p, x) = match std::str::from_utf8(item.path) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(hex::encode(item.path))),
        };
        let e = item.entry;
        Line {
            p,
            x,
            k: e.kind,
            m: e.mode,
            u: e.uid,
            g: e.gid,
            s: e.size,
            t: e.mtime_ns,
            c: e.ctime_ns,
            d: e.dev,
            i: e.inode,
            h: e.hash.map(hex::encode),
            mo: e.metadata_only,
            l: item.target.map(hex::encode),
        }
    }

    /// The path, the entry and a link's target of one line.
    fn into_entry(self) -> Result<Parsed, String> {
        let path = match (self.p, self.x) {
            (Some(p), None) => p.into_bytes(),
            (None, Some(x)) => hex::decode(&x).map_err(|e| format!("path {x:?}: {e}"))?,
            _ => return Err("an entry needs exactly one of p and x".to_owned()),
        };
        let hash = match self.h {
            Some(h) => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(&h, &mut out).map_err(|e| format!("hash {h:?}: {e}"))?;
                Some(out)
            }
            None => None,
        };
        let target = match self.l {
            Some(l) => Some(hex::decode(&l).map_err(|e| format!("link target {l:?}: {e}"))?),
            None => None,
        };
        Ok((
            path,
            Entry {
                kind: self.k,
                mode: self.m,
                uid: self.u,
                gid: self.g,
                size: self.s,
                mtime_ns: self.t,
                ctime_ns: self.c,
                dev: self.d,
                inode: self.i,
                hash,
                metadata_only: self.mo,
            },
            target,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::FileChangeKind as K;

    fn file(size: u64, hash: u8) -> Entry {
        Entry {
            kind: proto::FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime_ns: 1_000,
            ctime_ns: 1_000,
            dev: 1,
            inode: 7,
            hash: Some([hash; 32]),
            metadata_only: false,
        }
    }

    fn it(e: &Entry) -> Option<Item<'_>> {
        Some(Item { path: b"/p", entry: e, target: None })
    }

    #[test]
    fn what_each_difference_is() {
        let a = file(10, 1);
        let cmp = |x: &Entry, y: &Entry| compare(it(x), it(y));
        assert_eq!(compare(None, it(&a)), Some(K::Created));
        assert_eq!(compare(it(&a), None), Some(K::Deleted));
        assert_eq!(cmp(&a, &a), None);
        assert_eq!(cmp(&a, &file(10, 2)), Some(K::Modified), "same size, other content");
        assert_eq!(cmp(&a, &Entry { mode: 0o4755, ..a }), Some(K::Metadata));
        assert_eq!(cmp(&a, &Entry { mtime_ns: 5, ctime_ns: 9, ..a }), Some(K::Metadata), "mtime alone");
        assert_eq!(cmp(&a, &Entry { ctime_ns: 9, ..a }), None, "a new link count moves ctime only");
        let link = Entry { kind: proto::FileKind::Symlink, hash: None, ..a };
        let to = |t: &'static [u8]| Some(Item { path: b"/l", entry: &link, target: Some(t) });
        assert_eq!(compare(to(b"/a"), to(b"/b")), Some(K::Modified), "retargeted");
        assert_eq!(compare(to(b"/a"), to(b"/a")), None);
        let dir = Entry { kind: proto::FileKind::Dir, hash: None, size: 0, ..a };
        assert_eq!(
            cmp(&dir, &Entry { mtime_ns: 9, ..dir }),
            None,
            "an entry came or went; it speaks for itself"
        );
        assert_eq!(cmp(&dir, &Entry { uid: 1000, ..dir }), Some(K::Metadata));
        let big = Entry { hash: None, metadata_only: true, ..a };
        assert_eq!(
            cmp(&big, &Entry { mtime_ns: 2_000, ..big }),
            Some(K::Modified),
            "unhashed: mtime stands for content"
        );
    }

    fn names(m: &Manifest) -> Vec<String> {
        m.iter().map(|i| i.path().display().to_string()).collect()
    }

    fn of(paths: &[&str]) -> Manifest {
        let mut m = Manifest::default();
        for (n, p) in paths.iter().enumerate() {
            m.insert(p.as_bytes(), file(n as u64, 1), None);
        }
        m
    }

    #[test]
    fn take_under_takes_a_directory_and_what_is_below_it_only() {
        let mut m = of(&["/b", "/a/y/z", "/a", "/a-b", "/a.c", "/a/x", "/a0", "/ab"]);
        assert_eq!(names(&m), ["/a", "/a-b", "/a.c", "/a/x", "/a/y/z", "/a0", "/ab", "/b"], "in order");
        let taken = m.take_under(Path::new("/a"));
        assert_eq!(names(&taken), ["/a", "/a/x", "/a/y/z"]);
        assert_eq!(names(&m), ["/a-b", "/a.c", "/a0", "/ab", "/b"]);
        assert_eq!(taken.get(Path::new("/a/x")).map(|i| i.entry.size), Some(5), "entries go with paths");
        assert!(m.get(Path::new("/a/x")).is_none() && m.contains(Path::new("/a0")));
        assert_eq!(names(&m.take_under(Path::new("/"))).len(), 5, "the root takes everything");
        assert!(m.is_empty());
    }

    #[test]
    fn merges_small_and_large_keep_order_and_the_newer_entry() {
        for extra in [3usize, 40] {
            let mut m = of(&["/a", "/c", "/e"]);
            let mut other = Manifest::default();
            for i in 0..extra {
                other.insert(format!("/d/{i:03}").as_bytes(), file(100, 2), Some(b"t"));
            }
            other.insert(b"/c", file(7, 3), None);
            m.merge(other);
            let n = names(&m);
            assert_eq!(n.len(), 3 + extra, "{n:?}");
            assert!(n.windows(2).all(|w| w[0] < w[1]), "sorted and unique: {n:?}");
            let c = m.get(Path::new("/c")).unwrap();
            assert_eq!((c.entry.size, c.target), (7, None), "the merged-in entry wins");
            assert_eq!(m.get(Path::new("/d/001")).unwrap().target, Some(&b"t"[..]));
        }
    }

    #[test]
    fn removals_are_compacted_away() {
        let mut m = Manifest::default();
        for i in 0..5_000 {
            m.insert(format!("/tree/{i:05}/a-fairly-long-name-for-a-file").as_bytes(), file(1, 1), None);
        }
        let full = m.bytes.len();
        for i in 0..4_000 {
            assert_eq!(m.take_under(Path::new(&format!("/tree/{i:05}"))).len(), 1);
        }
        assert_eq!(m.len(), 1_000);
        assert!(m.bytes.len() <= full / 2, "{} of {full} bytes kept", m.bytes.len());
        let first = m.iter().next().unwrap();
        assert_eq!(first.path(), Path::new("/tree/04000/a-fairly-long-name-for-a-file"));
    }

    #[test]
    fn a_builder_sorts_drops_what_was_removed_and_keeps_the_later_duplicate() {
        let mut b = Builder::default();
        let z = b.push(b"/z", file(1, 1), None).unwrap();
        let gone = b.push(b"/gone", file(2, 1), None).unwrap();
        b.push(b"/a", file(3, 1), Some(b"/target")).unwrap();
        b.push(b"/z", file(4, 1), None).unwrap();
        assert_eq!(b.path(gone), Path::new("/gone"));
        b.set(z, file(5, 1));
        b.remove(gone);
        let m = b.build();
        assert_eq!(names(&m), ["/a", "/z"]);
        assert_eq!(m.get(Path::new("/z")).unwrap().entry.size, 4, "the later push");
        assert_eq!(m.get(Path::new("/a")).unwrap().target, Some(&b"/target"[..]));
    }

    #[test]
    fn round_trip_with_a_path_that_is_not_utf8() {
        let d = tempfile::tempdir().unwrap();
        let mut m = Manifest {
            machine_id: "m1".into(),
            scanned_at: Some(OffsetDateTime::UNIX_EPOCH),
            ..Default::default()
        };
        m.insert(b"/etc/passwd", file(10, 3), None);
        let link = Entry { kind: proto::FileKind::Symlink, hash: None, ..file(3, 0) };
        m.insert(b"/etc/\xff\nodd", link, Some(b"/x\xfe"));
        let path = d.path().join("files.manifest");
        m.save(&path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), Some(m.clone()));
        assert_eq!(Manifest::load(&d.path().join("none")).unwrap(), None);
        // An image's mark survives the trip; an instance's manifest does not carry the key.
        let baked = Manifest { baked: true, ..m.clone() };
        baked.save(&d.path().join("golden")).unwrap();
        assert!(Manifest::load(&d.path().join("golden")).unwrap().unwrap().baked);
        assert!(!std::fs::read_to_string(&path).unwrap().lines().next().unwrap().contains("baked"));
        // A damaged file says where.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"k\":\"file\"", "\"k\":\"nonsense\"", 1)).unwrap();
        let e = Manifest::load(&path).unwrap_err().to_string();
        assert!(e.contains("files.manifest:2:"), "{e}");
        // So does a cut one.
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
        let e = Manifest::load(&path).unwrap_err().to_string();
        assert!(e.contains("counts 2 entries, the file holds 1"), "{e}");
        // And one out of order.
        std::fs::write(&path, format!("{}\n{}\n{}\n", lines[0], lines[2], lines[1])).unwrap();
        let e = Manifest::load(&path).unwrap_err().to_string();
        assert!(e.contains("files.manifest:3: not in path order"), "{e}");
    }
}
