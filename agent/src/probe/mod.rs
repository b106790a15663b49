//! Probes of this host's own listeners for services that answer anyone: a Redis without a
//! password, a Docker API on 2375, a kubelet that lists its pods to a stranger.
//!
//! - Which: a TCP listener whose owning process or port suggests a protocol the agent knows
//!   ([`Service::guess`]), unless `[probes]` turns that protocol off or excludes the port.
//! - When: as it appears, and again once its result is a day old ([`ProbeConfig::every`]);
//!   results are kept in `state_dir/probes.json` with the owner's pid, so a restarted agent does
//!   not probe again what it probed and a restarted service (a new owner) is probed at once.
//!   One probe at a time, at most [`PER_MINUTE`] a minute.
//! - How: one short connection, reads bounded in bytes ([`READ_MAX`]) and time (`timeout`), no
//!   credentials, no command that writes; HTTP says who it is (`User-Agent: hostwatch-probe/…`);
//!   TLS accepts any server certificate and presents none. A listener on one address
//!   is reached there; one on every address through a non-loopback address of this host (Redis
//!   in protected mode answers loopback differently), loopback only where the host has no other.
//! - Another network namespace (a container's): probed from inside it, on a thread of its own
//!   that enters it with setns(2) and ends there, reaching the listener through that namespace's
//!   own addresses. That needs CAP_SYS_ADMIN, which the shipped unit does not grant
//!   (`RestrictNamespaces=yes`): there such listeners are "unknown: other network namespace"
//!   with the kernel's refusal, and docs/operations.md shows the drop-in that allows it.
//! - Not probed: UDP.
//!
//! Every answer is hostile input: parsed by bounded code that the fuzz targets exercise, and
//! what is kept of it (the reason) is short and printable.

mod address;
mod http;
mod memcached;
mod mongodb;
mod redis;
mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hostwatch_proto::v1::{self as proto, AuthVerdict, ListenerAuth, ListenerKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use self::address::HostAddresses;

/// Bytes read of one answer, at most: enough for a Redis INFO section, a JSON version document or
/// the first lines of a metrics page.
pub const READ_MAX: usize = 64 * 1024;
/// Probes started a minute, at most: a host that opens a hundred Redis instances at once is
/// probed over a few minutes, not in a burst.
pub const PER_MINUTE: usize = 30;
/// The state file under the state directory.
const STATE_FILE: &str = "probes.json";

/// A protocol the agent can probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Redis,
    Memcached,
    Docker,
    Elasticsearch,
    Mongodb,
    Etcd,
    Kubelet,
    Jupyter,
    Metrics,
    Pprof,
}

impl Service {
    pub const ALL: [Service; 10] = [
        Service::Redis,
        Service::Memcached,
        Service::Docker,
        Service::Elasticsearch,
        Service::Mongodb,
        Service::Etcd,
        Service::Kubelet,
        Service::Jupyter,
        Service::Metrics,
        Service::Pprof,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Redis => "redis",
            Service::Memcached => "memcached",
            Service::Docker => "docker",
            Service::Elasticsearch => "elasticsearch",
            Service::Mongodb => "mongodb",
            Service::Etcd => "etcd",
            Service::Kubelet => "kubelet",
            Service::Jupyter => "jupyter",
            Service::Metrics => "metrics",
            Service::Pprof => "pprof",
        }
    }

    /// What a listener's owning process and port suggest it speaks. The process's name decides
    /// where it is one the agent knows; the port where not (a renamed binary on Redis's port is
    /// still probed as Redis).
    pub fn guess(process: Option<&str>, exe: Option<&str>, port: u16) -> Option<Service> {
        let name = process.unwrap_or_default();
        let base = exe.and_then(|e| e.rsplit('/').next()).unwrap_or_default();
        let is = |n: &str| name == n || base == n;
        if is("redis-server") || is("valkey-server") || is("keydb-server") {
            return Some(Service::Redis);
        }
        if is("memcached") {
            return Some(Service::Memcached);
        }
        if is("dockerd") {
            return Some(Service::Docker);
        }
        if is("mongod") || is("mongos") {
            return Some(Service::Mongodb);
        }
        if is("etcd") {
            // etcd's peer port (2380) speaks only to members.
            return (port != 2380).then_some(Service::Etcd);
        }
        if is("kubelet") {
            return matches!(port, 10250 | 10255).then_some(Service::Kubelet);
        }
        if name.starts_with("jupyter") || base.starts_with("jupyter") {
            return Some(Service::Jupyter);
        }
        if name.ends_with("_exporter") || is("prometheus") {
            return Some(Service::Metrics);
        }
        match port {
            6379 => Some(Service::Redis),
            11211 => Some(Service::Memcached),
            2375 | 2376 => Some(Service::Docker),
            9200 => Some(Service::Elasticsearch),
            27017 => Some(Service::Mongodb),
            2379 => Some(Service::Etcd),
            10250 | 10255 => Some(Service::Kubelet),
            8888 => Some(Service::Jupyter),
            9100 => Some(Service::Metrics),
            6060 => Some(Service::Pprof),
            _ => None,
        }
    }
}

impl std::str::FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Service::ALL.iter().map(|p| p.as_str()).collect();
            format!("unknown protocol {s:?} (expected one of {})", names.join(", "))
        })
    }
}

/// `[probes]`, checked.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Probing at all.
    pub enabled: bool,
    /// Protocols turned off.
    pub off: Vec<Service>,
    /// Ports never probed.
    pub exclude_ports: Vec<u16>,
    /// One probe's whole time: connect, ask, read.
    pub timeout: Duration,
    /// A listener is probed again when its result is this old.
    pub every: Duration,
    /// The address probes of listeners on every address go through.
    pub via: Option<IpAddr>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            enabled: true,
            off: Vec::new(),
            exclude_ports: Vec::new(),
            timeout: Duration::from_secs(3),
            every: Duration::from_secs(24 * 3600),
            via: None,
        }
    }
}

/// What one probe concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: AuthVerdict,
    pub reason: String,
}

impl Outcome {
    pub fn new(verdict: AuthVerdict, reason: impl Into<String>) -> Outcome {
        Outcome { verdict, reason: reason.into() }
    }

    fn unknown(reason: impl Into<String>) -> Outcome {
        Outcome::new(AuthVerdict::Unknown, reason)
    }
}

/// One probe to run: where to connect and what to speak.
#[derive(Debug, Clone)]
pub struct Job {
    pub key: ListenerKey,
    pub pid: Option<u32>,
    pub service: Service,
    /// Where to connect; for a job in another namespace, the address the listener is bound to,
    /// chosen among that namespace's own addresses once inside it.
    pub target: SocketAddr,
    /// The listener is bound to loopback alone.
    pub loopback_only: bool,
    /// The listener is in another network namespace, entered through this.
    pub netns: Option<Enter>,
}

/// Another network namespace: the file that enters it (`/proc/PID/ns/net` of the listener's
/// owner) and its inode, checked on the opened file so that a reused pid is not entered.
#[derive(Debug, Clone)]
pub struct Enter {
    pub file: PathBuf,
    pub inode: u64,
}

/// Runs one probe. Never panics on what the service sends; every wait is within `timeout`.
pub async fn run(job: &Job, timeout: Duration) -> Outcome {
    let Some(enter) = job.netns.clone() else { return run_here(job, timeout).await };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = job.clone();
    let spawned = std::thread::Builder::new().name("hw-probe-netns".into()).spawn(move || {
        let _ = tx.send(enter_and_run(&job, &enter, timeout));
    });
    if let Err(e) = spawned {
        return Outcome::unknown(format!("other network namespace: no thread to enter it ({e})"));
    }
    rx.await
        .unwrap_or_else(|_| Outcome::unknown("other network namespace: the probe ended without a verdict"))
}

/// On a thread of its own that moves into the namespace and ends there: nothing else of the
/// agent may ever run in a container's namespace (so never a pooled thread), and sockets belong
/// to the namespace of the thread that makes them.
fn enter_and_run(job: &Job, enter: &Enter, timeout: Duration) -> Outcome {
    use std::os::unix::fs::MetadataExt;
    let file = match std::fs::File::open(&enter.file) {
        Ok(f) => f,
        Err(e) => return Outcome::unknown(format!("other network namespace: its process is gone ({e})")),
    };
    match file.metadata() {
        Ok(m) if m.ino() == enter.inode => {}
        _ => return Outcome::unknown("other network namespace: its process is gone"),
    }
    if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
        return Outcome::unknown(format!(
            "other network namespace: not probed, the agent may not enter it ({e}; the shipped unit grants no CAP_SYS_ADMIN)"
        ));
    }
    let mut there = HostAddresses::new(None);
    there.refresh();
    let Some(target) = there.target_for(job.target.ip(), job.target.port()) else {
        return Outcome::unknown("other network namespace: none of its addresses reaches it");
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            return Outcome::unknown(format!("other network namespace: no runtime to probe from ({e})"));
        }
    };
    let job = Job { target, netns: None, ..job.clone() };
    runtime.block_on(run_here(&job, timeout))
}

/// A probe from the agent's own network namespace (or, on [`enter_and_run`]'s thread, from the
/// one it entered).
async fn run_here(job: &Job, timeout: Duration) -> Outcome {
    let probe = async {
        match job.service {
            Service::Redis => redis::probe(job, timeout).await,
            Service::Memcached => memcached::probe(job.target, timeout).await,
            Service::Mongodb => mongodb::probe(job.target, timeout).await,
            Service::Docker
            | Service::Elasticsearch
            | Service::Etcd
            | Service::Kubelet
            | Service::Jupyter
            | Service::Metrics
            | Service::Pprof => http::probe(job.service, job.target, timeout).await,
        }
    };
    // The protocols bound their own waits; this bounds the whole, with room for a TLS retry.
    match tokio::time::timeout(timeout * 2 + Duration::from_millis(500), probe).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::unknown(format!("no verdict within {}", humantime::format_duration(timeout * 2))),
    }
}

/// Every parser of what a probed service says, over `bytes`: for the fuzz target (`probe_answers`)
/// and the test below; none may panic, loop or read past what it was given.
pub fn parse_answers(bytes: &[u8]) {
    let _ = redis::parse(bytes);
    let _ = memcached::judge(bytes);
    let _ = mongodb::parse_reply(bytes);
    let _ = mongodb::read_document(bytes);
    let _ = wire::printable_bytes(bytes, 100);
}

/// A result kept across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    key: ListenerKey,
    pid: Option<u32>,
    service: Service,
    verdict: AuthVerdict,
    reason: String,
    #[serde(with = "proto::timestamp")]
    probed_at: OffsetDateTime,
}

/// Which listeners to probe and what their probes found.
///
/// Invariant: a listener is queued at most once, and a result is attached to a listener only
/// while the owner it was taken from (its pid) still holds it.
#[derive(Debug)]
pub struct Prober {
    config: ProbeConfig,
    addresses: HostAddresses,
    /// The host's `/proc`, through which other namespaces are entered.
    proc: PathBuf,
    path: PathBuf,
    results: BTreeMap<ListenerKey, Kept>,
    queue: VecDeque<Job>,
    queued: BTreeMap<ListenerKey, Option<u32>>,
    started: VecDeque<Instant>,
    running: bool,
    dirty: bool,
}

impl Prober {
    /// The prober, with what `state_dir` kept of earlier probes (a file that cannot be read is
    /// said once and started afresh: the listeners are probed again). `proc`: the host's `/proc`.
    pub fn new(config: ProbeConfig, state_dir: &Path, proc: &Path) -> Prober {
        let path = state_dir.join(STATE_FILE);
        let results = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Kept>>(&bytes) {
                Ok(kept) => kept.into_iter().map(|k| (k.key.clone(), k)).collect(),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "the probe results kept are unreadable; probing again");
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the probe results kept; probing again");
                BTreeMap::new()
            }
        };
        Prober {
            addresses: HostAddresses::new(config.via),
            proc: proc.to_owned(),
            config,
            path,
            results,
            queue: VecDeque::new(),
            queued: BTreeMap::new(),
            started: VecDeque::new(),
            running: false,
            dirty: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Attaches each listener's probe result, and queues a probe for each that needs one: new,
    /// its owner changed, or its result older than `every`. Results of listeners gone are
    /// forgotten.
    pub fn consider(&mut self, listeners: &mut [proto::Listener]) {
        if !self.config.enabled {
            return;
        }
        self.addresses.refresh();
        let now = OffsetDateTime::now_utc();
        let before = self.results.len();
        self.results.retain(|key, _| listeners.iter().any(|l| &l.key() == key));
        self.dirty |= self.results.len() != before;
        for l in listeners.iter_mut() {
            let key = l.key();
            if let Some(kept) = self.results.get(&key)
                && kept.pid == l.pid
            {
                l.auth = Some(ListenerAuth {
                    verdict: kept.verdict,
                    service: kept.service.as_str().to_owned(),
                    reason: kept.reason.clone(),
                    probed_at: kept.probed_at,
                });
                let age = now - kept.probed_at;
                if age < time::Duration::try_from(self.config.every).unwrap_or(time::Duration::DAY) {
                    continue;
                }
            }
            if self.queued.contains_key(&key) {
                continue;
            }
            if let Some(job) = self.job_for(l) {
                self.queued.insert(key, l.pid);
                self.queue.push_back(job);
            }
        }
        // Verdicts given without a probe (another namespace) and listeners gone.
        self.save();
    }

    /// The probe a listener needs, or its verdict at once where it cannot be probed (kept as a
    /// result, until it is probed again).
    fn job_for(&mut self, l: &proto::Listener) -> Option<Job> {
        if l.protocol != proto::Protocol::Tcp || self.config.exclude_ports.contains(&l.port) {
            return None;
        }
        let service = Service::guess(l.process.as_deref(), l.exe.as_deref(), l.port)?;
        if self.config.off.contains(&service) {
            return None;
        }
        let key = l.key();
        let loopback_only = l.address.is_loopback();
        if let Some(inode) = l.netns {
            let Some(pid) = l.pid else {
                self.keep(
                    key,
                    l.pid,
                    service,
                    Outcome::unknown("other network namespace: no process to enter it by"),
                );
                return None;
            };
            let file = self.proc.join(pid.to_string()).join("ns/net");
            let target = SocketAddr::new(l.address, l.port);
            return Some(Job {
                key,
                pid: l.pid,
                service,
                target,
                loopback_only,
                netns: Some(Enter { file, inode }),
            });
        }
        let Some(target) = self.addresses.target_for(l.address, l.port) else {
            self.keep(key, l.pid, service, Outcome::unknown("no address of this host reaches it"));
            return None;
        };
        Some(Job { key, pid: l.pid, service, target, loopback_only, netns: None })
    }

    /// The next probe to start, if one is waiting and the rate allows it now.
    pub fn next_job(&mut self) -> Option<Job> {
        if self.running {
            return None;
        }
        let now = Instant::now();
        while self.started.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            self.started.pop_front();
        }
        if self.started.len() >= PER_MINUTE {
            return None;
        }
        let job = self.queue.pop_front()?;
        self.started.push_back(now);
        self.running = true;
        Some(job)
    }

    /// A probe ended: its result is kept and attached from the next look on.
    pub fn finished(&mut self, job: &Job, outcome: Outcome) {
        self.running = false;
        self.queued.remove(&job.key);
        // What the service said is hostile text: made printable and short before it is logged.
        let outcome =
            Outcome { reason: wire::printable(&outcome.reason, proto::MAX_AUTH_REASON_BYTES), ..outcome };
        tracing::info!(
            service = job.service.as_str(),
            port = job.key.port,
            address = %job.key.address,
            verdict = outcome.verdict.as_str(),
            reason = %outcome.reason,
            "listener probed"
        );
        self.keep(job.key.clone(), job.pid, job.service, outcome);
    }

    fn keep(&mut self, key: ListenerKey, pid: Option<u32>, service: Service, outcome: Outcome) {
        let reason = wire::printable(&outcome.reason, proto::MAX_AUTH_REASON_BYTES);
        let kept = Kept {
            key: key.clone(),
            pid,
            service,
            verdict: outcome.verdict,
            reason,
            probed_at: OffsetDateTime::now_utc(),
        };
        self.results.insert(key, kept);
        self.dirty = true;
    }

    /// Writes the results down if they changed since the last save.
    pub fn save(&mut self) {
        if !self.dirty {
            return;
        }
        let kept: Vec<&Kept> = self.results.values().collect();
        let written = serde_json::to_vec(&kept).map_err(std::io::Error::other).and_then(|bytes| {
            crate::shared::private_file::write_private(&self.path, &bytes).map_err(std::io::Error::other)
        });
        match written {
            Ok(()) => self.dirty = false,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot keep the probe results; listeners will be probed again after a restart");
                // Not retried at every look: the next result tries again.
                self.dirty = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_decides_before_the_port() {
        assert_eq!(Service::guess(Some("redis-server"), None, 7000), Some(Service::Redis));
        assert_eq!(Service::guess(Some("anything"), None, 6379), Some(Service::Redis));
        assert_eq!(Service::guess(Some("etcd"), None, 2380), None, "the peer port is not for clients");
        assert_eq!(Service::guess(Some("node_exporter"), None, 9999), Some(Service::Metrics));
        assert_eq!(Service::guess(Some("x"), Some("/usr/bin/memcached"), 1), Some(Service::Memcached));
        assert_eq!(Service::guess(Some("nginx"), None, 443), None);
    }

    #[test]
    fn answers_of_any_shape_are_parsed_without_a_panic() {
        // A small deterministic generator (xorshift): byte strings of every length to 300, and
        // the same with real answers' prefixes, so each parser meets both noise and near-misses.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let prefixes: [&[u8]; 5] =
            [b"", b"$", b"+PONG\r\n", b"STAT ", b"\x40\0\0\0\x01\0\0\0\0\0\0\0\xdd\x07\0\0"];
        for len in 0..300usize {
            for p in prefixes {
                let mut b = p.to_vec();
                b.extend((0..len).map(|_| next() as u8));
                parse_answers(&b);
            }
        }
    }

    fn listener(port: u16, pid: u32, process: &str) -> proto::Listener {
        proto::Listener {
            protocol: proto::Protocol::Tcp,
            address: "0.0.0.0".parse().expect("address"),
            port,
            pid: Some(pid),
            process: Some(process.into()),
            exe: None,
            uid: 0,
            netns: None,
            auth: None,
        }
    }

    #[test]
    fn a_listener_is_probed_once_kept_across_restarts_and_again_when_its_owner_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ProbeConfig { via: Some("10.9.0.1".parse().expect("ip")), ..ProbeConfig::default() };
        let mut p = Prober::new(config.clone(), dir.path(), Path::new("/proc"));
        let mut ls = vec![listener(6379, 10, "redis-server"), listener(443, 11, "nginx")];
        p.consider(&mut ls);
        let job = p.next_job().expect("the redis listener is queued");
        assert_eq!((job.service, job.target), (Service::Redis, "10.9.0.1:6379".parse().expect("addr")));
        assert!(p.next_job().is_none(), "one at a time, and nginx is no known protocol");
        p.consider(&mut ls);
        p.finished(&job, Outcome::new(AuthVerdict::Unauthenticated, "PING and INFO\u{1b}[31m answered"));
        p.consider(&mut ls);
        let auth = ls[0].auth.clone().expect("attached");
        assert_eq!((auth.verdict, auth.service.as_str()), (AuthVerdict::Unauthenticated, "redis"));
        assert!(!auth.reason.contains('\u{1b}'), "{}", auth.reason);
        assert!(p.next_job().is_none(), "not probed again");

        // A restart: the result is read back, attached, and not probed again.
        let mut again = Prober::new(config.clone(), dir.path(), Path::new("/proc"));
        let mut ls2 = vec![listener(6379, 10, "redis-server")];
        again.consider(&mut ls2);
        assert_eq!(ls2[0].auth.as_ref().map(|a| a.verdict), Some(AuthVerdict::Unauthenticated));
        assert!(again.next_job().is_none());

        // Another owner on the port (a restarted service): no stale verdict, probed at once.
        let mut ls3 = vec![listener(6379, 99, "redis-server")];
        again.consider(&mut ls3);
        assert!(ls3[0].auth.is_none());
        assert_eq!(again.next_job().map(|j| j.pid), Some(Some(99)));
    }

    #[test]
    fn switches_ports_and_namespaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let off =
            ProbeConfig { off: vec![Service::Redis], exclude_ports: vec![11211], ..ProbeConfig::default() };
        let mut p = Prober::new(off, dir.path(), Path::new("/proc"));
        let mut ls = vec![listener(6379, 1, "redis-server"), listener(11211, 2, "memcached")];
        p.consider(&mut ls);
        assert!(p.next_job().is_none());
        let mut p = Prober::new(ProbeConfig::default(), dir.path(), Path::new("/host/proc"));
        let mut other = listener(6379, 3, "redis-server");
        other.netns = Some(4026532000);
        let mut ownerless = listener(6380, 4, "redis-server");
        (ownerless.netns, ownerless.pid) = (Some(4026532001), None);
        let mut ls = vec![other, ownerless];
        p.consider(&mut ls);
        let job = p.next_job().expect("another namespace is entered by its owner");
        let enter = job.netns.expect("through its namespace");
        assert_eq!((enter.file.as_path(), enter.inode), (Path::new("/host/proc/3/ns/net"), 4026532000));
        assert_eq!(job.target, "0.0.0.0:6379".parse().expect("addr"), "chosen once inside");
        p.consider(&mut ls);
        let auth = ls[1].auth.clone().expect("a verdict all the same");
        assert_eq!(auth.verdict, AuthVerdict::Unknown);
        assert!(auth.reason.contains("other network namespace"), "{}", auth.reason);
        let mut p = Prober::new(
            ProbeConfig { enabled: false, ..ProbeConfig::default() },
            dir.path(),
            Path::new("/proc"),
        );
        let mut ls = vec![listener(6379, 5, "redis-server")];
        p.consider(&mut ls);
        assert!(p.next_job().is_none() && ls[0].auth.is_none());
    }

    #[tokio::test]
    async fn a_namespace_whose_inode_is_not_the_listeners_is_not_entered() {
        // The agent's own namespace file, with another inode: what a reused pid looks like.
        let job = Job {
            key: listener(6379, 1, "redis-server").key(),
            pid: Some(1),
            service: Service::Redis,
            target: "0.0.0.0:6379".parse().expect("addr"),
            loopback_only: false,
            netns: Some(Enter { file: "/proc/self/ns/net".into(), inode: 1 }),
        };
        let out = run(&job, Duration::from_secs(1)).await;
        assert_eq!(out.verdict, AuthVerdict::Unknown);
        assert!(out.reason.contains("its process is gone"), "{}", out.reason);
    }

    #[test]
    fn names_round_trip() {
        for s in Service::ALL {
            assert_eq!(s.as_str().parse::<Service>(), Ok(s));
        }
        assert!("ftp".parse::<Service>().unwrap_err().contains("redis"));
    }
}
