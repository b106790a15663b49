//! One observation of the host, converted to the wire's types: the edge between what the
//! collectors read and what the agent sends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;

use crate::collect::Problems;
use crate::collect::hash::HashCache;
use crate::collect::host::HostInfo;
use crate::collect::process::{Clock, ProcessRecord};
use crate::collect::redact::Redactor;
use crate::collect::sockets::owners::ProcKey;
use crate::collect::sockets::{self, OwnerCache, Reader, SockState, SocketRecord, SocketSource, Want};
use crate::collect::users::Users;
use crate::collect::{self, HostRoot, netns};

/// Everything one pass over the host produced.
#[derive(Debug, Clone)]
pub struct Observation {
    pub host: HostInfo,
    pub snapshot: proto::Snapshot,
    pub coverage: proto::Coverage,
}

impl Observation {
    /// The host facts of a report from this observation.
    pub fn host_facts(
        &self,
        machine_id: &str,
        tags: &BTreeMap<String, String>,
        cloud: Option<&proto::CloudFacts>,
    ) -> proto::HostFacts {
        host_facts(&self.host, machine_id, tags, cloud)
    }
}

/// Host facts for the wire. `machine_id` is passed in because a host without one uses the id the
/// agent generated and keeps in its state directory. The host's tags are the cloud's with the
/// configured `tags` over them.
pub fn host_facts(
    host: &HostInfo,
    machine_id: &str,
    tags: &BTreeMap<String, String>,
    cloud: Option<&proto::CloudFacts>,
) -> proto::HostFacts {
    let tags = match cloud {
        Some(c) => crate::cloud::merge_tags(&c.tags, tags).0,
        None => tags.clone(),
    };
    proto::HostFacts {
        hostname: host.hostname.clone(),
        machine_id: machine_id.to_owned(),
        os: host.os.clone(),
        kernel: host.kernel.clone(),
        arch: std::env::consts::ARCH.to_owned(),
        boot_time: host.boot_time,
        tags,
        cloud: cloud.cloned(),
    }
}

/// The agent's status for the wire.
pub fn agent_status(
    interval: std::time::Duration,
    started_at: OffsetDateTime,
    coverage: proto::Coverage,
    stats: Option<proto::AgentStats>,
) -> proto::AgentStatus {
    proto::AgentStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        interval_secs: u32::try_from(interval.as_secs()).unwrap_or(u32::MAX).max(1),
        started_at,
        coverage,
        stats,
    }
}

/// Reads the host, keeping what makes the next read cheaper: the processes known (so a quick
/// scan reads only new ones), their network namespaces, socket owners, the socket reader that works
/// here. Blocking: call it on a blocking thread.
#[derive(Debug)]
pub struct Observer {
    root: HostRoot,
    /// The agent's own network namespace, read at each full scan (it never moves by itself).
    own_netns: Option<u64>,
    /// Whether uid and gid changes arrive as events (the process connector runs and lost nothing
    /// since the last full scan): rescans then need not stat each `/proc/PID` for its owner.
    credential_events: bool,
    /// Every new connection comes as a socket event with its owner (the eBPF source runs and
    /// lost nothing): a quick look need not watch new processes' descriptors for connections.
    connection_events: bool,
    /// Processes whose credentials changed (by event), to be read whole by the next quick look.
    recredentialed: Vec<u32>,
    /// Applied to every command line as it is read.
    redactor: Redactor,
    sockets: SocketSource,
    owners: OwnerCache,
    clock: Clock,
    users: Users,
    users_error: Option<String>,
    host: HostInfo,
    /// Every process known now, by pid.
    procs: BTreeMap<u32, ProcessRecord>,
    /// Pids that are kernel threads or zombies: not processes to report, and not read again
    /// while they stay listed (a pid cannot be reused before it leaves `/proc`).
    skip: HashSet<u32>,
    /// Full scans done, to spread the periodic re-reads of whole records over them.
    scans: u64,
    /// Processes that started in the last [`WATCH_NEW`]: a quick look checks whether they opened
    /// sockets, and reads connections only if one did.
    recent: Vec<(ProcKey, Instant)>,
    /// Pids announced by fork events since the last quick look.
    forked: Vec<u32>,
    /// Pids read once in the middle of an exec ([`mid_exec`]) and left for the next look.
    mid_exec: HashSet<u32>,
    /// The name and executable of processes that exited in the last [`EXITED_KEPT`] (at most
    /// [`EXITED_MAX`]): a socket event comes up to a ring drain after the fact, often after its
    /// process's exit event (a program's last connections).
    exited: HashMap<u32, (Instant, String, Option<String>)>,
    hashes: HashCache,
    /// Processes whose executable waits for the hashing budget.
    unhashed: Vec<u32>,
    /// CPU ticks of each process at the last full scan, and when, for CPU percent.
    cpu_prev: HashMap<ProcKey, (u64, Instant)>,
    cpu_percent: HashMap<ProcKey, f32>,
    /// Look again at shells' and interpreters' standard streams at every full scan
    /// (`stdio_rescan`).
    stdio_rescan: bool,
    /// Read each process's audit login ids and keep its ancestry (`lineage`).
    lineage: bool,
    /// The ancestry of a process whose parent is unknown or PID 1: one empty list for all.
    no_lineage: Arc<[proto::Ancestor]>,
    /// A process never reported: the agent's own, where it runs inside the collector
    /// (`serve --dev`), which is no program on the host to explain.
    hidden: Option<u32>,
    /// The package databases, asked what stands at a replaced executable's path.
    packages: Option<crate::files::package::Databases>,
    /// Its answers, by path, while neither the database's `status` nor the file changes.
    replacements: HashMap<String, (Replaced, proto::ExeReplacement)>,
}

/// What a package-database answer about a path holds for: the databases' and the file's
/// modification times.
type Replaced = (Option<std::time::SystemTime>, Option<std::time::SystemTime>);

/// How long after it started a process is watched for new connections by the quick looks
/// (which the design wants seen within two seconds of an exec).
const WATCH_NEW: std::time::Duration = std::time::Duration::from_secs(2);
/// How long an exited process's name is kept for late socket events: several ring drains.
const EXITED_KEPT: std::time::Duration = std::time::Duration::from_secs(5);
/// At most this many exited processes kept (an exec storm must not grow the agent).
const EXITED_MAX: usize = 4096;

/// More forks than this between two quick looks (a fork storm): list `/proc` instead.
const MAX_FORKS: usize = 50_000;

/// A process read whole within this long of its start is read whole again at the next full scan.
const YOUNG: time::Duration = time::Duration::seconds(10);
/// A known process's executable is looked at (is it deleted?) once in this many full scans: a
/// readlink per process per scan cost a third of the agent's CPU with 1,000 processes.
const EXE_CHECK_EVERY: u64 = 3;
/// Every known process is read whole again once in this many full scans (about 5 minutes at
/// the default interval), in case it changed its command line, cgroup or namespace without an
/// exec. Spread by pid, so each scan re-reads about one in this many.
const REREAD_EVERY: u64 = 30;

/// Executables hashed at most this many bytes a second on average (and in one burst): with
/// SHA-NI about 1.5% of a core while a cold start catches up, then nothing, since a program
/// is hashed once per (device, inode, size, mtime). A first scan hashes what fits, the
/// quick scans of the following seconds the rest.
const HASH_RATE: u64 = 16 << 20;
/// Executables above this size are not hashed.
const HASH_MAX_SIZE: u64 = 256 << 20;

/// What a quick look found: processes new since the last look, those gone (only when `/proc` was
/// listed; otherwise exit events say so), and the sockets asked for.
#[derive(Debug)]
pub struct QuickObservation {
    /// Processes new since the last look, or read again because their credentials changed.
    pub started: Vec<proto::Process>,
    pub gone: Vec<u32>,
    pub listeners: Option<Vec<proto::Listener>>,
    pub connections: Option<Vec<proto::Connection>>,
}

impl Observer {
    pub fn new(root: HostRoot, reader: Reader, redactor: Redactor) -> Self {
        let mut problems = Problems::default();
        let clock = Clock::read(&root, &mut problems);
        // NSS answers for this machine, so only where the agent sees the host's own root.
        let (users, users_error) =
            Users::load(&root.etc.join("passwd"), root.etc == std::path::Path::new("/etc"));
        let host = collect::host::read(&root);
        Observer {
            own_netns: netns::own(&root),
            credential_events: false,
            connection_events: false,
            recredentialed: Vec::new(),
            root,
            redactor,
            sockets: SocketSource::new(reader),
            owners: OwnerCache::default(),
            clock,
            users,
            users_error,
            host,
            procs: BTreeMap::new(),
            skip: HashSet::new(),
            scans: 0,
            recent: Vec::new(),
            forked: Vec::new(),
            mid_exec: HashSet::new(),
            exited: HashMap::new(),
            hashes: HashCache::new(HASH_RATE, HASH_MAX_SIZE),
            unhashed: Vec::new(),
            cpu_prev: HashMap::new(),
            cpu_percent: HashMap::new(),
            stdio_rescan: true,
            lineage: true,
            no_lineage: Arc::from(Vec::new()),
            hidden: None,
            packages: None,
            replacements: HashMap::new(),
        }
    }

    /// The same observer, asking the package databases what replaced a running executable.
    pub fn with_packages(mut self, databases: crate::files::package::Databases) -> Self {
        self.packages = Some(databases);
        self
    }

    /// Says what stands at the path of `rec`'s replaced executable: the file its package installed
    /// (an upgrade) or something else (someone's), from the package database.
    fn judge_replacement(&mut self, rec: &mut ProcessRecord) {
        let (Some(dbs), Some(exe), true) = (&self.packages, &rec.exe, rec.exe_replaced) else {
            return;
        };
        let real = collect::process::exe_inside(&self.root.proc.join(rec.pid.to_string()), exe);
        let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let at = (dbs.stamp(), mtime(&real));
        if let Some((when, known)) = self.replacements.get(exe)
            && *when == at
        {
            rec.exe_replacement = Some(known.clone());
            return;
        }
        let judged = proto::ExeReplacement { package: dbs.owner_of(exe, &real) };
        if self.replacements.len() > 1024 {
            self.replacements.clear();
        }
        self.replacements.insert(exe.clone(), (at, judged.clone()));
        rec.exe_replacement = Some(judged);
    }

    /// The same observer, never reporting the process it runs in.
    pub fn hiding_own_process(mut self, hide: bool) -> Self {
        self.hidden = hide.then(std::process::id);
        self
    }

    /// The same observer, looking again (or not) at shells' standard streams at every full scan.
    pub fn with_stdio_rescan(mut self, on: bool) -> Self {
        self.stdio_rescan = on;
        self
    }

    /// The same observer, with (or without) lineage: login ids and ancestry.
    pub fn with_lineage(mut self, on: bool) -> Self {
        self.lineage = on;
        self
    }

    /// The same observer, hashing no executable: to measure what hashing costs.
    pub fn without_hashing(mut self) -> Self {
        self.hashes = HashCache::new(0, 0);
        self
    }

    pub fn root(&self) -> &HostRoot {
        &self.root
    }

    /// The socket reader in use (sock_diag, or /proc/net after a refusal).
    /// The name and executable of process `pid` as last read, for a socket event's owner.
    /// A process that exited in the last seconds is still named.
    pub fn owner(&self, pid: u32) -> Option<(&str, Option<&str>)> {
        match self.procs.get(&pid) {
            Some(p) => Some((p.name.as_str(), p.exe.as_deref())),
            None => self.exited.get(&pid).map(|(_, name, exe)| (name.as_str(), exe.as_deref())),
        }
    }

    /// `inode` as a socket's `netns`: `None` for the agent's own namespace, as the scans say it.
    pub fn netns_of(&self, inode: u64) -> Option<u64> {
        (Some(inode) != self.own_netns).then_some(inode)
    }

    pub fn socket_reader(&self) -> Reader {
        self.sockets.reader()
    }

    /// The host facts as of the last full scan.
    pub fn host(&self) -> &HostInfo {
        &self.host
    }

    /// A process as the wire carries it.
    pub fn to_wire(&self, p: &ProcessRecord) -> proto::Process {
        proto::Process {
            pid: p.pid,
            ppid: p.ppid,
            user: self.users.name(p.uid),
            name: p.name.clone(),
            exe: p.exe.clone(),
            exe_deleted: p.exe_deleted,
            cmdline: p.cmdline.clone(),
            cmdline_truncated: p.cmdline_truncated,
            uid: p.uid,
            start_time: p.start_time,
            sha256: p.sha256.clone(),
            exe_memfd: p.exe_memfd,
            exe_writable_dir: p.exe_writable_dir,
            cgroup: p.cgroup.clone(),
            container_id: p.container_id.clone(),
            unit: p.unit.clone(),
            cpu_percent: self.cpu_percent.get(&(p.pid, p.start_ticks)).copied().or_else(|| lifetime_cpu(p)),
            rss_bytes: Some(p.rss_bytes),
            exe_replaced: p.exe_replaced,
            exe_replacement: p.exe_replacement.clone(),
            stdio_socket: p.stdio_socket.clone(),
            login_uid: p.login_uid,
            login_user: p.login_uid.and_then(|u| self.users.name(u)),
            session_id: p.session_id,
            ancestry: p.ancestry.clone().unwrap_or_else(|| self.no_lineage.clone()),
        }
    }

    /// The ancestry of a process whose parent is `ppid`: the parent (from the processes known
    /// now, else from `gone`, those that ended since the last look) and the parent's own
    /// ancestry, cut to [`proto::limits::MAX_ANCESTRY`]. PID 1 and what is above it are left out.
    /// Siblings share the one list their parent made (`child_lineage`): what the agent, its
    /// tracker and the report hold of it are clones of one `Arc`.
    fn lineage(&self, ppid: u32, gone: Option<&BTreeMap<u32, ProcessRecord>>) -> Arc<[proto::Ancestor]> {
        if !self.lineage {
            return self.no_lineage.clone();
        }
        let Some(parent) = self.procs.get(&ppid).or_else(|| gone.and_then(|g| g.get(&ppid))) else {
            return self.no_lineage.clone();
        };
        if parent.pid <= 1 {
            return self.no_lineage.clone();
        }
        let made = parent.child_lineage.get_or_init(|| {
            let mut out = Vec::with_capacity(4);
            out.push(proto::Ancestor { pid: parent.pid, name: parent.name.clone(), exe: parent.exe.clone() });
            let above = parent.ancestry.as_deref().unwrap_or_default();
            out.extend(above.iter().take(proto::limits::MAX_ANCESTRY - 1).cloned());
            out.into()
        });
        made.clone()
    }

    /// Gives every known process without an ancestry one, parents before children (a parent
    /// starts first), so each takes its parent's as it stands now.
    fn assign_ancestry(&mut self, gone: Option<&BTreeMap<u32, ProcessRecord>>) {
        let mut todo: Vec<(u64, u32)> =
            self.procs.values().filter(|p| p.ancestry.is_none()).map(|p| (p.start_ticks, p.pid)).collect();
        todo.sort_unstable();
        for (_, pid) in todo {
            let Some(ppid) = self.procs.get(&pid).map(|p| p.ppid) else { continue };
            let lineage = self.lineage(ppid, gone);
            if let Some(p) = self.procs.get_mut(&pid) {
                p.ancestry = Some(lineage);
            }
        }
    }

    /// Hashes the executables not hashed yet, as the budget allows: every process without a
    /// hash at a full scan (`all`), else those the budget left for later.
    fn hash_new(&mut self, all: bool) {
        if all {
            self.unhashed = self
                .procs
                .values()
                .filter(|p| p.sha256.is_none() && p.exe.is_some())
                .map(|p| p.pid)
                .collect();
        }
        for pid in std::mem::take(&mut self.unhashed) {
            if let Some(p) = self.procs.get_mut(&pid)
                && p.sha256.is_none()
                && p.exe.is_some()
            {
                p.sha256 = self.hashes.of_pid(&self.root, pid);
                // Too large or unreadable is tried again at the next full scan, not every second.
                if p.sha256.is_none() && self.hashes.starved() {
                    self.unhashed.push(pid);
                }
            }
        }
    }

    /// CPU percent of each process since the last full scan (a process first seen since then has
    /// its lifetime average, as `ps` shows it, until a second scan measures it).
    fn measure_cpu(&mut self) {
        let now = Instant::now();
        let ticks = procfs::ticks_per_second().max(1) as f64;
        let mut prev = HashMap::with_capacity(self.procs.len());
        self.cpu_percent.clear();
        for p in self.procs.values() {
            let key = (p.pid, p.start_ticks);
            if let Some((before, at)) = self.cpu_prev.get(&key) {
                let secs = now.duration_since(*at).as_secs_f64();
                if secs > 0.0 {
                    let used = p.cpu_ticks.saturating_sub(*before) as f64 / ticks;
                    self.cpu_percent.insert(key, (used / secs * 100.0) as f32);
                }
            }
            prev.insert(key, (p.cpu_ticks, now));
        }
        self.cpu_prev = prev;
    }

    /// Every known process, as the wire carries them.
    pub fn processes(&self) -> Vec<proto::Process> {
        self.procs.values().map(|p| self.to_wire(p)).collect()
    }

    /// A process that exec'd (read at once by the exec watcher), with its executable's hash if
    /// the cache has it or the budget allows: a hash that came a scan later would cost an update
    /// of the whole process on the wire.
    pub fn note_exec(&mut self, mut rec: ProcessRecord) -> proto::Process {
        if rec.sha256.is_none() && rec.exe.is_some() {
            rec.sha256 = self.hashes.of_pid(&self.root, rec.pid);
            if rec.sha256.is_none() && self.hashes.starved() {
                self.unhashed.push(rec.pid);
            }
        }
        if rec.ancestry.is_none() {
            // The same process before its exec keeps its lineage; a new one takes its parent's.
            rec.ancestry = match self.procs.get(&rec.pid) {
                Some(known) if known.start_ticks == rec.start_ticks && known.ancestry.is_some() => {
                    known.ancestry.clone()
                }
                _ => Some(self.lineage(rec.ppid, None)),
            };
        }
        let wire = self.to_wire(&rec);
        self.skip.remove(&rec.pid);
        self.recent.push(((rec.pid, rec.start_ticks), Instant::now()));
        self.procs.insert(rec.pid, rec);
        wire
    }

    /// A new process announced by a fork event, to be looked at by the next quick look.
    pub fn note_fork(&mut self, pid: u32) {
        self.forked.push(pid);
    }

    /// A process whose uid or gid changed (setuid, a privilege drop or gain): read whole at the
    /// next quick look.
    pub fn note_credentials(&mut self, pid: u32) {
        if !self.recredentialed.contains(&pid) && self.recredentialed.len() < MAX_FORKS {
            self.recredentialed.push(pid);
        }
    }

    /// See [`Observer::connection_events`]; set by the runner before each quick look.
    pub fn set_connection_events(&mut self, on: bool) {
        self.connection_events = on;
    }

    /// See [`Observer::credential_events`]; set by the runner before each full scan.
    pub fn set_credential_events(&mut self, on: bool) {
        self.credential_events = on;
    }

    /// A process that exited.
    pub fn note_exit(&mut self, pid: u32) {
        if let Some(p) = self.procs.remove(&pid) {
            let now = Instant::now();
            if self.exited.len() >= EXITED_MAX {
                self.exited.retain(|_, (at, ..)| now.duration_since(*at) <= EXITED_KEPT);
            }
            if self.exited.len() < EXITED_MAX {
                self.exited.insert(pid, (now, p.name, p.exe));
            }
        }
    }

    /// Reads the host once: every process, sockets in every network namespace, their owners,
    /// host facts, users.
    ///
    /// The first scan reads every process whole. Later ones read of a known process only its
    /// vitals ([`collect::process::read_vitals`]: parent, CPU, memory, name, and whether it is
    /// still the same process with the same credentials) and read it whole only when it is new,
    /// changed credentials, was read in its first seconds (programs rename themselves and move
    /// cgroups early), or its turn for a periodic re-read came ([`REREAD_EVERY`] scans, spread
    /// by pid). An exec is a new program and is read at once by the exec watcher.
    pub fn observe(&mut self) -> Observation {
        let taken_at = OffsetDateTime::now_utc();
        let mut problems = Problems::default();
        self.clock = Clock::read(&self.root, &mut problems);
        self.host = collect::host::read(&self.root);
        self.own_netns = netns::own(&self.root);
        self.users_error = self.users.reload(&self.root.etc.join("passwd"));
        self.rescan(&mut problems);
        self.scans += 1;
        self.measure_cpu();
        self.hash_new(true);
        let (listeners, connections, socket_problems, unowned) = self.read_sockets(Want::ALL);

        let mut why = Vec::new();
        if problems.denied > 0 {
            why.push(format!(
                "{} process files unreadable for lack of privilege (run as root or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)",
                problems.denied
            ));
        }
        if unowned > 0 && socket_problems.denied > 0 {
            why.push(format!(
                "owner unknown for {unowned} sockets: {} processes' file descriptors unreadable",
                socket_problems.denied
            ));
        }
        problems.merge(socket_problems);
        why.extend(problems.failed.iter().take(5).cloned());
        if let Some(e) = &self.users_error {
            why.push(format!("user names unknown: {e}"));
        }
        let coverage = if why.is_empty() {
            proto::Coverage::full()
        } else {
            proto::Coverage { state: proto::CoverageState::Degraded, why }
        };
        let snapshot = proto::Snapshot { taken_at, processes: self.processes(), listeners, connections };
        Observation { host: self.host.clone(), snapshot, coverage }
    }

    /// Every process in `/proc` now, reusing what is known (see [`Observer::observe`]).
    fn rescan(&mut self, problems: &mut Problems) {
        let pids = match collect::process::list_pids(&self.root) {
            Ok(pids) => pids,
            Err(e) => {
                problems.failed.push(format!("{}: {e}", self.root.proc.display()));
                return;
            }
        };
        let listed: HashSet<u32> = pids.iter().copied().collect();
        self.skip.retain(|p| listed.contains(p));
        self.mid_exec.retain(|p| listed.contains(p));
        let mut old = std::mem::take(&mut self.procs);
        for pid in pids {
            if self.skip.contains(&pid) || Some(pid) == self.hidden {
                continue;
            }
            let rec = match old.remove(&pid) {
                Some(mut rec) if !self.reread_due(&rec) => {
                    let vitals = collect::process::read_vitals(&self.root, pid, !self.credential_events);
                    match self.settle(pid, vitals, problems) {
                        // Its file deleted (or replaced by an upgrade) since: read it whole.
                        Some(v) if rec.update(&v) && !self.exe_gone(&rec) => {
                            // A shell whose input became a socket since it started.
                            if self.stdio_rescan {
                                collect::process::stdio_changed(&self.root, &mut rec);
                            }
                            Some(rec)
                        }
                        // Another process under the same pid, or new credentials: read it whole.
                        Some(_) => self.reread(rec, problems),
                        None => None,
                    }
                }
                Some(rec) => self.reread(rec, problems),
                None => match self.read_whole(pid, problems) {
                    // Looked at again by the next quick look, if its exec event has not brought
                    // it whole by then.
                    Some(rec) if self.first_mid_exec(&rec) => {
                        self.forked.push(pid);
                        None
                    }
                    read => read,
                },
            };
            if let Some(rec) = rec {
                self.procs.insert(pid, rec);
            }
        }
        // What is left of `old` has ended since the last scan: still a parent to name.
        self.assign_ancestry(Some(&old));
    }

    /// Whether a known process's executable was deleted since it was read: one readlink, every
    /// [`EXE_CHECK_EVERY`] scans (spread by pid), so a binary removed from under a running
    /// process is seen within that many intervals, not at its re-read.
    fn exe_gone(&self, rec: &ProcessRecord) -> bool {
        rec.exe.is_some()
            && !rec.exe_deleted
            && (self.scans + u64::from(rec.pid)).is_multiple_of(EXE_CHECK_EVERY)
            && collect::process::exe_deleted(&self.root, rec.pid)
    }

    /// Reads a known pid whole again. A program's hash stays with its process: a re-read is no
    /// reason to hash again.
    /// A read in the middle of an exec keeps what was known until the next look.
    fn reread(&mut self, known: ProcessRecord, problems: &mut Problems) -> Option<ProcessRecord> {
        let mut new = self.read_whole(known.pid, problems)?;
        if self.first_mid_exec(&new) {
            return Some(known);
        }
        if new.start_ticks == known.start_ticks {
            new.sha256 = known.sha256;
            new.ancestry = known.ancestry;
        }
        Some(new)
    }

    /// Whether `rec` is the first read of its pid that looks caught in the middle of an exec: the
    /// kernel has switched its executable (and name) but not yet laid out its arguments, so its
    /// command line reads empty. Reported so, it would then change program when its exec event
    /// or the next read brought it whole: one run recorded as two execs. Such a read is left for
    /// the next look; a second one that still reads empty is taken as it is (a program may blank
    /// its own arguments to hide them; it is reported, not left out).
    fn first_mid_exec(&mut self, rec: &ProcessRecord) -> bool {
        if !rec.cmdline.is_empty() || rec.exe.is_none() {
            self.mid_exec.remove(&rec.pid);
            return false;
        }
        if self.mid_exec.len() >= MAX_FORKS {
            return false;
        }
        self.mid_exec.insert(rec.pid)
    }

    /// Whether a known process is to be read whole at this scan.
    fn reread_due(&self, rec: &ProcessRecord) -> bool {
        rec.read_at - rec.start_time < YOUNG || (self.scans + u64::from(rec.pid)).is_multiple_of(REREAD_EVERY)
    }

    /// Reads a process whole; `None` if it is gone, a kernel thread or a zombie (remembered, so
    /// as not to be read again while listed).
    fn read_whole(&mut self, pid: u32, problems: &mut Problems) -> Option<ProcessRecord> {
        let read =
            collect::process::read_pid(&self.root, &self.redactor, pid, self.clock, self.lineage, problems);
        let mut rec = self.settle(pid, read, problems)?;
        self.judge_replacement(&mut rec);
        Some(rec)
    }

    /// What a read of `pid` came to: a kernel thread or zombie is remembered as one, a failure
    /// is counted.
    fn settle<T>(
        &mut self,
        pid: u32,
        read: Result<Option<T>, collect::ReadFailure>,
        problems: &mut Problems,
    ) -> Option<T> {
        match read {
            Ok(Some(x)) => Some(x),
            Ok(None) => {
                self.skip.insert(pid);
                None
            }
            Err(f) => {
                f.record(problems);
                None
            }
        }
    }

    /// A cheap look between full scans: new processes, and the sockets `want` asks for.
    ///
    /// With exec, fork and exit events (the runner passes them in), new processes are those forks
    /// that did not exec (an exec is read as it happens) and nothing is listed; without them
    /// (`list`), `/proc` is listed, new pids are read and those gone are dropped.
    ///
    /// Connections are read when `want` asks, or, without socket events
    /// ([`Observer::set_connection_events`]), when a process that started in the last two seconds
    /// holds a socket it did not hold before: a dump of every connection costs as much as a host
    /// has connections, a look at a new process's descriptors almost nothing. Any socket counts
    /// (a descriptor does not say its family), so without events a new program holding a unix
    /// or netlink socket costs a dump; with them, none does.
    pub fn quick(&mut self, mut want: Want, list: bool) -> QuickObservation {
        let mut problems = Problems::default();
        let (mut started, mut gone) = (Vec::new(), Vec::new());
        let candidates: Vec<u32> = if list || self.forked.len() > MAX_FORKS {
            self.forked.clear();
            match collect::process::list_pids(&self.root) {
                Ok(pids) => {
                    let now: HashSet<u32> = pids.iter().copied().collect();
                    gone = self.procs.keys().filter(|p| !now.contains(p)).copied().collect();
                    for pid in &gone {
                        self.note_exit(*pid);
                    }
                    self.skip.retain(|p| now.contains(p));
                    pids
                }
                Err(_) => Vec::new(),
            }
        } else {
            // Forks announced since the last look that are still there and did not exec: children
            // that go on running their parent's program (workers, sessions).
            std::mem::take(&mut self.forked)
        };
        for pid in candidates {
            if !self.procs.contains_key(&pid)
                && !self.skip.contains(&pid)
                && Some(pid) != self.hidden
                && let Some(rec) = self.read_whole(pid, &mut problems)
            {
                if self.first_mid_exec(&rec) {
                    self.forked.push(pid);
                } else {
                    started.push(self.note_exec(rec));
                }
            }
        }
        // Read again, whole: new credentials may come with new rights over new files.
        for pid in std::mem::take(&mut self.recredentialed) {
            if let Some(known) = self.procs.remove(&pid)
                && let Some(rec) = self.reread(known, &mut problems)
            {
                started.push(self.note_exec(rec));
            }
        }
        self.hash_new(false);
        let now = Instant::now();
        self.exited.retain(|_, (at, ..)| now.duration_since(*at) <= EXITED_KEPT);
        self.recent.retain(|(key, since)| {
            now.duration_since(*since) <= WATCH_NEW
                && self.procs.get(&key.0).is_some_and(|p| p.start_ticks == key.1)
        });
        if !self.connection_events {
            for (key, _) in &self.recent {
                want.connected |= self.owners.look_at(&self.root, *key);
            }
        }
        let (listeners, connections) = if want.listen || want.connected {
            let (l, c, _, _) = self.read_sockets(want);
            (want.listen.then_some(l), want.connected.then_some(c))
        } else {
            (None, None)
        };
        QuickObservation { started, gone, listeners, connections }
    }

    /// Sockets with their owners; also the problems met and how many have no known owner.
    fn read_sockets(
        &mut self,
        want: Want,
    ) -> (Vec<proto::Listener>, Vec<proto::Connection>, Problems, usize) {
        let root = &self.root;
        let mut seen_ns: Vec<u64> = Vec::new();
        let mut namespaces = Vec::new();
        if let Some(own) = self.own_netns {
            namespaces.push(netns::Netns { inode: own, pid: std::process::id(), own: true });
            seen_ns.push(own);
        }
        for p in self.procs.values() {
            if let Some(ns) = p.netns
                && !seen_ns.contains(&ns)
            {
                seen_ns.push(ns);
                namespaces.push(netns::Netns { inode: ns, pid: p.pid, own: false });
            }
        }
        let socks = self.sockets.read(root, &namespaces, want);
        let mut problems = socks.problems;
        let wanted: foldhash::HashSet<u64> = socks.items.iter().map(|s| s.inode).collect();
        let keys: Vec<ProcKey> = self.procs.values().map(|p| (p.pid, p.start_ticks)).collect();
        let (owners, owner_problems) = self.owners.resolve(root, &wanted, &keys);
        let owner_denied = owner_problems.denied;
        problems.merge(owner_problems);
        problems.denied = owner_denied;

        let procs = &self.procs;
        let owner = |inode: u64| {
            let pid = owners.get(&inode).copied();
            (pid, pid.and_then(|pid| procs.get(&pid)))
        };
        let own_ns = namespaces.iter().find(|n| n.own).map(|n| n.inode);
        // A namespace is named only where it is not the agent's own (the host's, normally).
        let ns_of = |inode: u64| (Some(inode) != own_ns).then_some(inode);
        let listening: Vec<&SocketRecord> =
            socks.items.iter().filter(|s| s.state == SockState::Listen).collect();
        // Sized once: under 10,000 sockets, growing by doubling held twice the list for a moment.
        let mut connections = Vec::with_capacity(socks.items.len() - listening.len());
        let (mut listeners, mut unowned) = (Vec::with_capacity(listening.len()), 0);
        // Each owner's name and executable made once and shared by all its sockets.
        type Names = (Option<Arc<str>>, Option<Arc<str>>);
        let mut names: foldhash::HashMap<u32, Names> = Default::default();
        for s in &socks.items {
            let (pid, proc) = owner(s.inode);
            unowned += usize::from(pid.is_none());
            let (process, exe) = match proc {
                Some(p) => names
                    .entry(p.pid)
                    .or_insert_with(|| (Some(Arc::from(p.name.as_str())), p.exe.as_deref().map(Arc::from)))
                    .clone(),
                None => (None, None),
            };
            match s.state {
                SockState::Listen => listeners.push(proto::Listener {
                    protocol: s.protocol,
                    address: s.local.ip(),
                    port: s.local.port(),
                    pid,
                    process,
                    exe,
                    uid: s.uid,
                    netns: ns_of(s.netns),
                    auth: None,
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
                    process,
                    exe,
                    uid: s.uid,
                    netns: ns_of(s.netns),
                }),
            }
        }
        (listeners, connections, problems, unowned)
    }
}

/// CPU percent over the process's whole life, as `ps` computes it.
fn lifetime_cpu(p: &ProcessRecord) -> Option<f32> {
    let ticks = procfs::ticks_per_second().max(1) as f64;
    let alive = (p.read_at - p.start_time).as_seconds_f64().max(1.0 / ticks);
    Some((p.cpu_ticks as f64 / ticks / alive * 100.0) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescans_follow_processes_that_come_and_go() {
        let mut o = Observer::new(HostRoot::default(), Reader::SockDiag, Redactor::default());
        let mut first = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let seen = o.observe();
        assert!(seen.snapshot.processes.iter().any(|p| p.pid == first.id()));
        let me = seen.snapshot.processes.iter().find(|p| p.pid == std::process::id()).unwrap().clone();
        first.kill().unwrap();
        first.wait().unwrap();
        let mut second = std::process::Command::new("sleep").arg("31").spawn().unwrap();
        // Burn some CPU so that the rescan has a change to take in.
        let spin = Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let seen = o.observe();
        second.kill().unwrap();
        second.wait().unwrap();
        let pids: Vec<u32> = seen.snapshot.processes.iter().map(|p| p.pid).collect();
        assert!(!pids.contains(&first.id()), "the one that ended is gone");
        let new = seen.snapshot.processes.iter().find(|p| p.pid == second.id()).expect("the new one");
        assert_eq!(new.cmdline, ["sleep", "31"]);
        let again = seen.snapshot.processes.iter().find(|p| p.pid == std::process::id()).unwrap();
        assert_eq!((again.start_time, &again.cmdline, &again.exe), (me.start_time, &me.cmdline, &me.exe));
        assert!(again.cpu_percent.is_some(), "a second scan measures CPU");
        // No pid twice, no kernel thread.
        let mut sorted = pids.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), pids.len());
        assert!(seen.snapshot.processes.iter().all(|p| p.pid != 2));
    }

    /// A process whose command line reads empty is left for the next look once (it may be in
    /// the middle of an exec), then reported as it is: one run with an empty `argv[0]` and no
    /// arguments (as a program hiding them could be) is not hidden by it.
    #[test]
    fn an_empty_command_line_waits_one_look_and_is_then_reported() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/bin/cat")
            .arg0("")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("/bin/cat");
        let pid = child.id();
        // Spawning returns as the child's exec switches programs, before its arguments are laid
        // out: the very moment this is about. Past it, one NUL.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let cmdline = loop {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            if !c.is_empty() || Instant::now() > deadline {
                break c;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(cmdline, b"\0", "its command line");

        let mut o = Observer::new(HostRoot::default(), Reader::SockDiag, Redactor::default());
        let first = o.observe();
        assert!(!first.snapshot.processes.iter().any(|p| p.pid == pid), "left for the next look");
        assert!(first.snapshot.processes.iter().any(|p| p.pid == std::process::id()), "the rest is there");
        let next = o.quick(Want { listen: false, connected: false }, false);
        drop(child.stdin.take());
        let _ = child.wait();
        let p = next.started.iter().find(|p| p.pid == pid).expect("reported at the next look");
        assert!(p.cmdline.is_empty() && p.exe.as_deref() == Some("/usr/bin/cat"), "{p:?}");
    }

    #[test]
    fn observation_of_this_machine() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let o = Observer::new(HostRoot::default(), Reader::SockDiag, Redactor::default()).observe();
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
