//! The current-state tables (processes, listeners, connections) and their history
//! (process_events, socket_events): loading, replacing from a snapshot, applying a delta.
//!
//! Invariant: every change to a state table writes its history row in the same transaction, so
//! the history is exactly the sequence of states the collector held.

use std::collections::HashMap;
use std::net::SocketAddr;

use hostwatch_proto::v1::{Direction, Protocol};
use rusqlite::{Row, Transaction, params};
use time::OffsetDateTime;

use super::{json, parse_enum, parse_ts, to_json, ts};
use crate::model::{
    Connection, ConnectionKey, HostState, Listener, ListenerKey, PeerItems, Process, ProcessKey, Recorded,
    StateDelta, peer_key,
};
use crate::store::state_changes::{self, Judging, SocketRow, StoredState, Write};
use crate::store::{Result, StoreError, bits, unbits};
use hostwatch_proto::v1::ListenerAuth;

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
pub(super) const LISTENER_COLUMNS: &str = "protocol, address, port, pid, process, exe, uid, netns, auth_verdict, auth_service, auth_reason, auth_probed_at";

pub(super) fn listener_from_row(r: &Row<'_>) -> Result<Listener> {
    Ok(Listener {
        protocol: parse_enum::<Protocol>(text(r, 0)?)?,
        address: ip(r, 1)?,
        port: r.get(2)?,
        pid: r.get(3)?,
        process: r.get(4)?,
        exe: r.get(5)?,
        uid: r.get(6)?,
        netns: r.get::<_, Option<i64>>(7)?.map(unbits),
        auth: auth_from_row(r, 8)?,
    })
}

/// A probe's result from its four columns at `at` (verdict, service, reason, when), if any.
fn auth_from_row(r: &Row<'_>, at: usize) -> Result<Option<ListenerAuth>> {
    let Some(verdict) = opt_text(r, at)? else { return Ok(None) };
    Ok(Some(ListenerAuth {
        verdict: parse_enum(verdict)?,
        service: r.get::<_, Option<String>>(at + 1)?.unwrap_or_default(),
        reason: r.get::<_, Option<String>>(at + 2)?.unwrap_or_default(),
        probed_at: parse_ts(text(r, at + 3)?)?,
    }))
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
        netns: r.get::<_, Option<i64>>(10)?.map(unbits),
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
    apply(tx, host_id, &state_changes::replacement(&old, new, now), now, history, judging)
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

/// Applies a delta as [`state_changes::plan`] decides, its file changes beside; returns what the
/// plan recorded.
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
    let (writes, recorded) = state_changes::plan(&mut Rows { tx, host_id }, d, now, history, judging)?;
    for w in writes {
        match w {
            Write::PutProcess { process, judged_through } => {
                put_process(tx, host_id, process, judged_through, now)?
            }
            Write::DeleteProcess(k) => {
                tx.prepare_cached(
                    "DELETE FROM processes WHERE host_id = ?1 AND pid = ?2 AND start_time = ?3",
                )?
                .execute(params![host_id, k.pid, ts(k.start_time)])?;
            }
            Write::ExecHash { key, sha256 } => {
                tx.prepare_cached(
                    "UPDATE process_events SET sha256 = ?1 WHERE host_id = ?2 AND at >= ?3 AND pid = ?4 \
                     AND start_time = ?3 AND kind = 'exec' AND sha256 IS NULL",
                )?
                .execute(params![sha256, host_id, ts(key.start_time), key.pid])?;
            }
            Write::Exec { key, process, at } => process_event(tx, host_id, "exec", key, process, at)?,
            Write::Exit { key, process, at } => {
                process_event(tx, host_id, "exit", key, process.as_deref(), at)?
            }
            Write::PutListener { listener, judged_through } => {
                delete_listener(tx, host_id, listener.key())?;
                put_listener(tx, host_id, listener, judged_through)?;
            }
            Write::DeleteListener(k) => delete_listener(tx, host_id, k)?,
            Write::PutConnection { connection, judged_through } => {
                delete_connection(tx, host_id, connection.key())?;
                put_connection(tx, host_id, connection, judged_through)?;
            }
            Write::DeleteConnection(k) => delete_connection(tx, host_id, k)?,
            Write::SocketEvent { opened, socket, at } => {
                socket_event(tx, host_id, if opened { "open" } else { "close" }, &socket, at)?
            }
        }
    }
    Ok(recorded)
}

/// The rows a plan looks up, read from the transaction one at a time.
struct Rows<'t, 'c> {
    tx: &'t Transaction<'c>,
    host_id: i64,
}

impl StoredState for Rows<'_, '_> {
    fn process(&mut self, k: ProcessKey) -> Result<Option<(Process, i64)>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "SELECT {PROCESS_COLUMNS}, judged_through FROM processes WHERE host_id = ?1 AND pid = ?2 AND start_time = ?3"
        ))?;
        let mut rows = stmt.query(params![self.host_id, k.pid, ts(k.start_time)])?;
        match rows.next()? {
            None => Ok(None),
            Some(r) => Ok(Some((process_from_row(r)?, r.get(25)?))),
        }
    }

    fn listener(&mut self, k: ListenerKey) -> Result<Option<(Listener, i64)>> {
        get_listener(self.tx, self.host_id, k)
    }

    fn connection(&mut self, k: ConnectionKey) -> Result<Option<(Connection, i64)>> {
        get_connection(self.tx, self.host_id, k)
    }
}

/// Stores a process; `cpu_high_since` is kept from the row it replaces while the process stays
/// above the high-CPU threshold, set to the report's time when it crosses it, cleared when it falls below.
/// `judged_through`: set for a process that starts (see [`Judging`]); `None` keeps the stored one.
fn put_process(
    tx: &Transaction<'_>,
    host_id: i64,
    p: &Process,
    judged_through: Option<i64>,
    now: OffsetDateTime,
) -> Result<()> {
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
        p.rss_bytes.map(bits),
        p.exe_replaced,
        p.stdio_socket,
        hot,
        ts(now),
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
        rss_bytes: r.get::<_, Option<i64>>(16)?.map(unbits),
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
        "INSERT INTO listeners (host_id, protocol, address, port, pid, process, exe, uid, netns, judged_through, \
         auth_verdict, auth_service, auth_reason, auth_probed_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
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
        l.netns.map(bits),
        judged_through,
        l.auth.as_ref().map(|a| a.verdict.as_str()),
        l.auth.as_ref().map(|a| a.service.as_str()),
        l.auth.as_ref().map(|a| a.reason.as_str()),
        l.auth.as_ref().map(|a| ts(a.probed_at)),
    ])?;
    Ok(())
}

/// A listener and its `judged_through`.
fn get_listener(tx: &Transaction<'_>, host_id: i64, k: ListenerKey) -> Result<Option<(Listener, i64)>> {
    let mut stmt = tx.prepare_cached(
        "SELECT pid, process, exe, uid, judged_through, auth_verdict, auth_service, auth_reason, auth_probed_at \
         FROM listeners WHERE host_id = ?1 AND protocol = ?2 AND address = ?3 AND port = ?4 AND netns IS ?5 LIMIT 1",
    )?;
    let mut rows =
        stmt.query(params![host_id, k.protocol.as_str(), k.address.to_string(), k.port, k.netns.map(bits)])?;
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
                auth: auth_from_row(r, 5)?,
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
        .execute(params![host_id, k.protocol.as_str(), k.address.to_string(), k.port, k.netns.map(bits)])?;
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
        c.netns.map(bits),
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
        k.netns.map(bits)
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
            k.netns.map(bits)
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
        s.process.as_deref(),
        s.exe.as_deref(),
        s.netns.map(bits),
        s.remote.map(|r| super::addresses::ip_key(r.ip()).to_vec())
    ])?;
    Ok(())
}

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
