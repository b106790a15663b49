//! The collector's configuration: `/etc/hostwatch/server.toml`, then `HOSTWATCH_*` variables over
//! it (the same loader as the agent's), then validation into [`ServerConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostwatch_agent::shared::config::env::{EnvKey, EnvKind};
use hostwatch_agent::shared::config::{ConfigError, Sourced};
use serde::{Deserialize, Deserializer};

use crate::alerts::{SinkConfig, Target};
use crate::cloud_identity::AwsIdentity;
use crate::listen::ConnLimits;
use crate::state::{Limits, QueryLimits};
use crate::tags::TagPolicy;
use crate::tls::TlsFiles;

/// Where `hostwatch serve` looks for its file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/hostwatch/server.toml";

/// The agent's default state directory, which the collector must never use as its own.
const AGENT_STATE_DIR: &str = "/var/lib/hostwatch";

/// Every key the environment can set.
pub const ENV_KEYS: &[EnvKey] = &[
    EnvKey { var: "HOSTWATCH_LISTEN", path: &["listen"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_API_LISTEN", path: &["api_listen"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_DATABASE", path: &["database"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_QUERY_DATABASE", path: &["query_database"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_DATABASE_CA", path: &["database_ca"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_DATA_DIR", path: &["data_dir"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_BASELINES_DIR", path: &["baselines_dir"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_OFFLINE_AFTER", path: &["offline_after"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_RETIRE_AFTER", path: &["retire_after"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_RETENTION", path: &["retention"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_QUERY_TIMEOUT", path: &["query", "timeout"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_QUERY_MAX_ROWS", path: &["query", "max_rows"], kind: EnvKind::Int },
    EnvKey { var: "HOSTWATCH_MAX_REPORT_BYTES", path: &["max_report_bytes"], kind: EnvKind::Int },
    EnvKey { var: "HOSTWATCH_MAX_CONCURRENT_REPORTS", path: &["max_concurrent_reports"], kind: EnvKind::Int },
    EnvKey { var: "HOSTWATCH_TLS_CERT", path: &["tls", "cert"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_TLS_KEY", path: &["tls", "key"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_TLS_CLIENT_CA", path: &["tls", "client_ca"], kind: EnvKind::Str },
    EnvKey {
        var: "HOSTWATCH_LIMITS_MAX_CONNECTIONS",
        path: &["limits", "max_connections"],
        kind: EnvKind::Int,
    },
    EnvKey {
        var: "HOSTWATCH_LIMITS_MAX_CONNECTIONS_PER_ADDRESS",
        path: &["limits", "max_connections_per_address"],
        kind: EnvKind::Int,
    },
    EnvKey {
        var: "HOSTWATCH_LIMITS_HEADER_TIMEOUT",
        path: &["limits", "header_timeout"],
        kind: EnvKind::Str,
    },
    EnvKey {
        var: "HOSTWATCH_LIMITS_MAX_HEADER_BYTES",
        path: &["limits", "max_header_bytes"],
        kind: EnvKind::Int,
    },
    EnvKey { var: "HOSTWATCH_LIMITS_BODY_TIMEOUT", path: &["limits", "body_timeout"], kind: EnvKind::Str },
    EnvKey {
        var: "HOSTWATCH_LIMITS_MAX_BODY_BYTES_IN_FLIGHT",
        path: &["limits", "max_body_bytes_in_flight"],
        kind: EnvKind::Int,
    },
    EnvKey {
        var: "HOSTWATCH_LIMITS_REPORTS_PER_HOST_PER_MINUTE",
        path: &["limits", "reports_per_host_per_minute"],
        kind: EnvKind::Int,
    },
    EnvKey {
        var: "HOSTWATCH_LIMITS_ENROLLMENTS_PER_ADDRESS_PER_MINUTE",
        path: &["limits", "enrollments_per_address_per_minute"],
        kind: EnvKind::Int,
    },
    EnvKey {
        var: "HOSTWATCH_CLOUD_AWS_IDENTITY_CERTIFICATES",
        path: &["cloud", "aws_identity_certificates"],
        kind: EnvKind::Str,
    },
    EnvKey {
        var: "HOSTWATCH_FINDINGS_MAX_NEW_PER_HOST_PER_MINUTE",
        path: &["findings", "max_new_per_host_per_minute"],
        kind: EnvKind::Int,
    },
];

/// Variables the `hostwatch` binary reads that are not collector keys (the CLI's, logging, and
/// the cloud keys that `serve --dev` hands to its in-process agent).
pub const OTHER_VARS: &[&str] = &[
    "HOSTWATCH_ALLOW_INSECURE_HTTP",
    "HOSTWATCH_CA_CERT",
    "HOSTWATCH_CLOUD_ENDPOINT",
    "HOSTWATCH_CLOUD_PROVIDER",
    "HOSTWATCH_CONFIG",
    "HOSTWATCH_LOG",
    "HOSTWATCH_LOG_FORMAT",
    "HOSTWATCH_SERVER",
    "HOSTWATCH_TOKEN",
    "HOSTWATCH_TOKEN_FILE",
];

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerConfig {
    /// Address for agents (enroll, report).
    #[serde(default = "default_listen")]
    listen: String,
    /// Address for people and tools (the API); default: the same listener as agents.
    #[serde(default)]
    api_listen: Option<String>,
    /// A SQLite file path (or `sqlite://PATH`), or a PostgreSQL URL (`postgres://…`) that
    /// several collectors share; default `DATA_DIR/hostwatch.db`.
    #[serde(default)]
    database: Option<String>,
    /// With PostgreSQL: the URL of the role analysts' SQL runs as (`hostwatch query`), which
    /// may read only the views (docs/scaling.md); without it, read-only SQL is refused.
    #[serde(default)]
    query_database: Option<String>,
    /// With PostgreSQL on the network: the CA certificates (PEM) its certificate is verified
    /// against; default: the system's.
    #[serde(default)]
    database_ca: Option<PathBuf>,
    /// The collector's own state: database, bootstrap credentials.
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    /// Baseline files (`*.toml`) applied to the store at every start.
    #[serde(default)]
    baselines_dir: Option<PathBuf>,
    /// A host is offline after this much silence; default: 3 of its own intervals, at least 30s.
    #[serde(default, deserialize_with = "opt_duration")]
    offline_after: Option<Duration>,
    /// A host silent (or stopped) this long is retired: hidden from default listings, its
    /// findings closed.
    #[serde(
        default = "default_retire_after",
        deserialize_with = "hostwatch_agent::shared::config::duration"
    )]
    retire_after: Duration,
    /// History (process and socket events, file changes) older than this is pruned.
    #[serde(default = "default_retention", deserialize_with = "hostwatch_agent::shared::config::duration")]
    retention: Duration,
    /// What `hostwatch query` may take.
    #[serde(default)]
    query: RawQuery,
    /// Largest report body accepted, in bytes.
    #[serde(default = "default_max_report_bytes")]
    max_report_bytes: u64,
    /// Reports read and processed at once; more wait (up to 10 s, then 503). With
    /// `max_report_bytes` it bounds the memory agents can make the collector use.
    #[serde(default = "default_max_concurrent_reports")]
    max_concurrent_reports: u32,
    /// Alert sinks; arrays of tables are for files only.
    #[serde(default)]
    alerts: Vec<RawAlert>,
    /// How findings are filed.
    #[serde(default)]
    findings: RawFindings,
    /// HTTPS instead of HTTP.
    #[serde(default)]
    tls: RawTls,
    /// What one caller may take of the collector.
    #[serde(default)]
    limits: RawLimits,
    /// How far hosts' own word on their tags is trusted.
    #[serde(default)]
    tags: RawTags,
    /// What the collector checks of hosts' cloud claims.
    #[serde(default)]
    cloud: RawCloud,
}

/// `[query]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuery {
    /// A query is stopped after this long (default 30s).
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
    /// Rows returned at most (default 100000); the answer says when it was cut.
    max_rows: Option<u64>,
}

/// `[cloud]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    /// AWS's public certificates for the instance identity document's signature (PEM, one per
    /// region): enrollments claiming an EC2 instance must prove it.
    aws_identity_certificates: Option<PathBuf>,
}

/// `[tags]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTags {
    /// Keys whose values follow what agents report after they enrolled (`["*"]`: every key).
    /// Other keys keep the value reported at enrollment; an enroll secret's tags beat both.
    #[serde(default)]
    from_agents: TagPolicy,
}

/// `[tls]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// The certificate chain, leaf first (PEM).
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    key: Option<PathBuf>,
    /// Mutual TLS: agents must present a certificate from this CA (PEM); needs `api_listen`.
    client_ca: Option<PathBuf>,
}

/// `[limits]` as written; every key defaults to [`ConnLimits::default`] or [`Limits::default`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<u32>,
    max_connections_per_address: Option<u32>,
    #[serde(default, deserialize_with = "opt_duration")]
    header_timeout: Option<Duration>,
    max_header_bytes: Option<u64>,
    #[serde(default, deserialize_with = "opt_duration")]
    body_timeout: Option<Duration>,
    max_body_bytes_in_flight: Option<u64>,
    reports_per_host_per_minute: Option<u32>,
    enrollments_per_address_per_minute: Option<u32>,
}

/// `[findings]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFindings {
    /// New findings of medium severity or less that one host may open in a minute; beyond it they
    /// are counted in one `findings_held_back` finding (built-in rules' findings and high or
    /// critical ones are never held back).
    #[serde(default = "default_max_new_per_host_per_minute")]
    max_new_per_host_per_minute: u32,
}

impl Default for RawFindings {
    fn default() -> Self {
        RawFindings { max_new_per_host_per_minute: default_max_new_per_host_per_minute() }
    }
}

fn default_max_new_per_host_per_minute() -> u32 {
    100
}

/// One `[[alerts]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    /// `file`, `stdout` or `webhook`.
    #[serde(rename = "type")]
    kind: String,
    /// Unique among the sinks; default `TYPE-N` (N counts from 1 in the file's order).
    #[serde(default)]
    name: Option<String>,
    /// `file`: where the JSON lines go.
    #[serde(default)]
    path: Option<PathBuf>,
    /// `webhook`: where events are POSTed (http or https).
    #[serde(default)]
    url: Option<String>,
    /// `webhook`: `json` (default) or `slack` (`{"text": ...}`).
    #[serde(default)]
    format: Option<String>,
    /// Findings below this severity are not sent (default `info`: all).
    #[serde(default)]
    min_severity: Option<String>,
    /// Also send resolutions.
    #[serde(default)]
    resolved: bool,
}

fn default_retire_after() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_retention() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/hostwatch-server")
}

/// 8 MiB: a host with 10,000 processes with long command lines sends about 4.
fn default_max_report_bytes() -> u64 {
    8 << 20
}

fn default_max_concurrent_reports() -> u32 {
    4
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    hostwatch_agent::shared::config::duration(d).map(Some)
}

/// Where the collector keeps its store.
#[derive(Debug, Clone, PartialEq)]
pub enum Database {
    /// A SQLite file: one collector.
    Sqlite(PathBuf),
    /// A PostgreSQL database several collectors share, and the analysts' role (`query_database`).
    Postgres { url: DatabaseUrl, query_url: Option<DatabaseUrl>, ca_file: Option<PathBuf> },
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres { url, .. } => write!(f, "{url}"),
        }
    }
}

/// A database URL, shown (Debug, Display, logs, errors) without its password.
#[derive(Clone, PartialEq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL with its password, for the connection alone.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `scheme://user:password@rest`: the password hidden; `password=` parameters too.
        let s = &self.0;
        let (scheme, rest) = s.split_once("://").unwrap_or(("", s));
        let rest = match rest.split_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => rest.to_owned(),
            },
            None => rest.to_owned(),
        };
        let shown: Vec<String> = rest
            .split('&')
            .map(|part| match part.split_once("password=") {
                Some((before, _)) => format!("{before}password=***"),
                None => part.to_owned(),
            })
            .collect();
        if scheme.is_empty() {
            write!(f, "{}", shown.join("&"))
        } else {
            write!(f, "{scheme}://{}", shown.join("&"))
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// The configuration the collector runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None`: the API is served on `listen` too.
    pub api_listen: Option<SocketAddr>,
    pub database: Database,
    pub data_dir: PathBuf,
    pub baselines_dir: Option<PathBuf>,
    pub offline_after: Option<Duration>,
    pub retire_after: Duration,
    /// History older than this is pruned.
    pub retention: Duration,
    /// `[query]`.
    pub query: QueryLimits,
    pub max_report_bytes: usize,
    pub max_concurrent_reports: usize,
    pub alerts: Vec<SinkConfig>,
    /// `[findings] max_new_per_host_per_minute`.
    pub max_new_findings_per_minute: u32,
    /// `[tls]`; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// `[limits]`: the listeners' terms.
    pub conn_limits: ConnLimits,
    /// `[limits]`: bodies and rates.
    pub limits: Limits,
    /// `[tags] from_agents`.
    pub tag_policy: TagPolicy,
    /// `[cloud] aws_identity_certificates`, loaded.
    pub aws_identity: Option<AwsIdentity>,
}

/// A configuration and the warnings worth logging about it.
#[derive(Debug)]
pub struct Loaded {
    pub config: ServerConfig,
    pub warnings: Vec<String>,
}

impl ServerConfig {
    /// Loads the file at `path` (none: defaults only) and lays `vars` over it.
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let sourced = Sourced::<RawServerConfig>::load(path, vars, ENV_KEYS, OTHER_VARS)?;
        let invalid = |var: &str, key: &str, problem: String| sourced.invalid(var, key, problem);
        let raw = &sourced.raw;
        let addr = |s: &str, var, key| {
            s.parse::<SocketAddr>().map_err(|_| {
                invalid(var, key, format!("{s:?} is not an address:port (write 127.0.0.1:8080 or [::]:8080)"))
            })
        };
        let listen = addr(&raw.listen, "HOSTWATCH_LISTEN", "listen")?;
        let api_listen =
            raw.api_listen.as_deref().map(|s| addr(s, "HOSTWATCH_API_LISTEN", "api_listen")).transpose()?;
        // The same fixed address twice is one listener; two port-0 addresses are two listeners.
        let api_listen = api_listen.filter(|a| *a != listen || a.port() == 0);
        if raw.data_dir.starts_with(AGENT_STATE_DIR) {
            return Err(invalid(
                "HOSTWATCH_DATA_DIR",
                "data_dir",
                format!(
                    "{} is in the agent's state directory {AGENT_STATE_DIR}; give the collector its own (default /var/lib/hostwatch-server)",
                    raw.data_dir.display()
                ),
            ));
        }
        let postgres = |key: &'static str, var: &'static str, s: &str| {
            s.parse::<tokio_postgres::Config>()
                .map(|_| DatabaseUrl(s.to_owned()))
                .map_err(|e| invalid(var, key, format!("{}: {e}", DatabaseUrl(s.to_owned()))))
        };
        let is_postgres = |s: &str| s.starts_with("postgres://") || s.starts_with("postgresql://");
        let database = match raw.database.as_deref() {
            None => Database::Sqlite(raw.data_dir.join("hostwatch.db")),
            Some(s) if is_postgres(s) => Database::Postgres {
                url: postgres("database", "HOSTWATCH_DATABASE", s)?,
                query_url: match raw.query_database.as_deref() {
                    Some(q) if is_postgres(q) => {
                        Some(postgres("query_database", "HOSTWATCH_QUERY_DATABASE", q)?)
                    }
                    Some(q) => {
                        return Err(invalid(
                            "HOSTWATCH_QUERY_DATABASE",
                            "query_database",
                            format!("{} is not a postgres:// URL", DatabaseUrl(q.to_owned())),
                        ));
                    }
                    None => None,
                },
                ca_file: raw.database_ca.clone(),
            },
            Some(s) => Database::Sqlite(PathBuf::from(s.strip_prefix("sqlite://").unwrap_or(s))),
        };
        if let Database::Sqlite(path) = &database {
            if path.starts_with(AGENT_STATE_DIR) {
                return Err(invalid(
                    "HOSTWATCH_DATABASE",
                    "database",
                    format!("{} is in the agent's state directory {AGENT_STATE_DIR}", path.display()),
                ));
            }
            if raw.database_ca.is_some() {
                return Err(invalid(
                    "HOSTWATCH_DATABASE_CA",
                    "database_ca",
                    "is for a PostgreSQL store on the network".to_owned(),
                ));
            }
            if raw.query_database.is_some() {
                return Err(invalid(
                    "HOSTWATCH_QUERY_DATABASE",
                    "query_database",
                    "is for a PostgreSQL store; with SQLite, queries read the database file".to_owned(),
                ));
            }
        }
        if let Some(d) = raw.offline_after
            && d < Duration::from_secs(10)
        {
            return Err(invalid(
                "HOSTWATCH_OFFLINE_AFTER",
                "offline_after",
                "must be at least 10s".to_owned(),
            ));
        }
        if raw.retire_after < Duration::from_secs(10) {
            return Err(invalid("HOSTWATCH_RETIRE_AFTER", "retire_after", "must be at least 10s".to_owned()));
        }
        if raw.retention < Duration::from_secs(3600) {
            return Err(invalid("HOSTWATCH_RETENTION", "retention", "must be at least 1h".to_owned()));
        }
        let mut query = QueryLimits::default();
        if let Some(t) = raw.query.timeout {
            if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&t) {
                return Err(invalid(
                    "HOSTWATCH_QUERY_TIMEOUT",
                    "query.timeout",
                    "must be between 100ms and 1h".to_owned(),
                ));
            }
            query.timeout = t;
        }
        if let Some(n) = raw.query.max_rows {
            if !(1..=10_000_000).contains(&n) {
                return Err(invalid(
                    "HOSTWATCH_QUERY_MAX_ROWS",
                    "query.max_rows",
                    format!("{n} is outside 1..=10000000"),
                ));
            }
            query.max_rows = n;
        }
        if raw.max_report_bytes < 4096 || raw.max_report_bytes > (1 << 30) {
            return Err(invalid(
                "HOSTWATCH_MAX_REPORT_BYTES",
                "max_report_bytes",
                format!("{} is outside 4096..=1073741824", raw.max_report_bytes),
            ));
        }
        if !(1..=1024).contains(&raw.max_concurrent_reports) {
            return Err(invalid(
                "HOSTWATCH_MAX_CONCURRENT_REPORTS",
                "max_concurrent_reports",
                format!("{} is outside 1..=1024", raw.max_concurrent_reports),
            ));
        }
        let max_new = raw.findings.max_new_per_host_per_minute;
        if !(1..=1_000_000).contains(&max_new) {
            return Err(invalid(
                "HOSTWATCH_FINDINGS_MAX_NEW_PER_HOST_PER_MINUTE",
                "findings.max_new_per_host_per_minute",
                format!("{max_new} is outside 1..=1000000"),
            ));
        }
        let tls = match (&raw.tls.cert, &raw.tls.key) {
            (None, None) if raw.tls.client_ca.is_some() => {
                return Err(invalid(
                    "HOSTWATCH_TLS_CLIENT_CA",
                    "tls.client_ca",
                    "mutual TLS needs tls.cert and tls.key too".to_owned(),
                ));
            }
            (None, None) => None,
            (Some(cert), Some(key)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: raw.tls.client_ca.clone() })
            }
            (Some(_), None) => {
                return Err(invalid(
                    "HOSTWATCH_TLS_KEY",
                    "tls.key",
                    "tls.cert is set; its key is needed too".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "HOSTWATCH_TLS_CERT",
                    "tls.cert",
                    "tls.key is set; its certificate is needed too".to_owned(),
                ));
            }
        };
        if tls.as_ref().is_some_and(|t| t.client_ca.is_some()) && api_listen.is_none() {
            return Err(invalid(
                "HOSTWATCH_TLS_CLIENT_CA",
                "tls.client_ca",
                "mutual TLS is for agents only: set api_listen to a separate address for people and tools"
                    .to_owned(),
            ));
        }
        let (conn_limits, limits) = limits(raw, &invalid)?;
        let aws_identity = match &raw.cloud.aws_identity_certificates {
            Some(path) => Some(AwsIdentity::load(path).map_err(|e| {
                invalid("HOSTWATCH_CLOUD_AWS_IDENTITY_CERTIFICATES", "cloud.aws_identity_certificates", e)
            })?),
            None => None,
        };
        let mut alerts: Vec<SinkConfig> = Vec::new();
        for (i, a) in raw.alerts.iter().enumerate() {
            let key = |field: &str| format!("alerts[{i}].{field}");
            let bad = |field: &str, problem: String| invalid("", &key(field), problem);
            let target = match a.kind.as_str() {
                "file" => match &a.path {
                    Some(p) if p.is_absolute() => Target::File(p.clone()),
                    Some(p) => return Err(bad("path", format!("{} is not an absolute path", p.display()))),
                    None => return Err(bad("path", "a file sink needs a path".to_owned())),
                },
                "stdout" => Target::Stdout,
                "webhook" => {
                    let url =
                        a.url.as_deref().ok_or_else(|| bad("url", "a webhook needs a url".to_owned()))?;
                    let url = reqwest::Url::parse(url)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                        .ok_or_else(|| bad("url", "not an http:// or https:// URL".to_owned()))?;
                    let slack = match a.format.as_deref() {
                        None | Some("json") => false,
                        Some("slack") => true,
                        Some(other) => return Err(bad("format", format!("{other:?} is not json or slack"))),
                    };
                    Target::Webhook { url, slack }
                }
                other => return Err(bad("type", format!("{other:?} is not file, stdout or webhook"))),
            };
            if a.format.is_some() && !matches!(target, Target::Webhook { .. }) {
                return Err(bad("format", "only a webhook has a format".to_owned()));
            }
            let min_severity = match &a.min_severity {
                Some(s) => s
                    .parse::<hostwatch_proto::v1::Severity>()
                    .map_err(|e| bad("min_severity", e.to_string()))?,
                None => hostwatch_proto::v1::Severity::Info,
            };
            let name = a.name.clone().unwrap_or_else(|| format!("{}-{}", a.kind, i + 1));
            if name.is_empty() || alerts.iter().any(|s| s.name == name) {
                return Err(bad("name", format!("{name:?} is empty or names another sink too")));
            }
            alerts.push(SinkConfig { name, target, min_severity, resolved: a.resolved });
        }
        let warnings = sourced.warnings();
        Ok(Loaded {
            config: ServerConfig {
                listen,
                api_listen,
                database,
                data_dir: raw.data_dir.clone(),
                baselines_dir: raw.baselines_dir.clone(),
                offline_after: raw.offline_after,
                retire_after: raw.retire_after,
                retention: raw.retention,
                query,
                max_report_bytes: usize::try_from(raw.max_report_bytes).unwrap_or(usize::MAX),
                max_concurrent_reports: raw.max_concurrent_reports as usize,
                alerts,
                max_new_findings_per_minute: max_new,
                tls,
                conn_limits,
                limits,
                tag_policy: raw.tags.from_agents.clone(),
                aws_identity,
            },
            warnings,
        })
    }

    /// The configuration of `hostwatch serve --dev`.
    pub fn dev(data_dir: &Path, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            listen,
            api_listen: None,
            database: Database::Sqlite(data_dir.join("hostwatch.db")),
            data_dir: data_dir.to_owned(),
            baselines_dir: Some(data_dir.join("baselines")),
            offline_after: None,
            retire_after: default_retire_after(),
            retention: default_retention(),
            query: QueryLimits::default(),
            max_report_bytes: default_max_report_bytes() as usize,
            max_concurrent_reports: default_max_concurrent_reports() as usize,
            alerts: Vec::new(),
            max_new_findings_per_minute: default_max_new_per_host_per_minute(),
            tls: None,
            conn_limits: ConnLimits::default(),
            limits: Limits::default(),
            // The only agent is the collector's own, on this machine.
            tag_policy: TagPolicy::trust_agents(),
            aws_identity: None,
        }
    }
}

/// `[limits]`, each key checked against its range.
fn limits(
    raw: &RawServerConfig,
    invalid: &dyn Fn(&str, &str, String) -> ConfigError,
) -> Result<(ConnLimits, Limits), ConfigError> {
    let r = &raw.limits;
    let (mut conn, mut lim) = (ConnLimits::default(), Limits::default());
    fn within<T: PartialOrd + std::fmt::Debug>(
        invalid: &dyn Fn(&str, &str, String) -> ConfigError,
        var: &str,
        key: &str,
        v: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError> {
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(invalid(var, key, format!("{v:?} is outside {:?}..={:?}", range.start(), range.end())))
        }
    }
    if let Some(v) = r.max_connections {
        conn.max_connections =
            within(invalid, "HOSTWATCH_LIMITS_MAX_CONNECTIONS", "limits.max_connections", v, 1..=1_000_000)?
                as usize;
    }
    if let Some(v) = r.max_connections_per_address {
        conn.max_connections_per_address = within(
            invalid,
            "HOSTWATCH_LIMITS_MAX_CONNECTIONS_PER_ADDRESS",
            "limits.max_connections_per_address",
            v,
            1..=1_000_000,
        )? as usize;
    }
    let secs = |d: Duration| d.as_secs_f64();
    if let Some(d) = r.header_timeout {
        within(invalid, "HOSTWATCH_LIMITS_HEADER_TIMEOUT", "limits.header_timeout", secs(d), 1.0..=300.0)?;
        conn.header_timeout = d;
    }
    if let Some(v) = r.max_header_bytes {
        conn.max_header_bytes = within(
            invalid,
            "HOSTWATCH_LIMITS_MAX_HEADER_BYTES",
            "limits.max_header_bytes",
            v,
            8192..=(1 << 20),
        )? as usize;
    }
    if let Some(d) = r.body_timeout {
        within(invalid, "HOSTWATCH_LIMITS_BODY_TIMEOUT", "limits.body_timeout", secs(d), 1.0..=3600.0)?;
        lim.body_timeout = d;
    }
    let max_report = raw.max_report_bytes;
    let budget =
        r.max_body_bytes_in_flight.unwrap_or((lim.max_body_bytes_in_flight as u64).max(max_report * 2 + 1));
    // A gzip report holds its compressed bytes and the worst case of its inflation at once.
    let least = max_report * 2 + 1;
    if !(least..=(64 << 30)).contains(&budget) {
        return Err(invalid(
            "HOSTWATCH_LIMITS_MAX_BODY_BYTES_IN_FLIGHT",
            "limits.max_body_bytes_in_flight",
            format!(
                "{budget} is outside {least}..=68719476736 (more than twice max_report_bytes, or a large gzip report could never be read)"
            ),
        ));
    }
    lim.max_body_bytes_in_flight = budget as usize;
    if let Some(v) = r.reports_per_host_per_minute {
        lim.reports_per_host_per_minute = within(
            invalid,
            "HOSTWATCH_LIMITS_REPORTS_PER_HOST_PER_MINUTE",
            "limits.reports_per_host_per_minute",
            v,
            1..=600_000,
        )?;
    }
    if let Some(v) = r.enrollments_per_address_per_minute {
        lim.enrollments_per_address_per_minute = within(
            invalid,
            "HOSTWATCH_LIMITS_ENROLLMENTS_PER_ADDRESS_PER_MINUTE",
            "limits.enrollments_per_address_per_minute",
            v,
            1..=100_000,
        )?;
    }
    Ok((conn, lim))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn defaults() {
        let c = ServerConfig::load(None, vec![]).unwrap().config;
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.database, Database::Sqlite("/var/lib/hostwatch-server/hostwatch.db".into()));
        assert!(c.api_listen.is_none() && c.baselines_dir.is_none());
    }

    #[test]
    fn alert_sinks_and_what_is_wrong_with_them() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("server.toml");
        let load = |text: &str| {
            std::fs::write(&f, text).unwrap();
            ServerConfig::load(Some(&f), vec![])
        };
        let c = load(
            "[[alerts]]\ntype = \"webhook\"\nurl = \"https://hooks.example.com/T0/B0/secret\"\nformat = \"slack\"\nmin_severity = \"high\"\n\
             [[alerts]]\ntype = \"file\"\npath = \"/var/log/hw.jsonl\"\nresolved = true\n[[alerts]]\ntype = \"stdout\"\nname = \"console\"\n",
        )
        .unwrap()
        .config;
        let names: Vec<&str> = c.alerts.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["webhook-1", "file-2", "console"]);
        assert!(matches!(&c.alerts[0].target, Target::Webhook { slack: true, .. }));
        assert_eq!(
            (c.alerts[0].min_severity, c.alerts[1].resolved),
            (hostwatch_proto::v1::Severity::High, true)
        );
        assert!(!format!("{:?}", c.alerts).contains("secret"), "a hook's secret path stays out of Debug");
        for (text, says) in [
            ("[[alerts]]\ntype = \"pager\"\n", "alerts[0].type"),
            ("[[alerts]]\ntype = \"webhook\"\n", "a webhook needs a url"),
            ("[[alerts]]\ntype = \"webhook\"\nurl = \"ftp://x/y\"\n", "not an http:// or https:// URL"),
            ("[[alerts]]\ntype = \"file\"\npath = \"rel.jsonl\"\n", "not an absolute path"),
            ("[[alerts]]\ntype = \"stdout\"\nformat = \"slack\"\n", "only a webhook has a format"),
            ("[[alerts]]\ntype = \"stdout\"\nmin_severity = \"urgent\"\n", "alerts[0].min_severity"),
            (
                "[[alerts]]\ntype = \"stdout\"\nname = \"a\"\n[[alerts]]\ntype = \"stdout\"\nname = \"a\"\n",
                "names another sink too",
            ),
            ("[[alerts]]\ntype = \"stdout\"\nurl_typo = 1\n", "unknown field `url_typo`"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn file_and_environment() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("server.toml");
        std::fs::write(&f, "listen = \"0.0.0.0:9000\"\napi_listen = \"127.0.0.1:9001\"\ndata_dir = \"/srv/hw\"\noffline_after = \"2m\"\n").unwrap();
        let l = ServerConfig::load(
            Some(&f),
            vars(&[
                ("HOSTWATCH_DATABASE", "sqlite:///x/y.db"),
                ("HOSTWATCH_TOKEN", "t"),
                ("HOSTWATCH_NOPE", "1"),
            ]),
        )
        .unwrap();
        let c = l.config;
        assert_eq!((c.listen.port(), c.api_listen.map(|a| a.port())), (9000, Some(9001)));
        assert_eq!(c.database, Database::Sqlite("/x/y.db".into()));
        assert_eq!(c.offline_after, Some(Duration::from_secs(120)));
        assert_eq!(l.warnings.len(), 1);
        assert!(
            l.warnings[0].starts_with(
                "unknown environment variable HOSTWATCH_NOPE is ignored (known: HOSTWATCH_LISTEN,"
            ),
            "{:?}",
            l.warnings
        );
    }

    #[test]
    fn refusals() {
        let e = ServerConfig::load(None, vars(&[("HOSTWATCH_LISTEN", "8080")])).unwrap_err().to_string();
        assert!(e.starts_with("HOSTWATCH_LISTEN: \"8080\" is not an address:port"), "{e}");
        let e = ServerConfig::load(None, vars(&[("HOSTWATCH_DATA_DIR", "/var/lib/hostwatch")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("agent's state directory"), "{e}");
        let e = ServerConfig::load(None, vars(&[("HOSTWATCH_DATA_DIR", "/var/lib/hostwatch/server")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("in the agent's state directory"), "{e}");
        let e = ServerConfig::load(None, vars(&[("HOSTWATCH_DATABASE", "/var/lib/hostwatch/x.db")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("HOSTWATCH_DATABASE:"), "{e}");
        let ok = ServerConfig::load(None, vars(&[("HOSTWATCH_DATA_DIR", "/var/lib/hostwatch-server2")]));
        assert!(ok.is_ok(), "a sibling directory is not the agent's");
        let two = ServerConfig::load(
            None,
            vars(&[("HOSTWATCH_LISTEN", "127.0.0.1:0"), ("HOSTWATCH_API_LISTEN", "127.0.0.1:0")]),
        )
        .unwrap()
        .config;
        assert!(two.api_listen.is_some(), "two ephemeral listeners stay two");
        let one =
            ServerConfig::load(None, vars(&[("HOSTWATCH_API_LISTEN", "127.0.0.1:8080")])).unwrap().config;
        assert!(one.api_listen.is_none(), "the same fixed address is one listener");
        let pg = ServerConfig::load(
            None,
            vars(&[
                ("HOSTWATCH_DATABASE", "postgres://hw:s3cret@/hw?host=/run/postgresql"),
                ("HOSTWATCH_QUERY_DATABASE", "postgres://hw_query:an0ther@/hw?host=/run/postgresql"),
            ]),
        )
        .unwrap()
        .config;
        let Database::Postgres { url, query_url, .. } = &pg.database else { panic!("{:?}", pg.database) };
        assert_eq!(url.expose(), "postgres://hw:s3cret@/hw?host=/run/postgresql");
        assert!(query_url.is_some());
        let shown = format!("{:?} {url} {pg:?}", pg.database);
        assert!(!shown.contains("s3cret") && !shown.contains("an0ther"), "passwords never shown: {shown}");
        let e = ServerConfig::load(None, vars(&[("HOSTWATCH_DATABASE", "postgres://hw:s3cret@[::1/x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOSTWATCH_DATABASE") && !e.contains("s3cret"), "{e}");
        let e = ServerConfig::load(None, vars(&[("HOSTWATCH_QUERY_DATABASE", "postgres://q@/x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is for a PostgreSQL store"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("server.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:1\"\n[tls]\ncert = \"x\"\n").unwrap();
        let e = ServerConfig::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(e.ends_with("key `tls.key`: tls.cert is set; its key is needed too"), "{e}");
        // Mutual TLS is for agents: people need their own listener.
        let e = ServerConfig::load(
            None,
            vars(&[
                ("HOSTWATCH_TLS_CERT", "/c"),
                ("HOSTWATCH_TLS_KEY", "/k"),
                ("HOSTWATCH_TLS_CLIENT_CA", "/ca"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("HOSTWATCH_TLS_CLIENT_CA: ") && e.contains("set api_listen"), "{e}");
        let e = ServerConfig::load(None, vars(&[("HOSTWATCH_LIMITS_MAX_HEADER_BYTES", "100")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("HOSTWATCH_LIMITS_MAX_HEADER_BYTES: ") && e.contains("outside 8192..=1048576"),
            "{e}"
        );
        let e = ServerConfig::load(None, vars(&[("HOSTWATCH_LIMITS_BODY_TIMEOUT", "0s")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("HOSTWATCH_LIMITS_BODY_TIMEOUT: "), "{e}");
        let e = ServerConfig::load(
            None,
            vars(&[
                ("HOSTWATCH_MAX_REPORT_BYTES", "1048576"),
                ("HOSTWATCH_LIMITS_MAX_BODY_BYTES_IN_FLIGHT", "2097152"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("more than twice max_report_bytes"), "{e}");
        let ok = ServerConfig::load(
            None,
            vars(&[
                ("HOSTWATCH_LIMITS_MAX_CONNECTIONS", "100"),
                ("HOSTWATCH_LIMITS_HEADER_TIMEOUT", "5s"),
                ("HOSTWATCH_LIMITS_REPORTS_PER_HOST_PER_MINUTE", "60"),
            ]),
        )
        .unwrap()
        .config;
        assert_eq!(ok.conn_limits.max_connections, 100);
        assert_eq!(ok.conn_limits.header_timeout, Duration::from_secs(5));
        assert_eq!(ok.limits.reports_per_host_per_minute, 60);
        assert_eq!(ok.limits.max_body_bytes_in_flight, 128 << 20);
    }
}
