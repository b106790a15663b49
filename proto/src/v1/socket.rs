//! Sockets as the agent reports them.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::validate::{Validate, ValidationError, limits, opt_name, opt_stored, opt_text};

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
        opt_text("exe", &self.exe, limits::MAX_PATH_BYTES)
    }
}
