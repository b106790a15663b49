//! `GET /api/v1/findings?host=H&kind=K&status=S`, `POST /api/v1/findings/{id}/ack`, and the
//! silences: `GET` and `POST /api/v1/silences`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use hostwatch_proto::v1::{self as proto, FindingKind, FindingStatus, Severity};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::hosts::resolve_host;
use super::{ApiError, decode, page_limit, page_response, read_body};
use crate::auth::{Person, Role};
use crate::model::{Silence, SilenceScope};
use crate::state::AppState;
use crate::store::FindingFilter;

/// Longest note and reason kept.
const MAX_NOTE_BYTES: usize = 4096;
/// Longest silence: a maintenance window, not a way to mute a host for good.
const MAX_SILENCE_SECS: u64 = 30 * 24 * 3600;

/// Acknowledges a finding (analyst): it stays until its item goes (a state finding) or, for a
/// file change, until the path changes again.
pub async fn ack(
    State(state): State<AppState>,
    person: Person,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<proto::Finding>, ApiError> {
    person.require(Role::Analyst)?;
    let body = read_body(&state, &headers, body, "acknowledgement", MAX_NOTE_BYTES * 2).await?;
    let req: proto::Ack = if body.bytes.is_empty() {
        proto::Ack::default()
    } else {
        decode(&state, "acknowledgement", &body.bytes)?
    };
    let note = req.note.as_deref().map(str::trim).filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.len() > MAX_NOTE_BYTES) {
        return Err(ApiError::bad_request(format!("note longer than {MAX_NOTE_BYTES} bytes")));
    }
    let now = OffsetDateTime::now_utc();
    let actor = person.actor();
    let f = state
        .store
        .acknowledge(id, &actor, note, now)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no finding with id {id}")))?;
    if f.status == FindingStatus::Resolved {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!("finding {id} is resolved: there is nothing to acknowledge"),
        ));
    }
    state.store.audit(&actor, "acknowledge", &format!("finding:{id}"), json!({ "note": note }), now).await?;
    tracing::info!(finding = id, actor = %actor, "finding acknowledged");
    Ok(Json(f.into()))
}

/// The silences in force or to come.
pub async fn silences(
    State(state): State<AppState>,
    person: Person,
) -> Result<Json<Vec<proto::Silence>>, ApiError> {
    person.require(Role::Reader)?;
    let list = state.store.silences(Some(OffsetDateTime::now_utc())).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

/// Creates a silence (analyst) from now for `seconds`.
pub async fn silence(
    State(state): State<AppState>,
    person: Person,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<proto::Silence>, ApiError> {
    person.require(Role::Analyst)?;
    let body = read_body(&state, &headers, body, "silence", MAX_NOTE_BYTES * 4).await?;
    let req: proto::CreateSilence = decode(&state, "silence", &body.bytes)?;
    let scope = match (&req.host, req.selector) {
        (Some(h), None) => SilenceScope::Host(resolve_host(&state, h).await?),
        (None, Some(sel)) if !sel.is_empty() => {
            proto::check_tags("selector", &sel).map_err(|e| ApiError::bad_request(e.to_string()))?;
            SilenceScope::Selector(sel)
        }
        _ => return Err(ApiError::bad_request("give exactly one of host and a non-empty selector")),
    };
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > MAX_NOTE_BYTES {
        return Err(ApiError::bad_request(format!("a silence needs a reason (1 to {MAX_NOTE_BYTES} bytes)")));
    }
    if req.seconds == 0 || req.seconds > MAX_SILENCE_SECS {
        return Err(ApiError::bad_request(format!(
            "a silence lasts 1 s to {} days",
            MAX_SILENCE_SECS / 86400
        )));
    }
    let now = OffsetDateTime::now_utc();
    let actor = person.actor();
    let mut s = Silence {
        id: 0,
        scope,
        starts_at: now,
        ends_at: now + time::Duration::seconds(i64::try_from(req.seconds).unwrap_or(i64::MAX)),
        reason: reason.to_owned(),
        created_by: actor.clone(),
    };
    s.id = state.store.create_silence(&s).await?;
    let out: proto::Silence = s.into();
    state
        .store
        .audit(&actor, "create_silence", &format!("silence:{}", out.id), json!({ "silence": out }), now)
        .await?;
    tracing::info!(silence = out.id, actor = %actor, until = %hostwatch_proto::v1::timestamp::format(out.ends_at), "silence created");
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
pub struct FindingsQuery {
    /// A host id or hostname.
    host: Option<String>,
    kind: Option<String>,
    /// `open`, `acknowledged`, `resolved`, a comma-separated list of those, or `all`; default
    /// `open,acknowledged`: what still needs attention.
    status: Option<String>,
    /// This severity or worse.
    severity: Option<String>,
    /// Hosts judged as this workload.
    workload: Option<String>,
    /// Seen within this long: `24h`.
    since: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    person: Person,
    query: Result<Query<FindingsQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    person.require(Role::Reader)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let host_id = match &q.host {
        Some(h) => Some(resolve_host(&state, h).await?),
        None => None,
    };
    let kind = q
        .kind
        .as_deref()
        .map(str::parse::<FindingKind>)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let statuses = parse_statuses(q.status.as_deref()).map_err(ApiError::bad_request)?;
    let severity = q
        .severity
        .as_deref()
        .map(str::parse::<Severity>)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("severity: {e}")))?;
    let since =
        q.since.as_deref().map(|s| super::history::since(s, OffsetDateTime::now_utc())).transpose()?;
    let limit = page_limit(q.limit)?;
    let filter = FindingFilter {
        host_id,
        kind,
        statuses,
        severity,
        workload: q.workload,
        since,
        after: q.cursor,
        limit: Some(limit),
    };
    Ok(page_response(state.store.list_findings(&filter).await?, proto::Finding::from))
}

fn parse_statuses(s: Option<&str>) -> Result<Vec<FindingStatus>, String> {
    match s {
        None | Some("") => Ok(vec![FindingStatus::Open, FindingStatus::Acknowledged]),
        Some("all") => Ok(Vec::new()),
        Some(list) => {
            list.split(',').map(|s| s.trim().parse::<FindingStatus>().map_err(|e| e.to_string())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(parse_statuses(None).unwrap(), vec![FindingStatus::Open, FindingStatus::Acknowledged]);
        assert_eq!(parse_statuses(Some("all")).unwrap(), vec![]);
        assert_eq!(
            parse_statuses(Some("resolved, open")).unwrap(),
            vec![FindingStatus::Resolved, FindingStatus::Open]
        );
        assert!(parse_statuses(Some("closed")).unwrap_err().contains("unknown finding status \"closed\""));
    }
}
