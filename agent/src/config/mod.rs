//! The agent's configuration: a TOML file (`/etc/hostwatch/agent.toml`), then `HOSTWATCH_*`
//! environment variables over it, then validation into [`AgentConfig`].
//!
//! Two stages, as the design asks: [`RawConfig`] is the file as written (unknown keys refused, each
//! field documented with its default); [`AgentConfig`] is what the agent runs with, every value
//! checked and every secret read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::cloud::CloudConfig;
use crate::collect::redact::Redactor;
use crate::shared::config::env::{EnvKey, EnvKind};
use crate::shared::config::{ConfigError, Secret, Sourced, duration, is_loopback, parse_server_url};

/// Where the agent looks for its file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/hostwatch/agent.toml";

/// Variables the agent reads that are not configuration keys.
pub const OTHER_VARS: &[&str] = &["HOSTWATCH_CONFIG", "HOSTWATCH_LOG", "HOSTWATCH_LOG_FORMAT"];

/// Every key the environment can set (design, "Configuration contract").
pub const ENV_KEYS: &[EnvKey] = &[
    EnvKey { var: "HOSTWATCH_SERVER", path: &["server"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_CA_CERT", path: &["ca_cert"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_CLIENT_CERT", path: &["client_cert"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_CLIENT_KEY", path: &["client_key"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_ALLOW_INSECURE_HTTP", path: &["allow_insecure_http"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_ENROLL_SECRET", path: &["enroll_secret"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_ENROLL_SECRET_FILE", path: &["enroll_secret_file"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_STATE_DIR", path: &["state_dir"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_INTERVAL", path: &["interval"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_TAGS", path: &["tags"], kind: EnvKind::Map },
    EnvKey { var: "HOSTWATCH_HOST_ROOT", path: &["host_root"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_SNAPSHOT_EVERY", path: &["snapshot_every"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_SPOOL_MAX_BYTES", path: &["spool_max_bytes"], kind: EnvKind::Int },
    EnvKey { var: "HOSTWATCH_RETRY_MAX", path: &["retry_max"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_STDIO_RESCAN", path: &["stdio_rescan"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_LINEAGE", path: &["lineage"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_SOCKET_EVENTS", path: &["socket_events"], kind: EnvKind::Bool },
    EnvKey {
        var: "HOSTWATCH_SOCKET_EVENT_RING_BYTES",
        path: &["socket_event_ring_bytes"],
        kind: EnvKind::Int,
    },
    EnvKey { var: "HOSTWATCH_REDACT_PATTERNS", path: &["redact", "patterns"], kind: EnvKind::List },
    EnvKey { var: "HOSTWATCH_CLOUD_PROVIDER", path: &["cloud", "provider"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_FILES_PATHS", path: &["files", "paths"], kind: EnvKind::List },
    EnvKey { var: "HOSTWATCH_FILES_EXCLUDE", path: &["files", "exclude"], kind: EnvKind::List },
    EnvKey { var: "HOSTWATCH_FILES_DEFAULTS", path: &["files", "defaults"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_FILES_HASH_RATE", path: &["files", "hash_rate"], kind: EnvKind::Int },
    EnvKey { var: "HOSTWATCH_FILES_HASH_MAX_SIZE", path: &["files", "hash_max_size"], kind: EnvKind::Int },
    EnvKey { var: "HOSTWATCH_FILES_RESCAN_EVERY", path: &["files", "rescan_every"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_FILES_REHASH_EVERY", path: &["files", "rehash_every"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_FILES_DPKG_DIR", path: &["files", "dpkg_dir"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_FILES_RPM_DIR", path: &["files", "rpm_dir"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_FILES_MAX_WATCHES", path: &["files", "max_watches"], kind: EnvKind::Int },
    EnvKey { var: "HOSTWATCH_CLOUD_ENDPOINT", path: &["cloud", "endpoint"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_PROBES", path: &["probes", "enabled"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_PROBES_EXCLUDE_PORTS", path: &["probes", "exclude_ports"], kind: EnvKind::List },
    EnvKey { var: "HOSTWATCH_PROBES_TIMEOUT", path: &["probes", "timeout"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_PROBES_EVERY", path: &["probes", "every"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_PROBES_VIA", path: &["probes", "via"], kind: EnvKind::Str },
    EnvKey { var: "HOSTWATCH_PROBES_REDIS", path: &["probes", "redis"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_PROBES_MEMCACHED", path: &["probes", "memcached"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_PROBES_DOCKER", path: &["probes", "docker"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_PROBES_ELASTICSEARCH", path: &["probes", "elasticsearch"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_PROBES_MONGODB", path: &["probes", "mongodb"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_PROBES_ETCD", path: &["probes", "etcd"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_PROBES_KUBELET", path: &["probes", "kubelet"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_PROBES_JUPYTER", path: &["probes", "jupyter"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_PROBES_METRICS", path: &["probes", "metrics"], kind: EnvKind::Bool },
    EnvKey { var: "HOSTWATCH_PROBES_PPROF", path: &["probes", "pprof"], kind: EnvKind::Bool },
];

/// The file as written. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// URL of the collector (`https://collector.example:8080`). Required to run, not to `snapshot`.
    server: Option<String>,
    /// The collector's certificate must chain to this CA (PEM), instead of the system's roots.
    ca_cert: Option<PathBuf>,
    /// Mutual TLS: this agent's certificate chain (PEM) and its key (PEM).
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    /// Send over plain `http://` to a collector that is not on this machine (the enroll secret and
    /// node key cross the network in clear). Logged at every start.
    #[serde(default)]
    allow_insecure_http: bool,
    /// The fleet's enroll secret. Prefer `enroll_secret_file`, which can be kept mode 0600.
    enroll_secret: Option<String>,
    /// A file holding the enroll secret (surrounding whitespace is ignored).
    enroll_secret_file: Option<PathBuf>,
    /// Where the node key and the agent's state live.
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    /// Time between reports, as `10s` or `1m`.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    interval: Duration,
    /// Tags of this host; baselines select their hosts by them.
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// The host's root as the agent sees it: `/proc` and `/etc` are read under it. `/` unless the
    /// agent runs in a container with the host's file system mounted elsewhere.
    #[serde(default = "default_host_root")]
    host_root: PathBuf,
    /// Between reports carrying only changes, a full snapshot this often (and whenever the
    /// collector asks for one).
    #[serde(default = "default_snapshot_every", deserialize_with = "duration")]
    snapshot_every: Duration,
    /// Reports kept on disk while the collector cannot be reached, in bytes; beyond it the oldest
    /// are dropped (and counted, and reported as lost).
    #[serde(default = "default_spool_max_bytes")]
    spool_max_bytes: u64,
    /// The longest wait between two tries of a collector that answers with an error (503, 500):
    /// the ceiling of the exponential backoff.
    #[serde(default = "default_retry_max", deserialize_with = "duration")]
    retry_max: Duration,
    /// Look again at the standard input and output of every shell and interpreter at each full
    /// scan (two readlinks each), so one that starts reading from a network socket after it
    /// started is a reverse-shell finding within an interval. Off only to measure its cost.
    #[serde(default = "yes")]
    stdio_rescan: bool,
    /// Read each process's audit login uid and session id and keep its ancestry, which the
    /// collector's session and ancestor rules and service-spawned-shell need. Off only to measure
    /// its cost.
    #[serde(default = "yes")]
    lineage: bool,
    /// Every TCP connection and listener and connected UDP socket as the kernel makes it, with
    /// its owner (eBPF), so one that opens and closes between two scans is still seen.
    #[serde(default = "yes")]
    socket_events: bool,
    /// The eBPF ring's size in bytes: a power of two, at least 4 KiB.
    #[serde(default = "default_socket_event_ring_bytes")]
    socket_event_ring_bytes: u64,
    #[serde(default)]
    redact: RawRedact,
    #[serde(default)]
    cloud: RawCloud,
    #[serde(default)]
    files: RawFiles,
    #[serde(default)]
    probes: RawProbes,
}

/// `[probes]`: the agent's checks of its own listeners for services that answer anyone
/// (read-only: one short connection, no credentials, nothing written).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbes {
    /// Probe listeners whose process or port suggests a protocol the agent knows.
    #[serde(default = "yes")]
    enabled: bool,
    /// Ports never probed.
    #[serde(default)]
    exclude_ports: Vec<PortValue>,
    /// One probe's time: connect, ask, read (twice that where TLS is tried after plain text).
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
    timeout: Duration,
    /// A listener is probed when it appears, and again when its last probe is this old.
    #[serde(default = "default_probe_every", deserialize_with = "duration")]
    every: Duration,
    /// The address probes of listeners on every address go through (default: this host's lowest
    /// address that is not loopback).
    via: Option<String>,
    /// Each protocol's probe; `false` turns it off.
    #[serde(default = "yes")]
    redis: bool,
    #[serde(default = "yes")]
    memcached: bool,
    #[serde(default = "yes")]
    docker: bool,
    #[serde(default = "yes")]
    elasticsearch: bool,
    #[serde(default = "yes")]
    mongodb: bool,
    #[serde(default = "yes")]
    etcd: bool,
    #[serde(default = "yes")]
    kubelet: bool,
    #[serde(default = "yes")]
    jupyter: bool,
    #[serde(default = "yes")]
    metrics: bool,
    #[serde(default = "yes")]
    pprof: bool,
}

impl Default for RawProbes {
    fn default() -> Self {
        RawProbes {
            enabled: true,
            exclude_ports: Vec::new(),
            timeout: default_probe_timeout(),
            every: default_probe_every(),
            via: None,
            redis: true,
            memcached: true,
            docker: true,
            elasticsearch: true,
            mongodb: true,
            etcd: true,
            kubelet: true,
            jupyter: true,
            metrics: true,
            pprof: true,
        }
    }
}

/// A port as the file writes it (a number) or the environment does (text).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortValue {
    Number(i64),
    Text(String),
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_probe_every() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl RawProbes {
    /// `[probes]` checked: ports within 1..=65535, times within bounds, `via` an address.
    fn check(&self) -> Result<crate::probe::ProbeConfig, (&'static str, &'static str, String)> {
        use crate::probe::Service;
        let mut exclude_ports = Vec::new();
        for p in &self.exclude_ports {
            let port = match p {
                PortValue::Number(n) => u16::try_from(*n).ok(),
                PortValue::Text(t) => t.trim().parse::<u16>().ok(),
            };
            match port {
                Some(port) if port > 0 => exclude_ports.push(port),
                _ => {
                    let shown = match p {
                        PortValue::Number(n) => n.to_string(),
                        PortValue::Text(t) => t.trim().to_owned(),
                    };
                    return Err((
                        "HOSTWATCH_PROBES_EXCLUDE_PORTS",
                        "probes.exclude_ports",
                        format!("{shown} is not a port (1 to 65535)"),
                    ));
                }
            }
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(30) {
            return Err((
                "HOSTWATCH_PROBES_TIMEOUT",
                "probes.timeout",
                format!("{} is outside 100ms..=30s", humantime::format_duration(self.timeout)),
            ));
        }
        if self.every < Duration::from_secs(60) || self.every > Duration::from_secs(30 * 86400) {
            return Err((
                "HOSTWATCH_PROBES_EVERY",
                "probes.every",
                format!("{} is outside 1m..=30d", humantime::format_duration(self.every)),
            ));
        }
        let via = match &self.via {
            None => None,
            Some(v) => match v.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if !ip.is_unspecified() => Some(ip),
                _ => {
                    return Err((
                        "HOSTWATCH_PROBES_VIA",
                        "probes.via",
                        format!("{v:?} is not an address of this host"),
                    ));
                }
            },
        };
        let switches = [
            (Service::Redis, self.redis),
            (Service::Memcached, self.memcached),
            (Service::Docker, self.docker),
            (Service::Elasticsearch, self.elasticsearch),
            (Service::Mongodb, self.mongodb),
            (Service::Etcd, self.etcd),
            (Service::Kubelet, self.kubelet),
            (Service::Jupyter, self.jupyter),
            (Service::Metrics, self.metrics),
            (Service::Pprof, self.pprof),
        ];
        Ok(crate::probe::ProbeConfig {
            enabled: self.enabled,
            off: switches.into_iter().filter(|(_, on)| !on).map(|(s, _)| s).collect(),
            exclude_ports,
            timeout: self.timeout,
            every: self.every,
            via,
        })
    }
}

/// `[files]`: file integrity monitoring.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    /// Watch the built-in set of paths attackers use to persist (`/etc`, `/usr/bin`, cron, ssh
    /// keys, ...; see the configuration reference). `false` watches `paths` alone.
    #[serde(default = "yes")]
    defaults: bool,
    /// More paths to watch (files or directories, watched recursively).
    #[serde(default)]
    paths: Vec<PathBuf>,
    /// Globs of paths not to watch (`/etc/mtab`, `/var/log/**`).
    #[serde(default)]
    exclude: Vec<String>,
    /// Bytes a second read for hashing, at most; 0 lifts the cap.
    #[serde(default = "default_hash_rate")]
    hash_rate: u64,
    /// Regular files above this many bytes are compared by metadata only (said so in reports).
    #[serde(default = "default_hash_max_size")]
    hash_max_size: u64,
    /// A scan of every watched path this often, trusting unchanged metadata (inode, size, mtime,
    /// ctime).
    #[serde(default = "default_rescan_every", deserialize_with = "duration")]
    rescan_every: Duration,
    /// A scan that hashes every file again, whatever its metadata says, this often.
    #[serde(default = "default_rehash_every", deserialize_with = "duration")]
    rehash_every: Duration,
    /// dpkg's database, for telling package-made changes from others.
    #[serde(default = "default_dpkg_dir")]
    dpkg_dir: PathBuf,
    /// rpm's database (`rpmdb.sqlite` in it), for the same on rpm-based hosts.
    #[serde(default = "default_rpm_dir")]
    rpm_dir: PathBuf,
    /// Inotify watches (one per directory) at most; 0: three quarters of the kernel's limit.
    #[serde(default)]
    max_watches: u64,
}

impl Default for RawFiles {
    fn default() -> Self {
        RawFiles {
            defaults: true,
            paths: Vec::new(),
            exclude: Vec::new(),
            hash_rate: default_hash_rate(),
            hash_max_size: default_hash_max_size(),
            rescan_every: default_rescan_every(),
            rehash_every: default_rehash_every(),
            dpkg_dir: default_dpkg_dir(),
            rpm_dir: default_rpm_dir(),
            max_watches: 0,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_hash_rate() -> u64 {
    50 << 20
}

fn default_hash_max_size() -> u64 {
    128 << 20
}

fn default_rescan_every() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_rehash_every() -> Duration {
    Duration::from_secs(7 * 86400)
}

fn default_dpkg_dir() -> PathBuf {
    PathBuf::from("/var/lib/dpkg")
}

fn default_rpm_dir() -> PathBuf {
    PathBuf::from("/var/lib/rpm")
}

/// `[cloud]`: where the instance's metadata comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    /// `auto` (the machine's firmware says which cloud, if any), `aws`, `azure` or `none`.
    #[serde(default = "default_cloud_provider")]
    provider: String,
    /// The metadata service's base URL, in place of `http://169.254.169.254`.
    endpoint: Option<String>,
}

impl Default for RawCloud {
    fn default() -> Self {
        RawCloud { provider: default_cloud_provider(), endpoint: None }
    }
}

fn default_cloud_provider() -> String {
    "auto".to_owned()
}

/// `[redact]`: the site's own rules for secrets in command lines, on top of the built-in ones.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedact {
    /// Regular expressions matched against each argument; capture groups (or, without any, the
    /// whole match) are replaced by `<redacted>`. In the environment the list is comma-separated,
    /// so a pattern with a comma goes in the file.
    #[serde(default)]
    patterns: Vec<String>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/hostwatch")
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_host_root() -> PathBuf {
    PathBuf::from("/")
}

fn default_snapshot_every() -> Duration {
    Duration::from_secs(3600)
}

fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}

fn default_socket_event_ring_bytes() -> u64 {
    u64::from(crate::collect::sockets::ebpf::RING_BYTES)
}

fn default_spool_max_bytes() -> u64 {
    64 << 20
}

/// The configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The collector; `None` is fine for a local `snapshot`.
    pub server: Option<Url>,
    /// How the collector is trusted and how this agent proves itself over TLS.
    pub tls: ClientTls,
    pub enroll_secret: Option<Secret>,
    pub state_dir: PathBuf,
    pub interval: Duration,
    pub tags: BTreeMap<String, String>,
    pub host_root: PathBuf,
    pub snapshot_every: Duration,
    pub spool_max_bytes: u64,
    /// The ceiling of the backoff after a collector's error answers.
    pub retry_max: Duration,
    pub stdio_rescan: bool,
    pub lineage: bool,
    pub socket_events: bool,
    pub socket_event_ring_bytes: u32,
    /// Never report the agent's own process: set by `hostwatch serve --dev`, whose agent runs
    /// inside the collector, never by a file or the environment.
    pub hide_own_process: bool,
    /// Built-in redaction plus `[redact] patterns`, compiled.
    pub redactor: Redactor,
    pub cloud: CloudConfig,
    pub files: crate::files::FilesConfig,
    pub probes: crate::probe::ProbeConfig,
}

/// The agent's TLS settings. The collector's name is always verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// Trust only this CA (PEM bundle) for the collector; `None`: the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// Mutual TLS: certificate chain and key, both PEM.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// A configuration and what is worth a warning about how it was given.
#[derive(Debug)]
pub struct Loaded {
    pub config: AgentConfig,
    pub warnings: Vec<String>,
}

impl AgentConfig {
    /// Loads the file at `path` (none: defaults only) and lays `vars` over it.
    pub fn load(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let sourced = Sourced::<RawConfig>::load(path, vars, ENV_KEYS, OTHER_VARS)?;
        let invalid = |var: &str, key: &str, problem: String| sourced.invalid(var, key, problem);
        let file = &sourced.file;
        let raw = &sourced.raw;

        let server = raw
            .server
            .as_deref()
            .map(|s| parse_server_url(s).map_err(|p| invalid("HOSTWATCH_SERVER", "server", p)))
            .transpose()?;
        let mut insecure = None;
        if let Some(url) = &server
            && url.scheme() == "http"
            && !is_loopback(url)
        {
            if !raw.allow_insecure_http {
                return Err(invalid(
                    "HOSTWATCH_SERVER",
                    "server",
                    format!(
                        "{url} is plain http to another machine: the enroll secret and node key would cross the network in clear; use https://, or set allow_insecure_http = true (HOSTWATCH_ALLOW_INSECURE_HTTP) on a network you trust"
                    ),
                ));
            }
            insecure = Some(format!(
                "allow_insecure_http: reporting to {url} over plain http; the enroll secret and node key cross the network in clear"
            ));
        }
        let tls = ClientTls {
            ca_cert: raw.ca_cert.clone(),
            client: match (&raw.client_cert, &raw.client_key) {
                (None, None) => None,
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (Some(_), None) => {
                    return Err(invalid(
                        "HOSTWATCH_CLIENT_KEY",
                        "client_key",
                        "client_cert is set; its key is needed too".to_owned(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        "HOSTWATCH_CLIENT_CERT",
                        "client_cert",
                        "client_key is set; its certificate is needed too".to_owned(),
                    ));
                }
            },
        };
        for (var, key, path) in [
            ("HOSTWATCH_CA_CERT", "ca_cert", &raw.ca_cert),
            ("HOSTWATCH_CLIENT_CERT", "client_cert", &raw.client_cert),
            ("HOSTWATCH_CLIENT_KEY", "client_key", &raw.client_key),
        ] {
            if let Some(path) = path {
                std::fs::File::open(path)
                    .map_err(|e| invalid(var, key, format!("cannot read {}: {e}", path.display())))?;
            }
        }
        let enroll_secret = match (&raw.enroll_secret, &raw.enroll_secret_file) {
            (Some(_), Some(_)) => {
                let from_env: Vec<&str> = ["HOSTWATCH_ENROLL_SECRET", "HOSTWATCH_ENROLL_SECRET_FILE"]
                    .into_iter()
                    .filter(|v| sourced.applied.set.contains(v))
                    .collect();
                let origin = match from_env.as_slice() {
                    [] => file.clone(),
                    vars => format!("{file} and {}", vars.join(", ")),
                };
                return Err(ConfigError::Invalid {
                    origin,
                    problem: "both `enroll_secret` and `enroll_secret_file` are set; keep one".to_owned(),
                });
            }
            (Some(s), None) if s.trim().is_empty() => {
                return Err(invalid(
                    "HOSTWATCH_ENROLL_SECRET",
                    "enroll_secret",
                    "the enroll secret is empty".to_owned(),
                ));
            }
            (Some(s), None) => Some(Secret::new(s.trim())),
            (None, Some(p)) => {
                let bad =
                    |problem: String| invalid("HOSTWATCH_ENROLL_SECRET_FILE", "enroll_secret_file", problem);
                let s = std::fs::read_to_string(p)
                    .map_err(|e| bad(format!("cannot read {}: {e}", p.display())))?;
                if s.trim().is_empty() {
                    return Err(bad(format!("{} holds no enroll secret", p.display())));
                }
                Some(Secret::new(s.trim()))
            }
            (None, None) => None,
        };
        if raw.interval < Duration::from_secs(1) || raw.interval > Duration::from_secs(3600) {
            return Err(invalid(
                "HOSTWATCH_INTERVAL",
                "interval",
                format!("{} is outside 1s..=1h", humantime::format_duration(raw.interval)),
            ));
        }
        if raw.snapshot_every < raw.interval || raw.snapshot_every > Duration::from_secs(7 * 86400) {
            return Err(invalid(
                "HOSTWATCH_SNAPSHOT_EVERY",
                "snapshot_every",
                format!("{} is outside interval..=7d", humantime::format_duration(raw.snapshot_every)),
            ));
        }
        if raw.retry_max < Duration::from_secs(1) || raw.retry_max > Duration::from_secs(3600) {
            return Err(invalid(
                "HOSTWATCH_RETRY_MAX",
                "retry_max",
                format!("{} is outside 1s..=1h", humantime::format_duration(raw.retry_max)),
            ));
        }
        let ring = raw.socket_event_ring_bytes;
        let socket_event_ring_bytes = match u32::try_from(ring) {
            Ok(n) if n.is_power_of_two() && (4096..=1 << 30).contains(&n) => n,
            _ => {
                return Err(invalid(
                    "HOSTWATCH_SOCKET_EVENT_RING_BYTES",
                    "socket_event_ring_bytes",
                    format!("{ring} is not a power of two from 4096 to 1073741824"),
                ));
            }
        };
        if raw.spool_max_bytes < (1 << 20) {
            return Err(invalid(
                "HOSTWATCH_SPOOL_MAX_BYTES",
                "spool_max_bytes",
                format!("{} is below 1 MiB (1048576)", raw.spool_max_bytes),
            ));
        }
        hostwatch_proto::v1::check_tags("tags", &raw.tags)
            .map_err(|e| invalid("HOSTWATCH_TAGS", "tags", e.to_string()))?;
        let redactor = Redactor::new(&raw.redact.patterns)
            .map_err(|e| invalid("HOSTWATCH_REDACT_PATTERNS", "redact.patterns", e.to_string()))?;
        let cloud = CloudConfig {
            provider: raw
                .cloud
                .provider
                .parse()
                .map_err(|p| invalid("HOSTWATCH_CLOUD_PROVIDER", "cloud.provider", p))?,
            endpoint: raw
                .cloud
                .endpoint
                .as_deref()
                .map(|s| {
                    parse_server_url(s).map_err(|p| invalid("HOSTWATCH_CLOUD_ENDPOINT", "cloud.endpoint", p))
                })
                .transpose()?,
        };

        let files = crate::files::FilesConfig::new(
            raw.files.defaults,
            &raw.files.paths,
            &raw.files.exclude,
            crate::files::Budget {
                hash_rate: raw.files.hash_rate,
                hash_max_size: raw.files.hash_max_size,
                rescan_every: raw.files.rescan_every,
                rehash_every: raw.files.rehash_every,
                max_watches: raw.files.max_watches,
            },
            raw.files.dpkg_dir.clone(),
        )
        .map_err(|(var, key, problem)| invalid(var, key, problem))?
        .with_rpm_dir(raw.files.rpm_dir.clone())
        .under(&raw.host_root);
        let probes = raw.probes.check().map_err(|(var, key, problem)| invalid(var, key, problem))?;

        let mut warnings = sourced.warnings();
        warnings.extend(insecure);
        Ok(Loaded {
            config: AgentConfig {
                server,
                tls,
                enroll_secret,
                state_dir: raw.state_dir.clone(),
                interval: raw.interval,
                tags: raw.tags.clone(),
                host_root: raw.host_root.clone(),
                snapshot_every: raw.snapshot_every,
                spool_max_bytes: raw.spool_max_bytes,
                retry_max: raw.retry_max,
                stdio_rescan: raw.stdio_rescan,
                lineage: raw.lineage,
                socket_events: raw.socket_events,
                socket_event_ring_bytes,
                hide_own_process: false,
                redactor,
                cloud,
                files,
                probes,
            },
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::config::env;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_without_a_file() {
        let c = AgentConfig::load(None, vec![]).unwrap().config;
        assert_eq!(c.state_dir, Path::new("/var/lib/hostwatch"));
        assert_eq!(c.interval, Duration::from_secs(10));
        assert!(c.server.is_none() && c.enroll_secret.is_none() && c.tags.is_empty());
    }

    #[test]
    fn environment_overrides_the_file() {
        let d = tempfile::tempdir().unwrap();
        let secret = write(d.path(), "secret", "hwe_abc\n");
        let f = write(
            d.path(),
            "agent.toml",
            "server = \"http://file:1\"\ninterval = \"30s\"\n[tags]\nrole = \"db\"\n",
        );
        let env = vars(&[
            ("HOSTWATCH_SERVER", "http://127.0.0.1:9"),
            ("HOSTWATCH_ENROLL_SECRET_FILE", secret.to_str().unwrap()),
            ("HOSTWATCH_TAGS", "role=web,env=prod"),
            ("HOSTWATCH_TYPO", "1"),
        ]);
        let l = AgentConfig::load(Some(&f), env).unwrap();
        assert_eq!(l.config.server.unwrap().as_str(), "http://127.0.0.1:9/");
        assert_eq!(l.config.interval, Duration::from_secs(30), "file value kept where env is silent");
        assert_eq!(l.config.enroll_secret.unwrap().expose(), "hwe_abc");
        assert_eq!(l.config.tags.get("role").map(String::as_str), Some("web"));
        assert_eq!(l.config.tags.len(), 2);
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].contains("HOSTWATCH_TYPO"));
    }

    #[test]
    fn redaction_patterns_from_the_file_or_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let f =
            write(d.path(), "agent.toml", "[redact]\npatterns = ['^--vault=(.*)$', 'sk_live_\\w{1,40}']\n");
        let c = AgentConfig::load(Some(&f), vec![]).unwrap().config;
        let mut args: Vec<String> = ["app", "--vault=abc", "sk_live_123"].map(String::from).to_vec();
        assert!(c.redactor.redact(&mut args));
        assert_eq!(args, ["app", "--vault=<redacted>", "<redacted>"]);
        // The environment's comma-separated list replaces the file's.
        let c = AgentConfig::load(Some(&f), vars(&[("HOSTWATCH_REDACT_PATTERNS", "x-(\\d+), y-(\\d+)")]))
            .unwrap()
            .config;
        let mut args: Vec<String> = ["app", "--vault=abc", "x-1", "y-2"].map(String::from).to_vec();
        c.redactor.redact(&mut args);
        assert_eq!(args, ["app", "--vault=abc", "x-<redacted>", "y-<redacted>"]);
        // A broken pattern stops the agent, saying which and where.
        let bad = write(d.path(), "bad.toml", "[redact]\npatterns = ['ok', 'a(b']\n");
        let e = AgentConfig::load(Some(&bad), vec![]).unwrap_err().to_string();
        assert!(e.contains("bad.toml: key `redact.patterns`: pattern 1 (\"a(b\")"), "{e}");
        let e =
            AgentConfig::load(None, vars(&[("HOSTWATCH_REDACT_PATTERNS", "[z")])).unwrap_err().to_string();
        assert!(e.starts_with("HOSTWATCH_REDACT_PATTERNS: pattern 0"), "{e}");
    }

    #[test]
    fn cloud_provider_and_endpoint() {
        use crate::cloud::ProviderChoice;
        let c = AgentConfig::load(None, vec![]).unwrap().config;
        assert_eq!(c.cloud, CloudConfig { provider: ProviderChoice::Auto, endpoint: None });
        let d = tempfile::tempdir().unwrap();
        let f = write(
            d.path(),
            "agent.toml",
            "[cloud]\nprovider = \"aws\"\nendpoint = \"http://127.0.0.1:1338\"\n",
        );
        let c = AgentConfig::load(Some(&f), vec![]).unwrap().config;
        assert_eq!(c.cloud.provider, ProviderChoice::Aws);
        assert_eq!(c.cloud.endpoint.unwrap().as_str(), "http://127.0.0.1:1338/");
        let c = AgentConfig::load(Some(&f), vars(&[("HOSTWATCH_CLOUD_PROVIDER", "none")])).unwrap().config;
        assert_eq!(c.cloud.provider, ProviderChoice::None);
        let e =
            AgentConfig::load(None, vars(&[("HOSTWATCH_CLOUD_PROVIDER", "gcp")])).unwrap_err().to_string();
        assert!(e.starts_with("HOSTWATCH_CLOUD_PROVIDER: unknown provider \"gcp\""), "{e}");
        let bad = write(d.path(), "bad.toml", "[cloud]\nendpoint = \"169.254.169.254\"\n");
        let e = AgentConfig::load(Some(&bad), vec![]).unwrap_err().to_string();
        assert!(e.contains("key `cloud.endpoint`: invalid URL"), "{e}");
    }

    #[test]
    fn unknown_key_in_the_file_is_refused_with_its_place() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "agent.toml", "server = \"http://x\"\nbogus = 1\n");
        let e = AgentConfig::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(e.contains("agent.toml:2:1: unknown field `bogus`"), "{e}");
    }

    #[test]
    fn bad_values_say_where_they_came_from() {
        let e = AgentConfig::load(None, vars(&[("HOSTWATCH_INTERVAL", "soon")])).unwrap_err().to_string();
        assert!(e.contains("HOSTWATCH_INTERVAL") && e.contains("invalid duration \"soon\""), "{e}");
        let e = AgentConfig::load(None, vars(&[("HOSTWATCH_SERVER", "ftp://x")])).unwrap_err().to_string();
        assert!(e.starts_with("HOSTWATCH_SERVER: invalid URL"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "agent.toml", "interval = \"0s\"\n");
        let e = AgentConfig::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(e.contains("key `interval`") && e.contains("outside 1s..=1h"), "{e}");
        let e = AgentConfig::load(None, vars(&[("HOSTWATCH_RETRY_MAX", "2h")])).unwrap_err().to_string();
        assert!(e.contains("HOSTWATCH_RETRY_MAX") && e.contains("2h is outside 1s..=1h"), "{e}");
        let ok = AgentConfig::load(None, vars(&[("HOSTWATCH_RETRY_MAX", "3s")])).unwrap().config;
        assert_eq!(ok.retry_max, Duration::from_secs(3));
        let missing = d.path().join("nope");
        let e = AgentConfig::load(None, vars(&[("HOSTWATCH_ENROLL_SECRET_FILE", missing.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read") && e.contains("nope"), "{e}");
        let empty = write(d.path(), "empty", "\n");
        let e = AgentConfig::load(None, vars(&[("HOSTWATCH_ENROLL_SECRET_FILE", empty.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("HOSTWATCH_ENROLL_SECRET_FILE: ") && e.ends_with("holds no enroll secret"),
            "{e}"
        );
        let both = write(d.path(), "both.toml", "enroll_secret = \"a\"\n");
        let e = AgentConfig::load(
            Some(&both),
            vars(&[("HOSTWATCH_ENROLL_SECRET_FILE", empty.to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("both.toml and HOSTWATCH_ENROLL_SECRET_FILE: both"), "{e}");
    }

    #[test]
    fn plain_http_goes_only_to_this_machine_unless_allowed_and_said() {
        for url in
            ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9", "https://collector.example"]
        {
            let l = AgentConfig::load(None, vars(&[("HOSTWATCH_SERVER", url)])).unwrap();
            assert!(l.warnings.is_empty(), "{url}: {:?}", l.warnings);
        }
        let e = AgentConfig::load(None, vars(&[("HOSTWATCH_SERVER", "http://10.0.0.5:8080")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("HOSTWATCH_SERVER: http://10.0.0.5:8080/ is plain http to another machine"),
            "{e}"
        );
        assert!(e.contains("allow_insecure_http"), "{e}");
        let l = AgentConfig::load(
            None,
            vars(&[("HOSTWATCH_SERVER", "http://10.0.0.5:8080"), ("HOSTWATCH_ALLOW_INSECURE_HTTP", "true")]),
        )
        .unwrap();
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(l.warnings[0].contains("in clear"), "{:?}", l.warnings);
    }

    #[test]
    fn tls_files_come_in_pairs_and_must_be_readable() {
        let d = tempfile::tempdir().unwrap();
        let ca = write(d.path(), "ca.pem", "x");
        let c = AgentConfig::load(None, vars(&[("HOSTWATCH_CA_CERT", ca.to_str().unwrap())])).unwrap().config;
        assert_eq!(c.tls.ca_cert.as_deref(), Some(ca.as_path()));
        let e = AgentConfig::load(None, vars(&[("HOSTWATCH_CLIENT_CERT", ca.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("its key is needed too"), "{e}");
        let missing = d.path().join("nope.pem");
        let e = AgentConfig::load(None, vars(&[("HOSTWATCH_CA_CERT", missing.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("HOSTWATCH_CA_CERT: cannot read") && e.contains("nope.pem"), "{e}");
    }

    #[test]
    fn every_file_key_has_its_variable() {
        let c = AgentConfig::load(
            None,
            vars(&[
                ("HOSTWATCH_SNAPSHOT_EVERY", "2h"),
                ("HOSTWATCH_SPOOL_MAX_BYTES", "2097152"),
                ("HOSTWATCH_HOST_ROOT", "/host"),
                ("HOSTWATCH_STATE_DIR", "/s"),
            ]),
        )
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = c.config;
        assert_eq!((c.snapshot_every, c.spool_max_bytes), (Duration::from_secs(7200), 2 << 20));
        assert_eq!((c.host_root.as_path(), c.state_dir.as_path()), (Path::new("/host"), Path::new("/s")));
        // And every variable names a key the file accepts.
        for key in ENV_KEYS {
            let mut t = toml::Table::new();
            let value = match key.kind {
                EnvKind::Int => "2097152",
                EnvKind::Map => "a=b",
                EnvKind::Bool => "true",
                _ if key.var.ends_with("SERVER") => "http://x",
                _ if key.var.ends_with("EVERY")
                    || key.var.ends_with("INTERVAL")
                    || key.var.ends_with("TIMEOUT")
                    || key.var.ends_with("_MAX") =>
                {
                    "1h"
                }
                _ => "/tmp",
            };
            env::overlay(&mut t, vars(&[(key.var, value)]), ENV_KEYS, &[]).unwrap();
            let parsed: Result<RawConfig, _> = toml::Value::Table(t).try_into();
            assert!(parsed.is_ok(), "{}: {:?}", key.var, parsed.err());
        }
    }

    #[test]
    fn probes_keys_are_checked() {
        let c = AgentConfig::load(
            None,
            vars(&[
                ("HOSTWATCH_PROBES_EXCLUDE_PORTS", "6379, 9200"),
                ("HOSTWATCH_PROBES_REDIS", "false"),
                ("HOSTWATCH_PROBES_VIA", "10.0.0.5"),
            ]),
        )
        .unwrap()
        .config
        .probes;
        assert!(c.enabled);
        assert_eq!(c.exclude_ports, [6379, 9200]);
        assert_eq!(c.off, [crate::probe::Service::Redis]);
        assert_eq!(c.via, Some("10.0.0.5".parse().unwrap()));
        let bad =
            |var: &str, value: &str| AgentConfig::load(None, vars(&[(var, value)])).unwrap_err().to_string();
        assert!(bad("HOSTWATCH_PROBES_EXCLUDE_PORTS", "70000").contains("70000 is not a port"));
        assert!(bad("HOSTWATCH_PROBES_VIA", "0.0.0.0").contains("HOSTWATCH_PROBES_VIA"));
        assert!(bad("HOSTWATCH_PROBES_TIMEOUT", "1m").contains("outside 100ms..=30s"));
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "agent.toml", "[probes]\nexclude_ports = [0]\n");
        let e = AgentConfig::load(Some(&f), vec![]).unwrap_err().to_string();
        assert!(e.contains("agent.toml") && e.contains("0 is not a port"), "{e}");
    }

    #[test]
    fn files_keys_are_checked() {
        let c = AgentConfig::load(
            None,
            vars(&[
                ("HOSTWATCH_FILES_PATHS", "/srv/app,/opt/x/"),
                ("HOSTWATCH_FILES_DEFAULTS", "no"),
                ("HOSTWATCH_FILES_EXCLUDE", "/srv/app/cache/**"),
            ]),
        )
        .unwrap()
        .config;
        assert_eq!(c.files.paths, [PathBuf::from("/opt/x"), PathBuf::from("/srv/app")]);
        assert!(!c.files.homes && c.files.excluded(Path::new("/srv/app/cache/a/b")));
        assert!(!c.files.excluded(Path::new("/srv/app/index.html")));
        let defaults = AgentConfig::load(None, vars(&[])).unwrap().config.files;
        assert!(defaults.paths.contains(&PathBuf::from("/etc")) && defaults.homes);
        for (var, value, says) in [
            ("HOSTWATCH_FILES_PATHS", "srv/app", "HOSTWATCH_FILES_PATHS: srv/app is not an absolute path"),
            ("HOSTWATCH_FILES_EXCLUDE", "/a/[", "HOSTWATCH_FILES_EXCLUDE: invalid glob \"/a/[\""),
            (
                "HOSTWATCH_FILES_DEFAULTS",
                "perhaps",
                "HOSTWATCH_FILES_DEFAULTS: \"perhaps\" is not true or false",
            ),
            ("HOSTWATCH_FILES_RESCAN_EVERY", "5s", "HOSTWATCH_FILES_RESCAN_EVERY: must be at least 1m"),
        ] {
            let e = AgentConfig::load(None, vars(&[(var, value)])).unwrap_err().to_string();
            assert!(e.contains(says), "{var}={value}: {e}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c =
            AgentConfig::load(None, vars(&[("HOSTWATCH_ENROLL_SECRET", "hwe_topsecret")])).unwrap().config;
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
