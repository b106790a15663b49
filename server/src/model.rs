//! The collector's own types for what it stores and reasons about.
//!
//! The wire's types (`hostwatch_proto::v1`) are converted to these at the API's edge, so that a
//! future `/api/v2` converts into the same model and the store and the engine never see a wire
//! version. The vocabulary enums (protocol, finding kind, severity, status) are the contract's own
//! stable names and are shared.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hostwatch_proto::v1 as proto;
use hostwatch_proto::v1::{Direction, FindingKind, FindingStatus, Protocol, Severity};
use time::OffsetDateTime;

/// A running process on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

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
    /// The subject of a finding about this connection: `tcp/10.0.0.5:5432 by /usr/bin/app`.
    pub fn subject(&self) -> String {
        let by = self.exe.as_deref().or(self.process.as_deref()).unwrap_or("?");
        format!("{}/{} by {by}", self.protocol, self.remote)
    }
}

/// What a host runs now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    pub processes: Vec<Process>,
    pub listeners: Vec<Listener>,
    pub connections: Vec<Connection>,
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
    pub tags: BTreeMap<String, String>,
}

/// Agent status as the collector keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub version: String,
    pub interval_secs: u32,
    pub coverage_degraded: bool,
    pub coverage_why: Vec<String>,
}

/// One accepted report, reduced to what the store records.
#[derive(Debug, Clone)]
pub struct ReportRecord {
    pub seq: u64,
    pub facts: HostFacts,
    pub agent: AgentInfo,
    /// The whole state, when the report carried a snapshot.
    pub state: Option<HostState>,
    /// `shutdown` or `stopped` for a goodbye.
    pub goodbye: Option<&'static str>,
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

/// Something the engine could not explain, before it becomes (or refreshes) a finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: FindingKind,
    pub rule: Option<String>,
    pub severity: Severity,
    pub subject: String,
    pub detail: serde_json::Value,
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
    pub first_seen: OffsetDateTime,
    pub last_seen: OffsetDateTime,
    pub resolved_at: Option<OffsetDateTime>,
}

/// How a reconciliation changed a finding; alert sinks hear of `Opened` and `Reopened`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindingChange {
    Opened { id: i64, kind: FindingKind, subject: String },
    Reopened { id: i64, kind: FindingKind, subject: String },
    Resolved { id: i64, kind: FindingKind, subject: String },
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
            process: l.process,
            exe: l.exe,
            uid: l.uid,
            netns: l.netns,
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
            process: l.process,
            exe: l.exe,
            uid: l.uid,
            netns: l.netns,
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
            process: c.process,
            exe: c.exe,
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
            process: c.process,
            exe: c.exe,
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
            tags: h.tags,
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
        }
    }
}

impl From<proto::Report> for ReportRecord {
    fn from(r: proto::Report) -> Self {
        ReportRecord {
            seq: r.seq,
            facts: r.host.into(),
            agent: r.agent.into(),
            state: r.snapshot.map(|s| HostState {
                processes: s.processes.into_iter().map(Into::into).collect(),
                listeners: s.listeners.into_iter().map(Into::into).collect(),
                connections: s.connections.into_iter().map(Into::into).collect(),
            }),
            goodbye: r.goodbye.map(proto::Goodbye::as_str),
        }
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
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            resolved_at: f.resolved_at,
        }
    }
}
