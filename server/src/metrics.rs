//! What the collector tells its operator on `/metrics`, in the Prometheus text format (0.0.4)
//! through `prometheus-client`. Counters and histograms are updated where things happen (the
//! report and enrollment handlers, the listeners, the store, the alert sinks); the fleet's gauges
//! (hosts by status and coverage, findings by kind, severity and status, each alert sink's
//! backlog, what agents say they lost) are read from the store when scraped, so they are never
//! stale and cost nothing between scrapes.
//!
//! Invariants: every label value comes from a closed set named in this crate (an outcome, a
//! status, a finding kind, a sink the operator configured), never from what an agent sent (a
//! host name, a subject, a path): a hostile agent cannot add series. The endpoint needs an API
//! token: the fleet's findings by kind, served to anyone on the agents' port, would tell an
//! intruder on one host whether it was seen.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use time::OffsetDateTime;

use crate::listen::ConnCounters;
use crate::state::AppState;
use crate::store::{StoreError, StoreTimings};

/// The buckets of every latency histogram: 1 ms to about 33 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    sink: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    status: &'static str,
    coverage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    kind: &'static str,
    severity: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

/// How a report or an enrollment answered with HTTP `status` ended: the `outcome` label.
pub fn outcome(status: u16) -> &'static str {
    match status {
        200 => "accepted",
        400 => "invalid",
        401 | 403 => "unauthorized",
        408 => "too_slow",
        413 => "too_large",
        429 => "throttled",
        503 => "busy",
        _ => "failed",
    }
}

/// Every metric the collector keeps, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reports: Family<OutcomeLabel, Counter>,
    report_seconds: Histogram,
    enrollments: Family<OutcomeLabel, Counter>,
    unknown_fields: Counter,
    alerts: Family<AlertLabels, Counter>,
    reports_lost: Counter,
    body_budget_free: Gauge,
    report_turns_free: Gauge,
    hosts: Family<HostLabels, Gauge>,
    findings: Family<FindingLabels, Gauge>,
    outbox: Family<SinkLabel, Gauge>,
    events_lost: Family<SourceLabel, Gauge>,
    store_memory: Gauge,
    /// One scrape at a time: the gauges are cleared and set again for each.
    scrape: tokio::sync::Mutex<()>,
    /// Refusals are logged at a bounded rate ([`LogLimit`]).
    pub report_refusals: LogLimit,
    pub enrollment_refusals: LogLimit,
}

impl Metrics {
    pub fn new(conns: &ConnCounters, store: &StoreTimings) -> Metrics {
        let mut r = Registry::with_prefix("hostwatch");
        let m = Metrics {
            registry: Registry::default(),
            reports: Family::default(),
            report_seconds: Histogram::new(latency_buckets()),
            enrollments: Family::default(),
            unknown_fields: Counter::default(),
            alerts: Family::default(),
            reports_lost: Counter::default(),
            body_budget_free: Gauge::default(),
            report_turns_free: Gauge::default(),
            hosts: Family::default(),
            findings: Family::default(),
            outbox: Family::default(),
            events_lost: Family::default(),
            store_memory: Gauge::default(),
            scrape: tokio::sync::Mutex::new(()),
            report_refusals: LogLimit::new(Duration::from_secs(10)),
            enrollment_refusals: LogLimit::new(Duration::from_secs(10)),
        };
        r.register(
            "reports",
            "Agents' reports by how they ended: accepted, or refused as invalid (400), unauthorized (401, 403), too_slow (408), too_large (413), throttled (429), busy (503) or failed (500).",
            m.reports.clone(),
        );
        r.register_with_unit(
            "report_duration",
            "Accepted reports, from admission to the answer: reading the body, waiting for a turn, storing and judging.",
            Unit::Seconds,
            m.report_seconds.clone(),
        );
        r.register(
            "enrollments",
            "Enrollments by how they ended (outcomes as for reports).",
            m.enrollments.clone(),
        );
        r.register(
            "unknown_fields",
            "Fields of agent messages this collector does not know (newer agents), ignored.",
            m.unknown_fields.clone(),
        );
        r.register(
            "alert_deliveries",
            "Alert events sent to each sink: delivered, refused by the receiver (skipped), or failed (retried).",
            m.alerts.clone(),
        );
        r.register(
            "agent_reports_lost",
            "Reports agents dropped before sending (a full spool) or that never arrived (gaps in their sequence).",
            m.reports_lost.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed on accept because [limits] max_connections were open.",
            conns.refused_over_cap.clone(),
        );
        r.register(
            "connections_refused_per_address",
            "Connections closed on accept because their address had [limits] max_connections_per_address open.",
            conns.refused_per_address.clone(),
        );
        r.register(
            "tls_handshakes_failed",
            "TLS handshakes that failed or did not finish in time.",
            conns.handshakes_failed.clone(),
        );
        r.register(
            "connections_ended_by_error",
            "Connections ended by an error: a request head too large or too slow, a broken stream.",
            conns.ended_by_error.clone(),
        );
        r.register_with_unit(
            "store_wait",
            "Time store calls waited for the store's connection.",
            Unit::Seconds,
            store.wait.clone(),
        );
        r.register_with_unit(
            "store_transaction",
            "Time store transactions held the store's connection, from begin to commit.",
            Unit::Seconds,
            store.transaction.clone(),
        );
        r.register_with_unit(
            "body_budget_free",
            "Bytes of the budget for request bodies held at once ([limits] max_body_bytes_in_flight) free now.",
            Unit::Bytes,
            m.body_budget_free.clone(),
        );
        r.register(
            "report_turns_free",
            "Full-size reports that could start processing now (of max_concurrent_reports; a small one takes a sixteenth of a turn).",
            m.report_turns_free.clone(),
        );
        r.register("hosts", "Hosts by status and coverage (retired hosts included).", m.hosts.clone());
        r.register(
            "findings",
            "Open and acknowledged findings by kind, severity and status.",
            m.findings.clone(),
        );
        r.register("alert_outbox", "Alert events each sink has not delivered yet.", m.outbox.clone());
        r.register(
            "agent_events_lost",
            "Events the agents of hosts not retired say they lost since they started: exec events (the process connector overflowed) and socket events (the eBPF ring was full).",
            m.events_lost.clone(),
        );
        r.register_with_unit(
            "store_memory",
            "Memory the embedded SQLite store holds in the collector now: page caches and statements of all its connections, bounded by cache_size each (0 on PostgreSQL, whose memory is the database server's).",
            Unit::Bytes,
            m.store_memory.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// A report answered with `status`; `took` counts for accepted ones.
    pub fn report(&self, status: u16, took: Duration) {
        self.reports.get_or_create(&OutcomeLabel { outcome: outcome(status) }).inc();
        if status == 200 {
            self.report_seconds.observe(took.as_secs_f64());
        }
    }

    pub fn enrollment(&self, status: u16) {
        self.enrollments.get_or_create(&OutcomeLabel { outcome: outcome(status) }).inc();
    }

    pub fn unknown_fields(&self, n: u64) {
        self.unknown_fields.inc_by(n);
    }

    /// `outcome`: `delivered`, `refused` or `failed`.
    pub fn alert(&self, sink: &str, outcome: &'static str) {
        self.alerts.get_or_create(&AlertLabels { sink: sink.to_owned(), outcome }).inc();
    }

    pub fn reports_lost(&self, n: u64) {
        self.reports_lost.inc_by(n);
    }

    /// The text of one scrape: the counters as they stand, the fleet's gauges read now.
    pub async fn render(&self, state: &AppState) -> Result<String, StoreError> {
        let _one = self.scrape.lock().await;
        let now = OffsetDateTime::now_utc();
        self.body_budget_free.set(i64::try_from(state.bodies.free()).unwrap_or(i64::MAX));
        self.report_turns_free.set(
            i64::try_from(state.report_permits.available_permits() / crate::state::TURN_SHARES as usize)
                .unwrap_or(i64::MAX),
        );
        let hosts = state.store.list_hosts().await?;
        self.hosts.clear();
        self.events_lost.clear();
        let (mut exec_lost, mut socket_lost) = (0u64, 0u64);
        for h in &hosts {
            let coverage = match (&h.agent.stats, h.agent.coverage_degraded) {
                (None, _) => "unknown",
                (Some(_), true) => "degraded",
                (Some(_), false) => "full",
            };
            let status = h.status(now, state.settings.offline_after).as_str();
            self.hosts.get_or_create(&HostLabels { status, coverage }).inc();
            if h.retired_at.is_none()
                && let Some(s) = &h.agent.stats
            {
                exec_lost = exec_lost.saturating_add(s.events_lost);
                socket_lost = socket_lost.saturating_add(s.socket_events_dropped);
            }
        }
        self.events_lost.get_or_create(&SourceLabel { source: "exec" }).set(gauge(exec_lost));
        self.events_lost.get_or_create(&SourceLabel { source: "socket" }).set(gauge(socket_lost));
        let counts = state.store.fleet_counts().await?;
        self.findings.clear();
        for (kind, severity, status, n) in counts.findings {
            let labels =
                FindingLabels { kind: kind.as_str(), severity: severity.as_str(), status: status.as_str() };
            self.findings.get_or_create(&labels).set(gauge(n));
        }
        self.outbox.clear();
        for (sink, n) in counts.outbox {
            self.outbox.get_or_create(&SinkLabel { sink }).set(gauge(n));
        }
        self.store_memory.set(gauge(counts.memory.unwrap_or_default()));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .map_err(|_| StoreError::Database("cannot encode the metrics".to_owned()))?;
        Ok(out)
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Lines about refusals at a bounded rate: under overload thousands of 503s a second must not
/// become thousands of log lines (nor a log that holds up the answers). The first refusal of each
/// period is logged, with the count of those that were not since the last line.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    pub fn new(every: Duration) -> LogLimit {
        LogLimit { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(n)` when a line may be written now, `n` refusals having gone unlogged before it;
    /// `None` (and counted) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        match s.0 {
            Some(at) if now.duration_since(at) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let unlogged = s.1;
                *s = (Some(now), 0);
                Some(unlogged)
            }
        }
    }
}

/// A refusal's log line, rate-limited by `limit`: what and why, and how many went unlogged.
pub fn log_refusal(limit: &LogLimit, what: &str, status: u16, host_id: Option<i64>, why: &str) {
    if let Some(unlogged) = limit.allow() {
        let mut also = String::new();
        if unlogged > 0 {
            let _ = write!(also, " ({unlogged} more since the last line, not logged)");
        }
        tracing::warn!(status, host_id, why, "{what} refused{also}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_lines_are_bounded_and_say_how_many_they_left_out() {
        let l = LogLimit::new(Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.allow(), None);
        }
        let quick = LogLimit::new(Duration::ZERO);
        assert_eq!((quick.allow(), quick.allow()), (Some(0), Some(0)));
        // The count restarts after each line.
        let l = LogLimit { every: Duration::from_secs(3600), state: Mutex::new((None, 7)) };
        assert_eq!(l.allow(), Some(7));
        assert_eq!(l.allow(), None);
    }

    #[test]
    fn every_status_has_an_outcome_from_a_closed_set() {
        let known =
            ["accepted", "invalid", "unauthorized", "too_slow", "too_large", "throttled", "busy", "failed"];
        for s in 100..600u16 {
            assert!(known.contains(&outcome(s)), "{s}");
        }
        assert_eq!((outcome(413), outcome(429), outcome(503)), ("too_large", "throttled", "busy"));
    }
}
