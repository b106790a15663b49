//! Package awareness: which installed package owns a changed path, and whether the file's content
//! is what the package installed, so that patch day is told apart from tampering. Two databases
//! are read, whichever the host has: dpkg's (`info/*.md5sums`, `status`) and rpm's
//! (`rpmdb.sqlite`, in `rpmdb.rs`).
//!
//! The index holds only the paths under watched roots, and is read again when the database
//! changes (every install and removal writes it). The index from before is kept one generation, so
//! a file deleted by the removal of its package is still put down to that package.
//!
//! `matches` is about content only: neither database is asked about modes or owners, so a change
//! of mode or owner (a setuid bit added) is never taken as the package's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hostwatch_proto::v1 as proto;
use md5::Md5;
use sha2::Sha256;

/// A file's content as its package database records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    /// dpkg's md5sums, and rpm packages from before SHA-256.
    Md5([u8; 16]),
    /// rpm's usual digest.
    Sha256([u8; 32]),
}

impl Digest {
    pub fn md5_hex(hex_digest: &str) -> Option<Digest> {
        let mut d = [0u8; 16];
        hex::decode_to_slice(hex_digest, &mut d).ok().map(|()| Digest::Md5(d))
    }

    pub fn sha256_hex(hex_digest: &str) -> Option<Digest> {
        let mut d = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut d).ok().map(|()| Digest::Sha256(d))
    }

    /// Whether the file at `real` has this content; `sha256` is its digest where the agent has
    /// just taken it (then the file is not read again).
    fn matches(&self, real: &Path, sha256: Option<&str>) -> bool {
        match self {
            Digest::Md5(d) => digest_of::<Md5>(real).is_ok_and(|m| m[..] == d[..]),
            Digest::Sha256(d) => match sha256 {
                Some(h) => h.eq_ignore_ascii_case(&hex::encode(d)),
                None => digest_of::<Sha256>(real).is_ok_and(|m| m[..] == d[..]),
            },
        }
    }
}

/// Owners of watched paths, by path: the package's index in `packages` and the recorded digest.
type Owners = HashMap<PathBuf, (usize, Digest)>;

#[derive(Debug, Default)]
struct Index {
    owners: Owners,
    /// (name, version) of each package.
    packages: Vec<(String, Option<String>)>,
}

impl Index {
    fn add(
        &mut self,
        ids: &mut HashMap<String, usize>,
        name: &str,
        version: Option<String>,
        path: PathBuf,
        d: Digest,
    ) {
        let id = *ids.entry(name.to_owned()).or_insert_with(|| {
            self.packages.push((name.to_owned(), version));
            self.packages.len() - 1
        });
        self.owners.insert(path, (id, d));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dpkg,
    Rpm,
}

/// One package database and what was last read of it.
#[derive(Debug)]
struct Db {
    kind: Kind,
    /// The database's directory (`/var/lib/dpkg`, `/var/lib/rpm`) as the agent reads it; the
    /// files it lists are under the root three levels up.
    dir: PathBuf,
    /// That root as the host sees it.
    root: PathBuf,
    /// The database's modification time when the index was read.
    read_at: Option<SystemTime>,
    now: Index,
    before: Index,
    /// A read failed and was logged (once, not at every change).
    warned: bool,
}

impl Db {
    fn new(kind: Kind, dir: PathBuf, host_root: &Path) -> Db {
        let root = dir.ancestors().nth(3).map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        // Paths the index holds are host paths: strip the agent's view of the host's root.
        let root = match root.strip_prefix(host_root) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => root,
        };
        Db { kind, dir, root, read_at: None, now: Index::default(), before: Index::default(), warned: false }
    }

    /// When the database last changed; `None` where there is none.
    fn stamp(&self) -> Option<SystemTime> {
        let mtime = |f: &str| std::fs::metadata(self.dir.join(f)).and_then(|m| m.modified()).ok();
        match self.kind {
            Kind::Dpkg => mtime("status"),
            // rpm may write through sqlite's write-ahead log; `Packages` is the Berkeley DB of
            // older rpm, looked at only to say once that it is not read.
            Kind::Rpm => mtime("rpmdb.sqlite").max(mtime("rpmdb.sqlite-wal")).or_else(|| mtime("Packages")),
        }
    }

    /// Whether the package manager holds its lock: the files it wrote are not all recorded yet.
    fn busy(&self) -> bool {
        let lock = match self.kind {
            Kind::Dpkg => "lock",
            Kind::Rpm => ".rpm.lock",
        };
        let Ok(f) = std::fs::File::open(self.dir.join(lock)) else { return false };
        let mut lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETLK(&mut lock)).is_ok()
            && lock.l_type != libc::F_UNLCK as libc::c_short
    }

    /// Reads the index again if the database changed since it was read.
    fn refresh(&mut self, watched: &dyn Fn(&Path) -> bool) {
        let stamp = self.stamp();
        if stamp.is_none() || stamp == self.read_at {
            return;
        }
        let index = match self.kind {
            Kind::Dpkg => self.read_dpkg(watched),
            Kind::Rpm => self.read_rpm(watched),
        };
        let Some(index) = index else { return };
        tracing::debug!(db = ?self.kind, paths = index.owners.len(), packages = index.packages.len(), "package index read");
        self.before = std::mem::replace(&mut self.now, index);
        self.read_at = stamp;
    }

    fn read_dpkg(&self, watched: &dyn Fn(&Path) -> bool) -> Option<Index> {
        let versions = read_status(&self.dir.join("status"));
        let mut index = Index::default();
        let mut ids = HashMap::new();
        let entries = std::fs::read_dir(self.dir.join("info")).ok()?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pkg) = name.to_str().and_then(|n| n.strip_suffix(".md5sums")) else { continue };
            // `name:arch.md5sums` for multi-arch packages.
            let bare = pkg.split(':').next().unwrap_or(pkg);
            let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
            for line in text.lines() {
                let Some((md5, rel)) = line.split_once("  ") else { continue };
                let path = self.root.join(rel);
                if !watched(&path) {
                    continue;
                }
                if let Some(d) = Digest::md5_hex(md5) {
                    index.add(&mut ids, bare, versions.get(bare).cloned(), path, d);
                }
            }
        }
        Some(index)
    }

    fn read_rpm(&mut self, watched: &dyn Fn(&Path) -> bool) -> Option<Index> {
        let packages = match super::rpmdb::read(&self.dir) {
            Ok(Some(p)) => p,
            Ok(None) => {
                if !self.warned && self.dir.join("Packages").exists() {
                    tracing::warn!(dir = %self.dir.display(), "rpm's database here is Berkeley DB (RHEL 8 and older), which the agent does not read: changes are not put down to rpm packages");
                    self.warned = true;
                }
                return None;
            }
            Err(e) => {
                if !self.warned {
                    tracing::warn!(error = %e, "cannot read rpm's database: changes are not put down to rpm packages");
                    self.warned = true;
                }
                return None;
            }
        };
        let mut index = Index::default();
        let mut ids = HashMap::new();
        for p in packages {
            for (rel, d) in p.files {
                let path = self.root.join(rel.strip_prefix("/").unwrap_or(&rel));
                if watched(&path) {
                    index.add(&mut ids, &p.name, Some(p.version.clone()), path, d);
                }
            }
        }
        Some(index)
    }
}

/// The host's package databases.
#[derive(Debug)]
pub struct Packages {
    dbs: Vec<Db>,
}

impl Packages {
    /// The host's dpkg and rpm databases; paths are reported as the host sees them. A database
    /// that is not there is simply never found to own anything.
    pub fn new(at: &Databases) -> Packages {
        Packages { dbs: at.dbs().collect() }
    }

    /// Whether a package manager is at work.
    pub fn busy(&self) -> bool {
        self.dbs.iter().any(Db::busy)
    }

    /// Puts the owning package, if any, on each change; `real` maps a host path to where the agent
    /// reads it; `watched` says whether a host path is under a watched root.
    pub fn annotate(
        &mut self,
        changes: &mut [proto::FileChange],
        real: &dyn Fn(&Path) -> PathBuf,
        watched: &dyn Fn(&Path) -> bool,
    ) {
        if changes.is_empty() {
            return;
        }
        for db in &mut self.dbs {
            db.refresh(watched);
        }
        if self.dbs.iter().all(|d| d.now.owners.is_empty() && d.before.owners.is_empty()) {
            return;
        }
        for c in changes.iter_mut() {
            let path = Path::new(&c.path);
            let current = self
                .dbs
                .iter()
                .find_map(|db| db.now.owners.get(path).map(|(p, digest)| (&db.now.packages[*p], *digest)));
            c.package = match (c.change, current) {
                // Gone, and its package no longer lists it: removed with (or by) its package.
                (proto::FileChangeKind::Deleted, None) => self.dbs.iter().find_map(|db| {
                    db.before.owners.get(path).map(|(p, _)| {
                        let (name, version) = &db.before.packages[*p];
                        proto::PackageMatch { name: name.clone(), version: version.clone(), matches: true }
                    })
                }),
                (_, None) => None,
                (kind, Some(((name, version), digest))) => {
                    let new = c.new.as_ref();
                    let matches = matches!(
                        kind,
                        proto::FileChangeKind::Created
                            | proto::FileChangeKind::Modified
                            | proto::FileChangeKind::Renamed
                    ) && new.is_some_and(|s| s.kind == proto::FileKind::File)
                        && digest.matches(&real(path), new.and_then(|s| s.sha256.as_deref()));
                    Some(proto::PackageMatch { name: name.clone(), version: version.clone(), matches })
                }
            };
        }
    }
}

/// Where the host's package databases are, for single questions (see [`Databases::owner_of`]).
#[derive(Debug, Clone)]
pub struct Databases {
    /// dpkg's and rpm's directories as the agent reads them.
    pub dpkg_dir: PathBuf,
    pub rpm_dir: PathBuf,
    /// The host's root as the agent sees it.
    pub host_root: PathBuf,
}

impl Databases {
    /// Which installed package records `path` (a host path), and whether the file at `real`
    /// (where the agent reads that path) has the content it installed. Reads the whole database:
    /// for a rare question (a running executable replaced on disk), not for every file.
    pub fn owner_of(&self, path: &str, real: &Path) -> Option<proto::PackageMatch> {
        dpkg_owner_of(&self.dpkg_dir, &self.host_root, path, real)
            .or_else(|| rpm_owner_of(&self.rpm_dir, &self.host_root, path, real))
    }

    /// When either database last changed: an answer stands while this does not move.
    pub fn stamp(&self) -> Option<SystemTime> {
        self.dbs().filter_map(|db| db.stamp()).max()
    }

    /// Both databases, nothing read of them yet.
    fn dbs(&self) -> impl Iterator<Item = Db> + '_ {
        [(Kind::Dpkg, &self.dpkg_dir), (Kind::Rpm, &self.rpm_dir)]
            .into_iter()
            .map(|(kind, dir)| Db::new(kind, dir.clone(), &self.host_root))
    }
}

fn dpkg_owner_of(dpkg_dir: &Path, host_root: &Path, path: &str, real: &Path) -> Option<proto::PackageMatch> {
    let db = Db::new(Kind::Dpkg, dpkg_dir.to_owned(), host_root);
    let rel = Path::new(path).strip_prefix(&db.root).ok()?.to_str()?.to_owned();
    let needle = format!("  {rel}");
    for entry in std::fs::read_dir(dpkg_dir.join("info")).ok()?.flatten() {
        let name = entry.file_name();
        let Some(pkg) = name.to_str().and_then(|n| n.strip_suffix(".md5sums")) else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let Some(md5) = text.lines().find_map(|l| l.strip_suffix(needle.as_str())) else { continue };
        let bare = pkg.split(':').next().unwrap_or(pkg);
        return Some(proto::PackageMatch {
            name: bare.to_owned(),
            version: read_status(&dpkg_dir.join("status")).remove(bare),
            matches: Digest::md5_hex(md5).is_some_and(|d| d.matches(real, None)),
        });
    }
    None
}

fn rpm_owner_of(rpm_dir: &Path, host_root: &Path, path: &str, real: &Path) -> Option<proto::PackageMatch> {
    let db = Db::new(Kind::Rpm, rpm_dir.to_owned(), host_root);
    let rel = Path::new("/").join(Path::new(path).strip_prefix(&db.root).ok()?);
    let packages = super::rpmdb::read(rpm_dir).ok()??;
    packages.into_iter().find_map(|p| {
        let digest = p.files.iter().find(|(f, _)| *f == rel).map(|(_, d)| *d)?;
        Some(proto::PackageMatch {
            name: p.name,
            version: Some(p.version),
            matches: digest.matches(real, None),
        })
    })
}

/// Installed packages' versions from dpkg's `status`.
fn read_status(path: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(text) = std::fs::read_to_string(path) else { return out };
    for stanza in text.split("\n\n") {
        let field = |key: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')).map(str::trim))
        };
        if let (Some(name), Some(version)) = (field("Package"), field("Version"))
            && field("Status").is_some_and(|s| s.ends_with(" installed"))
        {
            out.insert(name.to_owned(), version.to_owned());
        }
    }
    out
}

fn digest_of<D: sha2::Digest>(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let (digest, _) = crate::collect::hash::digest_reader::<D>(&mut f, &mut vec![0u8; 64 << 10], |_| {})?;
    Ok(digest.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_stanzas_give_installed_versions() {
        let d = tempfile::tempdir().unwrap();
        let status = d.path().join("status");
        std::fs::write(
            &status,
            "Package: a\nStatus: install ok installed\nVersion: 1.2-3\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 9\n",
        )
        .unwrap();
        let v = read_status(&status);
        assert_eq!(v.get("a").map(String::as_str), Some("1.2-3"));
        assert!(!v.contains_key("b"), "only what is installed");
    }
}
