//! `GET /api/v1/baselines` and `POST /api/v1/baselines` (apply).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use hostwatch_proto::v1::{self as proto, limits};
use serde_json::json;
use time::OffsetDateTime;

use super::{ApiError, decode};
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
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<proto::BaselineSummary>, ApiError> {
    person.require(Role::Admin)?;
    let body = body.map_err(|r| ApiError::from_body("baseline", limits::MAX_BASELINE_BYTES * 2, r))?;
    let req: proto::ApplyBaseline = decode(&state, "baseline request", &body)?;
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
