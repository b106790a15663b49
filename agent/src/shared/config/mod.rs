//! Configuration as both binaries read it: a TOML file ([`file`]) with `HOSTWATCH_*` variables
//! laid over it ([`env`]), remembering where each value came from ([`Sourced`]) so that a refusal
//! ([`ConfigError`]) names the file and key or the variable to fix; secrets typed so that they
//! never print ([`Secret`]); durations and collector URLs parsed one way.

pub mod env;
pub mod file;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Deserializer};

use self::env::{EnvError, EnvKey};
use self::file::FileError;

/// Reads a duration written as `10s`, `1m30s` or `250ms`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("invalid duration {s:?}: {e} (write it as 10s, 5m or 1h)"))
    })
}

/// A secret: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Whether `url` names this machine: `localhost` or a loopback address.
pub fn is_loopback(url: &Url) -> bool {
    url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// Why a configuration is refused: where (the file and key, or the variable) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The I/O error is part of the message, not a `source`, so that `{:#}` does not say it twice.
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("{origin}: {problem}")]
    Invalid { origin: String, problem: String },
}

/// Parses a collector URL: http or https, with a host.
pub fn parse_server_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("invalid URL {s:?}: the scheme must be http or https"));
    }
    if url.host().is_none() {
        return Err(format!("invalid URL {s:?}: no host"));
    }
    Ok(url)
}

/// A configuration file parsed with the environment laid over it, remembering where values came
/// from so that a refusal names the variable or the file and key the user has to fix.
#[derive(Debug)]
pub struct Sourced<T> {
    pub raw: T,
    /// The file's name, or `(defaults)`.
    pub file: String,
    pub applied: env::Applied,
    known: Vec<&'static str>,
}

impl<T: serde::de::DeserializeOwned> Sourced<T> {
    /// Reads `path` (none: an empty file), parses it, lays `vars` over it and parses again. An
    /// error in the file is located in the file; one that only the environment brings is
    /// attributed to the variables that were set.
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
        keys: &[EnvKey],
        also_known: &[&'static str],
    ) -> Result<Sourced<T>, ConfigError> {
        let (file, src) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p)
                    .map_err(|error| ConfigError::Read { path: p.to_owned(), error })?,
            ),
            None => ("(defaults)".to_owned(), String::new()),
        };
        let from_file: T = file::from_toml(&file, &src)?;
        let mut table: toml::Table = file::from_toml(&file, &src)?;
        let applied = env::overlay(&mut table, vars, keys, also_known)?;
        let raw = if applied.set.is_empty() {
            from_file
        } else {
            toml::Value::Table(table).try_into::<T>().map_err(|e| ConfigError::Invalid {
                origin: format!("environment ({})", applied.set.join(", ")),
                problem: e.message().trim_end().to_owned(),
            })?
        };
        let known = keys.iter().map(|k| k.var).chain(also_known.iter().copied()).collect();
        Ok(Sourced { raw, file, applied, known })
    }
}

impl<T> Sourced<T> {
    /// A refusal of the value of `key`, naming `var` where the environment set it.
    pub fn invalid(&self, var: &str, key: &str, problem: String) -> ConfigError {
        let origin = if self.applied.set.contains(&var) {
            var.to_owned()
        } else {
            format!("{}: key `{key}`", self.file)
        };
        ConfigError::Invalid { origin, problem }
    }

    /// A warning for each `HOSTWATCH_*` variable that is neither a key nor otherwise known.
    pub fn warnings(&self) -> Vec<String> {
        self.applied
            .unknown
            .iter()
            .map(|v| {
                format!("unknown environment variable {v} is ignored (known: {})", self.known.join(", "))
            })
            .collect()
    }
}
