//! Deltas: after a full snapshot, an agent sends only what was added, changed or removed.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::timestamp;
use super::validate::{Validate, ValidationError, count, limits, opt_stored};
use super::{Connection, FileChange, Listener, Process, Protocol};

/// What changed since the report before, in each kind of state. Applied in the order added,
/// updated, removed: a process that started and exited between two reports is in both `added`
/// and `removed`, so its run is in the collector's history though it was never in a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default)]
    pub processes: Changes<Process, ProcessKey>,
    #[serde(default)]
    pub listeners: Changes<Listener, ListenerKey>,
    #[serde(default)]
    pub connections: Changes<Connection, ConnectionKey>,
    /// Execs the agent saw but could not read: the process was gone before its `/proc` entry
    /// could be. Only the pid and the time are known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread_execs: Vec<UnreadExec>,
    /// Programs a process ran and left by a later exec under the same pid before any report
    /// showed them (a dropper that execs its payload, `sh -c 'exec …'`), oldest first. The
    /// process's state (`processes`) has only its last program; these are history, each judged
    /// as gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_execs: Vec<PassedExec>,
    /// Changes to watched files since the report before, in the order seen. Files are not part
    /// of a snapshot (the agent's manifest holds them); a change is reported once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileChange>,
}

/// An exec seen through the process connector whose process ended before it could be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadExec {
    pub pid: u32,
    #[serde(with = "timestamp")]
    pub at: OffsetDateTime,
}

/// A program that a process ran from `at` (its exec) until `until` (the next exec of the same
/// process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassedExec {
    pub process: Process,
    #[serde(with = "timestamp")]
    pub at: OffsetDateTime,
    #[serde(with = "timestamp")]
    pub until: OffsetDateTime,
}

/// Items that appeared, items whose fields changed (same key), and keys of items that went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "T: Serialize, K: Serialize",
    deserialize = "T: Deserialize<'de>, K: Deserialize<'de>"
))]
pub struct Changes<T, K> {
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<T>,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub updated: Vec<T>,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Removed<K>>,
}

impl<T, K> Default for Changes<T, K> {
    fn default() -> Self {
        Changes { added: Vec::new(), updated: Vec::new(), removed: Vec::new() }
    }
}

impl<T, K> Changes<T, K> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.added.len() + self.updated.len() + self.removed.len()
    }
}

/// A key of something that went, and when it was seen to go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed<K> {
    #[serde(flatten)]
    pub key: K,
    #[serde(with = "timestamp")]
    pub at: OffsetDateTime,
}

/// A process is its pid and start time: a reused pid is another process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessKey {
    pub pid: u32,
    #[serde(with = "timestamp")]
    pub start_time: OffsetDateTime,
}

/// A listener is its protocol, address, port and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListenerKey {
    pub protocol: Protocol,
    pub address: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// A connection is its protocol, both ends and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnectionKey {
    pub protocol: Protocol,
    pub local_address: IpAddr,
    pub local_port: u16,
    pub remote_address: IpAddr,
    pub remote_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
        ConnectionKey {
            protocol: self.protocol,
            local_address: self.local_address,
            local_port: self.local_port,
            remote_address: self.remote_address,
            remote_port: self.remote_port,
            netns: self.netns,
        }
    }
}

impl Validate for ProcessKey {
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

impl Validate for ListenerKey {
    fn validate(&self) -> Result<(), ValidationError> {
        opt_stored("netns", self.netns)
    }
}

impl Validate for ConnectionKey {
    fn validate(&self) -> Result<(), ValidationError> {
        opt_stored("netns", self.netns)
    }
}

impl Validate for Delta {
    fn validate(&self) -> Result<(), ValidationError> {
        fn each<T: Validate, K: Validate>(
            path: &str,
            c: &Changes<T, K>,
            max: usize,
        ) -> Result<(), ValidationError> {
            count(&format!("{path}.added"), &c.added, max)?;
            count(&format!("{path}.updated"), &c.updated, max)?;
            count(&format!("{path}.removed"), &c.removed, max)?;
            for (i, x) in c.added.iter().enumerate() {
                x.validate().map_err(|e| e.within(&format!("{path}.added[{i}]")))?;
            }
            for (i, x) in c.updated.iter().enumerate() {
                x.validate().map_err(|e| e.within(&format!("{path}.updated[{i}]")))?;
            }
            for (i, x) in c.removed.iter().enumerate() {
                x.key.validate().map_err(|e| e.within(&format!("{path}.removed[{i}]")))?;
            }
            Ok(())
        }
        each("processes", &self.processes, limits::MAX_PROCESSES)?;
        count("unread_execs", &self.unread_execs, limits::MAX_PROCESSES)?;
        count("passed_execs", &self.passed_execs, limits::MAX_PROCESSES)?;
        for (i, x) in self.passed_execs.iter().enumerate() {
            x.process.validate().map_err(|e| e.within(&format!("passed_execs[{i}]")))?;
        }
        each("listeners", &self.listeners, limits::MAX_LISTENERS)?;
        each("connections", &self.connections, limits::MAX_CONNECTIONS)?;
        count("files", &self.files, limits::MAX_FILE_CHANGES)?;
        for (i, c) in self.files.iter().enumerate() {
            c.validate().map_err(|e| e.within(&format!("files[{i}]")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_keys_are_flat_with_their_time() {
        let t = timestamp::parse("2026-11-28T12:00:00Z").unwrap();
        let r = Removed { key: ProcessKey { pid: 7, start_time: t }, at: t };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"pid": 7, "start_time": "2026-11-28T12:00:00.000Z", "at": "2026-11-28T12:00:00.000Z"})
        );
        let back: Removed<ProcessKey> = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let empty: Delta = serde_json::from_str("{}").unwrap();
        assert!(empty.processes.is_empty() && empty.listeners.is_empty());
        assert_eq!(
            serde_json::to_string(&Delta::default()).unwrap(),
            r#"{"processes":{},"listeners":{},"connections":{}}"#
        );
    }
}
