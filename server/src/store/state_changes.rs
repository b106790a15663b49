//! What a report does to a host's stored state, decided once for every store: which rows to
//! write and delete, which history to record, and which starts the engine is to judge.
//!
//! A store looks up the rows the decision needs ([`StoredState`]) and executes the [`Write`]s in
//! order, in the report's transaction; it decides nothing of its own. Lookups see the state as
//! the writes planned so far leave it (an item a delta adds and removes is found by the removal),
//! so the writes may wait until the plan is whole.
//!
//! Invariant: every change to a state row comes with its history row, so the history is exactly
//! the sequence of states the collector held.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use hostwatch_proto::v1::{Direction, Protocol};
use time::OffsetDateTime;

use crate::model::{
    ChangeSet, Connection, ConnectionKey, HostState, Item, Listener, ListenerKey, Process, ProcessKey,
    Recorded, Started, StateDelta,
};
use crate::store::Result;

/// Where the report being applied stands in its agent's sequence: its own number, and the last
/// number the agent had written when it sent it (its number plus its backlog). Every item a report
/// starts is stored with `through`; a later report of the same session numbered up to that ends
/// an item that was gone before the collector judged it.
#[derive(Debug, Clone, Copy)]
pub struct Judging {
    pub seq: u64,
    pub through: u64,
}

impl Judging {
    pub fn through(self) -> i64 {
        i64::try_from(self.through).unwrap_or(i64::MAX)
    }

    /// Whether an item judged with `through` (0: before any of this session) ends in this report
    /// as one that was already gone when it was judged.
    fn late(self, through: i64) -> bool {
        through > 0 && i64::try_from(self.seq).unwrap_or(i64::MAX) <= through
    }
}

/// Where a host's reports stand, as stored: the session of the last report applied (0: none
/// yet), its number, and the session before it.
#[derive(Debug, Clone, Copy)]
pub struct Sequence {
    pub session: u64,
    pub last_seq: u64,
    pub prior: Option<u64>,
}

/// What a report is to the host's sequence of reports, decided before anything is written.
#[derive(Debug, Clone, Copy)]
pub struct ReportStep {
    /// The report's session is not the one stored: items' judged_through are reset.
    pub new_session: bool,
    /// An earlier session reporting again after a newer began: a second agent with the same key
    /// (an agent starts a new random session each run and never goes back to one).
    pub came_back: bool,
    /// Sent before and applied then: changes nothing but `last_seen`.
    pub replay: bool,
    /// Sequence numbers skipped: (first missing, received).
    pub gap: Option<(u64, u64)>,
    /// The host's very first state: not news (its processes did not start now), no history.
    pub first: bool,
    pub judging: Judging,
    /// The session and number stored after it, and the session before.
    pub after: Sequence,
}

impl ReportStep {
    /// Decides where a report of `session`, numbered `seq` with `backlog` reports spooled behind
    /// it, stands after `stored`.
    pub fn of(stored: Sequence, session: u64, seq: u64, backlog: u64) -> ReportStep {
        let same_session = session == stored.session;
        let replay = same_session && seq <= stored.last_seq;
        let after = if replay {
            stored
        } else {
            Sequence {
                session,
                last_seq: seq,
                prior: if !same_session && stored.session != 0 { Some(stored.session) } else { stored.prior },
            }
        };
        ReportStep {
            new_session: !same_session,
            came_back: !same_session && stored.prior == Some(session),
            replay,
            gap: (same_session && seq > stored.last_seq + 1).then_some((stored.last_seq + 1, seq)),
            first: stored.last_seq == 0 && stored.session == 0,
            judging: Judging { seq, through: seq.saturating_add(backlog) },
            after,
        }
    }

    /// What the store did with the report, by what it carries. A delta that does not follow what
    /// was applied is applied all the same (what it says happened did happen, and its history
    /// would be lost otherwise), but the state it leaves may miss what the skipped reports said,
    /// so a snapshot must follow.
    pub fn applied(&self, content: &crate::model::Content) -> crate::model::Applied {
        use crate::model::{Applied, Content};
        match (self.replay, content) {
            (true, _) => Applied::Replay,
            (false, Content::Snapshot(_)) => Applied::Applied { gap: self.gap, resync: false },
            (false, Content::Delta(_) | Content::Heartbeat) => {
                Applied::Applied { gap: self.gap, resync: self.new_session || self.gap.is_some() }
            }
        }
    }
}

/// A host's stored rows as a store holds them before the report: each item with the
/// `judged_through` it was stored with (see [`Judging`]).
pub trait StoredState {
    fn process(&mut self, k: ProcessKey) -> Result<Option<(Process, i64)>>;
    fn listener(&mut self, k: ListenerKey) -> Result<Option<(Listener, i64)>>;
    fn connection(&mut self, k: ConnectionKey) -> Result<Option<(Connection, i64)>>;
}

/// A host's whole stored state in memory, for a store that reads it at once.
#[derive(Debug, Default)]
pub struct Loaded {
    pub processes: HashMap<ProcessKey, (Process, i64)>,
    pub listeners: HashMap<ListenerKey, (Listener, i64)>,
    pub connections: HashMap<ConnectionKey, (Connection, i64)>,
}

impl Loaded {
    /// The state as the engine reads it (processes by pid, sockets in their numeric order).
    pub fn state(&self) -> HostState {
        let mut processes: Vec<Process> = self.processes.values().map(|(p, _)| p.clone()).collect();
        processes.sort_unstable_by_key(|p| (p.pid, p.start_time));
        let mut listeners: Vec<Listener> = self.listeners.values().map(|(l, _)| l.clone()).collect();
        listeners.sort_unstable_by_key(|l| (l.protocol, l.port, l.address, l.netns));
        let mut connections: Vec<Connection> = self.connections.values().map(|(c, _)| c.clone()).collect();
        connections
            .sort_unstable_by_key(|c| (c.protocol, c.remote.ip(), c.remote.port(), c.local.port(), c.netns));
        HostState { processes, listeners, connections }
    }
}

impl StoredState for Loaded {
    fn process(&mut self, k: ProcessKey) -> Result<Option<(Process, i64)>> {
        Ok(self.processes.get(&k).cloned())
    }
    fn listener(&mut self, k: ListenerKey) -> Result<Option<(Listener, i64)>> {
        Ok(self.listeners.get(&k).cloned())
    }
    fn connection(&mut self, k: ConnectionKey) -> Result<Option<(Connection, i64)>> {
        Ok(self.connections.get(&k).cloned())
    }
}

/// One write of a plan, executed in order.
#[derive(Debug)]
pub enum Write<'a> {
    /// Stores a process, replacing the row of its pid. Its `cpu_high_since` is kept from the row
    /// of the same process while it stays above the high-CPU threshold, set when it crosses it,
    /// cleared when it falls below; `judged_through`: `None` keeps the same process's (else 0).
    PutProcess {
        process: &'a Process,
        judged_through: Option<i64>,
    },
    DeleteProcess(ProcessKey),
    /// A hash that came after its exec, put into the exec's history row.
    ExecHash {
        key: ProcessKey,
        sha256: &'a str,
    },
    /// A program started, as history (without the process when the agent could not read it).
    Exec {
        key: ProcessKey,
        process: Option<&'a Process>,
        at: OffsetDateTime,
    },
    /// A process ended, as history (with the process as it was stored, if it was).
    Exit {
        key: ProcessKey,
        process: Option<Box<Process>>,
        at: OffsetDateTime,
    },
    /// Stores a listener, replacing any of the same key.
    PutListener {
        listener: &'a Listener,
        judged_through: i64,
    },
    DeleteListener(ListenerKey),
    /// Stores a connection, replacing any of the same key.
    PutConnection {
        connection: &'a Connection,
        judged_through: i64,
    },
    DeleteConnection(ConnectionKey),
    SocketEvent {
        opened: bool,
        socket: SocketRow<'a>,
        at: OffsetDateTime,
    },
}

/// The columns of a socket's history row.
#[derive(Debug)]
pub struct SocketRow<'a> {
    pub socket: &'static str,
    pub protocol: Protocol,
    pub local: SocketAddr,
    pub remote: Option<SocketAddr>,
    pub direction: Option<Direction>,
    pub pid: Option<u32>,
    pub process: Option<Cow<'a, str>>,
    pub exe: Option<Cow<'a, str>>,
    pub netns: Option<u64>,
}

impl<'a> SocketRow<'a> {
    fn of_listener(l: &'a Listener) -> Self {
        SocketRow {
            socket: "listener",
            protocol: l.protocol,
            local: SocketAddr::new(l.address, l.port),
            remote: None,
            direction: None,
            pid: l.pid,
            process: l.process.as_deref().map(Cow::Borrowed),
            exe: l.exe.as_deref().map(Cow::Borrowed),
            netns: l.netns,
        }
    }

    fn of_connection(c: &'a Connection) -> Self {
        SocketRow {
            socket: "connection",
            protocol: c.protocol,
            local: c.local,
            remote: Some(c.remote),
            direction: Some(c.direction),
            pid: c.pid,
            process: c.process.as_deref().map(Cow::Borrowed),
            exe: c.exe.as_deref().map(Cow::Borrowed),
            netns: c.netns,
        }
    }

    /// The same row owning what it names, for an item that is gone.
    fn owned(self) -> SocketRow<'static> {
        SocketRow {
            process: self.process.map(|s| Cow::Owned(s.into_owned())),
            exe: self.exe.map(|s| Cow::Owned(s.into_owned())),
            ..self
        }
    }
}

/// What turns `old` into `new`: a delta whose removals are dated `now`.
pub fn replacement(old: &HostState, new: &HostState, now: OffsetDateTime) -> StateDelta {
    StateDelta {
        processes: diff(&old.processes, &new.processes, Process::key, now),
        listeners: diff(&old.listeners, &new.listeners, Listener::key, now),
        connections: diff(&old.connections, &new.connections, Connection::key, now),
        unread_execs: Vec::new(),
        passed_execs: Vec::new(),
        files: Vec::new(),
    }
}

/// What turns `old` into `new`, items matched by `key`; removals dated `now`.
fn diff<T: Clone + PartialEq, K: Copy + Eq + std::hash::Hash>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> K,
    now: OffsetDateTime,
) -> ChangeSet<T, K> {
    let before: HashMap<K, &T> = old.iter().map(|x| (key(x), x)).collect();
    let after: HashMap<K, &T> = new.iter().map(|x| (key(x), x)).collect();
    let mut c = ChangeSet::default();
    for x in new {
        match before.get(&key(x)) {
            None => c.added.push(x.clone()),
            Some(o) if *o != x => c.updated.push(x.clone()),
            Some(_) => {}
        }
    }
    for x in old {
        if !after.contains_key(&key(x)) {
            c.removed.push((key(x), now));
        }
    }
    c
}

/// The stored state as the writes planned so far leave it.
struct Overlay<'s> {
    stored: &'s mut dyn StoredState,
    processes: HashMap<ProcessKey, Option<(Process, i64)>>,
    listeners: HashMap<ListenerKey, Option<(Listener, i64)>>,
    connections: HashMap<ConnectionKey, Option<(Connection, i64)>>,
}

impl Overlay<'_> {
    fn process(&mut self, k: ProcessKey) -> Result<Option<(Process, i64)>> {
        match self.processes.get(&k) {
            Some(p) => Ok(p.clone()),
            None => self.stored.process(k),
        }
    }
    fn listener(&mut self, k: ListenerKey) -> Result<Option<(Listener, i64)>> {
        match self.listeners.get(&k) {
            Some(l) => Ok(l.clone()),
            None => self.stored.listener(k),
        }
    }
    fn connection(&mut self, k: ConnectionKey) -> Result<Option<(Connection, i64)>> {
        match self.connections.get(&k) {
            Some(c) => Ok(c.clone()),
            None => self.stored.connection(k),
        }
    }
}

/// Plans a delta: added, then updated, then removed, with history unless `history` is false (a
/// host's first state, whose processes did not start just now). Returns the writes and every
/// start written to the history (an exec, a socket opened), each marked with its end if the same
/// delta removed it: exactly the history's starts, so each is judged once. Items started by an
/// earlier report that this one ends although they were gone when that report was judged (see
/// [`Judging`]) come back too, as not new: their findings are transient. File changes are the
/// store's to record, beside.
pub fn plan<'a>(
    stored: &mut dyn StoredState,
    d: &'a StateDelta,
    now: OffsetDateTime,
    history: bool,
    judging: Judging,
) -> Result<(Vec<Write<'a>>, Recorded)> {
    let mut state =
        Overlay { stored, processes: HashMap::new(), listeners: HashMap::new(), connections: HashMap::new() };
    let mut w = Vec::new();
    let through = judging.through();
    let mut started = Vec::new();
    let mut start =
        |item: Item, at: OffsetDateTime| started.push(Started { item, at: Some(at), ended: None, new: true });
    for p in &d.processes.added {
        w.push(Write::PutProcess { process: p, judged_through: Some(through) });
        state.processes.insert(p.key(), Some((p.clone(), through)));
        if history {
            w.push(exec(p.key(), Some(p), p.start_time));
            start(Item::Process(Box::new(p.clone())), p.start_time);
        }
    }
    let ends: HashMap<ProcessKey, OffsetDateTime> = d.processes.removed.iter().copied().collect();
    for p in &d.processes.updated {
        let before = state.process(p.key())?;
        // The same process running another program: an exec without a new pid.
        let execed = before.as_ref().is_none_or(|(b, _)| b.exe != p.exe || b.cmdline != p.cmdline);
        let judged = if execed { through } else { before.as_ref().map_or(0, |(_, j)| *j) };
        w.push(Write::PutProcess { process: p, judged_through: execed.then_some(through) });
        state.processes.insert(p.key(), Some((p.clone(), judged)));
        // A hash the agent had not yet when it reported the exec (its hashing budget spent, a
        // file being written) goes into the exec's history too, so that the history is found by
        // it (`history processes --sha256`).
        if history
            && !execed
            && let (Some(sha), Some((b, _))) = (&p.sha256, &before)
            && b.sha256.is_none()
        {
            w.push(Write::ExecHash { key: p.key(), sha256: sha });
        }
        if history && execed {
            // No exec time on the wire for an update: when it arrived, or before the process's
            // end if the same delta ends it (a program that ran and ended between two reports).
            let at = ends.get(&p.key()).map_or(now, |end| now.min(*end));
            w.push(exec(p.key(), Some(p), at));
            start(Item::Process(Box::new(p.clone())), at);
        }
    }
    if history {
        for &(pid, at) in &d.unread_execs {
            w.push(exec(ProcessKey { pid, start_time: at }, None, at));
        }
    }
    let mut vanished = Vec::new();
    for (k, at) in &d.processes.removed {
        let gone = state.process(*k)?;
        state.processes.insert(*k, None);
        w.push(Write::DeleteProcess(*k));
        if history {
            w.push(Write::Exit {
                key: *k,
                process: gone.as_ref().map(|(p, _)| Box::new(p.clone())),
                at: *at,
            });
        }
        if let Some((p, judged)) = gone
            && judging.late(judged)
        {
            let start_time = p.start_time;
            vanished.push(Started {
                item: Item::Process(Box::new(p)),
                at: Some(start_time),
                ended: Some(*at),
                new: false,
            });
        }
    }
    // No opening time on the wire for a socket: when the report arrived, or before its close if
    // the same delta closes it (one that opened and closed between two reports).
    let listener_ends: HashMap<ListenerKey, OffsetDateTime> = d.listeners.removed.iter().copied().collect();
    let connection_ends: HashMap<ConnectionKey, OffsetDateTime> =
        d.connections.removed.iter().copied().collect();
    for l in d.listeners.added.iter().chain(&d.listeners.updated) {
        let prior = state.listener(l.key())?.map(|(_, judged)| judged);
        let judged = prior.unwrap_or(through);
        w.push(Write::PutListener { listener: l, judged_through: judged });
        state.listeners.insert(l.key(), Some((l.clone(), judged)));
        if history && prior.is_none() {
            let at = listener_ends.get(&l.key()).map_or(now, |end| now.min(*end));
            w.push(Write::SocketEvent { opened: true, socket: SocketRow::of_listener(l), at });
            start(Item::Listener(l.clone()), at);
        }
    }
    for (k, at) in &d.listeners.removed {
        let gone = state.listener(*k)?;
        state.listeners.insert(*k, None);
        w.push(Write::DeleteListener(*k));
        if let Some((l, judged)) = gone {
            if history {
                let socket = SocketRow::of_listener(&l).owned();
                w.push(Write::SocketEvent { opened: false, socket, at: *at });
            }
            if judging.late(judged) {
                vanished.push(Started { item: Item::Listener(l), at: None, ended: Some(*at), new: false });
            }
        }
    }
    for c in d.connections.added.iter().chain(&d.connections.updated) {
        let prior = state.connection(c.key())?.map(|(_, judged)| judged);
        let judged = prior.unwrap_or(through);
        w.push(Write::PutConnection { connection: c, judged_through: judged });
        state.connections.insert(c.key(), Some((c.clone(), judged)));
        if history && prior.is_none() {
            let at = connection_ends.get(&c.key()).map_or(now, |end| now.min(*end));
            w.push(Write::SocketEvent { opened: true, socket: SocketRow::of_connection(c), at });
            start(Item::Connection(c.clone()), at);
        }
    }
    for (k, at) in &d.connections.removed {
        let gone = state.connection(*k)?;
        state.connections.insert(*k, None);
        w.push(Write::DeleteConnection(*k));
        if let Some((c, judged)) = gone {
            if history {
                let socket = SocketRow::of_connection(&c).owned();
                w.push(Write::SocketEvent { opened: false, socket, at: *at });
            }
            if judging.late(judged) {
                vanished.push(Started { item: Item::Connection(c), at: None, ended: Some(*at), new: false });
            }
        }
    }
    // What the same delta removed was gone before the collector could see it alive.
    let ended: HashMap<ItemKey, OffsetDateTime> = d
        .processes
        .removed
        .iter()
        .map(|(k, at)| (ItemKey::Process(*k), *at))
        .chain(d.listeners.removed.iter().map(|(k, at)| (ItemKey::Listener(*k), *at)))
        .chain(d.connections.removed.iter().map(|(k, at)| (ItemKey::Connection(*k), *at)))
        .collect();
    if !ended.is_empty() {
        for s in &mut started {
            s.ended = ended.get(&ItemKey::of(&s.item)).copied();
        }
    }
    // Those this very report started are judged as gone already, once.
    let here: HashSet<ItemKey> = started.iter().map(|s| ItemKey::of(&s.item)).collect();
    started.extend(vanished.into_iter().filter(|v| !here.contains(&ItemKey::of(&v.item))));
    // Programs left by a later exec: in the history, and judged as gone; never state (the
    // process's record is its last program).
    if history {
        for x in &d.passed_execs {
            w.push(exec(x.process.key(), Some(&x.process), x.at));
            started.push(Started {
                item: Item::Process(Box::new(x.process.clone())),
                at: Some(x.at),
                ended: Some(x.until),
                new: true,
            });
        }
    }
    Ok((w, Recorded { started, sessions_alternate: None }))
}

fn exec(key: ProcessKey, p: Option<&Process>, at: OffsetDateTime) -> Write<'_> {
    Write::Exec { key, process: p, at }
}

/// The key of an item of any kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ItemKey {
    Process(ProcessKey),
    Listener(ListenerKey),
    Connection(ConnectionKey),
}

impl ItemKey {
    fn of(item: &Item) -> ItemKey {
        match item {
            Item::Process(p) => ItemKey::Process(p.key()),
            Item::Listener(l) => ItemKey::Listener(l.key()),
            Item::Connection(c) => ItemKey::Connection(c.key()),
        }
    }
}
