//! Triage and alerting in the store: acknowledgements, silences, and the alert outbox.
//!
//! Invariant: an alert event is written in the transaction that opens, reopens or resolves its
//! finding, so every change a sink should hear of is in the outbox exactly once, whatever
//! crashes after. Which silence covers a host is looked up there too, from the host's tags as
//! stored; what covers it and what an acknowledgement does are [`crate::findings`]'s to decide.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Transaction, params};
use time::OffsetDateTime;

use super::{json, parse_enum, parse_ts, to_json, ts};
use crate::findings;
use crate::model::{AlertEvent, Silence, SilenceScope};
use crate::store::Result;

/// The silence covering `host_id` at `now`, if any, as [`findings::covering_silence`] decides
/// among those in force (the one ending last first).
pub(super) fn active_silence(tx: &Transaction<'_>, host_id: i64, now: &str) -> Result<Option<i64>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, host_id, selector FROM silences WHERE starts_at <= ?1 AND ends_at > ?1 ORDER BY ends_at DESC",
    )?;
    let rows: Vec<(i64, Option<i64>, Option<String>)> =
        stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?;
    if rows.is_empty() {
        return Ok(None);
    }
    let tags: BTreeMap<String, String> = tx
        .query_row("SELECT tags FROM hosts WHERE id = ?1", [host_id], |r| r.get::<_, String>(0))
        .optional()?
        .map(|t| json(&t, "host tags"))
        .transpose()?
        .unwrap_or_default();
    let mut in_force = Vec::with_capacity(rows.len());
    for (id, host, selector) in rows {
        match (host, selector) {
            (Some(h), _) => in_force.push((id, SilenceScope::Host(h))),
            (None, Some(sel)) => in_force.push((id, SilenceScope::Selector(json(&sel, "silence selector")?))),
            // Neither a host nor a selector: a row no API call writes; it covers nothing.
            (None, None) => {}
        }
    }
    Ok(findings::covering_silence(in_force.iter().map(|(id, scope)| (*id, scope)), host_id, &tags))
}

/// Puts an event in the outbox.
pub(super) fn alert_event(
    tx: &Transaction<'_>,
    finding_id: i64,
    event: &str,
    silenced: bool,
    now: &str,
) -> Result<()> {
    tx.prepare_cached("INSERT INTO alert_events (finding_id, event, silenced, at) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![finding_id, event, silenced, now])?;
    Ok(())
}

pub(super) fn create_silence(tx: &Transaction<'_>, s: &Silence) -> Result<i64> {
    let (host, selector) = match &s.scope {
        SilenceScope::Host(h) => (Some(*h), None),
        SilenceScope::Selector(sel) => (None, Some(to_json(sel))),
    };
    tx.execute(
        "INSERT INTO silences (host_id, selector, starts_at, ends_at, reason, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![host, selector, ts(s.starts_at), ts(s.ends_at), s.reason, s.created_by],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Silences ending after `after` (all, if `None`), newest first.
pub(super) fn silences(tx: &Transaction<'_>, after: Option<OffsetDateTime>) -> Result<Vec<Silence>> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, host_id, selector, starts_at, ends_at, reason, created_by FROM silences \
         WHERE ?1 IS NULL OR ends_at > ?1 ORDER BY id DESC",
    )?;
    let mut rows = stmt.query([after.map(ts)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let scope = match (r.get::<_, Option<i64>>(1)?, r.get::<_, Option<String>>(2)?) {
            (Some(h), _) => SilenceScope::Host(h),
            (None, sel) => {
                SilenceScope::Selector(json(&sel.unwrap_or_else(|| "{}".to_owned()), "silence selector")?)
            }
        };
        out.push(Silence {
            id: r.get(0)?,
            scope,
            starts_at: parse_ts(&r.get::<_, String>(3)?)?,
            ends_at: parse_ts(&r.get::<_, String>(4)?)?,
            reason: r.get(5)?,
            created_by: r.get(6)?,
        });
    }
    Ok(out)
}

/// Takes (or renews) `holder`'s lease on `sink`'s cursor until `until`, starting a new sink at
/// the end of the outbox (a sink hears of what happens from when it is configured); the cursor,
/// or `None` if another collector holds the lease.
pub(super) fn lease_cursor(
    tx: &Transaction<'_>,
    sink: &str,
    holder: &str,
    now: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<Option<i64>> {
    tx.execute(
        "INSERT OR IGNORE INTO alert_cursors (sink, last_id) \
         VALUES (?1, (SELECT COALESCE(MAX(id), 0) FROM alert_events))",
        [sink],
    )?;
    let taken = tx.execute(
        "UPDATE alert_cursors SET leased_by = ?2, lease_until = ?3 WHERE sink = ?1 \
         AND (leased_by IS NULL OR leased_by = ?2 OR lease_until IS NULL OR lease_until <= ?4)",
        params![sink, holder, ts(until), ts(now)],
    )?;
    if taken == 0 {
        return Ok(None);
    }
    Ok(Some(tx.query_row("SELECT last_id FROM alert_cursors WHERE sink = ?1", [sink], |r| r.get(0))?))
}

/// Moves `sink`'s cursor to `last_id` if `holder` still holds its lease; whether it did.
pub(super) fn advance_cursor(tx: &Transaction<'_>, sink: &str, holder: &str, last_id: i64) -> Result<bool> {
    Ok(tx.execute(
        "UPDATE alert_cursors SET last_id = ?3 WHERE sink = ?1 AND leased_by = ?2 AND last_id < ?3",
        params![sink, holder, last_id],
    )? > 0)
}

/// Outbox events after `after`, oldest first, with their findings as they are now.
pub(super) fn events_after(tx: &Transaction<'_>, after: i64, limit: u32) -> Result<Vec<AlertEvent>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT e.id, e.event, e.silenced, e.at, {} FROM alert_events e \
         JOIN findings f ON f.id = e.finding_id JOIN hosts h ON h.id = f.host_id \
         WHERE e.id > ?1 ORDER BY e.id LIMIT ?2",
        super::FINDING_COLUMNS
    ))?;
    let mut rows = stmt.query(params![after, limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(AlertEvent {
            id: r.get(0)?,
            event: r.get(1)?,
            silenced: r.get(2)?,
            at: parse_ts(&r.get::<_, String>(3)?)?,
            finding: super::finding_from_row_at(r, 4)?,
        });
    }
    Ok(out)
}

/// Acknowledges finding `id` with a note where [`findings::acknowledges`] says so: `Ok(None)` if
/// there is no such finding; one it leaves alone (resolved) is returned unchanged.
pub(super) fn acknowledge(
    tx: &Transaction<'_>,
    id: i64,
    actor: &str,
    note: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<crate::model::Finding>> {
    let status: Option<String> =
        tx.query_row("SELECT status FROM findings WHERE id = ?1", [id], |r| r.get(0)).optional()?;
    let Some(status) = status else { return Ok(None) };
    if findings::acknowledges(parse_enum(&status)?) {
        tx.execute(
            "UPDATE findings SET status = 'acknowledged', acked_by = ?2, acked_at = ?3, ack_note = ?4 WHERE id = ?1",
            params![id, actor, ts(now), note],
        )?;
    }
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {} FROM findings f JOIN hosts h ON h.id = f.host_id WHERE f.id = ?1",
        super::FINDING_COLUMNS
    ))?;
    let mut rows = stmt.query([id])?;
    rows.next()?.map(|r| super::finding_from_row_at(r, 0)).transpose()
}

/// Deletes the outbox events every sink has delivered (all of them, where there is no sink: a
/// new sink starts at the end), then the oldest beyond `max` (a sink down for that long loses
/// them, counted). Returns (delivered, dropped).
///
/// A cursor not leased for a day (a sink renamed or removed from every collector's
/// configuration) holds nothing back.
pub(super) fn prune_events(tx: &Transaction<'_>, max: u64, now: OffsetDateTime) -> Result<(u64, u64)> {
    let stale = ts(now - time::Duration::days(1));
    let delivered = tx.execute(
        "DELETE FROM alert_events WHERE id <= COALESCE((SELECT MIN(last_id) FROM alert_cursors \
         WHERE lease_until IS NOT NULL AND lease_until > ?1), (SELECT MAX(id) FROM alert_events))",
        [stale],
    )? as u64;
    let count: u64 = tx.query_row("SELECT COUNT(*) FROM alert_events", [], |r| r.get(0))?;
    let dropped = if count > max {
        tx.execute(
            "DELETE FROM alert_events WHERE id IN (SELECT id FROM alert_events ORDER BY id LIMIT ?1)",
            [count - max],
        )? as u64
    } else {
        0
    };
    Ok((delivered, dropped))
}
