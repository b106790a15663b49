//! `hostwatch serve --dev`: the one-command local mode. An embedded store under `./hostwatch-data`,
//! the example baselines, an in-process agent watching this machine, and a baseline learned from
//! its first snapshot when none selects it, so that drift shows from the first minute.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hostwatch_agent::AgentConfig;
use hostwatch_agent::collect::{self, HostRoot};
use hostwatch_agent::identity::StateDir;
use hostwatch_agent::shared::config::Secret;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::baseline::learn;
use crate::config::ServerConfig;
use crate::model::{Host, HostState};
use crate::serve::{self, ENROLL_SECRET_FILE};
use crate::state::AppState;
use crate::store::StoreError;

/// The example baselines, written into a new data directory's `baselines/`.
const EXAMPLES: &[(&str, &str)] = &[
    ("linux-base.toml", include_str!("../../packaging/baselines/linux-base.toml")),
    ("web.toml", include_str!("../../packaging/baselines/web.toml")),
];

/// The tag the in-process agent carries, and the learned baseline selects.
const DEV_TAG: (&str, &str) = ("role", "dev");

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub interval: Duration,
}

/// Learns a baseline for this machine the first time it reports without one.
#[derive(Debug, Clone)]
pub struct DevLearner {
    machine_id: String,
    dir: PathBuf,
}

impl DevLearner {
    pub fn applies_to(&self, host: &Host) -> bool {
        host.facts.machine_id == self.machine_id
            && host.facts.tags.get(DEV_TAG.0).map(String::as_str) == Some(DEV_TAG.1)
    }

    /// Writes `DIR/dev-HOSTNAME.toml` from the host's state and applies it.
    pub async fn learn(
        &self,
        state: &AppState,
        host: &Host,
        host_state: &HostState,
    ) -> Result<(), StoreError> {
        let slug: String = host
            .facts
            .hostname
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
            .take(50)
            .collect();
        let name = format!("dev-{slug}");
        let selector = BTreeMap::from([(DEV_TAG.0.to_owned(), DEV_TAG.1.to_owned())]);
        let now = OffsetDateTime::now_utc();
        let seen = [learn::Seen { hostname: host.facts.hostname.clone(), state: host_state.clone() }];
        let text = learn::learn(&name, &selector, &seen, "as it ran at its first report", now);
        let path = self.dir.join(format!("{name}.toml"));
        if let Err(e) = std::fs::write(&path, &text) {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the learned baseline; it is in the store all the same");
        }
        state.store.put_baseline(&name, &text, "serve --dev (learned)", now).await?;
        tracing::info!(baseline = %name, file = %path.display(), "no baseline selected this machine: learned one from its first snapshot");
        Ok(())
    }
}

/// Runs the dev collector and its agent until `shutdown`.
pub async fn run(opts: DevOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = &opts.data_dir;
    serve::make_private_dir(data_dir)?;
    let baselines_dir = data_dir.join("baselines");
    if !baselines_dir.exists() {
        std::fs::create_dir_all(&baselines_dir)
            .with_context(|| format!("cannot create {}", baselines_dir.display()))?;
        for (name, text) in EXAMPLES {
            let p = baselines_dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        }
    }
    let agent_state = StateDir::open(&data_dir.join("agent"))?;
    let machine_id = match collect::host::read(&HostRoot::default()).machine_id {
        Some(id) => id,
        None => agent_state.agent_id()?,
    };
    let config = ServerConfig::dev(data_dir, opts.listen);
    let learner = DevLearner { machine_id, dir: baselines_dir };
    let (state, boot) = serve::open(&config, Some(learner)).await?;
    let listeners = serve::bind(&config).await?;
    let addr = listeners.agents.local_addr()?;

    let secret_path = data_dir.join(ENROLL_SECRET_FILE);
    let secret = match std::fs::read_to_string(&secret_path) {
        Ok(s) => Secret::new(s.trim()),
        Err(_) => serve::create_enroll_secret(state.store.as_ref(), data_dir, "dev-agent").await?.0,
    };
    banner(addr, data_dir, &boot);

    // The agent's defaults, then what dev mode sets; no file, and of the environment only where
    // the cloud's metadata is (or that there is none to ask).
    let cloud_vars = hostwatch_agent::shared::config::env::process_env()
        .into_iter()
        .filter(|(k, _)| k == "HOSTWATCH_CLOUD_PROVIDER" || k == "HOSTWATCH_CLOUD_ENDPOINT");
    let mut agent_config = AgentConfig::load(None, cloud_vars).context("agent configuration")?.config;
    agent_config.server = Some(format!("http://{addr}").parse().context("collector URL")?);
    agent_config.enroll_secret = Some(secret);
    agent_config.state_dir = agent_state.path().to_owned();
    agent_config.interval = opts.interval;
    agent_config.snapshot_every = agent_config.snapshot_every.max(opts.interval);
    agent_config.tags = BTreeMap::from([(DEV_TAG.0.to_owned(), DEV_TAG.1.to_owned())]);
    // The collector is no program on this machine for itself to explain (built under /tmp it
    // would be exe-in-temp).
    agent_config.hide_own_process = true;
    let server_stop = CancellationToken::new();
    let mut server = tokio::spawn(serve::serve(state, listeners, server_stop.clone()));
    let agent_stop = shutdown.child_token();
    let mut agent = tokio::spawn(hostwatch_agent::run(agent_config, agent_stop.clone()));
    tokio::select! {
        // Normal stop: the agent says goodbye first, then the collector stops.
        agent_result = &mut agent => {
            server_stop.cancel();
            let server_result = server.await.context("collector task failed")?;
            agent_result.context("in-process agent task failed")?.context("in-process agent failed")?;
            server_result
        }
        // The collector failed: stop the agent and say why.
        server_result = &mut server => {
            agent_stop.cancel();
            let _ = agent.await;
            server_result.context("collector task failed")?.context("collector failed")
        }
    }
}

fn banner(addr: SocketAddr, data_dir: &Path, boot: &serve::Bootstrap) {
    let dir = data_dir.display();
    println!("hostwatch dev collector on http://{addr}, watching this machine");
    println!("  data directory: {dir}");
    match &boot.admin_token {
        Some((t, p)) => println!("  admin token:    {}   (shown once; kept in {})", t.expose(), p.display()),
        None => println!("  admin token:    in {dir}/admin-token"),
    }
    match &boot.enroll_secret {
        Some((s, p)) => println!("  enroll secret:  {}   (shown once; kept in {})", s.expose(), p.display()),
        None => println!("  enroll secret:  in {dir}/enroll-secret"),
    }
    println!(
        "  try:            export HOSTWATCH_SERVER=http://{addr} HOSTWATCH_TOKEN_FILE={dir}/admin-token"
    );
    println!("                  cargo run -q --bin hostwatch -- findings");
}

/// The agent loads its eBPF program by running its own binary again as a helper
/// (`hostwatch_agent::collect::sockets::loader`); in dev mode that binary is this one, so `main`
/// answers that call before anything else.
pub fn agent_helper() -> Option<std::process::ExitCode> {
    collect::sockets::loader::helper_main()
}
