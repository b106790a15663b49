//! Reports and verdicts in the PostgreSQL store: a report's facts and content applied in one
//! transaction with the findings its terms call for; the engine's verdict applied in another.
//! Where a report stands in its sequence is [`ReportStep`]'s to decide, what it does to the state
//! [`super::state`]'s plan: here they are only executed.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use tokio_postgres::types::Json;

use super::findings::{
    acknowledge, apply_observations, events_after, prune_events, resolve_unseen, resolve_where,
};
use super::hosts::host_in;
use super::{Col, PgStore, error, ms, state};
use crate::model::{
    AlertEvent, Applied, Content, ExecExplained, Finding, FindingChange, HostState, Observation, PeerItems,
    Recorded, ReportRecord, peer_key,
};
use crate::store::state_changes::{ReportStep, Sequence};
use crate::store::{HostTags, ReportOutcome, ReportTerms, Result, StoreError, Verdict, parse_enum};

impl PgStore {
    /// See `Store::record_report`.
    pub async fn record_report(
        &self,
        host_id: i64,
        mut report: ReportRecord,
        now: OffsetDateTime,
        terms: ReportTerms,
    ) -> Result<ReportOutcome> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let missing = || StoreError::NotFound(format!("host {host_id}"));
        let tags_before = host_tags(&*tx, host_id).await?.ok_or_else(missing)?;
        if let Some(judge) = terms.judge_tags {
            report.facts.tags = judge(&tags_before);
        }
        let (applied, recorded) = apply_report(&*tx, host_id, &report, now).await?;
        let mut changes = Vec::new();
        for kind in &terms.resolves {
            changes.extend(resolve_where(&*tx, host_id, Some(*kind), now).await?);
        }
        if let Some(findings_for) = terms.findings_for {
            let observed = findings_for(&applied, &recorded);
            if !observed.is_empty() {
                changes.extend(apply_observations(&*tx, host_id, &observed, terms.limit, now).await?.0);
            }
        }
        let host = host_in(&*tx, host_id).await?.ok_or_else(missing)?;
        tx.commit().await.map_err(error)?;
        Ok(ReportOutcome { applied, recorded, tags_before, host, changes })
    }

    /// A host's whole state, as the engine reads it.
    pub async fn host_state(&self, host_id: i64) -> Result<HostState> {
        Ok(state::load(&self.client().await?, host_id).await?.state())
    }

    /// See `Store::apply_verdict`.
    pub async fn apply_verdict(
        &self,
        host_id: i64,
        verdict: Verdict,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<Vec<FindingChange>> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        // Written only when it changed: most verdicts keep the workload, and an unchanged row
        // is not rewritten (no dead tuple, no WAL).
        tx.execute(
            "UPDATE hosts SET workload = $1 WHERE id = $2 AND workload IS DISTINCT FROM $1",
            &[&verdict.workload, &host_id],
        )
        .await
        .map_err(error)?;
        let (mut changes, seen) = apply_observations(&*tx, host_id, &verdict.observed, limit, now).await?;
        changes.extend(resolve_unseen(&*tx, host_id, &seen, &verdict.state_kinds, now).await?);
        if !verdict.kept.is_empty() {
            changes.extend(apply_observations(&*tx, host_id, &verdict.kept, limit, now).await?.0);
        }
        explain_execs(&*tx, host_id, &verdict.explained).await?;
        tx.commit().await.map_err(error)?;
        Ok(changes)
    }

    /// See `Store::record_findings`.
    pub async fn record_findings(
        &self,
        host_id: i64,
        observed: &[Observation],
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<Vec<FindingChange>> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let (changes, _) = apply_observations(&*tx, host_id, observed, limit, now).await?;
        tx.commit().await.map_err(error)?;
        Ok(changes)
    }

    /// See `Store::retire_host`.
    pub async fn retire_host(&self, host_id: i64, now: OffsetDateTime) -> Result<Vec<FindingChange>> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        tx.execute(
            "UPDATE hosts SET retired_at = $1 WHERE id = $2 AND retired_at IS NULL",
            &[&ms(now), &host_id],
        )
        .await
        .map_err(error)?;
        let changes = resolve_where(&*tx, host_id, None, now).await?;
        tx.commit().await.map_err(error)?;
        Ok(changes)
    }

    /// Hosts running a process above the high-CPU threshold since a time in `(from, to]`.
    pub async fn hosts_running_hot(&self, from: OffsetDateTime, to: OffsetDateTime) -> Result<Vec<i64>> {
        self.all(
            "SELECT DISTINCT p.host_id FROM processes p JOIN hosts h ON h.id = p.host_id \
             WHERE p.cpu_high_since > $1 AND p.cpu_high_since <= $2 AND h.retired_at IS NULL ORDER BY p.host_id",
            &[&ms(from), &ms(to)],
            |r| r.col(0),
        )
        .await
    }

    /// See `Store::acknowledge`.
    pub async fn acknowledge(
        &self,
        id: i64,
        actor: &str,
        note: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<Finding>> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let finding = acknowledge(&*tx, id, actor, note, now).await?;
        tx.commit().await.map_err(error)?;
        Ok(finding)
    }

    /// Outbox events after `after`, oldest first, at most `limit`.
    pub async fn alert_events(&self, after: i64, limit: u32) -> Result<Vec<AlertEvent>> {
        events_after(&self.client().await?, after, limit).await
    }

    /// See `Store::prune_alert_events`.
    pub async fn prune_alert_events(&self, max: u64, now: OffsetDateTime) -> Result<(u64, u64)> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let pruned = prune_events(&*tx, max, now).await?;
        tx.commit().await.map_err(error)?;
        Ok(pruned)
    }

    /// Every non-retired host of `workload` with its peer items, as stored.
    pub async fn peer_items(&self, workload: &str) -> Result<HashMap<i64, PeerItems>> {
        let client = self.client().await?;
        let mut hosts: HashMap<i64, PeerItems> = HashMap::new();
        for r in client
            .query("SELECT id FROM hosts WHERE workload = $1 AND retired_at IS NULL", &[&workload])
            .await
            .map_err(error)?
        {
            hosts.insert(r.col(0)?, PeerItems::default());
        }
        for r in client
            .query(
                "SELECT DISTINCT p.host_id, COALESCE(p.exe, p.name) FROM processes p JOIN hosts h ON h.id = p.host_id \
                 WHERE h.workload = $1 AND h.retired_at IS NULL",
                &[&workload],
            )
            .await
            .map_err(error)?
        {
            hosts.entry(r.col(0)?).or_default().processes.insert(r.col(1)?);
        }
        for r in client
            .query(
                "SELECT DISTINCT l.host_id, l.protocol, l.port FROM listeners l JOIN hosts h ON h.id = l.host_id \
                 WHERE h.workload = $1 AND h.retired_at IS NULL",
                &[&workload],
            )
            .await
            .map_err(error)?
        {
            let port = u16::try_from(r.col::<i32>(2)?).map_err(|_| StoreError::Corrupt("listener port".to_owned()))?;
            hosts.entry(r.col(0)?).or_default().listeners.insert((parse_enum(r.col::<&str>(1)?)?, port));
        }
        for r in client
            .query(
                "SELECT DISTINCT c.host_id, c.protocol, c.remote_port, c.exe, c.process FROM connections c \
                 JOIN hosts h ON h.id = c.host_id WHERE h.workload = $1 AND h.retired_at IS NULL \
                 AND c.direction = 'outbound'",
                &[&workload],
            )
            .await
            .map_err(error)?
        {
            let port = u16::try_from(r.col::<i32>(2)?)
                .map_err(|_| StoreError::Corrupt("connection port".to_owned()))?;
            let key = peer_key(parse_enum(r.col::<&str>(1)?)?, port, r.col(3)?, r.col(4)?);
            hosts.entry(r.col(0)?).or_default().connections.insert(key);
        }
        Ok(hosts)
    }
}

/// A host's tags: held, last reported, and assigned by its enroll secret.
async fn host_tags(tx: &impl GenericClient, host_id: i64) -> Result<Option<HostTags>> {
    type Tags = Json<BTreeMap<String, String>>;
    let Some(r) = tx
        .query_opt(
            "SELECT h.tags, h.reported_tags, s.tags FROM hosts h \
             LEFT JOIN enroll_secrets s ON s.id = h.enroll_secret_id WHERE h.id = $1 FOR UPDATE OF h",
            &[&host_id],
        )
        .await
        .map_err(error)?
    else {
        return Ok(None);
    };
    let (Json(held), Json(reported)) = (r.col::<Tags>(0)?, r.col::<Tags>(1)?);
    let assigned = r.col::<Option<Tags>>(2)?.map(|Json(t)| t).unwrap_or_default();
    Ok(Some(HostTags { held, reported, assigned }))
}

/// The report's own part of `record_report`: facts, status, content by sequence number.
async fn apply_report(
    tx: &impl GenericClient,
    host_id: i64,
    report: &ReportRecord,
    now: OffsetDateTime,
) -> Result<(Applied, Recorded)> {
    let r = tx
        .query_opt("SELECT session, last_seq, prior_session FROM hosts WHERE id = $1", &[&host_id])
        .await
        .map_err(error)?
        .ok_or_else(|| StoreError::NotFound(format!("host {host_id}")))?;
    let (session, last_seq, prior): (i64, i64, Option<i64>) = (r.col(0)?, r.col(1)?, r.col(2)?);
    let step = ReportStep::of(
        Sequence { session: session as u64, last_seq: last_seq as u64, prior: prior.map(|p| p as u64) },
        report.session,
        report.seq,
        report.backlog,
    );
    if step.new_session {
        state::new_session(tx, host_id).await?;
    }
    let outcome = step.applied(&report.content);
    if step.replay {
        // Sent before and applied then: it changes nothing now, facts included (a replay must
        // not put back a hostname or tags the host has since changed). It does show the host
        // alive.
        tx.execute("UPDATE hosts SET last_seen = $1 WHERE id = $2", &[&ms(now), &host_id])
            .await
            .map_err(error)?;
        return Ok((outcome, Recorded::default()));
    }
    let mut recorded = match &report.content {
        Content::Snapshot(st) => state::replace(tx, host_id, st, now, !step.first, step.judging).await?,
        Content::Delta(d) => state::apply(tx, host_id, d, now, !step.first, step.judging).await?,
        Content::Heartbeat => Recorded::default(),
    };
    let f = &report.facts;
    let a = &report.agent;
    tx.execute(
        "UPDATE hosts SET hostname = $1, os = $2, kernel = $3, arch = $4, boot_time = $5, tags = $6, \
         agent_version = $7, interval_secs = $8, coverage_degraded = $9, coverage_why = $10, last_seen = $11, \
         goodbye = $12, agent_stats = COALESCE($14, agent_stats), cloud = $15, instance_id = $16, \
         reported_tags = $17, session = $18, last_seq = $19, prior_session = $20 WHERE id = $13",
        &[
            &f.hostname,
            &f.os,
            &f.kernel,
            &f.arch,
            &f.boot_time.map(ms),
            &Json(&f.tags),
            &a.version,
            &i32::try_from(a.interval_secs).unwrap_or(i32::MAX),
            &a.coverage_degraded,
            &Json(&a.coverage_why),
            &ms(now),
            &report.goodbye,
            &host_id,
            &a.stats.as_ref().map(Json),
            &f.cloud.as_ref().map(Json),
            &f.cloud.as_ref().map(|c| c.instance_id.clone()),
            &Json(&f.reported_tags),
            &(step.after.session as i64),
            &i64::try_from(step.after.last_seq).unwrap_or(i64::MAX),
            &step.after.prior.map(|p| p as i64),
        ],
    )
    .await
    .map_err(error)?;
    recorded.sessions_alternate = step.came_back.then_some((session as u64, report.session));
    Ok((outcome, recorded))
}

/// Records why each of `explained` (execs in the host's history) needed no finding.
async fn explain_execs(tx: &impl GenericClient, host_id: i64, explained: &[ExecExplained]) -> Result<()> {
    if explained.is_empty() {
        return Ok(());
    }
    // The exec's row was written by the report that judged it, at about its start: the
    // (host, at) index finds it among the host's last minutes.
    let stmt = tx
        .prepare_cached(
            "UPDATE process_events SET explained = $1 WHERE host_id = $2 AND at >= $3 AND pid = $4 \
             AND start_time = $5 AND kind = 'exec'",
        )
        .await
        .map_err(error)?;
    for e in explained {
        let since = e.start_time - time::Duration::minutes(10);
        tx.execute(&stmt, &[&e.why, &host_id, &ms(since), &i64::from(e.pid), &ms(e.start_time)])
            .await
            .map_err(error)?;
    }
    Ok(())
}
