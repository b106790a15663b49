//! From an accepted report to findings: record the state, select the workload, run the engine,
//! reconcile the findings.

use std::sync::Arc;

use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::baseline::{self, BaselineSet, Selection};
use crate::engine::{self, Target};
use crate::model::{Applied, Content, FindingChange, Host, HostState, PeerItems, Recorded, ReportRecord};
use crate::state::{AppState, LoadedBaselines};
use crate::store::{HostTags, ReportTerms, StoreError, Verdict};
use crate::tags;
use hostwatch_proto::v1::FindingKind;

/// Records one validated report and, if it changed the host's state, explains the host again and
/// judges every start the report recorded, whether or not its item still exists. Returns whether
/// the agent must send a snapshot next (its report did not follow the last one applied).
pub async fn ingest(state: &AppState, host_id: i64, record: ReportRecord) -> Result<bool, StoreError> {
    let _turn = state.lock_host(host_id).await?;
    let now = OffsetDateTime::now_utc();
    let lost = record.lost;
    let changes_state = matches!(record.content, Content::Snapshot(_) | Content::Delta(_));
    let files = match &record.content {
        Content::Delta(d) => d.files.clone(),
        _ => Vec::new(),
    };
    let reported = record.facts.reported_tags.clone();
    let policy = state.settings.tag_policy.clone();
    let terms = ReportTerms {
        // The tags the host is judged by, from what it reports only as far as `[tags]` allows.
        judge_tags: Some(Box::new(move |t: &HostTags| {
            tags::after_report(&policy, &t.held, &reported, &t.assigned)
        })),
        // Reporting again: no longer offline.
        resolves: vec![FindingKind::AgentOffline],
        findings_for: Some(Box::new(move |applied: &Applied, recorded: &Recorded| {
            let shared =
                recorded.sessions_alternate.map(|sessions| engine::shared_node_key(host_id, sessions));
            shared.into_iter().chain(engine::data_lost(lost, applied.gap())).collect()
        })),
        limit: state.settings.max_new_findings_per_minute,
    };
    let out = state.store.record_report(host_id, record, now, terms).await?;
    let judged = &out.host.facts.tags;
    let reported = &out.host.facts.reported_tags;
    let ignored = tags::overridden(judged, reported);
    if !ignored.is_empty() && out.tags_before.reported != *reported {
        warn!(host_id, ignored = ?ignored, judged_by = ?judged, "host reports tags it is not judged by (see [tags] from_agents and its enroll secret's tags)");
    }
    if let Some(sessions) = out.recorded.sessions_alternate {
        warn!(host_id, sessions = ?sessions, "two agents report under one node key");
    }
    if engine::data_lost(lost, out.applied.gap()).is_some() {
        // What the agent dropped is also the gap it leaves (spool.rs): counted once.
        let missing = out.applied.gap().map_or(0, |(from, before)| before.saturating_sub(from));
        state.metrics.reports_lost(lost.max(missing));
        warn!(host_id, lost, gap = ?out.applied.gap(), "reports from this host were lost");
    }
    log_changes(&out.host, &out.changes);
    if matches!(out.applied, Applied::Applied { .. }) && changes_state {
        // Read on a reading connection, in the host's turn: nothing of this host changes meanwhile.
        let host_state = state.store.host_state(host_id).await?;
        evaluate(state, &out.host, &host_state, &files, &out.recorded).await?;
    }
    Ok(out.applied.resync())
}

/// The baselines of the store's current revision, parsed once per revision.
pub async fn current_baselines(state: &AppState) -> Result<Arc<LoadedBaselines>, StoreError> {
    let revision = state.store.baselines_revision().await?;
    let mut cache = state.baselines.lock().await;
    if let Some(loaded) = cache.as_ref()
        && loaded.revision == revision
    {
        return Ok(loaded.clone());
    }
    let mut set = BaselineSet::default();
    for rec in state.store.baselines().await? {
        match baseline::parse(&rec.name, &rec.source) {
            Ok(b) => set.insert(b),
            // Applied baselines were valid; one that is not (edited in the database by hand) is
            // left out loudly rather than taking every workload down with it.
            Err(e) => error!(baseline = %rec.name, error = %e, "stored baseline does not parse; ignoring it"),
        }
    }
    if let Err(e) = set.check() {
        error!(error = %e, "stored baselines do not hold together");
    }
    let loaded = Arc::new(LoadedBaselines { revision, set });
    *cache = Some(loaded.clone());
    Ok(loaded)
}

/// Explains one host's state against its workload, judges the starts a report `recorded`, and
/// reconciles its findings; files a finding for each change in `files` the workload does not
/// allow (kept until acknowledged, not reconciled: a change cannot be undone by the next report).
pub async fn evaluate(
    state: &AppState,
    host: &Host,
    host_state: &HostState,
    files: &[hostwatch_proto::v1::FileChange],
    recorded: &Recorded,
) -> Result<Vec<FindingChange>, StoreError> {
    let mut baselines = current_baselines(state).await?;
    let mut selection = baselines.set.select(&host.facts.tags);
    if selection == Selection::None
        && let Some(learner) = &state.learner
        && learner.applies_to(host)
    {
        learner.learn(state, host, host_state).await?;
        baselines = current_baselines(state).await?;
        selection = baselines.set.select(&host.facts.tags);
    }
    let workload;
    let (target, workload_name) = match &selection {
        Selection::None => (Target::NoBaseline, None),
        Selection::Ambiguous(names) => (Target::Ambiguous(names), None),
        Selection::One(name) => match baselines.set.workload(name) {
            Ok(w) => {
                workload = w;
                (Target::Workload(&workload), Some(name.as_str()))
            }
            Err(e) => {
                error!(host_id = host.id, workload = %name, error = %e, "cannot resolve the host's workload; its findings are left as they are");
                return Ok(Vec::new());
            }
        },
    };
    let now = OffsetDateTime::now_utc();
    let agent_pid = host.agent.stats.as_ref().and_then(|s| s.pid);
    let cx = engine::Context { tags: &host.facts.tags, now, agent_pid };
    let mut observed = engine::merge(
        engine::evaluate(host_state, target, cx),
        engine::judge(&recorded.started, host_state, target, cx),
    );
    if let Target::Workload(w) = target
        && w.peers.enabled
    {
        let items = PeerItems::of(host_state);
        let rare = state
            .judge_peers(&w.name, host.id, items, |counts| engine::outliers(host_state, w, counts, &observed))
            .await?;
        observed.extend(rare);
    }
    let verdict = Verdict {
        workload: workload_name.map(str::to_owned),
        state_kinds: engine::resolvable(target).to_vec(),
        explained: engine::sessions_explained(&recorded.started, host_state, target, now),
        kept: engine::explain_files(files, target, now),
        observed,
    };
    let limit = state.settings.max_new_findings_per_minute;
    let changes = state.store.apply_verdict(host.id, verdict, limit, now).await?;
    log_changes(host, &changes);
    Ok(changes)
}

/// One log line per finding opened, reopened or resolved.
fn log_changes(host: &Host, changes: &[FindingChange]) {
    for c in changes {
        let (what, id, kind, subject) = match c {
            FindingChange::Opened { id, kind, subject } => ("finding opened", id, kind, subject),
            FindingChange::Reopened { id, kind, subject } => ("finding reopened", id, kind, subject),
            FindingChange::Resolved { id, kind, subject } => ("finding resolved", id, kind, subject),
        };
        // Subjects come from agents: `?` escapes anything that could forge a log line.
        info!(host_id = host.id, hostname = ?host.facts.hostname, finding = id, kind = kind.as_str(), subject = ?subject, "{what}");
    }
}

/// Re-explains every host that has reported state, after the baselines changed.
pub async fn reevaluate_all(state: &AppState) {
    let hosts = match state.store.list_hosts().await {
        Ok(h) => h,
        Err(e) => return error!(error = %e, "cannot list hosts to re-evaluate"),
    };
    for host in hosts.iter().filter(|h| h.retired_at.is_none() && h.last_seen.is_some()) {
        if let Err(e) = reevaluate(state, host.id).await {
            error!(host_id = host.id, error = %e, "re-evaluation failed");
        }
    }
}

/// Re-explains one host from its stored state, in its turn: a report being recorded meanwhile is
/// either wholly before (and seen here) or wholly after (and explained again itself).
pub async fn reevaluate(state: &AppState, host_id: i64) -> Result<(), StoreError> {
    let _turn = state.lock_host(host_id).await?;
    let Some(host) = state.store.host(host_id).await? else {
        return Ok(());
    };
    let st = state.store.host_state(host_id).await?;
    evaluate(state, &host, &st, &[], &Recorded::default()).await.map(|_| ())
}
