//! Log set-up shared by the agent and the collector: human text or JSON lines on stderr, level
//! from `HOSTWATCH_LOG` (an `EnvFilter` directive, default `info`).
//!
//! Logging never blocks or fails the work: lines go through a bounded queue to one writer thread
//! (tracing-appender's non-blocking writer, lossy). A reader that stopped reading (a full pipe)
//! or went away (a closed one) costs dropped lines, never a request that hangs or a shutdown
//! that does not happen.
//!
//! Architecture invariant: nothing logs a secret. Secrets are typed ([`crate::shared::config::Secret`]) and
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

/// Lines queued for the writer thread at most; past it, new lines are dropped.
const QUEUED_LINES: usize = 10_000;

/// Keeps the writer thread; dropping it flushes what is queued. Hold it until the process ends.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs the global subscriber. A second call (tests, embedded agent) changes nothing.
pub fn init(format: LogFormat) -> LogGuard {
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
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("hostwatch-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some(msg) = bad {
        tracing::warn!("{msg}");
    }
    LogGuard(installed.is_ok().then_some(guard))
}
