//! hostwatch-agent: the host agent. It reads this machine's processes and listening sockets from
//! `/proc` and reports them to the collector, which alone decides what is a finding.
//!
//! # What the agent sends
//! A security reviewer should be able to read this list and know everything that leaves the host.
//!
//! To `POST /api/v1/enroll`, once (and again if the machine or collector changes):
//! - the enroll secret from the configuration;
//! - host facts and agent status, as in every report (below).
//!
//! To `POST /api/v1/report`, every `interval` (default 10 s), with the node key as bearer token:
//! - `seq`, `sent_at`;
//! - host facts: hostname, machine-id (or a generated id kept in `state_dir` on hosts without one),
//!   OS pretty name, kernel release, CPU architecture, boot time, the configured tags;
//! - agent status: version, interval, start time, coverage (`full`, or `degraded` and why);
//! - a snapshot of every process but kernel threads and zombies: pid, ppid, name, executable path and whether
//!   it was deleted, the command line **after redaction** ([`collect::redact`]) and cut to 8 KiB,
//!   effective uid and user name, start time;
//! - every listening TCP socket and unconnected UDP socket (IPv4, IPv6), in every network namespace
//!   on the host: protocol, local address and port, creating uid, the owning process's pid, name
//!   and executable, and the namespace's inode where it is not the host's own;
//! - every established TCP connection and connected UDP socket, the same way, with the remote
//!   address and port and whether it is inbound (to a local listener) or outbound;
//! - on a clean stop, one last report without a snapshot saying goodbye.
//!
//! Nothing else: no environment variables, no file contents, no network payloads.
//!
//! # Layout
//! [`config`] loads the configuration; [`collect`] reads the host; [`snapshot`] turns what was read
//! into the wire's types (its `Observer` keeps the caches that make rescans cheap); [`identity`] keeps the node key; [`transport`] talks to the collector;
//! [`runner`] ties them together until shutdown.

pub mod backoff;
pub mod cloud;
pub mod collect;
pub mod config;
pub mod identity;
pub mod logging;
pub mod runner;
pub mod signals;
pub mod snapshot;
pub mod spool;
pub mod tracker;
pub mod transport;

pub use config::AgentConfig;
pub use runner::{AgentError, run};
