//! rpm's database, read without rpm: `rpmdb.sqlite` (rpm 4.16 and newer: RHEL 9, Amazon Linux
//! 2023, Fedora, SUSE) holds one header blob per installed package, from which come its name, its
//! version, and each file's path and digest. RHEL 8's Berkeley DB database is not read (the agent
//! then attributes no change to an rpm package, and says so once in its log).
//!
//! A header blob, as rpm stores it: `il` and `dl` (big-endian u32), `il` index entries of 16 bytes
//! (tag, type, offset into the data, count, each big-endian), then `dl` bytes of data. Everything
//! in it is checked against those bounds: a damaged database yields fewer packages, never a panic.

use std::path::{Path, PathBuf};

use super::package::Digest;

/// What the agent needs of one installed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpmPackage {
    pub name: String,
    /// `[EPOCH:]VERSION-RELEASE`, as `rpm -q` prints it.
    pub version: String,
    /// Each regular file's path (as rpm records it, under the root) and digest; files without a
    /// digest (directories, links, ghosts) are left out.
    pub files: Vec<(PathBuf, Digest)>,
}

const NAME: u32 = 1000;
const VERSION: u32 = 1001;
const RELEASE: u32 = 1002;
const EPOCH: u32 = 1003;
const FILEDIGESTS: u32 = 1035;
const DIRINDEXES: u32 = 1116;
const BASENAMES: u32 = 1117;
const DIRNAMES: u32 = 1118;
const FILEDIGESTALGO: u32 = 5011;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;

/// `PGPHASHALGO_*`: what FILEDIGESTS holds (MD5 where the tag is absent: old packages).
const ALGO_MD5: u32 = 1;
const ALGO_SHA256: u32 = 8;

/// Why the database could not be read.
#[derive(Debug, thiserror::Error)]
#[error("rpm database {}: {message}", path.display())]
pub struct RpmDbError {
    pub path: PathBuf,
    pub message: String,
}

/// Every installed package in the database at `dir` (`/var/lib/rpm`, as the agent reads it);
/// `Ok(None)` where there is no sqlite database there.
pub fn read(dir: &Path) -> Result<Option<Vec<RpmPackage>>, RpmDbError> {
    let path = dir.join("rpmdb.sqlite");
    if !path.exists() {
        return Ok(None);
    }
    let err = |e: rusqlite::Error| RpmDbError { path: path.clone(), message: e.to_string() };
    // Read-only, never creating or changing anything of rpm's.
    let db = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    db.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
    let mut stmt = db.prepare("SELECT blob FROM Packages").map_err(err)?;
    let blobs = stmt.query_map([], |row| row.get::<_, Vec<u8>>(0)).map_err(err)?;
    let mut out = Vec::new();
    for blob in blobs {
        if let Some(p) = parse(&blob.map_err(err)?) {
            out.push(p);
        }
    }
    Ok(Some(out))
}

/// One header's index entry.
#[derive(Debug, Clone, Copy)]
struct Entry {
    tag: u32,
    kind: u32,
    offset: usize,
    count: usize,
}

struct Header<'a> {
    entries: Vec<Entry>,
    data: &'a [u8],
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

impl<'a> Header<'a> {
    fn parse(blob: &'a [u8]) -> Option<Header<'a>> {
        let il = usize::try_from(be32(blob, 0)?).ok()?;
        let dl = usize::try_from(be32(blob, 4)?).ok()?;
        let index_end = il.checked_mul(16)?.checked_add(8)?;
        let data = blob.get(index_end..index_end.checked_add(dl)?)?;
        let mut entries = Vec::with_capacity(il.min(4096));
        for i in 0..il {
            let at = 8 + i * 16;
            entries.push(Entry {
                tag: be32(blob, at)?,
                kind: be32(blob, at + 4)?,
                offset: usize::try_from(be32(blob, at + 8)?).ok()?,
                count: usize::try_from(be32(blob, at + 12)?).ok()?,
            });
        }
        Some(Header { entries, data })
    }

    fn entry(&self, tag: u32) -> Option<Entry> {
        self.entries.iter().copied().find(|e| e.tag == tag)
    }

    fn strings(&self, tag: u32) -> Option<Vec<&'a str>> {
        let e = self.entry(tag)?;
        if e.kind != TYPE_STRING && e.kind != TYPE_STRING_ARRAY {
            return None;
        }
        let mut rest = self.data.get(e.offset..)?;
        // No more strings than bytes: a count from a damaged header cannot make this allocate.
        let mut out = Vec::with_capacity(e.count.min(rest.len()));
        for _ in 0..e.count {
            let end = rest.iter().position(|&b| b == 0)?;
            out.push(std::str::from_utf8(&rest[..end]).ok()?);
            rest = &rest[end + 1..];
        }
        Some(out)
    }

    fn string(&self, tag: u32) -> Option<&'a str> {
        self.strings(tag)?.first().copied()
    }

    fn int32s(&self, tag: u32) -> Option<Vec<u32>> {
        let e = self.entry(tag)?;
        if e.kind != TYPE_INT32 {
            return None;
        }
        let bytes = self.data.get(e.offset..e.offset.checked_add(e.count.checked_mul(4)?)?)?;
        Some(bytes.chunks_exact(4).filter_map(|c| c.try_into().ok().map(u32::from_be_bytes)).collect())
    }
}

/// A package from its header blob; `None` for a header that does not hold together.
pub fn parse(blob: &[u8]) -> Option<RpmPackage> {
    let h = Header::parse(blob)?;
    let name = h.string(NAME)?.to_owned();
    let version = format!("{}-{}", h.string(VERSION)?, h.string(RELEASE)?);
    let version = match h.int32s(EPOCH).and_then(|e| e.first().copied()) {
        Some(epoch) if epoch != 0 => format!("{epoch}:{version}"),
        _ => version,
    };
    let algo = h.int32s(FILEDIGESTALGO).and_then(|a| a.first().copied()).unwrap_or(ALGO_MD5);
    let mut files = Vec::new();
    if let (Some(base), Some(dirs), Some(index), Some(digests)) =
        (h.strings(BASENAMES), h.strings(DIRNAMES), h.int32s(DIRINDEXES), h.strings(FILEDIGESTS))
    {
        for (i, b) in base.iter().enumerate() {
            let (Some(&d), Some(digest)) = (index.get(i), digests.get(i)) else { break };
            let Some(dir) = usize::try_from(d).ok().and_then(|d| dirs.get(d)) else { continue };
            let digest = match algo {
                ALGO_MD5 => Digest::md5_hex(digest),
                ALGO_SHA256 => Digest::sha256_hex(digest),
                _ => None,
            };
            if let Some(digest) = digest {
                files.push((PathBuf::from(format!("{dir}{b}")), digest));
            }
        }
    }
    Some(RpmPackage { name, version, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header blob with the given entries (tag, type, data, count).
    fn blob(entries: &[(u32, u32, Vec<u8>, u32)]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, kind, bytes, count) in entries {
            while *kind == TYPE_INT32 && data.len() % 4 != 0 {
                data.push(0);
            }
            index.extend(tag.to_be_bytes());
            index.extend(kind.to_be_bytes());
            index.extend((data.len() as u32).to_be_bytes());
            index.extend(count.to_be_bytes());
            data.extend(bytes);
        }
        let mut out = Vec::new();
        out.extend((entries.len() as u32).to_be_bytes());
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(index);
        out.extend(data);
        out
    }

    fn strs(s: &[&str]) -> Vec<u8> {
        s.iter().flat_map(|x| x.bytes().chain([0])).collect()
    }

    fn ints(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn a_header_gives_name_version_and_file_digests() {
        let sha = "a".repeat(64);
        let b = blob(&[
            (NAME, TYPE_STRING, strs(&["hwtest"]), 1),
            (VERSION, TYPE_STRING, strs(&["1.0"]), 1),
            (RELEASE, TYPE_STRING, strs(&["2.el9"]), 1),
            (EPOCH, TYPE_INT32, ints(&[3]), 1),
            (FILEDIGESTS, TYPE_STRING_ARRAY, strs(&[&sha, ""]), 2),
            (FILEDIGESTALGO, TYPE_INT32, ints(&[ALGO_SHA256]), 1),
            (DIRINDEXES, TYPE_INT32, ints(&[0, 1]), 2),
            (BASENAMES, TYPE_STRING_ARRAY, strs(&["tool", "doc"]), 2),
            (DIRNAMES, TYPE_STRING_ARRAY, strs(&["/opt/hwtest/bin/", "/usr/share/doc/hwtest/"]), 2),
        ]);
        let p = parse(&b).unwrap();
        assert_eq!(p.name, "hwtest");
        assert_eq!(p.version, "3:1.0-2.el9");
        // The second file has no digest (a directory or a ghost): left out.
        assert_eq!(p.files, vec![(PathBuf::from("/opt/hwtest/bin/tool"), Digest::sha256_hex(&sha).unwrap())]);
    }

    #[test]
    fn a_damaged_header_is_refused_without_panicking() {
        let good = blob(&[
            (NAME, TYPE_STRING, strs(&["x"]), 1),
            (VERSION, TYPE_STRING, strs(&["1"]), 1),
            (RELEASE, TYPE_STRING, strs(&["1"]), 1),
        ]);
        assert!(parse(&good).is_some());
        for cut in 0..good.len() {
            let _ = parse(&good[..cut]);
        }
        // Counts and offsets far beyond the data.
        let mut huge = good.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        huge[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse(&huge), None);
        let mut il = good;
        il[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse(&il), None);
    }
}
