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
//! To `POST /api/v1/report`, with the node key as bearer token: a report whenever something changed
//! (batched over at most a second), else a heartbeat every `interval` (default 10 s). Each carries:
//! - `session` (random per run), `seq`, `sent_at`, and `lost`: how many reports before this one
//!   the spool had to drop (full, or a disk that refused the write) and were never sent;
//! - host facts: hostname, machine-id (or a generated id kept in `state_dir` on hosts without one),
//!   OS pretty name, kernel release, CPU architecture, boot time, tags (the cloud's, under the
//!   configured ones), and on a cloud instance what its metadata service says: provider,
//!   instance id, account or subscription, region, zone, image, instance type, resource group, tags;
//! - agent status: version, interval, start time, coverage (`full`, or `degraded` and why), and its
//!   own account: exec source (`proc_connector` or `polling`, and why), socket reader, exec events
//!   seen, read too late, and lost, spool size, its RSS and CPU time, and a cloud metadata problem;
//! - then either a snapshot (at the start of a session, every `snapshot_every`, and when the
//!   collector asks) or a delta (what was added, updated and removed since the last report, with
//!   when it was seen gone) of:
//!   - every process but kernel threads and zombies: pid, ppid, name, executable path and whether
//!     it was deleted, is a memfd or sits in a world-writable directory, the executable's SHA-256,
//!     the command line **after redaction** ([`collect::redact`]) and cut to 8 KiB, effective uid
//!     and user name, start time, cgroup with container id and systemd unit, CPU percent, RSS;
//!   - every listening TCP socket and unconnected UDP socket (IPv4, IPv6), in every network
//!     namespace on the host: protocol, local address and port, creating uid, the owning process's
//!     pid, name and executable, and the namespace's inode where it is not the host's own;
//!   - every established TCP connection and connected UDP socket, the same way, with the remote
//!     address and port and whether it is inbound (to a local listener) or outbound;
//!   - in a delta, also processes that started and ended between two reports, and execs whose
//!     process was gone before it could be read (pid and time only);
//!   - in a delta, changes to watched files (`[files]`): the path (and the old path of a rename),
//!     created, modified, deleted, metadata or renamed, how it was found (live, at start after
//!     downtime, by a rescan, or since an image's bake), and the state before and after: type,
//!     mode, uid, gid, size, mtime, inode, the content's SHA-256 and a link's target;
//! - in the agent status, file watching: entries in the manifest, missing watched paths, the
//!   last scan's time;
//! - on a clean stop, one last report without state saying goodbye.
//!
//! Nothing else: no environment variables, no file contents (a hash of them only), no network
//! payloads. From the cloud's metadata service the agent reads the instance identity and tags,
//! never credentials.
//!
//! # Layout
//! [`config`] loads the configuration; [`collect`] reads the host; [`snapshot`] turns what was read
//! into the wire's types (its `Observer` keeps the caches that make rescans cheap); [`tracker`]
//! turns changes into deltas; [`spool`] keeps reports until the collector has them; [`cloud`]
//! reads instance facts; [`files`] keeps the manifest of watched files and finds their changes;
//! [`identity`] keeps the node key; [`transport`] talks to the collector; [`runner`] ties them
//! together until shutdown.

pub mod backoff;
pub mod cloud;
pub mod collect;
pub mod config;
pub mod doctor;
pub mod files;
pub mod identity;
pub mod memory;
pub mod probe;
pub mod ratelimit;
pub mod runner;
pub mod shared;
pub mod snapshot;
pub mod spool;
pub mod stop;
pub mod tracker;
pub mod transport;

pub use config::AgentConfig;
pub use runner::{AgentError, run};
