//! One observation of the host, converted to the wire's types: the edge between what the
//! collectors read and what the agent sends.

use std::collections::{BTreeMap, HashSet};

use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;

use crate::collect::{self, HostRoot};

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

/// Reads the host once. Blocking: call it on a blocking thread.
pub fn observe(root: &HostRoot) -> Observation {
    let taken_at = OffsetDateTime::now_utc();
    let host = collect::host::read(root);
    let (users, users_error) = collect::users::Users::load(&root.etc.join("passwd"));
    let procs = collect::process::scan(root);
    let socks = collect::sockets::listening(root);
    let mut proc_problems = procs.problems;
    let wanted: HashSet<u64> = socks.items.iter().map(|s| s.inode).collect();
    let pids: Vec<u32> = procs.items.iter().map(|p| p.pid).collect();
    let (owners, owner_problems) = collect::sockets::owners(root, &wanted, &pids);

    let by_pid: std::collections::HashMap<u32, &collect::process::ProcessRecord> =
        procs.items.iter().map(|p| (p.pid, p)).collect();
    let listeners: Vec<proto::Listener> = socks
        .items
        .iter()
        .map(|s| {
            let pid = owners.get(&s.inode).and_then(|v| v.first().copied());
            let owner = pid.and_then(|pid| by_pid.get(&pid));
            proto::Listener {
                protocol: s.protocol,
                address: s.local.ip(),
                port: s.local.port(),
                pid,
                process: owner.map(|p| p.name.clone()),
                exe: owner.and_then(|p| p.exe.clone()),
                uid: s.uid,
            }
        })
        .collect();
    let unowned = listeners.iter().filter(|l| l.pid.is_none()).count();

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
    if proc_problems.denied > 0 {
        why.push(format!(
            "{} process files unreadable for lack of privilege (run as root or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)",
            proc_problems.denied
        ));
    }
    if unowned > 0 && owner_problems.denied > 0 {
        why.push(format!(
            "owner unknown for {unowned} listening sockets: {} processes' file descriptors unreadable",
            owner_problems.denied
        ));
    }
    proc_problems.merge(owner_problems);
    proc_problems.merge(socks.problems);
    why.extend(proc_problems.failed.iter().take(5).cloned());
    if let Some(e) = users_error {
        why.push(format!("user names unknown: {e}"));
    }
    let coverage = if why.is_empty() {
        proto::Coverage::full()
    } else {
        proto::Coverage { state: proto::CoverageState::Degraded, why }
    };
    Observation { host, snapshot: proto::Snapshot { taken_at, processes, listeners }, coverage }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_of_this_machine() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let o = observe(&HostRoot::default());
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
