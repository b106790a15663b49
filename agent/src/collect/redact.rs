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
    changed
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
