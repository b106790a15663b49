//! Credentials in the PostgreSQL store: API tokens, enroll secrets, and the audit trail that
//! records every change to them (node keys are in `hosts.rs`, with the hosts they belong to).
//!
//! Invariants, as in the SQLite store: only hashes are stored; every creation and revocation
//! writes its audit entry in the same transaction; a revoked credential stays, as revoked.

use deadpool_postgres::GenericClient;
use hostwatch_proto::v1::{AuditEntry, timestamp};
use serde_json::json;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{Col, PgStore, error, ms};
use std::collections::BTreeMap;

use tokio_postgres::types::Json;

use crate::store::{NewCredential, Result, SecretRecord, TokenRecord};

/// One entry of the audit trail, in the caller's transaction.
pub(super) async fn audit(
    tx: &impl GenericClient,
    actor: &str,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
    now: OffsetDateTime,
) -> Result<()> {
    tx.execute(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        &[&ms(now), &actor, &action, &target, detail],
    )
    .await
    .map_err(error)?;
    Ok(())
}

/// A kind of credential [`PgStore::revoke`] revokes: its table, how one is read by id, and how
/// its revocation is audited.
struct Revocable<'a> {
    table: &'static str,
    select: &'a str,
    action: &'static str,
    target: &'static str,
}

const TOKEN_COLUMNS: &str = "id, name, role, created_at, created_by, expires_at, revoked_at";

fn token(r: &Row) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.col(0)?,
        name: r.col(1)?,
        role: r.col(2)?,
        created_at: r.col(3)?,
        created_by: r.col(4)?,
        expires_at: r.col(5)?,
        revoked_at: r.col(6)?,
    })
}

const SECRET_COLUMNS: &str = "s.id, s.name, s.tags, s.created_at, s.created_by, s.expires_at, s.revoked_at, \
     (SELECT COUNT(*) FROM hosts h WHERE h.enroll_secret_id = s.id)";

fn secret(r: &Row) -> Result<SecretRecord> {
    let Json(tags): Json<BTreeMap<String, String>> = r.col(2)?;
    Ok(SecretRecord {
        id: r.col(0)?,
        name: r.col(1)?,
        tags,
        created_at: r.col(3)?,
        created_by: r.col(4)?,
        expires_at: r.col(5)?,
        revoked_at: r.col(6)?,
        hosts: u64::try_from(r.col::<i64>(7)?).unwrap_or_default(),
    })
}

impl PgStore {
    /// Enroll secrets not revoked.
    pub async fn count_enroll_secrets(&self) -> Result<u64> {
        let n: i64 = self
            .client()
            .await?
            .query_one("SELECT COUNT(*) FROM enroll_secrets WHERE revoked_at IS NULL", &[])
            .await
            .map_err(error)?
            .col(0)?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// Creates an enroll secret that assigns `tags`, audited as `create_secret`.
    pub async fn create_enroll_secret(
        &self,
        new: &NewCredential<'_>,
        tags: &BTreeMap<String, String>,
    ) -> Result<SecretRecord> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO enroll_secrets (name, secret_hash, created_at, created_by, expires_at, tags) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&new.name, &new.hash, &ms(new.now), &new.created_by, &new.expires_at.map(ms), &Json(tags)],
            )
            .await
            .map_err(error)?
            .col(0)?;
        audit(
            &*tx,
            new.created_by,
            "create_secret",
            &format!("secret:{id}"),
            &json!({ "name": new.name, "tags": tags, "expires_at": new.expires_at.map(timestamp::format) }),
            new.now,
        )
        .await?;
        tx.commit().await.map_err(error)?;
        Ok(SecretRecord {
            id,
            name: new.name.to_owned(),
            tags: tags.clone(),
            created_at: new.now,
            created_by: new.created_by.to_owned(),
            expires_at: new.expires_at,
            revoked_at: None,
            hosts: 0,
        })
    }

    /// The enroll secret with this hash, whatever its state.
    pub async fn find_enroll_secret(&self, hash: &str) -> Result<Option<SecretRecord>> {
        self.one(
            &format!("SELECT {SECRET_COLUMNS} FROM enroll_secrets s WHERE s.secret_hash = $1"),
            &[&hash],
            secret,
        )
        .await
    }

    pub async fn enroll_secrets(&self) -> Result<Vec<SecretRecord>> {
        self.all(&format!("SELECT {SECRET_COLUMNS} FROM enroll_secrets s ORDER BY s.id"), &[], secret).await
    }

    /// Revokes an enroll secret (hosts it enrolled keep their node keys), audited as
    /// `revoke_secret` once.
    pub async fn revoke_enroll_secret(
        &self,
        id: i64,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<SecretRecord>> {
        let select = format!("SELECT {SECRET_COLUMNS} FROM enroll_secrets s WHERE s.id = $1");
        self.revoke(
            Revocable { table: "enroll_secrets", select: &select, action: "revoke_secret", target: "secret" },
            id,
            actor,
            now,
            secret,
            |s| json!({ "name": s.name }),
        )
        .await
    }

    /// Tokens not revoked (expired ones included: they are still there to be renewed).
    pub async fn count_api_tokens(&self) -> Result<u64> {
        let n: i64 = self
            .client()
            .await?
            .query_one("SELECT COUNT(*) FROM api_tokens WHERE revoked_at IS NULL", &[])
            .await
            .map_err(error)?
            .col(0)?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// Creates a token with `role`, audited as `create_token`.
    pub async fn create_api_token(&self, new: &NewCredential<'_>, role: &str) -> Result<TokenRecord> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO api_tokens (name, role, token_hash, created_at, created_by, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&new.name, &role, &new.hash, &ms(new.now), &new.created_by, &new.expires_at.map(ms)],
            )
            .await
            .map_err(error)?
            .col(0)?;
        audit(
            &*tx,
            new.created_by,
            "create_token",
            &format!("token:{id}"),
            &json!({ "name": new.name, "role": role, "expires_at": new.expires_at.map(timestamp::format) }),
            new.now,
        )
        .await?;
        tx.commit().await.map_err(error)?;
        Ok(TokenRecord {
            id,
            name: new.name.to_owned(),
            role: role.to_owned(),
            created_at: new.now,
            created_by: new.created_by.to_owned(),
            expires_at: new.expires_at,
            revoked_at: None,
        })
    }

    /// The token with this hash, whatever its state.
    pub async fn find_api_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        self.one(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1"), &[&hash], token)
            .await
    }

    pub async fn api_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.all(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id"), &[], token).await
    }

    /// Revokes a token, audited as `revoke_token` by `actor`; `None` if there is no such token.
    /// Revoking a revoked token changes nothing and is not audited again.
    pub async fn revoke_api_token(
        &self,
        id: i64,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<TokenRecord>> {
        let select = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1");
        self.revoke(
            Revocable { table: "api_tokens", select: &select, action: "revoke_token", target: "token" },
            id,
            actor,
            now,
            token,
            |t| json!({ "name": t.name, "role": t.role }),
        )
        .await
    }

    /// Revokes credential `id` in one transaction: `None` if there is none; audited only when
    /// this call revoked it (a revoked credential stays as it was).
    async fn revoke<T>(
        &self,
        what: Revocable<'_>,
        id: i64,
        actor: &str,
        now: OffsetDateTime,
        read: fn(&Row) -> Result<T>,
        detail: fn(&T) -> serde_json::Value,
    ) -> Result<Option<T>> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        let changed = tx
            .execute(
                &format!("UPDATE {} SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL", what.table),
                &[&ms(now), &id],
            )
            .await
            .map_err(error)?;
        let Some(record) =
            tx.query_opt(what.select, &[&id]).await.map_err(error)?.as_ref().map(read).transpose()?
        else {
            return Ok(None);
        };
        if changed > 0 {
            audit(&*tx, actor, what.action, &format!("{}:{id}", what.target), &detail(&record), now).await?;
        }
        tx.commit().await.map_err(error)?;
        Ok(Some(record))
    }

    /// One entry of the audit trail, in a transaction of its own.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<()> {
        audit(&self.client().await?, actor, action, target, &detail, now).await
    }

    /// The audit trail since `since`, newest first, `limit` entries at most.
    pub async fn audit_entries(&self, since: Option<OffsetDateTime>, limit: u32) -> Result<Vec<AuditEntry>> {
        let since = since.map_or(OffsetDateTime::UNIX_EPOCH, ms);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, at, actor, action, target, detail FROM audit_log WHERE at >= $1 \
                 ORDER BY at DESC, id DESC LIMIT $2",
                &[&since, &i64::from(limit)],
            )
            .await
            .map_err(error)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.col(0)?,
                    at: r.col(1)?,
                    actor: r.col(2)?,
                    action: r.col(3)?,
                    target: r.col(4)?,
                    detail: r.col(5)?,
                })
            })
            .collect()
    }
}
