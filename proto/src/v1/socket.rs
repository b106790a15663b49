//! Sockets as the agent reports them.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::timestamp;
use super::validate::{Validate, ValidationError, limits, name, opt_name, opt_stored, opt_text, text};

/// Transport protocol of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!("unknown protocol {other:?} (expected tcp or udp)")),
        }
    }
}

/// A socket that accepts: TCP in LISTEN state, or UDP bound and not connected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Listener {
    pub protocol: Protocol,
    /// Local address: `0.0.0.0` and `::` mean every address.
    pub address: IpAddr,
    pub port: u16,
    /// Owning process: of the processes holding the socket, the one with the lowest pid (the
    /// parent, for servers that fork workers). Absent where the agent could not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The owning process's name. Shared (`Arc`): an agent's 10,000 connections of a few
    /// processes hold a few names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Arc<str>>,
    /// The owning process's executable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<Arc<str>>,
    /// User id that created the socket.
    pub uid: u32,
    /// Inode of the network namespace the socket lives in; absent where only the agent's own
    /// namespace was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// Whether it answers a client that gives no credentials, as the agent's last probe of it
    /// found; absent where the listener was not probed (no known protocol, probing off, not yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ListenerAuth>,
}

/// What the agent's probe of one of its own listeners found. A probe is read-only: one short
/// connection that sends no credentials and writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListenerAuth {
    pub verdict: AuthVerdict,
    /// The protocol probed (`redis`, `memcached`, `docker`, `elasticsearch`, `mongodb`, `etcd`,
    /// `kubelet`, `jupyter`, `metrics`, `pprof`).
    pub service: String,
    /// What answered, or why there is no verdict, in words (from the agent: untrusted text).
    pub reason: String,
    /// When the probe ran.
    #[serde(with = "timestamp")]
    pub probed_at: OffsetDateTime,
}

/// Whether a service answers anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthVerdict {
    /// It asked for credentials, or refused a client without them.
    Authenticated,
    /// It did what was asked for a client that gave no credentials.
    Unauthenticated,
    /// It answers clients on this host without credentials and refuses the others (Redis in
    /// protected mode without a password).
    LocalOnly,
    /// No verdict; the reason says why (another network namespace, no answer in time, an answer
    /// the probe does not recognise).
    Unknown,
}

impl AuthVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthVerdict::Authenticated => "authenticated",
            AuthVerdict::Unauthenticated => "unauthenticated",
            AuthVerdict::LocalOnly => "local_only",
            AuthVerdict::Unknown => "unknown",
        }
    }
}

impl std::str::FromStr for AuthVerdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "authenticated" => Ok(AuthVerdict::Authenticated),
            "unauthenticated" => Ok(AuthVerdict::Unauthenticated),
            "local_only" => Ok(AuthVerdict::LocalOnly),
            "unknown" => Ok(AuthVerdict::Unknown),
            other => Err(format!(
                "unknown verdict {other:?} (expected authenticated, unauthenticated, local_only or unknown)"
            )),
        }
    }
}

/// Bytes of a probe's reason.
pub const MAX_AUTH_REASON_BYTES: usize = 512;

impl Validate for ListenerAuth {
    fn validate(&self) -> Result<(), ValidationError> {
        name("service", &self.service, limits::MAX_NAME_BYTES)?;
        text("reason", &self.reason, MAX_AUTH_REASON_BYTES)
    }
}

/// Which side opened a connection, as far as the host can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// To a local listener on the same port: a peer connected to this host.
    Inbound,
    /// Everything else: this host connected to the peer.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "inbound" => Ok(Direction::Inbound),
            "outbound" => Ok(Direction::Outbound),
            other => Err(format!("unknown direction {other:?} (expected inbound or outbound)")),
        }
    }
}

/// An established TCP connection or a connected UDP socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Connection {
    pub protocol: Protocol,
    pub local_address: IpAddr,
    pub local_port: u16,
    pub remote_address: IpAddr,
    pub remote_port: u16,
    pub direction: Direction,
    /// Owning process, as for [`Listener`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<Arc<str>>,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

impl Validate for Connection {
    fn validate(&self) -> Result<(), ValidationError> {
        opt_stored("netns", self.netns)?;
        opt_name("process", &self.process, limits::MAX_NAME_BYTES)?;
        opt_text("exe", &self.exe, limits::MAX_PATH_BYTES)
    }
}

impl Validate for Listener {
    fn validate(&self) -> Result<(), ValidationError> {
        opt_stored("netns", self.netns)?;
        opt_name("process", &self.process, limits::MAX_NAME_BYTES)?;
        opt_text("exe", &self.exe, limits::MAX_PATH_BYTES)?;
        if let Some(a) = &self.auth {
            a.validate().map_err(|e| e.within("auth"))?;
        }
        Ok(())
    }
}
