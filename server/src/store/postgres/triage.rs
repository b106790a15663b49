//! Silences and the alert outbox's cursors in the PostgreSQL store. With several collectors on
//! one database, a sink's cursor is leased: one collector at a time delivers a sink's events,
//! and moves its cursor only while it holds the lease.

use time::OffsetDateTime;
use tokio_postgres::types::Json;

use super::{Col, PgStore, error, ms};
use crate::model::{Silence, SilenceScope};
use crate::store::Result;

impl PgStore {
    pub async fn create_silence(&self, s: &Silence) -> Result<i64> {
        let (host, selector) = match &s.scope {
            SilenceScope::Host(h) => (Some(*h), None),
            SilenceScope::Selector(sel) => (None, Some(Json(sel))),
        };
        self.client()
            .await?
            .query_one(
                "INSERT INTO silences (host_id, selector, starts_at, ends_at, reason, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&host, &selector, &ms(s.starts_at), &ms(s.ends_at), &s.reason, &s.created_by],
            )
            .await
            .map_err(error)?
            .col(0)
    }

    /// Silences ending after `after` (all, if `None`), newest first.
    pub async fn silences(&self, after: Option<OffsetDateTime>) -> Result<Vec<Silence>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, host_id, selector, starts_at, ends_at, reason, created_by FROM silences \
                 WHERE $1::timestamptz IS NULL OR ends_at > $1 ORDER BY id DESC",
                &[&after.map(ms)],
            )
            .await
            .map_err(error)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let scope = match (r.col::<Option<i64>>(1)?, r.col::<Option<serde_json::Value>>(2)?) {
                (Some(h), _) => SilenceScope::Host(h),
                (None, sel) => SilenceScope::Selector(
                    serde_json::from_value(sel.unwrap_or_else(|| serde_json::json!({})))
                        .map_err(|e| crate::store::StoreError::Corrupt(format!("silence selector: {e}")))?,
                ),
            };
            out.push(Silence {
                id: r.col(0)?,
                scope,
                starts_at: r.col(3)?,
                ends_at: r.col(4)?,
                reason: r.col(5)?,
                created_by: r.col(6)?,
            });
        }
        Ok(out)
    }

    /// Takes (or renews) `holder`'s lease on `sink`'s cursor until `until`, a new sink starting
    /// at the end of the outbox; the cursor, or `None` while another collector holds the lease.
    /// The update takes the cursor's row lock and re-reads its lease under it, so of collectors
    /// asking at once one gets it.
    pub async fn lease_alert_cursor(
        &self,
        sink: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Option<i64>> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        tx.execute(
            "INSERT INTO alert_cursors (sink, last_id) \
             VALUES ($1, (SELECT COALESCE(MAX(id), 0) FROM alert_events)) ON CONFLICT (sink) DO NOTHING",
            &[&sink],
        )
        .await
        .map_err(error)?;
        let taken = tx
            .query_opt(
                "UPDATE alert_cursors SET leased_by = $2, lease_until = $3 WHERE sink = $1 \
                 AND (leased_by IS NULL OR leased_by = $2 OR lease_until IS NULL OR lease_until <= $4) \
                 RETURNING last_id",
                &[&sink, &holder, &ms(until), &ms(now)],
            )
            .await
            .map_err(error)?;
        tx.commit().await.map_err(error)?;
        taken.map(|r| r.col(0)).transpose()
    }

    /// Moves `sink`'s cursor to `last_id` if `holder` still holds its lease; whether it did.
    pub async fn advance_alert_cursor(&self, sink: &str, holder: &str, last_id: i64) -> Result<bool> {
        Ok(self
            .client()
            .await?
            .execute(
                "UPDATE alert_cursors SET last_id = $3 WHERE sink = $1 AND leased_by = $2 AND last_id < $3",
                &[&sink, &holder, &last_id],
            )
            .await
            .map_err(error)?
            > 0)
    }
}
