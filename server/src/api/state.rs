//! `GET /api/v1/processes|listeners|connections`: the fleet's current state, one row per item,
//! with the host it is on; filtered and paged by the store ([`crate::store::StateFilter`]).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use hostwatch_proto::v1::{self as proto, Direction, Located, Protocol};
use serde::Deserialize;

use super::hosts::resolve_host;
use super::{ApiError, page_limit, page_response};
use crate::auth::{Person, Role};
use crate::state::AppState;
use crate::store::StateFilter;
use crate::store::parse_net;

#[derive(Debug, Deserialize)]
pub struct StateQuery {
    /// A host id or hostname; all (non-retired) hosts otherwise.
    host: Option<String>,
    /// Processes: exact process name.
    name: Option<String>,
    /// Processes: user name or uid.
    user: Option<String>,
    /// Processes: the executable's SHA-256.
    sha256: Option<String>,
    /// The executable, a glob.
    exe: Option<String>,
    /// Listeners: local port; connections: remote port.
    port: Option<u16>,
    /// Listeners: the bound address.
    address: Option<String>,
    /// Listeners: `true` lists only services that answer without credentials.
    #[serde(default)]
    unauthenticated: bool,
    /// Connections: a remote address or CIDR block.
    remote: Option<String>,
    protocol: Option<String>,
    direction: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// A SHA-256 as given: 64 hex digits, any case.
pub(super) fn sha256(s: &str) -> Result<String, ApiError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(format!("sha256: {s:?} is not 64 hexadecimal digits")))
    }
}

/// A remote address or CIDR block as given.
pub(super) fn remote(s: &str) -> Result<ipnet::IpNet, ApiError> {
    parse_net(s).map_err(|e| ApiError::bad_request(format!("remote: {e}")))
}

/// A glob as given: bounded like a path.
pub(super) fn glob(what: &str, s: &str) -> Result<String, ApiError> {
    if s.is_empty() || s.len() > proto::limits::MAX_PATH_BYTES {
        return Err(ApiError::bad_request(format!("{what}: 1 to {} bytes", proto::limits::MAX_PATH_BYTES)));
    }
    Ok(s.to_owned())
}

async fn filter(
    state: &AppState,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<StateFilter, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let host_id = match &q.host {
        Some(h) => Some(resolve_host(state, h).await?),
        None => None,
    };
    Ok(StateFilter {
        host_id,
        name: q.name,
        user: q.user,
        sha256: q.sha256.as_deref().map(sha256).transpose()?,
        exe: q.exe.as_deref().map(|e| glob("exe", e)).transpose()?,
        port: q.port,
        address: q
            .address
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| ApiError::bad_request(format!("address: {a:?} is not an IP address")))
            })
            .transpose()?,
        unauthenticated: q.unauthenticated,
        remote: q.remote.as_deref().map(remote).transpose()?,
        protocol: q
            .protocol
            .as_deref()
            .map(str::parse::<Protocol>)
            .transpose()
            .map_err(ApiError::bad_request)?,
        direction: q
            .direction
            .as_deref()
            .map(str::parse::<Direction>)
            .transpose()
            .map_err(ApiError::bad_request)?,
        after: q.cursor,
        limit: page_limit(q.limit)?,
    })
}

pub async fn processes(
    State(state): State<AppState>,
    person: Person,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    person.require(Role::Reader)?;
    let f = filter(&state, q).await?;
    let page = state.store.list_processes(&f).await?;
    Ok(page_response(page, |l| Located::<proto::Process> {
        host_id: l.host_id,
        hostname: l.hostname,
        item: l.item.into(),
    }))
}

pub async fn listeners(
    State(state): State<AppState>,
    person: Person,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    person.require(Role::Reader)?;
    let f = filter(&state, q).await?;
    let page = state.store.list_listeners(&f).await?;
    Ok(page_response(page, |l| Located::<proto::Listener> {
        host_id: l.host_id,
        hostname: l.hostname,
        item: l.item.into(),
    }))
}

pub async fn connections(
    State(state): State<AppState>,
    person: Person,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    person.require(Role::Reader)?;
    let f = filter(&state, q).await?;
    let page = state.store.list_connections(&f).await?;
    Ok(page_response(page, |l| Located::<proto::Connection> {
        host_id: l.host_id,
        hostname: l.hostname,
        item: l.item.into(),
    }))
}
