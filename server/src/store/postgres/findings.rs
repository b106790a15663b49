//! Findings and the alert outbox in the PostgreSQL store: each observation opens, refreshes or
//! reopens its finding as [`crate::findings`] decides, and every opening, reopening, escalation
//! and resolution is an outbox event in the same transaction.
//!
//! With several collectors on one database, the outbox's ids must become visible in the order
//! they are given, or a sink reading from its cursor could pass an id whose transaction had not
//! committed yet and never see it: a transaction takes the outbox's advisory lock before its first
//! event, and holds it to its commit.

use std::collections::HashSet;

use deadpool_postgres::GenericClient;
use hostwatch_proto::v1::{FindingKind, FindingStatus, Severity};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::{Col, error, ms};
use crate::findings;
use crate::model::{AlertEvent, Finding, FindingChange, Observation, SilenceScope};
use crate::store::{Result, StoreError, parse_enum};

/// The advisory lock the outbox's writers take ("hwoutbox" as an integer).
const OUTBOX_LOCK: i64 = 0x6877_6f75_7462_6f78;

/// A finding's columns, for [`finding_from_row`]; `f` is findings, `h` hosts.
pub(super) const FINDING_COLUMNS: &str = "f.id, f.host_id, h.hostname, f.kind, f.rule, f.severity, f.subject, f.detail, \
     f.status, f.first_seen, f.last_seen, f.resolved_at, f.silenced_by, f.acked_by, f.acked_at, f.ack_note, \
     f.occurrences, f.transient";

/// A finding from [`FINDING_COLUMNS`] starting at column `at`.
pub(super) fn finding_from_row(r: &Row, at: usize) -> Result<Finding> {
    let rule: String = r.col(at + 4)?;
    Ok(Finding {
        id: r.col(at)?,
        host_id: r.col(at + 1)?,
        hostname: r.col(at + 2)?,
        kind: parse_enum(r.col::<&str>(at + 3)?)?,
        rule: (!rule.is_empty()).then_some(rule),
        severity: parse_enum(r.col::<&str>(at + 5)?)?,
        subject: r.col(at + 6)?,
        detail: r.col(at + 7)?,
        status: parse_enum(r.col::<&str>(at + 8)?)?,
        first_seen: r.col(at + 9)?,
        last_seen: r.col(at + 10)?,
        resolved_at: r.col(at + 11)?,
        silenced: r.col::<Option<i64>>(at + 12)?.is_some(),
        acked_by: r.col(at + 13)?,
        acked_at: r.col(at + 14)?,
        ack_note: r.col(at + 15)?,
        occurrences: u64::try_from(r.col::<i64>(at + 16)?).unwrap_or_default(),
        transient: r.col(at + 17)?,
    })
}

/// The live statuses ([`findings::LIVE`]) as a query parameter.
fn live() -> Vec<&'static str> {
    findings::LIVE.iter().map(|s| s.as_str()).collect()
}

/// The silence in force for a host at `now`, if one covers it.
async fn active_silence(tx: &impl GenericClient, host_id: i64, now: OffsetDateTime) -> Result<Option<i64>> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, host_id, selector FROM silences WHERE starts_at <= $1 AND ends_at > $1 ORDER BY ends_at DESC",
        )
        .await
        .map_err(error)?;
    let rows = tx.query(&stmt, &[&ms(now)]).await.map_err(error)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let tags = tx
        .query_opt("SELECT tags FROM hosts WHERE id = $1", &[&host_id])
        .await
        .map_err(error)?
        .map(|r| r.col::<Json<std::collections::BTreeMap<String, String>>>(0))
        .transpose()?
        .map(|Json(t)| t)
        .unwrap_or_default();
    let mut in_force = Vec::with_capacity(rows.len());
    for r in &rows {
        match (r.col::<Option<i64>>(1)?, r.col::<Option<serde_json::Value>>(2)?) {
            (Some(h), _) => in_force.push((r.col::<i64>(0)?, SilenceScope::Host(h))),
            (None, Some(sel)) => {
                let sel = serde_json::from_value(sel)
                    .map_err(|e| StoreError::Corrupt(format!("silence selector: {e}")))?;
                in_force.push((r.col::<i64>(0)?, SilenceScope::Selector(sel)));
            }
            (None, None) => {}
        }
    }
    Ok(findings::covering_silence(in_force.iter().map(|(id, scope)| (*id, scope)), host_id, &tags))
}

/// Puts an event in the outbox, in the order of commits (see the module's documentation).
async fn alert_event(
    tx: &impl GenericClient,
    finding_id: i64,
    event: &str,
    silenced: bool,
    now: OffsetDateTime,
) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&OUTBOX_LOCK]).await.map_err(error)?;
    let stmt = tx
        .prepare_cached("INSERT INTO alert_events (finding_id, event, silenced, at) VALUES ($1, $2, $3, $4)")
        .await
        .map_err(error)?;
    tx.execute(&stmt, &[&finding_id, &event, &silenced, &ms(now)]).await.map_err(error)?;
    Ok(())
}

/// Resolves a host's open and acknowledged findings (of `kind`, or all).
pub(super) async fn resolve_where(
    tx: &impl GenericClient,
    host_id: i64,
    kind: Option<FindingKind>,
    now: OffsetDateTime,
) -> Result<Vec<FindingChange>> {
    let rows = tx
        .query(
            "SELECT id, kind, subject FROM findings WHERE host_id = $1 AND status = ANY($2) \
             AND ($3::text IS NULL OR kind = $3) ORDER BY id",
            &[&host_id, &live(), &kind.map(FindingKind::as_str)],
        )
        .await
        .map_err(error)?;
    let mut changes = Vec::with_capacity(rows.len());
    for r in &rows {
        changes.push(resolve(tx, host_id, r.col(0)?, r.col::<&str>(1)?, r.col(2)?, now).await?);
    }
    Ok(changes)
}

/// Resolves one finding and puts the resolution in the outbox.
async fn resolve(
    tx: &impl GenericClient,
    host_id: i64,
    id: i64,
    kind: &str,
    subject: String,
    now: OffsetDateTime,
) -> Result<FindingChange> {
    tx.execute("UPDATE findings SET status = 'resolved', resolved_at = $1 WHERE id = $2", &[&ms(now), &id])
        .await
        .map_err(error)?;
    let silenced = active_silence(tx, host_id, now).await?.is_some();
    alert_event(tx, id, "resolved", silenced, now).await?;
    Ok(FindingChange::Resolved { id, kind: parse_enum(kind)?, subject })
}

/// Keys of findings as stored: (kind, rule or empty, subject).
pub(super) type FindingKeys = HashSet<(String, String, String)>;

/// Applies observations of one host: each opens, refreshes or reopens its finding as
/// [`findings::step`] decides, within the host's budget of new findings (`limit` a minute); what
/// the budget holds back is counted in the host's `findings_held_back` finding. Returns the
/// changes and the keys of every finding observed.
pub(super) async fn apply_observations(
    tx: &impl GenericClient,
    host_id: i64,
    observed: &[Observation],
    limit: u32,
    now: OffsetDateTime,
) -> Result<(Vec<FindingChange>, FindingKeys)> {
    let stmt = tx
        .prepare_cached("SELECT kind, rule, severity FROM findings WHERE host_id = $1 AND opened_at > $2")
        .await
        .map_err(error)?;
    let mut used = 0u32;
    for r in tx.query(&stmt, &[&host_id, &ms(now - findings::BUDGET_WINDOW)]).await.map_err(error)? {
        let (kind, rule, severity): (&str, &str, &str) = (r.col(0)?, r.col(1)?, r.col(2)?);
        if findings::counts_against_budget(parse_enum(kind)?, !rule.is_empty(), parse_enum(severity)?) {
            used = used.saturating_add(1);
        }
    }
    let mut budget = findings::Budget::new(limit, used);
    let mut changes = Vec::new();
    let mut seen = HashSet::new();
    let mut held = 0u64;
    for o in observed {
        let (kind, rule, subject) = o.key();
        seen.insert((kind.as_str().to_owned(), rule.to_owned(), subject.to_owned()));
        match upsert(tx, host_id, o, &mut budget, now).await? {
            Upsert::Changed(c) => changes.extend(c),
            Upsert::HeldBack => held += o.occurrences,
        }
    }
    if held > 0 {
        let count = findings::held_back(held, budget, host_id, now);
        if let Upsert::Changed(c) = upsert(tx, host_id, &count, &mut budget, now).await? {
            changes.extend(c);
        }
    }
    Ok((changes, seen))
}

/// What [`upsert`] did.
enum Upsert {
    Changed(Option<FindingChange>),
    HeldBack,
}

/// Opens a finding for an observation, refreshes it, or reopens it, as [`findings::step`] decides.
async fn upsert(
    tx: &impl GenericClient,
    host_id: i64,
    o: &Observation,
    budget: &mut findings::Budget,
    now: OffsetDateTime,
) -> Result<Upsert> {
    let (kind, rule, subject) = o.key();
    let kind = kind.as_str();
    let stmt = tx
        .prepare_cached(
            "SELECT id, status, severity, transient, detail FROM findings \
             WHERE host_id = $1 AND kind = $2 AND rule = $3 AND subject = $4",
        )
        .await
        .map_err(error)?;
    let row = tx.query_opt(&stmt, &[&host_id, &kind, &rule, &subject]).await.map_err(error)?;
    let mut stored = None;
    let existing = match &row {
        None => None,
        Some(r) => {
            if findings::accumulates(o.kind) {
                stored = Some(r.col::<serde_json::Value>(4)?);
            }
            Some((
                r.col::<i64>(0)?,
                findings::Existing {
                    status: parse_enum::<FindingStatus>(r.col::<&str>(1)?)?,
                    severity: parse_enum::<Severity>(r.col::<&str>(2)?)?,
                    transient: r.col(3)?,
                },
            ))
        }
    };
    let detail = findings::detail_after(stored.as_ref(), o);
    // An observation stands for at least the one occurrence that made its finding.
    let occurrences = i64::try_from(o.occurrences).unwrap_or(i64::MAX);
    let now_ms = ms(now);
    Ok(match (findings::step(existing.as_ref().map(|e| &e.1), o, budget), existing) {
        (findings::Step::HoldBack, _) => Upsert::HeldBack,
        (findings::Step::Open, _) => {
            let silence = active_silence(tx, host_id, now).await?;
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO findings (host_id, kind, rule, severity, subject, detail, status, first_seen, \
                     last_seen, opened_at, silenced_by, occurrences, transient) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $7, $7, $8, GREATEST($9::bigint, 1), $10) RETURNING id",
                )
                .await
                .map_err(error)?;
            let id: i64 = tx
                .query_one(
                    &stmt,
                    &[
                        &host_id,
                        &kind,
                        &rule,
                        &o.severity.as_str(),
                        &subject,
                        &detail,
                        &now_ms,
                        &silence,
                        &occurrences,
                        &o.transient,
                    ],
                )
                .await
                .map_err(error)?
                .col(0)?;
            alert_event(tx, id, "opened", silence.is_some(), now).await?;
            Upsert::Changed(Some(FindingChange::Opened { id, kind: o.kind, subject: o.subject.clone() }))
        }
        (findings::Step::Reopen, Some((id, _))) => {
            let silence = active_silence(tx, host_id, now).await?;
            let stmt = tx
                .prepare_cached(
                    "UPDATE findings SET status = 'open', severity = $1, detail = $2, last_seen = $3, opened_at = $3, \
                     resolved_at = NULL, times_opened = times_opened + 1, silenced_by = $5, acked_by = NULL, \
                     acked_at = NULL, ack_note = NULL, occurrences = occurrences + $6, transient = transient OR $7 \
                     WHERE id = $4",
                )
                .await
                .map_err(error)?;
            tx.execute(
                &stmt,
                &[&o.severity.as_str(), &detail, &now_ms, &id, &silence, &occurrences, &o.transient],
            )
            .await
            .map_err(error)?;
            alert_event(tx, id, "reopened", silence.is_some(), now).await?;
            Upsert::Changed(Some(FindingChange::Reopened { id, kind: o.kind, subject: o.subject.clone() }))
        }
        (findings::Step::Refresh { escalated }, Some((id, _))) => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE findings SET severity = $1, detail = $2, last_seen = $3, occurrences = occurrences + $5, \
                     transient = transient OR $6 WHERE id = $4",
                )
                .await
                .map_err(error)?;
            tx.execute(&stmt, &[&o.severity.as_str(), &detail, &now_ms, &id, &occurrences, &o.transient])
                .await
                .map_err(error)?;
            if escalated {
                let silenced = active_silence(tx, host_id, now).await?.is_some();
                alert_event(tx, id, "escalated", silenced, now).await?;
            }
            Upsert::Changed(None)
        }
        (findings::Step::Reopen | findings::Step::Refresh { .. }, None) => {
            return Err(StoreError::Database("a finding to update that does not exist".to_owned()));
        }
    })
}

/// Resolves the open or acknowledged findings of `state_kinds` no longer observed (`seen`),
/// never a transient one.
pub(super) async fn resolve_unseen(
    tx: &impl GenericClient,
    host_id: i64,
    seen: &FindingKeys,
    state_kinds: &[FindingKind],
    now: OffsetDateTime,
) -> Result<Vec<FindingChange>> {
    let rows = tx
        .query(
            "SELECT id, kind, rule, subject, transient FROM findings WHERE host_id = $1 AND status = ANY($2) ORDER BY id",
            &[&host_id, &live()],
        )
        .await
        .map_err(error)?;
    let mut changes = Vec::new();
    for r in &rows {
        let (id, kind, rule, subject, transient): (i64, &str, &str, String, bool) =
            (r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?, r.col(4)?);
        if findings::resolves_by_absence(parse_enum(kind)?, transient, state_kinds)
            && !seen.contains(&(kind.to_owned(), rule.to_owned(), subject.clone()))
        {
            changes.push(resolve(tx, host_id, id, kind, subject, now).await?);
        }
    }
    Ok(changes)
}

/// Acknowledges an open or acknowledged finding; the finding as it now is.
pub(super) async fn acknowledge(
    tx: &impl GenericClient,
    id: i64,
    actor: &str,
    note: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<Finding>> {
    let Some(row) =
        tx.query_opt("SELECT status FROM findings WHERE id = $1 FOR UPDATE", &[&id]).await.map_err(error)?
    else {
        return Ok(None);
    };
    if findings::acknowledges(parse_enum(row.col::<&str>(0)?)?) {
        tx.execute(
            "UPDATE findings SET status = 'acknowledged', acked_by = $2, acked_at = $3, ack_note = $4 WHERE id = $1",
            &[&id, &actor, &ms(now), &note],
        )
        .await
        .map_err(error)?;
    }
    let sql =
        format!("SELECT {FINDING_COLUMNS} FROM findings f JOIN hosts h ON h.id = f.host_id WHERE f.id = $1");
    tx.query_opt(&sql, &[&id]).await.map_err(error)?.map(|r| finding_from_row(&r, 0)).transpose()
}

/// Outbox events after `after`, oldest first, at most `limit`.
pub(super) async fn events_after(tx: &impl GenericClient, after: i64, limit: u32) -> Result<Vec<AlertEvent>> {
    let sql = format!(
        "SELECT e.id, e.event, e.silenced, e.at, {FINDING_COLUMNS} FROM alert_events e \
         JOIN findings f ON f.id = e.finding_id JOIN hosts h ON h.id = f.host_id \
         WHERE e.id > $1 ORDER BY e.id LIMIT $2"
    );
    let rows = tx.query(&sql, &[&after, &i64::from(limit)]).await.map_err(error)?;
    rows.iter()
        .map(|r| {
            Ok(AlertEvent {
                id: r.col(0)?,
                event: r.col(1)?,
                silenced: r.col(2)?,
                at: r.col(3)?,
                finding: finding_from_row(r, 4)?,
            })
        })
        .collect()
}

/// Deletes what every sink with a live lease has delivered (all of it, if none), then the oldest
/// beyond `max`; (delivered, dropped).
pub(super) async fn prune_events(
    tx: &impl GenericClient,
    max: u64,
    now: OffsetDateTime,
) -> Result<(u64, u64)> {
    let stale = ms(now - time::Duration::days(1));
    let delivered = tx
        .execute(
            "DELETE FROM alert_events WHERE id <= COALESCE((SELECT MIN(last_id) FROM alert_cursors \
             WHERE lease_until IS NOT NULL AND lease_until > $1), (SELECT MAX(id) FROM alert_events))",
            &[&stale],
        )
        .await
        .map_err(error)?;
    let count: i64 = tx.query_one("SELECT COUNT(*) FROM alert_events", &[]).await.map_err(error)?.col(0)?;
    let max = i64::try_from(max).unwrap_or(i64::MAX);
    let dropped = if count > max {
        tx.execute(
            "DELETE FROM alert_events WHERE id IN (SELECT id FROM alert_events ORDER BY id LIMIT $1)",
            &[&(count - max)],
        )
        .await
        .map_err(error)?
    } else {
        0
    };
    Ok((delivered, dropped))
}
