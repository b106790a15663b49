//! The HTTP API: agents' endpoints (enroll, report) and people's (hosts, findings, baselines).
//!
//! Architecture invariant: handlers only translate. They authenticate through `auth`, decode and
//! validate the wire's types, convert them to the model, and call `ingest`, the store or the
//! baseline parser; every error leaves as `{"error": "..."}` with a status that says whose fault
//! it was.

mod agents;
mod baselines;
mod findings;
mod history;
mod hosts;
mod state;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hostwatch_proto::v1::{self as proto, limits};
use serde::de::DeserializeOwned;
use std::sync::atomic::Ordering;

use crate::state::AppState;
use crate::store::StoreError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }

    /// A body the extractor refused: too large (413) or unreadable.
    pub fn from_body(what: &str, limit: usize, r: BytesRejection) -> Self {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, format!("{what} body is larger than the limit of {limit} bytes"))
        } else {
            ApiError::new(status, format!("cannot read the {what} body: {}", r.body_text()))
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        if e.is_retriable() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store temporarily unavailable ({e}); retry later"),
            )
        } else {
            ApiError::internal("internal store error; the collector's log has the detail")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(proto::ErrorBody { error: self.message })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Decodes a JSON body, counting (not refusing) fields this version does not know, so that newer
/// agents keep working with this collector.
pub fn decode<T: DeserializeOwned>(state: &AppState, what: &str, body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut unknown = Vec::new();
    let value: T = serde_ignored::deserialize(&mut de, |path| unknown.push(path.to_string()))
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| ApiError::bad_request(format!("malformed {what}: {e}")))?;
    if !unknown.is_empty() {
        state.counters.unknown_fields.fetch_add(unknown.len() as u64, Ordering::Relaxed);
        tracing::debug!(fields = ?unknown, "ignored fields this collector does not know");
    }
    Ok(value)
}

/// Routes for agents: enroll, report and health.
pub fn agent_routes(state: AppState) -> Router {
    finish(agents(&state), state)
}

/// Routes for people and tools, and health.
pub fn people_routes(state: AppState) -> Router {
    finish(people(), state)
}

/// Both sets of routes on one listener.
pub fn all_routes(state: AppState) -> Router {
    finish(agents(&state).merge(people()), state)
}

fn agents(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(proto::ENROLL_PATH, post(agents::enroll).layer(DefaultBodyLimit::max(agents::ENROLL_LIMIT)))
        .route(
            proto::REPORT_PATH,
            post(agents::report)
                .layer(DefaultBodyLimit::max(state.settings.max_report_bytes))
                .layer(middleware::from_fn_with_state(state.clone(), one_of_few_reports)),
        )
}

/// How long a report may wait for its turn before the agent is told to come back later.
const REPORT_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Lets at most `max_concurrent_reports` reports be read and processed at once: the permit is
/// taken before the body is read, so that many agents (or one hostile host on many connections)
/// cannot make the collector hold more than that many bodies in memory.
async fn one_of_few_reports(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let permit = tokio::time::timeout(REPORT_QUEUE_WAIT, state.report_permits.clone().acquire_owned()).await;
    match permit {
        Ok(Ok(permit)) => {
            tracing::debug!(free = state.report_permits.available_permits(), "report takes its turn");
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "collector busy with other reports; retry later")
            .into_response(),
    }
}

fn people() -> Router<AppState> {
    Router::new()
        .route(proto::HOSTS_PATH, get(hosts::list))
        .route(&format!("{}/{{host}}", proto::HOSTS_PATH), get(hosts::detail))
        .route(proto::FINDINGS_PATH, get(findings::list))
        .route(&format!("{}/{{id}}/ack", proto::FINDINGS_PATH), post(findings::ack))
        .route(proto::SILENCES_PATH, get(findings::silences).post(findings::silence))
        .route(proto::LEARN_PATH, get(baselines::learn))
        .route(proto::PROCESSES_PATH, get(state::processes))
        .route(proto::LISTENERS_PATH, get(state::listeners))
        .route(proto::CONNECTIONS_PATH, get(state::connections))
        .route(proto::PROCESS_HISTORY_PATH, get(history::processes))
        .route(proto::SOCKET_HISTORY_PATH, get(history::sockets))
        .route(proto::FILES_PATH, get(history::files))
        .route(proto::CURRENT_FILES_PATH, get(history::current_files))
        .route(
            proto::BASELINES_PATH,
            get(baselines::list)
                .post(baselines::apply)
                .layer(DefaultBodyLimit::max(limits::MAX_BASELINE_BYTES * 2)),
        )
}

fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .route(proto::HEALTHZ_PATH, get(healthz))
        .route(proto::METRICS_PATH, get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// The counters, in Prometheus text format. Names follow `hostwatch_<thing>_<unit>[_total]`; no
/// per-host labels.
async fn metrics(State(state): State<AppState>) -> ([(header::HeaderName, &'static str); 1], String) {
    let c = &state.counters;
    let rows: [(&str, &str, &str, u64); 4] = [
        (
            "hostwatch_reports_accepted_total",
            "counter",
            "Reports accepted from agents.",
            c.reports_accepted.load(Ordering::Relaxed),
        ),
        (
            "hostwatch_reports_rejected_total",
            "counter",
            "Reports of authenticated agents refused (malformed, invalid, too large, or not stored).",
            c.reports_rejected.load(Ordering::Relaxed),
        ),
        (
            "hostwatch_unknown_fields_total",
            "counter",
            "Fields of agent messages this collector does not know, ignored.",
            c.unknown_fields.load(Ordering::Relaxed),
        ),
        (
            "hostwatch_report_turns_free",
            "gauge",
            "Reports that could start processing now (of max_concurrent_reports).",
            state.report_permits.available_permits() as u64,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}
