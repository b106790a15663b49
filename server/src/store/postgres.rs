//! The PostgreSQL store, for fleets beyond one collector (issue 17): several collectors share one
//! database, so nothing here may rely on being the only writer. Built in slices; until it holds
//! everything [`super::Store`] asks, the configuration refuses `postgres://` and only the tests
//! reach it.
//!
//! Invariants: every method is one transaction; migrations run under an advisory lock, so
//! collectors starting together apply each migration once; times are written to the
//! millisecond, as the SQLite store and the wire keep them, so both stores answer alike.

mod baselines;
mod credentials;
mod hosts;
mod triage;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls, Row};

use crate::store::{Result, StoreError};

/// Migrations, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("migrations/postgres/0001_init.sql"))];

/// Connections a collector holds at most.
const POOL_SIZE: usize = 16;

/// The advisory lock key migrations run under ("hwmigrat" as an integer).
const MIGRATION_LOCK: i64 = 0x6877_6d69_6772_6174;

/// A pool of connections to one PostgreSQL database; clones share it.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host/db?host=/socket/dir`) and brings its schema up
    /// to date. Only Unix sockets for now: TLS to a database over the network is a later slice,
    /// and a password must not cross a network in clear.
    pub async fn connect(url: &str) -> Result<PgStore> {
        let config: Config = url.parse().map_err(|e| StoreError::Database(format!("database URL: {e}")))?;
        if config.get_hosts().iter().any(|h| !matches!(h, tokio_postgres::config::Host::Unix(_))) {
            return Err(StoreError::Database(
                "database URL: only a Unix socket is supported yet (?host=/path/to/socket/dir)".to_owned(),
            ));
        }
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Database(format!("connection pool: {e}")))?;
        let store = PgStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Every row `sql` selects, each read by `read`, on a connection of the pool.
    async fn all<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        read: impl Fn(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = self.client().await?.query(sql, params).await.map_err(error)?;
        rows.iter().map(read).collect()
    }

    /// The row `sql` selects, if any, read by `read`.
    async fn one<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        read: impl Fn(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let row = self.client().await?.query_opt(sql, params).await.map_err(error)?;
        row.as_ref().map(read).transpose()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => error(e),
            other => StoreError::Busy(format!("no database connection: {other}")),
        })
    }

    /// Applies the migrations this database lacks, each in its own transaction, under an
    /// advisory lock: a collector that starts meanwhile waits, then finds them applied.
    async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(error)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)",
        )
        .await
        .map_err(error)?;
        let current: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
            .await
            .map_err(error)?
            .col(0)?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > known {
            return Err(StoreError::TooNew { found: current, known });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql).await.map_err(error)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[version, &ms(OffsetDateTime::now_utc())],
            )
            .await
            .map_err(error)?;
            tracing::info!(version, "applied database migration");
        }
        tx.commit().await.map_err(error)
    }
}

/// A column read as the type the schema gives it; a column of another type (a schema altered by
/// hand) is an error that says which, where tokio-postgres's `get` would panic.
trait Col {
    fn col<'a, T: tokio_postgres::types::FromSql<'a>>(&'a self, i: usize) -> Result<T>;
}

impl Col for Row {
    fn col<'a, T: tokio_postgres::types::FromSql<'a>>(&'a self, i: usize) -> Result<T> {
        self.try_get(i).map_err(|e| {
            let name = self.columns().get(i).map_or("?", |c| c.name());
            StoreError::Corrupt(format!("column {i} ({name}): {e}"))
        })
    }
}

/// A time as both stores keep it: to the millisecond.
fn ms(t: OffsetDateTime) -> OffsetDateTime {
    hostwatch_proto::v1::timestamp::to_millisecond(t)
}

/// What a PostgreSQL error means to the collector: a full disk and contention are retriable,
/// the rest is an error of the database.
fn error(e: tokio_postgres::Error) -> StoreError {
    let Some(code) = e.code() else {
        return StoreError::Database(e.to_string());
    };
    let detail = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned());
    if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY {
        StoreError::Full(detail)
    } else if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
    ]
    .contains(code)
    {
        StoreError::Busy(detail)
    } else {
        StoreError::Database(format!("{detail} ({})", code.code()))
    }
}
