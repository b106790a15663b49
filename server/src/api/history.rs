//! `GET /api/v1/history/processes|sockets`: what started and ended, newest first; `GET
//! /api/v1/files`: what changed in watched files, newest first.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use hostwatch_proto::v1 as proto;
use serde::Deserialize;
use time::OffsetDateTime;

use super::hosts::resolve_host;
use super::state::{glob, remote, sha256};
use super::{ApiError, page_limit, page_response};
use crate::auth::{Person, Role};
use crate::model::{ProcessEvent, SocketEvent};
use crate::state::AppState;
use crate::store::HistoryFilter;

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    host: Option<String>,
    /// How far back, as `90s`, `15m`, `24h`.
    since: Option<String>,
    /// Processes: exact name.
    name: Option<String>,
    /// Files: a glob over paths.
    path: Option<String>,
    /// Processes: the executable's SHA-256.
    sha256: Option<String>,
    /// Processes and sockets: the executable, a glob.
    exe: Option<String>,
    /// Sockets: a remote address or CIDR block.
    remote: Option<String>,
    /// Sockets: a remote port (or a listener's local port).
    port: Option<u16>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// The instant `s` (`15m`, `24h`) before `now`; a window reaching before time can tell is refused.
pub(super) fn since(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, ApiError> {
    let d = humantime::parse_duration(s)
        .map_err(|e| ApiError::bad_request(format!("since: {s:?}: {e} (write 15m, 24h)")))?;
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| now.checked_sub(d))
        .ok_or_else(|| ApiError::bad_request(format!("since: {s:?} is too long")))
}

async fn filter(
    state: &AppState,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<HistoryFilter, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let host_id = match &q.host {
        Some(h) => Some(resolve_host(state, h).await?),
        None => None,
    };
    let since = q.since.as_deref().map(|s| since(s, OffsetDateTime::now_utc())).transpose()?;
    Ok(HistoryFilter {
        host_id,
        since,
        name: q.name,
        path: q.path.as_deref().map(|p| glob("path", p)).transpose()?,
        sha256: q.sha256.as_deref().map(sha256).transpose()?,
        exe: q.exe.as_deref().map(|e| glob("exe", e)).transpose()?,
        remote: q.remote.as_deref().map(remote).transpose()?,
        port: q.port,
        after: q.cursor,
        limit: page_limit(q.limit)?,
    })
}

pub async fn processes(
    State(state): State<AppState>,
    person: Person,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    person.require(Role::Reader)?;
    let f = filter(&state, q).await?;
    Ok(page_response(state.store.process_events(&f).await?, proto::ProcessEvent::from))
}

pub async fn sockets(
    State(state): State<AppState>,
    person: Person,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    person.require(Role::Reader)?;
    let f = filter(&state, q).await?;
    Ok(page_response(state.store.socket_events(&f).await?, proto::SocketEvent::from))
}

pub async fn files(
    State(state): State<AppState>,
    person: Person,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    person.require(Role::Reader)?;
    let f = filter(&state, q).await?;
    Ok(page_response(state.store.file_events(&f).await?, |e| e))
}

pub async fn current_files(
    State(state): State<AppState>,
    person: Person,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    person.require(Role::Reader)?;
    let f = filter(&state, q).await?;
    Ok(page_response(state.store.current_files(&f).await?, |r| r))
}

impl From<ProcessEvent> for proto::ProcessEvent {
    fn from(e: ProcessEvent) -> Self {
        proto::ProcessEvent {
            id: e.id,
            host_id: e.host_id,
            hostname: e.hostname,
            at: e.at,
            kind: e.kind.to_owned(),
            pid: e.pid,
            ppid: e.ppid,
            name: e.name,
            exe: e.exe,
            cmdline: e.cmdline,
            user: e.user,
            uid: e.uid,
            start_time: e.start_time,
            login_uid: e.login_uid,
            session_id: e.session_id,
            ancestry: e.ancestry,
            explained: e.explained,
        }
    }
}

impl From<SocketEvent> for proto::SocketEvent {
    fn from(e: SocketEvent) -> Self {
        proto::SocketEvent {
            id: e.id,
            host_id: e.host_id,
            hostname: e.hostname,
            at: e.at,
            kind: e.kind.to_owned(),
            socket: e.socket.to_owned(),
            protocol: e.protocol,
            local_address: e.local.ip(),
            local_port: e.local.port(),
            remote_address: e.remote.map(|r| r.ip()),
            remote_port: e.remote.map(|r| r.port()),
            direction: e.direction,
            pid: e.pid,
            process: e.process,
            exe: e.exe,
            netns: e.netns,
        }
    }
}
