//! Read-only SQL for analysts (`hostwatch query`) on PostgreSQL: one statement over the views of
//! the schema `hostwatch_views`, on connections of a role of its own.
//!
//! Invariants, each enforced on its own so that no single mistake opens the store:
//! - the statement runs as a login role that can read only the views (docs/scaling.md), never as
//!   the collector's: a role cannot take rights it was not given, whatever the statement calls
//!   (within the collector's own session, `set_config('role', …)` would give them back); before
//!   each query the role is checked to read none of the store's tables and not to be a
//!   superuser, and a query is refused while it is;
//! - a read-only transaction, with `statement_timeout` and a deadline of the collector's own;
//! - a single statement (the extended protocol takes no more than one), wrapped in a `SELECT`
//!   with a `LIMIT` of the rows the answer may hold, so the database stops there;
//! - the session is reset after each query (`RESET ALL`), so nothing one sets reaches the next.

use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::{Col, PgStore, error, ms};
use crate::store::{QueryRows, QueryTerms, Result, StoreError, query_text};

/// Tables an analyst's role must not read: if it can read one of these, the role was granted
/// more than the views and queries are refused until that is undone.
const GUARDED: &[&str] =
    &["public.api_tokens", "public.node_keys", "public.enroll_secrets", "public.audit_log", "public.hosts"];

impl PgStore {
    /// Runs one read-only statement of an analyst over the views (see the module's invariants).
    pub async fn query(&self, sql: &str, terms: QueryTerms) -> Result<QueryRows> {
        let Some(queries) = &self.queries else {
            return Err(StoreError::Query(
                "read-only SQL on PostgreSQL needs a role of its own: set [store] query_database (docs/scaling.md)"
                    .to_owned(),
            ));
        };
        let sql = query_text(sql)?;
        let online_since = self.online_since_by_interval(terms.offline_after).await?;
        // The database's own timeout stops the statement; this one stops a database that does
        // not answer at all.
        let deadline = terms.timeout + Duration::from_secs(5);
        match tokio::time::timeout(deadline, run(queries, sql, &terms, &online_since)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Query(format!("the query was stopped after {:?}", terms.timeout))),
        }
    }

    /// Each reporting interval of the fleet with the earliest last report of an online host
    /// (`model::online_since`), as the hosts view reads it.
    async fn online_since_by_interval(&self, offline_after: Option<Duration>) -> Result<String> {
        let now = time::OffsetDateTime::now_utc();
        let intervals: Vec<i32> =
            self.all("SELECT DISTINCT interval_secs FROM hosts", &[], |r| r.col(0)).await?;
        let map: serde_json::Map<String, serde_json::Value> = intervals
            .into_iter()
            .map(|i| {
                let since =
                    crate::model::online_since(now, u32::try_from(i).unwrap_or_default(), offline_after);
                (i.to_string(), hostwatch_proto::v1::timestamp::format(ms(since)).into())
            })
            .collect();
        Ok(serde_json::Value::Object(map).to_string())
    }
}

async fn run(queries: &Pool, sql: &str, terms: &QueryTerms, online_since: &str) -> Result<QueryRows> {
    let client = queries.get().await.map_err(|e| StoreError::Busy(format!("no query connection: {e}")))?;
    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(error)?;
    let out = in_transaction(&client, sql, terms, online_since).await;
    // Whatever the statement set for the session goes with the transaction or the reset; a
    // connection that cannot be reset is not given back to the pool.
    if client.batch_execute("ROLLBACK; RESET ALL").await.is_err() {
        let _ = deadpool_postgres::Object::take(client);
    }
    out
}

async fn in_transaction(
    client: &tokio_postgres::Client,
    sql: &str,
    terms: &QueryTerms,
    online_since: &str,
) -> Result<QueryRows> {
    let timeout_ms = i64::try_from(terms.timeout.as_millis()).unwrap_or(i64::MAX).max(1).to_string();
    let guard = client
        .query_one(
            "SELECT set_config('statement_timeout', $1, true), set_config('search_path', 'hostwatch_views', true), \
             set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO', true), \
             set_config('hostwatch.online_since', $2, true), \
             (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user), \
             (SELECT array_agg(t) FROM unnest($3::text[]) t WHERE to_regclass(t) IS NOT NULL \
               AND has_table_privilege(t, 'SELECT'))",
            &[&timeout_ms, &online_since, &GUARDED],
        )
        .await
        .map_err(error)?;
    let superuser: Option<bool> = guard.col(5)?;
    let readable: Option<Vec<String>> = guard.col(6)?;
    if superuser == Some(true) || readable.as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(StoreError::Query(format!(
            "refused: the query role can read more than the views ({}); grant it only hostwatch_views (docs/scaling.md)",
            if superuser == Some(true) {
                "it is a superuser".to_owned()
            } else {
                readable.unwrap_or_default().join(", ")
            }
        )));
    }
    // One statement: the extended protocol's prepare takes no more. Its columns' types say how
    // each text value reads as JSON.
    let wrapped =
        format!("SELECT * FROM (\n{sql}\n) AS hostwatch_query LIMIT {}", terms.max_rows.saturating_add(1));
    client.prepare(sql).await.map_err(|e| refusal(&e, terms.timeout))?;
    // A statement that parses alone but not inside a SELECT does not read: a write, a command.
    let stmt = client.prepare(&wrapped).await.map_err(|e| match e.code() {
        Some(&SqlState::SYNTAX_ERROR) => StoreError::Query(format!(
            "refused: only a statement that reads (SELECT, WITH … SELECT, VALUES, TABLE) can run; a query may only read the views: {}",
            crate::store::QUERY_VIEWS.join(", ")
        )),
        _ => refusal(&e, terms.timeout),
    })?;
    let columns: Vec<String> = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
    let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
    let mut out = QueryRows { columns, rows: Vec::new(), truncated: false };
    let stream = client.simple_query_raw(&wrapped).await.map_err(|e| refusal(&e, terms.timeout))?;
    let mut stream = std::pin::pin!(stream);
    let mut bytes = 0usize;
    while let Some(message) = stream.next().await {
        let SimpleQueryMessage::Row(r) = message.map_err(|e| refusal(&e, terms.timeout))? else { continue };
        if out.rows.len() as u64 >= terms.max_rows || bytes >= terms.max_bytes {
            out.truncated = true;
            break;
        }
        let mut row = Vec::with_capacity(types.len());
        for (i, ty) in types.iter().enumerate() {
            let v = r.try_get(i).map_err(error)?;
            bytes += v.map_or(8, |s| s.len() + 8);
            row.push(value(v, ty));
        }
        out.rows.push(row);
    }
    Ok(out)
}

/// A value PostgreSQL gave as text, as JSON by its type: booleans and numbers as such, times as
/// RFC 3339 UTC text (the SQLite store's), everything else (JSON columns too) as the text it is.
fn value(v: Option<&str>, ty: &Type) -> serde_json::Value {
    let Some(s) = v else { return serde_json::Value::Null };
    match *ty {
        Type::BOOL => (s == "t").into(),
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => {
            s.parse::<i64>().map_or_else(|_| s.into(), Into::into)
        }
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => {
            s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or_else(|| s.into(), Into::into)
        }
        Type::TIMESTAMPTZ => {
            // ISO style in UTC: `2026-03-01 10:00:00.123+00`.
            let rfc = s.replacen(' ', "T", 1).replace("+00", "Z");
            hostwatch_proto::v1::timestamp::parse(&rfc)
                .map_or_else(|_| s.into(), |t| hostwatch_proto::v1::timestamp::format(t).into())
        }
        _ => s.into(),
    }
}

/// Classes of SQLSTATE that say what is wrong with the analyst's statement, not with the
/// database: not supported (0A), more than one row where one was meant (21), bad data (22),
/// not possible in this transaction (25), syntax or access (42), too complex (54).
const ANALYSTS_CLASSES: &[&str] = &["0A", "21", "22", "25", "42", "54"];

/// Why PostgreSQL would not run or finish a query, in the analyst's terms.
fn refusal(e: &tokio_postgres::Error, timeout: Duration) -> StoreError {
    let views = crate::store::QUERY_VIEWS.join(", ");
    let Some(db) = e.as_db_error() else { return StoreError::Database(e.to_string()) };
    let code = db.code();
    if *code == SqlState::QUERY_CANCELED {
        StoreError::Query(format!("the query was stopped after {timeout:?}"))
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION || *code == SqlState::INSUFFICIENT_PRIVILEGE {
        StoreError::Query(format!("refused: {} (a query may only read the views: {views})", db.message()))
    } else if *code == SqlState::UNDEFINED_TABLE {
        StoreError::Query(format!("{} (the views are: {views})", db.message()))
    } else if ANALYSTS_CLASSES.iter().any(|class| code.code().starts_with(class)) {
        StoreError::Query(db.message().to_owned())
    } else {
        StoreError::Database(format!("{} ({})", db.message(), code.code()))
    }
}
