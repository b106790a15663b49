//! Baselines in the PostgreSQL store, and the revision every collector on the database watches to
//! know when to read them again.

use time::OffsetDateTime;

use super::{Col, PgStore, error, ms};
use crate::store::{BaselineRecord, Result};

impl PgStore {
    /// Stores a baseline's source; the revision moves only when the source changed, so that
    /// re-applying the same file makes no collector re-evaluate its fleet. Two collectors
    /// applying at once are ordered by the revision's row lock.
    pub async fn put_baseline(
        &self,
        name: &str,
        source: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        // The revision's row first: whoever holds it applies in turn, and reads the other's result.
        tx.execute("SELECT value FROM store_meta WHERE key = 'baselines_revision' FOR UPDATE", &[])
            .await
            .map_err(error)?;
        let unchanged = match tx
            .query_opt("SELECT source = $2 FROM baselines WHERE name = $1", &[&name, &source])
            .await
            .map_err(error)?
        {
            Some(r) => r.col::<bool>(0)?,
            None => false,
        };
        if unchanged {
            return tx.commit().await.map_err(error);
        }
        tx.execute(
            "INSERT INTO baselines (name, source, applied_at, applied_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET source = excluded.source, applied_at = excluded.applied_at, \
             applied_by = excluded.applied_by",
            &[&name, &source, &ms(now), &actor],
        )
        .await
        .map_err(error)?;
        tx.execute("UPDATE store_meta SET value = value + 1 WHERE key = 'baselines_revision'", &[])
            .await
            .map_err(error)?;
        tx.commit().await.map_err(error)
    }

    pub async fn baselines(&self) -> Result<Vec<BaselineRecord>> {
        let rows = self
            .client()
            .await?
            .query("SELECT name, source, applied_at, applied_by FROM baselines ORDER BY name", &[])
            .await
            .map_err(error)?;
        rows.iter()
            .map(|r| {
                Ok(BaselineRecord {
                    name: r.col(0)?,
                    source: r.col(1)?,
                    applied_at: r.col(2)?,
                    applied_by: r.col(3)?,
                })
            })
            .collect()
    }

    pub async fn baselines_revision(&self) -> Result<i64> {
        self.client()
            .await?
            .query_one("SELECT value FROM store_meta WHERE key = 'baselines_revision'", &[])
            .await
            .map_err(error)?
            .col(0)
    }
}
