//! What the collector has been told, and what changed since: the agent side of the delta
//! protocol.
//!
//! The tracker holds two pictures of the host: `current`, as the agent sees it now, and `sent`, as
//! the reports made so far describe it. Of sockets, `sent` keeps only a fingerprint of each (a
//! host with 10,000 connections would otherwise hold them twice); a 64-bit hash that collides
//! would hide one update of one socket until it changes again. A delta is the difference, plus the processes that started
//! and ended in between (seen only through exec and exit events), so that even a process that
//! lived milliseconds is in the collector's history.

mod events;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use hostwatch_proto::v1::{
    self as proto, Changes, Connection, ConnectionKey, Delta, Listener, ListenerKey, Process, ProcessKey,
    Removed,
};
use time::OffsetDateTime;

#[derive(Debug, Default, Clone)]
struct Picture {
    processes: BTreeMap<u32, Process>,
    /// Sorted by key, without duplicates: a map without a second copy of each key (10,000
    /// connections' keys are half a megabyte).
    listeners: Vec<Listener>,
    connections: Vec<Connection>,
}

/// A socket's identity on the wire, by which the tracker sorts and compares.
trait Keyed {
    type Key: Ord + Clone + std::fmt::Debug;
    fn wire_key(&self) -> Self::Key;
    /// Whether the owning process is unknown (a scan that read the socket after its owner ended).
    fn owner_missing(&self) -> bool;
    /// Takes `from`'s owner (the one an event named).
    fn adopt_owner(&mut self, from: &Self);
}

impl Keyed for Listener {
    type Key = ListenerKey;
    fn wire_key(&self) -> ListenerKey {
        self.key()
    }
    fn owner_missing(&self) -> bool {
        self.pid.is_none()
    }
    fn adopt_owner(&mut self, from: &Self) {
        (self.pid, self.process, self.exe) = (from.pid, from.process.clone(), from.exe.clone());
    }
}

impl Keyed for Connection {
    type Key = ConnectionKey;
    fn wire_key(&self) -> ConnectionKey {
        self.key()
    }
    fn owner_missing(&self) -> bool {
        self.pid.is_none()
    }
    fn adopt_owner(&mut self, from: &Self) {
        (self.pid, self.process, self.exe) = (from.pid, from.process.clone(), from.exe.clone());
    }
}

/// What the collector has: processes whole (a similar process keeps the version sent), sockets as
/// fingerprints.
#[derive(Debug, Default)]
struct Sent {
    processes: BTreeMap<u32, Process>,
    listeners: BTreeMap<ListenerKey, u64>,
    connections: BTreeMap<ConnectionKey, u64>,
}

#[derive(Debug, Default)]
pub struct Tracker {
    current: Picture,
    sent: Sent,
    /// Processes that started and ended since the last report, with when they ended.
    transient: Vec<(Process, OffsetDateTime)>,
    /// When processes seen to end (by exit events) did so.
    ended: HashMap<ProcessKey, OffsetDateTime>,
    /// Execs seen but not read (the process was already gone).
    unread: Vec<proto::UnreadExec>,
    /// Programs replaced by a later exec of their process before any report showed them.
    passed: Vec<proto::PassedExec>,
    /// When each process that exec'd while the agent watched did so (the last time): a program
    /// known only from a scan (a fork child still running its parent's program) was not exec'd
    /// and is not passed on as if it had been.
    exec_at: HashMap<ProcessKey, OffsetDateTime>,
    /// Processes the collector knows under an earlier program that exec'd and then ended before
    /// a report: the last program goes out as an update ahead of the removal, or its run would
    /// be in no report.
    updated_then_ended: Vec<Process>,
    /// File changes not reported yet, oldest first. Not part of any snapshot: each goes out once,
    /// in a delta.
    files: std::collections::VecDeque<proto::FileChange>,
    /// The next report must be a snapshot (session start, resync, periodic).
    snapshot_due: bool,
    /// Whether `current` differs from `sent`, part by part, worked out when a part is set rather
    /// than every time a report may be due (a host with 10,000 connections would otherwise
    /// compare them every second).
    changed: Changed,
    /// Sockets the kernel's events told of, beside the scans' lists.
    listener_events: events::FromEvents<Listener>,
    connection_events: events::FromEvents<Connection>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Changed {
    processes: bool,
    listeners: bool,
    connections: bool,
}

impl Tracker {
    pub fn new() -> Self {
        Tracker { snapshot_due: true, ..Default::default() }
    }

    /// Makes the next report a snapshot.
    pub fn want_snapshot(&mut self) {
        self.snapshot_due = true;
    }

    /// Whether a delta with the pending history (what a snapshot cannot carry) should precede
    /// the snapshot that is due. The collector applies every delta it has not seen, so it never
    /// refuses one.
    pub fn history_before_snapshot(&self) -> bool {
        self.snapshot_due && self.has_history()
    }

    pub fn snapshot_due(&self) -> bool {
        self.snapshot_due
    }

    /// A process exec'd at `at`: a new program under a new or the same pid. A program it replaces
    /// that no report showed is kept, to go out as a passed exec.
    pub fn started(&mut self, p: Process, at: OffsetDateTime) {
        if let Some(old) = self.current.processes.get(&p.pid)
            && old.start_time == p.start_time
            && !same_program(old, &p)
            && let Some(&since) = self.exec_at.get(&old.key())
            && !self
                .sent
                .processes
                .get(&p.pid)
                .is_some_and(|s| s.start_time == old.start_time && same_program(s, old))
        {
            self.passed.push(proto::PassedExec { process: old.clone(), at: since, until: at });
        }
        self.exec_at.insert(p.key(), at);
        self.current.processes.insert(p.pid, p);
        self.changed.processes = true;
    }

    /// A process a quick look found (a fork child, or anything while exec events are not
    /// available): not known to have exec'd.
    pub fn seen(&mut self, p: Process) {
        self.current.processes.insert(p.pid, p);
        self.changed.processes = true;
    }

    /// An exec whose process was gone before it could be read.
    pub fn exec_unread(&mut self, pid: u32, at: OffsetDateTime) {
        self.unread.push(proto::UnreadExec { pid, at });
    }

    /// Whether there is history (processes that came and went, unread execs) that only a delta
    /// can carry: send one before a snapshot.
    pub fn has_history(&self) -> bool {
        self.listener_events.has_history()
            || self.connection_events.has_history()
            || !self.transient.is_empty()
            || !self.unread.is_empty()
            || !self.passed.is_empty()
            || !self.updated_then_ended.is_empty()
            || !self.files.is_empty()
    }

    /// Changes to watched files, to go out with the next delta.
    pub fn files_changed(&mut self, changes: Vec<proto::FileChange>) {
        self.files.extend(changes);
    }

    /// A process ended at `at`.
    pub fn ended(&mut self, pid: u32, at: OffsetDateTime) {
        let Some(p) = self.current.processes.remove(&pid) else {
            // A scan already found it gone; its exit is more exact than the scan's time.
            if let Some((_, when)) = self.transient.iter_mut().rev().find(|(p, _)| p.pid == pid) {
                *when = (*when).min(at);
            }
            return;
        };
        self.changed.processes = true;
        match self.sent.processes.get(&pid) {
            Some(s) if s.start_time == p.start_time => {
                if !same_program(s, &p) {
                    self.updated_then_ended.push(p.clone());
                }
                self.ended.insert(p.key(), at);
            }
            // Never reported: it lived between two reports.
            _ => self.transient.push((p, at)),
        }
    }

    /// All processes as a scan saw them at `seen_at`. A process known only from its exec event,
    /// never reported, that the scan no longer finds ended before its exit event was handled
    /// (events queue while a scan runs): it is kept as one that came and went, not forgotten.
    pub fn set_processes(&mut self, processes: Vec<Process>, seen_at: OffsetDateTime) {
        let next: BTreeMap<u32, Process> = processes.into_iter().map(|p| (p.pid, p)).collect();
        for (pid, p) in std::mem::take(&mut self.current.processes) {
            let gone = next.get(&pid).is_none_or(|n| n.start_time != p.start_time);
            let never_sent = self.sent.processes.get(&pid).is_none_or(|s| s.start_time != p.start_time);
            if gone && never_sent {
                self.transient.push((p, seen_at));
            }
        }
        self.current.processes = next;
        self.changed.processes = self.current.processes.len() != self.sent.processes.len()
            || self
                .current
                .processes
                .iter()
                .any(|(pid, p)| self.sent.processes.get(pid).is_none_or(|s| !similar(s, p)));
    }

    /// The listeners a scan that looked at `seen_at` found.
    pub fn set_listeners(&mut self, mut listeners: Vec<Listener>, seen_at: OffsetDateTime) {
        self.listener_events.lend_owners(&mut listeners);
        let moved = keyed(&mut self.current.listeners, listeners);
        self.listener_events.scanned(&self.current.listeners, seen_at, &mut self.sent.listeners);
        if moved {
            let extra = self.listener_events.sent_count();
            self.changed.listeners = differ(&self.sent.listeners, &self.current.listeners, extra);
        }
    }

    /// The connections a scan that looked at `seen_at` found. A steady host hands in the same
    /// 10,000 connections every scan: they are compared with what is held (no map rebuilt,
    /// nothing hashed) and compared with what was sent only when they moved.
    pub fn set_connections(&mut self, mut connections: Vec<Connection>, seen_at: OffsetDateTime) {
        self.connection_events.lend_owners(&mut connections);
        let moved = keyed(&mut self.current.connections, connections);
        self.connection_events.scanned(&self.current.connections, seen_at, &mut self.sent.connections);
        if moved {
            let extra = self.connection_events.sent_count();
            self.changed.connections = differ(&self.sent.connections, &self.current.connections, extra);
        }
    }

    /// The process that owns the listener a connection to `local` came in through: one on its
    /// port and address, or on every address.
    pub fn listener_owner(
        &self,
        protocol: proto::Protocol,
        local: std::net::SocketAddr,
        netns: Option<u64>,
    ) -> Option<u32> {
        let serves = |l: &Listener| {
            l.protocol == protocol
                && l.port == local.port()
                && l.netns == netns
                && (l.address == local.ip() || l.address.is_unspecified())
        };
        let scanned = self.current.listeners.iter().filter(|l| serves(l));
        // The most specific first: a listener on the address over one on every address.
        let mut found: Vec<&Listener> =
            scanned.chain(self.listener_events.open_items().filter(|l| serves(l))).collect();
        found.sort_by_key(|l| l.address.is_unspecified());
        found.first().and_then(|l| l.pid)
    }

    /// A listener the kernel's events told of, opened at `at`.
    pub fn listener_opened(&mut self, l: Listener, at: OffsetDateTime) {
        self.listener_events.opened(l, at, &self.current.listeners, &self.sent.listeners);
    }

    /// A listener closed at `at`, as the kernel's events tell.
    pub fn listener_closed(&mut self, key: &ListenerKey, at: OffsetDateTime) {
        self.listener_events.closed(key, at, &mut self.current.listeners, &mut self.sent.listeners);
    }

    /// Before [`Tracker::connection_opened`]: ends an earlier socket of the same key still open
    /// here, and says whether the next report must go out before the new one is added (see
    /// `FromEvents::reopening`).
    pub fn connection_reopening(&mut self, key: &ConnectionKey, at: OffsetDateTime) -> bool {
        self.connection_events.reopening(key, at, &mut self.sent.connections)
    }

    /// The same for a listener.
    pub fn listener_reopening(&mut self, key: &ListenerKey, at: OffsetDateTime) -> bool {
        self.listener_events.reopening(key, at, &mut self.sent.listeners)
    }

    /// A connection the kernel's events told of, opened at `at`.
    pub fn connection_opened(&mut self, c: Connection, at: OffsetDateTime) {
        self.connection_events.opened(c, at, &self.current.connections, &self.sent.connections);
    }

    /// A connection closed at `at`, as the kernel's events tell.
    pub fn connection_closed(&mut self, key: &ConnectionKey, at: OffsetDateTime) {
        self.connection_events.closed(key, at, &mut self.current.connections, &mut self.sent.connections);
    }

    /// Whether anything changed since the last report.
    pub fn is_dirty(&self) -> bool {
        let c = self.changed;
        self.has_history()
            || c.processes
            || c.listeners
            || c.connections
            || self.listener_events.pending()
            || self.connection_events.pending()
    }

    /// What changed since the last report; the tracker then counts it as sent.
    pub fn take_delta(&mut self, now: OffsetDateTime) -> Delta {
        let mut processes = diff_processes(&self.sent.processes, &self.current.processes, &self.ended, now);
        // What was sent of each process is what the collector has: a process only "similar" to it
        // keeps the sent version, so slow drift still adds up to a reported change.
        self.sent.processes.retain(|pid, _| self.current.processes.contains_key(pid));
        for p in processes.added.iter().chain(&processes.updated) {
            self.sent.processes.insert(p.pid, p.clone());
        }
        for (p, at) in self.transient.drain(..) {
            processes.removed.push(Removed { key: p.key(), at });
            processes.added.push(p);
        }
        // Removed by the diff (gone from `current`), updated first.
        processes.updated.append(&mut self.updated_then_ended);
        self.forget_ended_execs();
        // Sockets are compared and copied only where they changed: most deltas are about processes.
        // At most a report's worth of file changes; the rest go with the next (the tracker stays
        // dirty while any wait).
        let n = file_batch(&self.files);
        let mut delta = Delta {
            processes,
            unread_execs: std::mem::take(&mut self.unread),
            passed_execs: std::mem::take(&mut self.passed),
            files: self.files.drain(..n).collect(),
            ..Delta::default()
        };
        if self.changed.listeners {
            let events = &self.listener_events;
            delta.listeners =
                diff(&self.sent.listeners, &self.current.listeners, now, |k| events.holds_sent(k));
            self.sent.listeners = fingerprints(&self.current.listeners);
            self.listener_events.keep_sent(&mut self.sent.listeners);
        }
        self.listener_events.take(&mut delta.listeners, &mut self.sent.listeners);
        if self.changed.connections {
            let events = &self.connection_events;
            delta.connections =
                diff(&self.sent.connections, &self.current.connections, now, |k| events.holds_sent(k));
            self.sent.connections = fingerprints(&self.current.connections);
            self.connection_events.keep_sent(&mut self.sent.connections);
        }
        self.connection_events.take(&mut delta.connections, &mut self.sent.connections);
        self.ended.clear();
        self.changed = Changed::default();
        delta
    }

    /// The whole current state; the tracker then counts it as sent.
    pub fn take_snapshot(&mut self, taken_at: OffsetDateTime) -> proto::Snapshot {
        self.snapshot_due = false;
        self.transient.clear();
        self.unread.clear();
        self.passed.clear();
        self.updated_then_ended.clear();
        self.ended.clear();
        self.forget_ended_execs();
        self.sent = Sent {
            processes: self.current.processes.clone(),
            listeners: fingerprints(&self.current.listeners),
            connections: fingerprints(&self.current.connections),
        };
        self.changed = Changed::default();
        let mut listeners = self.current.listeners.clone();
        self.listener_events.snapshot(&mut listeners, &mut self.sent.listeners);
        let mut connections = self.current.connections.clone();
        self.connection_events.snapshot(&mut connections, &mut self.sent.connections);
        proto::Snapshot {
            taken_at,
            processes: self.current.processes.values().cloned().collect(),
            listeners,
            connections,
        }
    }

    /// Exec times are kept only for processes still running.
    fn forget_ended_execs(&mut self) {
        let current = &self.current.processes;
        self.exec_at.retain(|k, _| current.get(&k.pid).is_some_and(|p| p.start_time == k.start_time));
    }

    /// Changes waiting, for logs.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.current.processes.len(), self.current.listeners.len(), self.current.connections.len())
    }
}

/// Bytes of file changes one report carries at most, roughly: well under the collector's
/// default body limit (8 MiB) whatever the paths' lengths.
const FILE_BYTES_PER_REPORT: usize = 2 << 20;

/// How many of the waiting file changes go into the next report: at least one, at most the wire's
/// count limit, and about [`FILE_BYTES_PER_REPORT`] of JSON.
fn file_batch(files: &std::collections::VecDeque<proto::FileChange>) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for c in files.iter().take(proto::limits::MAX_FILE_CHANGES) {
        // About 400 bytes of fields and hashes, and the texts of arbitrary length.
        let target =
            |s: &Option<proto::FileState>| s.as_ref().and_then(|s| s.target.as_ref()).map_or(0, String::len);
        let size = 400
            + c.path.len()
            + c.from_path.as_ref().map_or(0, String::len)
            + target(&c.old)
            + target(&c.new);
        if n > 0 && bytes + size > FILE_BYTES_PER_REPORT {
            break;
        }
        bytes += size;
        n += 1;
    }
    n
}

/// Replaces `out` with `items` by key; `false` when they are what `out` holds already. The old
/// map goes before the new one is built, so that two never coexist.
fn keyed<T: Keyed + PartialEq>(out: &mut Vec<T>, mut items: Vec<T>) -> bool {
    // Stable: of several sockets on one address (SO_REUSEPORT, one listener), the first (lowest
    // owner) stands for them. Scans list sockets in nearly this order, so sorting is cheap.
    items.sort_by_key(T::wire_key);
    items.dedup_by(|later, first| later.wire_key() == first.wire_key());
    if items == *out {
        return false;
    }
    *out = items;
    true
}

/// Whether sorted `items` hold one with key `k`.
fn holds<T: Keyed>(items: &[T], k: &T::Key) -> bool {
    items.binary_search_by(|x| x.wire_key().cmp(k)).is_ok()
}

/// A hash of everything a report says of `x`.
fn fingerprint<T: Hash>(x: &T) -> u64 {
    let mut h = DefaultHasher::new();
    x.hash(&mut h);
    h.finish()
}

fn fingerprints<T: Keyed + Hash>(current: &[T]) -> BTreeMap<T::Key, u64> {
    current.iter().map(|x| (x.wire_key(), fingerprint(x))).collect()
}

/// Whether `current` differs from what was sent; `extra`: how many of `sent` are events' own.
fn differ<T: Keyed + Hash>(sent: &BTreeMap<T::Key, u64>, current: &[T], extra: usize) -> bool {
    sent.len() != current.len() + extra
        || current.iter().any(|x| sent.get(&x.wire_key()) != Some(&fingerprint(x)))
}

/// Processes by pid: a pid whose start time changed is one process gone and another come.
fn diff_processes(
    sent: &BTreeMap<u32, Process>,
    current: &BTreeMap<u32, Process>,
    ended: &HashMap<ProcessKey, OffsetDateTime>,
    now: OffsetDateTime,
) -> Changes<Process, ProcessKey> {
    let mut c = Changes::default();
    for (pid, p) in current {
        match sent.get(pid) {
            None => c.added.push(p.clone()),
            Some(s) if s.start_time != p.start_time => {
                c.removed.push(Removed { key: s.key(), at: ended.get(&s.key()).copied().unwrap_or(now) });
                c.added.push(p.clone());
            }
            Some(s) if !similar(s, p) => c.updated.push(p.clone()),
            Some(_) => {}
        }
    }
    for (pid, s) in sent {
        if !current.contains_key(pid) {
            c.removed.push(Removed { key: s.key(), at: ended.get(&s.key()).copied().unwrap_or(now) });
        }
    }
    c
}

/// The same program: an exec that changes neither the executable nor the arguments is not told
/// apart (as the collector tells an exec under a known pid).
fn same_program(a: &Process, b: &Process) -> bool {
    a.exe == b.exe && a.cmdline == b.cmdline
}

/// The same process as far as a report goes: everything equal but CPU within 10 points and memory
/// within a quarter of what was last sent. Usage moves every scan; reporting every wiggle would
/// turn a quiet host into a stream of updates.
fn similar(sent: &Process, now: &Process) -> bool {
    let cpu_close = match (sent.cpu_percent, now.cpu_percent) {
        (Some(a), Some(b)) => (a - b).abs() < 10.0,
        (a, b) => a.is_none() == b.is_none(),
    };
    let rss_close = match (sent.rss_bytes, now.rss_bytes) {
        (Some(a), Some(b)) => a.abs_diff(b) <= a / 4,
        (a, b) => a.is_none() == b.is_none(),
    };
    cpu_close
        && rss_close
        && Process { cpu_percent: None, rss_bytes: None, ..sent.clone() }
            == Process { cpu_percent: None, rss_bytes: None, ..now.clone() }
}

/// `current` against what was sent; a sent key `open` holds (an event's, still open) stays.
fn diff<T: Keyed + Clone + Hash>(
    sent: &BTreeMap<T::Key, u64>,
    current: &[T],
    now: OffsetDateTime,
    open: impl Fn(&T::Key) -> bool,
) -> Changes<T, T::Key> {
    let mut c = Changes::default();
    for x in current {
        match sent.get(&x.wire_key()) {
            None => c.added.push(x.clone()),
            Some(s) if *s != fingerprint(x) => c.updated.push(x.clone()),
            Some(_) => {}
        }
    }
    for k in sent.keys() {
        if !holds(current, k) && !open(k) {
            c.removed.push(Removed { key: k.clone(), at: now });
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, name: &str, start: i64) -> Process {
        Process {
            pid,
            ppid: 1,
            name: name.into(),
            exe: Some(format!("/bin/{name}")),
            exe_deleted: false,
            cmdline: vec![name.into()],
            cmdline_truncated: false,
            uid: 0,
            user: None,
            start_time: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(start),
            ..Process::new(0, 0, "", 0, OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(start))
        }
    }

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_000 + s)
    }

    #[test]
    fn snapshot_then_deltas() {
        let mut tr = Tracker::new();
        assert!(tr.snapshot_due());
        tr.set_processes(vec![p(1, "init", 0), p(10, "sshd", 1)], t(0));
        let s = tr.take_snapshot(t(0));
        assert_eq!((s.processes.len(), tr.snapshot_due(), tr.is_dirty()), (2, false, false));

        // A process started and one ended: added and removed.
        tr.started(p(20, "nginx", 5), t(2));
        tr.ended(10, t(3));
        assert!(tr.is_dirty());
        let d = tr.take_delta(t(4));
        assert_eq!(d.processes.added.iter().map(|p| p.pid).collect::<Vec<_>>(), [20]);
        assert_eq!(d.processes.removed.len(), 1);
        assert_eq!(
            (d.processes.removed[0].key.pid, d.processes.removed[0].at),
            (10, t(3)),
            "the exit event's time"
        );
        assert!(!tr.is_dirty());
        assert!(tr.take_delta(t(5)).processes.is_empty(), "nothing twice");
    }

    #[test]
    fn a_process_that_lived_between_two_reports_is_in_the_delta() {
        let mut tr = Tracker::new();
        tr.take_snapshot(t(0));
        tr.started(p(30, "blip", 7), t(7));
        tr.ended(30, t(8));
        let d = tr.take_delta(t(9));
        assert_eq!(d.processes.added.iter().map(|p| p.pid).collect::<Vec<_>>(), [30]);
        assert_eq!(d.processes.removed.iter().map(|r| (r.key.pid, r.at)).collect::<Vec<_>>(), [(30, t(8))]);
    }

    #[test]
    fn a_process_a_scan_missed_before_its_exit_was_handled_is_not_forgotten() {
        let mut tr = Tracker::new();
        tr.set_processes(vec![p(1, "init", 0)], t(0));
        tr.take_snapshot(t(0));
        // Its exec event was handled; it ended; a scan ran before its exit event was handled.
        tr.started(p(31, "blip", 7), t(7));
        tr.set_processes(vec![p(1, "init", 0)], t(9));
        tr.ended(31, t(8));
        let d = tr.take_delta(t(10));
        assert_eq!(d.processes.added.iter().map(|p| p.pid).collect::<Vec<_>>(), [31]);
        assert_eq!(d.processes.removed.iter().map(|r| (r.key.pid, r.at)).collect::<Vec<_>>(), [(31, t(8))]);
        // A process the collector knows is simply removed, once.
        tr.set_processes(vec![], t(11));
        let d = tr.take_delta(t(12));
        assert_eq!((d.processes.added.len(), d.processes.removed.len()), (0, 1));
    }

    #[test]
    fn exec_under_the_same_pid_is_an_update_and_pid_reuse_is_two_processes() {
        let mut tr = Tracker::new();
        tr.set_processes(vec![p(40, "sh", 1), p(41, "old", 1)], t(0));
        tr.take_snapshot(t(0));
        let mut execd = p(40, "python3", 1);
        execd.cmdline = vec!["python3".into(), "app.py".into()];
        tr.started(execd, t(5));
        tr.set_processes(vec![tr_current(&tr, 40), p(41, "new", 9)], t(0));
        let d = tr.take_delta(t(10));
        assert_eq!(d.processes.updated.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["python3"]);
        assert_eq!(d.processes.added.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["new"]);
        assert_eq!(d.processes.removed.iter().map(|r| r.key.pid).collect::<Vec<_>>(), [41]);
    }

    /// `p(pid, name, start)` running another program: same pid and start time.
    fn execs(p: &Process, name: &str) -> Process {
        Process {
            name: name.into(),
            exe: Some(format!("/tmp/{name}")),
            cmdline: vec![name.into()],
            ..p.clone()
        }
    }

    #[test]
    fn a_program_replaced_by_an_exec_before_any_report_is_a_passed_exec() {
        let mut tr = Tracker::new();
        tr.take_snapshot(t(0));
        // A dropper that execs its payload, which execs a third program, all within one report.
        let first = p(60, "dropper", 1);
        tr.started(execs(&first, "dropper"), t(1));
        tr.started(execs(&first, "payload"), t(2));
        tr.started(execs(&first, "miner"), t(3));
        let d = tr.take_delta(t(4));
        let passed: Vec<_> =
            d.passed_execs.iter().map(|x| (x.process.name.as_str(), x.at, x.until)).collect();
        assert_eq!(passed, [("dropper", t(1), t(2)), ("payload", t(2), t(3))]);
        assert_eq!(d.processes.added.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["miner"]);
        // The same again later: the reported program is not passed on a second time.
        tr.started(execs(&first, "sleep"), t(5));
        let d = tr.take_delta(t(6));
        assert!(d.passed_execs.is_empty(), "{:?}", d.passed_execs);
        assert_eq!(d.processes.updated.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["sleep"]);
    }

    #[test]
    fn a_fork_child_read_by_a_scan_is_not_an_exec() {
        let mut tr = Tracker::new();
        tr.take_snapshot(t(0));
        // A scan found the child still running its parent's program; then it exec'd.
        let child = p(61, "sh", 1);
        tr.set_processes(vec![child.clone()], t(1));
        tr.started(execs(&child, "job"), t(2));
        let d = tr.take_delta(t(3));
        assert!(d.passed_execs.is_empty(), "{:?}", d.passed_execs);
        assert_eq!(d.processes.added.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["job"]);
    }

    #[test]
    fn a_reported_process_that_execs_and_ends_before_the_next_report_is_updated_then_removed() {
        let mut tr = Tracker::new();
        // The collector knows the fork child as `sh`; it execs a 20 ms program, which ends.
        let child = p(62, "sh", 1);
        tr.set_processes(vec![child.clone()], t(0));
        tr.take_snapshot(t(0));
        tr.started(execs(&child, "blip"), t(1));
        tr.ended(62, t(2));
        let d = tr.take_delta(t(3));
        assert_eq!(d.processes.updated.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["blip"]);
        assert_eq!(d.processes.removed.iter().map(|r| (r.key.pid, r.at)).collect::<Vec<_>>(), [(62, t(2))]);
        assert!(d.processes.added.is_empty() && d.passed_execs.is_empty());
        // A reported process that simply ends is only removed.
        let plain = p(63, "worker", 1);
        tr.set_processes(vec![plain], t(4));
        tr.take_delta(t(4));
        tr.ended(63, t(5));
        let d = tr.take_delta(t(6));
        assert!(d.processes.updated.is_empty());
        assert_eq!(d.processes.removed.len(), 1);
    }

    #[test]
    fn usage_changes_are_reported_when_they_add_up() {
        let mut tr = Tracker::new();
        let mut busy = p(50, "worker", 1);
        busy.cpu_percent = Some(5.0);
        busy.rss_bytes = Some(100 << 20);
        tr.set_processes(vec![busy.clone()], t(0));
        tr.take_snapshot(t(0));
        // Small moves: nothing to report.
        busy.cpu_percent = Some(9.0);
        busy.rss_bytes = Some(110 << 20);
        tr.set_processes(vec![busy.clone()], t(0));
        assert!(!tr.is_dirty());
        assert!(tr.take_delta(t(1)).processes.is_empty());
        // Drift that adds up against what was last sent is reported.
        busy.rss_bytes = Some(130 << 20);
        tr.set_processes(vec![busy.clone()], t(0));
        let d = tr.take_delta(t(2));
        assert_eq!(d.processes.updated.len(), 1);
        busy.cpu_percent = Some(95.0);
        tr.set_processes(vec![busy.clone()], t(0));
        assert_eq!(tr.take_delta(t(3)).processes.updated[0].cpu_percent, Some(95.0));
    }

    fn tr_current(tr: &Tracker, pid: u32) -> Process {
        tr.current.processes[&pid].clone()
    }

    #[test]
    fn sockets_by_key() {
        let l = |port| Listener {
            protocol: proto::Protocol::Tcp,
            address: "0.0.0.0".parse().unwrap(),
            port,
            pid: Some(1),
            process: None,
            exe: None,
            uid: 0,
            netns: None,
            auth: None,
        };
        let mut tr = Tracker::new();
        tr.set_listeners(vec![l(22), l(22), l(80)], t(0));
        assert_eq!(tr.take_snapshot(t(0)).listeners.len(), 2, "duplicates on one address are one listener");
        let mut moved = l(80);
        moved.pid = Some(2);
        tr.set_listeners(vec![moved, l(443)], t(0));
        let d = tr.take_delta(t(1));
        assert_eq!(
            (d.listeners.added.len(), d.listeners.updated.len(), d.listeners.removed.len()),
            (1, 1, 1),
            "443 opened, 80 changed owner, 22 closed"
        );
    }

    #[test]
    fn file_changes_go_out_once_in_reports_of_bounded_size() {
        let change = |i: usize, len: usize| proto::FileChange {
            path: format!("/{i}/{}", "x".repeat(len)),
            change: proto::FileChangeKind::Created,
            origin: proto::ChangeOrigin::Live,
            at: t(0),
            old: None,
            new: None,
            from_path: None,
            package: None,
        };
        let mut tr = Tracker::new();
        tr.take_snapshot(t(0));
        // Short paths and long ones: every change goes out once, in order, in reports within the
        // wire's count limit and a few MiB.
        for (n, len) in [(proto::limits::MAX_FILE_CHANGES + 5, 10), (1_000, 4_000)] {
            tr.files_changed((0..n).map(|i| change(i, len)).collect());
            let mut seen = Vec::new();
            let mut reports = 0;
            while tr.is_dirty() {
                let d = tr.take_delta(t(3));
                let json = serde_json::to_vec(&d).unwrap().len();
                assert!(json < 4 << 20, "{json} bytes");
                assert!(!d.files.is_empty() && d.files.len() <= proto::limits::MAX_FILE_CHANGES);
                seen.extend(d.files.into_iter().map(|c| c.path));
                reports += 1;
            }
            assert_eq!(seen.len(), n);
            assert!(seen.iter().enumerate().all(|(i, p)| p.starts_with(&format!("/{i}/"))));
            assert!(reports * 50 <= n, "{reports} reports for {n} changes: batched, not one each");
        }
    }

    #[test]
    fn the_same_connections_in_another_order_are_no_change() {
        let c = |port, process: &str| Connection {
            protocol: proto::Protocol::Tcp,
            local_address: "10.0.0.1".parse().unwrap(),
            local_port: port,
            remote_address: "10.0.0.9".parse().unwrap(),
            remote_port: 443,
            direction: proto::Direction::Outbound,
            pid: Some(7),
            process: Some(process.into()),
            exe: None,
            uid: 0,
            netns: None,
        };
        let mut tr = Tracker::new();
        tr.set_connections(vec![c(5000, "curl"), c(4000, "curl"), c(6000, "curl")], t(0));
        assert_eq!(tr.take_snapshot(t(0)).connections.len(), 3);
        tr.set_connections(vec![c(6000, "curl"), c(5000, "curl"), c(4000, "curl")], t(0));
        assert!(!tr.is_dirty(), "reordered, not changed");
        // Held as they are now, not as first set: a change after an unchanged scan still shows.
        tr.set_connections(vec![c(6000, "curl"), c(5000, "wget"), c(4000, "curl")], t(0));
        assert!(tr.is_dirty());
        let d = tr.take_delta(t(1));
        assert_eq!(d.connections.updated.iter().map(|x| x.local_port).collect::<Vec<_>>(), [5000]);
        tr.set_connections(vec![c(6000, "curl"), c(5000, "wget"), c(4000, "curl")], t(0));
        assert!(!tr.is_dirty(), "what was sent is held");
        tr.set_connections(vec![c(6000, "curl")], t(0));
        assert_eq!(tr.take_delta(t(2)).connections.removed.len(), 2);
    }

    #[test]
    fn sockets_from_events_come_and_go_between_scans() {
        let c = |port| Connection {
            protocol: proto::Protocol::Tcp,
            local_address: "10.0.0.1".parse().unwrap(),
            local_port: port,
            remote_address: "10.0.0.9".parse().unwrap(),
            remote_port: 3333,
            direction: proto::Direction::Outbound,
            pid: Some(7),
            process: Some("curl".into()),
            exe: None,
            uid: 0,
            netns: None,
        };
        let ports = |v: &[Connection]| v.iter().map(|x| x.local_port).collect::<Vec<_>>();
        let gone = |port, at| Removed { key: c(port).key(), at: t(at) };
        let mut tr = Tracker::new();
        tr.set_connections(vec![c(1000)], t(0));
        tr.take_snapshot(t(0));
        // Opened and closed between two scans: come and gone, with the owner the event named.
        tr.connection_opened(c(2000), t(1));
        tr.connection_closed(&c(2000).key(), t(2));
        assert!(tr.is_dirty() && tr.has_history());
        let d = tr.take_delta(t(3));
        assert_eq!((ports(&d.connections.added), d.connections.removed), (vec![2000], vec![gone(2000, 2)]));
        // Still open at the report: added once; a scan that lists it then makes it its own.
        tr.connection_opened(c(3000), t(4));
        let d = tr.take_delta(t(5));
        assert_eq!((ports(&d.connections.added), d.connections.removed.len()), (vec![3000], 0));
        assert!(!tr.is_dirty());
        tr.set_connections(vec![c(1000), c(3000)], t(6));
        assert!(!tr.is_dirty(), "the scan shows what was reported");
        // A reported one that closes: removed at its close, and out of the scan's list.
        tr.connection_closed(&c(3000).key(), t(7));
        let d = tr.take_delta(t(8));
        assert_eq!((d.connections.added.len(), d.connections.removed), (0, vec![gone(3000, 7)]));
        // An event's socket that a later scan does not list closed unseen (UDP): removed then.
        tr.connection_opened(c(4000), t(9));
        assert_eq!(ports(&tr.take_delta(t(10)).connections.added), [4000]);
        tr.set_connections(vec![c(1000)], t(11));
        assert_eq!(tr.take_delta(t(12)).connections.removed, [gone(4000, 11)]);
        // One opened after the scan looked is still open.
        tr.connection_opened(c(5000), t(20));
        tr.set_connections(vec![c(1000)], t(19));
        let d = tr.take_delta(t(21));
        assert_eq!((ports(&d.connections.added), d.connections.removed.len()), (vec![5000], 0));
        // What a scan already lists is not an event's.
        tr.connection_opened(c(1000), t(22));
        assert!(!tr.is_dirty());
        // A scan saw it, it closed before a report: come and gone too.
        tr.set_connections(vec![c(1000), c(5000), c(6000)], t(23));
        tr.connection_closed(&c(6000).key(), t(24));
        let d = tr.take_delta(t(25));
        assert_eq!((ports(&d.connections.added), d.connections.removed), (vec![6000], vec![gone(6000, 24)]));
        // A snapshot lists the events' open sockets too.
        let mut listed = ports(&tr.take_snapshot(t(26)).connections);
        listed.sort();
        assert_eq!(listed, [1000, 5000]);
        // A scan that read a socket after its owner ended names no owner; its event did: the
        // scan's item goes out with the event's owner.
        tr.connection_opened(c(7000), t(27));
        let ownerless = Connection { pid: None, process: None, ..c(7000) };
        tr.set_connections(vec![c(1000), c(5000), ownerless], t(28));
        let d = tr.take_delta(t(29));
        let sent = d.connections.added.iter().find(|x| x.local_port == 7000).expect("the scan's socket");
        assert_eq!((sent.pid, sent.process.as_deref()), (Some(7), Some("curl")), "{sent:?}");
        assert!(!tr.is_dirty());
    }

    /// Two sockets of one key (a UDP four-tuple used again; TCP after the port range wrapped)
    /// must not share a report: the collector would record one opening and end the second.
    #[test]
    fn a_key_opened_again_waits_for_the_next_report() {
        let c = |pid| Connection {
            protocol: proto::Protocol::Udp,
            local_address: "10.0.0.1".parse().unwrap(),
            local_port: 40000,
            remote_address: "10.0.0.9".parse().unwrap(),
            remote_port: 53,
            direction: proto::Direction::Outbound,
            pid: Some(pid),
            process: Some("dig".into()),
            exe: None,
            uid: 0,
            netns: None,
        };
        let key = c(1).key();
        let mut tr = Tracker::new();
        tr.take_snapshot(t(0));
        // Nothing of the key pending: no report needed first.
        assert!(!tr.connection_reopening(&key, t(1)));
        tr.connection_opened(c(1), t(1));
        // The same four-tuple again: the first (UDP: never closed by an event) ended then, and
        // the next report, which carries that, must go before the second is added.
        assert!(tr.connection_reopening(&key, t(2)));
        let d = tr.take_delta(t(3));
        let pids = |v: &[Connection]| v.iter().map(|x| x.pid).collect::<Vec<_>>();
        assert_eq!(pids(&d.connections.added), [Some(1)]);
        assert_eq!(d.connections.removed, [Removed { key: key.clone(), at: t(2) }]);
        assert!(!tr.connection_reopening(&key, t(2)), "that report went");
        tr.connection_opened(c(2), t(2));
        let d = tr.take_delta(t(4));
        assert_eq!((pids(&d.connections.added), d.connections.removed.len()), (vec![Some(2)], 0));
        // Reported, then opened again: the report ends the first; the second comes after it.
        assert!(tr.connection_reopening(&key, t(5)));
        let d = tr.take_delta(t(6));
        assert_eq!(
            (d.connections.added.len(), d.connections.removed),
            (0, vec![Removed { key: key.clone(), at: t(5) }])
        );
        tr.connection_opened(c(3), t(5));
        assert_eq!(pids(&tr.take_delta(t(7)).connections.added), [Some(3)]);
        // A TCP close ends a key for the next report as well.
        tr.connection_closed(&key, t(8));
        assert!(tr.connection_reopening(&key, t(9)));
    }
}
