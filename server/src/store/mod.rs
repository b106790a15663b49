//! The store: current state per host, findings, baselines, credentials and the audit log.
//!
//! [`Store`] is the interface every backend implements: SQLite ([`sqlite`], the embedded default,
//! one collector) and PostgreSQL ([`postgres`], any number of collectors on one database). What a
//! report does to a host's state is decided once for both ([`state_changes`]); pages and cursors
//! are one ([`pages`]). Architecture invariants:
//! - the store keeps facts and applies decisions; it never decides what is a finding (the engine
//!   does) nor who may do what (`auth` does);
//! - secrets are stored only as SHA-256 hashes, in tables no query interface ever exposes;
//! - every method is one transaction: a report that fails half-way leaves nothing behind;
//! - nothing assumes a single collector: baselines are reread when `baselines_revision` moves, and
//!   what must happen once among collectors takes the store's turn ([`Store::host_turn`],
//!   [`Store::chores_turn`]).

pub mod pages;
pub mod postgres;
pub mod sqlite;
pub mod state_changes;

use std::collections::BTreeMap;

use async_trait::async_trait;
use hostwatch_proto::v1::Located;
use hostwatch_proto::v1::{AuditEntry, FindingKind, FindingStatus, Severity};
use ipnet::IpNet;
use prometheus_client::metrics::histogram::Histogram;
use time::OffsetDateTime;

use crate::model::{
    AlertEvent, Applied, ExecExplained, Finding, FindingChange, Host, HostFacts, HostState, Observation,
    PeerItems, ProcessEvent, Recorded, ReportRecord, Silence, SocketEvent,
};

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("the database's disk is full: {0}")]
    Full(String),
    #[error("database busy: {0}")]
    Busy(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "database schema version {found} is newer than this collector knows ({known}); upgrade the collector"
    )]
    TooNew { found: i64, known: i64 },
    #[error("not found: {0}")]
    NotFound(String),
    /// An analyst's SQL was refused or stopped: the message says why, in the analyst's terms.
    #[error("{0}")]
    Query(String),
}

impl StoreError {
    /// Whether the same call may succeed later (disk freed, lock released).
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Full(_) | StoreError::Busy(_))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A stored name of the contract's vocabulary (kind, severity, status) read back, whatever the
/// store; one that does not parse is corrupt data.
fn parse_enum<T: std::str::FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| StoreError::Corrupt(e.to_string()))
}

/// An API token as the store knows it (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_at: OffsetDateTime,
    pub created_by: String,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

/// An enroll secret as the store knows it (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub id: i64,
    pub name: String,
    /// Assigned to every host it enrolls.
    pub tags: BTreeMap<String, String>,
    pub created_at: OffsetDateTime,
    pub created_by: String,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    /// Hosts it enrolled.
    pub hosts: u64,
}

/// A host's tags three ways (see [`crate::tags`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostTags {
    /// What it is judged by.
    pub held: BTreeMap<String, String>,
    /// What its last report said.
    pub reported: BTreeMap<String, String>,
    /// What the enroll secret that enrolled it assigns.
    pub assigned: BTreeMap<String, String>,
}

/// A host to enroll, with its first node key.
#[derive(Debug, Clone)]
pub struct Enrollment<'a> {
    pub facts: &'a HostFacts,
    pub agent_version: &'a str,
    pub key_hash: &'a str,
    /// The enroll secret it enrolled with.
    pub enroll_secret: i64,
    /// The EC2 instance its signed identity document proved, where the collector checks them.
    pub verified_instance: Option<&'a str>,
    pub now: OffsetDateTime,
}

/// A credential to create: its stored form and who asked. Its creation is audited in the same
/// transaction.
#[derive(Debug, Clone)]
pub struct NewCredential<'a> {
    pub name: &'a str,
    pub hash: &'a str,
    pub created_by: &'a str,
    pub expires_at: Option<OffsetDateTime>,
    pub now: OffsetDateTime,
}

/// A stored baseline's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineRecord {
    pub name: String,
    pub source: String,
    pub applied_at: OffsetDateTime,
    pub applied_by: String,
}

/// Which findings to list: most severe first, then the most recently seen, then the newest.
#[derive(Debug, Clone, Default)]
pub struct FindingFilter {
    pub host_id: Option<i64>,
    pub kind: Option<FindingKind>,
    /// Empty: every status.
    pub statuses: Vec<FindingStatus>,
    /// This severity or worse.
    pub severity: Option<Severity>,
    /// Hosts judged as this workload.
    pub workload: Option<String>,
    /// Seen (last) at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// After this cursor: the `next` of the page before (`RANK/LAST_SEEN/ID`).
    pub after: Option<String>,
    pub limit: Option<u32>,
}

/// Which history to list, newest first, and which page.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub host_id: Option<i64>,
    /// Only events at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Processes: only this name.
    pub name: Option<String>,
    /// Files: only paths matching this glob (`*` matches any characters, `/` too).
    pub path: Option<String>,
    /// Processes: only this executable hash (lowercase hex).
    pub sha256: Option<String>,
    /// Processes and sockets: only executables matching this glob.
    pub exe: Option<String>,
    /// Sockets: only connections to an address in this block.
    pub remote: Option<IpNet>,
    /// Sockets: only connections to this remote port, or listeners on this local one.
    pub port: Option<u16>,
    /// After this cursor: the `next` of the page before.
    pub after: Option<String>,
    pub limit: u32,
}

/// Which current items of the fleet (processes, listeners, connections) to list, and which page.
/// Retired hosts are left out.
#[derive(Debug, Clone, Default)]
pub struct StateFilter {
    pub host_id: Option<i64>,
    /// Processes: this name exactly.
    pub name: Option<String>,
    /// Processes: this user name or uid.
    pub user: Option<String>,
    /// Processes: this executable hash (lowercase hex).
    pub sha256: Option<String>,
    /// Executables matching this glob (`*` matches any characters, `/` too).
    pub exe: Option<String>,
    /// Listeners: this local port; connections: this remote port.
    pub port: Option<u16>,
    /// Listeners: bound to this address.
    pub address: Option<std::net::IpAddr>,
    /// Listeners: only those whose probe found they answer without credentials (anyone, or this
    /// host's clients).
    pub unauthenticated: bool,
    /// Connections: to an address in this block.
    pub remote: Option<IpNet>,
    pub protocol: Option<hostwatch_proto::v1::Protocol>,
    pub direction: Option<hostwatch_proto::v1::Direction>,
    /// After this cursor: the `next` of the page before.
    pub after: Option<String>,
    pub limit: u32,
}

/// Which hosts [`Store::hosts_page`] lists, in id order.
#[derive(Debug, Clone, Default)]
pub struct HostFilter {
    /// Only hosts of these statuses at `now`; none given: every status but retired, unless `all`.
    pub statuses: Vec<hostwatch_proto::v1::HostStatus>,
    /// Retired hosts too (when no status is given).
    pub all: bool,
    /// Only hosts judged as this workload.
    pub workload: Option<String>,
    /// Only hosts judged by every one of these tags.
    pub tags: Vec<(String, String)>,
    /// The instant and the collector's `offline_after` the statuses are taken at
    /// ([`crate::model::online_since`]).
    pub now: Option<OffsetDateTime>,
    pub offline_after: Option<std::time::Duration>,
    /// After this cursor: the `next` of the page before.
    pub after: Option<String>,
    pub limit: u32,
}

/// A severity's place in [`FindingFilter`]'s order (info 0 to critical 4), as the findings
/// listing's cursor writes it.
pub fn severity_rank(s: Severity) -> u8 {
    match s {
        Severity::Info => 0,
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

/// A block as written: `10.0.0.0/8`, `2001:db8::/32`, or one address.
pub fn parse_net(s: &str) -> std::result::Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not an address or a CIDR block (write 10.0.0.0/8 or 2001:db8::/32)"))
}

/// A u64 of the wire (a namespace, a size) in a signed 64-bit column, keeping its bits: an
/// agent may send any u64, and it reads back as it was sent ([`unbits`]), where a conversion
/// would refuse the report.
pub fn bits(v: u64) -> i64 {
    v as i64
}

/// A u64 stored by [`bits`].
pub fn unbits(v: i64) -> u64 {
    v as u64
}

/// One page of a listing, in the listing's order, and the cursor of the next page when there is
/// more. Keyset pages: every row that stays while a listing is paged through is on exactly one
/// page, however the rows around it change.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The longest statement [`Store::query`] takes, whatever the store.
pub const MAX_SQL_BYTES: usize = 100_000;

/// The views an analyst's query may read, whatever the store: the names of the contract.
pub const QUERY_VIEWS: &[&str] = &[
    "hosts",
    "processes",
    "listeners",
    "connections",
    "files",
    "file_changes",
    "process_events",
    "socket_events",
    "findings",
];

/// An analyst's statement as every store runs it: trimmed, without a final `;`, not empty, not
/// longer than [`MAX_SQL_BYTES`].
pub fn query_text(sql: &str) -> Result<&str> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    if sql.is_empty() {
        return Err(StoreError::Query("the query is empty".to_owned()));
    }
    if sql.len() > MAX_SQL_BYTES {
        return Err(StoreError::Query(format!("the query is longer than {MAX_SQL_BYTES} bytes")));
    }
    Ok(sql)
}

/// What an analyst's read-only SQL may take ([`Store::query`]).
#[derive(Debug, Clone)]
pub struct QueryTerms {
    /// Stopped after this long.
    pub timeout: std::time::Duration,
    /// Rows returned at most; beyond, the result says it was cut.
    pub max_rows: u64,
    /// Bytes of values returned at most (about); beyond, the result says it was cut.
    pub max_bytes: usize,
    /// The collector's `offline_after`, for the hosts view's status.
    pub offline_after: Option<std::time::Duration>,
}

/// What a query returned: its columns and rows, and whether the limits cut it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
    pub truncated: bool,
}

/// How long store calls waited for the store and held it: the store measures, `/metrics` shows
/// ([`crate::metrics`]). Clones share the histograms.
#[derive(Debug, Clone)]
pub struct StoreTimings {
    pub wait: Histogram,
    pub transaction: Histogram,
}

impl Default for StoreTimings {
    fn default() -> Self {
        StoreTimings {
            wait: Histogram::new(crate::metrics::latency_buckets()),
            transaction: Histogram::new(crate::metrics::latency_buckets()),
        }
    }
}

/// What `/metrics` reads of the fleet from the store when scraped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Open and acknowledged findings: (kind, severity, status, how many).
    pub findings: Vec<(FindingKind, Severity, FindingStatus, u64)>,
    /// Alert events after each sink's cursor.
    pub outbox: Vec<(String, u64)>,
    /// Bytes the embedded database holds in this process (SQLite's page caches and statements,
    /// every connection's): bounded by `cache_size` per connection. None where the database is a
    /// server of its own (PostgreSQL).
    pub memory: Option<u64>,
}

/// What the collector decides about a report, for [`Store::record_report`] to apply in the
/// report's own transaction: the store holds the facts these decisions need and applies them, it
/// never makes them.
pub struct ReportTerms {
    /// The tags the host is to be judged by, from its tags as stored and as reported
    /// ([`crate::tags`]); `None`: as reported.
    #[allow(clippy::type_complexity)]
    pub judge_tags: Option<Box<dyn FnOnce(&HostTags) -> BTreeMap<String, String> + Send>>,
    /// Kinds of finding any report from the host resolves (it is reporting: not offline).
    pub resolves: Vec<FindingKind>,
    /// Findings the outcome itself calls for (reports lost, two agents under one node key).
    #[allow(clippy::type_complexity)]
    pub findings_for: Option<Box<dyn FnOnce(&Applied, &Recorded) -> Vec<Observation> + Send>>,
    /// The host's budget of new findings a minute.
    pub limit: u32,
}

impl Default for ReportTerms {
    fn default() -> Self {
        ReportTerms { judge_tags: None, resolves: Vec::new(), findings_for: None, limit: u32::MAX }
    }
}

/// What [`Store::record_report`] did.
#[derive(Debug)]
pub struct ReportOutcome {
    pub applied: Applied,
    pub recorded: Recorded,
    /// The host's tags as they were before the report.
    pub tags_before: HostTags,
    /// The host as the report left it.
    pub host: Host,
    /// Findings the terms resolved and recorded.
    pub changes: Vec<FindingChange>,
}

/// The engine's verdict on one host, for [`Store::apply_verdict`].
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// The workload it was judged as, if one.
    pub workload: Option<String>,
    /// What its state and recorded starts call for.
    pub observed: Vec<Observation>,
    /// Kinds whose findings resolve when no longer observed.
    pub state_kinds: Vec<FindingKind>,
    /// Findings kept until acknowledged, that resolve nothing by their absence (file changes).
    pub kept: Vec<Observation>,
    /// Execs that needed no finding, and why.
    pub explained: Vec<ExecExplained>,
}

/// A turn held in a store ([`Store::host_turn`], [`Store::chores_turn`]), given up on drop.
pub type Turn = Box<dyn std::any::Any + Send + Sync>;

/// Everything a collector needs from its store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- credentials (only `auth`, bootstrap and the admin's API call these) ----
    /// Tokens not revoked (expired ones included: they are still there to be renewed).
    async fn count_api_tokens(&self) -> Result<u64>;
    /// Creates a token with `role`, audited as `create_token`.
    async fn create_api_token(&self, new: &NewCredential<'_>, role: &str) -> Result<TokenRecord>;
    /// The token with this hash, whatever its state (`auth` says why one no longer works).
    async fn find_api_token(&self, hash: &str) -> Result<Option<TokenRecord>>;
    async fn api_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Revokes a token, audited as `revoke_token` by `actor`; `None` if there is no such token.
    /// Revoking a revoked token changes nothing and is not audited again.
    async fn revoke_api_token(
        &self,
        id: i64,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<TokenRecord>>;
    async fn count_enroll_secrets(&self) -> Result<u64>;
    /// Creates an enroll secret that assigns `tags`, audited as `create_secret`.
    async fn create_enroll_secret(
        &self,
        new: &NewCredential<'_>,
        tags: &BTreeMap<String, String>,
    ) -> Result<SecretRecord>;
    /// The enroll secret with this hash, whatever its state.
    async fn find_enroll_secret(&self, hash: &str) -> Result<Option<SecretRecord>>;
    async fn enroll_secrets(&self) -> Result<Vec<SecretRecord>>;
    /// Revokes an enroll secret (hosts it enrolled keep their node keys), audited as
    /// `revoke_secret`; `None` if there is no such secret.
    async fn revoke_enroll_secret(
        &self,
        id: i64,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<SecretRecord>>;
    /// The host of a node key that exists and is not revoked, unless the host is retired.
    async fn find_node_key(&self, hash: &str) -> Result<Option<i64>>;
    /// Revokes every node key of a host at once, audited as `revoke_host`; how many worked until
    /// now, `None` if there is no such host.
    async fn revoke_host_keys(&self, host_id: i64, actor: &str, now: OffsetDateTime) -> Result<Option<u64>>;

    // ---- agents ----
    /// Enrolls a new host with its first node key. Never reuses a host: the machine id an agent
    /// claims is not proof, so a second enrollment under one machine id is a second host (which the
    /// engine flags as `duplicate_identity`), never a takeover of the first.
    async fn enroll_host(&self, e: &Enrollment<'_>) -> Result<i64>;
    /// The EC2 instance id a host proved at enrollment, if it did.
    async fn verified_instance(&self, host_id: i64) -> Result<Option<String>>;
    /// Takes a host's turn among every collector on this store, held until the value returned
    /// drops: a report and its verdict, and the chores of a host, run one at a time per host
    /// whichever collector runs them. `None`: a store only one collector uses, where the
    /// collector's own turn is enough. A collector that dies holding a turn gives it up.
    async fn host_turn(&self, host_id: i64) -> Result<Option<Turn>>;
    /// Takes the turn of the periodic chores among every collector on this store, held until
    /// the value returned drops; `None` while another collector does them.
    async fn chores_turn(&self) -> Result<Option<Turn>>;
    /// Records a report, in one transaction with everything `terms` asks of it: host facts (with
    /// the tags `terms` judges it by), agent status and last_seen always; its content once, by
    /// the session's sequence numbers: a replay (a number already applied) changes nothing; a
    /// snapshot replaces the state; a delta changes it, and if it does not follow the last report
    /// applied (a gap, or a session without a snapshot) the outcome asks for a snapshot. State
    /// changes write history, and every start written to the history (an exec, a socket opened)
    /// is returned, for the engine to judge once. Then the findings of `terms.resolves` are
    /// resolved and those `terms.findings_for` calls for are recorded.
    async fn record_report(
        &self,
        host_id: i64,
        report: ReportRecord,
        now: OffsetDateTime,
        terms: ReportTerms,
    ) -> Result<ReportOutcome>;

    // ---- state and findings ----
    async fn host_state(&self, host_id: i64) -> Result<HostState>;
    /// Applies the engine's verdict for one host in one transaction, as [`crate::findings`]
    /// decides: opens, refreshes or reopens a finding for every observation (at most `limit` new
    /// ones of medium severity or less a minute, the rest counted in `findings_held_back`),
    /// resolves open or acknowledged findings of `state_kinds` that are no longer observed (never
    /// a transient one), records the host's workload, then the verdict's findings that resolve
    /// nothing (file changes) and why each explained exec needed no finding (an exec the history
    /// does not hold is left alone).
    async fn apply_verdict(
        &self,
        host_id: i64,
        verdict: Verdict,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<Vec<FindingChange>>;

    /// Retires a host: hidden from default listings, its open and acknowledged findings resolved,
    /// its node keys refused from then on.
    async fn retire_host(&self, host_id: i64, now: OffsetDateTime) -> Result<Vec<FindingChange>>;
    /// Hosts running a process that has been above the high-CPU threshold since a time in
    /// `(from, to]`.
    async fn hosts_running_hot(&self, from: OffsetDateTime, to: OffsetDateTime) -> Result<Vec<i64>>;

    /// Every non-retired host of `workload` with the items peers are compared by ([`crate::peers`]
    /// counts them).
    async fn peer_items(&self, workload: &str) -> Result<std::collections::HashMap<i64, PeerItems>>;

    // ---- triage and alerts ----
    /// Acknowledges an open (or acknowledged) finding with a note; the finding as it now is,
    /// `None` if there is none with that id. A resolved finding is returned as it is.
    async fn acknowledge(
        &self,
        id: i64,
        actor: &str,
        note: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<Finding>>;
    async fn create_silence(&self, silence: &Silence) -> Result<i64>;
    /// Silences ending after `after` (every one, if `None`), newest first.
    async fn silences(&self, after: Option<OffsetDateTime>) -> Result<Vec<Silence>>;
    /// Takes or renews `holder`'s lease on sink `sink`'s place in the alert outbox until
    /// `until`; the last event delivered, or `None` while another collector holds it. A new
    /// sink starts at the end of the outbox.
    async fn lease_alert_cursor(
        &self,
        sink: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Option<i64>>;
    /// Records that `sink` delivered everything up to `last_id`, if `holder` still holds it.
    async fn advance_alert_cursor(&self, sink: &str, holder: &str, last_id: i64) -> Result<bool>;
    /// Outbox events after `after`, oldest first, at most `limit`.
    async fn alert_events(&self, after: i64, limit: u32) -> Result<Vec<AlertEvent>>;
    /// Deletes what every sink has delivered, then the oldest beyond `max`; (delivered, dropped).
    async fn prune_alert_events(&self, max: u64, now: OffsetDateTime) -> Result<(u64, u64)>;

    // ---- queries ----
    async fn list_hosts(&self) -> Result<Vec<Host>>;
    /// A page of the hosts a person asked for, filtered in the store.
    async fn hosts_page(&self, filter: &HostFilter) -> Result<Page<Host>>;
    /// Findings by kind, severity and status, and each sink's outbox, for `/metrics`.
    async fn fleet_counts(&self) -> Result<FleetCounts>;
    /// The store's own timings, shared with `/metrics`.
    fn timings(&self) -> StoreTimings;
    async fn host(&self, id: i64) -> Result<Option<Host>>;
    /// Ids of non-retired hosts with this machine id and cloud instance id (none: off a cloud)
    /// that still have a working node key (a host whose keys were revoked and that enrolled
    /// again is not two hosts at once; instances of one image with a baked machine id differ by
    /// instance id).
    async fn hosts_with_machine_id(&self, machine_id: &str, instance_id: Option<&str>) -> Result<Vec<i64>>;
    /// Opens, refreshes or reopens findings for `observed` without resolving anything, within the
    /// same budget as [`Store::reconcile_findings`]: for findings filed outside a host's state
    /// evaluation (such as at enrollment).
    async fn record_findings(
        &self,
        host_id: i64,
        observed: &[Observation],
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<Vec<FindingChange>>;
    /// Ids of non-retired hosts with this hostname.
    async fn hosts_named(&self, hostname: &str) -> Result<Vec<i64>>;
    /// Findings most severe first, then the most recently seen; a page when `filter.limit` says.
    async fn list_findings(&self, filter: &FindingFilter) -> Result<Page<Finding>>;
    /// Running processes of the fleet, by host and pid.
    async fn list_processes(&self, filter: &StateFilter) -> Result<Page<Located<crate::model::Process>>>;
    /// Listening sockets of the fleet, by host.
    async fn list_listeners(&self, filter: &StateFilter) -> Result<Page<Located<crate::model::Listener>>>;
    /// Connections of the fleet, by host.
    async fn list_connections(&self, filter: &StateFilter)
    -> Result<Page<Located<crate::model::Connection>>>;
    /// Processes that started and ended, newest first.
    async fn process_events(&self, filter: &HistoryFilter) -> Result<Page<ProcessEvent>>;
    /// Listeners and connections that opened and closed, newest first.
    async fn socket_events(&self, filter: &HistoryFilter) -> Result<Page<SocketEvent>>;
    /// Changes to watched files, newest first.
    async fn file_events(&self, filter: &HistoryFilter) -> Result<Page<hostwatch_proto::v1::FileEvent>>;
    /// The latest state of each changed watched path, most recently changed first (`since` on
    /// when it changed).
    async fn current_files(&self, filter: &HistoryFilter) -> Result<Page<hostwatch_proto::v1::FileRecord>>;

    // ---- baselines ----
    /// Stores or replaces a baseline by name and moves the baselines revision.
    async fn put_baseline(&self, name: &str, source: &str, actor: &str, now: OffsetDateTime) -> Result<()>;
    async fn baselines(&self) -> Result<Vec<BaselineRecord>>;
    async fn baselines_revision(&self) -> Result<i64>;

    // ---- audit ----
    async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<()>;
    /// Deletes history (process and socket events, file changes) from before `before`: at most
    /// `max` rows of each, oldest first, in one short write; how many went. Called again until it
    /// returns 0, so that a large backlog never holds the writer for long.
    async fn prune_history(&self, before: OffsetDateTime, max: u32) -> Result<u64>;

    /// Runs one read-only statement of an analyst over the documented views only, on connections
    /// of its own: anything else (a write, a table, a pragma) is refused with
    /// [`StoreError::Query`] naming it, as is a query past `terms.timeout`.
    async fn query(&self, sql: &str, terms: QueryTerms) -> Result<QueryRows>;

    /// The audit trail, newest first: entries at or after `since`, at most `limit`.
    async fn audit_entries(&self, since: Option<OffsetDateTime>, limit: u32) -> Result<Vec<AuditEntry>>;
}
