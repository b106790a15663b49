//! `POST /api/v1/query`: an analyst's read-only SQL over the documented views. The store decides
//! what a query may read and stops it at the limits ([`crate::store::Store::query`]); this
//! handler checks the role, audits the statement before it runs (so that even a query that never
//! returns is on record), and says why one was refused.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use hostwatch_proto::v1 as proto;
use serde_json::json;
use time::OffsetDateTime;

use super::{ApiError, decode, read_body};
use crate::auth::{Person, Role};
use crate::state::AppState;
use crate::store::{MAX_SQL_BYTES, QueryTerms};

/// Bytes of values one answer holds at most, whatever `[query] max_rows` allows.
const MAX_RESULT_BYTES: usize = 64 << 20;

pub async fn run(
    State(state): State<AppState>,
    person: Person,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<proto::QueryResult>, ApiError> {
    person.require(Role::Analyst)?;
    let body = read_body(&state, &headers, body, "query", MAX_SQL_BYTES + 1024).await?;
    let req: proto::QueryRequest = decode(&state, "query request", &body.bytes)?;
    let actor = person.actor();
    state.store.audit(&actor, "query", "sql", json!({ "sql": req.sql }), OffsetDateTime::now_utc()).await?;
    let terms = QueryTerms {
        timeout: state.settings.query.timeout,
        max_rows: state.settings.query.max_rows,
        max_bytes: MAX_RESULT_BYTES,
        offline_after: state.settings.offline_after,
    };
    let began = Instant::now();
    let out = state.store.query(&req.sql, terms).await;
    let ms = began.elapsed().as_millis() as u64;
    match &out {
        Ok(r) => {
            tracing::info!(actor = %actor, rows = r.rows.len(), truncated = r.truncated, ms, "query ran")
        }
        Err(e) => tracing::info!(actor = %actor, ms, refused = %e, "query refused or stopped"),
    }
    let r = out?;
    Ok(Json(proto::QueryResult { columns: r.columns, rows: r.rows, truncated: r.truncated }))
}
