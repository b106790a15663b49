//! TOML files with errors that say file, line, column and what is wrong, the way compilers do.
//!
//! Shared by the agent's config, the collector's config and baseline files.

use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;

/// A problem at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FileError {
    pub file: String,
    /// 1-based line and column (in characters), where the problem is known to a place.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl FileError {
    /// A problem at byte `span` of `src`, if any.
    pub fn at(file: &str, src: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        FileError {
            file: file.to_owned(),
            at: span.map(|s| line_column(src, s.start)),
            message: message.into(),
        }
    }
}

/// 1-based line and character column of byte `offset` in `src`.
pub fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Parses `src` (the text of `file`) as a `T`, locating any error.
pub fn from_toml<T: DeserializeOwned>(file: &str, src: &str) -> Result<T, FileError> {
    toml::from_str(src).map_err(|e| toml_error(file, src, &e))
}

/// Locates a TOML error in the text it came from.
pub fn toml_error(file: &str, src: &str, e: &toml::de::Error) -> FileError {
    FileError::at(file, src, e.span(), e.message().trim_end_matches('\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u32,
    }

    #[test]
    fn errors_are_located() {
        let e = from_toml::<T>("x.toml", "a = 1\n\nbogus = 2\n").unwrap_err();
        assert_eq!(e.at, Some((3, 1)));
        assert!(e.to_string().starts_with("x.toml:3:1: unknown field `bogus`"), "{e}");
        let e = from_toml::<T>("x.toml", "a = \"one\"").unwrap_err();
        assert_eq!(e.at, Some((1, 5)));
        let e = from_toml::<T>("x.toml", "a = [").unwrap_err();
        assert_eq!(e.at.map(|(l, _)| l), Some(1));
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column("é = 1\nab", 7), (2, 1));
        assert_eq!(line_column("éa", 2), (1, 2));
        assert_eq!(line_column("abc", 99), (1, 4));
    }
}
