//! What the collector does on its own clock rather than on a report: hosts gone silent become
//! agent_offline findings (resolved when they report again), hosts silent beyond `retire_after`
//! are retired, processes that have run hot long enough and allowances whose `until` has passed
//! are explained again, and history older than `retention` is pruned.
//!
//! Invariant: every chore is idempotent over the store, so several collectors on one store may
//! all run it; none keeps state that another collector would need.

use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::engine;
use crate::ingest;
use crate::model::FindingChange;
use crate::state::AppState;
use hostwatch_proto::v1::{FindingKind, HostStatus};

/// Alert events kept for sinks that have not delivered them, at most.
const MAX_OUTBOX: u64 = 100_000;

/// History rows of each table one pruning write deletes at most: a few milliseconds of the
/// writer, so reports queue behind it no longer than behind a large snapshot.
const PRUNE_BATCH: u32 = 2_000;
/// Pruning writes in one round at most; a larger backlog goes over the next rounds.
const PRUNE_BATCHES_PER_ROUND: u32 = 50;

/// How often the chores run: often enough that an offline host is seen within a fraction of
/// `offline_after`, and an expired allowance within a minute.
fn period(state: &AppState) -> Duration {
    match state.settings.offline_after {
        Some(d) => (d / 3).clamp(Duration::from_secs(1), Duration::from_secs(15)),
        None => Duration::from_secs(15),
    }
}

/// Runs the chores until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let every = period(&state);
    // Allowances that ended while no collector ran are caught at the first round.
    let mut last = OffsetDateTime::UNIX_EPOCH;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = OffsetDateTime::now_utc();
        match round(&state, last, now).await {
            Ok(true) => last = now,
            // Another collector on the store is doing them: this one's next round covers the
            // time since its own last one (the chores are idempotent).
            Ok(false) => {}
            Err(e) => error!(error = %e, "housekeeping round failed; trying again next round"),
        }
    }
}

/// One round of chores at `now`; `last` is when the previous one ran. `false`: not done, another
/// collector on the store holds the chores' turn.
pub async fn round(
    state: &AppState,
    last: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<bool, crate::store::StoreError> {
    let Some(_turn) = state.store.chores_turn().await? else {
        return Ok(false);
    };
    let hosts = state.store.list_hosts().await?;
    // Only hosts the listing shows silent get a closer look in their turn: one that reported
    // lately cannot have gone silent since (each look waits for the host's turn and reads it
    // again, which for every host of a fleet each round would be a fleet's worth of reads).
    let quiet = |h: &&crate::model::Host| {
        h.retired_at.is_none()
            && (h.status(now, state.settings.offline_after) != HostStatus::Online
                || now - h.last_seen.unwrap_or(h.enrolled_at) >= state.settings.retire_after)
    };
    for h in hosts.iter().filter(quiet) {
        // One host's trouble is logged; the others' chores go on.
        if let Err(e) = host_chores(state, h.id, now).await {
            error!(host_id = h.id, error = %e, "housekeeping of a host failed");
        }
    }
    // Processes that have just been hot for long enough: the high-CPU rule needs a look
    // without a report. Each host once, when its process crosses the mark.
    let (from, to) = (last - engine::builtin::HIGH_CPU_FOR, now - engine::builtin::HIGH_CPU_FOR);
    for id in state.store.hosts_running_hot(from, to).await? {
        if let Err(e) = ingest::reevaluate(state, id).await {
            error!(host_id = id, error = %e, "re-evaluation of a hot host failed");
        }
    }
    prune_history(state, now).await?;
    // The alert outbox: what every sink has, gone; beyond the bound, the oldest, said.
    let (_, dropped) = state.store.prune_alert_events(MAX_OUTBOX, now).await?;
    if dropped > 0 {
        error!(dropped, "alert outbox full (a sink down too long?): the oldest events were dropped");
    }
    // An allowance that ended since the last round: every host is held to the rest.
    let baselines = ingest::current_baselines(state).await?;
    let expired = baselines.set.iter().flat_map(|b| b.untils()).any(|(_, u)| last < u.time && u.time <= now);
    if expired {
        warn!("an allowance's `until` has passed; explaining every host again");
        ingest::reevaluate_all(state).await;
    }
    Ok(true)
}

/// History older than `retention`, deleted in short batches with a pause between them, so that
/// reports are written between two batches rather than after the whole backlog. Returns how many
/// rows went.
pub async fn prune_history(state: &AppState, now: OffsetDateTime) -> Result<u64, crate::store::StoreError> {
    let Some(before) =
        time::Duration::try_from(state.settings.retention).ok().and_then(|r| now.checked_sub(r))
    else {
        return Ok(0);
    };
    let mut total = 0;
    for _ in 0..PRUNE_BATCHES_PER_ROUND {
        let gone = state.store.prune_history(before, PRUNE_BATCH).await?;
        total += gone;
        if gone == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if total > 0 {
        info!(rows = total, retention = ?state.settings.retention, "pruned history older than the retention");
    }
    Ok(total)
}

/// Retirement or offline for one host, in its turn and from its row as it is then: a report
/// that came in since the listing is not undone.
async fn host_chores(state: &AppState, id: i64, now: OffsetDateTime) -> Result<(), crate::store::StoreError> {
    let _turn = state.lock_host(id).await?;
    let Some(h) = state.store.host(id).await? else { return Ok(()) };
    if h.retired_at.is_some() {
        return Ok(());
    }
    // A report of it is being read or waits for a processing turn: the host speaks, and a
    // backlog at the collector is not its silence (its last_seen moves once the report is in).
    if state.admission.reporting(h.id) {
        return Ok(());
    }
    let silent_since = h.last_seen.unwrap_or(h.enrolled_at);
    if now - silent_since >= state.settings.retire_after {
        let changes = state.store.retire_host(h.id, now).await?;
        state.peers.forget(h.id);
        info!(host_id = h.id, hostname = ?h.facts.hostname, resolved = changes.len(), "host retired after {:?} of silence", state.settings.retire_after);
        return Ok(());
    }
    // A host that has not reported yet is silent since it enrolled: its first report (a whole
    // snapshot, perhaps behind a backlog) is not late at once.
    let first_not_late =
        h.last_seen.is_none() && now - h.enrolled_at <= h.offline_limit(state.settings.offline_after);
    match h.status(now, state.settings.offline_after) {
        HostStatus::Offline if first_not_late => {}
        HostStatus::Offline | HostStatus::Stopped => {
            let obs = engine::agent_offline(h.goodbye.as_deref(), h.last_seen);
            let changes = state
                .store
                .record_findings(h.id, &[obs], state.settings.max_new_findings_per_minute, now)
                .await?;
            log(h.id, &changes);
        }
        HostStatus::Online | HostStatus::Retired => {}
    }
    Ok(())
}

fn log(host_id: i64, changes: &[FindingChange]) {
    for c in changes {
        if let FindingChange::Opened { id, kind, .. } | FindingChange::Reopened { id, kind, .. } = c
            && *kind == FindingKind::AgentOffline
        {
            warn!(host_id, finding = id, "host stopped reporting");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::model::HostFacts;
    use crate::state::{Limits, Settings};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Enrollment, FindingFilter, NewCredential, Store};

    async fn offline_findings(store: &SqliteStore, host_id: i64) -> usize {
        let filter = FindingFilter {
            host_id: Some(host_id),
            kind: Some(FindingKind::AgentOffline),
            ..Default::default()
        };
        store.list_findings(&filter).await.unwrap().items.len()
    }

    /// A collector behind on its reports must not call the hosts it has not got to offline.
    #[tokio::test]
    async fn a_host_whose_report_waits_for_a_turn_is_not_offline() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let now = OffsetDateTime::now_utc();
        let enrolled = now - time::Duration::minutes(5);
        let new =
            NewCredential { name: "test", hash: "h", created_by: "test", expires_at: None, now: enrolled };
        let secret = store.create_enroll_secret(&new, &BTreeMap::new()).await.unwrap();
        let facts = HostFacts::from(hostwatch_proto::v1::HostFacts::new("queued", "m-queued"));
        let enrollment = Enrollment {
            facts: &facts,
            agent_version: "0",
            key_hash: "k",
            enroll_secret: secret.id,
            verified_instance: None,
            now: enrolled,
        };
        let id = store.enroll_host(&enrollment).await.unwrap();
        // Another enrolled 10 s ago, its first report not sent yet: not late either.
        let facts = HostFacts::from(hostwatch_proto::v1::HostFacts::new("fresh", "m-fresh"));
        let fresh = Enrollment {
            facts: &facts,
            key_hash: "k2",
            now: now - time::Duration::seconds(10),
            ..enrollment
        };
        let fresh = store.enroll_host(&fresh).await.unwrap();
        let settings = Settings {
            max_report_bytes: 1 << 20,
            max_concurrent_reports: 1,
            offline_after: Some(Duration::from_secs(30)),
            retire_after: Duration::from_secs(86_400),
            max_new_findings_per_minute: 100,
            limits: Limits::default(),
            tag_policy: Default::default(),
            aws_identity: None,
            retention: Duration::from_secs(30 * 86_400),
            query: Default::default(),
        };
        let state = AppState::new(store.clone(), settings, None);
        // Five minutes without a report since it enrolled, but its first is in flight.
        let in_flight = state.admission.report(id).unwrap();
        assert!(round(&state, now, now).await.unwrap());
        assert_eq!(offline_findings(&store, id).await, 0);
        // That report gone without arriving: now it is offline.
        drop(in_flight);
        assert!(round(&state, now, now).await.unwrap());
        assert_eq!(offline_findings(&store, id).await, 1);
        assert_eq!(offline_findings(&store, fresh).await, 0);
    }
}
