//! Version 1 of the wire contract, served under [`API_PREFIX`].

mod api;
mod cloud;
mod credentials;
mod delta;
mod enroll;
mod file;
mod finding;
mod process;
mod report;
mod socket;
pub mod timestamp;
mod validate;

pub use api::{
    ApplyBaseline, BaselineSummary, ErrorBody, FileEvent, FileRecord, Host, HostDetail, HostStatus,
    LearnedBaseline, Located, ProcessEvent, QueryRequest, QueryResult, SocketEvent,
};
pub use cloud::{CloudFacts, CloudProvider};
pub use credentials::{
    AuditEntry, CreateSecret, CreateToken, CreatedSecret, CreatedToken, CredentialState, HostRevoked,
    MAX_EXPIRES_SECS, SecretInfo, TokenInfo,
};
pub use delta::{Changes, ConnectionKey, Delta, ListenerKey, PassedExec, ProcessKey, Removed, UnreadExec};
pub use enroll::{EnrollRequest, EnrollResponse, InstanceIdentity};
pub use file::{ChangeOrigin, FileChange, FileChangeKind, FileKind, FileState, FileStats, PackageMatch};
pub use finding::{Ack, CreateSilence, Finding, FindingKind, FindingStatus, Severity, Silence, UnknownName};
pub use process::{Ancestor, ExeReplacement, INTERACTIVE, Process, is_interactive};
pub use report::{
    AgentStats, AgentStatus, Coverage, CoverageState, Goodbye, HostFacts, Report, ReportResponse, Snapshot,
};
pub use socket::{
    AuthVerdict, Connection, Direction, Listener, ListenerAuth, MAX_AUTH_REASON_BYTES, Protocol,
};
pub use validate::{Validate, ValidationError, invisible, limits, tags as check_tags};

/// Prefix of every v1 endpoint.
pub const API_PREFIX: &str = "/api/v1";
/// `POST`: an enroll secret and host facts in, a node key out ([`EnrollRequest`], [`EnrollResponse`]).
pub const ENROLL_PATH: &str = "/api/v1/enroll";
/// `POST` with the node key as bearer token: a [`Report`] in, a [`ReportResponse`] out.
pub const REPORT_PATH: &str = "/api/v1/report";
/// `GET`: [`Host`] list; `GET {HOSTS_PATH}/{id}`: one [`HostDetail`].
/// `POST {HOSTS_PATH}/{host}/revoke` (admin): the host's node keys stop working at once
/// ([`HostRevoked`]).
pub const HOSTS_PATH: &str = "/api/v1/hosts";
/// `GET`: every host's processes as [`Located`] [`Process`]es; query `host`, `name`, `user`.
pub const PROCESSES_PATH: &str = "/api/v1/processes";
/// `GET`: every host's listeners; query `host`, `port`, `protocol`.
pub const LISTENERS_PATH: &str = "/api/v1/listeners";
/// `GET`: every host's connections; query `host`, `port` (remote), `direction`.
pub const CONNECTIONS_PATH: &str = "/api/v1/connections";
/// `GET`: [`ProcessEvent`]s, newest first; query `host`, `since` (a duration back, as `1h`),
/// `name`, `limit`.
pub const PROCESS_HISTORY_PATH: &str = "/api/v1/history/processes";
/// `GET`: [`SocketEvent`]s, newest first; query `host`, `since`, `limit`.
pub const SOCKET_HISTORY_PATH: &str = "/api/v1/history/sockets";
/// `GET`: [`FileEvent`]s, newest first; query `host`, `since`, `path` (a glob: `*` matches any
/// characters, `/` too), `limit`.
pub const FILES_PATH: &str = "/api/v1/files";
/// `GET`: [`FileRecord`]s, the latest state of each changed path, most recently changed first;
/// query as [`FILES_PATH`] (`since` on when it changed).
pub const CURRENT_FILES_PATH: &str = "/api/v1/files/current";
/// `GET`: [`Finding`] list, filtered by the query parameters `host`, `kind` and `status`.
pub const FINDINGS_PATH: &str = "/api/v1/findings";
/// `GET`: [`BaselineSummary`] list; `POST` an [`ApplyBaseline`] (admin) to store or replace one.
pub const BASELINES_PATH: &str = "/api/v1/baselines";
/// `GET ?host=H|selector=k=v[,k=v]&since=DUR&name=N`: a baseline learned from what hosts ran.
pub const LEARN_PATH: &str = "/api/v1/baselines/learn";
/// `GET` the silences in force or to come; `POST` a new one (analyst).
pub const SILENCES_PATH: &str = "/api/v1/silences";
/// `GET`: API tokens ([`TokenInfo`]); `POST`: create one ([`CreateToken`] in, [`CreatedToken`]
/// out). `POST {TOKENS_PATH}/{id}/revoke` revokes one. Admin only.
pub const TOKENS_PATH: &str = "/api/v1/tokens";
/// `GET`: enroll secrets ([`SecretInfo`]); `POST`: create one ([`CreateSecret`] in,
/// [`CreatedSecret`] out). `POST {SECRETS_PATH}/{id}/revoke` revokes one. Admin only.
pub const SECRETS_PATH: &str = "/api/v1/secrets";
/// `GET`: the audit trail, newest first ([`AuditEntry`]; `?since=24h&limit=N`). Admin only.
pub const AUDIT_PATH: &str = "/api/v1/audit";
/// `POST`: one read-only SQL statement over the documented views (analyst).
pub const QUERY_PATH: &str = "/api/v1/query";
/// The response header of a listing's page that holds the cursor of the next page (absent on
/// the last): the same request with `cursor=` that value gives it. Listings take `limit` (1 to
/// 100,000 rows a page; default 1,000).
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";
/// `GET`: process liveness, no authentication.
pub const HEALTHZ_PATH: &str = "/healthz";
/// `GET`: the collector's counters in Prometheus text format, no authentication.
pub const METRICS_PATH: &str = "/metrics";

/// Header of `POST` [`REPORT_PATH`]: how many reports the agent had spooled behind this one when
/// it sent it (a decimal number; absent: none). A report sent from a backlog describes the past:
/// an item it starts that one of the next `backlog` reports ends was gone before the collector
/// could judge it alive, and is judged transient.
pub const BACKLOG_HEADER: &str = "hostwatch-backlog";
/// The largest [`BACKLOG_HEADER`] a collector accepts: more reports than any spool holds.
pub const MAX_BACKLOG: u64 = 10_000_000;

/// Every node key starts with this, so that secret scanners and people can tell what leaked.
pub const NODE_KEY_PREFIX: &str = "hwn_";
/// Every API token starts with this.
pub const API_TOKEN_PREFIX: &str = "hwt_";
/// Every enroll secret starts with this.
pub const ENROLL_SECRET_PREFIX: &str = "hwe_";
