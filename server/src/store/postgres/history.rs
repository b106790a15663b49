//! The history's partitions in the PostgreSQL store: one per UTC day of `at` for each history
//! table, made a few days ahead, dropped whole when retention passes them. Rows of a day without
//! a partition (an agent's clock far off) are in the default partition, which pruning trims row
//! by row like the partition that straddles the retention's edge.
//!
//! Invariants: partitions are made and dropped under an advisory lock, so collectors sharing the
//! database never race to make the same one; a partition is made empty and attached, taking from
//! the default partition any rows of its day that arrived first (PostgreSQL would refuse to
//! attach it otherwise); waits for locks are bounded, and a chore that cannot take its locks is
//! busy, tried again at the next round.

use deadpool_postgres::GenericClient;
use time::{Date, Duration, OffsetDateTime, Time};

use super::{Col, PgStore, error, ms};
use crate::store::Result;

/// The history tables, partitioned by day.
const TABLES: &[&str] = &["process_events", "socket_events", "file_changes"];

/// Days after today that have their partitions made in advance.
const DAYS_AHEAD: i64 = 2;

/// The advisory lock partition chores run under ("hwpartit" as an integer).
const PARTITION_LOCK: i64 = 0x6877_7061_7274_6974;

/// A day's partition of `table`.
fn partition(table: &str, day: Date) -> String {
    format!("{table}_p{:04}{:02}{:02}", day.year(), u8::from(day.month()), day.day())
}

/// The day a partition's name says, if it is one of ours.
fn day_of(table: &str, name: &str) -> Option<Date> {
    let digits = name.strip_prefix(table)?.strip_prefix("_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d) = (digits[..4].parse().ok()?, digits[4..6].parse::<u8>().ok()?, digits[6..].parse().ok()?);
    Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()
}

fn midnight(day: Date) -> OffsetDateTime {
    day.with_time(Time::MIDNIGHT).assume_utc()
}

/// Partitions of `table` that exist, by day.
async fn partitions(tx: &impl GenericClient, table: &str) -> Result<Vec<(Date, String)>> {
    let rows = tx
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = $1::text::regclass",
            &[&table],
        )
        .await
        .map_err(error)?;
    let mut out = Vec::new();
    for r in &rows {
        let name: String = r.col(0)?;
        if let Some(day) = day_of(table, &name) {
            out.push((day, name));
        }
    }
    out.sort();
    Ok(out)
}

/// Makes the partitions of yesterday, today and [`DAYS_AHEAD`] days that are missing, in one
/// transaction under the partition lock.
pub(super) async fn make_partitions(tx: &impl GenericClient, now: OffsetDateTime) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK]).await.map_err(error)?;
    tx.batch_execute("SET LOCAL lock_timeout = '5s'").await.map_err(error)?;
    let today = now.date();
    for table in TABLES {
        let have: Vec<Date> = partitions(tx, table).await?.into_iter().map(|(d, _)| d).collect();
        for offset in -1..=DAYS_AHEAD {
            let day = today + Duration::days(offset);
            if have.contains(&day) {
                continue;
            }
            let name = partition(table, day);
            let (from, to) = (ms(midnight(day)), ms(midnight(day + Duration::days(1))));
            tx.batch_execute(&format!(
                "CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            ))
            .await
            .map_err(error)?;
            tx.execute(
                &format!(
                    "WITH moved AS (DELETE FROM {table}_default WHERE at >= $1 AND at < $2 RETURNING *) \
                     INSERT INTO {name} SELECT * FROM moved"
                ),
                &[&from, &to],
            )
            .await
            .map_err(error)?;
            // Bounds as literals: ATTACH takes no parameters. Both are times this code made.
            let (from, to) =
                (hostwatch_proto::v1::timestamp::format(from), hostwatch_proto::v1::timestamp::format(to));
            tx.batch_execute(&format!(
                "ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{from}') TO ('{to}')"
            ))
            .await
            .map_err(error)?;
            tracing::info!(partition = %name, "made a history partition");
        }
    }
    Ok(())
}

impl PgStore {
    /// Deletes history from before `before`: whole days by dropping their partitions, then at
    /// most `max` rows of each table from what is left (the day that straddles `before`, the
    /// default partition), oldest first. How many rows went; 0 when nothing is left to prune.
    /// Makes the coming days' partitions on the way, at most once a day a collector.
    pub async fn prune_history(&self, before: OffsetDateTime, max: u32) -> Result<u64> {
        let mut client = self.client().await?;
        let now = OffsetDateTime::now_utc();
        let today = i64::from(now.date().to_julian_day());
        if self.partitioned_through.load(std::sync::atomic::Ordering::Relaxed) < today {
            let tx = self.begin(&mut client).await?;
            make_partitions(&*tx, now).await?;
            tx.commit().await.map_err(error)?;
            self.partitioned_through.store(today, std::sync::atomic::Ordering::Relaxed);
        }
        let tx = self.begin(&mut client).await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK]).await.map_err(error)?;
        tx.batch_execute("SET LOCAL lock_timeout = '5s'").await.map_err(error)?;
        let before = ms(before);
        let mut gone = 0u64;
        for table in TABLES {
            for (day, name) in partitions(&*tx, table).await? {
                if midnight(day + Duration::days(1)) > before {
                    continue;
                }
                let rows: i64 = tx
                    .query_one(&format!("SELECT count(*) FROM {name}"), &[])
                    .await
                    .map_err(error)?
                    .col(0)?;
                tx.batch_execute(&format!("DROP TABLE {name}")).await.map_err(error)?;
                tracing::info!(partition = %name, rows, "dropped a history partition past the retention");
                gone += u64::try_from(rows).unwrap_or_default();
            }
            let deleted = tx
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE at < $1 ORDER BY at LIMIT $2) \
                         AND at < $1"
                    ),
                    &[&before, &i64::from(max)],
                )
                .await
                .map_err(error)?;
            gone += deleted;
        }
        tx.commit().await.map_err(error)?;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_named_by_its_day_and_only_ours_are_read_back() {
        let day = Date::from_calendar_date(2026, time::Month::March, 7).unwrap();
        assert_eq!(partition("socket_events", day), "socket_events_p20260307");
        assert_eq!(day_of("socket_events", "socket_events_p20260307"), Some(day));
        assert_eq!(day_of("socket_events", "socket_events_default"), None);
        assert_eq!(day_of("socket_events", "process_events_p20260307"), None);
        assert_eq!(day_of("socket_events", "socket_events_p20261399"), None);
    }
}
