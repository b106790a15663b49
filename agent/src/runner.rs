//! The agent's life: enroll, report a full snapshot every interval until told to stop, then say
//! goodbye.
//!
//! Architecture invariant: the runtime thread only waits and talks to the collector; every read of
//! `/proc` happens on a blocking thread, so a slow scan never stalls the shutdown path.

use std::time::Duration;

use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::collect::HostRoot;
use crate::collect::sockets::Reader;
use crate::config::AgentConfig;
use crate::identity::{Identity, StateDir, StateError};
use crate::snapshot::{self, Observation, Observer};
use crate::transport::{CollectorClient, TransportError};

/// Why the agent stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no collector configured: set `server` in the config file or HOSTWATCH_SERVER")]
    NoServer,
    #[error(
        "not enrolled and no enroll secret configured: set `enroll_secret_file` or HOSTWATCH_ENROLL_SECRET_FILE"
    )]
    NoEnrollSecret,
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot set up the collector client: {0}")]
    Client(TransportError),
}

/// How long the goodbye may take: a stopping agent must not hang a shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let server = config.server.clone().ok_or(AgentError::NoServer)?;
    let state = StateDir::open(&config.state_dir)?;
    let client = CollectorClient::new(server.clone()).map_err(AgentError::Client)?;
    let root = HostRoot::new(&config.host_root);
    info!(
        server = %server, interval = %humantime::format_duration(config.interval),
        state_dir = %config.state_dir.display(), host_root = %config.host_root.display(),
        version = env!("CARGO_PKG_VERSION"), "agent starting"
    );
    let mut agent = Agent {
        config,
        client,
        state,
        root,
        observer: None,
        started_at: OffsetDateTime::now_utc(),
        identity: None,
        session: new_session(),
        seq: 0,
    };

    let mut ticker = tokio::time::interval(agent.config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut enroll_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let Some(obs) = agent.observe().await else {
            continue;
        };
        // Requests in flight are abandoned at shutdown: a collector that accepts and never answers
        // must not hold up a stopping agent (the goodbye has its own short timeout).
        if agent.identity.is_none() {
            let enrolled = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = agent.enroll(&obs) => r,
            };
            match enrolled {
                Ok(()) => enroll_backoff.reset(),
                Err(EnrollFailure::Fatal(e)) => return Err(e),
                Err(EnrollFailure::Retry(e)) => {
                    let wait = enroll_backoff.next_delay();
                    warn!(error = %e, retry_in = %humantime::format_duration(wait), "enrollment failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            () = agent.send(obs) => {}
        }
    }
    agent.goodbye().await;
    info!("agent stopped");
    Ok(())
}

enum EnrollFailure {
    Fatal(AgentError),
    Retry(TransportError),
}

struct Agent {
    config: AgentConfig,
    client: CollectorClient,
    state: StateDir,
    root: HostRoot,
    /// Taken while a scan runs on the blocking pool; rebuilt if that scan panicked.
    observer: Option<Observer>,
    started_at: OffsetDateTime,
    identity: Option<Identity>,
    /// Sequence number of the last report the collector accepted under the current identity.
    seq: u64,
    /// This run of the agent; sequence numbers count within it.
    session: u64,
}

/// A random session number, never 0 (the number of reports from agents that predate sessions).
fn new_session() -> u64 {
    getrandom::u64().unwrap_or_else(|_| OffsetDateTime::now_utc().unix_timestamp_nanos() as u64).max(1)
}

impl Agent {
    async fn observe(&mut self) -> Option<Observation> {
        let mut observer =
            self.observer.take().unwrap_or_else(|| Observer::new(self.root.clone(), Reader::SockDiag));
        match tokio::task::spawn_blocking(move || {
            let obs = observer.observe();
            (observer, obs)
        })
        .await
        {
            Ok((observer, obs)) => {
                self.observer = Some(observer);
                Some(obs)
            }
            Err(e) => {
                error!(error = %e, "host scan failed");
                None
            }
        }
    }

    fn machine_id(&self, obs: &Observation) -> Result<String, StateError> {
        match &obs.host.machine_id {
            Some(id) => Ok(id.clone()),
            None => self.state.agent_id(),
        }
    }

    fn status(&self, coverage: proto::Coverage) -> proto::AgentStatus {
        snapshot::agent_status(self.config.interval, self.started_at, coverage)
    }

    async fn enroll(&mut self, obs: &Observation) -> Result<(), EnrollFailure> {
        let machine_id = self.machine_id(obs).map_err(|e| EnrollFailure::Fatal(e.into()))?;
        if let Some(id) =
            self.state.load(&machine_id, self.client.base()).map_err(|e| EnrollFailure::Fatal(e.into()))?
        {
            info!(host_id = id.host_id, "using stored node key");
            self.identity = Some(id);
            return Ok(());
        }
        let secret =
            self.config.enroll_secret.clone().ok_or(EnrollFailure::Fatal(AgentError::NoEnrollSecret))?;
        let req = proto::EnrollRequest {
            enroll_secret: secret.expose().to_owned(),
            host: obs.host_facts(&machine_id, &self.config.tags),
            agent: self.status(obs.coverage.clone()),
        };
        let resp = self.client.enroll(&req).await.map_err(EnrollFailure::Retry)?;
        let id = Identity {
            host_id: resp.host_id,
            node_key: crate::config::Secret::new(resp.node_key),
            machine_id,
        };
        self.state.save(&id, self.client.base()).map_err(|e| EnrollFailure::Fatal(e.into()))?;
        info!(host_id = id.host_id, "enrolled");
        self.identity = Some(id);
        self.seq = 0;
        Ok(())
    }

    fn report(
        &self,
        id: &Identity,
        obs: Option<Observation>,
        goodbye: Option<proto::Goodbye>,
    ) -> proto::Report {
        let now = OffsetDateTime::now_utc();
        let (host, coverage, snapshot) = match obs {
            Some(o) => (o.host_facts(&id.machine_id, &self.config.tags), o.coverage, Some(o.snapshot)),
            None => {
                let o = crate::collect::host::read(&self.root);
                (snapshot::host_facts(&o, &id.machine_id, &self.config.tags), proto::Coverage::full(), None)
            }
        };
        proto::Report {
            session: self.session,
            seq: self.seq + 1,
            sent_at: now,
            host,
            agent: self.status(coverage),
            snapshot,
            delta: None,
            lost: 0,
            goodbye,
        }
    }

    async fn send(&mut self, obs: Observation) {
        let Some(id) = self.identity.clone() else { return };
        let processes = obs.snapshot.processes.len();
        let listeners = obs.snapshot.listeners.len();
        let report = self.report(&id, Some(obs), None);
        match self.client.report(&id.node_key, &report).await {
            Ok(resp) => {
                self.seq = report.seq;
                debug!(seq = resp.seq, processes, listeners, "report accepted");
            }
            Err(TransportError::Unauthorized { message, .. }) => {
                warn!(%message, "collector no longer accepts this node key; enrolling again");
                if let Err(e) = self.state.forget() {
                    error!(error = %e, "cannot remove the stale identity");
                }
                self.identity = None;
            }
            Err(e) => {
                warn!(error = %e, seq = report.seq, "report not delivered; the next interval sends a fresh snapshot")
            }
        }
    }

    async fn goodbye(&mut self) {
        let Some(id) = self.identity.clone() else { return };
        let report = self.report(&id, None, Some(proto::Goodbye::Stopped));
        match tokio::time::timeout(GOODBYE_TIMEOUT, self.client.report(&id.node_key, &report)).await {
            Ok(Ok(_)) => info!("said goodbye to the collector"),
            Ok(Err(e)) => warn!(error = %e, "goodbye not delivered"),
            Err(_) => warn!("goodbye timed out"),
        }
    }
}
