//! User names by uid, from the host's `/etc/passwd`.
//!
//! Read from the file under the host root rather than through NSS, so that a containerised agent
//! names the host's users, not its own. Users that only a directory service knows (LDAP, SSSD)
//! keep their uid and no name.

use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Default, Clone)]
pub struct Users {
    names: HashMap<u32, String>,
}

impl Users {
    /// Reads a passwd file; a missing or unreadable file gives no names, and the error.
    pub fn load(path: &Path) -> (Users, Option<String>) {
        match std::fs::read_to_string(path) {
            Ok(text) => (Users::parse(&text), None),
            Err(e) => (Users::default(), Some(format!("{}: {e}", path.display()))),
        }
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
        Users { names }
    }

    pub fn name(&self, uid: u32) -> Option<&str> {
        self.names.get(&uid).map(String::as_str)
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
        assert_eq!(u.name(0), Some("root"));
        assert_eq!(u.name(33), Some("www-data"));
        assert_eq!(u.name(1000), None);
    }

    #[test]
    fn the_real_passwd_names_root() {
        let (u, err) = Users::load(Path::new("/etc/passwd"));
        assert!(err.is_none(), "{err:?}");
        assert_eq!(u.name(0), Some("root"));
    }
}
