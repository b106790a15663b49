//! Objects of the people-facing API (`hostwatch` CLI, scripts, dashboard).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::timestamp;
use super::{AgentStats, CloudFacts, Connection, Coverage, Direction, Listener, Process, Protocol};

/// The body of every error response: one sentence saying what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Whether a host's agent is reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    /// Reported within `offline_after`.
    Online,
    /// Silent for longer than `offline_after` without saying goodbye.
    Offline,
    /// Said goodbye (agent stopped or host shut down) and has not reported since.
    Stopped,
    /// Gone for good; hidden from default listings.
    Retired,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Online => "online",
            HostStatus::Offline => "offline",
            HostStatus::Stopped => "stopped",
            HostStatus::Retired => "retired",
        }
    }
}

/// A host as `hostwatch hosts` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub id: i64,
    pub hostname: String,
    /// Name of the baseline that selects the host, if exactly one does.
    #[serde(default)]
    pub workload: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub status: HostStatus,
    pub coverage: Coverage,
    #[serde(default, with = "timestamp::option")]
    pub last_seen: Option<OffsetDateTime>,
    pub agent_version: String,
    pub open_findings: u64,
    /// The instance as its cloud describes it (account, region, image, instance id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudFacts>,
}

/// One host with its current state, as `hostwatch host H` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDetail {
    #[serde(flatten)]
    pub host: Host,
    pub machine_id: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    #[serde(with = "timestamp")]
    pub enrolled_at: OffsetDateTime,
    pub last_seq: u64,
    pub processes: Vec<Process>,
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub connections: Vec<Connection>,
    /// The agent's own account of itself, as last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_stats: Option<AgentStats>,
    /// The tags as the host last reported them, where they differ from `tags` (what it is judged
    /// by): the collector holds tags a host may not choose.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reported_tags: BTreeMap<String, String>,
}

/// A change to a watched file, as `hostwatch files` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEvent {
    pub id: i64,
    pub host_id: i64,
    pub hostname: String,
    #[serde(flatten)]
    pub change: super::FileChange,
}

/// A watched file as its host last reported it (`hostwatch files --current`): the paths that
/// changed since the host first reported, each in its latest state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub host_id: i64,
    pub hostname: String,
    pub path: String,
    #[serde(flatten)]
    pub state: super::FileState,
    /// When the change that left it so was seen.
    #[serde(with = "timestamp")]
    pub changed_at: OffsetDateTime,
}

/// An item of a fleet-wide listing (`hostwatch ps|ports|conns`), with the host it is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Located<T> {
    pub host_id: i64,
    pub hostname: String,
    #[serde(flatten)]
    pub item: T,
}

/// A stored baseline as `hostwatch baseline list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineSummary {
    pub name: String,
    /// Host tags it selects; absent for a library baseline that only others include.
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub include: Vec<String>,
    /// Number of rules of its own, not counting included ones.
    pub rules: u64,
    #[serde(with = "timestamp")]
    pub applied_at: OffsetDateTime,
    pub applied_by: String,
    /// What lint warns of in it (`FILE:LINE:COLUMN: warning: ...`), on apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Answer of `GET /api/v1/baselines/learn`: a baseline learned from hosts, for review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedBaseline {
    pub name: String,
    /// The hostnames it was learned from.
    pub hosts: Vec<String>,
    /// The TOML file.
    pub source: String,
}

/// Body of `POST /api/v1/baselines`: the TOML source, and the file it came from for messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyBaseline {
    pub source: String,
    #[serde(default)]
    pub file: Option<String>,
}

/// Body of `POST /api/v1/query`: one read-only SQL statement over the documented views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRequest {
    pub sql: String,
}

/// What a query returned: each row's values in the order of `columns` (integers and reals as
/// numbers, text as strings, blobs as hex, NULL as null); `truncated` when the collector's
/// `[query] max_rows` (or its byte bound) cut it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
    pub truncated: bool,
}

/// A process that started (`exec`) or ended (`exit`), from a host's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEvent {
    pub id: i64,
    pub host_id: i64,
    pub hostname: String,
    #[serde(with = "timestamp")]
    pub at: OffsetDateTime,
    /// `exec` or `exit`.
    pub kind: String,
    pub pid: u32,
    #[serde(default)]
    pub ppid: Option<u32>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub exe: Option<String>,
    #[serde(default)]
    pub cmdline: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(with = "timestamp")]
    pub start_time: OffsetDateTime,
    /// The audit login uid and session id, for what a login session started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<u32>,
    /// Its ancestors when it started, parent first (`sshd`, `bash` for a command typed in an ssh
    /// session).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<super::Ancestor>,
    /// Why the exec needed no finding, where the collector records it: `interactive session of
    /// alice` for a command of a login session a `[[session]]` rule allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explained: Option<String>,
}

/// A listener or connection that opened or closed, from a host's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketEvent {
    pub id: i64,
    pub host_id: i64,
    pub hostname: String,
    #[serde(with = "timestamp")]
    pub at: OffsetDateTime,
    /// `open` or `close`.
    pub kind: String,
    /// `listener` or `connection`.
    pub socket: String,
    pub protocol: Protocol,
    pub local_address: IpAddr,
    pub local_port: u16,
    #[serde(default)]
    pub remote_address: Option<IpAddr>,
    #[serde(default)]
    pub remote_port: Option<u16>,
    #[serde(default)]
    pub direction: Option<Direction>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub process: Option<String>,
    #[serde(default)]
    pub exe: Option<String>,
    #[serde(default)]
    pub netns: Option<u64>,
}
