//! Alert sinks (`[[alerts]]` in server.toml): each hears of a finding when it opens or reopens
//! (and, where it asks, when it resolves), never again while it stays open.
//!
//! The store's outbox ([`crate::store::Store::alert_events`]) holds every such event, written with
//! the finding itself; each sink reads it from its own cursor, delivers in order, and moves the
//! cursor only after a delivery. A receiver that is down is retried with backoff and loses
//! nothing (the outbox waits; it survives a collector restart). A lease on the cursor lets
//! several collectors on one store deliver each event once. Silenced findings are recorded and
//! skipped here.
//!
//! Invariant: nothing here decides what is a finding or changes one; a sink only reads.

mod sink;

use std::path::PathBuf;
use std::time::Duration;

use hostwatch_proto::v1::Severity;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::model::AlertEvent;
use crate::state::AppState;

pub use sink::Payload;

/// One configured sink. Its `Debug` never shows a webhook's URL (see [`Target::describe`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Unique among the sinks: its cursor in the store is kept under this name.
    pub name: String,
    pub target: Target,
    /// Findings below this severity are not sent.
    pub min_severity: Severity,
    /// Also send resolutions.
    pub resolved: bool,
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("name", &self.name)
            .field("target", &self.target.describe())
            .field("min_severity", &self.min_severity)
            .field("resolved", &self.resolved)
            .finish()
    }
}

/// Where a sink delivers.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// JSON lines appended to a file (created mode 0640).
    File(PathBuf),
    /// JSON lines on the collector's standard output.
    Stdout,
    /// An HTTP POST per event: the JSON payload, or `{"text": ...}` for Slack-compatible hooks.
    Webhook { url: reqwest::Url, slack: bool },
}

/// Events read from the outbox at once.
const BATCH: u32 = 100;
/// How long a collector holds a sink's cursor without renewing it.
const LEASE: Duration = Duration::from_secs(60);
/// How often an idle sink looks at the outbox.
const POLL: Duration = Duration::from_secs(1);
/// Backoff between failed deliveries: doubled from the first, capped, with full jitter. The
/// cap, plus a request's timeout, stays within the lease renewed before each wait, so no other
/// collector takes the sink over while this one retries.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(15);

/// Runs every sink until `shutdown`.
pub async fn run(state: AppState, sinks: Vec<SinkConfig>, shutdown: CancellationToken) {
    if sinks.is_empty() {
        return;
    }
    // This collector, among those sharing the store: host, process, and a random part.
    let holder = format!(
        "{}:{}:{:08x}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "collector".to_owned()),
        std::process::id(),
        rand_u32()
    );
    let tasks: Vec<_> = sinks
        .into_iter()
        .map(|s| {
            info!(sink = %s.name, target = %s.target.describe(), "alert sink configured");
            tokio::spawn(deliver(state.clone(), s, holder.clone(), shutdown.clone()))
        })
        .collect();
    for t in tasks {
        if let Err(e) = t.await {
            error!(error = %e, "an alert sink ended abnormally");
        }
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

/// One sink's loop: lease the cursor, read, deliver in order, advance.
async fn deliver(state: AppState, sink: SinkConfig, holder: String, shutdown: CancellationToken) {
    let mut out = match sink::Sender::new(&sink.target) {
        Ok(s) => s,
        Err(e) => return error!(sink = %sink.name, error = %e, "alert sink cannot start"),
    };
    let pause = |d: Duration| {
        let stop = shutdown.clone();
        async move {
            tokio::select! {
                () = stop.cancelled() => false,
                () = tokio::time::sleep(d) => true,
            }
        }
    };
    'lease: loop {
        if shutdown.is_cancelled() {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let cursor = match state.store.lease_alert_cursor(&sink.name, &holder, now, now + LEASE).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                debug!(sink = %sink.name, "another collector delivers this sink");
                if !pause(LEASE / 4).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                error!(sink = %sink.name, error = %e, "cannot read the alert cursor");
                if !pause(POLL * 5).await {
                    return;
                }
                continue;
            }
        };
        let events = match state.store.alert_events(cursor, BATCH).await {
            Ok(e) => e,
            Err(e) => {
                error!(sink = %sink.name, error = %e, "cannot read the alert outbox");
                if !pause(POLL * 5).await {
                    return;
                }
                continue;
            }
        };
        if events.is_empty() {
            if !pause(POLL).await {
                return;
            }
            continue;
        }
        let leased_at = std::time::Instant::now();
        for e in events {
            if wanted(&sink, &e) {
                let mut wait = RETRY_FIRST;
                loop {
                    match out.send(&Payload::of(&e)).await {
                        Ok(()) => {
                            state.metrics.alert(&sink.name, "delivered");
                            break;
                        }
                        Err(sink::SendError::Refused(why)) => {
                            state.metrics.alert(&sink.name, "refused");
                            // The receiver says this payload is wrong: retrying will not help.
                            error!(sink = %sink.name, finding = e.finding.id, event = %e.event, why = %why, "alert refused by the receiver; skipped");
                            break;
                        }
                        Err(sink::SendError::Failed(why)) => {
                            state.metrics.alert(&sink.name, "failed");
                            warn!(sink = %sink.name, finding = e.finding.id, why = %why, retry_in = ?wait, "alert not delivered; retrying");
                            // Keep the cursor ours while the receiver is down; if it is not ours
                            // any more (or cannot be told), start over from the cursor, this
                            // event not delivered.
                            let now = OffsetDateTime::now_utc();
                            match state.store.lease_alert_cursor(&sink.name, &holder, now, now + LEASE).await
                            {
                                Ok(Some(_)) => {}
                                Ok(None) => continue 'lease,
                                Err(err) => {
                                    error!(sink = %sink.name, error = %err, "cannot renew the alert cursor's lease");
                                    continue 'lease;
                                }
                            }
                            if !pause(jitter(wait)).await {
                                return;
                            }
                            wait = (wait * 2).min(RETRY_CAP);
                        }
                    }
                }
            }
            match state.store.advance_alert_cursor(&sink.name, &holder, e.id).await {
                Ok(true) => {}
                Ok(false) => break, // the lease went to another collector: start over
                Err(err) => {
                    error!(sink = %sink.name, error = %err, "cannot move the alert cursor");
                    break;
                }
            }
            if leased_at.elapsed() > LEASE / 2 {
                break; // renew before going on
            }
        }
    }
}

/// Whether `sink` is to hear of `e`.
fn wanted(sink: &SinkConfig, e: &AlertEvent) -> bool {
    !e.silenced && e.finding.severity >= sink.min_severity && (e.event != "resolved" || sink.resolved)
}

/// A random wait in `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(f64::from(rand_u32()) / f64::from(u32::MAX))
}

impl Target {
    /// For logs: never a webhook's path or query, which often carry its secret.
    pub fn describe(&self) -> String {
        match self {
            Target::File(p) => format!("file {}", p.display()),
            Target::Stdout => "stdout".to_owned(),
            Target::Webhook { url, slack } => format!(
                "{}webhook {}://{}",
                if *slack { "slack " } else { "" },
                url.scheme(),
                url.host_str().unwrap_or("?")
            ),
        }
    }
}
