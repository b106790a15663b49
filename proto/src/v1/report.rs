//! What an agent sends each interval, and what the collector answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::timestamp;
use super::validate::{
    self, Validate, ValidationError, count, limits, name, nonempty, opt_stored, stored, text,
};
use super::{CloudFacts, Connection, Delta, Listener, Process};

/// One report: who is sending, in what state the agent is, and either the whole state (a
/// snapshot), what changed since the report before (a delta), or neither (a heartbeat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// One run of an agent: random, chosen at start. Sequence numbers count within a session, and
    /// a session's first report carries a snapshot.
    #[serde(default)]
    pub session: u64,
    /// Increases by one with every report of a session, from 1. The collector applies each once
    /// and in order: a number it has seen is a replay (acknowledged, not applied again), a number
    /// beyond the next is a gap (it asks for a snapshot).
    pub seq: u64,
    #[serde(with = "timestamp")]
    pub sent_at: OffsetDateTime,
    pub host: HostFacts,
    pub agent: AgentStatus,
    /// The whole current state. Absent in a delta, a heartbeat or a goodbye.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    /// What changed since the report before, when this report has no snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    /// Reports the agent had to drop (spool full, a write refused, refused by the collector) between
    /// the last report it delivered and this one: the gap in `seq` the collector sees, exactly.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost: u64,
    /// Present in the last report of an agent that is stopping on purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodbye: Option<Goodbye>,
}

/// Why an agent said goodbye: the collector tells a host being shut down or an agent being stopped
/// from one that fell silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goodbye {
    /// The system is shutting down.
    Shutdown,
    /// The agent alone is being stopped.
    Stopped,
}

impl Report {
    /// A heartbeat: no snapshot, no delta, nothing lost; the rest is set field by field.
    pub fn heartbeat(
        session: u64,
        seq: u64,
        sent_at: OffsetDateTime,
        host: HostFacts,
        agent: AgentStatus,
    ) -> Self {
        Report { session, seq, sent_at, host, agent, snapshot: None, delta: None, lost: 0, goodbye: None }
    }
}

impl Goodbye {
    pub fn as_str(self) -> &'static str {
        match self {
            Goodbye::Shutdown => "shutdown",
            Goodbye::Stopped => "stopped",
        }
    }
}

/// Facts about the host, sent with every report so that the collector always has them current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    /// `/etc/machine-id`: the identity the node key is bound to.
    pub machine_id: String,
    /// `PRETTY_NAME` of os-release.
    #[serde(default)]
    pub os: String,
    /// Kernel release.
    #[serde(default)]
    pub kernel: String,
    /// CPU architecture, as Rust names it (`x86_64`, `aarch64`).
    #[serde(default)]
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "timestamp::option")]
    pub boot_time: Option<OffsetDateTime>,
    /// Tags from the agent's configuration over those of the cloud; they select the workload.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// What the cloud's metadata service says about the instance; absent off the cloud, or
    /// before the agent has heard from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudFacts>,
}

impl HostFacts {
    /// The identity alone; the other facts empty, to be set where they are known.
    pub fn new(hostname: impl Into<String>, machine_id: impl Into<String>) -> Self {
        HostFacts {
            hostname: hostname.into(),
            machine_id: machine_id.into(),
            os: String::new(),
            kernel: String::new(),
            arch: String::new(),
            boot_time: None,
            tags: BTreeMap::new(),
            cloud: None,
        }
    }
}

/// The agent's own state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    /// Seconds between reports; the collector derives "offline" from it.
    pub interval_secs: u32,
    #[serde(with = "timestamp")]
    pub started_at: OffsetDateTime,
    pub coverage: Coverage,
    /// How the agent collects and what it costs, for the collector to keep per host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<AgentStats>,
}

/// The agent's own account of itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    /// `proc_connector` (exec events) or `polling` (where the connector is refused).
    pub exec_source: String,
    /// Why the agent polls, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_source_why: Option<String>,
    /// `sock_diag` or `proc_net`.
    pub socket_reader: String,
    /// `ebpf` (every connection and listener as the kernel makes it, however short) or `scans`
    /// (what is open when the agent looks); absent from agents before the eBPF source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_source: Option<String>,
    /// Why the agent runs on scans alone, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_source_why: Option<String>,
    /// Socket events received since the agent started, and those the kernel's ring had no
    /// room for (each a connection or listener that may have gone unseen).
    #[serde(default)]
    pub socket_events: u64,
    #[serde(default)]
    pub socket_events_dropped: u64,
    /// Exec events received since the agent started.
    #[serde(default)]
    pub exec_events: u64,
    /// Exec events whose process ended before its `/proc` entry could be read.
    #[serde(default)]
    pub exec_read_misses: u64,
    /// Times the kernel dropped events (buffer overrun); each is followed by a rescan.
    #[serde(default)]
    pub events_lost: u64,
    /// Reports waiting in the spool, and their size.
    #[serde(default)]
    pub spool_reports: u64,
    #[serde(default)]
    pub spool_bytes: u64,
    /// The agent's resident memory and CPU time used since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// Why the cloud's metadata could not be read, where the agent expected a cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_problem: Option<String>,
    /// File watching: the manifest's size, watches, overflows, missing paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<super::FileStats>,
    /// The agent's own process id: its connections to the collector explain themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// Whether the agent sees everything it should, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub state: CoverageState,
    /// Human-readable reasons, empty when the coverage is full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<String>,
}

impl AgentStatus {
    /// Full coverage and no statistics, until the agent has them.
    pub fn new(version: impl Into<String>, interval_secs: u32, started_at: OffsetDateTime) -> Self {
        AgentStatus {
            version: version.into(),
            interval_secs,
            started_at,
            coverage: Coverage::full(),
            stats: None,
        }
    }
}

impl Coverage {
    pub fn full() -> Self {
        Coverage { state: CoverageState::Full, why: Vec::new() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoverageState {
    Full,
    Degraded,
}

/// Everything the agent saw at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(with = "timestamp")]
    pub taken_at: OffsetDateTime,
    #[serde(default)]
    pub processes: Vec<Process>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Established TCP connections and connected UDP sockets.
    #[serde(default)]
    pub connections: Vec<Connection>,
}

/// The collector's answer to a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportResponse {
    pub host_id: i64,
    /// The sequence number the collector accepted.
    pub seq: u64,
    /// The collector asks for a full snapshot in the next report.
    #[serde(default)]
    pub resync: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Validate for Report {
    fn validate(&self) -> Result<(), ValidationError> {
        stored("seq", self.seq)?;
        stored("lost", self.lost)?;
        self.host.validate().map_err(|e| e.within("host"))?;
        self.agent.validate().map_err(|e| e.within("agent"))?;
        if self.snapshot.is_some() && self.delta.is_some() {
            return Err(ValidationError::new("delta", "a report carries a snapshot or a delta, not both"));
        }
        if let Some(s) = &self.snapshot {
            s.validate().map_err(|e| e.within("snapshot"))?;
        }
        if let Some(d) = &self.delta {
            d.validate().map_err(|e| e.within("delta"))?;
        }
        Ok(())
    }
}

impl Validate for HostFacts {
    fn validate(&self) -> Result<(), ValidationError> {
        nonempty("hostname", &self.hostname, limits::MAX_HOSTNAME_BYTES)?;
        name("hostname", &self.hostname, limits::MAX_HOSTNAME_BYTES)?;
        nonempty("machine_id", &self.machine_id, limits::MAX_NAME_BYTES)?;
        name("machine_id", &self.machine_id, limits::MAX_NAME_BYTES)?;
        name("os", &self.os, limits::MAX_NAME_BYTES)?;
        name("kernel", &self.kernel, limits::MAX_NAME_BYTES)?;
        name("arch", &self.arch, limits::MAX_NAME_BYTES)?;
        validate::tags("tags", &self.tags)?;
        if let Some(c) = &self.cloud {
            c.validate().map_err(|e| e.within("cloud"))?;
        }
        Ok(())
    }
}

impl Validate for AgentStatus {
    fn validate(&self) -> Result<(), ValidationError> {
        nonempty("version", &self.version, limits::MAX_NAME_BYTES)?;
        name("version", &self.version, limits::MAX_NAME_BYTES)?;
        if self.interval_secs == 0 || self.interval_secs > limits::MAX_INTERVAL_SECS {
            return Err(ValidationError::new(
                "interval_secs",
                format!("{} is outside 1..={}", self.interval_secs, limits::MAX_INTERVAL_SECS),
            ));
        }
        count("coverage.why", &self.coverage.why, limits::MAX_REASONS)?;
        for (i, why) in self.coverage.why.iter().enumerate() {
            text(format_args!("coverage.why[{i}]"), why, limits::MAX_NAME_BYTES * 4)?;
        }
        if let Some(s) = &self.stats {
            s.validate().map_err(|e| e.within("stats"))?;
        }
        Ok(())
    }
}

impl Validate for AgentStats {
    /// The sources' names without control characters, free text bounded (outputs escape it),
    /// numbers the store can keep.
    fn validate(&self) -> Result<(), ValidationError> {
        name("exec_source", &self.exec_source, limits::MAX_NAME_BYTES)?;
        name("socket_reader", &self.socket_reader, limits::MAX_NAME_BYTES)?;
        if let Some(why) = &self.exec_source_why {
            text("exec_source_why", why, limits::MAX_NAME_BYTES * 4)?;
        }
        if let Some(source) = &self.connection_source {
            name("connection_source", source, limits::MAX_NAME_BYTES)?;
        }
        if let Some(why) = &self.connection_source_why {
            text("connection_source_why", why, limits::MAX_NAME_BYTES * 4)?;
        }
        if let Some(p) = &self.cloud_problem {
            text("cloud_problem", p, limits::MAX_NAME_BYTES * 4)?;
        }
        for (field, n) in [
            ("exec_events", self.exec_events),
            ("exec_read_misses", self.exec_read_misses),
            ("events_lost", self.events_lost),
            ("socket_events", self.socket_events),
            ("socket_events_dropped", self.socket_events_dropped),
            ("spool_reports", self.spool_reports),
            ("spool_bytes", self.spool_bytes),
        ] {
            stored(field, n)?;
        }
        opt_stored("rss_bytes", self.rss_bytes)?;
        if let Some(c) = self.cpu_seconds
            && !(c.is_finite() && c >= 0.0)
        {
            return Err(ValidationError::new("cpu_seconds", format!("{c} is not a number of seconds")));
        }
        if let Some(f) = &self.files {
            f.validate().map_err(|e| e.within("files"))?;
        }
        Ok(())
    }
}

impl Validate for Snapshot {
    fn validate(&self) -> Result<(), ValidationError> {
        count("processes", &self.processes, limits::MAX_PROCESSES)?;
        count("listeners", &self.listeners, limits::MAX_LISTENERS)?;
        count("connections", &self.connections, limits::MAX_CONNECTIONS)?;
        for (i, p) in self.processes.iter().enumerate() {
            p.validate().map_err(|e| e.within(&format!("processes[{i}]")))?;
        }
        for (i, l) in self.listeners.iter().enumerate() {
            l.validate().map_err(|e| e.within(&format!("listeners[{i}]")))?;
        }
        for (i, c) in self.connections.iter().enumerate() {
            c.validate().map_err(|e| e.within(&format!("connections[{i}]")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Listener, Process, Protocol};
    use time::macros::datetime;

    fn sample() -> Report {
        let t = datetime!(2026-11-28 12:00:00 UTC);
        Report {
            session: 1,
            seq: 3,
            sent_at: t,
            host: HostFacts {
                hostname: "web-1".into(),
                machine_id: "abc".into(),
                os: "Debian GNU/Linux 12".into(),
                kernel: "6.1.0".into(),
                arch: "x86_64".into(),
                boot_time: Some(t),
                tags: [("role".to_owned(), "web".to_owned())].into(),
                cloud: None,
            },
            agent: AgentStatus {
                version: "0.1.0".into(),
                interval_secs: 10,
                started_at: t,
                coverage: Coverage::full(),
                stats: None,
            },
            snapshot: Some(Snapshot {
                taken_at: t,
                processes: vec![Process {
                    pid: 1,
                    ppid: 0,
                    name: "systemd".into(),
                    exe: Some("/usr/lib/systemd/systemd".into()),
                    exe_deleted: false,
                    cmdline: vec!["/sbin/init".into()],
                    cmdline_truncated: false,
                    uid: 0,
                    user: Some("root".into()),
                    start_time: t,
                    ..Process::new(0, 0, "", 0, t)
                }],
                listeners: vec![Listener {
                    protocol: Protocol::Tcp,
                    address: "::".parse().unwrap(),
                    port: 22,
                    pid: Some(1),
                    process: Some("sshd".into()),
                    exe: None,
                    uid: 0,
                    netns: None,
                    auth: Some(crate::v1::ListenerAuth {
                        verdict: crate::v1::AuthVerdict::LocalOnly,
                        service: "redis".into(),
                        reason: "protected mode".into(),
                        probed_at: t,
                    }),
                }],
                connections: vec![],
            }),
            delta: None,
            lost: 0,
            goodbye: None,
        }
    }

    #[test]
    fn json_round_trip_and_shape() {
        let r = sample();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["sent_at"], "2026-11-28T12:00:00.000Z");
        assert_eq!(json["snapshot"]["listeners"][0]["protocol"], "tcp");
        assert_eq!(json["snapshot"]["listeners"][0]["auth"]["verdict"], "local_only");
        assert_eq!(json["snapshot"]["listeners"][0]["auth"]["probed_at"], "2026-11-28T12:00:00.000Z");
        assert_eq!(json["agent"]["coverage"]["state"], "full");
        assert!(json.get("goodbye").is_none(), "absent optional fields are left out");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        r.validate().unwrap();
    }

    #[test]
    fn older_and_newer_peers_interoperate() {
        // A newer agent's extra fields are ignored; an older one's missing optional fields default.
        let mut json = serde_json::to_value(sample()).unwrap();
        json["snapshot"]["processes"][0]["cgroup"] = "/system.slice/x".into();
        json["future"] = serde_json::json!({"a": 1});
        json["snapshot"]["processes"][0].as_object_mut().unwrap().remove("user");
        json["host"].as_object_mut().unwrap().remove("tags");
        let r: Report = serde_json::from_value(json).unwrap();
        assert!(r.host.tags.is_empty());
        assert_eq!(r.snapshot.unwrap().processes[0].user, None);
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = sample();
        r.host.hostname = "web\n1".into();
        assert_eq!(r.validate().unwrap_err().to_string(), "host.hostname: contains a control character");
        let mut r = sample();
        r.snapshot.as_mut().unwrap().processes[0].cmdline = vec!["x".repeat(limits::MAX_CMDLINE_BYTES + 1)];
        let e = r.validate().unwrap_err();
        assert_eq!(e.path, "snapshot.processes[0].cmdline[0]");
        let mut r = sample();
        if let Some(a) = &mut r.snapshot.as_mut().unwrap().listeners[0].auth {
            a.reason = "x".repeat(crate::v1::MAX_AUTH_REASON_BYTES + 1);
        }
        assert_eq!(r.validate().unwrap_err().path, "snapshot.listeners[0].auth.reason");
        let mut r = sample();
        r.agent.interval_secs = 0;
        assert_eq!(r.validate().unwrap_err().path, "agent.interval_secs");
        r.agent.interval_secs = u32::MAX;
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "agent.interval_secs: 4294967295 is outside 1..=3600"
        );
    }
}
