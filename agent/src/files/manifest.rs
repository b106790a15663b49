//! The manifest: every watched path with its type, owner, mode, size, times, inode and hash, kept
//! in `STATE_DIR/files.manifest` so that a change made while the agent was down, or lost to an
//! event queue overflow, is found by comparing a scan with it (as `aide --check` compares with
//! its database).
//!
//! On disk: a header line, then one JSON object a line, sorted by path. A path that is not UTF-8
//! is written in hex (`x`), so that every path is kept exactly. Written to a temporary file and
//! renamed: a crash leaves the old manifest or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hostwatch_proto::v1 as proto;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::identity::{StateError, write_private_with};

/// Version of the file format; another version is not read (the agent builds a new manifest).
const FORMAT: u32 = 1;

/// One path as last seen. Times in nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A symlink's target.
    pub target: Option<Box<[u8]>>,
}

impl Entry {
    /// The entry of `meta` (from `symlink_metadata`), without hash or target.
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
            target: None,
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

    /// The wire's view of this entry.
    pub fn to_wire(&self) -> proto::FileState {
        proto::FileState {
            kind: self.kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            mtime: OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.mtime_ns))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            inode: self.inode,
            sha256: self.hash.map(hex::encode),
            metadata_only: self.metadata_only,
            target: self.target.as_deref().map(|t| String::from_utf8_lossy(t).into_owned()),
        }
    }
}

/// How `new` differs from `old` at one path, if it does. Content (or kind, or a link's target)
/// is a modification; mode, owner, group or mtime alone is a metadata change. ctime, link
/// count, and a directory's size and mtime say nothing of their own: a directory's mtime moves
/// when an entry comes or goes, and that entry is reported itself.
pub fn compare(old: Option<&Entry>, new: Option<&Entry>) -> Option<proto::FileChangeKind> {
    use proto::FileChangeKind as K;
    match (old, new) {
        (None, None) => None,
        (None, Some(_)) => Some(K::Created),
        (Some(_), None) => Some(K::Deleted),
        (Some(o), Some(n)) => {
            let content = o.kind != n.kind
                || o.target != n.target
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

/// A path as a manifest key: ordered by its bytes, which compare far faster than `Path`'s
/// component-wise order (a rescan of 130,000 paths looks each up twice), in a boxed slice (16
/// bytes, not a `PathBuf`'s 24). Everything below a directory `d` is contiguous from `d/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathKey(Box<[u8]>);

impl PathKey {
    pub fn as_path(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(&self.0))
    }
}

impl From<PathBuf> for PathKey {
    fn from(p: PathBuf) -> Self {
        PathKey(std::os::unix::ffi::OsStringExt::into_vec(p.into_os_string()).into_boxed_slice())
    }
}

impl From<&Path> for PathKey {
    fn from(p: &Path) -> Self {
        PathKey(key(p).into())
    }
}

impl std::borrow::Borrow<[u8]> for PathKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for PathKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_path().fmt(f)
    }
}

/// How a manifest looks a path up.
pub fn key(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Every watched path, by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: BTreeMap<PathKey, Entry>,
    /// The machine the manifest was made on: another one means it came with an image.
    pub machine_id: String,
    /// When it was last brought up to date by a whole scan.
    pub scanned_at: Option<OffsetDateTime>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    machine_id: String,
    #[serde(default, with = "hostwatch_proto::v1::timestamp::option")]
    scanned_at: Option<OffsetDateTime>,
    entries: u64,
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
        let mut entries = BTreeMap::new();
        for (n, line) in lines.enumerate() {
            let line = line.map_err(io)?;
            let l: Line = serde_json::from_str(&line).map_err(|e| damaged(n + 2, e.to_string()))?;
            let (path, entry) = l.into_entry().map_err(|p| damaged(n + 2, p))?;
            entries.insert(PathKey::from(path), entry);
        }
        if entries.len() as u64 != header.entries {
            return Err(damaged(
                1,
                format!("the header counts {} entries, the file holds {}", header.entries, entries.len()),
            ));
        }
        Ok(Some(Manifest { entries, machine_id: header.machine_id, scanned_at: header.scanned_at }))
    }

    /// Removes and returns the entries at `path` and below (contiguous from `path/`).
    pub fn take_under(&mut self, path: &Path) -> Manifest {
        let mut taken = BTreeMap::new();
        if let Some((k, v)) = self.entries.remove_entry(key(path)) {
            taken.insert(k, v);
        }
        let mut from = key(path).to_vec();
        if from.last() != Some(&b'/') {
            from.push(b'/');
        }
        // Everything from `path/` up to `path0` ('0' follows '/').
        let mut below = self.entries.split_off(&from[..]);
        let mut until = from;
        if let Some(last) = until.last_mut() {
            *last = b'0';
        }
        let mut after = below.split_off(&until[..]);
        self.entries.append(&mut after);
        taken.append(&mut below);
        Manifest { entries: taken, ..Manifest::default() }
    }

    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.entries.get(key(path))
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.entries.contains_key(key(path))
    }

    /// Writes the manifest to `path` (mode 0600), replacing what was there at once.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        write_private_with(path, |f| {
            let mut w = BufWriter::with_capacity(256 << 10, f);
            let header = Header {
                format: FORMAT,
                machine_id: self.machine_id.clone(),
                scanned_at: self.scanned_at,
                entries: self.entries.len() as u64,
            };
            serde_json::to_writer(&mut w, &header).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
            for (p, e) in &self.entries {
                serde_json::to_writer(&mut w, &Line::of(p.as_path(), e)).map_err(std::io::Error::other)?;
                w.write_all(b"\n")?;
            }
            w.flush()
        })
    }
}

impl Line {
    fn of(path: &Path, e: &Entry) -> Line {
        let (p, x) = match path.to_str() {
            Some(s) => (Some(s.to_owned()), None),
            None => (None, Some(hex::encode(path.as_os_str().as_bytes()))),
        };
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
            l: e.target.as_deref().map(hex::encode),
        }
    }

    fn into_entry(self) -> Result<(PathBuf, Entry), String> {
        let path = match (self.p, self.x) {
            (Some(p), None) => PathBuf::from(p),
            (None, Some(x)) => {
                let bytes = hex::decode(&x).map_err(|e| format!("path {x:?}: {e}"))?;
                PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes))
            }
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
            Some(l) => {
                Some(hex::decode(&l).map_err(|e| format!("link target {l:?}: {e}"))?.into_boxed_slice())
            }
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
                target,
            },
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
            target: None,
        }
    }

    #[test]
    fn what_each_difference_is() {
        let a = file(10, 1);
        assert_eq!(compare(None, Some(&a)), Some(K::Created));
        assert_eq!(compare(Some(&a), None), Some(K::Deleted));
        assert_eq!(compare(Some(&a), Some(&a)), None);
        assert_eq!(compare(Some(&a), Some(&file(10, 2))), Some(K::Modified), "same size, other content");
        let chmod = Entry { mode: 0o4755, ..a.clone() };
        assert_eq!(compare(Some(&a), Some(&chmod)), Some(K::Metadata));
        let touched = Entry { mtime_ns: 5, ctime_ns: 9, ..a.clone() };
        assert_eq!(compare(Some(&a), Some(&touched)), Some(K::Metadata), "mtime alone");
        let ctime_only = Entry { ctime_ns: 9, ..a.clone() };
        assert_eq!(compare(Some(&a), Some(&ctime_only)), None, "a new link count moves ctime only");
        let link = |t: &[u8]| Entry {
            kind: proto::FileKind::Symlink,
            hash: None,
            target: Some(t.into()),
            ..a.clone()
        };
        assert_eq!(compare(Some(&link(b"/a")), Some(&link(b"/b"))), Some(K::Modified), "retargeted");
        let dir = Entry { kind: proto::FileKind::Dir, hash: None, size: 0, ..a.clone() };
        let dir_touched = Entry { mtime_ns: 9, ..dir.clone() };
        assert_eq!(
            compare(Some(&dir), Some(&dir_touched)),
            None,
            "an entry came or went; it speaks for itself"
        );
        let dir_chowned = Entry { uid: 1000, ..dir.clone() };
        assert_eq!(compare(Some(&dir), Some(&dir_chowned)), Some(K::Metadata));
        let big = Entry { hash: None, metadata_only: true, ..a.clone() };
        let big_touched = Entry { mtime_ns: 2_000, ..big.clone() };
        assert_eq!(
            compare(Some(&big), Some(&big_touched)),
            Some(K::Modified),
            "unhashed: mtime stands for content"
        );
    }

    #[test]
    fn take_under_takes_a_directory_and_what_is_below_it_only() {
        let mut m = Manifest::default();
        for p in ["/a", "/a-b", "/a.c", "/a/x", "/a/y/z", "/a0", "/ab", "/b"] {
            m.entries.insert(PathBuf::from(p).into(), file(1, 1));
        }
        let taken = m.take_under(Path::new("/a"));
        let names =
            |m: &Manifest| m.entries.keys().map(|k| k.as_path().display().to_string()).collect::<Vec<_>>();
        assert_eq!(names(&taken), ["/a", "/a/x", "/a/y/z"]);
        assert_eq!(names(&m), ["/a-b", "/a.c", "/a0", "/ab", "/b"]);
        assert_eq!(names(&m.take_under(Path::new("/"))).len(), 5, "the root takes everything");
    }

    #[test]
    fn round_trip_with_a_path_that_is_not_utf8() {
        let d = tempfile::tempdir().unwrap();
        let mut m = Manifest {
            machine_id: "m1".into(),
            scanned_at: Some(OffsetDateTime::UNIX_EPOCH),
            ..Default::default()
        };
        m.entries.insert(PathBuf::from("/etc/passwd").into(), file(10, 3));
        let odd = PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
            b"/etc/\xff\nodd".to_vec(),
        ));
        let link = Entry {
            kind: proto::FileKind::Symlink,
            hash: None,
            target: Some(b"/x\xfe".to_vec().into()),
            ..file(3, 0)
        };
        m.entries.insert(odd.clone().into(), link);
        let path = d.path().join("files.manifest");
        m.save(&path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), Some(m.clone()));
        assert_eq!(Manifest::load(&d.path().join("none")).unwrap(), None);
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
    }
}
