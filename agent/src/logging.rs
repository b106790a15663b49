//! Log set-up shared by the agent and the collector: human text or JSON lines on stderr, level
//! from `HOSTWATCH_LOG` (an `EnvFilter` directive, default `info`).
//!
//! Architecture invariant: nothing logs a secret. Secrets are typed ([`crate::config::Secret`]) and
//! their `Debug` is redacted; messages never format a key, token or enroll secret.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, for log shippers.
    Json,
}

/// Installs the global subscriber. A second call (tests, embedded agent) changes nothing.
pub fn init(format: LogFormat) {
    let (filter, bad) = match std::env::var("HOSTWATCH_LOG") {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new("info"),
                Some(format!("HOSTWATCH_LOG={spec:?} is not a valid filter ({e}); using info")),
            ),
        },
        Err(_) => (EnvFilter::new("info"), None),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some(msg) = bad {
        tracing::warn!("{msg}");
    }
}
