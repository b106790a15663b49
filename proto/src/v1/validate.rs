//! Limits on what a peer may send, and the checks that enforce them.
//!
//! The collector treats every agent as untrusted: a report is validated whole before anything of it
//! is stored. The agent applies the same limits before sending (truncating where it can), so a
//! well-behaved agent never sends what the collector would refuse.

use std::collections::BTreeMap;
use std::fmt;

/// The limits of v1. Raising one is compatible for collectors, not for older ones receiving.
pub mod limits {
    /// Processes in one snapshot.
    pub const MAX_PROCESSES: usize = 100_000;
    /// Listening sockets in one snapshot.
    pub const MAX_LISTENERS: usize = 100_000;
    /// Connections in one snapshot.
    pub const MAX_CONNECTIONS: usize = 200_000;
    /// Arguments kept of one command line.
    pub const MAX_ARGS: usize = 1_024;
    /// Ancestors of one process.
    pub const MAX_ANCESTRY: usize = 16;
    /// Bytes of one command line, all arguments together.
    pub const MAX_CMDLINE_BYTES: usize = 8_192;
    /// Bytes of a file path (PATH_MAX).
    pub const MAX_PATH_BYTES: usize = 4_096;
    /// Bytes of a name: process, user, OS, kernel, version.
    pub const MAX_NAME_BYTES: usize = 256;
    /// Bytes of a host name (RFC 1035).
    pub const MAX_HOSTNAME_BYTES: usize = 253;
    /// Tags on one host.
    pub const MAX_TAGS: usize = 64;
    /// Bytes of a tag key.
    pub const MAX_TAG_KEY_BYTES: usize = 128;
    /// Bytes of a tag value.
    pub const MAX_TAG_VALUE_BYTES: usize = 256;
    /// Bytes of a secret, token or key.
    pub const MAX_SECRET_BYTES: usize = 256;
    /// Entries in a list of reasons (coverage).
    pub const MAX_REASONS: usize = 32;
    /// Seconds between an agent's reports, at most: the collector derives "offline" from the
    /// interval a host claims, so a host must not be able to claim that it need never report.
    pub const MAX_INTERVAL_SECS: u32 = 3_600;
    /// File changes in one report (an agent sends more in several).
    pub const MAX_FILE_CHANGES: usize = 10_000;
    /// Bytes of a baseline source file.
    pub const MAX_BASELINE_BYTES: usize = 1 << 20;
}

/// What was wrong with a message, and where in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ValidationError {
    /// Where in the message, as `snapshot.processes[3].cmdline`.
    pub path: String,
    /// What is wrong there, without a trailing period.
    pub problem: String,
}

impl ValidationError {
    pub fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        ValidationError { path: path.into(), problem: problem.into() }
    }

    /// Prefixes the path with the enclosing field, for nested messages.
    pub fn within(mut self, outer: &str) -> Self {
        self.path = if self.path.is_empty() { outer.to_owned() } else { format!("{outer}.{}", self.path) };
        self
    }
}

/// A message that checks its own limits.
pub trait Validate {
    /// Returns the first problem found; `Ok` means every limit of this version holds.
    fn validate(&self) -> Result<(), ValidationError>;
}

/// Checks a string: at most `max` bytes and no NUL (which PostgreSQL text cannot hold).
pub(crate) fn text(path: impl fmt::Display, s: &str, max: usize) -> Result<(), ValidationError> {
    if s.len() > max {
        return Err(ValidationError::new(
            path.to_string(),
            format!("{} bytes, more than the limit of {max}", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(ValidationError::new(path.to_string(), "contains a NUL character"));
    }
    Ok(())
}

/// Like [`text`], and not empty.
pub(crate) fn nonempty(path: impl fmt::Display, s: &str, max: usize) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::new(path.to_string(), "must not be empty"));
    }
    text(path, s, max)
}

/// Invisible characters that reorder or hide text (bidirectional marks, overrides and isolates,
/// zero-width characters): a name with them could show as another. With the control characters
/// (C0, DEL, C1), what every output escapes.
pub fn invisible(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Like [`text`], and no control or invisible characters: for names that are shown and logged
/// as they are (a hostname with a newline in it could forge a log line; one with U+202E shows
/// reversed).
pub(crate) fn name(path: impl fmt::Display, s: &str, max: usize) -> Result<(), ValidationError> {
    text(&path, s, max)?;
    if s.chars().any(char::is_control) {
        return Err(ValidationError::new(path.to_string(), "contains a control character"));
    }
    if s.chars().any(invisible) {
        return Err(ValidationError::new(
            path.to_string(),
            "contains an invisible or bidirectional formatting character",
        ));
    }
    Ok(())
}

/// [`name`] where there is one.
pub(crate) fn opt_name(
    path: impl fmt::Display,
    s: &Option<impl AsRef<str>>,
    max: usize,
) -> Result<(), ValidationError> {
    match s {
        Some(s) => name(path, s.as_ref(), max),
        None => Ok(()),
    }
}

pub(crate) fn opt_text(
    path: impl fmt::Display,
    s: &Option<impl AsRef<str>>,
    max: usize,
) -> Result<(), ValidationError> {
    match s {
        Some(s) => text(path, s.as_ref(), max),
        None => Ok(()),
    }
}

/// The largest number a store keeps (a signed 64-bit integer, in SQLite and PostgreSQL alike).
pub const MAX_STORED: u64 = i64::MAX as u64;

/// Checks that a number fits the store: a larger one is refused here, named, rather than
/// failing the store's write and losing the report.
pub(crate) fn stored(path: impl fmt::Display, n: u64) -> Result<(), ValidationError> {
    if n > MAX_STORED {
        return Err(ValidationError::new(path.to_string(), format!("{n} is larger than {MAX_STORED}")));
    }
    Ok(())
}

pub(crate) fn opt_stored(path: impl fmt::Display, n: Option<u64>) -> Result<(), ValidationError> {
    n.map_or(Ok(()), |n| stored(path, n))
}

pub(crate) fn count<T>(path: &str, items: &[T], max: usize) -> Result<(), ValidationError> {
    if items.len() > max {
        return Err(ValidationError::new(
            path,
            format!("{} entries, more than the limit of {max}", items.len()),
        ));
    }
    Ok(())
}

/// Tags: bounded in number and size, keys not empty, no control characters anywhere. Public so
/// that configurations can refuse at start what the collector would refuse later.
pub fn tags(path: &str, tags: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if tags.len() > limits::MAX_TAGS {
        return Err(ValidationError::new(
            path,
            format!("{} tags, more than the limit of {}", tags.len(), limits::MAX_TAGS),
        ));
    }
    for (k, v) in tags {
        nonempty(format_args!("{path}.{k:?}"), k, limits::MAX_TAG_KEY_BYTES)?;
        text(format_args!("{path}.{k:?}"), v, limits::MAX_TAG_VALUE_BYTES)?;
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(ValidationError::new(format!("{path}.{k:?}"), "contains a control character"));
        }
        if k.chars().chain(v.chars()).any(invisible) {
            return Err(ValidationError::new(
                format!("{path}.{k:?}"),
                "contains an invisible or bidirectional formatting character",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_limits() {
        assert!(text("a", "abc", 3).is_ok());
        let e = text("a.b", "abcd", 3).unwrap_err();
        assert_eq!(e.to_string(), "a.b: 4 bytes, more than the limit of 3");
        assert_eq!(text("x", "a\0b", 10).unwrap_err().problem, "contains a NUL character");
        assert_eq!(nonempty("x", "", 10).unwrap_err().problem, "must not be empty");
        assert_eq!(name("h", "web\n1", 10).unwrap_err().problem, "contains a control character");
        assert!(name("h", "web-1", 10).is_ok());
        // C1 controls are control characters; a bidi override is refused as well.
        assert_eq!(name("h", "web\u{9b}1", 10).unwrap_err().problem, "contains a control character");
        assert!(name("h", "web\u{202e}1", 10).unwrap_err().problem.contains("bidirectional"));
    }

    #[test]
    fn tag_limits() {
        let mut t = BTreeMap::new();
        t.insert("role".to_owned(), "web".to_owned());
        assert!(tags("tags", &t).is_ok());
        t.insert("bad".to_owned(), "a\nb".to_owned());
        assert_eq!(tags("tags", &t).unwrap_err().to_string(), "tags.\"bad\": contains a control character");
        let many: BTreeMap<_, _> = (0..=limits::MAX_TAGS).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(tags("tags", &many).unwrap_err().problem.starts_with("65 tags"));
    }

    #[test]
    fn within_prefixes_paths() {
        let e = ValidationError::new("cmdline", "too long").within("processes[2]").within("snapshot");
        assert_eq!(e.path, "snapshot.processes[2].cmdline");
    }
}
