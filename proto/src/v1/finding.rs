//! Findings: what the collector could not explain. Kind names are stable (JSON and SQL use them).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::timestamp;

/// What kind of unexplained thing a finding is about. Only ever extended: new kinds are added to
/// the design first, then here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    UnexpectedProcess,
    MissingProcess,
    UnexpectedListener,
    MissingListener,
    UnexpectedConnection,
    FileChanged,
    SuspiciousProcess,
    UnauthenticatedService,
    Outlier,
    NoBaseline,
    AmbiguousWorkload,
    DuplicateIdentity,
    AgentOffline,
    DataLost,
    FindingsHeldBack,
    UnexpectedSession,
}

impl FindingKind {
    pub const ALL: [FindingKind; 16] = [
        FindingKind::UnexpectedProcess,
        FindingKind::MissingProcess,
        FindingKind::UnexpectedListener,
        FindingKind::MissingListener,
        FindingKind::UnexpectedConnection,
        FindingKind::FileChanged,
        FindingKind::SuspiciousProcess,
        FindingKind::UnauthenticatedService,
        FindingKind::Outlier,
        FindingKind::NoBaseline,
        FindingKind::AmbiguousWorkload,
        FindingKind::DuplicateIdentity,
        FindingKind::AgentOffline,
        FindingKind::DataLost,
        FindingKind::FindingsHeldBack,
        FindingKind::UnexpectedSession,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::UnexpectedProcess => "unexpected_process",
            FindingKind::MissingProcess => "missing_process",
            FindingKind::UnexpectedListener => "unexpected_listener",
            FindingKind::MissingListener => "missing_listener",
            FindingKind::UnexpectedConnection => "unexpected_connection",
            FindingKind::FileChanged => "file_changed",
            FindingKind::SuspiciousProcess => "suspicious_process",
            FindingKind::UnauthenticatedService => "unauthenticated_service",
            FindingKind::Outlier => "outlier",
            FindingKind::NoBaseline => "no_baseline",
            FindingKind::AmbiguousWorkload => "ambiguous_workload",
            FindingKind::DuplicateIdentity => "duplicate_identity",
            FindingKind::AgentOffline => "agent_offline",
            FindingKind::DataLost => "data_lost",
            FindingKind::FindingsHeldBack => "findings_held_back",
            FindingKind::UnexpectedSession => "unexpected_session",
        }
    }
}

/// A name that is not one of a closed set; the message lists the set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?} (expected one of: {expected})")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
    pub expected: String,
}

impl FromStr for FindingKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FindingKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownName {
            what: "finding kind",
            name: s.to_owned(),
            expected: FindingKind::ALL.map(FindingKind::as_str).join(", "),
        })
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent a finding is, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] =
        [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl FromStr for Severity {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownName {
            what: "severity",
            name: s.to_owned(),
            expected: Severity::ALL.map(Severity::as_str).join(", "),
        })
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a finding is in its life: open -> acknowledged -> resolved, and back to open when its
/// item returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingStatus {
    Open,
    Acknowledged,
    Resolved,
}

impl FindingStatus {
    pub const ALL: [FindingStatus; 3] =
        [FindingStatus::Open, FindingStatus::Acknowledged, FindingStatus::Resolved];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingStatus::Open => "open",
            FindingStatus::Acknowledged => "acknowledged",
            FindingStatus::Resolved => "resolved",
        }
    }
}

impl FromStr for FindingStatus {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FindingStatus::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownName {
            what: "finding status",
            name: s.to_owned(),
            expected: FindingStatus::ALL.map(FindingStatus::as_str).join(", "),
        })
    }
}

impl fmt::Display for FindingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A finding as the API lists it.
///
/// `kind` is a string, not a [`FindingKind`], so that a tool built against this version still lists
/// the kinds a newer collector adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: i64,
    pub host_id: i64,
    pub hostname: String,
    pub kind: String,
    /// The built-in rule that filed it, for kinds that rules file.
    #[serde(default)]
    pub rule: Option<String>,
    pub severity: Severity,
    /// Short human string and the dedupe key within (host, kind, rule).
    pub subject: String,
    /// The item's fields: pid, exe, name, user, cmdline, protocol, address, port and so on.
    #[serde(default)]
    pub detail: serde_json::Value,
    pub status: FindingStatus,
    /// How many times its item was seen to start (an exec, a socket opened, a file changed):
    /// 10,000 runs of one program are one finding with 10,000 occurrences. Absent from older
    /// collectors: one.
    #[serde(default = "one")]
    pub occurrences: u64,
    /// Some occurrence was gone before the collector judged it (a program that ran for
    /// milliseconds, a listener that opened and closed while the collector was down): such a
    /// finding resolves only by acknowledgement.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
    #[serde(with = "timestamp")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "timestamp")]
    pub last_seen: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "timestamp::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// A silence was in force when it last opened: recorded, not sent to alert sinks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub silenced: bool,
    /// Who acknowledged it, when, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "timestamp::option")]
    pub acked_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_note: Option<String>,
}

fn one() -> u64 {
    1
}

/// Body of `POST /api/v1/findings/{id}/ack`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    #[serde(default)]
    pub note: Option<String>,
}

/// A maintenance window over one host or the hosts a selector picks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<std::collections::BTreeMap<String, String>>,
    #[serde(with = "timestamp")]
    pub starts_at: OffsetDateTime,
    #[serde(with = "timestamp")]
    pub ends_at: OffsetDateTime,
    pub reason: String,
    pub created_by: String,
}

/// Body of `POST /api/v1/silences`: exactly one of `host` (an id or a hostname) and `selector`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSilence {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub selector: Option<std::collections::BTreeMap<String, String>>,
    /// How long from now, in seconds.
    pub seconds: u64,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in FindingKind::ALL {
            assert_eq!(k.as_str().parse::<FindingKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.as_str()));
        }
        for s in Severity::ALL {
            assert_eq!(s.as_str().parse::<Severity>().unwrap(), s);
        }
        for s in FindingStatus::ALL {
            assert_eq!(s.as_str().parse::<FindingStatus>().unwrap(), s);
        }
        let e = "bogus".parse::<FindingKind>().unwrap_err().to_string();
        assert!(e.contains("unknown finding kind \"bogus\"") && e.contains("no_baseline"), "{e}");
    }

    #[test]
    fn severities_are_ordered() {
        assert!(Severity::Info < Severity::Low && Severity::High < Severity::Critical);
    }
}
