//! Redaction of secrets in command lines, before they leave the host.
//!
//! Architecture invariant: every command line goes through [`redact`] before it is put in a
//! report or printed by `snapshot`, so the collector never becomes a store of secrets. The rules
//! err on the side of hiding: a redacted non-secret costs a reviewer a look, a leaked secret costs
//! a rotation.
//!
//! Built-in rules:
//! 1. an option whose name says secret (`--password=x`, `--db-password x`, `-Dssl.keyStorePassword=x`,
//!    `--api-key x`, `--token=x`): its value, joined by `=` or the next argument;
//! 2. `NAME=value` arguments whose name says secret (`env DB_PASSWORD=x cmd`);
//! 3. credentials in URLs (`postgres://user:secret@db/x`): the password part;
//! 4. MySQL-family clients' `-psecret`.

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// Words that make an option or variable name a secret's name.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api-key",
    "privatekey",
    "private-key",
    "accesskey",
    "access-key",
    "credential",
    "auth",
];

/// Name endings that point to where a secret is, not the secret: `--password-file /run/x` is safe.
const REFERENCE_SUFFIXES: &[&str] = &["-file", "-path", "-dir", "-env", "-fd", "file", "path"];

/// Programs for which `-pVALUE` is a password.
const MYSQL_FAMILY: &[&str] = &[
    "mysql",
    "mysqldump",
    "mysqladmin",
    "mysqlimport",
    "mysqlshow",
    "mysqlcheck",
    "mariadb",
    "mariadb-dump",
    "mariadb-admin",
];

/// Redacts `args` in place; returns whether anything was hidden.
pub fn redact(args: &mut [String]) -> bool {
    let mysql = args
        .first()
        .and_then(|a0| a0.rsplit('/').next())
        .is_some_and(|base| MYSQL_FAMILY.contains(&base));
    let mut changed = false;
    let mut hide_next = false;
    for (i, arg) in args.iter_mut().enumerate() {
        if hide_next {
            hide_next = false;
            if !arg.is_empty() {
                *arg = REDACTED.to_owned();
                changed = true;
                continue;
            }
        }
        if i == 0 {
            changed |= redact_url_credentials(arg);
            continue;
        }
        if let Some(option) = arg.strip_prefix('-') {
            let option = option.trim_start_matches('-');
            if mysql && arg.starts_with("-p") && !arg.starts_with("--") && arg.len() > 2 {
                *arg = format!("-p{REDACTED}");
                changed = true;
                continue;
            }
            match option.split_once('=') {
                Some((name, value)) if is_secret_name(name) && !value.is_empty() => {
                    let prefix_len = arg.len() - value.len();
                    arg.truncate(prefix_len);
                    arg.push_str(REDACTED);
                    changed = true;
                    continue;
                }
                None if is_secret_name(option) => hide_next = true,
                _ => {}
            }
        } else if let Some((name, value)) = arg.split_once('=')
            && is_env_name(name)
            && is_secret_name(name)
            && !value.is_empty()
        {
            let keep = name.len() + 1;
            arg.truncate(keep);
            arg.push_str(REDACTED);
            changed = true;
            continue;
        }
        changed |= redact_url_credentials(arg);
    }
    changed
}

/// Whether an option or variable name names a secret rather than where one is kept.
fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    // `-Dssl.keyStorePassword`: the last dotted component is the name.
    let n = n.rsplit('.').next().unwrap_or(&n);
    // Authors, authority and the like are not secrets; "auth" counts only as a whole word.
    let words = SECRET_WORDS.iter().any(|w| {
        if *w == "auth" {
            n.split('-').any(|part| part == "auth")
        } else {
            n.contains(w)
        }
    });
    words && !REFERENCE_SUFFIXES.iter().any(|s| n.ends_with(s))
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Hides the password of every `scheme://user:password@host` in `arg`.
fn redact_url_credentials(arg: &mut String) -> bool {
    let mut changed = false;
    let mut from = 0;
    while let Some(found) = arg[from..].find("://") {
        let start = from + found + 3;
        let authority_end = arg[start..]
            .find(['/', '?', '#', ' '])
            .map_or(arg.len(), |e| start + e);
        let authority = &arg[start..authority_end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
            && &authority[colon + 1..at] != REDACTED
        {
            arg.replace_range(start + colon + 1..start + at, REDACTED);
            changed = true;
        }
        from = start;
        if from >= arg.len() {
            break;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(args: &[&str]) -> (Vec<String>, bool) {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let changed = redact(&mut v);
        (v, changed)
    }

    #[test]
    fn option_with_equals() {
        assert_eq!(
            r(&["app", "--password=hunter2", "--port=5"]).0,
            ["app", "--password=<redacted>", "--port=5"]
        );
        assert_eq!(
            r(&["app", "--db_password=x"]).0,
            ["app", "--db_password=<redacted>"]
        );
        assert_eq!(
            r(&["java", "-Djavax.net.ssl.keyStorePassword=s3cret", "-jar"]).0[1],
            "-Djavax.net.ssl.keyStorePassword=<redacted>"
        );
        assert_eq!(r(&["x", "--api-key=abc"]).0[1], "--api-key=<redacted>");
        assert_eq!(r(&["x", "--token=abc"]).0[1], "--token=<redacted>");
        assert_eq!(
            r(&["x", "--client-secret=abc"]).0[1],
            "--client-secret=<redacted>"
        );
    }

    #[test]
    fn option_with_separate_value() {
        assert_eq!(
            r(&["app", "--password", "hunter2", "serve"]).0,
            ["app", "--password", "<redacted>", "serve"]
        );
        assert_eq!(r(&["vault", "-token", "s.abc"]).0[2], "<redacted>");
        assert_eq!(r(&["curl", "--auth", "u:p"]).0[2], "<redacted>");
    }

    #[test]
    fn references_to_secrets_are_kept() {
        let (v, changed) = r(&[
            "app",
            "--password-file",
            "/run/secrets/db",
            "--token-path=/x",
            "--author",
            "me",
        ]);
        assert_eq!(
            v,
            [
                "app",
                "--password-file",
                "/run/secrets/db",
                "--token-path=/x",
                "--author",
                "me"
            ]
        );
        assert!(!changed);
    }

    #[test]
    fn environment_assignments() {
        assert_eq!(
            r(&["env", "DB_PASSWORD=x", "API_TOKEN=y", "HOME=/root", "app"]).0,
            [
                "env",
                "DB_PASSWORD=<redacted>",
                "API_TOKEN=<redacted>",
                "HOME=/root",
                "app"
            ]
        );
    }

    #[test]
    fn url_credentials() {
        assert_eq!(
            r(&["psql", "postgres://app:pw@db:5432/x"]).0[1],
            "postgres://app:<redacted>@db:5432/x"
        );
        assert_eq!(
            r(&["x", "--upstream=https://u:p@a/b,https://v:q@c"]).0[1],
            "--upstream=https://u:<redacted>@a/b,https://v:<redacted>@c"
        );
        // A user without a password is not a secret.
        assert_eq!(
            r(&["git", "clone", "ssh://git@github.com/x"]),
            (
                vec!["git".into(), "clone".into(), "ssh://git@github.com/x".into()],
                false
            )
        );
        assert_eq!(r(&["/opt/x://a:b@c"]).0[0], "/opt/x://a:<redacted>@c");
    }

    #[test]
    fn mysql_short_password() {
        assert_eq!(
            r(&["/usr/bin/mysql", "-uroot", "-phunter2", "db"]).0,
            ["/usr/bin/mysql", "-uroot", "-p<redacted>", "db"]
        );
        // Elsewhere -p is a port or a path.
        assert_eq!(r(&["ssh", "-p2222", "host"]).0[1], "-p2222");
    }

    #[test]
    fn nothing_to_hide() {
        let (v, changed) = r(&["nginx", "-g", "daemon off;"]);
        assert_eq!(v, ["nginx", "-g", "daemon off;"]);
        assert!(!changed);
    }
}
