//! A host's current state (processes, listeners, connections), its history and its watched
//! files in the PostgreSQL store: read, and changed by a report as [`state_changes::plan`]
//! decides.
//!
//! Where SQLite looks each row up as the plan asks, here the rows a delta can touch are read
//! first in three statements (a snapshot reads the whole state, which it diffs anyway): each
//! statement is a round trip to the database.

use std::collections::HashSet;
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
pub(super) const LISTENER_COLUMNS: &str =
    "protocol, address, port, pid, process, exe, uid, netns, judged_through";

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

fn json_text<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
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
    };
    Ok((listener, r.col(8)?))
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
    execute(tx, host_id, writes, now).await?;
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
    execute(tx, host_id, writes, now).await?;
    Ok(recorded)
}

/// Executes a plan's writes in order.
async fn execute(
    tx: &impl GenericClient,
    host_id: i64,
    writes: Vec<Write<'_>>,
    now: OffsetDateTime,
) -> Result<()> {
    for w in writes {
        match w {
            Write::PutProcess { process, judged_through } => {
                put_process(tx, host_id, process, judged_through, now).await?
            }
            Write::DeleteProcess(k) => {
                run(
                    tx,
                    "DELETE FROM processes WHERE host_id = $1 AND pid = $2 AND start_time = $3",
                    &[&host_id, &i64::from(k.pid), &ms(k.start_time)],
                )
                .await?
            }
            Write::ExecHash { key, sha256 } => {
                run(
                    tx,
                    "UPDATE process_events SET sha256 = $1 WHERE host_id = $2 AND at >= $3 AND pid = $4 \
                     AND start_time = $3 AND kind = 'exec' AND sha256 IS NULL",
                    &[&sha256, &host_id, &ms(key.start_time), &i64::from(key.pid)],
                )
                .await?
            }
            Write::Exec { key, process, at } => process_event(tx, host_id, "exec", key, process, at).await?,
            Write::Exit { key, process, at } => {
                process_event(tx, host_id, "exit", key, process.as_deref(), at).await?
            }
            Write::PutListener { listener, judged_through } => {
                delete_listener(tx, host_id, &listener.key()).await?;
                let l = listener;
                run(
                    tx,
                    "INSERT INTO listeners (host_id, protocol, address, port, pid, process, exe, uid, netns, judged_through) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[
                        &host_id,
                        &l.protocol.as_str(),
                        &l.address,
                        &i32::from(l.port),
                        &l.pid.map(i64::from),
                        &l.process,
                        &l.exe,
                        &i64::from(l.uid),
                        &l.netns.map(bits),
                        &judged_through,
                    ],
                )
                .await?
            }
            Write::DeleteListener(k) => delete_listener(tx, host_id, &k).await?,
            Write::PutConnection { connection, judged_through } => {
                delete_connection(tx, host_id, &connection.key()).await?;
                let c = connection;
                run(
                    tx,
                    "INSERT INTO connections (host_id, protocol, local_address, local_port, remote_address, \
                     remote_port, direction, pid, process, exe, uid, netns, judged_through) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    &[
                        &host_id,
                        &c.protocol.as_str(),
                        &c.local.ip(),
                        &i32::from(c.local.port()),
                        &c.remote.ip(),
                        &i32::from(c.remote.port()),
                        &c.direction.as_str(),
                        &c.pid.map(i64::from),
                        &c.process,
                        &c.exe,
                        &i64::from(c.uid),
                        &c.netns.map(bits),
                        &judged_through,
                    ],
                )
                .await?
            }
            Write::DeleteConnection(k) => delete_connection(tx, host_id, &k).await?,
            Write::SocketEvent { opened, socket, at } => {
                socket_event(tx, host_id, opened, &socket, at).await?
            }
        }
    }
    Ok(())
}

/// Runs one statement of a plan, prepared once per connection.
async fn run(
    tx: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<()> {
    let stmt = tx.prepare_cached(sql).await.map_err(error)?;
    tx.execute(&stmt, params).await.map_err(error)?;
    Ok(())
}

/// Stores a process (see [`Write::PutProcess`]): the high-CPU mark and `judged_through` are kept
/// from the row it replaces when that row is the same process.
async fn put_process(
    tx: &impl GenericClient,
    host_id: i64,
    p: &Process,
    judged_through: Option<i64>,
    now: OffsetDateTime,
) -> Result<()> {
    let hot = p.cpu_percent.is_some_and(|c| c >= crate::model::HIGH_CPU_PERCENT);
    run(
        tx,
        "INSERT INTO processes (host_id, pid, ppid, name, exe, exe_deleted, cmdline, uid, \"user\", start_time, \
         sha256, exe_memfd, exe_writable_dir, cgroup, container_id, unit, cpu_percent, rss_bytes, exe_replaced, \
         stdio_socket, cpu_high_since, judged_through, exe_replacement, login_uid, session_id, ancestry, login_user) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
         CASE WHEN $21 THEN $22::timestamptz END, COALESCE($23::bigint, 0), $24, $25, $26, $27, $28) \
         ON CONFLICT (host_id, pid) DO UPDATE SET ppid = EXCLUDED.ppid, name = EXCLUDED.name, exe = EXCLUDED.exe, \
         exe_deleted = EXCLUDED.exe_deleted, cmdline = EXCLUDED.cmdline, uid = EXCLUDED.uid, \"user\" = EXCLUDED.\"user\", \
         start_time = EXCLUDED.start_time, sha256 = EXCLUDED.sha256, exe_memfd = EXCLUDED.exe_memfd, \
         exe_writable_dir = EXCLUDED.exe_writable_dir, cgroup = EXCLUDED.cgroup, container_id = EXCLUDED.container_id, \
         unit = EXCLUDED.unit, cpu_percent = EXCLUDED.cpu_percent, rss_bytes = EXCLUDED.rss_bytes, \
         exe_replaced = EXCLUDED.exe_replaced, stdio_socket = EXCLUDED.stdio_socket, \
         cpu_high_since = CASE WHEN $21 THEN COALESCE(CASE WHEN processes.start_time = EXCLUDED.start_time \
           THEN processes.cpu_high_since END, $22::timestamptz) END, \
         judged_through = COALESCE($23, CASE WHEN processes.start_time = EXCLUDED.start_time \
           THEN processes.judged_through END, 0), \
         exe_replacement = EXCLUDED.exe_replacement, login_uid = EXCLUDED.login_uid, \
         session_id = EXCLUDED.session_id, ancestry = EXCLUDED.ancestry, login_user = EXCLUDED.login_user",
        &[
            &host_id,
            &i64::from(p.pid),
            &i64::from(p.ppid),
            &p.name,
            &p.exe,
            &p.exe_deleted,
            &to_json_text(&p.cmdline),
            &i64::from(p.uid),
            &p.user,
            &ms(p.start_time),
            &p.sha256,
            &p.exe_memfd,
            &p.exe_writable_dir,
            &p.cgroup,
            &p.container_id,
            &p.unit,
            &p.cpu_percent,
            &p.rss_bytes.map(bits),
            &p.exe_replaced,
            &p.stdio_socket,
            &hot,
            &ms(now),
            &judged_through,
            &p.exe_replacement.as_ref().map(to_json_text),
            &p.login_uid.map(i64::from),
            &p.session_id.map(i64::from),
            &ancestry_text(&p.ancestry),
            &p.login_user,
        ],
    )
    .await
}

/// The ancestry column: NULL where the agent recorded no ancestors.
fn ancestry_text(ancestry: &[proto::Ancestor]) -> Option<String> {
    (!ancestry.is_empty()).then(|| to_json_text(&ancestry))
}

async fn delete_listener(tx: &impl GenericClient, host_id: i64, k: &crate::model::ListenerKey) -> Result<()> {
    run(
        tx,
        "DELETE FROM listeners WHERE host_id = $1 AND protocol = $2 AND address = $3 AND port = $4 \
         AND netns IS NOT DISTINCT FROM $5",
        &[&host_id, &k.protocol.as_str(), &k.address, &i32::from(k.port), &k.netns.map(bits)],
    )
    .await
}

async fn delete_connection(
    tx: &impl GenericClient,
    host_id: i64,
    k: &crate::model::ConnectionKey,
) -> Result<()> {
    run(
        tx,
        "DELETE FROM connections WHERE host_id = $1 AND protocol = $2 AND local_address = $3 AND local_port = $4 \
         AND remote_address = $5 AND remote_port = $6 AND netns IS NOT DISTINCT FROM $7",
        &[
            &host_id,
            &k.protocol.as_str(),
            &k.local.ip(),
            &i32::from(k.local.port()),
            &k.remote.ip(),
            &i32::from(k.remote.port()),
            &k.netns.map(bits),
        ],
    )
    .await
}

async fn process_event(
    tx: &impl GenericClient,
    host_id: i64,
    kind: &str,
    key: crate::model::ProcessKey,
    p: Option<&Process>,
    at: OffsetDateTime,
) -> Result<()> {
    run(
        tx,
        "INSERT INTO process_events (host_id, at, kind, pid, ppid, name, exe, cmdline, \"user\", uid, start_time, \
         sha256, login_uid, session_id, ancestry) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        &[
            &host_id,
            &ms(at),
            &kind,
            &i64::from(key.pid),
            &p.map(|p| i64::from(p.ppid)),
            &p.map(|p| &p.name),
            &p.and_then(|p| p.exe.as_ref()),
            &p.map(|p| to_json_text(&p.cmdline)),
            &p.and_then(|p| p.user.as_ref()),
            &p.map(|p| i64::from(p.uid)),
            &ms(key.start_time),
            &p.and_then(|p| p.sha256.as_ref()),
            &p.and_then(|p| p.login_uid.map(i64::from)),
            &p.and_then(|p| p.session_id.map(i64::from)),
            &p.and_then(|p| ancestry_text(&p.ancestry)),
        ],
    )
    .await
}

async fn socket_event(
    tx: &impl GenericClient,
    host_id: i64,
    opened: bool,
    s: &SocketRow<'_>,
    at: OffsetDateTime,
) -> Result<()> {
    let remote_address: Option<IpAddr> = s.remote.map(|r| r.ip());
    run(
        tx,
        "INSERT INTO socket_events (host_id, at, kind, socket, protocol, local_address, local_port, remote_address, \
         remote_port, direction, pid, process, exe, netns) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            &host_id,
            &ms(at),
            &if opened { "open" } else { "close" },
            &s.socket,
            &s.protocol.as_str(),
            &s.local.ip(),
            &i32::from(s.local.port()),
            &remote_address,
            &s.remote.map(|r| i32::from(r.port())),
            &s.direction.map(|d| d.as_str()),
            &s.pid.map(i64::from),
            &s.process.as_deref(),
            &s.exe.as_deref(),
            &s.netns.map(bits),
        ],
    )
    .await
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
