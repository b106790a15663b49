//! `/api/v1/tokens`, `/api/v1/secrets`, `/api/v1/hosts/{host}/revoke` and `/api/v1/audit`: the
//! credentials an admin manages, and the trail of who changed what.
//!
//! A credential's value is generated here, returned once in the answer that creates it, and
//! stored only as its hash; the store audits each change in the same transaction.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use hostwatch_proto::v1::{self as proto, API_TOKEN_PREFIX, CredentialState, ENROLL_SECRET_PREFIX, Validate};
use serde::Deserialize;
use time::OffsetDateTime;

use super::history::since;
use super::hosts::resolve_host;
use super::{ApiError, decode, read_body};
use crate::auth::{Person, Role};
use crate::secrets;
use crate::state::AppState;
use crate::store::{NewCredential, SecretRecord, TokenRecord};
use hostwatch_agent::shared::config::Secret;

/// Largest body of a create request: a name, tags and an expiry.
const CREATE_LIMIT: usize = 64 << 10;

fn token_info(t: TokenRecord, now: OffsetDateTime) -> proto::TokenInfo {
    proto::TokenInfo {
        id: t.id,
        state: CredentialState::at(now, t.expires_at, t.revoked_at),
        name: t.name,
        role: t.role,
        created_at: t.created_at,
        created_by: t.created_by,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
    }
}

fn secret_info(s: SecretRecord, now: OffsetDateTime) -> proto::SecretInfo {
    proto::SecretInfo {
        id: s.id,
        state: CredentialState::at(now, s.expires_at, s.revoked_at),
        name: s.name,
        tags: s.tags,
        hosts: s.hosts,
        created_at: s.created_at,
        created_by: s.created_by,
        expires_at: s.expires_at,
        revoked_at: s.revoked_at,
    }
}

/// A fresh credential of the kind `prefix` names: its value, shown once, and the hash the store
/// keeps in its place.
fn generate(prefix: &str) -> Result<(Secret, String), ApiError> {
    let value = secrets::generate(prefix)
        .map_err(|e| ApiError::internal(format!("cannot generate a {prefix}... credential: {e}")))?;
    let hash = secrets::hash(value.expose());
    Ok((value, hash))
}

fn new_credential<'a>(
    name: &'a str,
    hash: &'a str,
    actor: &'a str,
    expires_in_secs: Option<u64>,
    now: OffsetDateTime,
) -> NewCredential<'a> {
    let expires_at =
        expires_in_secs.map(|s| now + time::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX)));
    NewCredential { name, hash, created_by: actor, expires_at, now }
}

pub async fn list_tokens(
    State(state): State<AppState>,
    person: Person,
) -> Result<Json<Vec<proto::TokenInfo>>, ApiError> {
    person.require(Role::Admin)?;
    let now = OffsetDateTime::now_utc();
    Ok(Json(state.store.api_tokens().await?.into_iter().map(|t| token_info(t, now)).collect()))
}

pub async fn create_token(
    State(state): State<AppState>,
    person: Person,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<proto::CreatedToken>, ApiError> {
    person.require(Role::Admin)?;
    let body = read_body(&state, &headers, body, "token request", CREATE_LIMIT).await?;
    let req: proto::CreateToken = decode(&state, "token request", &body.bytes)?;
    req.validate().map_err(|e| ApiError::bad_request(format!("invalid token request: {e}")))?;
    let role = Role::parse(&req.role).ok_or_else(|| {
        ApiError::bad_request(format!("role {:?} is not reader, analyst or admin", req.role))
    })?;
    let now = OffsetDateTime::now_utc();
    let actor = person.actor();
    let (token, hash) = generate(API_TOKEN_PREFIX)?;
    let new = new_credential(&req.name, &hash, &actor, req.expires_in_secs, now);
    let rec = state.store.create_api_token(&new, role.as_str()).await?;
    tracing::info!(token_id = rec.id, name = ?rec.name, role = role.as_str(), by = %actor, "API token created");
    Ok(Json(proto::CreatedToken { info: token_info(rec, now), token: token.expose().to_owned() }))
}

pub async fn revoke_token(
    State(state): State<AppState>,
    person: Person,
    Path(id): Path<i64>,
) -> Result<Json<proto::TokenInfo>, ApiError> {
    person.require(Role::Admin)?;
    let now = OffsetDateTime::now_utc();
    let tokens = state.store.api_tokens().await?;
    let target =
        tokens.iter().find(|t| t.id == id).ok_or_else(|| ApiError::not_found(format!("no token {id}")))?;
    // Nobody could manage credentials any more: refused, with the way out.
    let active =
        |t: &TokenRecord| CredentialState::at(now, t.expires_at, t.revoked_at) == CredentialState::Active;
    if target.role == Role::Admin.as_str()
        && active(target)
        && !tokens.iter().any(|t| t.id != id && t.role == Role::Admin.as_str() && active(t))
    {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!("token {id} is the last working admin token: create another admin token first"),
        ));
    }
    let actor = person.actor();
    let rec = state
        .store
        .revoke_api_token(id, &actor, now)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no token {id}")))?;
    tracing::info!(token_id = id, name = ?rec.name, by = %actor, "API token revoked");
    Ok(Json(token_info(rec, now)))
}

pub async fn list_secrets(
    State(state): State<AppState>,
    person: Person,
) -> Result<Json<Vec<proto::SecretInfo>>, ApiError> {
    person.require(Role::Admin)?;
    let now = OffsetDateTime::now_utc();
    Ok(Json(state.store.enroll_secrets().await?.into_iter().map(|s| secret_info(s, now)).collect()))
}

pub async fn create_secret(
    State(state): State<AppState>,
    person: Person,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<proto::CreatedSecret>, ApiError> {
    person.require(Role::Admin)?;
    let body = read_body(&state, &headers, body, "secret request", CREATE_LIMIT).await?;
    let req: proto::CreateSecret = decode(&state, "secret request", &body.bytes)?;
    req.validate().map_err(|e| ApiError::bad_request(format!("invalid secret request: {e}")))?;
    let now = OffsetDateTime::now_utc();
    let actor = person.actor();
    let (secret, hash) = generate(ENROLL_SECRET_PREFIX)?;
    let new = new_credential(&req.name, &hash, &actor, req.expires_in_secs, now);
    let rec = state.store.create_enroll_secret(&new, &req.tags).await?;
    tracing::info!(secret_id = rec.id, name = ?rec.name, tags = ?rec.tags, by = %actor, "enroll secret created");
    Ok(Json(proto::CreatedSecret { info: secret_info(rec, now), secret: secret.expose().to_owned() }))
}

pub async fn revoke_secret(
    State(state): State<AppState>,
    person: Person,
    Path(id): Path<i64>,
) -> Result<Json<proto::SecretInfo>, ApiError> {
    person.require(Role::Admin)?;
    let now = OffsetDateTime::now_utc();
    let actor = person.actor();
    let rec = state
        .store
        .revoke_enroll_secret(id, &actor, now)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no enroll secret {id}")))?;
    tracing::info!(secret_id = id, name = ?rec.name, by = %actor, "enroll secret revoked");
    Ok(Json(secret_info(rec, now)))
}

/// Every node key of the host stops working at once; its agent is told 401 at its next report
/// and enrolls again only with an enroll secret that works (as a new host).
pub async fn revoke_host(
    State(state): State<AppState>,
    person: Person,
    Path(host): Path<String>,
) -> Result<Json<proto::HostRevoked>, ApiError> {
    person.require(Role::Admin)?;
    let host_id = resolve_host(&state, &host).await?;
    let now = OffsetDateTime::now_utc();
    let actor = person.actor();
    let keys = state
        .store
        .revoke_host_keys(host_id, &actor, now)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no host with id {host_id}")))?;
    let hostname = state.store.host(host_id).await?.map(|h| h.facts.hostname).unwrap_or_default();
    tracing::warn!(host_id, hostname = ?hostname, keys, by = %actor, "host's node keys revoked");
    Ok(Json(proto::HostRevoked { host_id, hostname, keys_revoked: keys }))
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    /// How far back, as 15m or 7d.
    since: Option<String>,
    limit: Option<u32>,
}

pub async fn audit(
    State(state): State<AppState>,
    person: Person,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<proto::AuditEntry>>, ApiError> {
    person.require(Role::Admin)?;
    let since = q.since.as_deref().map(|s| since(s, OffsetDateTime::now_utc())).transpose()?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    Ok(Json(state.store.audit_entries(since, limit).await?))
}
