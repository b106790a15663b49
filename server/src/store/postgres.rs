//! The PostgreSQL store, for fleets beyond one collector (`database = "postgres://…"`, issue 17):
//! several collectors share one database, so nothing here may rely on being the only writer
//! (docs/scaling.md says what happens once and how).
//!
//! Invariants: every method is one transaction; what must happen once among collectors takes an
//! advisory lock (migrations, a host's turn, the chores, the outbox's order, the partitions);
//! times are written to the millisecond and u64s by their bits, as the SQLite store keeps them,
//! so both stores answer alike (the stores' end-to-end tests compare every answer); a password
//! never crosses a network in clear.

mod baselines;
mod credentials;
mod findings;
mod history;
mod hosts;
mod listing;
mod query;
mod reports;
mod state;
mod triage;
mod turns;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls, Row};

use std::collections::BTreeMap;

use hostwatch_proto::v1::{AuditEntry, Located};

use crate::model::{
    AlertEvent, Finding, FindingChange, Host, HostState, Observation, PeerItems, ProcessEvent, ReportRecord,
    Silence, SocketEvent,
};
use crate::store::{
    BaselineRecord, Enrollment, FindingFilter, FleetCounts, HistoryFilter, HostFilter, NewCredential, Page,
    QueryRows, QueryTerms, ReportOutcome, ReportTerms, Result, SecretRecord, StateFilter, StoreError,
    StoreTimings, TokenRecord, Verdict,
};

/// Migrations, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres/0001_init.sql")),
    (2, include_str!("migrations/postgres/0002_listener_auth.sql")),
];

/// Connections a collector holds at most.
const POOL_SIZE: usize = 16;

/// Turns a collector holds at once at most: reports processed at once and the chores.
const TURN_POOL_SIZE: usize = 16;

/// Connections a collector holds at most for analysts' queries.
const QUERY_POOL_SIZE: usize = 4;

/// The advisory lock key migrations run under ("hwmigrat" as an integer).
const MIGRATION_LOCK: i64 = 0x6877_6d69_6772_6174;

/// A pool of connections to one PostgreSQL database; clones share it.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Connections that hold turns ([`turns`]).
    turns: Pool,
    /// Connections of the analysts' role, for [`PgStore::query`]; none: read-only SQL refused.
    queries: Option<Pool>,
    /// The last day (Julian) this collector made the history's coming partitions.
    partitioned_through: std::sync::Arc<std::sync::atomic::AtomicI64>,
    timings: StoreTimings,
}

impl PgStore {
    /// Connects to `url`, brings its schema up to date and makes the history's partitions of
    /// the coming days. Over a Unix socket (`postgres://hostwatch@/hostwatch?host=/run/postgresql`)
    /// as it is; over the network (`postgres://hostwatch:…@db.internal/hostwatch`) only over TLS,
    /// the server's certificate and name verified against `options.ca_file` or the system's
    /// roots: a password must not cross a network in clear, nor go to a server that is not the
    /// database.
    pub async fn connect(url: &str, options: &PgOptions) -> Result<PgStore> {
        let config = parse_url(url)?;
        let tls = Tls::for_config(&config, options.ca_file.as_deref())?;
        let queries = match &options.query_url {
            Some(u) => {
                let config = parse_url(u)?;
                let tls = Tls::for_config(&config, options.ca_file.as_deref())?;
                Some(pool(config, QUERY_POOL_SIZE, &tls)?)
            }
            None => None,
        };
        // Waits are bounded by the sessions' lock_timeout, set as each connection is made (not a
        // statement more per use): a store held by someone else (an administrator's LOCK, a
        // long migration) is busy after STORE_WAIT, and the agent sends again, as on SQLite. A
        // turn's connection waits longer, for another collector's report. A connection whose
        // lock could not be released is closed rather than given back (`turns::Held`), so none
        // in the pool holds one.
        let turns = pool(with_lock_timeout(&config, turns::TURN_WAIT), TURN_POOL_SIZE, &tls)?;
        let main = pool(with_lock_timeout(&config, STORE_WAIT), POOL_SIZE, &tls)?;
        let store = PgStore {
            pool: main,
            queries,
            turns,
            partitioned_through: std::sync::Arc::default(),
            timings: StoreTimings::default(),
        };
        store.migrate().await?;
        let mut client = store.client().await?;
        let tx = store.begin(&mut client).await?;
        history::make_partitions(&*tx, OffsetDateTime::now_utc()).await?;
        tx.commit().await.map_err(error)?;
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

    /// A transaction on `client`, its time to commit shown by `/metrics` (`store_transaction`),
    /// as the SQLite store's writer shows its batches'.
    async fn begin<'a>(&'a self, client: &'a mut deadpool_postgres::Object) -> Result<Timed<'a>> {
        let tx = client.transaction().await.map_err(error)?;
        Ok(Timed { tx, began: std::time::Instant::now(), timings: &self.timings })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        let started = std::time::Instant::now();
        let client = self.pool.get().await;
        self.timings.wait.observe(started.elapsed().as_secs_f64());
        client.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => error(e),
            other => StoreError::Busy(format!("no database connection: {other}")),
        })
    }

    /// Applies the migrations this database lacks, each in its own transaction, under an
    /// advisory lock: a collector that starts meanwhile waits, then finds them applied.
    async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        let tx = self.begin(&mut client).await?;
        // Another collector's migration is waited for however long it takes.
        tx.batch_execute("SET LOCAL lock_timeout = 0").await.map_err(error)?;
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

#[async_trait::async_trait]
impl crate::store::Store for PgStore {
    async fn host_turn(&self, host_id: i64) -> Result<Option<crate::store::Turn>> {
        PgStore::host_turn(self, host_id).await
    }

    async fn chores_turn(&self) -> Result<Option<crate::store::Turn>> {
        PgStore::chores_turn(self).await
    }

    async fn count_api_tokens(&self) -> Result<u64> {
        PgStore::count_api_tokens(self).await
    }

    async fn create_api_token(&self, new: &NewCredential<'_>, role: &str) -> Result<TokenRecord> {
        PgStore::create_api_token(self, new, role).await
    }

    async fn find_api_token(&self, hash: &str) -> Result<Option<TokenRecord>> {
        PgStore::find_api_token(self, hash).await
    }

    async fn api_tokens(&self) -> Result<Vec<TokenRecord>> {
        PgStore::api_tokens(self).await
    }

    async fn revoke_api_token(
        &self,
        id: i64,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<TokenRecord>> {
        PgStore::revoke_api_token(self, id, actor, now).await
    }

    async fn count_enroll_secrets(&self) -> Result<u64> {
        PgStore::count_enroll_secrets(self).await
    }

    async fn create_enroll_secret(
        &self,
        new: &NewCredential<'_>,
        tags: &BTreeMap<String, String>,
    ) -> Result<SecretRecord> {
        PgStore::create_enroll_secret(self, new, tags).await
    }

    async fn find_enroll_secret(&self, hash: &str) -> Result<Option<SecretRecord>> {
        PgStore::find_enroll_secret(self, hash).await
    }

    async fn enroll_secrets(&self) -> Result<Vec<SecretRecord>> {
        PgStore::enroll_secrets(self).await
    }

    async fn revoke_enroll_secret(
        &self,
        id: i64,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<SecretRecord>> {
        PgStore::revoke_enroll_secret(self, id, actor, now).await
    }

    async fn find_node_key(&self, hash: &str) -> Result<Option<i64>> {
        PgStore::find_node_key(self, hash).await
    }

    async fn revoke_host_keys(&self, host_id: i64, actor: &str, now: OffsetDateTime) -> Result<Option<u64>> {
        PgStore::revoke_host_keys(self, host_id, actor, now).await
    }

    async fn enroll_host(&self, e: &Enrollment<'_>) -> Result<i64> {
        PgStore::enroll_host(self, e).await
    }

    async fn verified_instance(&self, host_id: i64) -> Result<Option<String>> {
        PgStore::verified_instance(self, host_id).await
    }

    async fn record_report(
        &self,
        host_id: i64,
        report: ReportRecord,
        now: OffsetDateTime,
        terms: ReportTerms,
    ) -> Result<ReportOutcome> {
        PgStore::record_report(self, host_id, report, now, terms).await
    }

    async fn host_state(&self, host_id: i64) -> Result<HostState> {
        PgStore::host_state(self, host_id).await
    }

    async fn apply_verdict(
        &self,
        host_id: i64,
        verdict: Verdict,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<Vec<FindingChange>> {
        PgStore::apply_verdict(self, host_id, verdict, limit, now).await
    }

    async fn retire_host(&self, host_id: i64, now: OffsetDateTime) -> Result<Vec<FindingChange>> {
        PgStore::retire_host(self, host_id, now).await
    }

    async fn hosts_running_hot(&self, from: OffsetDateTime, to: OffsetDateTime) -> Result<Vec<i64>> {
        PgStore::hosts_running_hot(self, from, to).await
    }

    async fn peer_items(&self, workload: &str) -> Result<std::collections::HashMap<i64, PeerItems>> {
        PgStore::peer_items(self, workload).await
    }

    async fn acknowledge(
        &self,
        id: i64,
        actor: &str,
        note: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<Finding>> {
        PgStore::acknowledge(self, id, actor, note, now).await
    }

    async fn create_silence(&self, silence: &Silence) -> Result<i64> {
        PgStore::create_silence(self, silence).await
    }

    async fn silences(&self, after: Option<OffsetDateTime>) -> Result<Vec<Silence>> {
        PgStore::silences(self, after).await
    }

    async fn lease_alert_cursor(
        &self,
        sink: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Option<i64>> {
        PgStore::lease_alert_cursor(self, sink, holder, now, until).await
    }

    async fn advance_alert_cursor(&self, sink: &str, holder: &str, last_id: i64) -> Result<bool> {
        PgStore::advance_alert_cursor(self, sink, holder, last_id).await
    }

    async fn alert_events(&self, after: i64, limit: u32) -> Result<Vec<AlertEvent>> {
        PgStore::alert_events(self, after, limit).await
    }

    async fn prune_alert_events(&self, max: u64, now: OffsetDateTime) -> Result<(u64, u64)> {
        PgStore::prune_alert_events(self, max, now).await
    }

    async fn list_hosts(&self) -> Result<Vec<Host>> {
        PgStore::list_hosts(self).await
    }

    async fn hosts_page(&self, filter: &HostFilter) -> Result<Page<Host>> {
        PgStore::hosts_page(self, filter).await
    }

    async fn fleet_counts(&self) -> Result<FleetCounts> {
        PgStore::fleet_counts(self).await
    }

    fn timings(&self) -> StoreTimings {
        self.timings.clone()
    }

    async fn host(&self, id: i64) -> Result<Option<Host>> {
        PgStore::host(self, id).await
    }

    async fn hosts_with_machine_id(&self, machine_id: &str, instance_id: Option<&str>) -> Result<Vec<i64>> {
        PgStore::hosts_with_machine_id(self, machine_id, instance_id).await
    }

    async fn record_findings(
        &self,
        host_id: i64,
        observed: &[Observation],
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<Vec<FindingChange>> {
        PgStore::record_findings(self, host_id, observed, limit, now).await
    }

    async fn hosts_named(&self, hostname: &str) -> Result<Vec<i64>> {
        PgStore::hosts_named(self, hostname).await
    }

    async fn list_findings(&self, filter: &FindingFilter) -> Result<Page<Finding>> {
        PgStore::list_findings(self, filter).await
    }

    async fn list_processes(&self, filter: &StateFilter) -> Result<Page<Located<crate::model::Process>>> {
        PgStore::list_processes(self, filter).await
    }

    async fn list_listeners(&self, filter: &StateFilter) -> Result<Page<Located<crate::model::Listener>>> {
        PgStore::list_listeners(self, filter).await
    }

    async fn list_connections(
        &self,
        filter: &StateFilter,
    ) -> Result<Page<Located<crate::model::Connection>>> {
        PgStore::list_connections(self, filter).await
    }

    async fn process_events(&self, filter: &HistoryFilter) -> Result<Page<ProcessEvent>> {
        PgStore::process_events(self, filter).await
    }

    async fn socket_events(&self, filter: &HistoryFilter) -> Result<Page<SocketEvent>> {
        PgStore::socket_events(self, filter).await
    }

    async fn file_events(&self, filter: &HistoryFilter) -> Result<Page<hostwatch_proto::v1::FileEvent>> {
        PgStore::file_events(self, filter).await
    }

    async fn current_files(&self, filter: &HistoryFilter) -> Result<Page<hostwatch_proto::v1::FileRecord>> {
        PgStore::current_files(self, filter).await
    }

    async fn put_baseline(&self, name: &str, source: &str, actor: &str, now: OffsetDateTime) -> Result<()> {
        PgStore::put_baseline(self, name, source, actor, now).await
    }

    async fn baselines(&self) -> Result<Vec<BaselineRecord>> {
        PgStore::baselines(self).await
    }

    async fn baselines_revision(&self) -> Result<i64> {
        PgStore::baselines_revision(self).await
    }

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<()> {
        PgStore::audit(self, actor, action, target, detail, now).await
    }

    async fn prune_history(&self, before: OffsetDateTime, max: u32) -> Result<u64> {
        PgStore::prune_history(self, before, max).await
    }

    async fn query(&self, sql: &str, terms: QueryTerms) -> Result<QueryRows> {
        PgStore::query(self, sql, terms).await
    }

    async fn audit_entries(&self, since: Option<OffsetDateTime>, limit: u32) -> Result<Vec<AuditEntry>> {
        PgStore::audit_entries(self, since, limit).await
    }
}

/// How to reach a PostgreSQL store besides its URL.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// The analysts' role ([`PgStore::query`]); none: read-only SQL refused.
    pub query_url: Option<String>,
    /// The CA certificates (PEM) a database reached over the network must be signed by; none:
    /// the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// A transaction that observes its time from begin to commit; one dropped uncommitted rolls
/// back, as any does, and is not counted.
struct Timed<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    began: std::time::Instant,
    timings: &'a StoreTimings,
}

impl<'a> std::ops::Deref for Timed<'a> {
    type Target = deadpool_postgres::Transaction<'a>;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl Timed<'_> {
    async fn commit(self) -> std::result::Result<(), tokio_postgres::Error> {
        let committed = self.tx.commit().await;
        self.timings.transaction.observe(self.began.elapsed().as_secs_f64());
        committed
    }
}

/// How connections to a URL's hosts are made: in clear on a Unix socket, over verified TLS on
/// the network.
enum Tls {
    Socket,
    Network(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Tls {
    fn for_config(config: &Config, ca_file: Option<&std::path::Path>) -> Result<Tls> {
        use tokio_postgres::config::{Host, SslMode};
        let bad = |why: String| StoreError::Database(format!("database URL: {why}"));
        let hosts = config.get_hosts();
        let network = hosts.iter().filter(|h| matches!(h, Host::Tcp(_))).count();
        if network == 0 {
            return Ok(Tls::Socket);
        }
        if network != hosts.len() {
            return Err(bad("give Unix sockets or network hosts, not both".to_owned()));
        }
        if config.get_ssl_mode() == SslMode::Disable {
            return Err(bad(
                "sslmode=disable: a database on the network is reached over TLS only (or give its Unix socket)".to_owned(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for cert in crate::tls::read_certs(path)
                    .map_err(|e| StoreError::Database(format!("database CA: {e}")))?
                {
                    roots
                        .add(cert)
                        .map_err(|e| StoreError::Database(format!("database CA {}: {e}", path.display())))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // One the system holds that rustls cannot use is left out, as browsers do.
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(StoreError::Database(
                "no CA to verify the database's certificate: set database_ca, or install the system's CA certificates"
                    .to_owned(),
            ));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Database(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls::Network(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

/// How long a store call waits for a lock someone else holds before the store is busy: the
/// SQLite store's busy wait.
const STORE_WAIT: &str = "5s";

/// `config` with sessions whose waits for a lock end after `wait` (with the options the URL gave).
fn with_lock_timeout(config: &Config, wait: &str) -> Config {
    let mut config = config.clone();
    let options = match config.get_options() {
        Some(given) => format!("{given} -c lock_timeout={wait}"),
        None => format!("-c lock_timeout={wait}"),
    };
    config.options(&options);
    config
}

/// A database URL (`postgres://…`) as tokio-postgres reads it; what is wrong with it, said.
fn parse_url(url: &str) -> Result<Config> {
    url.parse().map_err(|e| StoreError::Database(format!("database URL: {e}")))
}

/// A pool of at most `size` connections to the database `config` names, made as `tls` says (on
/// the network, TLS is required of the server: `sslmode` is made `require` whatever the URL
/// said). A connection is given back as it is (`Fast`): every session setting a store makes is
/// `SET LOCAL`, gone with its transaction.
fn pool(mut config: Config, size: usize, tls: &Tls) -> Result<Pool> {
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = match tls {
        Tls::Socket => Manager::from_config(config, NoTls, manager_config),
        Tls::Network(tls) => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            Manager::from_config(config, tls.clone(), manager_config)
        }
    };
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| StoreError::Database(format!("connection pool: {e}")))
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

/// What a PostgreSQL error means to the collector: a full disk, contention and a database that
/// cannot be reached (down, restarting, its connection lost) are retriable, the rest is an error
/// of the database.
fn error(e: tokio_postgres::Error) -> StoreError {
    use std::io::ErrorKind as K;
    let source = std::error::Error::source(&e);
    let io = source.and_then(|s| s.downcast_ref::<std::io::Error>()).map(std::io::Error::kind);
    // Down, restarting, or its connection lost: not a TLS or protocol failure, which is the
    // setup's and said as an error.
    let unreachable = e.is_closed()
        || matches!(
            io,
            Some(
                K::ConnectionRefused
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::NotFound
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::TimedOut
                    | K::HostUnreachable
                    | K::NetworkUnreachable
            )
        );
    if e.code().is_none() && unreachable {
        let why = source.map(|s| format!(": {s}")).unwrap_or_default();
        return StoreError::Busy(format!("the database cannot be reached: {e}{why}"));
    }
    let Some(code) = e.code() else {
        // A value the driver could not convert says which in its source.
        let source = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
        return StoreError::Database(format!("{e}{source}"));
    };
    let detail = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned());
    if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY {
        StoreError::Full(detail)
    } else if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::TOO_MANY_CONNECTIONS,
    ]
    .contains(code)
    {
        StoreError::Busy(detail)
    } else {
        StoreError::Database(format!("{detail} ({})", code.code()))
    }
}
