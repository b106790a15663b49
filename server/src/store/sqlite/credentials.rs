//! Credentials in the store: API tokens, enroll secrets, node keys, and the audit trail that
//! records every change to them.
//!
//! Invariants: only hashes are stored; every creation and revocation writes its audit entry in
//! the same transaction, so the trail cannot miss a change that happened; a revoked credential
//! stays (as revoked) so that its use can be told apart from an unknown one.

use std::collections::BTreeMap;

use hostwatch_proto::v1::AuditEntry;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde_json::json;
use time::OffsetDateTime;

use super::{json, opt_ts, parse_ts, to_json, ts};
use crate::store::{HostTags, NewCredential, Result, SecretRecord, TokenRecord};

/// One entry of the audit trail, in the caller's transaction.
pub(super) fn audit(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
    now: OffsetDateTime,
) -> Result<()> {
    tx.execute(
        "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![ts(now), actor, action, target, to_json(detail)],
    )?;
    Ok(())
}

const TOKEN_COLUMNS: &str = "id, name, role, created_at, created_by, expires_at, revoked_at";

fn token(r: &Row<'_>) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        created_at: parse_ts(&r.get::<_, String>(3)?)?,
        created_by: r.get(4)?,
        expires_at: opt_ts(r.get(5)?)?,
        revoked_at: opt_ts(r.get(6)?)?,
    })
}

/// Every row `sql` selects with `arg`, each read by `read`.
fn rows<T>(
    tx: &Transaction<'_>,
    sql: &str,
    arg: &dyn rusqlite::ToSql,
    read: fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let mut rows = stmt.query([arg])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(read(r)?);
    }
    Ok(out)
}

fn token_where(tx: &Transaction<'_>, clause: &str, arg: &dyn rusqlite::ToSql) -> Result<Vec<TokenRecord>> {
    rows(tx, &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE {clause} ORDER BY id"), arg, token)
}

pub(super) fn create_token(tx: &Transaction<'_>, new: &NewCredential<'_>, role: &str) -> Result<TokenRecord> {
    tx.execute(
        "INSERT INTO api_tokens (name, role, token_hash, created_at, created_by, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![new.name, role, new.hash, ts(new.now), new.created_by, new.expires_at.map(ts)],
    )?;
    let id = tx.last_insert_rowid();
    audit(
        tx,
        new.created_by,
        "create_token",
        &format!("token:{id}"),
        &json!({ "name": new.name, "role": role, "expires_at": new.expires_at.map(ts) }),
        new.now,
    )?;
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

pub(super) fn find_token(tx: &Transaction<'_>, hash: &str) -> Result<Option<TokenRecord>> {
    Ok(token_where(tx, "token_hash = ?1", &hash)?.into_iter().next())
}

pub(super) fn tokens(tx: &Transaction<'_>) -> Result<Vec<TokenRecord>> {
    token_where(tx, "?1", &1)
}

pub(super) fn revoke_token(
    tx: &Transaction<'_>,
    id: i64,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Option<TokenRecord>> {
    let changed = tx.execute(
        "UPDATE api_tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
        params![ts(now), id],
    )?;
    let Some(t) = token_where(tx, "id = ?1", &id)?.into_iter().next() else { return Ok(None) };
    if changed > 0 {
        audit(
            tx,
            actor,
            "revoke_token",
            &format!("token:{id}"),
            &json!({ "name": t.name, "role": t.role }),
            now,
        )?;
    }
    Ok(Some(t))
}

const SECRET_COLUMNS: &str = "s.id, s.name, s.tags, s.created_at, s.created_by, s.expires_at, s.revoked_at, \
     (SELECT COUNT(*) FROM hosts h WHERE h.enroll_secret_id = s.id)";

fn secret(r: &Row<'_>) -> Result<SecretRecord> {
    Ok(SecretRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        tags: json(&r.get::<_, String>(2)?, "enroll secret tags")?,
        created_at: parse_ts(&r.get::<_, String>(3)?)?,
        created_by: r.get(4)?,
        expires_at: opt_ts(r.get(5)?)?,
        revoked_at: opt_ts(r.get(6)?)?,
        hosts: u64::try_from(r.get::<_, i64>(7)?).unwrap_or_default(),
    })
}

fn secret_where(tx: &Transaction<'_>, clause: &str, arg: &dyn rusqlite::ToSql) -> Result<Vec<SecretRecord>> {
    rows(
        tx,
        &format!("SELECT {SECRET_COLUMNS} FROM enroll_secrets s WHERE {clause} ORDER BY s.id"),
        arg,
        secret,
    )
}

pub(super) fn create_secret(
    tx: &Transaction<'_>,
    new: &NewCredential<'_>,
    tags: &BTreeMap<String, String>,
) -> Result<SecretRecord> {
    tx.execute(
        "INSERT INTO enroll_secrets (name, secret_hash, created_at, created_by, expires_at, tags) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![new.name, new.hash, ts(new.now), new.created_by, new.expires_at.map(ts), to_json(tags)],
    )?;
    let id = tx.last_insert_rowid();
    audit(
        tx,
        new.created_by,
        "create_secret",
        &format!("secret:{id}"),
        &json!({ "name": new.name, "tags": tags, "expires_at": new.expires_at.map(ts) }),
        new.now,
    )?;
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

pub(super) fn find_secret(tx: &Transaction<'_>, hash: &str) -> Result<Option<SecretRecord>> {
    Ok(secret_where(tx, "s.secret_hash = ?1", &hash)?.into_iter().next())
}

pub(super) fn secrets(tx: &Transaction<'_>) -> Result<Vec<SecretRecord>> {
    secret_where(tx, "?1", &1)
}

pub(super) fn revoke_secret(
    tx: &Transaction<'_>,
    id: i64,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Option<SecretRecord>> {
    let changed = tx.execute(
        "UPDATE enroll_secrets SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
        params![ts(now), id],
    )?;
    let Some(s) = secret_where(tx, "s.id = ?1", &id)?.into_iter().next() else { return Ok(None) };
    if changed > 0 {
        audit(tx, actor, "revoke_secret", &format!("secret:{id}"), &json!({ "name": s.name }), now)?;
    }
    Ok(Some(s))
}

pub(super) fn revoke_host_keys(
    tx: &Transaction<'_>,
    host_id: i64,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Option<u64>> {
    let hostname: Option<String> =
        tx.query_row("SELECT hostname FROM hosts WHERE id = ?1", [host_id], |r| r.get(0)).optional()?;
    let Some(hostname) = hostname else { return Ok(None) };
    let n = tx.execute(
        "UPDATE node_keys SET revoked_at = ?1 WHERE host_id = ?2 AND revoked_at IS NULL",
        params![ts(now), host_id],
    )?;
    audit(
        tx,
        actor,
        "revoke_host",
        &format!("host:{host_id}"),
        &json!({ "hostname": hostname, "keys": n }),
        now,
    )?;
    Ok(Some(n as u64))
}

pub(super) fn host_tags(tx: &Transaction<'_>, host_id: i64) -> Result<Option<HostTags>> {
    let row: Option<(String, String, Option<String>)> = tx
        .query_row(
            "SELECT h.tags, h.reported_tags, s.tags FROM hosts h \
             LEFT JOIN enroll_secrets s ON s.id = h.enroll_secret_id WHERE h.id = ?1",
            [host_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((held, reported, assigned)) = row else { return Ok(None) };
    Ok(Some(HostTags {
        held: json(&held, "host tags")?,
        reported: json(&reported, "host reported tags")?,
        assigned: match assigned {
            Some(a) => json(&a, "enroll secret tags")?,
            None => BTreeMap::new(),
        },
    }))
}

pub(super) fn audit_entries(
    tx: &Transaction<'_>,
    since: Option<OffsetDateTime>,
    limit: u32,
) -> Result<Vec<AuditEntry>> {
    let since = since.map_or_else(String::new, ts);
    let mut stmt = tx.prepare_cached(
        "SELECT id, at, actor, action, target, detail FROM audit_log WHERE at >= ?1 ORDER BY at DESC, id DESC LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![since, limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(AuditEntry {
            id: r.get(0)?,
            at: parse_ts(&r.get::<_, String>(1)?)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            detail: json(&r.get::<_, String>(5)?, "audit detail")?,
        });
    }
    Ok(out)
}
