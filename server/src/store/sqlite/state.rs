//! The current-state tables (processes, listeners, connections) and their history
//! (process_events, socket_events): loading, replacing from a snapshot, applying a delta.
//!
//! Invariant: every change to a state table writes its history row in the same transaction, so
//! the history is exactly the sequence of states the collector held.

use std::collections::HashMap;
use std::net::SocketAddr;

use hostwatch_proto::v1::{Direction, Protocol};
use rusqlite::{OptionalExtension, Row, Transaction, params};
use time::OffsetDateTime;

use super::{json, parse_enum, parse_ts, to_json, ts};
use crate::model::{
    ChangeSet, Connection, ConnectionKey, HostState, Item, Listener, ListenerKey, PeerItems, Process,
    ProcessKey, Recorded, Started, StateDelta, peer_key,
};
use crate::store::{Result, StoreError};

/// A host's whole state, processes by pid, listeners by protocol, port and address, connections
/// by protocol, remote and local port (addresses in their numeric order).
///
/// The engine reads it after every report that changes the host (the collector's largest cost
/// per report, issue 16): the sockets are sorted here rather than by SQLite (a sorter per query),
/// text is parsed where SQLite holds it rather than copied first, and a host's processes share
/// the parse of an ancestry they have in common.
pub(super) fn load(tx: &Transaction<'_>, host_id: i64) -> Result<HostState> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {PROCESS_COLUMNS} FROM processes WHERE host_id = ?1 ORDER BY pid"
    ))?;
    let mut rows = stmt.query([host_id])?;
    let mut processes = Vec::new();
    let mut ancestries = Ancestries::default();
    while let Some(r) = rows.next()? {
        processes.push(process_from_row_with(r, &mut ancestries)?);
    }
    let mut stmt =
        tx.prepare_cached(&format!("SELECT {LISTENER_COLUMNS} FROM listeners WHERE host_id = ?1"))?;
    let mut rows = stmt.query([host_id])?;
    let mut listeners = Vec::new();
    while let Some(r) = rows.next()? {
        listeners.push(listener_from_row(r)?);
    }
    listeners.sort_unstable_by_key(|l| (l.protocol, l.port, l.address));
    let mut stmt =
        tx.prepare_cached(&format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE host_id = ?1"))?;
    let mut rows = stmt.query([host_id])?;
    let mut connections = Vec::new();
    while let Some(r) = rows.next()? {
        connections.push(connection_from_row(r)?);
    }
    connections.sort_unstable_by_key(|c| (c.protocol, c.remote.ip(), c.remote.port(), c.local.port()));
    Ok(HostState { processes, listeners, connections })
}

/// A listener's columns, for [`listener_from_row`].
pub(super) const LISTENER_COLUMNS: &str = "protocol, address, port, pid, process, exe, uid, netns";

pub(super) fn listener_from_row(r: &Row<'_>) -> Result<Listener> {
    Ok(Listener {
        protocol: parse_enum::<Protocol>(text(r, 0)?)?,
        address: ip(r, 1)?,
        port: r.get(2)?,
        pid: r.get(3)?,
        process: r.get(4)?,
        exe: r.get(5)?,
        uid: r.get(6)?,
        netns: r.get(7)?,
    })
}

/// A connection's columns, for [`connection_from_row`].
pub(super) const CONNECTION_COLUMNS: &str = "protocol, local_address, local_port, remote_address, remote_port, direction, pid, process, exe, uid, netns";

pub(super) fn connection_from_row(r: &Row<'_>) -> Result<Connection> {
    Ok(Connection {
        protocol: parse_enum::<Protocol>(text(r, 0)?)?,
        local: SocketAddr::new(ip(r, 1)?, r.get(2)?),
        remote: SocketAddr::new(ip(r, 3)?, r.get(4)?),
        direction: parse_enum::<Direction>(text(r, 5)?)?,
        pid: r.get(6)?,
        process: r.get(7)?,
        exe: r.get(8)?,
        uid: r.get(9)?,
        netns: r.get(10)?,
    })
}

pub(super) fn ip(r: &Row<'_>, i: usize) -> Result<std::net::IpAddr> {
    let a = text(r, i)?;
    a.parse().map_err(|_| StoreError::Corrupt(format!("address {a:?}")))
}

/// A TEXT column read where SQLite holds it, for what is parsed rather than kept.
fn text<'r>(r: &'r Row<'_>, i: usize) -> Result<&'r str> {
    r.get_ref(i)?.as_str().map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

/// Nullable [`text`].
fn opt_text<'r>(r: &'r Row<'_>, i: usize) -> Result<Option<&'r str>> {
    r.get_ref(i)?.as_str_or_null().map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

/// The ancestries parsed so far in one load: a host's processes mostly share a few (everything
/// a service manager started has the same), and a clone is cheaper than a parse.
#[derive(Default)]
struct Ancestries(HashMap<String, Vec<hostwatch_proto::v1::Ancestor>>);

impl Ancestries {
    fn get(&mut self, column: Option<&str>) -> Result<Vec<hostwatch_proto::v1::Ancestor>> {
        let Some(s) = column else { return Ok(Vec::new()) };
        if let Some(a) = self.0.get(s) {
            return Ok(a.clone());
        }
        let a: Vec<hostwatch_proto::v1::Ancestor> = json(s, "ancestry")?;
        self.0.insert(s.to_owned(), a.clone());
        Ok(a)
    }
}

/// Replaces the stored state with `new`, writing history for every difference. `history: false`
/// for a host's first state, whose processes did not start just now.
pub(super) fn replace(
    tx: &Transaction<'_>,
    host_id: i64,
    new: &HostState,
    now: OffsetDateTime,
    history: bool,
    judging: Judging,
) -> Result<Recorded> {
    let old = load(tx, host_id)?;
    let delta = StateDelta {
        processes: diff(&old.processes, &new.processes, Process::key, now),
        listeners: diff(&old.listeners, &new.listeners, Listener::key, now),
        connections: diff(&old.connections, &new.connections, Connection::key, now),
        unread_execs: Vec::new(),
        passed_execs: Vec::new(),
        files: Vec::new(),
    };
    apply(tx, host_id, &delta, now, history, judging)
}

/// Where the report being applied stands in its agent's sequence: its own number, and the last
/// number the agent had written when it sent it (its number plus its backlog). Every item a report
/// starts is stored with `through`; a later report of the same session numbered up to that ends
/// an item that was gone before the collector judged it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Judging {
    pub seq: u64,
    pub through: u64,
}

impl Judging {
    fn through(self) -> i64 {
        i64::try_from(self.through).unwrap_or(i64::MAX)
    }

    /// Whether an item judged with `through` (0: before any of this session) ends in this report
    /// as one that was already gone when it was judged.
    fn late(self, through: i64) -> bool {
        through > 0 && i64::try_from(self.seq).unwrap_or(i64::MAX) <= through
    }
}

/// A new session numbers its reports from 1 again: what the old one's numbers said of each item
/// means nothing to it.
pub(super) fn new_session(tx: &Transaction<'_>, host_id: i64) -> Result<()> {
    for table in ["processes", "listeners", "connections"] {
        tx.prepare_cached(&format!("UPDATE {table} SET judged_through = 0 WHERE host_id = ?1"))?
            .execute([host_id])?;
    }
    Ok(())
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

/// Applies a delta: added, then updated, then removed, with history unless `history` is false.
/// Returns every start it wrote to the history (an exec, a socket opened), each marked with its
/// end if the same delta removed it: exactly the history's starts, so each is judged once. Items
/// started by an earlier report that this one ends although they were gone when that report was
/// judged (see [`Judging`]) come back too, as not new: their findings are transient.
pub(super) fn apply(
    tx: &Transaction<'_>,
    host_id: i64,
    d: &StateDelta,
    now: OffsetDateTime,
    history: bool,
    judging: Judging,
) -> Result<Recorded> {
    // File changes are news even in a host's first report: they happened on the host.
    super::files::record(tx, host_id, &d.files)?;
    let through = judging.through();
    let mut started = Vec::new();
    let mut start =
        |item: Item, at: OffsetDateTime| started.push(Started { item, at: Some(at), ended: None, new: true });
    for p in &d.processes.added {
        put_process(tx, host_id, p, Some(through))?;
        if history {
            process_event(tx, host_id, "exec", p.key(), Some(p), p.start_time)?;
            start(Item::Process(Box::new(p.clone())), p.start_time);
        }
    }
    let ends: HashMap<ProcessKey, OffsetDateTime> = d.processes.removed.iter().copied().collect();
    for p in &d.processes.updated {
        let before = get_process(tx, host_id, p.key())?;
        // The same process running another program: an exec without a new pid.
        let execed = before.as_ref().is_none_or(|b| b.exe != p.exe || b.cmdline != p.cmdline);
        put_process(tx, host_id, p, execed.then_some(through))?;
        // A hash the agent had not yet when it reported the exec (its hashing budget spent, a
        // file being written) goes into the exec's history too, so that the history is found by
        // it (`history processes --sha256`).
        if history
            && !execed
            && let (Some(sha), Some(b)) = (&p.sha256, &before)
            && b.sha256.is_none()
        {
            tx.prepare_cached(
                "UPDATE process_events SET sha256 = ?1 WHERE host_id = ?2 AND at >= ?3 AND pid = ?4 \
                 AND start_time = ?3 AND kind = 'exec' AND sha256 IS NULL",
            )?
            .execute(params![sha, host_id, ts(p.start_time), p.pid])?;
        }
        if history && execed {
            // No exec time on the wire for an update: when it arrived, or before the process's
            // end if the same delta ends it (a program that ran and ended between two reports).
            let at = ends.get(&p.key()).map_or(now, |end| now.min(*end));
            process_event(tx, host_id, "exec", p.key(), Some(p), at)?;
            start(Item::Process(Box::new(p.clone())), at);
        }
    }
    if history {
        for &(pid, at) in &d.unread_execs {
            process_event(tx, host_id, "exec", ProcessKey { pid, start_time: at }, None, at)?;
        }
    }
    let mut vanished = Vec::new();
    for (k, at) in &d.processes.removed {
        let gone = get_process(tx, host_id, *k)?;
        let judged: Option<i64> = tx
            .prepare_cached(
                "SELECT judged_through FROM processes WHERE host_id = ?1 AND pid = ?2 AND start_time = ?3",
            )?
            .query_row(params![host_id, k.pid, ts(k.start_time)], |r| r.get(0))
            .optional()?;
        if let Some(p) = &gone
            && judged.is_some_and(|j| judging.late(j))
        {
            vanished.push(Started {
                item: Item::Process(Box::new(p.clone())),
                at: Some(p.start_time),
                ended: Some(*at),
                new: false,
            });
        }
        tx.execute(
            "DELETE FROM processes WHERE host_id = ?1 AND pid = ?2 AND start_time = ?3",
            params![host_id, k.pid, ts(k.start_time)],
        )?;
        if history {
            process_event(tx, host_id, "exit", *k, gone.as_ref(), *at)?;
        }
    }
    // No opening time on the wire for a socket: when the report arrived, or before its close if
    // the same delta closes it (one that opened and closed between two reports).
    let listener_ends: HashMap<ListenerKey, OffsetDateTime> = d.listeners.removed.iter().copied().collect();
    let connection_ends: HashMap<ConnectionKey, OffsetDateTime> =
        d.connections.removed.iter().copied().collect();
    for l in d.listeners.added.iter().chain(&d.listeners.updated) {
        let prior = get_listener(tx, host_id, l.key())?.map(|(_, judged)| judged);
        delete_listener(tx, host_id, l.key())?;
        put_listener(tx, host_id, l, prior.unwrap_or(through))?;
        if history && prior.is_none() {
            let at = listener_ends.get(&l.key()).map_or(now, |end| now.min(*end));
            socket_event(tx, host_id, "open", &SocketRow::of_listener(l), at)?;
            start(Item::Listener(l.clone()), at);
        }
    }
    for (k, at) in &d.listeners.removed {
        let gone = get_listener(tx, host_id, *k)?;
        delete_listener(tx, host_id, *k)?;
        if let Some((l, judged)) = gone {
            if history {
                socket_event(tx, host_id, "close", &SocketRow::of_listener(&l), *at)?;
            }
            if judging.late(judged) {
                vanished.push(Started { item: Item::Listener(l), at: None, ended: Some(*at), new: false });
            }
        }
    }
    for c in d.connections.added.iter().chain(&d.connections.updated) {
        let prior = get_connection(tx, host_id, c.key())?.map(|(_, judged)| judged);
        delete_connection(tx, host_id, c.key())?;
        put_connection(tx, host_id, c, prior.unwrap_or(through))?;
        if history && prior.is_none() {
            let at = connection_ends.get(&c.key()).map_or(now, |end| now.min(*end));
            socket_event(tx, host_id, "open", &SocketRow::of_connection(c), at)?;
            start(Item::Connection(c.clone()), at);
        }
    }
    for (k, at) in &d.connections.removed {
        let gone = get_connection(tx, host_id, *k)?;
        delete_connection(tx, host_id, *k)?;
        if let Some((c, judged)) = gone {
            if history {
                socket_event(tx, host_id, "close", &SocketRow::of_connection(&c), *at)?;
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
    let here: std::collections::HashSet<ItemKey> = started.iter().map(|s| ItemKey::of(&s.item)).collect();
    started.extend(vanished.into_iter().filter(|v| !here.contains(&ItemKey::of(&v.item))));
    // Programs left by a later exec: in the history, and judged as gone; never state (the
    // process's record is its last program).
    if history {
        for x in &d.passed_execs {
            process_event(tx, host_id, "exec", x.process.key(), Some(&x.process), x.at)?;
            started.push(Started {
                item: Item::Process(Box::new(x.process.clone())),
                at: Some(x.at),
                ended: Some(x.until),
                new: true,
            });
        }
    }
    Ok(Recorded { started, sessions_alternate: None })
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

/// Stores a process; `cpu_high_since` is kept from the row it replaces while the process stays
/// above the high-CPU threshold, set to now when it crosses it, cleared when it falls below.
/// `judged_through`: set for a process that starts (see [`Judging`]); `None` keeps the stored one.
fn put_process(tx: &Transaction<'_>, host_id: i64, p: &Process, judged_through: Option<i64>) -> Result<()> {
    let hot = p.cpu_percent.is_some_and(|c| c >= crate::model::HIGH_CPU_PERCENT);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO processes (host_id, pid, ppid, name, exe, exe_deleted, cmdline, uid, user, start_time, \
         sha256, exe_memfd, exe_writable_dir, cgroup, container_id, unit, cpu_percent, rss_bytes, exe_replaced, \
         stdio_socket, cpu_high_since, judged_through, exe_replacement, login_uid, session_id, ancestry, login_user) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
         CASE WHEN ?21 THEN COALESCE((SELECT cpu_high_since FROM processes \
           WHERE host_id = ?1 AND pid = ?2 AND start_time = ?10), ?22) END, \
         COALESCE(?23, (SELECT judged_through FROM processes WHERE host_id = ?1 AND pid = ?2 AND start_time = ?10), 0), \
         ?24, ?25, ?26, ?27, ?28)",
    )?
    .execute(params![
        host_id,
        p.pid,
        p.ppid,
        p.name,
        p.exe,
        p.exe_deleted,
        to_json(&p.cmdline),
        p.uid,
        p.user,
        ts(p.start_time),
        p.sha256,
        p.exe_memfd,
        p.exe_writable_dir,
        p.cgroup,
        p.container_id,
        p.unit,
        p.cpu_percent.map(f64::from),
        p.rss_bytes,
        p.exe_replaced,
        p.stdio_socket,
        hot,
        ts(OffsetDateTime::now_utc()),
        judged_through,
        p.exe_replacement.as_ref().map(to_json),
        p.login_uid,
        p.session_id,
        ancestry_json(&p.ancestry),
        p.login_user,
    ])?;
    Ok(())
}

/// The ancestry column: NULL where the agent recorded no ancestors.
fn ancestry_json(ancestry: &[hostwatch_proto::v1::Ancestor]) -> Option<String> {
    (!ancestry.is_empty()).then(|| to_json(&ancestry))
}

fn get_process(tx: &Transaction<'_>, host_id: i64, k: ProcessKey) -> Result<Option<Process>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {PROCESS_COLUMNS} FROM processes WHERE host_id = ?1 AND pid = ?2 AND start_time = ?3"
    ))?;
    let mut rows = stmt.query(params![host_id, k.pid, ts(k.start_time)])?;
    rows.next()?.map(process_from_row).transpose()
}

pub(super) const PROCESS_COLUMNS: &str = "pid, ppid, name, exe, exe_deleted, cmdline, uid, user, start_time, sha256, exe_memfd, \
     exe_writable_dir, cgroup, container_id, unit, cpu_percent, rss_bytes, exe_replaced, stdio_socket, cpu_high_since, exe_replacement, login_uid, session_id, ancestry, login_user";

pub(super) fn process_from_row(r: &Row<'_>) -> Result<Process> {
    process_from_row_with(r, &mut Ancestries::default())
}

fn process_from_row_with(r: &Row<'_>, ancestries: &mut Ancestries) -> Result<Process> {
    Ok(Process {
        pid: r.get(0)?,
        ppid: r.get(1)?,
        name: r.get(2)?,
        exe: r.get(3)?,
        exe_deleted: r.get(4)?,
        cmdline: json(text(r, 5)?, "cmdline")?,
        uid: r.get(6)?,
        user: r.get(7)?,
        start_time: parse_ts(text(r, 8)?)?,
        sha256: r.get(9)?,
        exe_memfd: r.get(10)?,
        exe_writable_dir: r.get(11)?,
        cgroup: r.get(12)?,
        container_id: r.get(13)?,
        unit: r.get(14)?,
        cpu_percent: r.get::<_, Option<f64>>(15)?.map(|c| c as f32),
        rss_bytes: r.get(16)?,
        exe_replaced: r.get(17)?,
        stdio_socket: r.get(18)?,
        cpu_high_since: opt_text(r, 19)?.map(parse_ts).transpose()?,
        exe_replacement: opt_text(r, 20)?.map(|s| json(s, "exe_replacement")).transpose()?,
        login_uid: r.get(21)?,
        login_user: r.get(24)?,
        session_id: r.get(22)?,
        ancestry: ancestries.get(opt_text(r, 23)?)?,
    })
}

fn put_listener(tx: &Transaction<'_>, host_id: i64, l: &Listener, judged_through: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO listeners (host_id, protocol, address, port, pid, process, exe, uid, netns, judged_through) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        host_id,
        l.protocol.as_str(),
        l.address.to_string(),
        l.port,
        l.pid,
        l.process,
        l.exe,
        l.uid,
        l.netns,
        judged_through
    ])?;
    Ok(())
}

/// A listener and its `judged_through`.
fn get_listener(tx: &Transaction<'_>, host_id: i64, k: ListenerKey) -> Result<Option<(Listener, i64)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT pid, process, exe, uid, judged_through FROM listeners \
         WHERE host_id = ?1 AND protocol = ?2 AND address = ?3 AND port = ?4 AND netns IS ?5 LIMIT 1",
    )?;
    let mut rows =
        stmt.query(params![host_id, k.protocol.as_str(), k.address.to_string(), k.port, k.netns])?;
    match rows.next()? {
        None => Ok(None),
        Some(r) => Ok(Some((
            Listener {
                protocol: k.protocol,
                address: k.address,
                port: k.port,
                pid: r.get(0)?,
                process: r.get(1)?,
                exe: r.get(2)?,
                uid: r.get(3)?,
                netns: k.netns,
            },
            r.get(4)?,
        ))),
    }
}

fn delete_listener(tx: &Transaction<'_>, host_id: i64, k: ListenerKey) -> Result<()> {
    tx
        .prepare_cached(
            "DELETE FROM listeners WHERE host_id = ?1 AND protocol = ?2 AND address = ?3 AND port = ?4 AND netns IS ?5",
        )?
        .execute(params![host_id, k.protocol.as_str(), k.address.to_string(), k.port, k.netns])?;
    Ok(())
}

fn put_connection(tx: &Transaction<'_>, host_id: i64, c: &Connection, judged_through: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO connections (host_id, protocol, local_address, local_port, remote_address, remote_port, \
         direction, pid, process, exe, uid, netns, judged_through, remote_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        host_id,
        c.protocol.as_str(),
        c.local.ip().to_string(),
        c.local.port(),
        c.remote.ip().to_string(),
        c.remote.port(),
        c.direction.as_str(),
        c.pid,
        c.process,
        c.exe,
        c.uid,
        c.netns,
        judged_through,
        super::addresses::ip_key(c.remote.ip()).as_slice()
    ])?;
    Ok(())
}

/// A connection and its `judged_through`.
fn get_connection(tx: &Transaction<'_>, host_id: i64, k: ConnectionKey) -> Result<Option<(Connection, i64)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT direction, pid, process, exe, uid, judged_through FROM connections WHERE host_id = ?1 AND protocol = ?2 \
         AND local_address = ?3 AND local_port = ?4 AND remote_address = ?5 AND remote_port = ?6 AND netns IS ?7 LIMIT 1",
    )?;
    let mut rows = stmt.query(params![
        host_id,
        k.protocol.as_str(),
        k.local.ip().to_string(),
        k.local.port(),
        k.remote.ip().to_string(),
        k.remote.port(),
        k.netns
    ])?;
    match rows.next()? {
        None => Ok(None),
        Some(r) => Ok(Some((
            Connection {
                protocol: k.protocol,
                local: k.local,
                remote: k.remote,
                direction: parse_enum::<Direction>(&r.get::<_, String>(0)?)?,
                pid: r.get(1)?,
                process: r.get(2)?,
                exe: r.get(3)?,
                uid: r.get(4)?,
                netns: k.netns,
            },
            r.get(5)?,
        ))),
    }
}

fn delete_connection(tx: &Transaction<'_>, host_id: i64, k: ConnectionKey) -> Result<()> {
    tx
        .prepare_cached(
            "DELETE FROM connections WHERE host_id = ?1 AND protocol = ?2 AND local_address = ?3 AND local_port = ?4 \
             AND remote_address = ?5 AND remote_port = ?6 AND netns IS ?7",
        )?
        .execute(params![
            host_id,
            k.protocol.as_str(),
            k.local.ip().to_string(),
            k.local.port(),
            k.remote.ip().to_string(),
            k.remote.port(),
            k.netns
        ])?;
    Ok(())
}

fn process_event(
    tx: &Transaction<'_>,
    host_id: i64,
    kind: &str,
    key: ProcessKey,
    p: Option<&Process>,
    at: OffsetDateTime,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO process_events (host_id, at, kind, pid, ppid, name, exe, cmdline, user, uid, start_time, sha256, \
         login_uid, session_id, ancestry) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        host_id,
        ts(at),
        kind,
        key.pid,
        p.map(|p| p.ppid),
        p.map(|p| &p.name),
        p.and_then(|p| p.exe.as_ref()),
        p.map(|p| to_json(&p.cmdline)),
        p.and_then(|p| p.user.as_ref()),
        p.map(|p| p.uid),
        ts(key.start_time),
        p.and_then(|p| p.sha256.as_ref()),
        p.and_then(|p| p.login_uid),
        p.and_then(|p| p.session_id),
        p.and_then(|p| ancestry_json(&p.ancestry)),
    ])?;
    Ok(())
}

/// The columns of a socket event.
struct SocketRow<'a> {
    socket: &'static str,
    protocol: Protocol,
    local: SocketAddr,
    remote: Option<SocketAddr>,
    direction: Option<Direction>,
    pid: Option<u32>,
    process: Option<&'a String>,
    exe: Option<&'a String>,
    netns: Option<u64>,
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
            process: l.process.as_ref(),
            exe: l.exe.as_ref(),
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
            process: c.process.as_ref(),
            exe: c.exe.as_ref(),
            netns: c.netns,
        }
    }
}

fn socket_event(
    tx: &Transaction<'_>,
    host_id: i64,
    kind: &str,
    s: &SocketRow<'_>,
    at: OffsetDateTime,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO socket_events (host_id, at, kind, socket, protocol, local_address, local_port, remote_address, \
         remote_port, direction, pid, process, exe, netns, remote_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        host_id,
        ts(at),
        kind,
        s.socket,
        s.protocol.as_str(),
        s.local.ip().to_string(),
        s.local.port(),
        s.remote.map(|r| r.ip().to_string()),
        s.remote.map(|r| r.port()),
        s.direction.map(Direction::as_str),
        s.pid,
        s.process,
        s.exe,
        s.netns,
        s.remote.map(|r| super::addresses::ip_key(r.ip()).to_vec())
    ])?;
    Ok(())
}

/// How many hosts of `workload` (not retired) have each item.
/// Every non-retired host of `workload` with its peer items, as stored.
pub(super) fn peer_items(tx: &Transaction<'_>, workload: &str) -> Result<HashMap<i64, PeerItems>> {
    let mut hosts: HashMap<i64, PeerItems> = HashMap::new();
    let mut stmt = tx.prepare_cached("SELECT id FROM hosts WHERE workload = ?1 AND retired_at IS NULL")?;
    for id in stmt.query_map([workload], |r| r.get::<_, i64>(0))? {
        hosts.insert(id?, PeerItems::default());
    }
    let mut stmt = tx.prepare_cached(
        "SELECT DISTINCT p.host_id, COALESCE(p.exe, p.name) FROM processes p JOIN hosts h ON h.id = p.host_id \
         WHERE h.workload = ?1 AND h.retired_at IS NULL",
    )?;
    for row in stmt.query_map([workload], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
        let (id, subject) = row?;
        hosts.entry(id).or_default().processes.insert(subject);
    }
    let mut stmt = tx.prepare_cached(
        "SELECT DISTINCT l.host_id, l.protocol, l.port FROM listeners l JOIN hosts h ON h.id = l.host_id \
         WHERE h.workload = ?1 AND h.retired_at IS NULL",
    )?;
    for row in stmt
        .query_map([workload], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, u16>(2)?)))?
    {
        let (id, proto, port) = row?;
        hosts.entry(id).or_default().listeners.insert((parse_enum(&proto)?, port));
    }
    let mut stmt = tx.prepare_cached(
        "SELECT DISTINCT c.host_id, c.protocol, c.remote_port, c.exe, c.process FROM connections c \
         JOIN hosts h ON h.id = c.host_id WHERE h.workload = ?1 AND h.retired_at IS NULL AND c.direction = 'outbound'",
    )?;
    let mut rows = stmt.query([workload])?;
    while let Some(r) = rows.next()? {
        let (id, proto, port): (i64, String, u16) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let (exe, process): (Option<String>, Option<String>) = (r.get(3)?, r.get(4)?);
        let key = peer_key(parse_enum(&proto)?, port, exe.as_deref(), process.as_deref());
        hosts.entry(id).or_default().connections.insert(key);
    }
    Ok(hosts)
}
