//! Redaction of secrets in command lines, before they leave the host.
//!
//! Architecture invariant: every command line goes through [`redact`] as it is read
//! ([`super::process`]), before it is cut to the wire's limits and long before it is put in a
//! report or printed by `snapshot`, so the collector never becomes a store of secrets. The rules
//! err on the side of hiding: a redacted non-secret costs a reviewer a look, a leaked secret costs
//! a rotation.
//!
//! Built-in rules:
//! 1. an option whose name says secret (`--password=x`, `--db-password x`, `-Dssl.keyStorePassword=x`,
//!    `--api-key x`, `--token=x`): its value, joined by `=` or the next argument;
//! 2. `NAME=value` arguments whose name says secret (`env DB_PASSWORD=x cmd`);
//! 3. credentials in URLs (`postgres://user:secret@db/x`): the password part;
//! 4. MySQL-family clients' `-psecret`;
//! 5. `-u user:password` and `--user user:password` (curl, wget): the password.
//! 6. Other database and remote clients' password options: `redis-cli -a`, `mongo`/`mongosh -p`,
//!    `sshpass -p`.
//! 7. HTTP headers that carry credentials, in any spelling (`-H "Authorization: Bearer x"`,
//!    `--header=X-Api-Key: x`, `Cookie: ...`, any header whose name says secret): the value
//!    (the scheme word, `Bearer`, is kept).
//! 8. Credentials recognised by their documented shape wherever they appear: hostwatch's own
//!    keys (`hwn_`, `hwt_`, `hwe_`), AWS access key ids, GitHub, GitLab, Slack, Stripe, Google
//!    and npm tokens, JSON Web Tokens, and the body of a PEM private key.
//! 9. URL query parameters whose name says secret (`?access_token=x`).
//!
//! Each argument that holds several words (`sh -c "..."`) is redacted word by word too, so that a
//! cron line or a shell one-liner gets the same treatment as a command.
//!
//! A site adds its own rules as regular expressions (`[redact] patterns`, [`Redactor`]), matched
//! against each argument after the built-in rules: the capture groups are hidden if the pattern
//! has any, else the whole match. `regex` runs in linear time, so a pattern cannot be made to
//! stall the agent by a hostile command line.

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

/// Clients whose short option takes a password, and that option (rule 6). MySQL's `-p`, whose
/// value is joined, is rule 4.
const PASSWORD_FLAGS: &[(&str, &str)] =
    &[("redis-cli", "-a"), ("keydb-cli", "-a"), ("mongo", "-p"), ("mongosh", "-p"), ("sshpass", "-p")];

/// The password option of the client `word` names, if it is one of [`PASSWORD_FLAGS`].
fn password_flag(word: &str) -> Option<&'static str> {
    let name = word.rsplit('/').next().unwrap_or(word);
    PASSWORD_FLAGS.iter().find(|(p, _)| *p == name).map(|(_, f)| *f)
}

/// The built-in rules and a site's own patterns. Cheap to clone (compiled patterns are shared).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    patterns: Vec<regex::Regex>,
}

/// A site pattern that does not compile; `index` counts from 0 in the order given.
#[derive(Debug, thiserror::Error)]
#[error("pattern {index} ({pattern:?}) is not a valid regular expression: {error}")]
pub struct PatternError {
    pub index: usize,
    pub pattern: String,
    error: regex::Error,
}

impl Redactor {
    /// The built-in rules plus `patterns`, each compiled now so that a bad one stops start-up.
    pub fn new(patterns: &[String]) -> Result<Self, PatternError> {
        let patterns = patterns
            .iter()
            .enumerate()
            .map(|(index, p)| {
                // regex's own size limit (10 MiB compiled) bounds what a pattern may cost.
                regex::Regex::new(p).map_err(|error| PatternError { index, pattern: p.clone(), error })
            })
            .collect::<Result<_, _>>()?;
        Ok(Redactor { patterns })
    }

    /// Redacts `args` in place with the built-in rules, then the site's patterns; returns whether
    /// anything was hidden.
    pub fn redact(&self, args: &mut [String]) -> bool {
        let mut changed = redact(args);
        for arg in args.iter_mut() {
            for re in &self.patterns {
                changed |= hide_matches(re, arg);
            }
        }
        changed
    }
}

/// Hides what `re` matches in `arg`: its capture groups if it has any, else the whole match.
fn hide_matches(re: &regex::Regex, arg: &mut String) -> bool {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for caps in re.captures_iter(arg) {
        let groups: Vec<regex::Match<'_>> = caps.iter().skip(1).flatten().collect();
        if groups.is_empty() {
            spans.extend(caps.get(0).map(|m| (m.start(), m.end())));
        } else {
            // Nested or overlapping groups: the outermost first, the inner ones are inside it.
            for m in groups {
                if spans.last().is_none_or(|&(_, end)| m.start() >= end) {
                    spans.push((m.start(), m.end()));
                }
            }
        }
    }
    // An empty match hides nothing; a pattern that matches the empty string is not a secret rule.
    spans.retain(|(a, b)| a < b);
    for &(a, b) in spans.iter().rev() {
        arg.replace_range(a..b, REDACTED);
    }
    !spans.is_empty()
}

/// Redacts `args` in place with the built-in rules; returns whether anything was hidden. Arguments that hold several
/// words (`sh -c "mysql -phunter2 db"`, a cron line) are redacted word by word as well.
pub fn redact(args: &mut [String]) -> bool {
    let mut changed = redact_words(args, true);
    for arg in args.iter_mut().skip(1) {
        if arg.contains(char::is_whitespace) {
            changed |= redact_inner_words(arg);
        }
    }
    for arg in args.iter_mut() {
        for re in shapes() {
            changed |= hide_matches(re, arg);
        }
        changed |= redact_query_secrets(arg);
    }
    changed
}

/// Credentials known by their shape (rule 8) and header values (rule 7), compiled once. Each
/// hides its first capture group, or the whole match where it has none.
fn shapes() -> &'static [regex::Regex] {
    static SHAPES: std::sync::OnceLock<Vec<regex::Regex>> = std::sync::OnceLock::new();
    SHAPES.get_or_init(|| {
        [
            // Headers: a credential header by name, or any header whose name says secret; the
            // scheme word stays, the credential goes.
            r#"(?i)\b(?:proxy-)?authorization\s*:\s*(?:(?:bearer|basic|token|digest|negotiate|aws4-hmac-sha256)\s+)?([^\s"']+)"#,
            r#"(?i)(?:^|[\s"'=])(?:cookie|set-cookie|x-[a-z0-9-]*(?:key|token|secret|auth|session)[a-z0-9-]*|[a-z0-9-]*(?:api-?key|token|secret|password|passwd)[a-z0-9-]*)\s*:\s+([^\s"']+)"#,
            // Documented token shapes.
            r"\bhw[nte]_[0-9a-fA-F]{16,}",
            r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
            r"\bgh[pousr]_[A-Za-z0-9]{20,}",
            r"\bgithub_pat_[A-Za-z0-9_]{20,}",
            r"\bglpat-[A-Za-z0-9_-]{20,}",
            r"\bxox[abeprs]-[A-Za-z0-9-]{10,}",
            r"\bxapp-[A-Za-z0-9-]{10,}",
            r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{10,}",
            r"\bAIza[0-9A-Za-z_-]{35}",
            r"\bnpm_[A-Za-z0-9]{36}",
            r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
            // A PEM private key passed inline: its body.
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----([\s\S]*?)(?:-----END [A-Z ]*PRIVATE KEY-----|\z)",
        ]
        .iter()
        .filter_map(|p| regex::Regex::new(p).ok())
        .collect()
    })
}

/// Hides the values of URL query parameters whose name says secret (`?access_token=x&a=1`).
fn redact_query_secrets(arg: &mut String) -> bool {
    let mut spans = Vec::new();
    let bytes = arg.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'?' && b != b'&' {
            continue;
        }
        let rest = &arg[i + 1..];
        let Some(eq) = rest.find('=') else { continue };
        let name = &rest[..eq];
        if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c)) {
            continue;
        }
        let start = i + 1 + eq + 1;
        let end = arg[start..].find(['&', '#', ' ', '"', '\'']).map_or(arg.len(), |e| start + e);
        if start < end && is_secret_name(name) && &arg[start..end] != REDACTED {
            spans.push((start, end));
        }
    }
    for &(a, b) in spans.iter().rev() {
        arg.replace_range(a..b, REDACTED);
    }
    !spans.is_empty()
}

/// What the next word is, after an option that takes a secret as its next argument.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    Plain,
    /// The whole word is a secret (`--password hunter2`).
    Secret,
    /// The part after the first `:` is a secret (`-u user:password`).
    AfterColon,
}

/// Applies the rules to a list of words. `program_first`: the first word is the program (an argv),
/// rather than a word inside a shell string, where a MySQL client may appear anywhere.
fn redact_words(words: &mut [String], program_first: bool) -> bool {
    let mut changed = false;
    let mut mysql = false;
    let mut flag = None;
    let mut next = Next::Plain;
    for (i, word) in words.iter_mut().enumerate() {
        match std::mem::replace(&mut next, Next::Plain) {
            Next::Secret if !word.is_empty() => {
                *word = REDACTED.to_owned();
                changed = true;
                continue;
            }
            Next::AfterColon => changed |= hide_after_colon(word),
            _ => {}
        }
        if is_mysql(word) && (i == 0 || !program_first) {
            mysql = true;
        }
        if i == 0 || !program_first {
            flag = password_flag(word).or(flag);
        }
        if let Some(f) = flag
            && word.starts_with(f)
            && !word.starts_with("--")
        {
            if word.len() == f.len() {
                next = Next::Secret;
            } else {
                *word = format!("{f}{REDACTED}");
                changed = true;
            }
            continue;
        }
        if i == 0 && program_first {
            changed |= redact_url_credentials(word);
            continue;
        }
        if let Some(option) = word.strip_prefix('-') {
            let option = option.trim_start_matches('-');
            if mysql && word.starts_with("-p") && !word.starts_with("--") && word.len() > 2 {
                *word = format!("-p{REDACTED}");
                changed = true;
                continue;
            }
            match option.split_once('=') {
                Some((name, value)) if is_secret_name(name) && !value.is_empty() => {
                    let start = word.len() - value.len();
                    hide_value(word, start);
                    changed = true;
                    continue;
                }
                Some((name, _)) if is_user_option(name) => {
                    let at = word.find('=').map_or(0, |e| e + 1);
                    let (head, value) = word.split_at(at);
                    let mut value = value.to_owned();
                    if hide_after_colon(&mut value) {
                        *word = format!("{head}{value}");
                        changed = true;
                    }
                    continue;
                }
                None if is_secret_name(option) => next = Next::Secret,
                None if is_user_option(option) => next = Next::AfterColon,
                _ => {}
            }
        } else if let Some((name, value)) = word.split_once('=')
            && is_env_name(name)
            && is_secret_name(name)
            && !value.is_empty()
        {
            hide_value(word, name.len() + 1);
            changed = true;
            continue;
        }
        changed |= redact_url_credentials(word);
    }
    changed
}

/// Redacts the whitespace-separated words of one argument, keeping its spacing.
fn redact_inner_words(arg: &mut String) -> bool {
    let spans: Vec<(usize, usize)> = {
        let mut spans = Vec::new();
        let mut start = None;
        for (i, c) in arg.char_indices() {
            match (c.is_whitespace(), start) {
                (true, Some(s)) => {
                    spans.push((s, i));
                    start = None;
                }
                (false, None) => start = Some(i),
                _ => {}
            }
        }
        if let Some(s) = start {
            spans.push((s, arg.len()));
        }
        spans
    };
    let mut words: Vec<String> = spans.iter().map(|&(a, b)| arg[a..b].to_owned()).collect();
    if !redact_words(&mut words, false) {
        return false;
    }
    for (&(a, b), w) in spans.iter().zip(&words).rev() {
        arg.replace_range(a..b, w);
    }
    true
}

/// Replaces the value that starts at byte `start` of `word`, up to the first white space: in an
/// argument that is a whole shell line (`PGPASSWORD=pw psql -h db`), the rest is other words,
/// which the word-by-word pass looks at.
fn hide_value(word: &mut String, start: usize) {
    let end = word[start..].find(char::is_whitespace).map_or(word.len(), |e| start + e);
    word.replace_range(start..end, REDACTED);
}

fn is_mysql(word: &str) -> bool {
    MYSQL_FAMILY.contains(&word.rsplit('/').next().unwrap_or(word))
}

/// `-u` / `--user` (curl, wget and others): `user:password`.
fn is_user_option(name: &str) -> bool {
    matches!(name, "u" | "user" | "proxy-user")
}

/// Hides what follows the first `:` of `word`; a word without one is a user name alone.
fn hide_after_colon(word: &mut String) -> bool {
    match word.find(':') {
        Some(c) if c + 1 < word.len() && &word[c + 1..] != REDACTED => {
            word.truncate(c + 1);
            word.push_str(REDACTED);
            true
        }
        _ => false,
    }
}

/// Whether an option or variable name names a secret rather than where one is kept.
fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    // `-Dssl.keyStorePassword`: the last dotted component is the name.
    let n = n.rsplit('.').next().unwrap_or(&n);
    // Authors, authority and the like are not secrets; "auth" counts only as a whole word.
    let words = SECRET_WORDS
        .iter()
        .any(|w| if *w == "auth" { n.split('-').any(|part| part == "auth") } else { n.contains(w) });
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
        let authority_end = arg[start..].find(['/', '?', '#', ' ']).map_or(arg.len(), |e| start + e);
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
        assert_eq!(r(&["app", "--db_password=x"]).0, ["app", "--db_password=<redacted>"]);
        assert_eq!(
            r(&["java", "-Djavax.net.ssl.keyStorePassword=s3cret", "-jar"]).0[1],
            "-Djavax.net.ssl.keyStorePassword=<redacted>"
        );
        assert_eq!(r(&["x", "--api-key=abc"]).0[1], "--api-key=<redacted>");
        assert_eq!(r(&["x", "--token=abc"]).0[1], "--token=<redacted>");
        assert_eq!(r(&["x", "--client-secret=abc"]).0[1], "--client-secret=<redacted>");
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
        let (v, changed) =
            r(&["app", "--password-file", "/run/secrets/db", "--token-path=/x", "--author", "me"]);
        assert_eq!(v, ["app", "--password-file", "/run/secrets/db", "--token-path=/x", "--author", "me"]);
        assert!(!changed);
    }

    #[test]
    fn environment_assignments() {
        assert_eq!(
            r(&["env", "DB_PASSWORD=x", "API_TOKEN=y", "HOME=/root", "app"]).0,
            ["env", "DB_PASSWORD=<redacted>", "API_TOKEN=<redacted>", "HOME=/root", "app"]
        );
    }

    #[test]
    fn url_credentials() {
        assert_eq!(r(&["psql", "postgres://app:pw@db:5432/x"]).0[1], "postgres://app:<redacted>@db:5432/x");
        assert_eq!(
            r(&["x", "--upstream=https://u:p@a/b,https://v:q@c"]).0[1],
            "--upstream=https://u:<redacted>@a/b,https://v:<redacted>@c"
        );
        // A user without a password is not a secret.
        assert_eq!(
            r(&["git", "clone", "ssh://git@github.com/x"]),
            (vec!["git".into(), "clone".into(), "ssh://git@github.com/x".into()], false)
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
    fn user_and_password_pairs() {
        assert_eq!(r(&["curl", "-u", "alice:s3cret", "https://x"]).0[2], "alice:<redacted>");
        assert_eq!(r(&["curl", "--user=alice:s3cret"]).0[1], "--user=alice:<redacted>");
        // A user alone, or -u as a uid, is not a secret.
        assert_eq!(r(&["ps", "-u", "root"]), (vec!["ps".into(), "-u".into(), "root".into()], false));
    }

    #[test]
    fn words_inside_shell_strings() {
        let (v, changed) = r(&["/bin/sh", "-c", "cd /srv && mysql -uroot -phunter2 db  >/dev/null"]);
        assert_eq!(v[2], "cd /srv && mysql -uroot -p<redacted> db  >/dev/null");
        assert!(changed);
        assert_eq!(
            r(&["bash", "-c", "curl --password  x https://a"]).0[2],
            "curl --password  <redacted> https://a"
        );
        assert_eq!(r(&["sh", "-c", "PGPASSWORD=pw psql -h db"]).0[2], "PGPASSWORD=<redacted> psql -h db");
        assert!(!r(&["sh", "-c", "echo hello world"]).1);
        // A -p in a shell string without a MySQL client stays.
        assert_eq!(r(&["sh", "-c", "ssh -p2222 host"]).0[2], "ssh -p2222 host");
    }

    #[test]
    fn credential_headers_in_any_spelling() {
        let key = "hwt_0123456789abcdef0123456789abcdef";
        assert_eq!(
            r(&["curl", "-H", &format!("Authorization: Bearer {key}"), "https://c/api"]).0[2],
            "Authorization: Bearer <redacted>"
        );
        assert_eq!(
            r(&["curl", "--header=authorization:Basic dXNlcjpwdw==", "x"]).0[1],
            "--header=authorization:Basic <redacted>"
        );
        assert_eq!(r(&["curl", "-H", "X-Api-Key: abc123", "x"]).0[2], "X-Api-Key: <redacted>");
        assert_eq!(r(&["curl", "-H", "Cookie: session=s3cr3t"]).0[2], "Cookie: <redacted>");
        assert_eq!(r(&["curl", "-H", "X-Vault-Token: hvs.abc"]).0[2], "X-Vault-Token: <redacted>");
        assert_eq!(r(&["curl", "-H", "Private-Token: glx"]).0[2], "Private-Token: <redacted>");
        assert_eq!(
            r(&["sh", "-c", "curl -s -H 'Authorization: Bearer opaque-42' https://x | sh"]).0[2],
            "curl -s -H 'Authorization: Bearer <redacted>' https://x | sh"
        );
        // Not headers: a volume mount, an ordinary header.
        assert!(!r(&["docker", "run", "-v", "/run/secrets:/run/secrets", "img"]).1);
        assert!(!r(&["curl", "-H", "Accept: application/json"]).1);
    }

    #[test]
    fn credentials_known_by_their_shape() {
        let cases = [
            ("hwn_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "<redacted>"),
            ("hwe_00ff00ff00ff00ff00ff", "<redacted>"),
            ("key=AKIAIOSFODNN7EXAMPLE", "key=<redacted>"),
            ("ghp_0123456789abcdefghijABCDEFGHIJ012345", "<redacted>"),
            ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "<redacted>"),
            ("glpat-abcdefghij0123456789", "<redacted>"),
            ("xoxb-123456789012-abcdefghijkl", "<redacted>"),
            ("sk_live_0123456789abcdef", "<redacted>"),
            ("AIzaSyA0123456789abcdefghijklmnopqrstuv", "<redacted>"),
            ("npm_0123456789abcdefghijklmnopqrstuvwxyz", "<redacted>"),
            ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", "<redacted>"),
        ];
        for (arg, want) in cases {
            let (v, changed) = r(&["app", arg]);
            assert_eq!((v[1].as_str(), changed), (want, true), "{arg}");
        }
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----";
        assert_eq!(
            r(&["app", "--key", pem]).0[2],
            "-----BEGIN PRIVATE KEY-----<redacted>-----END PRIVATE KEY-----"
        );
        // Look-alikes that are not credentials stay.
        assert!(!r(&["app", "hwt_short", "AKIA", "eyJ-not-a-jwt", "sk_other"]).1);
    }

    #[test]
    fn secret_query_parameters() {
        assert_eq!(
            r(&["curl", "https://api/x?access_token=abc&page=2#top"]).0[1],
            "https://api/x?access_token=<redacted>&page=2#top"
        );
        assert_eq!(r(&["wget", "https://h/?a=1&api_key=k1"]).0[1], "https://h/?a=1&api_key=<redacted>");
        assert!(!r(&["curl", "https://h/?q=password+reset"]).1);
    }

    #[test]
    fn other_clients_password_options() {
        assert_eq!(r(&["redis-cli", "-h", "db", "-a", "pw", "ping"]).0[4], "<redacted>");
        assert_eq!(r(&["/usr/bin/mongosh", "-u", "admin", "-p", "pw"]).0[4], "<redacted>");
        assert_eq!(r(&["sshpass", "-ps3cret", "ssh", "host"]).0[1], "-p<redacted>");
        assert_eq!(r(&["sh", "-c", "redis-cli -a pw info"]).0[2], "redis-cli -a <redacted> info");
        // Elsewhere these letters mean something else.
        assert!(!r(&["ls", "-a", "/"]).1);
    }

    #[test]
    fn nothing_to_hide() {
        let (v, changed) = r(&["nginx", "-g", "daemon off;"]);
        assert_eq!(v, ["nginx", "-g", "daemon off;"]);
        assert!(!changed);
    }

    fn site(patterns: &[&str], args: &[&str]) -> (Vec<String>, bool) {
        let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let changed = Redactor::new(&patterns).unwrap().redact(&mut v);
        (v, changed)
    }

    #[test]
    fn site_patterns_hide_groups_or_whole_matches() {
        // A capture group: only the group is hidden.
        assert_eq!(
            site(&[r"^--vault=(.+)$"], &["app", "--vault=s.abc123", "--port=5"]).0,
            ["app", "--vault=<redacted>", "--port=5"]
        );
        // No group: the whole match, wherever it is in the argument, every time it occurs.
        assert_eq!(
            site(
                &[r"AKIA[0-9A-Z]{16}"],
                &["sh", "-c", "aws --key AKIAABCDEFGHIJKLMNOP x AKIAABCDEFGHIJKLMNOQ"]
            )
            .0,
            ["sh", "-c", "aws --key <redacted> x <redacted>"]
        );
        // Several groups, several patterns; the built-in rules still apply.
        let (v, changed) = site(
            &[r"user=(\w+);pass=(\w+)", r"ghp_\w+"],
            &["job", "user=bob;pass=pw1", "ghp_0123abc", "--password=x"],
        );
        assert_eq!(v, ["job", "user=<redacted>;pass=<redacted>", "<redacted>", "--password=<redacted>"]);
        assert!(changed);
        // Nothing matched: nothing changed, and a pattern that can match nothing hides nothing.
        assert_eq!(site(&[r"zzz(\d*)", r"x*"], &["ls", "-l"]), (vec!["ls".into(), "-l".into()], false));
    }

    #[test]
    fn a_bad_site_pattern_is_refused_by_position() {
        let err = Redactor::new(&["ok".into(), "(unclosed".into()]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.to_string().contains("pattern 1 (\"(unclosed\")"), "{err}");
        // A pattern too big to compile within regex's size limit is refused, not built.
        assert!(Redactor::new(&[r"\w{1000}\w{1000}\w{1000}".into()]).is_err());
        // Real rules are far below it.
        assert!(Redactor::new(&[r"sk_live_\w{1,64}".into()]).is_ok());
    }
}
