//! Who is calling, and what they may do: the one place credentials are checked.
//!
//! Agents present a node key and may only write their own host's state; people and tools present
//! an API token with a role (reader < analyst < admin). Handlers take [`Agent`] or [`Person`] as an
//! extractor, so a handler without one cannot be reached by anybody but the unauthenticated
//! endpoints (enroll, which checks its secret here too, and health).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use hostwatch_proto::v1::{API_TOKEN_PREFIX, CredentialState, NODE_KEY_PREFIX};
use time::OffsetDateTime;

use crate::api::ApiError;
use crate::secrets;
use crate::state::AppState;
use crate::store::SecretRecord;

/// A person's or tool's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads hosts, findings and baselines.
    Reader,
    /// And acknowledges findings and runs SQL.
    Analyst,
    /// And applies baselines and manages tokens and secrets.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Reader, Role::Analyst, Role::Admin].into_iter().find(|r| r.as_str() == s)
    }
}

/// A caller authenticated by API token.
#[derive(Debug, Clone)]
pub struct Person {
    pub token_id: i64,
    pub name: String,
    pub role: Role,
}

impl Person {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("token:{}#{}", self.name, self.token_id)
    }

    /// Refuses (403) a caller whose role is below `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role; token `{}` has {}",
                role.as_str(),
                self.name,
                self.role.as_str()
            )))
        }
    }
}

/// A caller authenticated by node key: an agent, allowed to write its own host only.
#[derive(Debug, Clone, Copy)]
pub struct Agent {
    pub host_id: i64,
}

fn bearer<'a>(parts: &'a Parts, expected: &str) -> Result<&'a str, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(format!("missing credential: send `Authorization: Bearer {expected}...`"))
    })?;
    let value = header.to_str().map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <credential>`"))?
        .trim();
    if !token.starts_with(expected) {
        return Err(ApiError::unauthorized(format!(
            "wrong kind of credential: this endpoint takes a {expected}... credential"
        )));
    }
    Ok(token)
}

impl FromRequestParts<AppState> for Person {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts, API_TOKEN_PREFIX)?;
        let rec = state
            .store
            .find_api_token(&secrets::hash(token))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown API token"))?;
        usable("API token", &rec.name, rec.expires_at, rec.revoked_at)?;
        let role = Role::parse(&rec.role)
            .ok_or_else(|| ApiError::internal(format!("token {} has an unknown role", rec.id)))?;
        Ok(Person { token_id: rec.id, name: rec.name, role })
    }
}

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = bearer(parts, NODE_KEY_PREFIX)?;
        let host_id = state
            .store
            .find_node_key(&secrets::hash(key))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked node key"))?;
        Ok(Agent { host_id })
    }
}

/// Checks an enroll secret: it must exist, be unrevoked and unexpired. Returns it, for the tags
/// it assigns.
pub async fn check_enroll_secret(state: &AppState, secret: &str) -> Result<SecretRecord, ApiError> {
    let rec = state
        .store
        .find_enroll_secret(&secrets::hash(secret))
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown enroll secret"))?;
    usable("enroll secret", &rec.name, rec.expires_at, rec.revoked_at)?;
    Ok(rec)
}

/// Refuses (401) a credential that is revoked or expired, naming it: the caller holds this very
/// credential, so saying why it no longer works tells them nothing new.
fn usable(
    kind: &str,
    name: &str,
    expires_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
) -> Result<(), ApiError> {
    match CredentialState::at(OffsetDateTime::now_utc(), expires_at, revoked_at) {
        CredentialState::Active => Ok(()),
        CredentialState::Revoked => Err(ApiError::unauthorized(format!("{kind} `{name}` was revoked"))),
        CredentialState::Expired => Err(ApiError::unauthorized(format!("{kind} `{name}` has expired"))),
    }
}
