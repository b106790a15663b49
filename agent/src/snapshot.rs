//! One observation of the host, converted to the wire's types: the edge between what the
//! collectors read and what the agent sends.

use std::collections::{BTreeMap, HashMap, HashSet};

use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;

use crate::collect::process::ProcessRecord;
use crate::collect::sockets::owners::ProcKey;
use crate::collect::sockets::{self, OwnerCache, Reader, SockState, SocketRecord, SocketSource, Want};
use crate::collect::{self, HostRoot, netns};

/// Everything one pass over the host produced.
#[derive(Debug, Clone)]
pub struct Observation {
    pub host: collect::host::HostInfo,
    pub snapshot: proto::Snapshot,
    pub coverage: proto::Coverage,
}

impl Observation {
    /// The host facts of a report from this observation.
    pub fn host_facts(&self, machine_id: &str, tags: &BTreeMap<String, String>) -> proto::HostFacts {
        host_facts(&self.host, machine_id, tags)
    }
}

/// Host facts for the wire. `machine_id` is passed in because a host without one uses the id the
/// agent generated and keeps in its state directory.
pub fn host_facts(
    host: &collect::host::HostInfo,
    machine_id: &str,
    tags: &BTreeMap<String, String>,
) -> proto::HostFacts {
    proto::HostFacts {
        hostname: host.hostname.clone(),
        machine_id: machine_id.to_owned(),
        os: host.os.clone(),
        kernel: host.kernel.clone(),
        arch: std::env::consts::ARCH.to_owned(),
        boot_time: host.boot_time,
        tags: tags.clone(),
    }
}

/// The agent's status for the wire.
pub fn agent_status(
    interval: std::time::Duration,
    started_at: OffsetDateTime,
    coverage: proto::Coverage,
) -> proto::AgentStatus {
    proto::AgentStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        interval_secs: u32::try_from(interval.as_secs()).unwrap_or(u32::MAX).max(1),
        started_at,
        coverage,
    }
}

/// Reads the host, keeping what makes the next read cheaper (socket owners, the socket reader
/// that works here). Blocking: call it on a blocking thread.
#[derive(Debug)]
pub struct Observer {
    root: HostRoot,
    sockets: SocketSource,
    owners: OwnerCache,
}

impl Observer {
    pub fn new(root: HostRoot, reader: Reader) -> Self {
        Observer { root, sockets: SocketSource::new(reader), owners: OwnerCache::default() }
    }

    /// The socket reader in use (sock_diag, or /proc/net after a refusal).
    pub fn socket_reader(&self) -> Reader {
        self.sockets.reader()
    }

    /// Reads the host once: processes, sockets in every network namespace, their owners.
    pub fn observe(&mut self) -> Observation {
        let root = &self.root;
        let taken_at = OffsetDateTime::now_utc();
        let host = collect::host::read(root);
        let (users, users_error) = collect::users::Users::load(&root.etc.join("passwd"));
        let procs = collect::process::scan(root);
        let pids: Vec<u32> = procs.items.iter().map(|p| p.pid).collect();
        let namespaces = netns::discover(root, &pids);
        let socks = self.sockets.read(root, &namespaces, Want::ALL);
        let mut problems = procs.problems;
        let wanted: HashSet<u64> = socks.items.iter().map(|s| s.inode).collect();
        let keys: Vec<ProcKey> = procs.items.iter().map(|p| (p.pid, p.start_ticks)).collect();
        let (owners, owner_problems) = self.owners.resolve(root, &wanted, &keys);

        let by_pid: HashMap<u32, &ProcessRecord> = procs.items.iter().map(|p| (p.pid, p)).collect();
        let owner = |inode: u64| {
            let pid = owners.get(&inode).and_then(|v| v.first().copied());
            (pid, pid.and_then(|pid| by_pid.get(&pid)))
        };
        let own_ns = namespaces.iter().find(|n| n.own).map(|n| n.inode);
        // The agent's own namespace is the host's, unless it runs inside another one; a
        // namespace is named only where it is not that one.
        let ns_of = |inode: u64| (Some(inode) != own_ns).then_some(inode);
        let listening: Vec<&SocketRecord> =
            socks.items.iter().filter(|s| s.state == SockState::Listen).collect();
        let mut listeners = Vec::new();
        let mut connections = Vec::new();
        let mut unowned = 0;
        for s in &socks.items {
            let (pid, proc) = owner(s.inode);
            unowned += usize::from(pid.is_none());
            match s.state {
                SockState::Listen => listeners.push(proto::Listener {
                    protocol: s.protocol,
                    address: s.local.ip(),
                    port: s.local.port(),
                    pid,
                    process: proc.map(|p| p.name.clone()),
                    exe: proc.and_then(|p| p.exe.clone()),
                    uid: s.uid,
                    netns: ns_of(s.netns),
                }),
                SockState::Connected => connections.push(proto::Connection {
                    protocol: s.protocol,
                    local_address: s.local.ip(),
                    local_port: s.local.port(),
                    remote_address: s.remote.ip(),
                    remote_port: s.remote.port(),
                    direction: if sockets::is_inbound(s, &listening) {
                        proto::Direction::Inbound
                    } else {
                        proto::Direction::Outbound
                    },
                    pid,
                    process: proc.map(|p| p.name.clone()),
                    exe: proc.and_then(|p| p.exe.clone()),
                    uid: s.uid,
                    netns: ns_of(s.netns),
                }),
            }
        }

        let processes: Vec<proto::Process> = procs
            .items
            .into_iter()
            .map(|p| proto::Process {
                pid: p.pid,
                ppid: p.ppid,
                user: users.name(p.uid).map(str::to_owned),
                name: p.name,
                exe: p.exe,
                exe_deleted: p.exe_deleted,
                cmdline: p.cmdline,
                cmdline_truncated: p.cmdline_truncated,
                uid: p.uid,
                start_time: p.start_time,
            })
            .collect();

        let mut why = Vec::new();
        if problems.denied > 0 {
            why.push(format!(
                "{} process files unreadable for lack of privilege (run as root or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)",
                problems.denied
            ));
        }
        if unowned > 0 && owner_problems.denied > 0 {
            why.push(format!(
                "owner unknown for {unowned} sockets: {} processes' file descriptors unreadable",
                owner_problems.denied
            ));
        }
        problems.merge(owner_problems);
        problems.merge(socks.problems);
        why.extend(problems.failed.iter().take(5).cloned());
        if let Some(e) = users_error {
            why.push(format!("user names unknown: {e}"));
        }
        let coverage = if why.is_empty() {
            proto::Coverage::full()
        } else {
            proto::Coverage { state: proto::CoverageState::Degraded, why }
        };
        Observation {
            host,
            snapshot: proto::Snapshot { taken_at, processes, listeners, connections },
            coverage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_of_this_machine() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let o = Observer::new(HostRoot::default(), Reader::SockDiag).observe();
        let me = std::process::id();
        let listener = o.snapshot.listeners.iter().find(|x| x.port == port).expect("own listener");
        assert_eq!(listener.pid, Some(me));
        assert!(listener.process.is_some() && listener.exe.is_some());
        let p = o.snapshot.processes.iter().find(|p| p.pid == me).expect("own process");
        assert_eq!(p.uid, nix::unistd::geteuid().as_raw());
        assert!(p.user.is_some(), "uid {} has a name in /etc/passwd", p.uid);
        // Everything observed is within the wire's limits.
        use hostwatch_proto::v1::Validate;
        o.snapshot.validate().unwrap();
    }
}
