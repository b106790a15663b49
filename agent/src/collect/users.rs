//! User names by uid: the host's `/etc/passwd`, then, where the agent sees the host's own root,
//! the system's user database (NSS: LDAP, SSSD, ...) for uids the file does not name.
//!
//! Under another host root (a containerised agent with the host mounted) only that root's file is
//! read: NSS would answer with the container's users, not the host's. A directory service can be
//! slow, so each NSS answer (a name, or none) is kept for [`NSS_FOR`] and asked again only then:
//! at most one lookup per unknown uid in that time, whatever the scan rate.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long an NSS answer is kept before the uid is asked again.
pub const NSS_FOR: Duration = Duration::from_secs(600);

/// NSS answers by uid (a name, or none), with when each was asked.
type Directory = RefCell<HashMap<u32, (Option<String>, Instant)>>;

#[derive(Debug, Default, Clone)]
pub struct Users {
    names: HashMap<u32, String>,
    /// `None`: the file alone (another host root). Else NSS answers by uid, with when asked.
    directory: Option<Directory>,
}

impl Users {
    /// Reads a passwd file; a missing or unreadable file gives no names, and the error. `nss`:
    /// ask the system's user database for what the file does not name.
    pub fn load(path: &Path, nss: bool) -> (Users, Option<String>) {
        let (mut users, err) = match std::fs::read_to_string(path) {
            Ok(text) => (Users::parse(&text), None),
            Err(e) => (Users::default(), Some(format!("{}: {e}", path.display()))),
        };
        if nss {
            users.directory = Some(RefCell::default());
        }
        (users, err)
    }

    /// The same users, the file read again; NSS answers are kept (they have their own expiry).
    pub fn reload(&mut self, path: &Path) -> Option<String> {
        let directory = self.directory.take();
        let (mut fresh, err) = Users::load(path, false);
        fresh.directory = directory;
        *self = fresh;
        err
    }

    /// Parses passwd lines (`name:x:uid:...`); the first name of a uid wins, as getpwuid does.
    pub fn parse(text: &str) -> Users {
        let mut names = HashMap::new();
        for line in text.lines() {
            let mut fields = line.split(':');
            let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            if let (false, Ok(uid)) = (name.is_empty() || name.starts_with('#'), uid.parse::<u32>()) {
                names.entry(uid).or_insert_with(|| name.to_owned());
            }
        }
        Users { names, directory: None }
    }

    pub fn name(&self, uid: u32) -> Option<String> {
        if let Some(n) = self.names.get(&uid) {
            return Some(n.clone());
        }
        let mut directory = self.directory.as_ref()?.borrow_mut();
        if let Some((name, at)) = directory.get(&uid)
            && at.elapsed() < NSS_FOR
        {
            return name.clone();
        }
        let name =
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name);
        directory.insert(uid, (name.clone(), Instant::now()));
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_name_of_a_uid_wins_and_junk_is_skipped() {
        let u = Users::parse(
            "root:x:0:0:root:/root:/bin/bash\ntoor:x:0:0::/:/bin/sh\n# c\nbad\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\nx:x:notanumber:1\n",
        );
        assert_eq!(u.name(0).as_deref(), Some("root"));
        assert_eq!(u.name(33).as_deref(), Some("www-data"));
        assert_eq!(u.name(1000), None);
    }

    #[test]
    fn the_real_passwd_names_root() {
        let (u, err) = Users::load(Path::new("/etc/passwd"), false);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(u.name(0).as_deref(), Some("root"));
    }

    #[test]
    fn what_the_file_does_not_name_comes_from_nss_and_is_kept() {
        // A file that names nobody: uid 0 is named by the system's user database alone.
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("passwd");
        std::fs::write(&empty, "").unwrap();
        let (file_only, _) = Users::load(&empty, false);
        assert_eq!(file_only.name(0), None, "another host root: its file alone");
        let (mut u, _) = Users::load(&empty, true);
        assert_eq!(u.name(0).as_deref(), Some("root"));
        // An unknown uid is asked once and its absence kept, across a reload of the file.
        assert_eq!(u.name(4_000_000_000), None);
        assert!(u.reload(&empty).is_none());
        let kept = u.directory.as_ref().unwrap().borrow();
        assert_eq!(kept.get(&4_000_000_000).map(|(n, _)| n.clone()), Some(None));
        assert_eq!(kept.get(&0).map(|(n, _)| n.clone()), Some(Some("root".to_owned())));
    }
}
