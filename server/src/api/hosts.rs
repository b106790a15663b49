//! `GET /api/v1/hosts` and `GET /api/v1/hosts/{id or hostname}`.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use hostwatch_proto::v1::{self as proto, HostStatus};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{ApiError, page_limit, page_response};
use crate::auth::{Person, Role};
use crate::model::Host;
use crate::state::AppState;
use crate::store::HostFilter;

#[derive(Debug, Deserialize)]
pub struct HostsQuery {
    /// Include retired hosts.
    #[serde(default)]
    all: bool,
    /// Only these statuses: `online`, `offline`, `stopped`, `retired`, comma-separated.
    status: Option<String>,
    /// Only hosts judged as this workload.
    workload: Option<String>,
    /// Only hosts with these tags, as `k=v[,k=v]`.
    tag: Option<String>,
    /// After this cursor: the `x-next-cursor` of the page before.
    cursor: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    person: Person,
    query: Result<Query<HostsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    person.require(Role::Reader)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let statuses = q
        .status
        .as_deref()
        .map(|s| {
            s.split(',')
                .map(|s| {
                    serde_json::from_value::<HostStatus>(serde_json::Value::from(s.trim())).map_err(|_| {
                        ApiError::bad_request(format!(
                            "status: {s:?} is not online, offline, stopped or retired"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let tags = q
        .tag
        .as_deref()
        .map(hostwatch_agent::shared::config::env::pairs)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("tag: {e}")))?
        .unwrap_or_default();
    let now = OffsetDateTime::now_utc();
    let filter = HostFilter {
        statuses,
        all: q.all,
        workload: q.workload,
        tags: tags.into_iter().collect(),
        now: Some(now),
        offline_after: state.settings.offline_after,
        after: q.cursor,
        limit: page_limit(q.limit)?,
    };
    let page = state.store.hosts_page(&filter).await?;
    Ok(page_response(page, |h| to_proto(&h, now, state.settings.offline_after)))
}

pub async fn detail(
    State(state): State<AppState>,
    person: Person,
    Path(host): Path<String>,
) -> Result<Json<proto::HostDetail>, ApiError> {
    person.require(Role::Reader)?;
    let id = resolve_host(&state, &host).await?;
    let h = state.store.host(id).await?.ok_or_else(|| ApiError::not_found(format!("no host {id}")))?;
    let st = state.store.host_state(id).await?;
    let now = OffsetDateTime::now_utc();
    Ok(Json(proto::HostDetail {
        host: to_proto(&h, now, state.settings.offline_after),
        machine_id: h.facts.machine_id,
        os: h.facts.os,
        kernel: h.facts.kernel,
        arch: h.facts.arch,
        enrolled_at: h.enrolled_at,
        last_seq: h.last_seq,
        processes: st.processes.into_iter().map(Into::into).collect(),
        listeners: st.listeners.into_iter().map(Into::into).collect(),
        connections: st.connections.into_iter().map(Into::into).collect(),
        agent_stats: h.agent.stats.clone(),
        reported_tags: if h.facts.reported_tags == h.facts.tags {
            Default::default()
        } else {
            h.facts.reported_tags.clone()
        },
    }))
}

/// A host given as an id or a hostname; an ambiguous hostname is an error naming the ids.
pub async fn resolve_host(state: &AppState, given: &str) -> Result<i64, ApiError> {
    if let Ok(id) = given.parse::<i64>() {
        return match state.store.host(id).await? {
            Some(_) => Ok(id),
            None => Err(ApiError::not_found(format!("no host with id {id}"))),
        };
    }
    let ids = state.store.hosts_named(given).await?;
    match ids.as_slice() {
        [] => Err(ApiError::not_found(format!("no host named {given:?}"))),
        [id] => Ok(*id),
        many => Err(ApiError::bad_request(format!(
            "hostname {given:?} is ambiguous: hosts {}; give the id",
            many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn to_proto(h: &Host, now: OffsetDateTime, offline_after: Option<Duration>) -> proto::Host {
    proto::Host {
        id: h.id,
        hostname: h.facts.hostname.clone(),
        workload: h.workload.clone(),
        tags: h.facts.tags.clone(),
        status: h.status(now, offline_after),
        coverage: h.agent.coverage(),
        last_seen: h.last_seen,
        agent_version: h.agent.version.clone(),
        open_findings: h.open_findings,
        cloud: h.facts.cloud.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AgentInfo, HostFacts};

    fn host(last_seen: Option<i64>, interval: u32) -> Host {
        Host {
            id: 1,
            facts: HostFacts::from(proto::HostFacts::new("h", "m")),
            agent: AgentInfo {
                version: "0".into(),
                interval_secs: interval,
                coverage_degraded: false,
                coverage_why: vec![],
                stats: None,
            },
            workload: None,
            enrolled_at: OffsetDateTime::UNIX_EPOCH,
            last_seen: last_seen.map(|s| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s)),
            last_seq: 0,
            goodbye: None,
            retired_at: None,
            open_findings: 0,
        }
    }

    #[test]
    fn status_follows_the_hosts_own_interval() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(100);
        assert_eq!(Host::status(&host(Some(75), 10), now, None), HostStatus::Online, "25 s < 30 s floor");
        assert_eq!(Host::status(&host(Some(65), 10), now, None), HostStatus::Offline);
        assert_eq!(Host::status(&host(Some(0), 60), now, None), HostStatus::Online, "100 s < 3 x 60 s");
        assert_eq!(
            Host::status(&host(Some(80), 10), now, Some(Duration::from_secs(10))),
            HostStatus::Offline
        );
        assert_eq!(Host::status(&host(None, 10), now, None), HostStatus::Offline);
        // Not reported yet: never online, however recent its enrollment.
        let mut new = host(None, 10);
        new.enrolled_at = now - time::Duration::seconds(10);
        assert_eq!(Host::status(&new, now, None), HostStatus::Offline);
        let mut bye = host(Some(99), 10);
        bye.goodbye = Some("stopped".into());
        assert_eq!(Host::status(&bye, now, None), HostStatus::Stopped);
    }
}
