//! A host's current state (processes, listeners, connections), its history and its watched
//! files in the PostgreSQL store: read, and changed by a report as [`state_changes::plan`]
//! decides.
//!
//! Where SQLite looks each row up as the plan asks, here the rows a delta can touch are read
//! first in three statements (a snapshot reads the whole state, which it diffs anyway): each
//! statement is a round trip to the database.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use deadpool_postgres::GenericClient;
use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{Col, error, ms};
use crate::model::{Connection, HostState, Listener, Process, Recorded, StateDelta};
use crate::store::state_changes::{self, Judging, Loaded, SocketRow, Write};
use crate::store::{Result, StoreError, parse_enum};
pub(super) use crate::store::{bits, unbits};

/// A process's columns, for [`process_from_row`]; `judged_through` last.
pub(super) const PROCESS_COLUMNS: &str = "pid, ppid, name, exe, exe_deleted, cmdline, uid, \"user\", start_time, sha256, \
     exe_memfd, exe_writable_dir, cgroup, container_id, unit, cpu_percent, rss_bytes, exe_replaced, stdio_socket, \
     cpu_high_since, exe_replacement, login_uid, session_id, ancestry, login_user, judged_through";

/// A listener's columns, for [`listener_from_row`]; `judged_through` last.
pub(super) const LISTENER_COLUMNS: &str = "protocol, address, port, pid, process, exe, uid, netns, auth_verdict, auth_service, auth_reason, auth_probed_at, \
     judged_through";

/// A connection's columns, for [`connection_from_row`]; `judged_through` last.
pub(super) const CONNECTION_COLUMNS: &str = "protocol, local_address, local_port, remote_address, remote_port, \
     direction, pid, process, exe, uid, netns, judged_through";

/// A number of the wire stored in a BIGINT column read back: one out of its range is corrupt.
pub(super) fn u32_of(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} is out of range")))
}

fn opt_u32(v: Option<i64>, what: &str) -> Result<Option<u32>> {
    v.map(|v| u32_of(v, what)).transpose()
}

fn port(r: &Row, i: usize) -> Result<u16> {
    let p: i32 = r.col(i)?;
    u16::try_from(p).map_err(|_| StoreError::Corrupt(format!("port {p} is out of range")))
}

pub(super) fn json_text<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn to_json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

/// A process and its `judged_through`, from [`PROCESS_COLUMNS`] starting at column `at`.
pub(super) fn process_from_row(r: &Row, at: usize) -> Result<(Process, i64)> {
    let cmdline: String = r.col(at + 5)?;
    let replacement: Option<String> = r.col(at + 20)?;
    let ancestry: Option<String> = r.col(at + 23)?;
    let process = Process {
        pid: u32_of(r.col(at)?, "pid")?,
        ppid: u32_of(r.col(at + 1)?, "ppid")?,
        name: r.col(at + 2)?,
        exe: r.col(at + 3)?,
        exe_deleted: r.col(at + 4)?,
        cmdline: json_text(&cmdline, "cmdline")?,
        uid: u32_of(r.col(at + 6)?, "uid")?,
        user: r.col(at + 7)?,
        start_time: r.col(at + 8)?,
        sha256: r.col(at + 9)?,
        exe_memfd: r.col(at + 10)?,
        exe_writable_dir: r.col(at + 11)?,
        cgroup: r.col(at + 12)?,
        container_id: r.col(at + 13)?,
        unit: r.col(at + 14)?,
        cpu_percent: r.col(at + 15)?,
        rss_bytes: r.col::<Option<i64>>(at + 16)?.map(unbits),
        exe_replaced: r.col(at + 17)?,
        stdio_socket: r.col(at + 18)?,
        cpu_high_since: r.col(at + 19)?,
        exe_replacement: replacement.map(|s| json_text(&s, "exe_replacement")).transpose()?,
        login_uid: opt_u32(r.col(at + 21)?, "login_uid")?,
        session_id: opt_u32(r.col(at + 22)?, "session_id")?,
        ancestry: ancestry.map(|s| json_text(&s, "ancestry")).transpose()?.unwrap_or_default(),
        login_user: r.col(at + 24)?,
    };
    Ok((process, r.col(at + 25)?))
}

pub(super) fn listener_from_row(r: &Row) -> Result<(Listener, i64)> {
    let listener = Listener {
        protocol: parse_enum(r.col::<&str>(0)?)?,
        address: r.col(1)?,
        port: port(r, 2)?,
        pid: opt_u32(r.col(3)?, "pid")?,
        process: r.col(4)?,
        exe: r.col(5)?,
        uid: u32_of(r.col(6)?, "uid")?,
        netns: r.col::<Option<i64>>(7)?.map(unbits),
        auth: match r.col::<Option<&str>>(8)? {
            None => None,
            Some(verdict) => Some(hostwatch_proto::v1::ListenerAuth {
                verdict: parse_enum(verdict)?,
                service: r.col::<Option<String>>(9)?.unwrap_or_default(),
                reason: r.col::<Option<String>>(10)?.unwrap_or_default(),
                probed_at: r.col::<OffsetDateTime>(11)?,
            }),
        },
    };
    Ok((listener, r.col(12)?))
}

pub(super) fn connection_from_row(r: &Row) -> Result<(Connection, i64)> {
    let connection = Connection {
        protocol: parse_enum(r.col::<&str>(0)?)?,
        local: SocketAddr::new(r.col(1)?, port(r, 2)?),
        remote: SocketAddr::new(r.col(3)?, port(r, 4)?),
        direction: parse_enum(r.col::<&str>(5)?)?,
        pid: opt_u32(r.col(6)?, "pid")?,
        process: r.col(7)?,
        exe: r.col(8)?,
        uid: u32_of(r.col(9)?, "uid")?,
        netns: r.col::<Option<i64>>(10)?.map(unbits),
    };
    Ok((connection, r.col(11)?))
}

/// A host's whole state as stored.
pub(super) async fn load(tx: &impl GenericClient, host_id: i64) -> Result<Loaded> {
    read(tx, host_id, None).await
}

/// The rows of a host's state a delta can touch (`keys`), or all of them (`None`).
async fn read(tx: &impl GenericClient, host_id: i64, keys: Option<&Keys>) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    let (pids, ports, local_ports) = match keys {
        Some(k) => (Some(&k.pids), Some(&k.ports), Some(&k.local_ports)),
        None => (None, None, None),
    };
    if pids.is_none_or(|p| !p.is_empty()) {
        let sql = format!(
            "SELECT {PROCESS_COLUMNS} FROM processes WHERE host_id = $1 AND ($2::bigint[] IS NULL OR pid = ANY($2))"
        );
        let stmt = tx.prepare_cached(&sql).await.map_err(error)?;
        for r in tx.query(&stmt, &[&host_id, &pids]).await.map_err(error)? {
            let (p, judged) = process_from_row(&r, 0)?;
            loaded.processes.insert(p.key(), (p, judged));
        }
    }
    if ports.is_none_or(|p| !p.is_empty()) {
        let sql = format!(
            "SELECT {LISTENER_COLUMNS} FROM listeners WHERE host_id = $1 AND ($2::int[] IS NULL OR port = ANY($2))"
        );
        let stmt = tx.prepare_cached(&sql).await.map_err(error)?;
        for r in tx.query(&stmt, &[&host_id, &ports]).await.map_err(error)? {
            let (l, judged) = listener_from_row(&r)?;
            loaded.listeners.insert(l.key(), (l, judged));
        }
    }
    if local_ports.is_none_or(|p| !p.is_empty()) {
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections WHERE host_id = $1 \
             AND ($2::int[] IS NULL OR local_port = ANY($2))"
        );
        let stmt = tx.prepare_cached(&sql).await.map_err(error)?;
        for r in tx.query(&stmt, &[&host_id, &local_ports]).await.map_err(error)? {
            let (c, judged) = connection_from_row(&r)?;
            loaded.connections.insert(c.key(), (c, judged));
        }
    }
    Ok(loaded)
}

/// What a delta can touch: the pids, listening ports and local ports of its items (a superset
/// of its keys, read whole and matched in memory).
#[derive(Default)]
struct Keys {
    pids: Vec<i64>,
    ports: Vec<i32>,
    local_ports: Vec<i32>,
}

impl Keys {
    fn of(d: &StateDelta) -> Keys {
        let p = &d.processes;
        let pids: HashSet<i64> = p
            .added
            .iter()
            .chain(&p.updated)
            .map(|p| i64::from(p.pid))
            .chain(p.removed.iter().map(|(k, _)| i64::from(k.pid)))
            .collect();
        let l = &d.listeners;
        let ports: HashSet<i32> = l
            .added
            .iter()
            .chain(&l.updated)
            .map(|l| i32::from(l.port))
            .chain(l.removed.iter().map(|(k, _)| i32::from(k.port)))
            .collect();
        let c = &d.connections;
        let local_ports: HashSet<i32> = c
            .added
            .iter()
            .chain(&c.updated)
            .map(|c| i32::from(c.local.port()))
            .chain(c.removed.iter().map(|(k, _)| i32::from(k.local.port())))
            .collect();
        Keys {
            pids: pids.into_iter().collect(),
            ports: ports.into_iter().collect(),
            local_ports: local_ports.into_iter().collect(),
        }
    }
}

/// A new session numbers its reports from 1 again: what the old one's numbers said of each item
/// means nothing to it.
pub(super) async fn new_session(tx: &impl GenericClient, host_id: i64) -> Result<()> {
    for table in ["processes", "listeners", "connections"] {
        let sql = format!("UPDATE {table} SET judged_through = 0 WHERE host_id = $1 AND judged_through <> 0");
        tx.execute(&sql, &[&host_id]).await.map_err(error)?;
    }
    Ok(())
}

/// Replaces the stored state with `new`, with history for every difference unless `history` is
/// false (a host's first state).
pub(super) async fn replace(
    tx: &impl GenericClient,
    host_id: i64,
    new: &HostState,
    now: OffsetDateTime,
    history: bool,
    judging: Judging,
) -> Result<Recorded> {
    let mut stored = load(tx, host_id).await?;
    let delta = state_changes::replacement(&stored.state(), new, now);
    let (writes, recorded) = state_changes::plan(&mut stored, &delta, now, history, judging)?;
    execute(tx, host_id, writes, now, &stored).await?;
    Ok(recorded)
}

/// Applies a delta as [`state_changes::plan`] decides, its file changes beside.
pub(super) async fn apply(
    tx: &impl GenericClient,
    host_id: i64,
    d: &StateDelta,
    now: OffsetDateTime,
    history: bool,
    judging: Judging,
) -> Result<Recorded> {
    // File changes are news even in a host's first report: they happened on the host.
    record_files(tx, host_id, &d.files).await?;
    let mut stored = read(tx, host_id, Some(&Keys::of(d))).await?;
    let (writes, recorded) = state_changes::plan(&mut stored, d, now, history, judging)?;
    execute(tx, host_id, writes, now, &stored).await?;
    Ok(recorded)
}

/// Executes a plan's writes, a statement per table and kind rather than per row: a host's
/// first snapshot is one insert of its 300 processes, not 300 (each statement is a round trip
/// and an executor start; per row, PostgreSQL spent most of its time on them). Within a table
/// the plan's order is kept where it matters: its puts come before its deletes, a key put twice
/// keeps the last, and what a put keeps from the row it replaces (a hot process's mark, its
/// `judged_through`) is worked out here from `stored` and the puts before it.
async fn execute(
    tx: &impl GenericClient,
    host_id: i64,
    writes: Vec<Write<'_>>,
    now: OffsetDateTime,
    stored: &Loaded,
) -> Result<()> {
    let mut processes = Batch::default();
    let mut kept: HashMap<crate::model::ProcessKey, Option<(Option<OffsetDateTime>, i64)>> = HashMap::new();
    let mut gone_processes = Vec::new();
    let mut hashes = Vec::new();
    let mut process_events = ProcessEvents::default();
    let mut listeners: Vec<(&Listener, i64)> = Vec::new();
    let mut gone_listeners = Vec::new();
    let mut connections: Vec<(&Connection, i64)> = Vec::new();
    let mut gone_connections = Vec::new();
    let mut socket_events = SocketEvents::default();
    for w in &writes {
        match w {
            Write::PutProcess { process, judged_through } => {
                let key = process.key();
                let prior = match kept.get(&key) {
                    Some(k) => *k,
                    None => stored.processes.get(&key).map(|(p, j)| (p.cpu_high_since, *j)),
                };
                let hot = process.cpu_percent.is_some_and(|c| c >= crate::model::HIGH_CPU_PERCENT);
                let since = hot.then(|| prior.and_then(|(since, _)| since).unwrap_or(ms(now)));
                let judged = judged_through.unwrap_or_else(|| prior.map_or(0, |(_, j)| j));
                kept.insert(key, Some((since, judged)));
                processes.put(process, since, judged);
            }
            Write::DeleteProcess(k) => {
                kept.insert(*k, None);
                gone_processes.push(*k);
            }
            Write::ExecHash { key, sha256 } => hashes.push((*key, *sha256)),
            Write::Exec { key, process, at } => process_events.push("exec", *key, *process, *at),
            Write::Exit { key, process, at } => process_events.push("exit", *key, process.as_deref(), *at),
            Write::PutListener { listener, judged_through } => {
                listeners.retain(|(l, _)| l.key() != listener.key());
                listeners.push((listener, *judged_through));
            }
            Write::DeleteListener(k) => gone_listeners.push(*k),
            Write::PutConnection { connection, judged_through } => {
                connections.retain(|(c, _)| c.key() != connection.key());
                connections.push((connection, *judged_through));
            }
            Write::DeleteConnection(k) => gone_connections.push(*k),
            Write::SocketEvent { opened, socket, at } => socket_events.push(*opened, socket, *at),
        }
    }
    processes.write(tx, host_id).await?;
    if !gone_processes.is_empty() {
        let pids: Vec<i64> = gone_processes.iter().map(|k| i64::from(k.pid)).collect();
        let starts: Vec<OffsetDateTime> = gone_processes.iter().map(|k| ms(k.start_time)).collect();
        run(
            tx,
            "DELETE FROM processes p USING unnest($2::bigint[], $3::timestamptz[]) AS k(pid, start_time) \
             WHERE p.host_id = $1 AND p.pid = k.pid AND p.start_time = k.start_time",
            &[&host_id, &pids, &starts],
        )
        .await?;
    }
    for (key, sha256) in hashes {
        run(
            tx,
            "UPDATE process_events SET sha256 = $1 WHERE host_id = $2 AND at >= $3 AND pid = $4 \
             AND start_time = $3 AND kind = 'exec' AND sha256 IS NULL",
            &[&sha256, &host_id, &ms(key.start_time), &i64::from(key.pid)],
        )
        .await?;
    }
    process_events.write(tx, host_id).await?;
    // A put replaces the row of its key: those rows go first, then the puts, then what ends.
    let put_keys: Vec<crate::model::ListenerKey> = listeners.iter().map(|(l, _)| l.key()).collect();
    delete_listeners(tx, host_id, &put_keys).await?;
    if !listeners.is_empty() {
        let col =
            |f: &dyn Fn(&Listener) -> Option<String>| listeners.iter().map(|(l, _)| f(l)).collect::<Vec<_>>();
        let protocols: Vec<&str> = listeners.iter().map(|(l, _)| l.protocol.as_str()).collect();
        let addresses: Vec<IpAddr> = listeners.iter().map(|(l, _)| l.address).collect();
        let ports: Vec<i32> = listeners.iter().map(|(l, _)| i32::from(l.port)).collect();
        let pids: Vec<Option<i64>> = listeners.iter().map(|(l, _)| l.pid.map(i64::from)).collect();
        let uids: Vec<i64> = listeners.iter().map(|(l, _)| i64::from(l.uid)).collect();
        let netns: Vec<Option<i64>> = listeners.iter().map(|(l, _)| l.netns.map(bits)).collect();
        let judged: Vec<i64> = listeners.iter().map(|(_, j)| *j).collect();
        let probed_at: Vec<Option<OffsetDateTime>> =
            listeners.iter().map(|(l, _)| l.auth.as_ref().map(|a| ms(a.probed_at))).collect();
        run(
            tx,
            "INSERT INTO listeners (host_id, protocol, address, port, pid, process, exe, uid, netns, judged_through, \
             auth_verdict, auth_service, auth_reason, auth_probed_at) \
             SELECT $1, * FROM unnest($2::text[], $3::inet[], $4::int[], $5::bigint[], $6::text[], $7::text[], \
             $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], $13::text[], $14::timestamptz[])",
            &[
                &host_id,
                &protocols,
                &addresses,
                &ports,
                &pids,
                &col(&|l| l.process.clone()),
                &col(&|l| l.exe.clone()),
                &uids,
                &netns,
                &judged,
                &col(&|l| l.auth.as_ref().map(|a| a.verdict.as_str().to_owned())),
                &col(&|l| l.auth.as_ref().map(|a| a.service.clone())),
                &col(&|l| l.auth.as_ref().map(|a| a.reason.clone())),
                &probed_at,
            ],
        )
        .await?;
    }
    delete_listeners(tx, host_id, &gone_listeners).await?;
    let put_keys: Vec<crate::model::ConnectionKey> = connections.iter().map(|(c, _)| c.key()).collect();
    delete_connections(tx, host_id, &put_keys).await?;
    if !connections.is_empty() {
        let col = |f: &dyn Fn(&Connection) -> Option<String>| {
            connections.iter().map(|(c, _)| f(c)).collect::<Vec<_>>()
        };
        let protocols: Vec<&str> = connections.iter().map(|(c, _)| c.protocol.as_str()).collect();
        let locals: Vec<IpAddr> = connections.iter().map(|(c, _)| c.local.ip()).collect();
        let local_ports: Vec<i32> = connections.iter().map(|(c, _)| i32::from(c.local.port())).collect();
        let remotes: Vec<IpAddr> = connections.iter().map(|(c, _)| c.remote.ip()).collect();
        let remote_ports: Vec<i32> = connections.iter().map(|(c, _)| i32::from(c.remote.port())).collect();
        let directions: Vec<&str> = connections.iter().map(|(c, _)| c.direction.as_str()).collect();
        let pids: Vec<Option<i64>> = connections.iter().map(|(c, _)| c.pid.map(i64::from)).collect();
        let uids: Vec<i64> = connections.iter().map(|(c, _)| i64::from(c.uid)).collect();
        let netns: Vec<Option<i64>> = connections.iter().map(|(c, _)| c.netns.map(bits)).collect();
        let judged: Vec<i64> = connections.iter().map(|(_, j)| *j).collect();
        run(
            tx,
            "INSERT INTO connections (host_id, protocol, local_address, local_port, remote_address, remote_port, \
             direction, pid, process, exe, uid, netns, judged_through) \
             SELECT $1, * FROM unnest($2::text[], $3::inet[], $4::int[], $5::inet[], $6::int[], $7::text[], \
             $8::bigint[], $9::text[], $10::text[], $11::bigint[], $12::bigint[], $13::bigint[])",
            &[
                &host_id,
                &protocols,
                &locals,
                &local_ports,
                &remotes,
                &remote_ports,
                &directions,
                &pids,
                &col(&|c| c.process.clone()),
                &col(&|c| c.exe.clone()),
                &uids,
                &netns,
                &judged,
            ],
        )
        .await?;
    }
    delete_connections(tx, host_id, &gone_connections).await?;
    socket_events.write(tx, host_id).await
}

/// Processes to store, a column each (see [`execute`]); a pid put twice keeps the last.
#[derive(Default)]
struct Batch {
    at: HashMap<u32, usize>,
    pid: Vec<i64>,
    ppid: Vec<i64>,
    name: Vec<String>,
    exe: Vec<Option<String>>,
    exe_deleted: Vec<bool>,
    cmdline: Vec<String>,
    uid: Vec<i64>,
    user: Vec<Option<String>>,
    start_time: Vec<OffsetDateTime>,
    sha256: Vec<Option<String>>,
    exe_memfd: Vec<bool>,
    exe_writable_dir: Vec<bool>,
    cgroup: Vec<Option<String>>,
    container_id: Vec<Option<String>>,
    unit: Vec<Option<String>>,
    cpu_percent: Vec<Option<f32>>,
    rss_bytes: Vec<Option<i64>>,
    exe_replaced: Vec<bool>,
    stdio_socket: Vec<Option<String>>,
    cpu_high_since: Vec<Option<OffsetDateTime>>,
    judged_through: Vec<i64>,
    exe_replacement: Vec<Option<String>>,
    login_uid: Vec<Option<i64>>,
    session_id: Vec<Option<i64>>,
    ancestry: Vec<Option<String>>,
    login_user: Vec<Option<String>>,
}

impl Batch {
    fn put(&mut self, p: &Process, cpu_high_since: Option<OffsetDateTime>, judged_through: i64) {
        if let Some(&i) = self.at.get(&p.pid) {
            // The later put of a pid is what stays; its place in the batch is the earlier's.
            self.set(i, p, cpu_high_since, judged_through);
            return;
        }
        self.at.insert(p.pid, self.pid.len());
        self.pid.push(i64::from(p.pid));
        self.ppid.push(0);
        self.name.push(String::new());
        self.exe.push(None);
        self.exe_deleted.push(false);
        self.cmdline.push(String::new());
        self.uid.push(0);
        self.user.push(None);
        self.start_time.push(OffsetDateTime::UNIX_EPOCH);
        self.sha256.push(None);
        self.exe_memfd.push(false);
        self.exe_writable_dir.push(false);
        self.cgroup.push(None);
        self.container_id.push(None);
        self.unit.push(None);
        self.cpu_percent.push(None);
        self.rss_bytes.push(None);
        self.exe_replaced.push(false);
        self.stdio_socket.push(None);
        self.cpu_high_since.push(None);
        self.judged_through.push(0);
        self.exe_replacement.push(None);
        self.login_uid.push(None);
        self.session_id.push(None);
        self.ancestry.push(None);
        self.login_user.push(None);
        self.set(self.pid.len() - 1, p, cpu_high_since, judged_through);
    }

    fn set(&mut self, i: usize, p: &Process, cpu_high_since: Option<OffsetDateTime>, judged_through: i64) {
        self.ppid[i] = i64::from(p.ppid);
        self.name[i] = p.name.clone();
        self.exe[i] = p.exe.clone();
        self.exe_deleted[i] = p.exe_deleted;
        self.cmdline[i] = to_json_text(&p.cmdline);
        self.uid[i] = i64::from(p.uid);
        self.user[i] = p.user.clone();
        self.start_time[i] = ms(p.start_time);
        self.sha256[i] = p.sha256.clone();
        self.exe_memfd[i] = p.exe_memfd;
        self.exe_writable_dir[i] = p.exe_writable_dir;
        self.cgroup[i] = p.cgroup.clone();
        self.container_id[i] = p.container_id.clone();
        self.unit[i] = p.unit.clone();
        self.cpu_percent[i] = p.cpu_percent;
        self.rss_bytes[i] = p.rss_bytes.map(bits);
        self.exe_replaced[i] = p.exe_replaced;
        self.stdio_socket[i] = p.stdio_socket.clone();
        self.cpu_high_since[i] = cpu_high_since;
        self.judged_through[i] = judged_through;
        self.exe_replacement[i] = p.exe_replacement.as_ref().map(to_json_text);
        self.login_uid[i] = p.login_uid.map(i64::from);
        self.session_id[i] = p.session_id.map(i64::from);
        self.ancestry[i] = ancestry_text(&p.ancestry);
        self.login_user[i] = p.login_user.clone();
    }

    /// One upsert of every process: each replaces the row of its pid.
    async fn write(&self, tx: &impl GenericClient, host_id: i64) -> Result<()> {
        if self.pid.is_empty() {
            return Ok(());
        }
        run(
            tx,
            "INSERT INTO processes (host_id, pid, ppid, name, exe, exe_deleted, cmdline, uid, \"user\", start_time, \
             sha256, exe_memfd, exe_writable_dir, cgroup, container_id, unit, cpu_percent, rss_bytes, exe_replaced, \
             stdio_socket, cpu_high_since, judged_through, exe_replacement, login_uid, session_id, ancestry, login_user) \
             SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bool[], $7::text[], \
             $8::bigint[], $9::text[], $10::timestamptz[], $11::text[], $12::bool[], $13::bool[], $14::text[], \
             $15::text[], $16::text[], $17::real[], $18::bigint[], $19::bool[], $20::text[], $21::timestamptz[], \
             $22::bigint[], $23::text[], $24::bigint[], $25::bigint[], $26::text[], $27::text[]) \
             ON CONFLICT (host_id, pid) DO UPDATE SET ppid = EXCLUDED.ppid, name = EXCLUDED.name, exe = EXCLUDED.exe, \
             exe_deleted = EXCLUDED.exe_deleted, cmdline = EXCLUDED.cmdline, uid = EXCLUDED.uid, \
             \"user\" = EXCLUDED.\"user\", start_time = EXCLUDED.start_time, sha256 = EXCLUDED.sha256, \
             exe_memfd = EXCLUDED.exe_memfd, exe_writable_dir = EXCLUDED.exe_writable_dir, cgroup = EXCLUDED.cgroup, \
             container_id = EXCLUDED.container_id, unit = EXCLUDED.unit, cpu_percent = EXCLUDED.cpu_percent, \
             rss_bytes = EXCLUDED.rss_bytes, exe_replaced = EXCLUDED.exe_replaced, \
             stdio_socket = EXCLUDED.stdio_socket, cpu_high_since = EXCLUDED.cpu_high_since, \
             judged_through = EXCLUDED.judged_through, exe_replacement = EXCLUDED.exe_replacement, \
             login_uid = EXCLUDED.login_uid, session_id = EXCLUDED.session_id, ancestry = EXCLUDED.ancestry, \
             login_user = EXCLUDED.login_user",
            &[
                &host_id,
                &self.pid,
                &self.ppid,
                &self.name,
                &self.exe,
                &self.exe_deleted,
                &self.cmdline,
                &self.uid,
                &self.user,
                &self.start_time,
                &self.sha256,
                &self.exe_memfd,
                &self.exe_writable_dir,
                &self.cgroup,
                &self.container_id,
                &self.unit,
                &self.cpu_percent,
                &self.rss_bytes,
                &self.exe_replaced,
                &self.stdio_socket,
                &self.cpu_high_since,
                &self.judged_through,
                &self.exe_replacement,
                &self.login_uid,
                &self.session_id,
                &self.ancestry,
                &self.login_user,
            ],
        )
        .await
    }
}

/// Process history rows, a column each.
#[derive(Default)]
struct ProcessEvents {
    at: Vec<OffsetDateTime>,
    kind: Vec<&'static str>,
    pid: Vec<i64>,
    ppid: Vec<Option<i64>>,
    name: Vec<Option<String>>,
    exe: Vec<Option<String>>,
    cmdline: Vec<Option<String>>,
    user: Vec<Option<String>>,
    uid: Vec<Option<i64>>,
    start_time: Vec<OffsetDateTime>,
    sha256: Vec<Option<String>>,
    login_uid: Vec<Option<i64>>,
    session_id: Vec<Option<i64>>,
    ancestry: Vec<Option<String>>,
}

impl ProcessEvents {
    fn push(
        &mut self,
        kind: &'static str,
        key: crate::model::ProcessKey,
        p: Option<&Process>,
        at: OffsetDateTime,
    ) {
        self.at.push(ms(at));
        self.kind.push(kind);
        self.pid.push(i64::from(key.pid));
        self.ppid.push(p.map(|p| i64::from(p.ppid)));
        self.name.push(p.map(|p| p.name.clone()));
        self.exe.push(p.and_then(|p| p.exe.clone()));
        self.cmdline.push(p.map(|p| to_json_text(&p.cmdline)));
        self.user.push(p.and_then(|p| p.user.clone()));
        self.uid.push(p.map(|p| i64::from(p.uid)));
        self.start_time.push(ms(key.start_time));
        self.sha256.push(p.and_then(|p| p.sha256.clone()));
        self.login_uid.push(p.and_then(|p| p.login_uid.map(i64::from)));
        self.session_id.push(p.and_then(|p| p.session_id.map(i64::from)));
        self.ancestry.push(p.and_then(|p| ancestry_text(&p.ancestry)));
    }

    /// One insert, in the plan's order (the ids follow it).
    async fn write(&self, tx: &impl GenericClient, host_id: i64) -> Result<()> {
        if self.at.is_empty() {
            return Ok(());
        }
        run(
            tx,
            "INSERT INTO process_events (host_id, at, kind, pid, ppid, name, exe, cmdline, \"user\", uid, start_time, \
             sha256, login_uid, session_id, ancestry) \
             SELECT $1, at, kind, pid, ppid, name, exe, cmdline, usr, uid, start_time, sha256, login_uid, \
             session_id, ancestry FROM unnest($2::timestamptz[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], \
             $7::text[], $8::text[], $9::text[], $10::bigint[], $11::timestamptz[], $12::text[], $13::bigint[], \
             $14::bigint[], $15::text[]) WITH ORDINALITY AS u(at, kind, pid, ppid, name, exe, cmdline, usr, uid, \
             start_time, sha256, login_uid, session_id, ancestry, n) ORDER BY n",
            &[
                &host_id,
                &self.at,
                &self.kind,
                &self.pid,
                &self.ppid,
                &self.name,
                &self.exe,
                &self.cmdline,
                &self.user,
                &self.uid,
                &self.start_time,
                &self.sha256,
                &self.login_uid,
                &self.session_id,
                &self.ancestry,
            ],
        )
        .await
    }
}

/// Socket history rows, a column each.
#[derive(Default)]
struct SocketEvents {
    at: Vec<OffsetDateTime>,
    kind: Vec<&'static str>,
    socket: Vec<&'static str>,
    protocol: Vec<&'static str>,
    local: Vec<IpAddr>,
    local_port: Vec<i32>,
    remote: Vec<Option<IpAddr>>,
    remote_port: Vec<Option<i32>>,
    direction: Vec<Option<&'static str>>,
    pid: Vec<Option<i64>>,
    process: Vec<Option<String>>,
    exe: Vec<Option<String>>,
    netns: Vec<Option<i64>>,
}

impl SocketEvents {
    fn push(&mut self, opened: bool, s: &SocketRow<'_>, at: OffsetDateTime) {
        self.at.push(ms(at));
        self.kind.push(if opened { "open" } else { "close" });
        self.socket.push(s.socket);
        self.protocol.push(s.protocol.as_str());
        self.local.push(s.local.ip());
        self.local_port.push(i32::from(s.local.port()));
        self.remote.push(s.remote.map(|r| r.ip()));
        self.remote_port.push(s.remote.map(|r| i32::from(r.port())));
        self.direction.push(s.direction.map(|d| d.as_str()));
        self.pid.push(s.pid.map(i64::from));
        self.process.push(s.process.as_deref().map(str::to_owned));
        self.exe.push(s.exe.as_deref().map(str::to_owned));
        self.netns.push(s.netns.map(bits));
    }

    /// One insert, in the plan's order (the ids follow it).
    async fn write(&self, tx: &impl GenericClient, host_id: i64) -> Result<()> {
        if self.at.is_empty() {
            return Ok(());
        }
        run(
            tx,
            "INSERT INTO socket_events (host_id, at, kind, socket, protocol, local_address, local_port, \
             remote_address, remote_port, direction, pid, process, exe, netns) \
             SELECT $1, at, kind, socket, protocol, la, lp, ra, rp, dir, pid, process, exe, netns \
             FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::inet[], $7::int[], $8::inet[], \
             $9::int[], $10::text[], $11::bigint[], $12::text[], $13::text[], $14::bigint[]) WITH ORDINALITY \
             AS u(at, kind, socket, protocol, la, lp, ra, rp, dir, pid, process, exe, netns, n) ORDER BY n",
            &[
                &host_id,
                &self.at,
                &self.kind,
                &self.socket,
                &self.protocol,
                &self.local,
                &self.local_port,
                &self.remote,
                &self.remote_port,
                &self.direction,
                &self.pid,
                &self.process,
                &self.exe,
                &self.netns,
            ],
        )
        .await
    }
}

/// Deletes the listeners of these keys.
async fn delete_listeners(
    tx: &impl GenericClient,
    host_id: i64,
    keys: &[crate::model::ListenerKey],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let protocols: Vec<&str> = keys.iter().map(|k| k.protocol.as_str()).collect();
    let addresses: Vec<IpAddr> = keys.iter().map(|k| k.address).collect();
    let ports: Vec<i32> = keys.iter().map(|k| i32::from(k.port)).collect();
    let netns: Vec<Option<i64>> = keys.iter().map(|k| k.netns.map(bits)).collect();
    run(
        tx,
        "DELETE FROM listeners l USING unnest($2::text[], $3::inet[], $4::int[], $5::bigint[]) \
         AS k(protocol, address, port, netns) WHERE l.host_id = $1 AND l.protocol = k.protocol \
         AND l.address = k.address AND l.port = k.port AND l.netns IS NOT DISTINCT FROM k.netns",
        &[&host_id, &protocols, &addresses, &ports, &netns],
    )
    .await
}

/// Deletes the connections of these keys.
async fn delete_connections(
    tx: &impl GenericClient,
    host_id: i64,
    keys: &[crate::model::ConnectionKey],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let protocols: Vec<&str> = keys.iter().map(|k| k.protocol.as_str()).collect();
    let locals: Vec<IpAddr> = keys.iter().map(|k| k.local.ip()).collect();
    let local_ports: Vec<i32> = keys.iter().map(|k| i32::from(k.local.port())).collect();
    let remotes: Vec<IpAddr> = keys.iter().map(|k| k.remote.ip()).collect();
    let remote_ports: Vec<i32> = keys.iter().map(|k| i32::from(k.remote.port())).collect();
    let netns: Vec<Option<i64>> = keys.iter().map(|k| k.netns.map(bits)).collect();
    run(
        tx,
        "DELETE FROM connections c USING unnest($2::text[], $3::inet[], $4::int[], $5::inet[], $6::int[], \
         $7::bigint[]) AS k(protocol, la, lp, ra, rp, netns) WHERE c.host_id = $1 AND c.protocol = k.protocol \
         AND c.local_address = k.la AND c.local_port = k.lp AND c.remote_address = k.ra AND c.remote_port = k.rp \
         AND c.netns IS NOT DISTINCT FROM k.netns",
        &[&host_id, &protocols, &locals, &local_ports, &remotes, &remote_ports, &netns],
    )
    .await
}

/// Runs one statement, prepared once per connection.
async fn run(
    tx: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<()> {
    let stmt = tx.prepare_cached(sql).await.map_err(error)?;
    tx.execute(&stmt, params).await.map_err(error)?;
    Ok(())
}

/// The ancestry column: NULL where the agent recorded no ancestors.
fn ancestry_text(ancestry: &[proto::Ancestor]) -> Option<String> {
    (!ancestry.is_empty()).then(|| to_json_text(&ancestry))
}

/// Records file changes in the order the agent saw them: the history, and each path's latest
/// state.
async fn record_files(tx: &impl GenericClient, host_id: i64, changes: &[proto::FileChange]) -> Result<()> {
    for c in changes {
        let package = c.package.as_ref();
        run(
            tx,
            "INSERT INTO file_changes (host_id, at, path, change, origin, from_path, old_sha256, new_sha256, \
             package, package_version, package_matches, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &host_id,
                &ms(c.at),
                &c.path,
                &c.change.as_str(),
                &c.origin.as_str(),
                &c.from_path,
                &c.old.as_ref().and_then(|s| s.sha256.as_deref()),
                &c.new.as_ref().and_then(|s| s.sha256.as_deref()),
                &package.map(|p| p.name.as_str()),
                &package.and_then(|p| p.version.as_deref()),
                &package.map(|p| p.matches),
                &to_json_text(c),
            ],
        )
        .await?;
        if let Some(from) = &c.from_path {
            run(tx, "DELETE FROM files WHERE host_id = $1 AND path = $2", &[&host_id, from]).await?;
        }
        match &c.new {
            Some(s) => {
                run(
                    tx,
                    "INSERT INTO files (host_id, path, kind, mode, uid, gid, size, mtime, sha256, target, changed_at, \
                     metadata_only, inode) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (host_id, path) DO UPDATE SET kind = EXCLUDED.kind, mode = EXCLUDED.mode, \
                     uid = EXCLUDED.uid, gid = EXCLUDED.gid, size = EXCLUDED.size, mtime = EXCLUDED.mtime, \
                     sha256 = EXCLUDED.sha256, target = EXCLUDED.target, changed_at = EXCLUDED.changed_at, \
                     metadata_only = EXCLUDED.metadata_only, inode = EXCLUDED.inode",
                    &[
                        &host_id,
                        &c.path,
                        &s.kind.as_str(),
                        &i64::from(s.mode),
                        &i64::from(s.uid),
                        &i64::from(s.gid),
                        &bits(s.size),
                        &ms(s.mtime),
                        &s.sha256,
                        &s.target,
                        &ms(c.at),
                        &s.metadata_only,
                        &bits(s.inode),
                    ],
                )
                .await?
            }
            None => run(tx, "DELETE FROM files WHERE host_id = $1 AND path = $2", &[&host_id, &c.path]).await?,
        }
    }
    Ok(())
}
