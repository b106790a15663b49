//! The embedded store: one SQLite file in WAL mode.
//!
//! One writing connection on a thread of its own (SQLite has one writer at a time anyway), which
//! commits the writes queued meanwhile together, and a few reading ones (WAL lets them read a
//! committed state while the writer writes), so that reads (an agent's key, a host's state, the
//! API's listings) run on the other core instead of queueing behind writes
//! ([`connections`]). Each trait method is atomic: a write in its own savepoint of a batch, a read
//! in a transaction on a reader (which sees every write committed before it began).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use hostwatch_proto::v1::timestamp;
use hostwatch_proto::v1::{AuditEntry, FindingKind, FindingStatus, Severity};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use time::OffsetDateTime;

use self::connections::{Readers, Writer};
use super::state_changes::{ReportStep, Sequence};
use super::{
    BaselineRecord, Enrollment, FindingFilter, HistoryFilter, NewCredential, Page, QueryRows, QueryTerms,
    ReportOutcome, ReportTerms, Result, SecretRecord, StateFilter, Store, StoreError, TokenRecord, Verdict,
};
use crate::findings;
use crate::model::{
    AgentInfo, AlertEvent, Applied, Content, ExecExplained, Finding, FindingChange, Host, HostFacts,
    HostState, Observation, PeerItems, ProcessEvent, Recorded, ReportRecord, Silence, SocketEvent,
};
use hostwatch_proto::v1::Located;

pub mod addresses;
mod connections;
mod credentials;
mod files;
mod listing;
pub mod query;
mod state;
mod triage;

/// Schema migrations, applied in order; each runs once, in a transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_init.sql")),
    (2, include_str!("migrations/sqlite/0002_connections.sql")),
    (3, include_str!("migrations/sqlite/0003_history.sql")),
    (4, include_str!("migrations/sqlite/0004_agent_stats.sql")),
    (5, include_str!("migrations/sqlite/0005_process_facts.sql")),
    (6, include_str!("migrations/sqlite/0006_cloud.sql")),
    (7, include_str!("migrations/sqlite/0007_files.sql")),
    (8, include_str!("migrations/sqlite/0008_files_metadata_only.sql")),
    (9, include_str!("migrations/sqlite/0009_process_rules.sql")),
    (10, include_str!("migrations/sqlite/0010_triage_and_alerts.sql")),
    (11, include_str!("migrations/sqlite/0011_occurrences.sql")),
    (12, include_str!("migrations/sqlite/0012_exe_replacement.sql")),
    (13, include_str!("migrations/sqlite/0013_credentials.sql")),
    (14, include_str!("migrations/sqlite/0014_sessions.sql")),
    (15, include_str!("migrations/sqlite/0015_verified_instance.sql")),
    (16, include_str!("migrations/sqlite/0016_lineage.sql")),
    (17, include_str!("migrations/sqlite/0017_login_user.sql")),
    (18, include_str!("migrations/sqlite/0018_explained_execs.sql")),
    (19, include_str!("migrations/sqlite/0019_history_at.sql")),
    (20, include_str!("migrations/sqlite/0020_fleet_queries.sql")),
    (21, include_str!("migrations/sqlite/0021_socket_keys.sql")),
    (22, include_str!("migrations/sqlite/0022_start_keys.sql")),
    (23, include_str!("migrations/sqlite/0023_processes_by_host.sql")),
    (24, include_str!("migrations/sqlite/0024_listener_auth.sql")),
];

/// Reading connections at most: one per core is enough for CPU-bound reads; a few more keep the
/// API answering while a long listing runs.
const READERS: usize = 4;

/// Analysts' queries running at once, on connections of their own: a heavy query waits for
/// another to end rather than taking the store's readers.
const QUERIES: usize = 2;

/// Prepared statements kept per connection: more than the store's distinct statements, so that a
/// report never parses SQL again (the default of 16 made every report prepare most of its own).
const STATEMENT_CACHE: usize = 256;

#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Writer>,
    /// `None` for an in-memory database (one connection sees it): reads then go to the writer.
    readers: Option<Arc<Readers>>,
    /// Analysts' read-only SQL ([`query`]); `None` for an in-memory database, which refuses it.
    queries: Option<Arc<Readers>>,
    timings: super::StoreTimings,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == C::DiskFull => StoreError::Full(e.to_string()),
            rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, C::DatabaseBusy | C::DatabaseLocked) => {
                StoreError::Busy(e.to_string())
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl SqliteStore {
    /// Opens (creating it mode 0600 if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if !path.exists() {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Database(format!("cannot create {}: {e}", path.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
        let mut store = Self::setup(conn, true)?;
        store.readers = Some(Arc::new(Readers::new(path.to_owned(), READERS)));
        store.queries = Some(Arc::new(Readers::with_opener(path.to_owned(), QUERIES, query::open)));
        Ok(store)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<SqliteStore> {
        Self::setup(Connection::open_in_memory()?, false)
    }

    fn setup(mut conn: Connection, wal: bool) -> Result<SqliteStore> {
        connections::tune(&conn)?;
        if wal {
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Database(format!("cannot switch to WAL mode (got {mode})")));
            }
        }
        // The writer's page cache: a fleet's store is gigabytes, and each report's rows land at
        // several places of several indexes; SQLite's default of 2 MiB re-read pages a write had
        // just evicted. 16 MiB: 64 MiB cost the collector as much RSS at 5,000 agents and no
        // latency.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -16384;",
        )?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            writer: Arc::new(Writer::start(conn)?),
            readers: None,
            queries: None,
            timings: super::StoreTimings::default(),
        })
    }

    /// Runs `f` as one write: atomic on its own, committed with the writes queued beside it.
    async fn tx<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        self.writer.write(&self.timings, f).await
    }

    /// Runs `f` in one read transaction on a reading connection (on the writer for an in-memory
    /// database). It sees everything committed before it began, and can change nothing.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        match &self.readers {
            Some(readers) => readers.read(f).await,
            None => self.tx(f).await,
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")?;
    let current: i64 =
        conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StoreError::TooNew { found: current, known });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, ts(OffsetDateTime::now_utc())],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

fn ts(t: OffsetDateTime) -> String {
    timestamp::format(t)
}

fn parse_ts(s: &str) -> Result<OffsetDateTime> {
    timestamp::parse(s).map_err(|e| StoreError::Corrupt(format!("timestamp {s:?}: {e}")))
}

fn opt_ts(s: Option<String>) -> Result<Option<OffsetDateTime>> {
    s.as_deref().map(parse_ts).transpose()
}

fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A nullable JSON column.
fn opt_json<T: serde::de::DeserializeOwned>(s: Option<String>, what: &str) -> Result<Option<T>> {
    s.as_deref().map(|s| json(s, what)).transpose()
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

/// `('open', 'acknowledged')`: [`findings::LIVE`] as SQL, for the queries that pick the findings
/// still in play.
fn live_statuses() -> &'static str {
    static LIVE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let quoted: Vec<String> = findings::LIVE.iter().map(|s| format!("'{}'", s.as_str())).collect();
        format!("({})", quoted.join(", "))
    });
    &LIVE
}

use super::parse_enum;

const HOST_COLUMNS: &str = "h.id, h.hostname, h.machine_id, h.os, h.kernel, h.arch, h.boot_time, h.tags, h.agent_version, \
     h.interval_secs, h.coverage_degraded, h.coverage_why, h.workload, h.enrolled_at, h.last_seen, h.last_seq, h.goodbye, \
     h.retired_at, (SELECT COUNT(*) FROM findings f WHERE f.host_id = h.id AND f.status = 'open'), h.agent_stats, h.cloud, \
     h.reported_tags";

fn host_from_row(r: &Row<'_>) -> Result<Host> {
    Ok(Host {
        id: r.get(0)?,
        facts: HostFacts {
            hostname: r.get(1)?,
            machine_id: r.get(2)?,
            os: r.get(3)?,
            kernel: r.get(4)?,
            arch: r.get(5)?,
            boot_time: opt_ts(r.get(6)?)?,
            tags: json(&r.get::<_, String>(7)?, "host tags")?,
            reported_tags: json(&r.get::<_, String>(21)?, "host reported tags")?,
            cloud: opt_json(r.get(20)?, "cloud facts")?,
        },
        agent: AgentInfo {
            version: r.get(8)?,
            interval_secs: r.get(9)?,
            coverage_degraded: r.get(10)?,
            coverage_why: json(&r.get::<_, String>(11)?, "coverage")?,
            // What the agent says of itself, as this version reads it: a value stored by another
            // version that does not read is left out rather than make the host unreadable.
            stats: r.get::<_, Option<String>>(19)?.and_then(|s| serde_json::from_str(&s).ok()),
        },
        workload: r.get(12)?,
        enrolled_at: parse_ts(&r.get::<_, String>(13)?)?,
        last_seen: opt_ts(r.get(14)?)?,
        last_seq: r.get::<_, i64>(15)?.try_into().unwrap_or_default(),
        goodbye: r.get(16)?,
        retired_at: opt_ts(r.get(17)?)?,
        open_findings: r.get::<_, i64>(18)?.try_into().unwrap_or_default(),
    })
}

const FINDING_COLUMNS: &str = "f.id, f.host_id, h.hostname, f.kind, f.rule, f.severity, f.subject, f.detail, f.status, \
     f.first_seen, f.last_seen, f.resolved_at, f.silenced_by, f.acked_by, f.acked_at, f.ack_note, f.occurrences, \
     f.transient";

fn finding_from_row(r: &Row<'_>) -> Result<Finding> {
    finding_from_row_at(r, 0)
}

/// A finding from [`FINDING_COLUMNS`] starting at column `at`.
fn finding_from_row_at(r: &Row<'_>, at: usize) -> Result<Finding> {
    let rule: String = r.get(at + 4)?;
    Ok(Finding {
        id: r.get(at)?,
        host_id: r.get(at + 1)?,
        hostname: r.get(at + 2)?,
        kind: parse_enum::<FindingKind>(&r.get::<_, String>(at + 3)?)?,
        rule: (!rule.is_empty()).then_some(rule),
        severity: parse_enum::<Severity>(&r.get::<_, String>(at + 5)?)?,
        subject: r.get(at + 6)?,
        detail: json(&r.get::<_, String>(at + 7)?, "finding detail")?,
        status: parse_enum::<FindingStatus>(&r.get::<_, String>(at + 8)?)?,
        first_seen: parse_ts(&r.get::<_, String>(at + 9)?)?,
        last_seen: parse_ts(&r.get::<_, String>(at + 10)?)?,
        resolved_at: opt_ts(r.get(at + 11)?)?,
        silenced: r.get::<_, Option<i64>>(at + 12)?.is_some(),
        acked_by: r.get(at + 13)?,
        acked_at: opt_ts(r.get(at + 14)?)?,
        ack_note: r.get(at + 15)?,
        occurrences: r.get::<_, i64>(at + 16)?.try_into().unwrap_or_default(),
        transient: r.get(at + 17)?,
    })
}

/// Resolves a host's open and acknowledged findings (of `kind`, or all).
fn resolve_where(
    tx: &Transaction<'_>,
    host_id: i64,
    kind: Option<FindingKind>,
    now: &str,
) -> Result<Vec<FindingChange>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT id, kind, subject FROM findings WHERE host_id = ?1 AND status IN {} \
         AND (?2 IS NULL OR kind = ?2)",
        live_statuses()
    ))?;
    let open: Vec<(i64, String, String)> = stmt
        .query_map(params![host_id, kind.map(FindingKind::as_str)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut changes = Vec::new();
    for (id, kind, subject) in open {
        changes.push(resolve(tx, host_id, id, &kind, subject, now)?);
    }
    Ok(changes)
}

/// Resolves one finding and puts the resolution in the outbox.
fn resolve(
    tx: &Transaction<'_>,
    host_id: i64,
    id: i64,
    kind: &str,
    subject: String,
    now: &str,
) -> Result<FindingChange> {
    tx.execute("UPDATE findings SET status = 'resolved', resolved_at = ?1 WHERE id = ?2", params![now, id])?;
    let silenced = triage::active_silence(tx, host_id, now)?.is_some();
    triage::alert_event(tx, id, "resolved", silenced, now)?;
    Ok(FindingChange::Resolved { id, kind: parse_enum(kind)?, subject })
}

/// Applies the engine's observations of one host (one transaction's worth): each opens,
/// refreshes or reopens its finding as [`findings::step`] decides, within the host's budget of
/// new findings (`limit` a minute); what the budget holds back is counted in the host's
/// `findings_held_back` finding. Returns the changes and the keys of every finding observed.
fn apply_observations(
    tx: &Transaction<'_>,
    host_id: i64,
    observed: &[Observation],
    limit: u32,
    now: OffsetDateTime,
) -> Result<(Vec<FindingChange>, FindingKeys)> {
    let now_s = ts(now);
    // Openings in the window, counted as the findings module counts them.
    let mut stmt =
        tx.prepare_cached("SELECT kind, rule, severity FROM findings WHERE host_id = ?1 AND opened_at > ?2")?;
    let mut rows = stmt.query(params![host_id, ts(now - findings::BUDGET_WINDOW)])?;
    let mut used = 0u32;
    while let Some(r) = rows.next()? {
        let (kind, rule, severity): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if findings::counts_against_budget(parse_enum(&kind)?, !rule.is_empty(), parse_enum(&severity)?) {
            used = used.saturating_add(1);
        }
    }
    drop(rows);
    drop(stmt);
    let mut budget = findings::Budget::new(limit, used);
    let mut changes = Vec::new();
    let mut seen = HashSet::new();
    let mut held = 0u64;
    for o in observed {
        let (kind, rule, subject) = o.key();
        seen.insert((kind.as_str().to_owned(), rule.to_owned(), subject.to_owned()));
        match upsert_finding(tx, host_id, o, &mut budget, &now_s)? {
            Upsert::Changed(c) => changes.extend(c),
            Upsert::HeldBack => held += o.occurrences,
        }
    }
    if held > 0 {
        let count = findings::held_back(held, budget, host_id, now);
        if let Upsert::Changed(c) = upsert_finding(tx, host_id, &count, &mut budget, &now_s)? {
            changes.extend(c);
        }
    }
    Ok((changes, seen))
}

/// Keys of findings as stored: (kind, rule or empty, subject).
type FindingKeys = HashSet<(String, String, String)>;

/// What [`upsert_finding`] did.
enum Upsert {
    /// Opened, reopened or refreshed: the change alert sinks hear of, if any.
    Changed(Option<FindingChange>),
    /// Past the host's budget: nothing written.
    HeldBack,
}

/// Opens a finding for an observation, refreshes it, or reopens it, as [`findings::step`] decides.
fn upsert_finding(
    tx: &Transaction<'_>,
    host_id: i64,
    o: &Observation,
    budget: &mut findings::Budget,
    now: &str,
) -> Result<Upsert> {
    let (kind, rule, subject) = o.key();
    let kind = kind.as_str();
    let existing: Option<(i64, String, String, bool)> = tx
        .prepare_cached(
            "SELECT id, status, severity, transient FROM findings \
             WHERE host_id = ?1 AND kind = ?2 AND rule = ?3 AND subject = ?4",
        )?
        .query_row(params![host_id, kind, rule, subject], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let existing = match existing {
        None => None,
        Some((id, status, severity, transient)) => Some((
            id,
            findings::Existing {
                status: parse_enum::<FindingStatus>(&status)?,
                severity: parse_enum::<Severity>(&severity)?,
                transient,
            },
        )),
    };
    let stored = match &existing {
        Some((id, _)) if findings::accumulates(o.kind) => tx
            .prepare_cached("SELECT detail FROM findings WHERE id = ?1")?
            .query_row([id], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok()),
        _ => None,
    };
    let detail = to_json(&findings::detail_after(stored.as_ref(), o));
    // An observation stands for at least the one occurrence that made its finding.
    let new_occurrences = i64::try_from(o.occurrences).unwrap_or(i64::MAX);
    Ok(match (findings::step(existing.as_ref().map(|e| &e.1), o, budget), existing) {
        (findings::Step::HoldBack, _) => Upsert::HeldBack,
        (findings::Step::Open, _) => {
            let silence = triage::active_silence(tx, host_id, now)?;
            tx.prepare_cached(
                "INSERT INTO findings (host_id, kind, rule, severity, subject, detail, status, first_seen, last_seen, \
                 opened_at, silenced_by, occurrences, transient) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7, ?7, ?7, ?8, MAX(?9, 1), ?10)",
            )?
            .execute(params![
                host_id,
                kind,
                rule,
                o.severity.as_str(),
                subject,
                detail,
                now,
                silence,
                new_occurrences,
                o.transient
            ])?;
            let id = tx.last_insert_rowid();
            triage::alert_event(tx, id, "opened", silence.is_some(), now)?;
            Upsert::Changed(Some(FindingChange::Opened { id, kind: o.kind, subject: o.subject.clone() }))
        }
        (findings::Step::Reopen, Some((id, _))) => {
            let silence = triage::active_silence(tx, host_id, now)?;
            tx.prepare_cached(
                "UPDATE findings SET status = 'open', severity = ?1, detail = ?2, last_seen = ?3, opened_at = ?3, \
                 resolved_at = NULL, times_opened = times_opened + 1, silenced_by = ?5, acked_by = NULL, \
                 acked_at = NULL, ack_note = NULL, occurrences = occurrences + ?6, transient = transient OR ?7 \
                 WHERE id = ?4",
            )?
            .execute(params![o.severity.as_str(), detail, now, id, silence, new_occurrences, o.transient])?;
            triage::alert_event(tx, id, "reopened", silence.is_some(), now)?;
            Upsert::Changed(Some(FindingChange::Reopened { id, kind: o.kind, subject: o.subject.clone() }))
        }
        (findings::Step::Refresh { escalated }, Some((id, _))) => {
            tx.prepare_cached(
                "UPDATE findings SET severity = ?1, detail = ?2, last_seen = ?3, occurrences = occurrences + ?5, \
                 transient = transient OR ?6 WHERE id = ?4",
            )?
            .execute(params![o.severity.as_str(), detail, now, id, new_occurrences, o.transient])?;
            if escalated {
                let silenced = triage::active_silence(tx, host_id, now)?.is_some();
                triage::alert_event(tx, id, "escalated", silenced, now)?;
            }
            Upsert::Changed(None)
        }
        (findings::Step::Reopen | findings::Step::Refresh { .. }, None) => {
            return Err(StoreError::Database("a finding to update that does not exist".to_owned()));
        }
    })
}

/// The report's own part of [`Store::record_report`]: facts, status, content by sequence number.
fn apply_report(
    tx: &Transaction<'_>,
    host_id: i64,
    report: &ReportRecord,
    now: OffsetDateTime,
) -> Result<(Applied, Recorded)> {
    let (session, last_seq, prior): (i64, i64, Option<i64>) = tx
        .query_row("SELECT session, last_seq, prior_session FROM hosts WHERE id = ?1", [host_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("host {host_id}")))?;
    let step = ReportStep::of(
        Sequence { session: session as u64, last_seq: last_seq as u64, prior: prior.map(|p| p as u64) },
        report.session,
        report.seq,
        report.backlog,
    );
    if step.new_session {
        state::new_session(tx, host_id)?;
    }
    let outcome = step.applied(&report.content);
    let mut recorded = Recorded::default();
    if !step.replay {
        match &report.content {
            Content::Snapshot(st) => {
                recorded = state::replace(tx, host_id, st, now, !step.first, step.judging)?
            }
            Content::Delta(d) => recorded = state::apply(tx, host_id, d, now, !step.first, step.judging)?,
            Content::Heartbeat => {}
        }
    } else {
        // Sent before and applied then: it changes nothing now, facts included (a replay
        // must not put back a hostname or tags the host has since changed). It does show
        // the host alive.
        tx.execute("UPDATE hosts SET last_seen = ?1 WHERE id = ?2", params![ts(now), host_id])?;
        return Ok((outcome, recorded));
    }
    let f = &report.facts;
    tx.execute(
        "UPDATE hosts SET hostname = ?1, os = ?2, kernel = ?3, arch = ?4, boot_time = ?5, tags = ?6, agent_version = ?7, \
         interval_secs = ?8, coverage_degraded = ?9, coverage_why = ?10, last_seen = ?11, goodbye = ?12, \
         agent_stats = COALESCE(?14, agent_stats), cloud = ?15, instance_id = ?16, reported_tags = ?17 WHERE id = ?13",
        params![
            f.hostname,
            f.os,
            f.kernel,
            f.arch,
            f.boot_time.map(ts),
            to_json(&f.tags),
            report.agent.version,
            report.agent.interval_secs,
            report.agent.coverage_degraded,
            to_json(&report.agent.coverage_why),
            ts(now),
            report.goodbye,
            host_id,
            report.agent.stats.as_ref().map(to_json),
            f.cloud.as_ref().map(to_json),
            f.cloud.as_ref().map(|c| c.instance_id.clone()),
            to_json(&f.reported_tags)
        ],
    )?;
    tx.execute(
        "UPDATE hosts SET session = ?1, last_seq = ?2, prior_session = ?3 WHERE id = ?4",
        params![
            step.after.session as i64,
            i64::try_from(step.after.last_seq).unwrap_or(i64::MAX),
            step.after.prior.map(|p| p as i64),
            host_id
        ],
    )?;
    recorded.sessions_alternate = step.came_back.then_some((session as u64, report.session));
    Ok((outcome, recorded))
}

/// Records why each of `explained` (execs in the host's history) needed no finding.
fn explain_execs(tx: &Transaction<'_>, host_id: i64, explained: &[ExecExplained]) -> Result<()> {
    if explained.is_empty() {
        return Ok(());
    }
    // The exec's row was written by the report that judged it, at about its start: the
    // (host, at) index finds it among the host's last minutes.
    let mut stmt = tx.prepare_cached(
        "UPDATE process_events SET explained = ?1 WHERE host_id = ?2 AND at >= ?3 AND pid = ?4 \
         AND start_time = ?5 AND kind = 'exec'",
    )?;
    for e in explained {
        let since = e.start_time - time::Duration::minutes(10);
        stmt.execute(params![e.why, host_id, ts(since), e.pid, ts(e.start_time)])?;
    }
    Ok(())
}

/// One host as the listings show it.
fn host_in(tx: &Transaction<'_>, id: i64) -> Result<Option<Host>> {
    let mut stmt = tx.prepare_cached(&format!("SELECT {HOST_COLUMNS} FROM hosts h WHERE h.id = ?1"))?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(r) => Ok(Some(host_from_row(r)?)),
        None => Ok(None),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn count_api_tokens(&self) -> Result<u64> {
        self.read(|tx| {
            Ok(tx.query_row("SELECT COUNT(*) FROM api_tokens WHERE revoked_at IS NULL", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
        })
        .await
    }

    async fn create_api_token(&self, new: &NewCredential<'_>, role: &str) -> Result<TokenRecord> {
        let (name, hash, by, role) =
            (new.name.to_owned(), new.hash.to_owned(), new.created_by.to_owned(), role.to_owned());
        let (expires_at, now) = (new.expires_at, new.now);
        self.tx(move |tx| {
            let new = NewCredential { name: &name, hash: &hash, created_by: &by, expires_at, now };
            credentials::create_token(tx, &new, &role)
        })
        .await
    }

    async fn find_api_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let hash = hash.to_owned();
        self.read(move |tx| credentials::find_token(tx, &hash)).await
    }

    async fn api_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(credentials::tokens).await
    }

    async fn revoke_api_token(
        &self,
        id: i64,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<TokenRecord>> {
        let actor = actor.to_owned();
        self.tx(move |tx| credentials::revoke_token(tx, id, &actor, now)).await
    }

    async fn count_enroll_secrets(&self) -> Result<u64> {
        self.read(|tx| {
            Ok(tx.query_row("SELECT COUNT(*) FROM enroll_secrets WHERE revoked_at IS NULL", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
        })
        .await
    }

    async fn create_enroll_secret(
        &self,
        new: &NewCredential<'_>,
        tags: &BTreeMap<String, String>,
    ) -> Result<SecretRecord> {
        let (name, hash, by, tags) =
            (new.name.to_owned(), new.hash.to_owned(), new.created_by.to_owned(), tags.clone());
        let (expires_at, now) = (new.expires_at, new.now);
        self.tx(move |tx| {
            let new = NewCredential { name: &name, hash: &hash, created_by: &by, expires_at, now };
            credentials::create_secret(tx, &new, &tags)
        })
        .await
    }

    async fn find_enroll_secret(&self, hash: &str) -> Result<Option<SecretRecord>> {
        let hash = hash.to_owned();
        self.read(move |tx| credentials::find_secret(tx, &hash)).await
    }

    async fn enroll_secrets(&self) -> Result<Vec<SecretRecord>> {
        self.read(credentials::secrets).await
    }

    async fn revoke_enroll_secret(
        &self,
        id: i64,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<SecretRecord>> {
        let actor = actor.to_owned();
        self.tx(move |tx| credentials::revoke_secret(tx, id, &actor, now)).await
    }

    async fn revoke_host_keys(&self, host_id: i64, actor: &str, now: OffsetDateTime) -> Result<Option<u64>> {
        let actor = actor.to_owned();
        self.tx(move |tx| credentials::revoke_host_keys(tx, host_id, &actor, now)).await
    }

    async fn find_node_key(&self, hash: &str) -> Result<Option<i64>> {
        let hash = hash.to_owned();
        self.read(move |tx| {
            Ok(tx
                .query_row(
                    "SELECT k.host_id FROM node_keys k JOIN hosts h ON h.id = k.host_id \
                     WHERE k.key_hash = ?1 AND k.revoked_at IS NULL AND h.retired_at IS NULL",
                    [hash],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn enroll_host(&self, e: &Enrollment<'_>) -> Result<i64> {
        let (facts, version, hash) = (e.facts.clone(), e.agent_version.to_owned(), e.key_hash.to_owned());
        let (enroll_secret, verified, now) = (e.enroll_secret, e.verified_instance.map(str::to_owned), e.now);
        self.tx(move |tx| {
            // Always a new host: a claimed machine id is not proof of being that machine, so an
            // enrollment never takes over a host that exists (the engine flags the duplicate).
            tx.execute(
                "INSERT INTO hosts (hostname, machine_id, os, kernel, arch, boot_time, tags, agent_version, enrolled_at, \
                 cloud, instance_id, reported_tags, enroll_secret_id, verified_instance_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    facts.hostname,
                    facts.machine_id,
                    facts.os,
                    facts.kernel,
                    facts.arch,
                    facts.boot_time.map(ts),
                    to_json(&facts.tags),
                    version,
                    ts(now),
                    facts.cloud.as_ref().map(to_json),
                    facts.cloud.as_ref().map(|c| c.instance_id.clone()),
                    to_json(&facts.reported_tags),
                    enroll_secret,
                    verified
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO node_keys (key_hash, host_id, created_at) VALUES (?1, ?2, ?3)",
                params![hash, id, ts(now)],
            )?;
            Ok(id)
        })
        .await
    }

    async fn verified_instance(&self, host_id: i64) -> Result<Option<String>> {
        self.read(move |tx| {
            Ok(tx
                .query_row("SELECT verified_instance_id FROM hosts WHERE id = ?1", [host_id], |r| r.get(0))
                .optional()?
                .flatten())
        })
        .await
    }

    async fn host_turn(&self, _host_id: i64) -> Result<Option<super::Turn>> {
        // One collector per SQLite file: its own turn is the only one.
        Ok(None)
    }

    async fn chores_turn(&self) -> Result<Option<super::Turn>> {
        Ok(Some(Box::new(())))
    }

    async fn record_report(
        &self,
        host_id: i64,
        mut report: ReportRecord,
        now: OffsetDateTime,
        terms: ReportTerms,
    ) -> Result<ReportOutcome> {
        self.tx(move |tx| {
            let missing = || StoreError::NotFound(format!("host {host_id}"));
            let tags_before = credentials::host_tags(tx, host_id)?.ok_or_else(missing)?;
            if let Some(judge) = terms.judge_tags {
                report.facts.tags = judge(&tags_before);
            }
            let (applied, recorded) = apply_report(tx, host_id, &report, now)?;
            let now_s = ts(now);
            let mut changes = Vec::new();
            for kind in &terms.resolves {
                changes.extend(resolve_where(tx, host_id, Some(*kind), &now_s)?);
            }
            if let Some(findings_for) = terms.findings_for {
                let observed = findings_for(&applied, &recorded);
                if !observed.is_empty() {
                    changes.extend(apply_observations(tx, host_id, &observed, terms.limit, now)?.0);
                }
            }
            let host = host_in(tx, host_id)?.ok_or_else(missing)?;
            Ok(ReportOutcome { applied, recorded, tags_before, host, changes })
        })
        .await
    }

    async fn host_state(&self, host_id: i64) -> Result<HostState> {
        self.read(move |tx| state::load(tx, host_id)).await
    }

    async fn apply_verdict(
        &self,
        host_id: i64,
        verdict: Verdict,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<Vec<FindingChange>> {
        self.tx(move |tx| {
            tx.execute("UPDATE hosts SET workload = ?1 WHERE id = ?2", params![verdict.workload, host_id])?;
            let (mut changes, seen) = apply_observations(tx, host_id, &verdict.observed, limit, now)?;
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT id, kind, rule, subject, transient FROM findings WHERE host_id = ?1 AND status IN {}",
                live_statuses()
            ))?;
            let open: Vec<(i64, String, String, String, bool)> = stmt
                .query_map([host_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let now_s = ts(now);
            for (id, kind, rule, subject, transient) in open {
                let k = parse_enum::<FindingKind>(&kind)?;
                if findings::resolves_by_absence(k, transient, &verdict.state_kinds)
                    && !seen.contains(&(kind.clone(), rule, subject.clone()))
                {
                    changes.push(resolve(tx, host_id, id, &kind, subject, &now_s)?);
                }
            }
            if !verdict.kept.is_empty() {
                changes.extend(apply_observations(tx, host_id, &verdict.kept, limit, now)?.0);
            }
            explain_execs(tx, host_id, &verdict.explained)?;
            Ok(changes)
        })
        .await
    }

    async fn list_hosts(&self) -> Result<Vec<Host>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!("SELECT {HOST_COLUMNS} FROM hosts h ORDER BY h.id"))?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(host_from_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn fleet_counts(&self) -> Result<super::FleetCounts> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT kind, severity, status, count(*) FROM findings \
                 WHERE status IN {} GROUP BY kind, severity, status ORDER BY kind, severity, status",
                live_statuses()
            ))?;
            let rows: Vec<(String, String, String, i64)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut findings = Vec::with_capacity(rows.len());
            for (kind, severity, status, n) in rows {
                findings.push((
                    parse_enum(&kind)?,
                    parse_enum(&severity)?,
                    parse_enum(&status)?,
                    u64::try_from(n).unwrap_or_default(),
                ));
            }
            let mut stmt = tx.prepare_cached(
                "SELECT c.sink, (SELECT count(*) FROM alert_events e WHERE e.id > c.last_id) \
                 FROM alert_cursors c ORDER BY c.sink",
            )?;
            let outbox = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or_default()))
                })?
                .collect::<rusqlite::Result<_>>()?;
            // SAFETY: sqlite3_memory_used takes nothing and reads SQLite's own counter, which it
            // keeps under its own mutex; it is callable from any thread at any time.
            #[allow(unsafe_code)]
            let memory = unsafe { rusqlite::ffi::sqlite3_memory_used() };
            Ok(super::FleetCounts { findings, outbox, memory: u64::try_from(memory).ok() })
        })
        .await
    }

    fn timings(&self) -> super::StoreTimings {
        self.timings.clone()
    }

    async fn host(&self, id: i64) -> Result<Option<Host>> {
        self.read(move |tx| host_in(tx, id)).await
    }

    async fn hosts_with_machine_id(&self, machine_id: &str, instance_id: Option<&str>) -> Result<Vec<i64>> {
        let (machine_id, instance_id) = (machine_id.to_owned(), instance_id.map(str::to_owned));
        self.read(move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM hosts h WHERE machine_id = ?1 AND instance_id IS ?2 AND retired_at IS NULL \
                 AND EXISTS (SELECT 1 FROM node_keys k WHERE k.host_id = h.id AND k.revoked_at IS NULL) ORDER BY id",
            )?;
            Ok(stmt.query_map(params![machine_id, instance_id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn record_findings(
        &self,
        host_id: i64,
        observed: &[Observation],
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<Vec<FindingChange>> {
        let observed = observed.to_vec();
        self.tx(move |tx| Ok(apply_observations(tx, host_id, &observed, limit, now)?.0)).await
    }

    async fn retire_host(&self, host_id: i64, now: OffsetDateTime) -> Result<Vec<FindingChange>> {
        self.tx(move |tx| {
            let now = ts(now);
            tx.execute(
                "UPDATE hosts SET retired_at = ?1 WHERE id = ?2 AND retired_at IS NULL",
                params![now, host_id],
            )?;
            resolve_where(tx, host_id, None, &now)
        })
        .await
    }

    async fn hosts_running_hot(&self, from: OffsetDateTime, to: OffsetDateTime) -> Result<Vec<i64>> {
        self.read(move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT DISTINCT p.host_id FROM processes p JOIN hosts h ON h.id = p.host_id \
                 WHERE p.cpu_high_since > ?1 AND p.cpu_high_since <= ?2 AND h.retired_at IS NULL ORDER BY p.host_id",
            )?;
            Ok(stmt.query_map([ts(from), ts(to)], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn acknowledge(
        &self,
        id: i64,
        actor: &str,
        note: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<Finding>> {
        let (actor, note) = (actor.to_owned(), note.map(str::to_owned));
        self.tx(move |tx| triage::acknowledge(tx, id, &actor, note.as_deref(), now)).await
    }

    async fn create_silence(&self, silence: &Silence) -> Result<i64> {
        let silence = silence.clone();
        self.tx(move |tx| triage::create_silence(tx, &silence)).await
    }

    async fn silences(&self, after: Option<OffsetDateTime>) -> Result<Vec<Silence>> {
        self.read(move |tx| triage::silences(tx, after)).await
    }

    async fn lease_alert_cursor(
        &self,
        sink: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Option<i64>> {
        let (sink, holder) = (sink.to_owned(), holder.to_owned());
        self.tx(move |tx| triage::lease_cursor(tx, &sink, &holder, now, until)).await
    }

    async fn advance_alert_cursor(&self, sink: &str, holder: &str, last_id: i64) -> Result<bool> {
        let (sink, holder) = (sink.to_owned(), holder.to_owned());
        self.tx(move |tx| triage::advance_cursor(tx, &sink, &holder, last_id)).await
    }

    async fn alert_events(&self, after: i64, limit: u32) -> Result<Vec<AlertEvent>> {
        self.read(move |tx| triage::events_after(tx, after, limit)).await
    }

    async fn prune_alert_events(&self, max: u64, now: OffsetDateTime) -> Result<(u64, u64)> {
        self.tx(move |tx| triage::prune_events(tx, max, now)).await
    }

    async fn peer_items(&self, workload: &str) -> Result<HashMap<i64, PeerItems>> {
        let workload = workload.to_owned();
        self.read(move |tx| state::peer_items(tx, &workload)).await
    }

    async fn hosts_named(&self, hostname: &str) -> Result<Vec<i64>> {
        let hostname = hostname.to_owned();
        self.read(move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM hosts WHERE hostname = ?1 AND retired_at IS NULL ORDER BY id",
            )?;
            Ok(stmt.query_map([hostname], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn list_findings(&self, filter: &FindingFilter) -> Result<Page<Finding>> {
        let filter = filter.clone();
        self.read(move |tx| listing::findings(tx, &filter)).await
    }

    async fn prune_history(&self, before: OffsetDateTime, max: u32) -> Result<u64> {
        self.tx(move |tx| {
            let before = ts(before);
            let mut gone = 0;
            for table in ["process_events", "socket_events", "file_changes"] {
                let sql = format!(
                    "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE at < ?1 ORDER BY at LIMIT ?2)"
                );
                gone += tx.prepare_cached(&sql)?.execute(params![before, max])? as u64;
            }
            Ok(gone)
        })
        .await
    }

    async fn query(&self, sql: &str, terms: QueryTerms) -> Result<QueryRows> {
        let Some(queries) = &self.queries else {
            return Err(StoreError::Query("read-only SQL needs a database file, not memory".to_owned()));
        };
        let sql = sql.to_owned();
        queries.with_connection(move |conn| query::run(conn, &sql, &terms)).await
    }

    async fn hosts_page(&self, filter: &super::HostFilter) -> Result<Page<Host>> {
        let f = filter.clone();
        self.read(move |tx| listing::hosts(tx, &f)).await
    }

    async fn list_processes(&self, filter: &StateFilter) -> Result<Page<Located<crate::model::Process>>> {
        let f = filter.clone();
        self.read(move |tx| listing::processes(tx, &f)).await
    }

    async fn list_listeners(&self, filter: &StateFilter) -> Result<Page<Located<crate::model::Listener>>> {
        let f = filter.clone();
        self.read(move |tx| listing::listeners(tx, &f)).await
    }

    async fn list_connections(
        &self,
        filter: &StateFilter,
    ) -> Result<Page<Located<crate::model::Connection>>> {
        let f = filter.clone();
        self.read(move |tx| listing::connections(tx, &f)).await
    }

    async fn process_events(&self, filter: &HistoryFilter) -> Result<Page<ProcessEvent>> {
        let f = filter.clone();
        self.read(move |tx| listing::process_events(tx, &f)).await
    }

    async fn socket_events(&self, filter: &HistoryFilter) -> Result<Page<SocketEvent>> {
        let f = filter.clone();
        self.read(move |tx| listing::socket_events(tx, &f)).await
    }

    async fn file_events(&self, filter: &HistoryFilter) -> Result<Page<hostwatch_proto::v1::FileEvent>> {
        let f = filter.clone();
        self.read(move |tx| files::events(tx, &f)).await
    }

    async fn current_files(&self, filter: &HistoryFilter) -> Result<Page<hostwatch_proto::v1::FileRecord>> {
        let f = filter.clone();
        self.read(move |tx| files::current(tx, &f)).await
    }

    async fn put_baseline(&self, name: &str, source: &str, actor: &str, now: OffsetDateTime) -> Result<()> {
        let (name, source, actor) = (name.to_owned(), source.to_owned(), actor.to_owned());
        self.tx(move |tx| {
            let unchanged: bool = tx
                .query_row("SELECT source = ?2 FROM baselines WHERE name = ?1", params![name, source], |r| r.get(0))
                .optional()?
                .unwrap_or(false);
            if unchanged {
                return Ok(());
            }
            tx.execute(
                "INSERT INTO baselines (name, source, applied_at, applied_by) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (name) DO UPDATE SET source = excluded.source, applied_at = excluded.applied_at, applied_by = excluded.applied_by",
                params![name, source, ts(now), actor],
            )?;
            tx.execute("UPDATE store_meta SET value = value + 1 WHERE key = 'baselines_revision'", [])?;
            Ok(())
        })
        .await
    }

    async fn baselines(&self) -> Result<Vec<BaselineRecord>> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached("SELECT name, source, applied_at, applied_by FROM baselines ORDER BY name")?;
            let rows: Vec<(String, String, String, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rows.into_iter()
                .map(|(name, source, at, by)| {
                    Ok(BaselineRecord { name, source, applied_at: parse_ts(&at)?, applied_by: by })
                })
                .collect()
        })
        .await
    }

    async fn baselines_revision(&self) -> Result<i64> {
        self.read(|tx| {
            Ok(tx.query_row("SELECT value FROM store_meta WHERE key = 'baselines_revision'", [], |r| {
                r.get(0)
            })?)
        })
        .await
    }

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<()> {
        let (actor, action, target) = (actor.to_owned(), action.to_owned(), target.to_owned());
        self.tx(move |tx| credentials::audit(tx, &actor, &action, &target, &detail, now)).await
    }

    async fn audit_entries(&self, since: Option<OffsetDateTime>, limit: u32) -> Result<Vec<AuditEntry>> {
        self.read(move |tx| credentials::audit_entries(tx, since, limit)).await
    }
}

/// Counts rows of a table, for tests of "nothing was stored".
#[cfg(test)]
pub(crate) async fn count_rows(store: &SqliteStore, table: &'static str) -> i64 {
    store
        .tx(move |tx| Ok(tx.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?))
        .await
        .unwrap()
}

#[cfg(test)]
mod tests {
    /// A delta as a report's content.
    fn delta_content(d: StateDelta) -> Content {
        Content::Delta(Box::new(d))
    }

    use super::*;
    use crate::model::{AgentInfo, ChangeSet, Connection as Conn, Listener, Process, StateDelta};
    use crate::store::HostTags;
    use hostwatch_proto::v1::{Direction, Protocol};
    use serde_json::json;
    use std::collections::BTreeMap;

    impl SqliteStore {
        /// A report with no terms: tags as reported, nothing resolved or recorded with it.
        async fn apply_report(
            &self,
            host_id: i64,
            report: &ReportRecord,
            now: OffsetDateTime,
        ) -> Result<(Applied, Recorded)> {
            let out = self.record_report(host_id, report.clone(), now, ReportTerms::default()).await?;
            Ok((out.applied, out.recorded))
        }

        /// A host's tags three ways, as a report's terms see them.
        async fn host_tags(&self, host_id: i64) -> Result<Option<HostTags>> {
            self.read(move |tx| credentials::host_tags(tx, host_id)).await
        }

        /// Resolves the live findings of `kind`, as a report's terms do.
        async fn resolve_kind(
            &self,
            host_id: i64,
            kind: FindingKind,
            now: OffsetDateTime,
        ) -> Result<Vec<FindingChange>> {
            self.tx(move |tx| resolve_where(tx, host_id, Some(kind), &ts(now))).await
        }

        /// A verdict of observations alone.
        async fn reconcile_findings(
            &self,
            host_id: i64,
            workload: Option<&str>,
            observed: &[Observation],
            state_kinds: &[FindingKind],
            limit: u32,
            now: OffsetDateTime,
        ) -> Result<Vec<FindingChange>> {
            let verdict = Verdict {
                workload: workload.map(str::to_owned),
                observed: observed.to_vec(),
                state_kinds: state_kinds.to_vec(),
                ..Verdict::default()
            };
            self.apply_verdict(host_id, verdict, limit, now).await
        }
    }

    /// Enrolls a host under an enroll secret of its own.
    async fn enroll(s: &SqliteStore, facts: &HostFacts, key: &str, now: OffsetDateTime) -> Result<i64> {
        let hash = format!("secret-{key}");
        let new = NewCredential { name: "test", hash: &hash, created_by: "test", expires_at: None, now };
        let secret = s.create_enroll_secret(&new, &BTreeMap::new()).await?;
        s.enroll_host(&Enrollment {
            facts,
            agent_version: "0.1.0",
            key_hash: key,
            enroll_secret: secret.id,
            verified_instance: None,
            now,
        })
        .await
    }

    fn facts(machine: &str) -> HostFacts {
        HostFacts {
            hostname: "web-1".into(),
            machine_id: machine.into(),
            os: "Debian".into(),
            kernel: "6.1".into(),
            arch: "x86_64".into(),
            boot_time: None,
            tags: BTreeMap::from([("role".into(), "web".into())]),
            reported_tags: BTreeMap::from([("role".into(), "web".into())]),
            cloud: Some(hostwatch_proto::v1::CloudFacts {
                provider: hostwatch_proto::v1::CloudProvider::Aws,
                instance_id: format!("i-{machine}"),
                account: Some("123456789012".into()),
                region: Some("eu-west-1".into()),
                zone: None,
                image: Some("ami-0abc".into()),
                instance_type: None,
                resource_group: None,
                tags: BTreeMap::from([("team".into(), "payments".into())]),
            }),
        }
    }

    /// The default budget of new findings: no test here comes near it but the one about it.
    const LIMIT: u32 = 100;

    fn obs(kind: FindingKind, subject: &str) -> Observation {
        Observation {
            occurrences: 1,
            transient: false,
            kind,
            rule: None,
            severity: Severity::High,
            subject: subject.into(),
            detail: json!({"s": subject}),
        }
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    #[tokio::test]
    async fn migrations_are_idempotent_and_files_private() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("hw.db");
        drop(SqliteStore::open(&path).unwrap());
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.baselines_revision().await.unwrap(), 0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_beside_a_held_writer_see_its_commits_and_cannot_write() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("hw.db")).unwrap();
        let id = enroll(&s, &facts("m-1"), "k1", at(0)).await.unwrap();
        // Committed on the writer, seen by a reader.
        assert_eq!(s.find_node_key("k1").await.unwrap(), Some(id));
        assert_eq!(s.host(id).await.unwrap().map(|h| h.id), Some(id));
        // The writer busy in a transaction: reads go on (they would wait on one connection).
        let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let writer = tokio::spawn({
            let s = s.clone();
            async move {
                s.tx(move |tx| {
                    tx.execute("UPDATE hosts SET hostname = 'changing' WHERE id = ?1", [id])?;
                    let _ = locked_tx.send(());
                    let _ = release_rx.recv();
                    Ok(())
                })
                .await
            }
        });
        locked_rx.await.unwrap();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.host(id)).await;
        let host = read.expect("a read waited for the writer").unwrap().unwrap();
        assert_eq!(host.facts.hostname, "web-1", "a read saw an uncommitted write");
        release_tx.send(()).unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(s.host(id).await.unwrap().unwrap().facts.hostname, "changing");
        // A reading connection refuses to write, whatever is asked of it.
        let err =
            s.read(move |tx| Ok(tx.execute("DELETE FROM hosts WHERE id = ?1", [id])?)).await.unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        assert!(s.host(id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn enroll_report_and_state() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        assert_eq!(s.find_node_key("h1").await.unwrap(), Some(id));
        // Enrolling again under the same machine id is a second host; the first keeps its key.
        let twin = enroll(&s, &facts("m1"), "h2", at(1)).await.unwrap();
        assert_ne!(twin, id);
        assert_eq!(s.find_node_key("h1").await.unwrap(), Some(id));
        assert_eq!(s.find_node_key("h2").await.unwrap(), Some(twin));
        assert_eq!(s.hosts_with_machine_id("m1", Some("i-m1")).await.unwrap(), vec![id, twin]);
        let other = enroll(&s, &facts("m2"), "h3", at(1)).await.unwrap();
        assert_ne!(other, id);

        let p = Process {
            exe: Some("/usr/sbin/nginx".into()),
            cmdline: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            user: Some("root".into()),
            ..Process::from(hostwatch_proto::v1::Process::new(10, 1, "nginx", 0, at(-100)))
        };
        let l = Listener {
            protocol: Protocol::Tcp,
            address: "::".parse().unwrap(),
            port: 443,
            pid: Some(10),
            process: Some("nginx".into()),
            exe: None,
            uid: 0,
            netns: None,
            auth: None,
        };
        let c = Conn {
            protocol: Protocol::Tcp,
            local: "[::ffff:10.0.0.1]:50000".parse().unwrap(),
            remote: "[::ffff:10.0.0.9]:5432".parse().unwrap(),
            direction: Direction::Outbound,
            pid: Some(10),
            process: Some("app".into()),
            exe: Some("/usr/bin/app".into()),
            uid: 33,
            netns: Some(4026532000),
        };
        let report = record(
            1,
            7,
            Content::Snapshot(HostState {
                processes: vec![p.clone()],
                listeners: vec![l.clone()],
                connections: vec![c.clone()],
            }),
        );
        assert_eq!(
            s.apply_report(id, &report, at(5)).await.unwrap().0,
            Applied::Applied { gap: None, resync: false }
        );
        let state = s.host_state(id).await.unwrap();
        assert_eq!(state, HostState { processes: vec![p], listeners: vec![l], connections: vec![c] });
        let h = s.host(id).await.unwrap().unwrap();
        assert_eq!((h.last_seq, h.last_seen, h.agent.coverage_degraded), (7, Some(at(5)), true));
        assert_eq!(h.facts.tags["role"], "web");
        assert_eq!(h.facts.cloud, facts("m1").cloud, "cloud facts kept as sent");
        assert_eq!(s.hosts_named("web-1").await.unwrap(), vec![id, twin, other]);
        // A heartbeat keeps the state.
        s.apply_report(id, &record(1, 8, Content::Heartbeat), at(6)).await.unwrap();
        assert_eq!(s.host_state(id).await.unwrap().processes.len(), 1);
        assert!(matches!(s.apply_report(999, &report, at(6)).await, Err(StoreError::NotFound(_))));
        // The host's first snapshot is not history: its processes did not start just now.
        let events = s
            .process_events(&HistoryFilter { host_id: Some(id), limit: 100, ..Default::default() })
            .await
            .unwrap()
            .items;
        assert!(events.is_empty(), "{events:?}");
    }

    fn record(session: u64, seq: u64, content: Content) -> ReportRecord {
        ReportRecord {
            session,
            seq,
            facts: facts("m1"),
            agent: AgentInfo {
                version: "0.1.0".into(),
                interval_secs: 10,
                coverage_degraded: true,
                coverage_why: vec!["x".into()],
                stats: Some(hostwatch_proto::v1::AgentStats {
                    exec_source: "polling".into(),
                    ..Default::default()
                }),
            },
            content,
            lost: 0,
            goodbye: None,
            backlog: 0,
        }
    }

    fn process(pid: u32, name: &str, start: i64) -> Process {
        Process {
            exe: Some(format!("/usr/bin/{name}")),
            cmdline: vec![name.into(), "--flag".into()],
            user: Some("root".into()),
            ..Process::from(hostwatch_proto::v1::Process::new(pid, 1, name, 0, at(start)))
        }
    }

    fn delta_of(added: Vec<Process>, removed: Vec<(Process, i64)>) -> Content {
        delta_content(StateDelta {
            processes: ChangeSet {
                added,
                updated: vec![],
                removed: removed.into_iter().map(|(p, t)| (p.key(), at(t))).collect(),
            },
            ..Default::default()
        })
    }

    /// A hash that comes a report after its exec is found in the history by it too.
    #[tokio::test]
    async fn a_hash_that_comes_after_the_exec_goes_into_its_history() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let snap = record(7, 1, Content::Snapshot(HostState::default()));
        s.apply_report(id, &snap, at(1)).await.unwrap();
        let p = process(10, "late", 2);
        s.apply_report(id, &record(7, 2, delta_of(vec![p.clone()], vec![])), at(3)).await.unwrap();
        let hashed = Process { sha256: Some("ab".repeat(32)), ..p };
        let update = delta_content(StateDelta {
            processes: ChangeSet { added: vec![], updated: vec![hashed], removed: vec![] },
            ..Default::default()
        });
        let (_, recorded) = s.apply_report(id, &record(7, 3, update), at(4)).await.unwrap();
        assert!(recorded.started.is_empty(), "a hash is not a new exec");
        let by_hash = HistoryFilter { sha256: Some("ab".repeat(32)), limit: 10, ..Default::default() };
        let events = s.process_events(&by_hash).await.unwrap().items;
        assert_eq!(events.iter().map(|e| (e.kind, e.pid)).collect::<Vec<_>>(), [("exec", 10)]);
    }

    #[tokio::test]
    async fn the_delta_protocol() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let (a, b, c, d) =
            (process(10, "a", 1), process(11, "b", 2), process(12, "short", 3), process(13, "d", 4));
        let pids = |st: HostState| st.processes.iter().map(|p| p.pid).collect::<Vec<_>>();
        let ok = Applied::Applied { gap: None, resync: false };

        let snap =
            record(7, 1, Content::Snapshot(HostState { processes: vec![a.clone()], ..Default::default() }));
        assert_eq!(s.apply_report(id, &snap, at(5)).await.unwrap().0, ok);
        // In order: b starts; c starts and ends within the same delta; a ends.
        let d2 = record(7, 2, delta_of(vec![b.clone(), c.clone()], vec![(c.clone(), 4), (a.clone(), 5)]));
        assert_eq!(s.apply_report(id, &d2, at(6)).await.unwrap().0, ok);
        assert_eq!(pids(s.host_state(id).await.unwrap()), vec![11]);
        // Replayed: acknowledged, nothing changes, nothing is written twice.
        assert_eq!(s.apply_report(id, &d2, at(7)).await.unwrap().0, Applied::Replay);
        assert_eq!(s.apply_report(id, &snap, at(7)).await.unwrap().0, Applied::Replay, "an old snapshot too");
        assert_eq!(pids(s.host_state(id).await.unwrap()), vec![11]);
        // A replay's facts change nothing either: no hostname or tags put back, or forged.
        let mut forged = d2.clone();
        forged.facts.hostname = "forged".into();
        forged.facts.tags.insert("role".into(), "db".into());
        assert_eq!(s.apply_report(id, &forged, at(7)).await.unwrap().0, Applied::Replay);
        let host = s.host(id).await.unwrap().unwrap();
        assert_ne!(host.facts.hostname, "forged");
        assert_ne!(host.facts.tags.get("role").map(String::as_str), Some("db"), "{:?}", host.facts.tags);
        let events = s
            .process_events(&HistoryFilter { host_id: Some(id), limit: 100, ..Default::default() })
            .await
            .unwrap()
            .items;
        let seen: Vec<(&str, u32)> = events.iter().rev().map(|e| (e.kind, e.pid)).collect();
        assert_eq!(seen, [("exec", 11), ("exec", 12), ("exit", 12), ("exit", 10)], "each once, in order");
        let short = events.iter().find(|e| e.pid == 12 && e.kind == "exec").unwrap();
        assert_eq!((short.exe.as_deref(), short.cmdline.len()), (Some("/usr/bin/short"), 2));
        assert_eq!(
            events.iter().find(|e| e.pid == 10).unwrap().exe.as_deref(),
            Some("/usr/bin/a"),
            "an exit names its program"
        );

        // A gap: seq 4 after 2. What it says is applied (its history is real), and the collector
        // asks for a snapshot, since what report 3 said is missing.
        let d4 = record(7, 4, delta_of(vec![d.clone()], vec![]));
        assert_eq!(
            s.apply_report(id, &d4, at(8)).await.unwrap().0,
            Applied::Applied { gap: Some((3, 4)), resync: true }
        );
        assert_eq!(pids(s.host_state(id).await.unwrap()), vec![11, 13]);
        // The deltas queued behind it follow in order; the snapshot then puts the state right,
        // and its differences become history.
        let d5 = record(7, 5, delta_of(vec![], vec![]));
        assert_eq!(s.apply_report(id, &d5, at(9)).await.unwrap().0, ok);
        let snap6 = record(
            7,
            6,
            Content::Snapshot(HostState { processes: vec![a.clone(), d.clone()], ..Default::default() }),
        );
        assert_eq!(s.apply_report(id, &snap6, at(10)).await.unwrap().0, ok);
        assert_eq!(pids(s.host_state(id).await.unwrap()), vec![10, 13]);
        let events = s
            .process_events(&HistoryFilter { host_id: Some(id), limit: 100, ..Default::default() })
            .await
            .unwrap()
            .items;
        let exec10: Vec<_> = events.iter().filter(|e| (e.kind, e.pid) == ("exec", 10)).collect();
        assert_eq!(exec10.len(), 1, "re-seen by the snapshot: exec dated when it started");
        assert_eq!(exec10[0].at, at(1));
        assert_eq!(events.iter().find(|e| (e.kind, e.pid) == ("exit", 11)).unwrap().at, at(10));
        let since = s
            .process_events(&HistoryFilter {
                host_id: Some(id),
                since: Some(at(9)),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .items;
        assert_eq!(since.iter().map(|e| (e.kind, e.pid)).collect::<Vec<_>>(), [("exit", 11)]);

        // A new session whose snapshot never came: its delta applies, and a snapshot is asked for.
        let new_delta = record(8, 2, delta_of(vec![], vec![(d.clone(), 11)]));
        assert_eq!(
            s.apply_report(id, &new_delta, at(12)).await.unwrap().0,
            Applied::Applied { gap: None, resync: true }
        );
        assert_eq!(pids(s.host_state(id).await.unwrap()), vec![10]);
        let new_snap =
            record(8, 3, Content::Snapshot(HostState { processes: vec![a.clone()], ..Default::default() }));
        assert_eq!(s.apply_report(id, &new_snap, at(13)).await.unwrap().0, ok);
    }

    #[tokio::test]
    async fn every_start_is_returned_once_and_late_ends_come_back() {
        use crate::model::{Item, Started};
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let (a, b, c) = (process(10, "a", 1), process(11, "b", 2), process(12, "short", 3));
        let first =
            record(1, 1, Content::Snapshot(HostState { processes: vec![a.clone()], ..Default::default() }));
        let (_, rec) = s.apply_report(id, &first, at(5)).await.unwrap();
        assert!(rec.started.is_empty(), "a host's first state is not news");
        let d2 = record(1, 2, delta_of(vec![b.clone(), c.clone()], vec![(c.clone(), 4)]));
        let (_, rec) = s.apply_report(id, &d2, at(6)).await.unwrap();
        let got: Vec<(u32, Option<OffsetDateTime>, bool)> = rec
            .started
            .iter()
            .map(|s| match &s.item {
                Item::Process(p) => (p.pid, s.ended, s.new),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [(11, None, true), (12, Some(at(4)), true)], "c ended in the same report");
        assert!(
            s.apply_report(id, &d2, at(7)).await.unwrap().1.started.is_empty(),
            "a replay starts nothing"
        );

        // Sent from a backlog of 2: the listener it starts, ended two reports later, was gone
        // before it was judged.
        let l = Listener {
            protocol: Protocol::Tcp,
            address: "0.0.0.0".parse().unwrap(),
            port: 8080,
            pid: Some(11),
            process: Some("b".into()),
            exe: None,
            uid: 0,
            netns: None,
            auth: None,
        };
        let opens = |l: &Listener| {
            delta_content(StateDelta {
                listeners: ChangeSet { added: vec![l.clone()], ..Default::default() },
                ..Default::default()
            })
        };
        let closes = |l: &Listener, t: i64| {
            delta_content(StateDelta {
                listeners: ChangeSet { removed: vec![(l.key(), at(t))], ..Default::default() },
                ..Default::default()
            })
        };
        let late = ReportRecord { backlog: 2, ..record(1, 3, opens(&l)) };
        let (_, rec) = s.apply_report(id, &late, at(20)).await.unwrap();
        assert!(matches!(rec.started.as_slice(), [Started { ended: None, new: true, .. }]));
        let nothing = record(1, 4, delta_content(StateDelta::default()));
        s.apply_report(id, &ReportRecord { backlog: 1, ..nothing }, at(20)).await.unwrap();
        let (_, rec) = s.apply_report(id, &record(1, 5, closes(&l, 12)), at(21)).await.unwrap();
        assert!(
            matches!(rec.started.as_slice(), [Started { item: Item::Listener(x), ended: Some(e), new: false, .. }] if *x == l && *e == at(12)),
            "{rec:?}"
        );
        // Live: opened in one report, closed in a later one, was seen alive: nothing comes back.
        let m = Listener { port: 9090, ..l.clone() };
        s.apply_report(id, &record(1, 6, opens(&m)), at(30)).await.unwrap();
        let (_, rec) = s.apply_report(id, &record(1, 7, closes(&m, 31)), at(31)).await.unwrap();
        assert!(rec.started.is_empty(), "{rec:?}");
        // A new session's numbers start again: an old judgement means nothing to them.
        s.apply_report(id, &ReportRecord { backlog: 50, ..record(1, 8, opens(&m)) }, at(40)).await.unwrap();
        let snap = record(2, 1, Content::Snapshot(HostState::default()));
        let (_, rec) = s.apply_report(id, &snap, at(41)).await.unwrap();
        assert!(rec.started.is_empty(), "{rec:?}");
    }

    #[tokio::test]
    async fn programs_left_by_a_later_exec_are_history_and_judged_gone_never_state() {
        use crate::model::{Item, PassedExec, Started};
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let sh = process(20, "sh", 1);
        let first =
            record(1, 1, Content::Snapshot(HostState { processes: vec![sh.clone()], ..Default::default() }));
        s.apply_report(id, &first, at(2)).await.unwrap();
        // pid 20 ran a dropper (exec at 3), which exec'd its payload (at 4); the payload is what
        // the state holds.
        let program =
            |name: &str| Process { name: name.into(), exe: Some(format!("/tmp/{name}")), ..sh.clone() };
        let d = StateDelta {
            processes: ChangeSet { updated: vec![program("payload")], ..Default::default() },
            passed_execs: vec![PassedExec { process: program("dropper"), at: at(3), until: at(4) }],
            ..Default::default()
        };
        let (_, rec) = s.apply_report(id, &record(1, 2, delta_content(d)), at(5)).await.unwrap();
        let got: Vec<(&str, Option<OffsetDateTime>, Option<OffsetDateTime>)> = rec
            .started
            .iter()
            .map(|s: &Started| match &s.item {
                Item::Process(p) => (p.name.as_str(), s.at, s.ended),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [("payload", Some(at(5)), None), ("dropper", Some(at(3)), Some(at(4)))]);
        let state = s.host_state(id).await.unwrap();
        assert_eq!(state.processes.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["payload"]);
        let filter = HistoryFilter { host_id: Some(id), limit: 100, ..Default::default() };
        let execs: Vec<(Option<String>, OffsetDateTime)> = s
            .process_events(&filter)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.kind == "exec")
            .map(|e| (e.name, e.at))
            .collect();
        assert!(execs.contains(&(Some("dropper".into()), at(3))), "{execs:?}");

        // A known process that exec'd and ended between two reports: its exec is dated no later
        // than its end, not when the report arrived.
        let d = StateDelta {
            processes: ChangeSet {
                updated: vec![program("blip")],
                removed: vec![(sh.key(), at(6))],
                ..Default::default()
            },
            ..Default::default()
        };
        let (_, rec) = s.apply_report(id, &record(1, 3, delta_content(d)), at(9)).await.unwrap();
        assert!(
            matches!(rec.started.as_slice(), [Started { ended: Some(e), new: true, .. }] if *e == at(6)),
            "{rec:?}"
        );
        let blip = s
            .process_events(&filter)
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.kind == "exec" && e.name.as_deref() == Some("blip"))
            .unwrap();
        assert_eq!(blip.at, at(6));
    }

    #[tokio::test]
    async fn an_earlier_session_reporting_again_is_two_agents_and_a_restart_is_not() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let snap = |session, seq| record(session, seq, delta_content(StateDelta::default()));
        let alternate = |r: (Applied, Recorded)| r.1.sessions_alternate;
        // One agent, restarted twice: each session new, none returns.
        for (session, seq) in [(1, 1), (1, 2), (2, 1), (3, 1), (3, 2)] {
            assert_eq!(alternate(s.apply_report(id, &snap(session, seq), at(1)).await.unwrap()), None);
        }
        // A clone of the agent of session 3 runs as session 4 beside it: 3 comes back.
        assert_eq!(alternate(s.apply_report(id, &snap(4, 1), at(2)).await.unwrap()), None);
        assert_eq!(alternate(s.apply_report(id, &snap(3, 3), at(3)).await.unwrap()), Some((4, 3)));
        assert_eq!(alternate(s.apply_report(id, &snap(4, 2), at(4)).await.unwrap()), Some((3, 4)));
        // A replay is not a session coming back.
        assert_eq!(alternate(s.apply_report(id, &snap(4, 2), at(5)).await.unwrap()), None);
    }

    #[tokio::test]
    async fn credentials_are_found_by_hash_revoked_once_and_audited_in_their_transaction() {
        let s = SqliteStore::open_in_memory().unwrap();
        let new = |name: &'static str, hash: &'static str| NewCredential {
            name,
            hash,
            created_by: "token:root#1",
            expires_at: Some(at(100)),
            now: at(1),
        };
        let t = s.create_api_token(&new("ci", "hash-ci"), "reader").await.unwrap();
        assert_eq!(s.find_api_token("hash-ci").await.unwrap().map(|t| t.expires_at), Some(Some(at(100))));
        assert_eq!(s.find_api_token("nope").await.unwrap(), None);
        let revoked = s.revoke_api_token(t.id, "token:root#1", at(2)).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at, Some(at(2)));
        let again = s.revoke_api_token(t.id, "token:root#1", at(3)).await.unwrap().unwrap();
        assert_eq!(again.revoked_at, Some(at(2)), "revoked once, when it was");
        assert_eq!(s.revoke_api_token(999, "token:root#1", at(3)).await.unwrap(), None);
        let tags = BTreeMap::from([("role".to_owned(), "web".to_owned())]);
        let sec = s.create_enroll_secret(&new("web", "hash-web"), &tags).await.unwrap();
        let f = facts("m1");
        let e = Enrollment {
            facts: &f,
            agent_version: "0.1.0",
            key_hash: "key-1",
            enroll_secret: sec.id,
            verified_instance: Some("i-m1"),
            now: at(4),
        };
        let host = s.enroll_host(&e).await.unwrap();
        assert_eq!(s.verified_instance(host).await.unwrap().as_deref(), Some("i-m1"));
        let found = s.find_enroll_secret("hash-web").await.unwrap().unwrap();
        assert_eq!((found.tags, found.hosts), (tags.clone(), 1));
        assert_eq!(s.host_tags(host).await.unwrap().unwrap().assigned, tags);
        assert_eq!(s.revoke_host_keys(host, "token:root#1", at(5)).await.unwrap(), Some(1));
        assert_eq!(s.find_node_key("key-1").await.unwrap(), None);
        assert_eq!(s.revoke_host_keys(404, "token:root#1", at(5)).await.unwrap(), None);
        let trail: Vec<(String, String)> =
            s.audit_entries(None, 100).await.unwrap().into_iter().map(|e| (e.action, e.target)).collect();
        assert_eq!(
            trail,
            [
                ("revoke_host".to_owned(), format!("host:{host}")),
                ("revoke_token".to_owned(), format!("token:{}", t.id)),
                ("create_secret".to_owned(), format!("secret:{}", sec.id)),
                ("create_token".to_owned(), format!("token:{}", t.id)),
            ],
            "newest first, one entry per change"
        );
        assert_eq!(s.audit_entries(Some(at(5)), 100).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn socket_history() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        s.apply_report(id, &record(1, 1, Content::Snapshot(HostState::default())), at(1)).await.unwrap();
        let l = Listener {
            protocol: Protocol::Tcp,
            address: "0.0.0.0".parse().unwrap(),
            port: 8080,
            pid: Some(5),
            process: Some("py".into()),
            exe: None,
            uid: 0,
            netns: None,
            auth: None,
        };
        let d = StateDelta {
            listeners: ChangeSet { added: vec![l.clone()], ..Default::default() },
            ..Default::default()
        };
        s.apply_report(id, &record(1, 2, delta_content(d)), at(2)).await.unwrap();
        let d = StateDelta {
            listeners: ChangeSet { removed: vec![(l.key(), at(3))], ..Default::default() },
            ..Default::default()
        };
        s.apply_report(id, &record(1, 3, delta_content(d)), at(4)).await.unwrap();
        let ev = s
            .socket_events(&HistoryFilter { host_id: Some(id), limit: 10, ..Default::default() })
            .await
            .unwrap()
            .items;
        let seen: Vec<(&str, &str, u16)> =
            ev.iter().rev().map(|e| (e.kind, e.socket, e.local.port())).collect();
        assert_eq!(seen, [("open", "listener", 8080), ("close", "listener", 8080)]);
        assert_eq!(ev[0].at, at(3));
        assert!(s.host_state(id).await.unwrap().listeners.is_empty());
    }

    #[tokio::test]
    async fn a_hot_process_keeps_since_when_until_it_cools() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let with_cpu = |cpu: f32| Process { cpu_percent: Some(cpu), ..process(10, "enc", 1) };
        let since = |s: HostState| s.processes[0].cpu_high_since;
        let snap = |seq, cpu| {
            record(
                7,
                seq,
                Content::Snapshot(HostState { processes: vec![with_cpu(cpu)], ..Default::default() }),
            )
        };
        s.apply_report(id, &snap(1, 20.0), at(1)).await.unwrap();
        assert_eq!(since(s.host_state(id).await.unwrap()), None);
        let before = OffsetDateTime::now_utc();
        s.apply_report(id, &snap(2, 99.0), at(2)).await.unwrap();
        let first = since(s.host_state(id).await.unwrap()).expect("hot since now");
        assert!(first >= before - time::Duration::seconds(1));
        // Still hot, other figure: the same since.
        s.apply_report(id, &snap(3, 95.0), at(3)).await.unwrap();
        assert_eq!(since(s.host_state(id).await.unwrap()), Some(first));
        let second = time::Duration::seconds(1);
        assert_eq!(s.hosts_running_hot(first - second, first).await.unwrap(), vec![id]);
        assert!(
            s.hosts_running_hot(first - second * 2, first - second).await.unwrap().is_empty(),
            "not hot that long"
        );
        assert!(
            s.hosts_running_hot(first, first + second).await.unwrap().is_empty(),
            "crossed the mark before"
        );
        // Cooled: cleared.
        s.apply_report(id, &snap(4, 10.0), at(4)).await.unwrap();
        assert_eq!(since(s.host_state(id).await.unwrap()), None);
        assert!(
            s.hosts_running_hot(OffsetDateTime::UNIX_EPOCH, OffsetDateTime::now_utc())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn retiring_a_host_closes_its_findings_and_resolving_a_kind_only_that_kind() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let off = obs(FindingKind::AgentOffline, "agent");
        let file = obs(FindingKind::FileChanged, "/etc/passwd");
        s.record_findings(id, &[off.clone(), file.clone()], LIMIT, at(1)).await.unwrap();
        let ch = s.resolve_kind(id, FindingKind::AgentOffline, at(2)).await.unwrap();
        assert!(
            matches!(ch.as_slice(), [FindingChange::Resolved { kind: FindingKind::AgentOffline, .. }]),
            "{ch:?}"
        );
        let ch = s.retire_host(id, at(3)).await.unwrap();
        assert!(
            matches!(ch.as_slice(), [FindingChange::Resolved { kind: FindingKind::FileChanged, .. }]),
            "{ch:?}"
        );
        assert_eq!(s.host(id).await.unwrap().unwrap().retired_at, Some(at(3)));
        assert!(s.retire_host(id, at(4)).await.unwrap().is_empty(), "once");
        assert_eq!(s.host(id).await.unwrap().unwrap().retired_at, Some(at(3)));
    }

    #[tokio::test]
    async fn peer_items_are_each_hosts_distinct_items_in_a_workload() {
        let s = SqliteStore::open_in_memory().unwrap();
        let mut ids = Vec::new();
        for n in 0..3 {
            let id = enroll(&s, &facts(&format!("m{n}")), &format!("h{n}"), at(0)).await.unwrap();
            // Two processes of one program on the first host count once.
            let mut procs = vec![process(10, "nginx", 1)];
            if n == 0 {
                procs.push(process(11, "nginx", 2));
                procs.push(process(12, "odd", 3));
            }
            let snap = record(7, 1, Content::Snapshot(HostState { processes: procs, ..Default::default() }));
            s.apply_report(id, &snap, at(1)).await.unwrap();
            s.reconcile_findings(id, Some(if n < 2 { "web" } else { "db" }), &[], &[], LIMIT, at(2))
                .await
                .unwrap();
            ids.push(id);
        }
        let web = s.peer_items("web").await.unwrap();
        assert_eq!(web.len(), 2);
        let nginx =
            PeerItems { processes: ["/usr/bin/nginx"].map(String::from).into(), ..PeerItems::default() };
        assert_eq!(web[&ids[1]], nginx, "two processes of one program are one item");
        assert_eq!(web[&ids[0]].processes, ["/usr/bin/nginx", "/usr/bin/odd"].map(String::from).into());
        s.retire_host(ids[1], at(3)).await.unwrap();
        let web = s.peer_items("web").await.unwrap();
        assert_eq!(web.keys().collect::<Vec<_>>(), [&ids[0]], "a retired host is no peer");
    }

    #[tokio::test]
    async fn the_outbox_leases_silences_and_pruning() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let a = obs(FindingKind::SuspiciousProcess, "/tmp/x");
        // A sink first seen starts at the end: nothing before it.
        s.record_findings(id, std::slice::from_ref(&a), LIMIT, at(1)).await.unwrap();
        assert_eq!(s.lease_alert_cursor("hook", "c1", at(2), at(60)).await.unwrap(), Some(1));
        assert_eq!(s.lease_alert_cursor("hook", "c2", at(3), at(60)).await.unwrap(), None, "c1 holds it");
        s.resolve_kind(id, FindingKind::SuspiciousProcess, at(4)).await.unwrap();
        s.record_findings(id, std::slice::from_ref(&a), LIMIT, at(5)).await.unwrap();
        let ev = s.alert_events(1, 10).await.unwrap();
        let seen: Vec<(&str, bool)> = ev.iter().map(|e| (e.event.as_str(), e.silenced)).collect();
        assert_eq!(seen, [("resolved", false), ("reopened", false)]);
        assert!(!s.advance_alert_cursor("hook", "c2", ev[1].id).await.unwrap(), "only the holder moves it");
        assert!(s.advance_alert_cursor("hook", "c1", ev[1].id).await.unwrap());
        // Expired lease: another collector takes over where the first stopped.
        assert_eq!(s.lease_alert_cursor("hook", "c2", at(61), at(120)).await.unwrap(), Some(ev[1].id));
        // A silence by selector: what happens within it is marked.
        let sil = Silence {
            id: 0,
            scope: crate::model::SilenceScope::Selector([("role".to_owned(), "web".to_owned())].into()),
            starts_at: at(100),
            ends_at: at(200),
            reason: "patching".into(),
            created_by: "t".into(),
        };
        s.create_silence(&sil).await.unwrap();
        assert_eq!(s.silences(Some(at(150))).await.unwrap().len(), 1);
        assert!(s.silences(Some(at(200))).await.unwrap().is_empty(), "ended");
        s.resolve_kind(id, FindingKind::SuspiciousProcess, at(150)).await.unwrap();
        let f = s.record_findings(id, std::slice::from_ref(&a), LIMIT, at(151)).await.unwrap();
        assert!(matches!(f.as_slice(), [FindingChange::Reopened { .. }]));
        let ev = s.alert_events(ev[1].id, 10).await.unwrap();
        assert!(ev.iter().all(|e| e.silenced) && ev.len() == 2, "{ev:?}");
        assert!(ev[1].finding.silenced);
        // Pruning: what every cursor passed goes; then the bound.
        let (delivered, dropped) = s.prune_alert_events(1, at(170)).await.unwrap();
        assert_eq!((delivered, dropped), (3, 1), "three delivered, one of the two left dropped");
        let left = s.alert_events(0, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        // Emptied, the outbox never gives an id again: a cursor past it skips nothing.
        s.advance_alert_cursor("hook", "c2", left[0].id).await.unwrap();
        s.prune_alert_events(100, at(171)).await.unwrap();
        assert!(s.alert_events(0, 10).await.unwrap().is_empty());
        s.record_findings(id, &[obs(FindingKind::DataLost, "reports")], LIMIT, at(300)).await.unwrap();
        let next = s.alert_events(left[0].id, 10).await.unwrap();
        assert_eq!(next.len(), 1, "the new event is after the cursor: {next:?}");
        // Acknowledged with a note, and refused for a finding that is not there.
        let acked = s.acknowledge(f[0].id(), "alice", Some("known"), at(160)).await.unwrap().unwrap();
        assert_eq!(
            (acked.status, acked.acked_by.as_deref(), acked.ack_note.as_deref()),
            (FindingStatus::Acknowledged, Some("alice"), Some("known"))
        );
        assert!(s.acknowledge(9999, "alice", None, at(160)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn worse_findings_escalate_and_events_reopen_acknowledged_ones() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let info = Observation { severity: Severity::Info, ..obs(FindingKind::FileChanged, "/etc/nginx/x") };
        s.record_findings(id, std::slice::from_ref(&info), LIMIT, at(1)).await.unwrap();
        let high = Observation { severity: Severity::High, ..info.clone() };
        assert!(
            s.record_findings(id, std::slice::from_ref(&high), LIMIT, at(2)).await.unwrap().is_empty(),
            "still open"
        );
        let ev: Vec<String> = s.alert_events(0, 10).await.unwrap().into_iter().map(|e| e.event).collect();
        assert_eq!(ev, ["opened", "escalated"], "sinks that left out the info hear of the high one");
        // Lost reports again after an acknowledgement: open again.
        let lost = obs(FindingKind::DataLost, "reports");
        let f = s.record_findings(id, std::slice::from_ref(&lost), LIMIT, at(3)).await.unwrap();
        s.acknowledge(f[0].id(), "alice", None, at(4)).await.unwrap();
        let again = s.record_findings(id, &[lost], LIMIT, at(5)).await.unwrap();
        assert!(matches!(again.as_slice(), [FindingChange::Reopened { .. }]), "{again:?}");
    }

    #[tokio::test]
    async fn finding_lifecycle() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let kinds = findings::STATE_KINDS;
        let a = obs(FindingKind::UnexpectedListener, "tcp/0.0.0.0:8000");
        let b = obs(FindingKind::UnexpectedProcess, "/tmp/x");

        let ch = s
            .reconcile_findings(id, Some("web"), &[a.clone(), b.clone()], kinds, LIMIT, at(1))
            .await
            .unwrap();
        assert_eq!(ch.iter().filter(|c| matches!(c, FindingChange::Opened { .. })).count(), 2);
        // Seen again: no change, last_seen moves.
        let ch = s
            .reconcile_findings(id, Some("web"), &[a.clone(), b.clone()], kinds, LIMIT, at(2))
            .await
            .unwrap();
        assert!(ch.is_empty());
        let all = s.list_findings(&FindingFilter::default()).await.unwrap().items;
        assert_eq!(all.len(), 2);
        assert!(
            all.iter()
                .all(|f| f.first_seen == at(1) && f.last_seen == at(2) && f.status == FindingStatus::Open)
        );
        let listener_id = all.iter().find(|f| f.subject == a.subject).unwrap().id;
        // Gone: resolved.
        let ch = s
            .reconcile_findings(id, Some("web"), std::slice::from_ref(&b), kinds, LIMIT, at(3))
            .await
            .unwrap();
        assert_eq!(
            ch,
            vec![FindingChange::Resolved { id: listener_id, kind: a.kind, subject: a.subject.clone() }]
        );
        // Back: the same finding reopens.
        let ch = s
            .reconcile_findings(id, Some("web"), &[a.clone(), b.clone()], kinds, LIMIT, at(4))
            .await
            .unwrap();
        assert_eq!(
            ch,
            vec![FindingChange::Reopened { id: listener_id, kind: a.kind, subject: a.subject.clone() }]
        );
        let f = s
            .list_findings(&FindingFilter { host_id: Some(id), kind: Some(a.kind), ..Default::default() })
            .await
            .unwrap()
            .items;
        assert_eq!(
            (f.len(), f[0].status, f[0].first_seen, f[0].resolved_at),
            (1, FindingStatus::Open, at(1), None)
        );
        assert_eq!(f[0].hostname, "web-1");
        // Kinds outside the state kinds are never resolved by absence.
        let file = obs(FindingKind::FileChanged, "/etc/passwd");
        s.reconcile_findings(id, Some("web"), &[file], kinds, LIMIT, at(5)).await.unwrap();
        s.reconcile_findings(id, Some("web"), &[], kinds, LIMIT, at(6)).await.unwrap();
        let open = s
            .list_findings(&FindingFilter { statuses: vec![FindingStatus::Open], ..Default::default() })
            .await
            .unwrap()
            .items;
        assert_eq!(open.iter().map(|f| f.subject.as_str()).collect::<Vec<_>>(), ["/etc/passwd"]);
        assert_eq!(s.host(id).await.unwrap().unwrap().workload.as_deref(), Some("web"));
        assert_eq!(s.host(id).await.unwrap().unwrap().open_findings, 1);
    }

    #[tokio::test]
    async fn transient_findings_count_occurrences_and_resolve_only_by_acknowledgement() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let kinds = findings::STATE_KINDS;
        let run = |n: u64, transient: bool| Observation {
            occurrences: n,
            transient,
            ..obs(FindingKind::UnexpectedProcess, "/usr/local/lib/x")
        };
        let find = async || {
            let f = s
                .list_findings(&FindingFilter { host_id: Some(id), ..Default::default() })
                .await
                .unwrap()
                .items;
            assert_eq!(f.len(), 1, "{f:?}");
            f.into_iter().next().unwrap()
        };
        // A thousand short runs in two reports: one finding.
        s.reconcile_findings(id, Some("web"), &[run(600, true)], kinds, LIMIT, at(1)).await.unwrap();
        s.reconcile_findings(id, Some("web"), &[run(400, true)], kinds, LIMIT, at(2)).await.unwrap();
        let f = find().await;
        assert_eq!((f.occurrences, f.transient, f.status), (1000, true, FindingStatus::Open));
        // The program now runs long, then stops: the finding does not resolve by itself.
        s.reconcile_findings(id, Some("web"), &[run(1, false)], kinds, LIMIT, at(3)).await.unwrap();
        s.reconcile_findings(id, Some("web"), &[run(0, false)], kinds, LIMIT, at(4)).await.unwrap();
        let ch = s.reconcile_findings(id, Some("web"), &[], kinds, LIMIT, at(5)).await.unwrap();
        assert!(ch.is_empty(), "{ch:?}");
        let f = find().await;
        assert_eq!((f.occurrences, f.status, f.last_seen), (1001, FindingStatus::Open, at(4)));
        // Acknowledged, it stays so while nothing new runs ...
        s.acknowledge(f.id, "alice", Some("a build"), at(6)).await.unwrap();
        s.reconcile_findings(id, Some("web"), &[], kinds, LIMIT, at(7)).await.unwrap();
        assert_eq!(find().await.status, FindingStatus::Acknowledged);
        // ... and reopens when the program runs again.
        let ch = s.reconcile_findings(id, Some("web"), &[run(1, true)], kinds, LIMIT, at(8)).await.unwrap();
        assert!(matches!(ch.as_slice(), [FindingChange::Reopened { .. }]), "{ch:?}");
        let f = find().await;
        assert_eq!((f.occurrences, f.status, f.acked_by), (1002, FindingStatus::Open, None));
        // A persistent-only finding still resolves by itself.
        let l = obs(FindingKind::UnexpectedListener, "tcp/0.0.0.0:8000");
        s.reconcile_findings(id, Some("web"), std::slice::from_ref(&l), kinds, LIMIT, at(9)).await.unwrap();
        let ch = s.reconcile_findings(id, Some("web"), &[], kinds, LIMIT, at(10)).await.unwrap();
        assert!(matches!(ch.as_slice(), [FindingChange::Resolved { subject, .. }] if *subject == l.subject));
    }

    #[tokio::test]
    async fn a_burst_is_held_back_past_the_budget_and_counted_exactly() {
        let s = SqliteStore::open_in_memory().unwrap();
        let id = enroll(&s, &facts("m1"), "h1", at(0)).await.unwrap();
        let kinds = findings::STATE_KINDS;
        let program = |i: usize| Observation {
            occurrences: 1,
            transient: true,
            severity: Severity::Medium,
            ..obs(FindingKind::UnexpectedProcess, &format!("/opt/build/step-{i}"))
        };
        let mut burst: Vec<Observation> = (0..30).map(program).collect();
        // A built-in rule's finding in the middle, and a high one: never held back.
        burst.insert(
            15,
            Observation { rule: Some("exe-in-temp".into()), severity: Severity::High, ..program(1000) },
        );
        burst.insert(
            20,
            Observation { transient: true, ..obs(FindingKind::UnexpectedListener, "tcp/0.0.0.0:9") },
        );
        s.reconcile_findings(id, Some("web"), &burst[..20], kinds, 10, at(1)).await.unwrap();
        s.reconcile_findings(id, Some("web"), &burst[20..], kinds, 10, at(2)).await.unwrap();
        let all =
            s.list_findings(&FindingFilter { host_id: Some(id), ..Default::default() }).await.unwrap().items;
        let count = |k: FindingKind| all.iter().filter(|f| f.kind == k).count();
        assert_eq!(count(FindingKind::UnexpectedProcess), 11, "10 within the budget, and the rule's");
        assert_eq!(count(FindingKind::UnexpectedListener), 1);
        let held = all.iter().find(|f| f.kind == FindingKind::FindingsHeldBack).expect("held-back finding");
        assert_eq!(held.occurrences, 20, "30 new processes, 10 opened");
        assert_eq!(held.detail["limit_per_minute"], 10);
        // A minute later the budget is back; findings already open refresh whatever the budget.
        let ch = s.reconcile_findings(id, Some("web"), &[program(500)], kinds, 10, at(70)).await.unwrap();
        assert!(matches!(ch.as_slice(), [FindingChange::Opened { .. }]), "{ch:?}");
    }

    #[tokio::test]
    async fn baselines_bump_the_revision_only_on_change() {
        let s = SqliteStore::open_in_memory().unwrap();
        s.put_baseline("web", "name = \"web\"", "admin", at(0)).await.unwrap();
        assert_eq!(s.baselines_revision().await.unwrap(), 1);
        s.put_baseline("web", "name = \"web\"", "admin", at(1)).await.unwrap();
        assert_eq!(s.baselines_revision().await.unwrap(), 1);
        s.put_baseline("web", "name = \"web\"\n", "admin", at(2)).await.unwrap();
        assert_eq!(s.baselines_revision().await.unwrap(), 2);
        let b = s.baselines().await.unwrap();
        assert_eq!((b.len(), b[0].applied_at), (1, at(2)));
    }

    #[tokio::test]
    async fn credentials() {
        let s = SqliteStore::open_in_memory().unwrap();
        assert_eq!(s.count_api_tokens().await.unwrap(), 0);
        let new =
            |name, hash| NewCredential { name, hash, created_by: "bootstrap", expires_at: None, now: at(0) };
        let t = s.create_api_token(&new("boot", "th"), "admin").await.unwrap();
        assert_eq!(s.find_api_token("th").await.unwrap(), Some(t));
        assert_eq!(s.find_api_token("nope").await.unwrap(), None);
        let e = s.create_enroll_secret(&new("default", "eh"), &BTreeMap::new()).await.unwrap();
        assert_eq!(s.find_enroll_secret("eh").await.unwrap(), Some(e));
        assert!(
            s.create_api_token(&new("x", "th2"), "root").await.is_err(),
            "roles are checked by the schema"
        );
        s.audit("admin", "apply_baseline", "web", json!({}), at(1)).await.unwrap();
        assert_eq!(count_rows(&s, "audit_log").await, 3, "the two creations and the baseline");
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    /// History older than the cut goes in batches of at most `max` rows a table, oldest first;
    /// what is newer stays, and so does the current state.
    #[tokio::test]
    async fn history_is_pruned_in_bounded_batches_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("hw.db")).unwrap();
        s.tx(|tx| {
            tx.execute_batch(
                "INSERT INTO hosts (id, hostname, machine_id, enrolled_at) VALUES (1, 'h', 'm', '2026-01-01T00:00:00Z');
                 INSERT INTO processes (host_id, pid, ppid, name, uid, start_time) VALUES (1, 5, 1, 'old', 0, '2020-01-01T00:00:00Z');",
            )?;
            for day in 1..=5 {
                let at = format!("2026-01-0{day}T00:00:00Z");
                tx.execute(
                    "INSERT INTO process_events (host_id, at, kind, pid, start_time) VALUES (1, ?1, 'exec', ?2, ?1)",
                    params![at, day],
                )?;
                tx.execute(
                    "INSERT INTO socket_events (host_id, at, kind, socket, protocol, local_address, local_port) VALUES (1, ?1, 'open', 'listener', 'tcp', '0.0.0.0', ?2)",
                    params![at, day],
                )?;
                tx.execute(
                    "INSERT INTO file_changes (host_id, at, path, change, origin, detail) VALUES (1, ?1, ?2, 'modified', 'live', '{}')",
                    params![at, format!("/etc/f{day}")],
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
        let left = |s: SqliteStore| async move {
            s.read(|tx| {
                let mut out = Vec::new();
                for t in ["process_events", "socket_events", "file_changes"] {
                    let ats: Vec<String> = tx
                        .prepare(&format!("SELECT at FROM {t} ORDER BY at"))?
                        .query_map([], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    out.push(ats.into_iter().map(|a| a[8..10].to_owned()).collect::<Vec<_>>().join(","));
                }
                Ok(out)
            })
            .await
        };
        // Days 1 to 3 are older than the cut; two a table a call.
        let cut = parse_ts("2026-01-04T00:00:00Z").unwrap();
        assert_eq!(s.prune_history(cut, 2).await.unwrap(), 6);
        assert_eq!(left(s.clone()).await.unwrap(), ["03,04,05"; 3]);
        assert_eq!(s.prune_history(cut, 2).await.unwrap(), 3);
        assert_eq!(s.prune_history(cut, 2).await.unwrap(), 0);
        assert_eq!(left(s.clone()).await.unwrap(), ["04,05"; 3]);
        let processes: i64 =
            s.read(|tx| Ok(tx.query_row("SELECT count(*) FROM processes", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(processes, 1, "current state is not history");
    }
}
