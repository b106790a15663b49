//! Credentials people manage (API tokens, enroll secrets, a host's node keys) and the audit
//! trail: the objects of `/api/v1/tokens`, `/api/v1/secrets`, `/api/v1/hosts/{host}/revoke` and
//! `/api/v1/audit`. A credential's value crosses the wire once, in the answer that creates it;
//! every other object names it by id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::timestamp;
use super::validate::{Validate, ValidationError, limits, name, nonempty, tags};

/// Longest a credential may be created to live: ten years.
pub const MAX_EXPIRES_SECS: u64 = 10 * 366 * 24 * 3600;

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateToken {
    /// Who or what holds it (`ci-deploy`, `alice`).
    pub name: String,
    /// `reader`, `analyst` or `admin`.
    pub role: String,
    /// Seconds from creation until it stops working; none: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

impl Validate for CreateToken {
    fn validate(&self) -> Result<(), ValidationError> {
        label(&self.name)?;
        expiry(self.expires_in_secs)
    }
}

/// Whether a credential works now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialState {
    Active,
    Expired,
    Revoked,
}

impl CredentialState {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialState::Active => "active",
            CredentialState::Expired => "expired",
            CredentialState::Revoked => "revoked",
        }
    }

    /// The state at `now` of a credential with these times.
    pub fn at(
        now: OffsetDateTime,
        expires_at: Option<OffsetDateTime>,
        revoked_at: Option<OffsetDateTime>,
    ) -> CredentialState {
        if revoked_at.is_some() {
            CredentialState::Revoked
        } else if expires_at.is_some_and(|e| e <= now) {
            CredentialState::Expired
        } else {
            CredentialState::Active
        }
    }
}

/// An API token as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub state: CredentialState,
    #[serde(with = "timestamp")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    #[serde(default, with = "timestamp::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default, with = "timestamp::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// The answer to `POST /api/v1/tokens`: the token, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub info: TokenInfo,
    pub token: String,
}

/// Body of `POST /api/v1/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSecret {
    /// What it is for (`web-fleet-2026-12`).
    pub name: String,
    /// Tags every host it enrolls carries, whatever the host reports for the same keys.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

impl Validate for CreateSecret {
    fn validate(&self) -> Result<(), ValidationError> {
        label(&self.name)?;
        tags("tags", &self.tags)?;
        expiry(self.expires_in_secs)
    }
}

/// An enroll secret as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub state: CredentialState,
    /// Hosts it enrolled.
    pub hosts: u64,
    #[serde(with = "timestamp")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    #[serde(default, with = "timestamp::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default, with = "timestamp::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// The answer to `POST /api/v1/secrets`: the secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedSecret {
    pub info: SecretInfo,
    pub secret: String,
}

/// The answer to `POST /api/v1/hosts/{host}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRevoked {
    pub host_id: i64,
    pub hostname: String,
    /// Node keys that worked until now (0: the host had none left).
    pub keys_revoked: u64,
}

/// One entry of the audit trail: who did what to what, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "timestamp")]
    pub at: OffsetDateTime,
    /// `token:NAME#ID` for a person's token, `agent:HOSTNAME` for an enrollment, `serve` for the
    /// collector itself.
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// A credential's name: shown in lists and the audit trail, so not empty and nothing hidden.
fn label(s: &str) -> Result<(), ValidationError> {
    nonempty("name", s, limits::MAX_NAME_BYTES)?;
    name("name", s, limits::MAX_NAME_BYTES)
}

fn expiry(secs: Option<u64>) -> Result<(), ValidationError> {
    match secs {
        Some(0) => Err(ValidationError::new("expires_in_secs", "must be at least 1")),
        Some(s) if s > MAX_EXPIRES_SECS => Err(ValidationError::new(
            "expires_in_secs",
            format!("{s} is more than ten years ({MAX_EXPIRES_SECS})"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_revoked_over_expired_over_active() {
        let t = |s: i64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s);
        assert_eq!(CredentialState::at(t(5), None, None), CredentialState::Active);
        assert_eq!(CredentialState::at(t(5), Some(t(6)), None), CredentialState::Active);
        assert_eq!(CredentialState::at(t(6), Some(t(6)), None), CredentialState::Expired);
        assert_eq!(CredentialState::at(t(7), Some(t(6)), Some(t(1))), CredentialState::Revoked);
    }

    #[test]
    fn requests_are_checked() {
        let ok = CreateToken { name: "ci".into(), role: "reader".into(), expires_in_secs: Some(60) };
        assert!(ok.validate().is_ok());
        let e = CreateToken { expires_in_secs: Some(0), ..ok.clone() }.validate().unwrap_err();
        assert!(e.to_string().contains("expires_in_secs"), "{e}");
        assert!(
            CreateToken { expires_in_secs: Some(MAX_EXPIRES_SECS + 1), ..ok.clone() }.validate().is_err()
        );
        assert!(CreateToken { name: "a\u{202e}b".into(), ..ok }.validate().is_err());
        let s = CreateSecret {
            name: "web".into(),
            tags: [("role\u{1b}".to_owned(), "web".to_owned())].into(),
            expires_in_secs: None,
        };
        assert!(s.validate().is_err(), "a tag key with an escape");
    }
}
