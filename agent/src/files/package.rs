//! Package awareness: which installed package owns a changed path, and whether the file's content
//! is what the package installed (dpkg's `info/*.md5sums`), so that patch day is told apart from
//! tampering.
//!
//! The index holds only the paths under watched roots, and is read again when dpkg's `status`
//! changes (every install and removal writes it). The index from before is kept one generation, so
//! a file deleted by the removal of its package is still put down to that package.
//!
//! `matches` is about content only: dpkg records no modes or owners, so a change of mode or owner
//! (a setuid bit added) is never taken as the package's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hostwatch_proto::v1 as proto;
use md5::Md5;

/// Owners of watched paths, by path: the package's index in `packages` and the recorded MD5.
type Owners = HashMap<PathBuf, (usize, [u8; 16])>;

#[derive(Debug, Default)]
struct Index {
    owners: Owners,
    /// (name, version) of each package.
    packages: Vec<(String, Option<String>)>,
}

#[derive(Debug)]
pub struct Packages {
    /// dpkg's database (`/var/lib/dpkg`); the files it lists are under the root three levels up.
    dir: PathBuf,
    root: PathBuf,
    /// `status`'s mtime when the index was read.
    read_at: Option<SystemTime>,
    now: Index,
    before: Index,
}

impl Packages {
    /// `dir` as the agent reads it (under `host_root`); paths are reported as the host sees them.
    pub fn new(dir: PathBuf, host_root: &Path) -> Packages {
        let root = dir.ancestors().nth(3).map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        // Paths the index holds are host paths: strip the agent's view of the host's root.
        let root = match root.strip_prefix(host_root) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => root,
        };
        Packages { dir, root, read_at: None, now: Index::default(), before: Index::default() }
    }

    /// Whether dpkg is at work (holds the lock on its database): the files it wrote are not all
    /// recorded in the database yet.
    pub fn busy(&self) -> bool {
        let Ok(f) = std::fs::File::open(self.dir.join("lock")) else { return false };
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
        self.refresh(watched);
        if self.now.owners.is_empty() && self.before.owners.is_empty() {
            return;
        }
        for c in changes.iter_mut() {
            let path = Path::new(&c.path);
            let current = self.now.owners.get(path).map(|(p, md5)| (&self.now.packages[*p], *md5));
            c.package = match (c.change, current) {
                // Gone, and its package no longer lists it: removed with (or by) its package.
                (proto::FileChangeKind::Deleted, None) => self.before.owners.get(path).map(|(p, _)| {
                    let (name, version) = &self.before.packages[*p];
                    proto::PackageMatch { name: name.clone(), version: version.clone(), matches: true }
                }),
                (_, None) => None,
                (kind, Some(((name, version), md5))) => {
                    let matches = matches!(
                        kind,
                        proto::FileChangeKind::Created
                            | proto::FileChangeKind::Modified
                            | proto::FileChangeKind::Renamed
                    ) && c.new.as_ref().is_some_and(|s| s.kind == proto::FileKind::File)
                        && md5_of(&real(path)).is_ok_and(|m| m == md5);
                    Some(proto::PackageMatch { name: name.clone(), version: version.clone(), matches })
                }
            };
        }
    }

    /// Reads the index again if dpkg's status changed since it was read.
    fn refresh(&mut self, watched: &dyn Fn(&Path) -> bool) {
        let status = self.dir.join("status");
        let mtime = std::fs::metadata(&status).and_then(|m| m.modified()).ok();
        if mtime.is_none() || mtime == self.read_at {
            return;
        }
        let packages = read_status(&status);
        let mut index = Index::default();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("info")) else { return };
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
                let mut digest = [0u8; 16];
                if hex::decode_to_slice(md5, &mut digest).is_err() {
                    continue;
                }
                let id = *ids.entry(bare.to_owned()).or_insert_with(|| {
                    index.packages.push((bare.to_owned(), packages.get(bare).cloned()));
                    index.packages.len() - 1
                });
                index.owners.insert(path, (id, digest));
            }
        }
        tracing::debug!(paths = index.owners.len(), packages = index.packages.len(), "dpkg index read");
        self.before = std::mem::replace(&mut self.now, index);
        self.read_at = mtime;
    }
}

/// Which installed package records `path` (a host path) in dpkg's database at `dpkg_dir` (as the
/// agent reads it, under `host_root`), and whether the file at `real` (where the agent reads that
/// path) has the content it installed. Reads every `info/*.md5sums`: for a rare question (a
/// running executable replaced on disk), not for every file.
pub fn owner_of(dpkg_dir: &Path, host_root: &Path, path: &str, real: &Path) -> Option<proto::PackageMatch> {
    let packages = Packages::new(dpkg_dir.to_owned(), host_root);
    let rel = Path::new(path).strip_prefix(&packages.root).ok()?.to_str()?.to_owned();
    let needle = format!("  {rel}");
    for entry in std::fs::read_dir(dpkg_dir.join("info")).ok()?.flatten() {
        let name = entry.file_name();
        let Some(pkg) = name.to_str().and_then(|n| n.strip_suffix(".md5sums")) else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let Some(md5) = text.lines().find_map(|l| l.strip_suffix(needle.as_str())) else { continue };
        let mut digest = [0u8; 16];
        let recorded = hex::decode_to_slice(md5, &mut digest).is_ok();
        let bare = pkg.split(':').next().unwrap_or(pkg);
        return Some(proto::PackageMatch {
            name: bare.to_owned(),
            version: read_status(&dpkg_dir.join("status")).remove(bare),
            matches: recorded && md5_of(real).is_ok_and(|m| m == digest),
        });
    }
    None
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

fn md5_of(path: &Path) -> std::io::Result<[u8; 16]> {
    let mut f = std::fs::File::open(path)?;
    let (digest, _) = crate::collect::hash::digest_reader::<Md5>(&mut f, &mut vec![0u8; 64 << 10], |_| {})?;
    Ok(digest.into())
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
