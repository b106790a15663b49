//! Starting and running the collector, in a fixed order: data directory, store (migrated),
//! bootstrap credentials, baselines from `baselines_dir`, listeners (each bound address logged),
//! then serving until the shutdown token is cancelled.
//!
//! [`serve`] takes bound listeners and a shutdown token, so tests run a collector on port 0
//! in-process or as the `hostwatch` binary alike.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use hostwatch_agent::shared::config::Secret;
use hostwatch_agent::shared::private_file::write_private;
use hostwatch_proto::v1::{API_TOKEN_PREFIX, ENROLL_SECRET_PREFIX};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api;
use crate::baseline::{self, BaselineSet};
use crate::config::{Database, ServerConfig};
use crate::dev::DevLearner;
use crate::housekeeping;
use crate::ingest;
use crate::listen::{self, ConnLimits, Serving};
use crate::secrets;
use crate::state::{AppState, Settings};
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sqlite::SqliteStore;
use crate::store::{NewCredential, Store};
use crate::tls::{Tls, TlsFiles};

/// File in the data directory holding the first admin token, mode 0600.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// File in the data directory holding the first enroll secret, mode 0600.
pub const ENROLL_SECRET_FILE: &str = "enroll-secret";

/// Credentials created at this start (on an empty store), with the files they were written to.
#[derive(Debug, Default)]
pub struct Bootstrap {
    pub admin_token: Option<(Secret, PathBuf)>,
    pub enroll_secret: Option<(Secret, PathBuf)>,
}

/// Prepares everything but the listeners.
pub async fn open(
    config: &ServerConfig,
    learner: Option<DevLearner>,
) -> anyhow::Result<(AppState, Bootstrap)> {
    make_private_dir(&config.data_dir)?;
    let store: Arc<dyn Store> = match &config.database {
        Database::Sqlite(path) => Arc::new(
            SqliteStore::open(path).with_context(|| format!("cannot open the store {}", path.display()))?,
        ),
        Database::Postgres { url, query_url, ca_file } => Arc::new(
            PgStore::connect(
                url.expose(),
                &PgOptions {
                    query_url: query_url.as_ref().map(|u| u.expose().to_owned()),
                    ca_file: ca_file.clone(),
                },
            )
            .await
            .with_context(|| format!("cannot open the store {url}"))?,
        ),
    };
    info!(database = %config.database, "store open");
    let boot = bootstrap(store.as_ref(), &config.data_dir).await?;
    let settings = Settings {
        max_report_bytes: config.max_report_bytes,
        max_concurrent_reports: config.max_concurrent_reports,
        offline_after: config.offline_after,
        retire_after: config.retire_after,
        max_new_findings_per_minute: config.max_new_findings_per_minute,
        limits: config.limits.clone(),
        tag_policy: config.tag_policy.clone(),
        aws_identity: config.aws_identity.clone(),
        retention: config.retention,
        query: config.query.clone(),
    };
    let state = AppState::new(store, settings, learner);
    if let Some(dir) = &config.baselines_dir {
        let n = apply_baselines_dir(&state, dir).await?;
        info!(dir = %dir.display(), baselines = n, "baselines applied from directory");
    }
    Ok((state, boot))
}

/// Creates a directory mode 0700, or warns if an existing one is open to others.
pub fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot stat {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "data directory is accessible to other users; 0700 is advised");
    }
    Ok(())
}

/// On an empty store, creates the first admin token and enroll secret and writes them, mode 0600,
/// into the data directory. They are never logged.
async fn bootstrap(store: &dyn Store, data_dir: &Path) -> anyhow::Result<Bootstrap> {
    let now = OffsetDateTime::now_utc();
    let mut boot = Bootstrap::default();
    if store.count_api_tokens().await? == 0 {
        let token = secrets::generate(API_TOKEN_PREFIX).context("cannot generate a token")?;
        let hash = secrets::hash(token.expose());
        let new = NewCredential {
            name: "bootstrap-admin",
            hash: &hash,
            created_by: "bootstrap",
            expires_at: None,
            now,
        };
        store.create_api_token(&new, "admin").await?;
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        write_private(&path, format!("{}\n", token.expose()).as_bytes())?;
        info!(file = %path.display(), "created the first admin token (mode 0600)");
        boot.admin_token = Some((token, path));
    }
    if store.count_enroll_secrets().await? == 0 {
        let (secret, path) = create_enroll_secret(store, data_dir, "default").await?;
        info!(file = %path.display(), "created the first enroll secret (mode 0600)");
        boot.enroll_secret = Some((secret, path));
    }
    Ok(boot)
}

/// Creates an enroll secret and writes it to `DATA_DIR/enroll-secret`.
pub async fn create_enroll_secret(
    store: &dyn Store,
    data_dir: &Path,
    name: &str,
) -> anyhow::Result<(Secret, PathBuf)> {
    let now = OffsetDateTime::now_utc();
    let secret = secrets::generate(ENROLL_SECRET_PREFIX).context("cannot generate an enroll secret")?;
    let hash = secrets::hash(secret.expose());
    let new = NewCredential { name, hash: &hash, created_by: "bootstrap", expires_at: None, now };
    store.create_enroll_secret(&new, &Default::default()).await?;
    let path = data_dir.join(ENROLL_SECRET_FILE);
    write_private(&path, format!("{}\n", secret.expose()).as_bytes())?;
    Ok((secret, path))
}

/// A start-up failure caused by configuration, such as a broken file in `baselines_dir`:
/// `hostwatch serve` exits 78 for it, so that systemd does not restart into the same failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigProblem(pub String);

/// Applies every `*.toml` in `dir` to the store. Any broken file stops the start: a collector that
/// silently skipped a baseline would file findings against rules nobody meant.
pub async fn apply_baselines_dir(state: &AppState, dir: &Path) -> anyhow::Result<usize> {
    let problem = |m: String| anyhow::Error::new(ConfigProblem(m));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| problem(format!("cannot read baselines_dir {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut parsed = Vec::new();
    for path in &files {
        let src = std::fs::read_to_string(path)
            .map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
        let b = baseline::parse(&path.display().to_string(), &src).map_err(|e| problem(e.to_string()))?;
        if let Some((other, _, _)) =
            parsed.iter().find(|(_, o, _): &&(PathBuf, baseline::Baseline, String)| o.name == b.name)
        {
            return Err(problem(format!(
                "{} and {} both define baseline `{}`",
                other.display(),
                path.display(),
                b.name
            )));
        }
        parsed.push((path.clone(), b, src));
    }
    let current = ingest::current_baselines(state).await?;
    let mut set: BaselineSet = current.set.clone();
    for (_, b, _) in &parsed {
        set.insert(b.clone());
    }
    set.check().map_err(|e| problem(format!("baselines in {} do not hold together: {e}", dir.display())))?;
    let now = OffsetDateTime::now_utc();
    for (path, b, src) in &parsed {
        state.store.put_baseline(&b.name, src, &format!("baselines_dir:{}", path.display()), now).await?;
    }
    Ok(parsed.len())
}

/// The collector's listeners: agents, and people if they have their own; with their TLS.
pub struct Listeners {
    pub agents: TcpListener,
    pub api: Option<TcpListener>,
    /// The agents' listener's TLS (with client certificates under mutual TLS).
    pub agents_tls: Option<Tls>,
    /// The API listener's TLS: the same certificate, never client certificates.
    pub api_tls: Option<Tls>,
    pub limits: ConnLimits,
}

/// Loads the TLS files (a problem with them stops the start) and binds the configured addresses.
pub async fn bind(config: &ServerConfig) -> anyhow::Result<Listeners> {
    let (agents_tls, api_tls) = match &config.tls {
        None => (None, None),
        Some(files) => {
            let load = |f: TlsFiles| {
                Tls::load(f).map_err(|e| anyhow::Error::new(ConfigProblem(format!("[tls] {e}"))))
            };
            let agents = load(files.clone())?;
            let api = match config.api_listen {
                Some(_) => Some(load(TlsFiles { client_ca: None, ..files.clone() })?),
                None => None,
            };
            (Some(agents), api)
        }
    };
    let agents = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let api = match config.api_listen {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?)
        }
        None => None,
    };
    Ok(Listeners { agents, api, agents_tls, api_tls, limits: config.conn_limits.clone() })
}

/// Serves until `shutdown` is cancelled, then drains the requests in flight (for a bounded time).
pub async fn serve(state: AppState, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    let agents_addr = listeners.agents.local_addr()?;
    let chores = tokio::spawn(housekeeping::run(state.clone(), shutdown.clone()));
    let slots = Arc::new(Semaphore::new(listeners.limits.max_connections.max(1)));
    let per_address = Arc::new(listen::PerAddress::default());
    let serving = |routes, tls: Option<Tls>| {
        if let Some(t) = &tls {
            tokio::spawn(t.clone().follow(shutdown.clone()));
        }
        Serving {
            routes,
            tls,
            limits: listeners.limits.clone(),
            slots: slots.clone(),
            per_address: per_address.clone(),
            counters: state.conns.clone(),
        }
    };
    let scheme = |tls: &Option<Tls>| match tls {
        None => "http",
        Some(t) if t.mutual() => "https (client certificates required)",
        Some(_) => "https",
    };
    let url = |tls: &Option<Tls>, addr| format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    match listeners.api {
        None => {
            info!(
                "listening on {} (agents and API; {})",
                url(&listeners.agents_tls, agents_addr),
                scheme(&listeners.agents_tls)
            );
            let agents = serving(api::all_routes(state.clone()), listeners.agents_tls);
            listen::run(listeners.agents, agents, shutdown.clone()).await;
        }
        Some(api_listener) => {
            let api_addr = api_listener.local_addr()?;
            info!(
                "listening on {} (agents; {})",
                url(&listeners.agents_tls, agents_addr),
                scheme(&listeners.agents_tls)
            );
            info!("listening on {} (API; {})", url(&listeners.api_tls, api_addr), scheme(&listeners.api_tls));
            let agents = serving(api::agent_routes(state.clone()), listeners.agents_tls);
            let people = serving(api::people_routes(state.clone()), listeners.api_tls);
            tokio::join!(
                listen::run(listeners.agents, agents, shutdown.clone()),
                listen::run(api_listener, people, shutdown.clone())
            );
        }
    }
    shutdown.cancel();
    if let Err(e) = chores.await {
        warn!(error = %e, "housekeeping ended abnormally");
    }
    info!("collector stopped");
    Ok(())
}

/// `hostwatch serve --config FILE`: open, bind, serve.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (state, _boot) = open(&config, None).await?;
    let listeners = bind(&config).await?;
    let sinks = tokio::spawn(crate::alerts::run(state.clone(), config.alerts.clone(), shutdown.clone()));
    let served = serve(state, listeners, shutdown).await;
    if let Err(e) = sinks.await {
        warn!(error = %e, "alert sinks ended abnormally");
    }
    served
}
