//! The HTTP API: agents' endpoints (enroll, report) and people's (hosts, findings, baselines).
//!
//! Architecture invariant: handlers only translate. They authenticate through `auth`, decode and
//! validate the wire's types, convert them to the model, and call `ingest`, the store or the
//! baseline parser; every error leaves as `{"error": "..."}` with a status that says whose fault
//! it was.

mod agents;
mod baselines;
pub mod body;
mod credentials;
mod findings;
mod history;
mod hosts;
mod query;
mod state;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hostwatch_proto::v1 as proto;
use serde::de::DeserializeOwned;

use crate::state::AppState;
use crate::store::StoreError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, at least 1): when the caller may try again.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), retry_after: None }
    }
    /// `429 Too Many Requests`, to be tried again after `after`.
    pub fn too_many(m: impl Into<String>, after: std::time::Duration) -> Self {
        ApiError { retry_after: Some(after), ..Self::new(StatusCode::TOO_MANY_REQUESTS, m) }
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
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // An analyst's query that was refused is the caller's fault, said in full.
        if let StoreError::Query(m) = e {
            return ApiError::bad_request(m);
        }
        if e.is_retriable() {
            // A full disk or a database down fails every request: a line per 10 s says so, with
            // how many it stands for, not one per request (a log on the same full disk).
            static UNAVAILABLE: std::sync::LazyLock<crate::metrics::LogLimit> =
                std::sync::LazyLock::new(|| {
                    crate::metrics::LogLimit::new(std::time::Duration::from_secs(10))
                });
            if let Some(unlogged) = UNAVAILABLE.allow() {
                tracing::error!(error = %e, unlogged, "store unavailable; requests answered 503 until it is back");
            }
            ApiError {
                retry_after: Some(std::time::Duration::from_secs(5)),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("store temporarily unavailable ({e}); retry later"),
                )
            }
        } else {
            tracing::error!(error = %e, "store error");
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
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// Rows of a listing's page when the request does not say; the most it may ask for.
pub const DEFAULT_PAGE: u32 = 1_000;
pub const MAX_PAGE: u32 = 100_000;

/// The page size a request asked for, checked.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        l @ 1..=MAX_PAGE => Ok(l),
        _ => Err(ApiError::bad_request(format!("limit must be 1 to {MAX_PAGE}"))),
    }
}

/// A page of a listing as the API answers it: the rows as a JSON array, the next cursor in
/// [`proto::NEXT_CURSOR_HEADER`].
pub fn page_response<T, U: serde::Serialize>(page: crate::store::Page<T>, f: impl Fn(T) -> U) -> Response {
    let items: Vec<U> = page.items.into_iter().map(f).collect();
    let mut resp = Json(items).into_response();
    if let Some(next) = page.next
        && let Ok(v) = header::HeaderValue::from_str(&next)
    {
        resp.headers_mut().insert(proto::NEXT_CURSOR_HEADER, v);
    }
    resp
}

/// Reads a request body under the collector's deadline and byte budget ([`body::read`]).
pub async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    what: &str,
    limit: usize,
) -> Result<body::Held, ApiError> {
    body::read(&state.bodies, headers, body, what, limit).await
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
        state.metrics.unknown_fields(unknown.len() as u64);
        tracing::debug!(fields = ?unknown, "ignored fields this collector does not know");
    }
    Ok(value)
}

/// Routes for agents: enroll, report and health.
pub fn agent_routes(state: AppState) -> Router {
    finish(agents(), state)
}

/// Routes for people and tools, and health.
pub fn people_routes(state: AppState) -> Router {
    finish(people(), state)
}

/// Both sets of routes on one listener.
pub fn all_routes(state: AppState) -> Router {
    finish(agents().merge(people()), state)
}

fn agents() -> Router<AppState> {
    Router::new()
        .route(proto::ENROLL_PATH, post(agents::enroll))
        .route(proto::REPORT_PATH, post(agents::report))
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
        .route(proto::BASELINES_PATH, get(baselines::list).post(baselines::apply))
        .route(proto::TOKENS_PATH, get(credentials::list_tokens).post(credentials::create_token))
        .route(&format!("{}/{{id}}/revoke", proto::TOKENS_PATH), post(credentials::revoke_token))
        .route(proto::SECRETS_PATH, get(credentials::list_secrets).post(credentials::create_secret))
        .route(&format!("{}/{{id}}/revoke", proto::SECRETS_PATH), post(credentials::revoke_secret))
        .route(&format!("{}/{{host}}/revoke", proto::HOSTS_PATH), post(credentials::revoke_host))
        .route(proto::AUDIT_PATH, get(credentials::audit))
        .route(proto::QUERY_PATH, post(query::run))
}

fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .route(proto::HEALTHZ_PATH, get(healthz))
        .route(proto::METRICS_PATH, get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// The collector's metrics in Prometheus text format ([`crate::metrics`]), for any API token:
/// they include the fleet's findings by kind, which an intruder on a host must not read.
async fn metrics(State(state): State<AppState>, _person: crate::auth::Person) -> Result<Response, ApiError> {
    let text = state.metrics.render(&state).await?;
    Ok(([(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], text)
        .into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}
