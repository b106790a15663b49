//! The collector's own types for what it stores and reasons about.
//!
//! The wire's types (`hostwatch_proto::v1`) are converted to these at the API's edge, so that a
//! future `/api/v2` converts into the same model and the store and the engine never see a wire
//! version. The vocabulary enums (protocol, finding kind, severity, status) are the contract's own
//! stable names and are shared.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use hostwatch_proto::v1 as proto;
use hostwatch_proto::v1::{Direction, FindingKind, FindingStatus, Protocol, Severity};
use time::OffsetDateTime;

/// A running process on a host.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub name: String,
    pub exe: Option<String>,
    pub exe_deleted: bool,
    pub cmdline: Vec<String>,
    pub uid: u32,
    pub user: Option<String>,
    pub start_time: OffsetDateTime,
    pub sha256: Option<String>,
    pub exe_memfd: bool,
    pub exe_writable_dir: bool,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub unit: Option<String>,
    pub cpu_percent: Option<f32>,
    pub rss_bytes: Option<u64>,
    pub exe_replaced: bool,
    pub exe_replacement: Option<proto::ExeReplacement>,
    pub stdio_socket: Option<String>,
    /// The audit login uid and session id: set for what a login session started.
    pub login_uid: Option<u32>,
    pub login_user: Option<String>,
    pub session_id: Option<u32>,
    /// Its ancestors as the agent saw them when it started, parent first.
    pub ancestry: Vec<proto::Ancestor>,
    /// Since when the process has used at least [`HIGH_CPU_PERCENT`] without a break (kept by
    /// the store across reports; `None` while it is below).
    pub cpu_high_since: Option<OffsetDateTime>,
}

/// The CPU percent at and above which a process runs hot: a fact the store keeps the start of
/// ([`Process::cpu_high_since`]) and the engine's high-CPU rule judges. Here, in the vocabulary
/// both share, so that the store imports nothing from the engine.
pub const HIGH_CPU_PERCENT: f32 = 90.0;

impl Process {
    /// The user name, or the uid where the host has no name for it.
    pub fn user_or_uid(&self) -> String {
        self.user.clone().unwrap_or_else(|| self.uid.to_string())
    }

    /// The command line as one string, for display and matching.
    pub fn cmdline_string(&self) -> String {
        self.cmdline.join(" ")
    }

    /// The subject of a finding about this process: its executable, else its name.
    pub fn subject(&self) -> &str {
        self.exe.as_deref().unwrap_or(&self.name)
    }
}

/// A listening socket on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub protocol: Protocol,
    pub address: IpAddr,
    pub port: u16,
    pub pid: Option<u32>,
    pub process: Option<String>,
    pub exe: Option<String>,
    pub uid: u32,
    /// Network namespace, where it is not the host's own.
    pub netns: Option<u64>,
    /// What the agent's probe found: does it answer without credentials (agent's word).
    pub auth: Option<proto::ListenerAuth>,
}

impl Listener {
    /// The subject of a finding about this listener: `tcp/0.0.0.0:8080`, `tcp/[::]:22`.
    pub fn subject(&self) -> String {
        format!("{}/{}", self.protocol, std::net::SocketAddr::new(self.address, self.port))
    }
}

/// An established connection on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub protocol: Protocol,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    pub direction: Direction,
    pub pid: Option<u32>,
    pub process: Option<String>,
    pub exe: Option<String>,
    pub uid: u32,
    pub netns: Option<u64>,
}

impl Connection {
    /// The subject of a finding about this connection: `tcp/10.0.0.5:5432 by /usr/bin/app` out,
    /// `tcp/10.0.0.5 to :22 by /usr/sbin/sshd` in (a client's port is new every time; the
    /// service's port is what stays).
    pub fn subject(&self) -> String {
        let by = self.exe.as_deref().or(self.process.as_deref()).unwrap_or("?");
        match self.direction {
            Direction::Outbound => format!("{}/{} by {by}", self.protocol, self.remote),
            Direction::Inbound => {
                format!(
                    "{}/{} to :{} by {by}",
                    self.protocol,
                    self.remote.ip().to_canonical(),
                    self.local.port()
                )
            }
        }
    }
}

/// What a host runs now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostState {
    pub processes: Vec<Process>,
    pub listeners: Vec<Listener>,
    pub connections: Vec<Connection>,
}

impl HostState {
    /// Adds what `history` saw start or open that is not running now: the items of a window, for
    /// learning.
    pub fn add_history(&mut self, processes: &[ProcessEvent], sockets: &[SocketEvent]) {
        for e in processes.iter().filter(|e| e.kind == "exec") {
            let Some(name) = &e.name else { continue };
            let mut p = Process::from(proto::Process::new(
                e.pid,
                e.ppid.unwrap_or(0),
                name.clone(),
                e.uid.unwrap_or(0),
                e.start_time,
            ));
            p.exe.clone_from(&e.exe);
            p.user.clone_from(&e.user);
            p.cmdline.clone_from(&e.cmdline);
            self.processes.push(p);
        }
        for e in sockets.iter().filter(|e| e.kind == "open") {
            match (e.socket, e.remote) {
                ("listener", _) => self.listeners.push(Listener {
                    protocol: e.protocol,
                    address: e.local.ip(),
                    port: e.local.port(),
                    pid: e.pid,
                    process: e.process.clone(),
                    exe: e.exe.clone(),
                    uid: 0,
                    netns: e.netns,
                    auth: None,
                }),
                ("connection", Some(remote)) => self.connections.push(Connection {
                    protocol: e.protocol,
                    local: e.local,
                    remote,
                    direction: e.direction.unwrap_or(Direction::Outbound),
                    pid: e.pid,
                    process: e.process.clone(),
                    exe: e.exe.clone(),
                    uid: 0,
                    netns: e.netns,
                }),
                _ => {}
            }
        }
    }
}

/// How many hosts of one workload have each item: what tells an outlier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCounts {
    /// Hosts in the workload (not retired).
    pub hosts: u64,
    /// By process subject (executable, else name).
    pub processes: HashMap<String, u64>,
    /// By (protocol, port).
    pub listeners: HashMap<(Protocol, u16), u64>,
    /// Outbound, by [`Connection::peer_key`].
    pub connections: HashMap<String, u64>,
}

impl Connection {
    /// What an outbound connection is across peers: its program and the service's protocol and
    /// port, `tcp/*:5432 by /usr/bin/app` (each peer talks to its own replicas).
    pub fn peer_key(&self) -> String {
        peer_key(self.protocol, self.remote.port(), self.exe.as_deref(), self.process.as_deref())
    }
}

/// [`Connection::peer_key`] from its parts (as the store holds them).
pub fn peer_key(protocol: Protocol, remote_port: u16, exe: Option<&str>, process: Option<&str>) -> String {
    let by = exe.or(process).unwrap_or("?");
    format!("{protocol}/*:{remote_port} by {by}")
}

/// What one host has of the items peers are compared by ([`PeerCounts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerItems {
    /// Process subjects (executable, else name).
    pub processes: HashSet<String>,
    /// (protocol, port) listened on.
    pub listeners: HashSet<(Protocol, u16)>,
    /// Outbound connections' [`Connection::peer_key`].
    pub connections: HashSet<String>,
}

impl PeerItems {
    pub fn of(state: &HostState) -> PeerItems {
        PeerItems {
            processes: state.processes.iter().map(|p| p.subject().to_owned()).collect(),
            listeners: state.listeners.iter().map(|l| (l.protocol, l.port)).collect(),
            connections: state
                .connections
                .iter()
                .filter(|c| c.direction == Direction::Outbound)
                .map(Connection::peer_key)
                .collect(),
        }
    }
}

/// Host facts as the collector keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub hostname: String,
    pub machine_id: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub boot_time: Option<OffsetDateTime>,
    /// The tags the host is judged by ([`crate::tags`] decides them).
    pub tags: BTreeMap<String, String>,
    /// The tags as the host last reported them (its configuration and its cloud's instance tags).
    pub reported_tags: BTreeMap<String, String>,
    /// The cloud's word on the instance, as the agent last relayed it.
    pub cloud: Option<proto::CloudFacts>,
}

/// Agent status as the collector keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInfo {
    pub version: String,
    pub interval_secs: u32,
    pub coverage_degraded: bool,
    pub coverage_why: Vec<String>,
    /// The agent's own account of itself, kept as it came: the collector shows it and counts what
    /// it lost (`/metrics`), never judges it.
    pub stats: Option<proto::AgentStats>,
}

/// One accepted report, reduced to what the store records.
#[derive(Debug, Clone)]
pub struct ReportRecord {
    pub session: u64,
    pub seq: u64,
    pub facts: HostFacts,
    pub agent: AgentInfo,
    pub content: Content,
    /// Reports the agent dropped before this one.
    pub lost: u64,
    /// `shutdown` or `stopped` for a goodbye.
    pub goodbye: Option<&'static str>,
    /// Reports the agent had spooled behind this one when it sent it (`hostwatch-backlog`): the
    /// sequence numbers up to `seq + backlog` were written before this one was judged.
    pub backlog: u64,
}

/// What a report says about the host's state.
#[derive(Debug, Clone)]
pub enum Content {
    /// The whole state: replaces what is stored.
    Snapshot(HostState),
    /// What changed since the report before.
    Delta(Box<StateDelta>),
    /// Nothing: the agent is alive.
    Heartbeat,
}

/// Changes to a host's state, in the order they apply: added, updated, removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDelta {
    pub processes: ChangeSet<Process, ProcessKey>,
    pub listeners: ChangeSet<Listener, ListenerKey>,
    pub connections: ChangeSet<Connection, ConnectionKey>,
    /// Execs the agent saw but could not read: pid and time.
    pub unread_execs: Vec<(u32, OffsetDateTime)>,
    /// Programs processes ran and left by a later exec before any report showed them.
    pub passed_execs: Vec<PassedExec>,
    /// Changes to watched files, as the agent sent them.
    pub files: Vec<proto::FileChange>,
}

/// A program a process ran from `at` until its next exec at `until`: history, not state.
#[derive(Debug, Clone, PartialEq)]
pub struct PassedExec {
    pub process: Process,
    pub at: OffsetDateTime,
    pub until: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChangeSet<T, K> {
    pub added: Vec<T>,
    pub updated: Vec<T>,
    /// Keys of what went, and when.
    pub removed: Vec<(K, OffsetDateTime)>,
}

impl<T, K> Default for ChangeSet<T, K> {
    fn default() -> Self {
        ChangeSet { added: Vec::new(), updated: Vec::new(), removed: Vec::new() }
    }
}

/// A process: pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub pid: u32,
    pub start_time: OffsetDateTime,
}

/// A listener: protocol, address, port, namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub protocol: Protocol,
    pub address: IpAddr,
    pub port: u16,
    pub netns: Option<u64>,
}

/// A connection: protocol, both ends, namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionKey {
    pub protocol: Protocol,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    pub netns: Option<u64>,
}

impl Process {
    pub fn key(&self) -> ProcessKey {
        ProcessKey { pid: self.pid, start_time: self.start_time }
    }
}

impl Listener {
    pub fn key(&self) -> ListenerKey {
        ListenerKey { protocol: self.protocol, address: self.address, port: self.port, netns: self.netns }
    }
}

impl Connection {
    pub fn key(&self) -> ConnectionKey {
        ConnectionKey { protocol: self.protocol, local: self.local, remote: self.remote, netns: self.netns }
    }
}

/// What the store did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied. `gap` is (first missing, received) where sequence numbers were skipped; `resync`
    /// where the agent must send a snapshot because its report did not follow the last one
    /// applied (a delta after a gap, or of a session the collector has no snapshot of) and was
    /// applied as best it could be.
    Applied { gap: Option<(u64, u64)>, resync: bool },
    /// A report already applied, sent again: acknowledged, nothing changed.
    Replay,
}

impl Applied {
    /// Sequence numbers that were skipped, (first missing, received).
    pub fn gap(self) -> Option<(u64, u64)> {
        match self {
            Applied::Applied { gap, .. } => gap,
            Applied::Replay => None,
        }
    }

    /// Whether the agent must send a snapshot next.
    pub fn resync(self) -> bool {
        matches!(self, Applied::Applied { resync: true, .. })
    }
}

/// A process that started or ended, from the history.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessEvent {
    pub id: i64,
    pub host_id: i64,
    pub hostname: String,
    pub at: OffsetDateTime,
    pub kind: &'static str,
    pub pid: u32,
    pub ppid: Option<u32>,
    pub name: Option<String>,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub start_time: OffsetDateTime,
    pub login_uid: Option<u32>,
    pub session_id: Option<u32>,
    pub ancestry: Vec<proto::Ancestor>,
    /// Why it needed no finding, where the engine said (`interactive session of alice`).
    pub explained: Option<String>,
}

/// An exec the engine explained in a way the history shows: `why` for the process `pid`
/// that started at `start_time`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecExplained {
    pub pid: u32,
    pub start_time: OffsetDateTime,
    pub why: String,
}

/// A socket that opened or closed, from the history.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketEvent {
    pub id: i64,
    pub host_id: i64,
    pub hostname: String,
    pub at: OffsetDateTime,
    pub kind: &'static str,
    pub socket: &'static str,
    pub protocol: Protocol,
    pub local: std::net::SocketAddr,
    pub remote: Option<std::net::SocketAddr>,
    pub direction: Option<Direction>,
    pub pid: Option<u32>,
    pub process: Option<String>,
    pub exe: Option<String>,
    pub netns: Option<u64>,
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub id: i64,
    pub facts: HostFacts,
    pub agent: AgentInfo,
    pub workload: Option<String>,
    pub enrolled_at: OffsetDateTime,
    pub last_seen: Option<OffsetDateTime>,
    pub last_seq: u64,
    pub goodbye: Option<String>,
    pub retired_at: Option<OffsetDateTime>,
    pub open_findings: u64,
}

/// The silence after which a host reporting every `interval_secs` is offline: `offline_after`,
/// or by default 3 of its intervals, at least 30 s.
pub fn offline_limit(interval_secs: u32, offline_after: Option<std::time::Duration>) -> std::time::Duration {
    offline_after.unwrap_or_else(|| {
        (std::time::Duration::from_secs(u64::from(interval_secs)) * 3).max(std::time::Duration::from_secs(30))
    })
}

/// The earliest last report of a host that is online at `now` ([`offline_limit`]), to the
/// millisecond as times are stored: the one rule of [`Host::status`] and of the store's filter
/// by status, so that a listing filtered by status shows each host with that status.
pub fn online_since(
    now: OffsetDateTime,
    interval_secs: u32,
    offline_after: Option<std::time::Duration>,
) -> OffsetDateTime {
    let limit =
        time::Duration::try_from(offline_limit(interval_secs, offline_after)).unwrap_or(time::Duration::MAX);
    let t = now.checked_sub(limit).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    proto::timestamp::to_millisecond(t)
}

impl Host {
    /// The silence after which the host is offline ([`offline_limit`]).
    pub fn offline_limit(&self, offline_after: Option<std::time::Duration>) -> std::time::Duration {
        offline_limit(self.agent.interval_secs, offline_after)
    }

    /// Whether a host reports: silence beyond [`Host::offline_limit`] is offline, unless it said
    /// goodbye. A host that has not reported yet is offline (it has never been online).
    pub fn status(
        &self,
        now: OffsetDateTime,
        offline_after: Option<std::time::Duration>,
    ) -> proto::HostStatus {
        if self.retired_at.is_some() {
            return proto::HostStatus::Retired;
        }
        if self.goodbye.is_some() {
            return proto::HostStatus::Stopped;
        }
        match self.last_seen {
            Some(seen) if seen >= online_since(now, self.agent.interval_secs, offline_after) => {
                proto::HostStatus::Online
            }
            _ => proto::HostStatus::Offline,
        }
    }
}

/// Something the engine could not explain, before it becomes (or refreshes) a finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: FindingKind,
    pub rule: Option<String>,
    pub severity: Severity,
    pub subject: String,
    pub detail: serde_json::Value,
    /// How many new occurrences of the item this observation stands for: starts judged as events
    /// (an exec, a socket opened, a file changed, a burst held back), counted once each; 0 when
    /// it only says that an item already known is still there.
    pub occurrences: u64,
    /// Some occurrence was gone before it was judged: the finding then resolves only by
    /// acknowledgement.
    pub transient: bool,
}

impl Observation {
    /// One occurrence of an event: a change, a loss, an identity shared.
    pub fn event(
        kind: FindingKind,
        rule: Option<String>,
        severity: Severity,
        subject: String,
        detail: serde_json::Value,
    ) -> Observation {
        Observation { kind, rule, severity, subject, detail, occurrences: 1, transient: false }
    }

    /// The key findings are deduplicated by, besides the host: (kind, rule, subject).
    pub fn key(&self) -> (FindingKind, &str, &str) {
        (self.kind, self.rule.as_deref().unwrap_or_default(), &self.subject)
    }

    /// The same key, owned: to index observations that are moved or changed meanwhile.
    pub fn owned_key(&self) -> (FindingKind, String, String) {
        let (kind, rule, subject) = self.key();
        (kind, rule.to_owned(), subject.to_owned())
    }
}

/// An item whose start the store recorded in a host's history (an exec, a listener or a
/// connection opened): what the engine judges as it happens, whether or not it still exists.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Process(Box<Process>),
    Listener(Listener),
    Connection(Connection),
}

/// One start recorded from a report, for judgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub item: Item,
    /// When the item began, as well as is known (a process's start, a socket's report); `None`
    /// for a socket judged again, whose opening is in the history.
    pub at: Option<OffsetDateTime>,
    /// When it ended, if it was already gone once the report was applied: it was never alive for
    /// the collector to see, so it is judged as transient.
    pub ended: Option<OffsetDateTime>,
    /// Whether this start is new: `false` for an item judged before whose end, recorded now,
    /// turned out to have come before that judgement (it was delivered late from the spool);
    /// it is judged again only to mark its finding transient, not counted again.
    pub new: bool,
}

/// What applying a report recorded, besides the state: every start, to be judged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    pub started: Vec<Started>,
    /// (the newer session, the earlier one that reported again): two agents share the host's
    /// node key.
    pub sessions_alternate: Option<(u64, u64)>,
}

/// A finding as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub id: i64,
    pub host_id: i64,
    pub hostname: String,
    pub kind: FindingKind,
    pub rule: Option<String>,
    pub severity: Severity,
    pub subject: String,
    pub detail: serde_json::Value,
    pub status: FindingStatus,
    pub occurrences: u64,
    pub transient: bool,
    pub first_seen: OffsetDateTime,
    pub last_seen: OffsetDateTime,
    pub resolved_at: Option<OffsetDateTime>,
    /// A silence was in force when it last opened: recorded, not sent to alert sinks.
    pub silenced: bool,
    pub acked_by: Option<String>,
    pub acked_at: Option<OffsetDateTime>,
    pub ack_note: Option<String>,
}

/// What a silence covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SilenceScope {
    Host(i64),
    /// Every host whose tags hold these.
    Selector(BTreeMap<String, String>),
}

/// A maintenance window: findings opened within it are recorded, marked silenced, and not sent
/// to alert sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    pub id: i64,
    pub scope: SilenceScope,
    pub starts_at: OffsetDateTime,
    pub ends_at: OffsetDateTime,
    pub reason: String,
    pub created_by: String,
}

/// An entry of the alert outbox: what happened to a finding, and the finding as it is now.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    pub id: i64,
    /// `opened`, `reopened`, `escalated` or `resolved`.
    pub event: String,
    pub silenced: bool,
    pub at: OffsetDateTime,
    pub finding: Finding,
}

/// How a reconciliation changed a finding; alert sinks hear of `Opened` and `Reopened`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindingChange {
    Opened { id: i64, kind: FindingKind, subject: String },
    Reopened { id: i64, kind: FindingKind, subject: String },
    Resolved { id: i64, kind: FindingKind, subject: String },
}

impl FindingChange {
    pub fn id(&self) -> i64 {
        match self {
            FindingChange::Opened { id, .. }
            | FindingChange::Reopened { id, .. }
            | FindingChange::Resolved { id, .. } => *id,
        }
    }
}

// ---- conversions at the wire's edge ----

impl From<proto::Process> for Process {
    fn from(p: proto::Process) -> Self {
        Process {
            pid: p.pid,
            ppid: p.ppid,
            name: p.name,
            exe: p.exe,
            exe_deleted: p.exe_deleted,
            cmdline: p.cmdline,
            uid: p.uid,
            user: p.user,
            start_time: p.start_time,
            sha256: p.sha256,
            exe_memfd: p.exe_memfd,
            exe_writable_dir: p.exe_writable_dir,
            cgroup: p.cgroup,
            container_id: p.container_id,
            unit: p.unit,
            cpu_percent: p.cpu_percent,
            rss_bytes: p.rss_bytes,
            exe_replaced: p.exe_replaced,
            exe_replacement: p.exe_replacement,
            stdio_socket: p.stdio_socket,
            login_uid: p.login_uid,
            login_user: p.login_user,
            session_id: p.session_id,
            ancestry: p.ancestry.to_vec(),
            cpu_high_since: None,
        }
    }
}

impl From<Process> for proto::Process {
    fn from(p: Process) -> Self {
        proto::Process {
            pid: p.pid,
            ppid: p.ppid,
            name: p.name,
            exe: p.exe,
            exe_deleted: p.exe_deleted,
            cmdline: p.cmdline,
            cmdline_truncated: false,
            uid: p.uid,
            user: p.user,
            start_time: p.start_time,
            sha256: p.sha256,
            exe_memfd: p.exe_memfd,
            exe_writable_dir: p.exe_writable_dir,
            cgroup: p.cgroup,
            container_id: p.container_id,
            unit: p.unit,
            cpu_percent: p.cpu_percent,
            rss_bytes: p.rss_bytes,
            exe_replaced: p.exe_replaced,
            exe_replacement: p.exe_replacement,
            stdio_socket: p.stdio_socket,
            login_uid: p.login_uid,
            login_user: p.login_user,
            session_id: p.session_id,
            ancestry: p.ancestry.into(),
        }
    }
}

impl From<proto::Listener> for Listener {
    fn from(l: proto::Listener) -> Self {
        Listener {
            protocol: l.protocol,
            address: l.address,
            port: l.port,
            pid: l.pid,
            process: l.process.as_deref().map(str::to_owned),
            exe: l.exe.as_deref().map(str::to_owned),
            uid: l.uid,
            netns: l.netns,
            auth: l.auth,
        }
    }
}

impl From<Listener> for proto::Listener {
    fn from(l: Listener) -> Self {
        proto::Listener {
            protocol: l.protocol,
            address: l.address,
            port: l.port,
            pid: l.pid,
            process: l.process.map(Into::into),
            exe: l.exe.map(Into::into),
            uid: l.uid,
            netns: l.netns,
            auth: l.auth,
        }
    }
}

impl From<proto::Connection> for Connection {
    fn from(c: proto::Connection) -> Self {
        Connection {
            protocol: c.protocol,
            local: std::net::SocketAddr::new(c.local_address, c.local_port),
            remote: std::net::SocketAddr::new(c.remote_address, c.remote_port),
            direction: c.direction,
            pid: c.pid,
            process: c.process.as_deref().map(str::to_owned),
            exe: c.exe.as_deref().map(str::to_owned),
            uid: c.uid,
            netns: c.netns,
        }
    }
}

impl From<Connection> for proto::Connection {
    fn from(c: Connection) -> Self {
        proto::Connection {
            protocol: c.protocol,
            local_address: c.local.ip(),
            local_port: c.local.port(),
            remote_address: c.remote.ip(),
            remote_port: c.remote.port(),
            direction: c.direction,
            pid: c.pid,
            process: c.process.map(Into::into),
            exe: c.exe.map(Into::into),
            uid: c.uid,
            netns: c.netns,
        }
    }
}

impl From<proto::HostFacts> for HostFacts {
    fn from(h: proto::HostFacts) -> Self {
        HostFacts {
            hostname: h.hostname,
            machine_id: h.machine_id,
            os: h.os,
            kernel: h.kernel,
            arch: h.arch,
            boot_time: h.boot_time,
            reported_tags: h.tags.clone(),
            tags: h.tags,
            cloud: h.cloud,
        }
    }
}

impl From<proto::AgentStatus> for AgentInfo {
    fn from(a: proto::AgentStatus) -> Self {
        AgentInfo {
            version: a.version,
            interval_secs: a.interval_secs,
            coverage_degraded: a.coverage.state == proto::CoverageState::Degraded,
            coverage_why: a.coverage.why,
            stats: a.stats,
        }
    }
}

impl From<proto::Report> for ReportRecord {
    fn from(r: proto::Report) -> Self {
        let content = match (r.snapshot, r.delta) {
            (Some(s), _) => Content::Snapshot(HostState {
                processes: s.processes.into_iter().map(Into::into).collect(),
                listeners: s.listeners.into_iter().map(Into::into).collect(),
                connections: s.connections.into_iter().map(Into::into).collect(),
            }),
            (None, Some(d)) => Content::Delta(Box::new(StateDelta {
                processes: changes(d.processes, |k| ProcessKey { pid: k.pid, start_time: k.start_time }),
                listeners: changes(d.listeners, |k| ListenerKey {
                    protocol: k.protocol,
                    address: k.address,
                    port: k.port,
                    netns: k.netns,
                }),
                connections: changes(d.connections, |k| ConnectionKey {
                    protocol: k.protocol,
                    local: std::net::SocketAddr::new(k.local_address, k.local_port),
                    remote: std::net::SocketAddr::new(k.remote_address, k.remote_port),
                    netns: k.netns,
                }),
                unread_execs: d.unread_execs.into_iter().map(|u| (u.pid, u.at)).collect(),
                passed_execs: d
                    .passed_execs
                    .into_iter()
                    .map(|x| PassedExec { process: x.process.into(), at: x.at, until: x.until })
                    .collect(),
                files: d.files,
            })),
            (None, None) => Content::Heartbeat,
        };
        ReportRecord {
            session: r.session,
            seq: r.seq,
            facts: r.host.into(),
            agent: r.agent.into(),
            content,
            lost: r.lost,
            backlog: 0,
            goodbye: r.goodbye.map(proto::Goodbye::as_str),
        }
    }
}

fn changes<P, T: From<P>, PK, K>(c: proto::Changes<P, PK>, key: impl Fn(PK) -> K) -> ChangeSet<T, K> {
    ChangeSet {
        added: c.added.into_iter().map(Into::into).collect(),
        updated: c.updated.into_iter().map(Into::into).collect(),
        removed: c.removed.into_iter().map(|r| (key(r.key), r.at)).collect(),
    }
}

impl AgentInfo {
    pub fn coverage(&self) -> proto::Coverage {
        proto::Coverage {
            state: if self.coverage_degraded {
                proto::CoverageState::Degraded
            } else {
                proto::CoverageState::Full
            },
            why: self.coverage_why.clone(),
        }
    }
}

impl From<Finding> for proto::Finding {
    fn from(f: Finding) -> Self {
        proto::Finding {
            id: f.id,
            host_id: f.host_id,
            hostname: f.hostname,
            kind: f.kind.as_str().to_owned(),
            rule: f.rule,
            severity: f.severity,
            subject: f.subject,
            detail: f.detail,
            status: f.status,
            occurrences: f.occurrences,
            transient: f.transient,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            resolved_at: f.resolved_at,
            silenced: f.silenced,
            acked_by: f.acked_by,
            acked_at: f.acked_at,
            ack_note: f.ack_note,
        }
    }
}

impl From<Silence> for proto::Silence {
    fn from(s: Silence) -> Self {
        let (host_id, selector) = match s.scope {
            SilenceScope::Host(h) => (Some(h), None),
            SilenceScope::Selector(sel) => (None, Some(sel)),
        };
        proto::Silence {
            id: s.id,
            host_id,
            selector,
            starts_at: s.starts_at,
            ends_at: s.ends_at,
            reason: s.reason,
            created_by: s.created_by,
        }
    }
}
