//! Credentials in the PostgreSQL store: API tokens and the audit trail that records every change
//! to them (enroll secrets and node keys come with the hosts' tables).
//!
//! Invariants, as in the SQLite store: only hashes are stored; every creation and revocation
//! writes its audit entry in the same transaction; a revoked credential stays, as revoked.

use deadpool_postgres::GenericClient;
use hostwatch_proto::v1::{AuditEntry, timestamp};
use serde_json::json;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{PgStore, error, ms};
use crate::store::{NewCredential, Result, TokenRecord};

/// One entry of the audit trail, in the caller's transaction.
async fn audit(
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

const TOKEN_COLUMNS: &str = "id, name, role, created_at, created_by, expires_at, revoked_at";

fn token(r: &Row) -> TokenRecord {
    TokenRecord {
        id: r.get(0),
        name: r.get(1),
        role: r.get(2),
        created_at: r.get(3),
        created_by: r.get(4),
        expires_at: r.get(5),
        revoked_at: r.get(6),
    }
}

impl PgStore {
    /// Tokens not revoked (expired ones included: they are still there to be renewed).
    pub async fn count_api_tokens(&self) -> Result<u64> {
        let n: i64 = self
            .client()
            .await?
            .query_one("SELECT COUNT(*) FROM api_tokens WHERE revoked_at IS NULL", &[])
            .await
            .map_err(error)?
            .get(0);
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// Creates a token with `role`, audited as `create_token`.
    pub async fn create_api_token(&self, new: &NewCredential<'_>, role: &str) -> Result<TokenRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO api_tokens (name, role, token_hash, created_at, created_by, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&new.name, &role, &new.hash, &ms(new.now), &new.created_by, &new.expires_at.map(ms)],
            )
            .await
            .map_err(error)?
            .get(0);
        audit(
            &tx,
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
        let row = self
            .client()
            .await?
            .query_opt(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1"), &[&hash])
            .await
            .map_err(error)?;
        Ok(row.as_ref().map(token))
    }

    pub async fn api_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = self
            .client()
            .await?
            .query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id"), &[])
            .await
            .map_err(error)?;
        Ok(rows.iter().map(token).collect())
    }

    /// Revokes a token, audited as `revoke_token` by `actor`; `None` if there is no such token.
    /// Revoking a revoked token changes nothing and is not audited again.
    pub async fn revoke_api_token(
        &self,
        id: i64,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<TokenRecord>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        let changed = tx
            .execute(
                "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                &[&ms(now), &id],
            )
            .await
            .map_err(error)?;
        let row = tx
            .query_opt(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"), &[&id])
            .await
            .map_err(error)?;
        let Some(t) = row.as_ref().map(token) else { return Ok(None) };
        if changed > 0 {
            audit(
                &tx,
                actor,
                "revoke_token",
                &format!("token:{id}"),
                &json!({ "name": t.name, "role": t.role }),
                now,
            )
            .await?;
        }
        tx.commit().await.map_err(error)?;
        Ok(Some(t))
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
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                detail: r.get(5),
            })
            .collect())
    }
}
