//! `GET /api/v1/baselines` and `POST /api/v1/baselines` (apply).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use hostwatch_proto::v1::{self as proto, limits};
use serde_json::json;
use time::OffsetDateTime;

use super::{ApiError, decode, read_body};
use crate::auth::{Person, Role};
use crate::baseline;
use crate::ingest;
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    person: Person,
) -> Result<Json<Vec<proto::BaselineSummary>>, ApiError> {
    person.require(Role::Reader)?;
    let records = state.store.baselines().await?;
    let mut out = Vec::new();
    for r in records {
        // Stored baselines were valid when applied; one that no longer parses is listed, not hidden.
        let (selector, include, rules) = match baseline::parse(&r.name, &r.source) {
            Ok(b) => (b.selector.clone(), b.include.clone(), b.rule_count() as u64),
            Err(e) => {
                tracing::error!(baseline = %r.name, error = %e, "stored baseline does not parse");
                (None, Vec::new(), 0)
            }
        };
        out.push(proto::BaselineSummary {
            name: r.name,
            selector,
            include,
            rules,
            applied_at: r.applied_at,
            applied_by: r.applied_by,
            warnings: Vec::new(),
        });
    }
    Ok(Json(out))
}

pub async fn apply(
    State(state): State<AppState>,
    person: Person,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<proto::BaselineSummary>, ApiError> {
    person.require(Role::Admin)?;
    let body = read_body(&state, &headers, body, "baseline", limits::MAX_BASELINE_BYTES * 2).await?;
    let req: proto::ApplyBaseline = decode(&state, "baseline request", &body.bytes)?;
    let file = req.file.as_deref().unwrap_or("(request)");
    let parsed = baseline::parse(file, &req.source).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let current = ingest::current_baselines(&state).await?;
    let mut set = current.set.clone();
    set.insert(parsed.clone());
    set.check().map_err(|e| ApiError::bad_request(format!("{file}: {e}")))?;
    let now = OffsetDateTime::now_utc();
    let actor = person.actor();
    state.store.put_baseline(&parsed.name, &req.source, &actor, now).await?;
    state
        .store
        .audit(&actor, "apply_baseline", &format!("baseline:{}", parsed.name), json!({ "file": file }), now)
        .await?;
    tracing::info!(baseline = %parsed.name, actor = %actor, "baseline applied");
    // Hosts are held to the new rules now, not at their next report.
    let bg = state.clone();
    tokio::spawn(async move { ingest::reevaluate_all(&bg).await });
    Ok(Json(proto::BaselineSummary {
        name: parsed.name.clone(),
        selector: parsed.selector.clone(),
        include: parsed.include.clone(),
        rules: parsed.rule_count() as u64,
        applied_at: now,
        applied_by: actor,
        warnings: baseline::warnings(&parsed, file, now),
    }))
}

#[derive(Debug, serde::Deserialize)]
pub struct LearnQuery {
    /// One host, by id or hostname: the baseline selects its tags.
    host: Option<String>,
    /// Every host whose tags hold these (`k=v,k=v`): the baseline selects them.
    selector: Option<String>,
    /// Also what the hosts ran in this window before now (`24h`); default: only what runs now.
    since: Option<String>,
    /// The baseline's name; default `learned-` and the hostname or the selector's values.
    name: Option<String>,
}

/// Events read from each host's history, at most, when learning over a window.
const LEARN_HISTORY: u32 = 20_000;
/// Hosts learned from, at most (an even sample of a larger selection).
const MAX_LEARN_HOSTS: usize = 100;

/// Learns a baseline from what the hosts run now (and, with `since`, ran in that window).
pub async fn learn(
    State(state): State<AppState>,
    person: Person,
    query: Result<axum::extract::Query<LearnQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<proto::LearnedBaseline>, ApiError> {
    person.require(Role::Reader)?;
    let axum::extract::Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // The request first, then the fleet.
    let now = OffsetDateTime::now_utc();
    let since = q.since.as_deref().map(|s| super::history::since(s, now)).transpose()?;
    let (hosts, selector, default_name) = match (&q.host, &q.selector) {
        (Some(h), None) => {
            let id = super::hosts::resolve_host(&state, h).await?;
            let host =
                state.store.host(id).await?.ok_or_else(|| ApiError::not_found(format!("no host {h}")))?;
            if host.facts.tags.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "host {h} has no tags for a baseline to select; learn with --selector instead"
                )));
            }
            let name = format!("learned-{}", host.facts.hostname);
            (vec![host.clone()], host.facts.tags, name)
        }
        (None, Some(sel)) => {
            let sel = hostwatch_agent::shared::config::env::pairs(sel)
                .map_err(|e| ApiError::bad_request(format!("selector: {e}")))?;
            if sel.is_empty() {
                return Err(ApiError::bad_request("selector: give at least one k=v"));
            }
            let hosts: Vec<_> = state
                .store
                .list_hosts()
                .await?
                .into_iter()
                .filter(|h| h.retired_at.is_none() && sel.iter().all(|(k, v)| h.facts.tags.get(k) == Some(v)))
                .collect();
            if hosts.is_empty() {
                return Err(ApiError::not_found("no host's tags hold that selector"));
            }
            // A large fleet is learned from an even sample: what most of it runs is in any
            // sample, and the work stays bounded whatever the fleet.
            let step = hosts.len().div_ceil(MAX_LEARN_HOSTS);
            let hosts: Vec<_> = hosts.into_iter().step_by(step).collect();
            let name = format!("learned-{}", sel.values().cloned().collect::<Vec<_>>().join("-"));
            (hosts, sel, name)
        }
        _ => return Err(ApiError::bad_request("give exactly one of host and selector")),
    };
    let mut seen = Vec::new();
    for h in &hosts {
        let mut st = state.store.host_state(h.id).await?;
        if let Some(since) = since {
            let f = crate::store::HistoryFilter {
                host_id: Some(h.id),
                since: Some(since),
                limit: LEARN_HISTORY,
                ..Default::default()
            };
            let (execs, sockets) =
                (state.store.process_events(&f).await?, state.store.socket_events(&f).await?);
            st.add_history(&execs.items, &sockets.items);
        }
        seen.push(baseline::learn::Seen { hostname: h.facts.hostname.clone(), state: st });
    }
    let name = q.name.unwrap_or(default_name);
    let window = match &q.since {
        Some(s) => format!("over the {s} before then"),
        None => "as they ran then".to_owned(),
    };
    let source = baseline::learn::learn(&name, &selector, &seen, &window, now);
    // What is handed out must be what `baseline apply` takes.
    baseline::parse(&name, &source)
        .map_err(|e| ApiError::bad_request(format!("cannot learn a baseline named {name:?}: {e}")))?;
    Ok(Json(proto::LearnedBaseline { name, hosts: seen.into_iter().map(|s| s.hostname).collect(), source }))
}
