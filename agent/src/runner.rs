//! The agent's life: enroll, then watch the host and report what changes until told to stop, then
//! say goodbye.
//!
//! Watching: exec and exit events as they happen (or, where the kernel refuses the connector, a
//! listing of `/proc` every second); listeners every second; connections every second after an
//! exec and every interval; everything, re-read, every interval. Reporting: what changed, batched
//! over at most a second, as a delta; a snapshot at the start of a session, every
//! `snapshot_every` and whenever the collector asks; a heartbeat when an interval passes without
//! a report. Intervals and `snapshot_every` are jittered by ±10% ([`crate::backoff::jittered`]). Every report goes through the spool ([`crate::spool`]), which a separate task drains
//! to the collector with backoff, so a slow or absent collector never stalls the watching.
//!
//! Architecture invariant: the runtime thread only waits, keeps accounts and talks to the
//! collector; every read of `/proc` happens on a blocking thread or the exec watcher's own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::{self, Backoff, Retry};
use crate::cloud::{self, Detection};
use crate::collect::HostRoot;
use crate::collect::exec::{self, ExecWatcher};
use crate::collect::sockets::ebpf::{self, SocketEvent, SocketEvents};
use crate::collect::sockets::{Reader, Want};
use crate::config::AgentConfig;
use crate::identity::{Identity, StateDir};
use crate::probe::{self, Prober};
use crate::shared::config::Secret;
use crate::shared::private_file::StateError;
use crate::snapshot::{self, Observer};
use crate::spool::Spool;
use crate::tracker::Tracker;
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

/// How long the last reports (pending changes, goodbye) may take: a stopping agent must not hang
/// a shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);
/// Exec events waiting for the runner; a full queue makes the kernel drop events (counted).
const EVENT_QUEUE: usize = 65_536;
/// How often a socket reopened with a pending key may send a report early.
const REOPEN_REPORT_EVERY: Duration = Duration::from_millis(100);
/// The quick look and the batching of changes.
const TICK: Duration = Duration::from_secs(1);
/// Batches of file changes waiting for the runner; when full, the file monitor waits.
const FILE_BATCHES: usize = 16;

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let server = config.server.clone().ok_or(AgentError::NoServer)?;
    let state = StateDir::open(&config.state_dir)?;
    let client = CollectorClient::new(server.clone(), &config.tls).map_err(AgentError::Client)?;
    let root = HostRoot::new(&config.host_root);
    let spool = Spool::open(&state.spool_dir(), config.spool_max_bytes)?;
    info!(
        server = %server, interval = %humantime::format_duration(config.interval),
        state_dir = %config.state_dir.display(), host_root = %config.host_root.display(),
        spooled = spool.len(), version = env!("CARGO_PKG_VERSION"), "agent starting"
    );
    let (exec_tx, exec_rx) = mpsc::channel(EVENT_QUEUE);
    let (watcher, exec_why) =
        match ExecWatcher::start(root.clone(), config.redactor.clone(), config.lineage, exec_tx) {
            Ok(w) => (Some(w), None),
            Err(why) => {
                warn!(reason = %why, "exec events unavailable; listing /proc every second instead");
                (None, Some(why))
            }
        };
    let (socket_events, socket_events_why) = if config.socket_events {
        match SocketEvents::start(config.socket_event_ring_bytes) {
            Ok(s) => {
                info!(udp = s.udp_hook.describe(), "socket events from eBPF");
                (Some(s), None)
            }
            Err(why) => {
                warn!(reason = %why, "socket events unavailable; connections and listeners shorter than a scan are not seen");
                (None, Some(why))
            }
        }
    } else {
        (None, Some("turned off (socket_events = false)".to_owned()))
    };
    let shared = Arc::new(Shared { spool: Mutex::new(spool), wake: Notify::new() });
    let (key_tx, key_rx) = watch::channel(None);
    let (to_runner, from_sender) = mpsc::channel(16);
    let sender_stop = CancellationToken::new();
    let sender = tokio::spawn(send_loop(
        client.clone(),
        shared.clone(),
        key_rx,
        to_runner,
        config.retry_max,
        sender_stop.clone(),
    ));

    // Cloud facts before enrolling, since cloud tags select the workload from the first report;
    // but never long: off the cloud this is immediate, and a slow service is waited for later.
    let cloud_stop = CancellationToken::new();
    let mut cloud = cloud::watch(config.cloud.clone(), root.sys.clone(), cloud_stop.clone());
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::timeout(cloud::START_WAIT, cloud.wait_for(Option::is_some)) => {}
    }
    cloud.mark_unchanged();
    let observer = Observer::new(root.clone(), Reader::SockDiag, config.redactor.clone())
        .with_stdio_rescan(config.stdio_rescan)
        .with_lineage(config.lineage)
        .hiding_own_process(config.hide_own_process)
        .with_packages(config.files.databases());
    let (config_interval, config_snapshot_every) = (config.interval, config.snapshot_every);
    let prober =
        config.probes.enabled.then(|| Prober::new(config.probes.clone(), &config.state_dir, &root.proc));
    let mut agent = Agent {
        tracker: Tracker::new(),
        coverage: proto::Coverage::full(),
        observer: Some(observer),
        config,
        client,
        state,
        root,
        shared,
        key_tx,
        watcher,
        exec_why,
        socket_events,
        reopen_reported_at: None,
        socket_events_why,
        started_at: OffsetDateTime::now_utc(),
        identity: None,
        session: new_session(),
        seq: 0,
        cloud,
        heartbeat_at: Instant::now() + backoff::jittered(config_interval),
        snapshot_at: Instant::now() + backoff::jittered(config_snapshot_every),
        files: None,
        files_why: None,
        prober,
        probe_done: mpsc::channel(1),
    };
    let result = agent.watch(shutdown, exec_rx, from_sender).await;
    if let Some(files) = &agent.files {
        files.stop();
    }
    if agent.identity.is_some() {
        agent.goodbye().await;
    }
    if let Some(files) = agent.files.clone() {
        // A scan in progress stops between two files; the last save is quick.
        let _ = tokio::task::spawn_blocking(move || files.wait_stopped(Duration::from_secs(2))).await;
    }
    sender_stop.cancel();
    cloud_stop.cancel();
    let _ = sender.await;
    info!("agent stopped");
    result
}

/// A probe that ended, and what it found.
type ProbeDone = (probe::Job, probe::Outcome);

/// The spool and the bell that wakes its sender.
struct Shared {
    spool: Mutex<Spool>,
    wake: Notify,
}

impl Shared {
    fn spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the sender tells the runner.
#[derive(Debug)]
enum FromSender {
    /// The collector wants a snapshot.
    Resync,
    /// The collector no longer knows the node key.
    Unauthorized,
}

/// A random session number, never 0 (the number of reports from agents that predate sessions).
fn new_session() -> u64 {
    getrandom::u64().unwrap_or_else(|_| OffsetDateTime::now_utc().unix_timestamp_nanos() as u64).max(1)
}

struct Agent {
    config: AgentConfig,
    client: CollectorClient,
    state: StateDir,
    root: HostRoot,
    /// Taken while a scan runs on the blocking pool; rebuilt if that scan panicked.
    observer: Option<Observer>,
    tracker: Tracker,
    coverage: proto::Coverage,
    shared: Arc<Shared>,
    key_tx: watch::Sender<Option<Secret>>,
    watcher: Option<ExecWatcher>,
    exec_why: Option<String>,
    /// The eBPF connection source, where the kernel allows it; why not, where it does not.
    socket_events: Option<SocketEvents>,
    /// When a reopened socket last sent a report early ([`Agent::report_before_reopening`]).
    reopen_reported_at: Option<Instant>,
    socket_events_why: Option<String>,
    started_at: OffsetDateTime,
    identity: Option<Identity>,
    /// This run of the agent (a new one after enrolling anew); sequence numbers count within it.
    session: u64,
    /// The last sequence number given to a report.
    seq: u64,
    /// When a heartbeat is due if nothing else was sent: an interval after the last report,
    /// jittered so that a fleet's heartbeats spread out.
    heartbeat_at: Instant,
    /// When the periodic full snapshot is due, jittered likewise.
    snapshot_at: Instant,
    /// The latest word from the cloud's metadata service (`None` until the first).
    cloud: watch::Receiver<Option<Detection>>,
    /// File integrity, started once the agent knows its machine id (after enrolling).
    files: Option<crate::files::Monitor>,
    /// Why files are not watched, where they should be.
    files_why: Option<String>,
    /// Probes of this host's listeners for services that answer anyone (`[probes]`); absent
    /// where probing is off.
    prober: Option<Prober>,
    /// A probe's end, from its task to the loop.
    probe_done: (mpsc::Sender<ProbeDone>, mpsc::Receiver<ProbeDone>),
}

enum Scan {
    /// Everything; `credential_events`: uid and gid changes come as events, so the rescan need
    /// not check each process's owner.
    Full { credential_events: bool },
    /// Sockets as asked; `/proc` listed when `list` (no process events to go by); new
    /// processes not watched for connections when `connection_events` (socket events bring them).
    Quick { want: Want, list: bool, connection_events: bool },
}

impl Agent {
    /// Enrolls, then watches and reports until `shutdown`.
    async fn watch(
        &mut self,
        shutdown: CancellationToken,
        mut exec_rx: mpsc::Receiver<exec::Event>,
        mut from_sender: mpsc::Receiver<FromSender>,
    ) -> Result<(), AgentError> {
        if !self.enroll(&shutdown).await? {
            return Ok(());
        }
        let (files_tx, mut files_rx) = mpsc::channel(FILE_BATCHES);
        let mut files_open = self.start_files(files_tx);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick reads everything; then every interval, jittered.
        let mut next_full = Instant::now();
        let mut connections_due = true;
        let mut events_open = self.watcher.is_some();
        let mut socket_events_open = self.socket_events.is_some();
        // Events were lost since the last full scan: it must check every process itself.
        let mut events_lost = false;
        // The ring's drop count at the last look: a rise means connections may have gone unseen.
        let mut socket_drops = 0;
        // A clone to be woken by: the select's futures cannot borrow `self`.
        let mut cloud_news = self.cloud.clone();
        let mut cloud_open = true;
        self.on_cloud_change();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                msg = from_sender.recv() => match msg {
                    Some(FromSender::Resync) => {
                        info!("collector asked for a snapshot");
                        self.tracker.want_snapshot();
                    }
                    Some(FromSender::Unauthorized) => {
                        warn!("collector no longer accepts this node key; enrolling again");
                        if let Err(e) = self.state.forget() {
                            error!(error = %e, "cannot remove the stale identity");
                        }
                        self.identity = None;
                        let _ = self.key_tx.send(None);
                        self.shared.spool().clear();
                        if !self.enroll(&shutdown).await? {
                            return Ok(());
                        }
                    }
                    None => return Ok(()),
                },
                batch = files_rx.recv(), if files_open => match batch {
                    // Reported with the next tick's report: changes are batched over a second.
                    Some(changes) => self.tracker.files_changed(changes),
                    None => {
                        files_open = false;
                        if !shutdown.is_cancelled() {
                            error!("the file monitor stopped; file changes are no longer seen");
                            self.files_why = Some("the file monitor stopped".to_owned());
                        }
                    }
                },
                news = cloud_news.changed(), if cloud_open => match news {
                    Ok(()) => self.on_cloud_change(),
                    // Off the cloud the watcher is done at once: nothing more will come.
                    Err(_) => cloud_open = false,
                },
                event = exec_rx.recv(), if events_open => match event {
                    Some(e) => {
                        let lost = self.on_event(e, &mut next_full);
                        connections_due |= lost;
                        events_lost |= lost;
                    }
                    None => {
                        events_open = false;
                        warn!("exec events stopped; listing /proc every second instead");
                        self.exec_why = Some("the process connector failed".to_owned());
                    }
                },
                done = self.probe_done.1.recv() => if let Some((job, outcome)) = done {
                    // Attached to its listener from the next look on (within a second).
                    if let Some(prober) = self.prober.as_mut() {
                        prober.finished(&job, outcome);
                        prober.save();
                    }
                    self.start_probe();
                },
                woken = socket_events_wake(&self.socket_events), if socket_events_open => match woken {
                    // A quarter ring: drained now rather than at the tick, to make room.
                    Ok(()) => self.drain_socket_events(),
                    Err(e) => {
                        socket_events_open = false;
                        error!(error = %e, "socket events stopped; connections and listeners shorter than a scan are not seen");
                        self.socket_events_why = Some(format!("the eBPF ring cannot be waited on: {e}"));
                    }
                },
                _ = tick.tick() => {
                    // What the kernel saw since the last tick, before this tick looks and reports.
                    self.drain_socket_events();
                    let scan = if Instant::now() >= next_full {
                        next_full = Instant::now() + backoff::jittered(self.config.interval);
                        let trusted = events_open && self.exec_why.is_none() && !events_lost;
                        events_lost = false;
                        Scan::Full { credential_events: trusted }
                    } else {
                        // Socket events stand in for watching new processes only while they
                        // run and the ring lost nothing since the last look; a loss is made
                        // good by reading every connection now.
                        let drops = self.socket_events.as_ref().map_or(0, |s| s.counters().dropped);
                        connections_due |= drops > socket_drops;
                        socket_drops = drops;
                        Scan::Quick {
                            want: Want { listen: true, connected: connections_due },
                            list: !events_open || self.exec_why.is_some(),
                            connection_events: socket_events_open && self.socket_events_why.is_none(),
                        }
                    };
                    connections_due = false;
                    let full = matches!(scan, Scan::Full { .. });
                    self.scan(scan).await;
                    self.start_probe();
                    self.report_if_due();
                    if full {
                        // The scan's passing peak goes back to the system (memory.rs).
                        crate::memory::release_freed();
                    }
                }
            }
        }
    }

    /// Handles an exec watcher event; returns whether connections must be read at the next quick
    /// look whatever happens (events were lost). A process that exec'd is watched for new
    /// connections by the quick looks themselves.
    fn on_event(&mut self, e: exec::Event, next_full: &mut Instant) -> bool {
        let Some(observer) = self.observer.as_mut() else { return false };
        match e {
            exec::Event::Exec { record: Some(rec), at, .. } => {
                let p = observer.note_exec(*rec);
                self.tracker.started(p, at);
                false
            }
            exec::Event::Exec { pid, at, record: None } => {
                self.tracker.exec_unread(pid, at);
                false
            }
            exec::Event::Exit { pid, at } => {
                observer.note_exit(pid);
                self.tracker.ended(pid, at);
                false
            }
            exec::Event::Fork { pid } => {
                observer.note_fork(pid);
                false
            }
            exec::Event::Credentials { pid } => {
                observer.note_credentials(pid);
                false
            }
            exec::Event::Lost => {
                warn!("the kernel dropped process events; rescanning /proc");
                // The next tick re-reads everything.
                *next_full = Instant::now();
                true
            }
        }
    }

    /// Hands every event in the ring to [`Agent::on_socket_event`].
    fn drain_socket_events(&mut self) {
        let batch = self.socket_events.as_mut().map(SocketEvents::drain).unwrap_or_default();
        for e in batch {
            self.on_socket_event(e);
        }
    }

    /// A socket the kernel opened or closed, with its owner where the event names one (an
    /// accepted connection's owner is its listener's).
    ///
    /// The agent's own sockets (its connection to the collector, to the cloud's metadata service)
    /// are not reported from events: each reconnect would be history on every host, and the
    /// collector explains them anyway. Its scans still list the one open when they look.
    fn on_socket_event(&mut self, e: SocketEvent) {
        if e.pid == Some(std::process::id()) {
            return;
        }
        let Some(observer) = self.observer.as_ref() else { return };
        let netns = observer.netns_of(u64::from(e.netns));
        let owner = |pid: Option<u32>| -> (Option<Arc<str>>, Option<Arc<str>>) {
            let Some(pid) = pid else { return (None, None) };
            match observer.owner(pid) {
                Some((name, exe)) => (Some(name.into()), exe.map(Into::into)),
                // Not read yet (its socket's event came before its exec's) or gone already: the
                // name the kernel had for it, and its executable if it is still there.
                None => {
                    let exe = crate::collect::process::exe_of(observer.root(), pid);
                    let name = crate::collect::process::process_name(&e.comm, exe.as_deref());
                    (Some(name.into()), exe.map(Into::into))
                }
            }
        };
        let (protocol, local, remote) = (e.protocol, e.local, e.remote);
        match e.kind {
            ebpf::Kind::Connect | ebpf::Kind::UdpConnect | ebpf::Kind::Accept => {
                let (pid, direction) = match e.kind {
                    ebpf::Kind::Accept => {
                        (self.tracker.listener_owner(protocol, local, netns), proto::Direction::Inbound)
                    }
                    _ => (e.pid, proto::Direction::Outbound),
                };
                let (process, exe) = owner(pid);
                let c = proto::Connection {
                    protocol,
                    local_address: local.ip(),
                    local_port: local.port(),
                    remote_address: remote.ip(),
                    remote_port: remote.port(),
                    direction,
                    pid,
                    process,
                    exe,
                    uid: e.uid,
                    netns,
                };
                if self.tracker.connection_reopening(&c.key(), e.at) {
                    self.report_before_reopening();
                }
                self.tracker.connection_opened(c, e.at);
            }
            ebpf::Kind::Close => {
                let key = proto::ConnectionKey {
                    protocol,
                    local_address: local.ip(),
                    local_port: local.port(),
                    remote_address: remote.ip(),
                    remote_port: remote.port(),
                    netns,
                };
                self.tracker.connection_closed(&key, e.at);
            }
            ebpf::Kind::Listen => {
                let (process, exe) = owner(e.pid);
                let l = proto::Listener {
                    protocol,
                    address: local.ip(),
                    port: local.port(),
                    pid: e.pid,
                    process,
                    exe,
                    uid: e.uid,
                    netns,
                    auth: None,
                };
                if self.tracker.listener_reopening(&l.key(), e.at) {
                    self.report_before_reopening();
                }
                self.tracker.listener_opened(l, e.at);
            }
            ebpf::Kind::Unlisten => {
                let key = proto::ListenerKey { protocol, address: local.ip(), port: local.port(), netns };
                self.tracker.listener_closed(&key, e.at);
            }
            // An attempt that never connected: no connection to report (yet).
            ebpf::Kind::ConnectFailed => {}
        }
    }

    async fn scan(&mut self, scan: Scan) {
        let mut observer = self.observer.take().unwrap_or_else(|| {
            Observer::new(self.root.clone(), Reader::SockDiag, self.config.redactor.clone())
                .with_stdio_rescan(self.config.stdio_rescan)
                .with_lineage(self.config.lineage)
                .hiding_own_process(self.config.hide_own_process)
                .with_packages(self.config.files.databases())
        });
        // Before the scan reads anything: a socket an event showed open before this and the scan
        // does not list closed unseen.
        let looked_at = OffsetDateTime::now_utc();
        let result = tokio::task::spawn_blocking(move || {
            let out = match scan {
                Scan::Full { credential_events } => {
                    observer.set_credential_events(credential_events);
                    Ok(observer.observe())
                }
                Scan::Quick { want, list, connection_events } => {
                    observer.set_connection_events(connection_events);
                    Err(observer.quick(want, list))
                }
            };
            (observer, out)
        })
        .await;
        match result {
            Ok((observer, out)) => {
                self.observer = Some(observer);
                // Events of sockets opened while the scan ran, before its list is taken: a socket
                // the scan read after its owner ended gets its owner from its event.
                self.drain_socket_events();
                match out {
                    Ok(full) => {
                        self.coverage = full.coverage;
                        self.tracker.set_processes(full.snapshot.processes, full.snapshot.taken_at);
                        let mut listeners = full.snapshot.listeners;
                        if let Some(prober) = self.prober.as_mut() {
                            prober.consider(&mut listeners);
                        }
                        self.tracker.set_listeners(listeners, looked_at);
                        self.tracker.set_connections(full.snapshot.connections, looked_at);
                    }
                    Err(quick) => {
                        let now = OffsetDateTime::now_utc();
                        for p in quick.started {
                            self.tracker.seen(p);
                        }
                        for pid in quick.gone {
                            self.tracker.ended(pid, now);
                        }
                        if let Some(mut l) = quick.listeners {
                            if let Some(prober) = self.prober.as_mut() {
                                prober.consider(&mut l);
                            }
                            self.tracker.set_listeners(l, looked_at);
                        }
                        if let Some(c) = quick.connections {
                            self.tracker.set_connections(c, looked_at);
                        }
                    }
                }
            }
            Err(e) => error!(error = %e, "host scan failed"),
        }
    }

    /// Starts the next probe waiting, on its own task, if none runs and the rate allows.
    fn start_probe(&mut self) {
        let Some(prober) = self.prober.as_mut() else { return };
        let Some(job) = prober.next_job() else { return };
        let (timeout, done) = (prober.timeout(), self.probe_done.0.clone());
        tokio::spawn(async move {
            // The probe on a task of its own, so that even a panic in it ends as a verdict: the
            // prober runs one probe at a time, and one that never reported would stop them all.
            let probing = job.clone();
            let outcome =
                tokio::spawn(async move { probe::run(&probing, timeout).await }).await.unwrap_or_else(|e| {
                    probe::Outcome::new(proto::AuthVerdict::Unknown, format!("the probe failed: {e}"))
                });
            let _ = done.send((job, outcome)).await;
        });
    }

    /// Puts a report in the spool if one is due: a snapshot, the changes, or a heartbeat.
    fn report_if_due(&mut self) {
        if self.identity.is_none() {
            return;
        }
        if Instant::now() >= self.snapshot_at {
            self.tracker.want_snapshot();
        }
        let now = OffsetDateTime::now_utc();
        if self.tracker.history_before_snapshot() {
            // What came and went since the last report is only in a delta: send it first.
            self.send_delta(now);
        }
        let (snapshot, delta) = if self.tracker.snapshot_due() {
            self.snapshot_at = Instant::now() + backoff::jittered(self.config.snapshot_every);
            (Some(self.tracker.take_snapshot(now)), None)
        } else if self.tracker.is_dirty() {
            (None, Some(self.tracker.take_delta(now)))
        } else if Instant::now() >= self.heartbeat_at {
            (None, None)
        } else {
            return;
        };
        let report = self.report(snapshot, delta, None);
        self.spool_report(&report);
    }

    /// A socket opened again with the key of one the next report ends: that report goes now, so
    /// that the new one is in the report after it (one report cannot carry two sockets of one
    /// key). At most one such early report per [`REOPEN_REPORT_EVERY`]: a program reconnecting
    /// one four-tuple in a loop must not make the agent flood the collector; past that, the new
    /// socket is carried with the earlier one and its opening is not told apart.
    fn report_before_reopening(&mut self) {
        if self.identity.is_none()
            || self.reopen_reported_at.is_some_and(|t| t.elapsed() < REOPEN_REPORT_EVERY)
        {
            return;
        }
        self.reopen_reported_at = Some(Instant::now());
        self.send_delta(OffsetDateTime::now_utc());
    }

    /// Spools a delta of what changed, whatever else is due.
    fn send_delta(&mut self, now: OffsetDateTime) {
        let delta = self.tracker.take_delta(now);
        let report = self.report(None, Some(delta), None);
        self.spool_report(&report);
    }

    fn spool_report(&mut self, report: &proto::Report) {
        fn count<T, K>(c: &proto::Changes<T, K>) -> [usize; 3] {
            [c.added.len(), c.updated.len(), c.removed.len()]
        }
        debug!(
            seq = report.seq,
            snapshot = report.snapshot.as_ref().map(|s| s.processes.len()),
            delta_processes = ?report.delta.as_ref().map(|d| count(&d.processes)),
            delta_connections = ?report.delta.as_ref().map(|d| count(&d.connections)),
            "report spooled"
        );
        self.shared.spool().push(report);
        if let (Some(files), Some(d)) = (&self.files, &report.delta)
            && !d.files.is_empty()
        {
            files.spooled(d.files.len());
        }
        self.heartbeat_at = Instant::now() + backoff::jittered(self.config.interval);
        self.shared.wake.notify_one();
    }

    fn machine_id(&self) -> Result<String, StateError> {
        match self.observer.as_ref().and_then(|o| o.host().machine_id.clone()) {
            Some(id) => Ok(id),
            None => self.state.agent_id(),
        }
    }

    /// The cloud instance this agent runs on, as the metadata service said (none off a cloud).
    fn instance_id(&self) -> Option<String> {
        self.cloud.borrow().as_ref().and_then(Detection::facts).map(|f| f.instance_id.clone())
    }

    fn host_facts(&self, machine_id: &str) -> proto::HostFacts {
        let host = match &self.observer {
            Some(o) => o.host().clone(),
            None => crate::collect::host::read(&self.root),
        };
        let cloud = self.cloud.borrow();
        snapshot::host_facts(&host, machine_id, &self.config.tags, cloud.as_ref().and_then(Detection::facts))
    }

    /// Says what the cloud told, when it told something new.
    fn on_cloud_change(&mut self) {
        let cloud = self.cloud.borrow_and_update();
        if let Some(f) = cloud.as_ref().and_then(Detection::facts) {
            let (_, left_out) = cloud::merge_tags(&f.tags, &self.config.tags);
            if !left_out.is_empty() {
                warn!(tags = ?left_out, "cloud tags not used as host tags: too long, control characters, or past 64 tags");
            }
        }
    }

    /// Starts the file monitor if any path is watched; whether it runs.
    fn start_files(&mut self, tx: mpsc::Sender<Vec<proto::FileChange>>) -> bool {
        if self.files.is_some() || !self.config.files.enabled() {
            return false;
        }
        let machine_id = self.identity.as_ref().map(|i| i.machine_id.clone()).unwrap_or_default();
        match crate::files::Monitor::start(self.config.files.clone(), self.state.path(), machine_id, tx) {
            Ok(m) => {
                self.files = Some(m);
                true
            }
            Err(e) => {
                error!(error = %e, "cannot start the file monitor");
                self.files_why = Some(format!("file monitor not started: {e}"));
                false
            }
        }
    }

    /// The coverage of the last scan, with what file watching lacks.
    fn coverage(&self) -> proto::Coverage {
        let mut c = self.coverage.clone();
        let files =
            self.files_why.clone().or_else(|| self.files.as_ref().and_then(crate::files::Monitor::problem));
        let sockets = self
            .socket_events_why
            .as_ref()
            .map(|why| format!("connections and listeners shorter than a scan are not seen: {why}"));
        for why in [files, sockets].into_iter().flatten() {
            c.state = proto::CoverageState::Degraded;
            if c.why.len() < proto::limits::MAX_REASONS {
                c.why.push(why);
            }
        }
        c
    }

    fn stats(&self) -> proto::AgentStats {
        let (spool_reports, spool_bytes) = {
            let s = self.shared.spool();
            (s.len() as u64, s.bytes())
        };
        let counters = self.watcher.as_ref().map(|w| w.counters.clone());
        let load = |c: &Option<Arc<exec::Counters>>, f: fn(&exec::Counters) -> u64| c.as_deref().map_or(0, f);
        let usage = crate::collect::own::usage();
        proto::AgentStats {
            exec_source: if self.watcher.is_some() && self.exec_why.is_none() {
                "proc_connector"
            } else {
                "polling"
            }
            .to_owned(),
            exec_source_why: self.exec_why.clone(),
            connection_source: Some(
                if self.socket_events_why.is_none() { "ebpf" } else { "scans" }.to_owned(),
            ),
            connection_source_why: self.socket_events_why.clone(),
            socket_events: self.socket_events.as_ref().map_or(0, |s| s.counters().events),
            socket_events_dropped: self.socket_events.as_ref().map_or(0, |s| s.counters().dropped),
            socket_reader: self
                .observer
                .as_ref()
                .map_or(Reader::SockDiag, Observer::socket_reader)
                .as_str()
                .to_owned(),
            exec_events: load(&counters, |c| c.execs.load(std::sync::atomic::Ordering::Relaxed)),
            exec_read_misses: load(&counters, |c| {
                c.exec_read_misses.load(std::sync::atomic::Ordering::Relaxed)
            }),
            events_lost: load(&counters, |c| c.overruns.load(std::sync::atomic::Ordering::Relaxed)),
            spool_reports,
            spool_bytes,
            pid: Some(std::process::id()),
            cloud_problem: self.cloud.borrow().as_ref().and_then(Detection::problem).map(str::to_owned),
            rss_bytes: usage.map(|u| u.rss_bytes),
            cpu_seconds: usage.map(|u| u.cpu_seconds),
            files: self.files.as_ref().map(crate::files::Monitor::stats),
        }
    }

    fn report(
        &mut self,
        snapshot: Option<proto::Snapshot>,
        delta: Option<proto::Delta>,
        goodbye: Option<proto::Goodbye>,
    ) -> proto::Report {
        self.seq += 1;
        let machine_id = self.identity.as_ref().map(|i| i.machine_id.clone()).unwrap_or_default();
        proto::Report {
            session: self.session,
            seq: self.seq,
            sent_at: OffsetDateTime::now_utc(),
            host: self.host_facts(&machine_id),
            agent: snapshot::agent_status(
                self.config.interval,
                self.started_at,
                self.coverage(),
                Some(self.stats()),
            ),
            snapshot,
            delta,
            lost: 0,
            goodbye,
        }
    }

    /// Enrolls (or loads the stored identity), retrying with backoff; `false` if shutdown came
    /// first. A new identity starts a new session with a snapshot.
    async fn enroll(&mut self, shutdown: &CancellationToken) -> Result<bool, AgentError> {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        loop {
            let machine_id = self.machine_id()?;
            let instance_id = self.instance_id();
            let attempt = match self.state.load(&machine_id, instance_id.as_deref(), self.client.base())? {
                Some(id) => {
                    info!(host_id = id.host_id, "using stored node key");
                    Ok(id)
                }
                None => {
                    let secret = self.config.enroll_secret.clone().ok_or(AgentError::NoEnrollSecret)?;
                    let req = proto::EnrollRequest {
                        enroll_secret: secret.expose().to_owned(),
                        host: self.host_facts(&machine_id),
                        agent: snapshot::agent_status(
                            self.config.interval,
                            self.started_at,
                            self.coverage.clone(),
                            None,
                        ),
                        instance_identity: self
                            .cloud
                            .borrow()
                            .as_ref()
                            .and_then(Detection::identity)
                            .cloned(),
                    };
                    let sent = tokio::select! {
                        _ = shutdown.cancelled() => return Ok(false),
                        r = self.client.enroll(&req) => r,
                    };
                    match sent {
                        Ok(resp) => {
                            let id = Identity {
                                host_id: resp.host_id,
                                node_key: Secret::new(resp.node_key),
                                machine_id,
                                instance_id,
                            };
                            self.state.save(&id, self.client.base())?;
                            info!(host_id = id.host_id, "enrolled");
                            // Reports spooled for another identity mean nothing to this one.
                            self.shared.spool().clear();
                            Ok(id)
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match attempt {
                Ok(id) => {
                    let _ = self.key_tx.send(Some(id.node_key.clone()));
                    self.identity = Some(id);
                    self.session = new_session();
                    self.seq = 0;
                    self.tracker.want_snapshot();
                    return Ok(true);
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    warn!(error = %e, retry_in = %humantime::format_duration(wait), "enrollment failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Sends what is pending and a goodbye, within [`GOODBYE_TIMEOUT`].
    async fn goodbye(&mut self) {
        let now = OffsetDateTime::now_utc();
        if self.tracker.is_dirty() && !self.tracker.snapshot_due() {
            let delta = self.tracker.take_delta(now);
            let report = self.report(None, Some(delta), None);
            self.spool_report(&report);
        }
        let report = self.report(None, None, Some(proto::Goodbye::Stopped));
        self.spool_report(&report);
        let deadline = Instant::now() + GOODBYE_TIMEOUT;
        while !self.shared.spool().is_empty() {
            if Instant::now() >= deadline {
                warn!(
                    waiting = self.shared.spool().len(),
                    "goodbye not delivered in time; the spool keeps it"
                );
                return;
            }
            self.shared.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        info!("said goodbye to the collector");
    }
}

/// What the log says of deliveries that fail: the first failure and then one line a minute,
/// since a collector that is away is tried every second ([`Retry`]).
#[derive(Debug, Default)]
struct Outage {
    since: Option<Instant>,
    said_at: Option<Instant>,
    failures: u64,
}

impl Outage {
    const SAY_EVERY: Duration = Duration::from_secs(60);

    fn failed(&mut self, e: &TransportError, retry_in: Duration, spooled: usize) {
        let now = Instant::now();
        self.since.get_or_insert(now);
        self.failures += 1;
        if self.said_at.is_none_or(|t| now.duration_since(t) >= Self::SAY_EVERY) {
            self.said_at = Some(now);
            let down_for = self.since.map_or(Duration::ZERO, |t| now.duration_since(t));
            warn!(
                error = %e,
                retry_in = %humantime::format_duration(retry_in),
                failures = self.failures,
                down_for = %humantime::format_duration(Duration::from_secs(down_for.as_secs())),
                spooled,
                "report not delivered; kept in the spool"
            );
        } else {
            debug!(error = %e, retry_in = ?retry_in, spooled, "report not delivered; kept in the spool");
        }
    }

    fn over(&mut self, spooled: usize) {
        if let Some(since) = self.since.take() {
            let down_for = Duration::from_secs(since.elapsed().as_secs());
            info!(down_for = %humantime::format_duration(down_for), failures = self.failures, spooled, "collector reachable again; delivering the spool");
        }
        self.said_at = None;
        self.failures = 0;
    }
}

/// Drains the spool to the collector, in order, retrying as [`Retry`] decides.
async fn send_loop(
    client: CollectorClient,
    shared: Arc<Shared>,
    mut key: watch::Receiver<Option<Secret>>,
    to_runner: mpsc::Sender<FromSender>,
    retry_max: Duration,
    stop: CancellationToken,
) {
    let mut retries = Retry::new(Duration::from_secs(1).min(retry_max), retry_max);
    let mut retry_at: Option<Instant> = None;
    let mut outage = Outage::default();
    loop {
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = key.changed() => {}
            _ = retry => {}
        }
        if retry_at.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        retry_at = None;
        let Some(node_key) = key.borrow().clone() else { continue };
        loop {
            let Some((id, body)) = shared.spool().front() else { break };
            // What is spooled behind this report already happened: the collector judges what
            // those reports end as gone before it could see it.
            let backlog = shared.spool().len().saturating_sub(1);
            let sent = tokio::select! {
                _ = stop.cancelled() => return,
                r = client.report_gzip(&node_key, body, backlog) => r,
            };
            match sent {
                Ok(resp) => {
                    debug!(seq = resp.seq, resync = resp.resync, "report delivered");
                    shared.spool().delivered(id);
                    retries.reset();
                    outage.over(shared.spool().len());
                    if resp.resync {
                        // The collector applied what it could; a snapshot (queued behind the
                        // reports still spooled, which it will apply too) puts its state right.
                        let _ = to_runner.send(FromSender::Resync).await;
                    }
                }
                Err(TransportError::Unauthorized { .. }) => {
                    let _ = to_runner.send(FromSender::Unauthorized).await;
                    break;
                }
                Err(e) if !e.is_retriable() => {
                    // A report the collector will never take (a bug, or too large): keeping it
                    // would block every report behind it.
                    error!(error = %e, "collector refused a report; dropping it");
                    shared.spool().refused(id);
                }
                Err(e) => {
                    let wait = retries.after_failure(e.is_absent(), e.retry_after());
                    outage.failed(&e, wait, shared.spool().len());
                    retry_at = Some(Instant::now() + wait);
                    break;
                }
            }
        }
    }
}

/// Resolves when the socket event ring asks to be drained; never without socket events.
async fn socket_events_wake(events: &Option<SocketEvents>) -> std::io::Result<()> {
    match events {
        Some(e) => e.wake().await,
        None => std::future::pending().await,
    }
}
