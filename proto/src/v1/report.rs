//! What an agent sends each interval, and what the collector answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::timestamp;
use super::validate::{self, Validate, ValidationError, count, limits, nonempty, text};
use super::{Listener, Process};

/// One report: who is sending, in what state the agent is, and (for a full report) a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Increases by one with every report an agent sends under one node key, from 1.
    pub seq: u64,
    #[serde(with = "timestamp")]
    pub sent_at: OffsetDateTime,
    pub host: HostFacts,
    pub agent: AgentStatus,
    /// The whole current state. Absent in a heartbeat or a goodbye.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
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
    /// Tags from the agent's configuration (and later from the cloud); they select the workload.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The agent's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    /// Seconds between reports; the collector derives "offline" from it.
    pub interval_secs: u32,
    #[serde(with = "timestamp")]
    pub started_at: OffsetDateTime,
    pub coverage: Coverage,
}

/// Whether the agent sees everything it should, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub state: CoverageState,
    /// Human-readable reasons, empty when the coverage is full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<String>,
}

impl Coverage {
    pub fn full() -> Self {
        Coverage {
            state: CoverageState::Full,
            why: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoverageState {
    Full,
    Degraded,
}

/// Everything the agent saw at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(with = "timestamp")]
    pub taken_at: OffsetDateTime,
    #[serde(default)]
    pub processes: Vec<Process>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
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

impl Validate for Report {
    fn validate(&self) -> Result<(), ValidationError> {
        self.host.validate().map_err(|e| e.within("host"))?;
        self.agent.validate().map_err(|e| e.within("agent"))?;
        if let Some(s) = &self.snapshot {
            s.validate().map_err(|e| e.within("snapshot"))?;
        }
        Ok(())
    }
}

impl Validate for HostFacts {
    fn validate(&self) -> Result<(), ValidationError> {
        nonempty("hostname", &self.hostname, limits::MAX_HOSTNAME_BYTES)?;
        nonempty("machine_id", &self.machine_id, limits::MAX_NAME_BYTES)?;
        text("os", &self.os, limits::MAX_NAME_BYTES)?;
        text("kernel", &self.kernel, limits::MAX_NAME_BYTES)?;
        text("arch", &self.arch, limits::MAX_NAME_BYTES)?;
        validate::tags("tags", &self.tags)
    }
}

impl Validate for AgentStatus {
    fn validate(&self) -> Result<(), ValidationError> {
        nonempty("version", &self.version, limits::MAX_NAME_BYTES)?;
        if self.interval_secs == 0 {
            return Err(ValidationError::new("interval_secs", "must be at least 1"));
        }
        count("coverage.why", &self.coverage.why, limits::MAX_REASONS)?;
        for (i, why) in self.coverage.why.iter().enumerate() {
            text(format_args!("coverage.why[{i}]"), why, limits::MAX_NAME_BYTES * 4)?;
        }
        Ok(())
    }
}

impl Validate for Snapshot {
    fn validate(&self) -> Result<(), ValidationError> {
        count("processes", &self.processes, limits::MAX_PROCESSES)?;
        count("listeners", &self.listeners, limits::MAX_LISTENERS)?;
        for (i, p) in self.processes.iter().enumerate() {
            p.validate().map_err(|e| e.within(&format!("processes[{i}]")))?;
        }
        for (i, l) in self.listeners.iter().enumerate() {
            l.validate().map_err(|e| e.within(&format!("listeners[{i}]")))?;
        }
        Ok(())
    }
}
