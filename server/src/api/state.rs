//! `GET /api/v1/processes|listeners|connections`: the fleet's current state, one row per item,
//! with the host it is on.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use hostwatch_proto::v1::{self as proto, Direction, Located, Protocol};
use serde::Deserialize;

use super::ApiError;
use super::hosts::resolve_host;
use crate::auth::{Person, Role};
use crate::model::HostState;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct StateQuery {
    /// A host id or hostname; all (non-retired) hosts otherwise.
    host: Option<String>,
    /// Processes: exact process name.
    name: Option<String>,
    /// Processes: user name or uid.
    user: Option<String>,
    /// Listeners: local port; connections: remote port.
    port: Option<u16>,
    protocol: Option<String>,
    direction: Option<String>,
}

/// The state of the hosts the query names, each with its id and hostname.
async fn states(state: &AppState, q: &StateQuery) -> Result<Vec<(i64, String, HostState)>, ApiError> {
    let hosts = match &q.host {
        Some(h) => {
            let id = resolve_host(state, h).await?;
            state.store.host(id).await?.into_iter().collect()
        }
        None => {
            state.store.list_hosts().await?.into_iter().filter(|h| h.retired_at.is_none()).collect::<Vec<_>>()
        }
    };
    let mut out = Vec::new();
    for h in hosts {
        let st = state.store.host_state(h.id).await?;
        out.push((h.id, h.facts.hostname, st));
    }
    Ok(out)
}

fn query(q: Result<Query<StateQuery>, QueryRejection>) -> Result<StateQuery, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::bad_request(e.body_text()))
}

pub async fn processes(
    State(state): State<AppState>,
    person: Person,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Json<Vec<Located<proto::Process>>>, ApiError> {
    person.require(Role::Reader)?;
    let q = query(q)?;
    let mut out = Vec::new();
    for (host_id, hostname, st) in states(&state, &q).await? {
        for p in st.processes {
            if q.name.as_ref().is_some_and(|n| *n != p.name)
                || q.user.as_ref().is_some_and(|u| *u != p.user_or_uid())
            {
                continue;
            }
            out.push(Located { host_id, hostname: hostname.clone(), item: p.into() });
        }
    }
    Ok(Json(out))
}

pub async fn listeners(
    State(state): State<AppState>,
    person: Person,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Json<Vec<Located<proto::Listener>>>, ApiError> {
    person.require(Role::Reader)?;
    let q = query(q)?;
    let protocol =
        q.protocol.as_deref().map(str::parse::<Protocol>).transpose().map_err(ApiError::bad_request)?;
    let mut out = Vec::new();
    for (host_id, hostname, st) in states(&state, &q).await? {
        for l in st.listeners {
            if q.port.is_some_and(|p| p != l.port) || protocol.is_some_and(|p| p != l.protocol) {
                continue;
            }
            out.push(Located { host_id, hostname: hostname.clone(), item: l.into() });
        }
    }
    Ok(Json(out))
}

pub async fn connections(
    State(state): State<AppState>,
    person: Person,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Json<Vec<Located<proto::Connection>>>, ApiError> {
    person.require(Role::Reader)?;
    let q = query(q)?;
    let protocol =
        q.protocol.as_deref().map(str::parse::<Protocol>).transpose().map_err(ApiError::bad_request)?;
    let direction =
        q.direction.as_deref().map(str::parse::<Direction>).transpose().map_err(ApiError::bad_request)?;
    let mut out = Vec::new();
    for (host_id, hostname, st) in states(&state, &q).await? {
        for c in st.connections {
            if q.port.is_some_and(|p| p != c.remote.port())
                || protocol.is_some_and(|p| p != c.protocol)
                || direction.is_some_and(|d| d != c.direction)
            {
                continue;
            }
            out.push(Located { host_id, hostname: hostname.clone(), item: c.into() });
        }
    }
    Ok(Json(out))
}
