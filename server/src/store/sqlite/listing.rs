//! The fleet's listings for people: current state (`ps`, `ports`, `conns`) and history, filtered,
//! sorted and paged in SQL, each filter on an index (migration 0020).
//!
//! Pages are keyset pages: a cursor is the key of the last row given (`HOST.PID` for processes,
//! `HOST.PORT.ID` for listeners, `HOST.LOCAL_PORT.REMOTE_PORT.ID` for connections: the order of
//! their indexes; `AT/ID` for history), and the next page is what sorts after it. A row that stays while a
//! listing is paged through is on exactly one page, whatever is added or removed around it; one
//! added behind the cursor is not, one removed is simply not there. One more row than asked is
//! read, to know whether there is a next page. Retired hosts' state is left out.

use std::net::SocketAddr;

use hostwatch_proto::v1::{Direction, Located, Protocol};
use rusqlite::Transaction;
use rusqlite::types::Value;

use super::addresses::net_range;
use super::state::{
    CONNECTION_COLUMNS, LISTENER_COLUMNS, PROCESS_COLUMNS, connection_from_row, ip, listener_from_row,
    process_from_row,
};
use super::{
    FINDING_COLUMNS, HOST_COLUMNS, finding_from_row, host_from_row, opt_json, parse_enum, parse_ts, ts,
};
use crate::model::{Connection, Finding, Host, Listener, Process, ProcessEvent, SocketEvent};
use crate::store::pages::{self, finding_cursor, findings_cursor, history_cursor, paged, state_cursor};
use crate::store::{FindingFilter, HistoryFilter, HostFilter, Page, Result, StateFilter, severity_rank};

/// A WHERE clause under construction, with its numbered arguments.
struct Where {
    sql: String,
    args: Vec<Value>,
}

impl Where {
    fn new() -> Where {
        Where { sql: String::from(" WHERE 1 = 1"), args: Vec::new() }
    }

    /// Adds `AND <cond>`, where each `?` in `cond` takes the next of `args`.
    fn and(&mut self, cond: &str, args: impl IntoIterator<Item = Value>) {
        let mut out = String::new();
        let mut args = args.into_iter();
        for part in cond.split_inclusive('?') {
            match part.strip_suffix('?') {
                Some(before) => {
                    self.args.push(args.next().unwrap_or(Value::Null));
                    out.push_str(&format!("{before}?{}", self.args.len()));
                }
                None => out.push_str(part),
            }
        }
        self.sql.push_str(" AND ");
        self.sql.push_str(&out);
    }
}

/// Matches of a CIDR block beyond which its index is not the way in: with more than this many
/// rows per row of a page, reading the listing's own order and keeping what is in the block
/// finds a page sooner than reading the block and sorting it.
const WIDE_PER_ROW: u64 = 20;

/// Whether `net` matches so many rows of `table` that a page is found sooner in the listing's
/// own order than through the block's index range: counted on the index, up to the bound.
/// SQLite's planner, without a histogram of the keys, takes any two-sided range for narrow, and
/// read 1.2 million connections of 10.0.0.0/8 to sort them for a page of 1,000 (3.4 s at 10,000
/// hosts; 2 ms in host order).
fn wide(tx: &Transaction<'_>, table: Keyed, (first, last): ([u8; 16], [u8; 16]), limit: u32) -> Result<bool> {
    let bound = (u64::from(limit) * WIDE_PER_ROW).clamp(1_000, 200_000);
    let (name, rows) = (table.name(), table.rows("k"));
    let n: i64 = tx
        .prepare_cached(&format!(
            "SELECT count(*) FROM (SELECT 1 FROM {name} k WHERE {rows}k.remote_key BETWEEN ?1 AND ?2 LIMIT ?3)"
        ))?
        .query_row(rusqlite::params![first.as_slice(), last.as_slice(), bound as i64], |r| r.get(0))?;
    Ok(n as u64 >= bound)
}

/// The tables whose remote addresses are keyed, and which of their rows the key's index holds.
#[derive(Debug, Clone, Copy)]
enum Keyed {
    Connections,
    /// Opens only: a close's remote is its open's.
    SocketEvents,
}

impl Keyed {
    fn name(self) -> &'static str {
        match self {
            Keyed::Connections => "connections",
            Keyed::SocketEvents => "socket_events",
        }
    }

    /// The condition (with its `AND`) a query must say for the planner to take the index, on
    /// the table aliased `alias`.
    fn rows(self, alias: &str) -> String {
        match self {
            Keyed::Connections => String::new(),
            Keyed::SocketEvents => format!("{alias}.kind = 'open' AND "),
        }
    }
}

/// The condition that keeps rows of `alias` in `net`: through its index when the block is
/// narrow, as a filter of the listing's order when it is wide ([`wide`]). Of the history, the
/// sockets opened to it.
fn in_block(
    tx: &Transaction<'_>,
    table: Keyed,
    alias: &str,
    net: &ipnet::IpNet,
    limit: u32,
) -> Result<(String, [Value; 2])> {
    let (first, last) = net_range(net);
    let rows = table.rows(alias);
    let cond = if wide(tx, table, (first, last), limit)? {
        format!("{rows}likelihood({alias}.remote_key BETWEEN ? AND ?, 0.9)")
    } else {
        format!("{rows}{alias}.remote_key BETWEEN ? AND ?")
    };
    Ok((cond, [first.to_vec().into(), last.to_vec().into()]))
}

/// Text as an argument.
fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// The filters every state listing shares, over the table aliased `t` joined to hosts `h`;
/// `key`: the listing's order (its columns of `t`).
fn state_where(f: &StateFilter, key: &[&str]) -> Result<Where> {
    let mut w = Where::new();
    w.and("h.retired_at IS NULL", []);
    if let Some(h) = f.host_id {
        w.and("t.host_id = ?", [h.into()]);
    }
    if let Some(e) = &f.exe {
        w.and("t.exe GLOB ?", [text(e)]);
    }
    if let Some(p) = f.protocol {
        w.and("t.protocol = ?", [text(p.as_str())]);
    }
    if let Some(c) = &f.after {
        let values = state_cursor(c, key.len())?;
        let cols = key.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ");
        let marks = vec!["?"; key.len()].join(", ");
        w.and(&format!("({cols}) > ({marks})"), values.into_iter().map(Value::from));
    }
    Ok(w)
}

/// Registers `online_since(interval_secs, offline_after_ms, now)` on `conn`: the earliest last
/// report of an online host ([`crate::model::online_since`], the rule `Host::status` applies),
/// as stored text, for the hosts listing's filter by status.
pub(super) fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let flags = rusqlite::functions::FunctionFlags::SQLITE_UTF8
        | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("online_since", 3, flags, |ctx| {
        let interval: i64 = ctx.get(0)?;
        let fixed: Option<i64> = ctx.get(1)?;
        let now: String = ctx.get(2)?;
        let now = parse_ts(&now).map_err(|e| rusqlite::Error::UserFunctionError(e.to_string().into()))?;
        let fixed = fixed.map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
        Ok(ts(crate::model::online_since(now, u32::try_from(interval).unwrap_or(u32::MAX), fixed)))
    })
}

/// Hosts in id order, filtered by status, workload and tags (cursor: the last id given).
pub(super) fn hosts(tx: &Transaction<'_>, f: &HostFilter) -> Result<Page<Host>> {
    use hostwatch_proto::v1::HostStatus;
    let mut w = Where::new();
    if let Some(c) = &f.after {
        w.and("h.id > ?", [state_cursor(c, 1)?[0].into()]);
    }
    if let Some(workload) = &f.workload {
        w.and("h.workload = ?", [text(workload)]);
    }
    for (k, v) in &f.tags {
        w.and(
            "EXISTS (SELECT 1 FROM json_each(h.tags) t WHERE t.key = ? AND t.value = ?)",
            [text(k), text(v)],
        );
    }
    if f.statuses.is_empty() {
        if !f.all {
            w.and("h.retired_at IS NULL", []);
        }
    } else {
        let now = ts(f.now.unwrap_or_else(time::OffsetDateTime::now_utc));
        let fixed = f.offline_after.map(|d| Value::Integer(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
        let fixed = fixed.unwrap_or(Value::Null);
        let online = "h.last_seen IS NOT NULL AND h.last_seen >= online_since(h.interval_secs, ?, ?)";
        let mut any = Vec::new();
        let mut args = Vec::new();
        for s in &f.statuses {
            match s {
                HostStatus::Retired => any.push("h.retired_at IS NOT NULL".to_owned()),
                HostStatus::Stopped => {
                    any.push("(h.retired_at IS NULL AND h.goodbye IS NOT NULL)".to_owned())
                }
                HostStatus::Online => {
                    any.push(format!("(h.retired_at IS NULL AND h.goodbye IS NULL AND {online})"));
                    args.extend([fixed.clone(), text(&now)]);
                }
                HostStatus::Offline => {
                    any.push(format!("(h.retired_at IS NULL AND h.goodbye IS NULL AND NOT ({online}))"));
                    args.extend([fixed.clone(), text(&now)]);
                }
            }
        }
        w.and(&format!("({})", any.join(" OR ")), args);
    }
    let sql =
        format!("SELECT {HOST_COLUMNS} FROM hosts h{} ORDER BY h.id LIMIT {}", w.sql, u64::from(f.limit) + 1);
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(w.args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(host_from_row(r)?);
    }
    Ok(paged(out, f.limit, |h| h.id.to_string()))
}

pub(super) fn processes(tx: &Transaction<'_>, f: &StateFilter) -> Result<Page<Located<Process>>> {
    let mut w = state_where(f, &["host_id", "pid"])?;
    if let Some(n) = &f.name {
        w.and("t.name = ?", [text(n)]);
    }
    if let Some(u) = &f.user {
        match u.parse::<i64>() {
            Ok(uid) => w.and("(t.user = ? OR (t.user IS NULL AND t.uid = ?))", [text(u), uid.into()]),
            Err(_) => w.and("t.user = ?", [text(u)]),
        }
    }
    if let Some(s) = &f.sha256 {
        w.and("t.sha256 = ?", [text(&s.to_ascii_lowercase())]);
    }
    let columns = PROCESS_COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {columns}, t.host_id, h.hostname FROM processes t JOIN hosts h ON h.id = t.host_id{} \
         ORDER BY t.host_id, t.pid LIMIT {}",
        w.sql,
        u64::from(f.limit) + 1
    );
    let n = PROCESS_COLUMNS.split(", ").count();
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(w.args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(Located { host_id: r.get(n)?, hostname: r.get(n + 1)?, item: process_from_row(r)? });
    }
    Ok(paged(out, f.limit, |l| format!("{}.{}", l.host_id, l.item.pid)))
}

/// Listeners and connections, in the order of `key` (the columns of their key index, then the
/// row id), with the cursor of that order.
fn sockets<T>(
    tx: &Transaction<'_>,
    table: &str,
    columns: &str,
    key: &[&str],
    w: Where,
    limit: u32,
    from_row: fn(&rusqlite::Row<'_>) -> Result<T>,
) -> Result<Page<Located<T>>> {
    let n = columns.split(", ").count();
    let columns = columns.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ");
    let order = key.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {columns}, h.hostname, {order} FROM {table} t JOIN hosts h ON h.id = t.host_id{} \
         ORDER BY {order} LIMIT {}",
        w.sql,
        u64::from(limit) + 1
    );
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(w.args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let values =
            (0..key.len()).map(|i| r.get::<_, i64>(n + 1 + i)).collect::<rusqlite::Result<Vec<_>>>()?;
        let located = Located { host_id: values[0], hostname: r.get(n)?, item: from_row(r)? };
        out.push((values, located));
    }
    let page =
        paged(out, limit, |(values, _)| values.iter().map(i64::to_string).collect::<Vec<_>>().join("."));
    Ok(Page { items: page.items.into_iter().map(|(_, l)| l).collect(), next: page.next })
}

/// The order of the listeners' listing: their key index's.
const LISTENER_KEY: &[&str] = &["host_id", "port", "id"];
/// The order of the connections' listing: their key index's.
const CONNECTION_KEY: &[&str] = &["host_id", "local_port", "remote_port", "id"];

pub(super) fn listeners(tx: &Transaction<'_>, f: &StateFilter) -> Result<Page<Located<Listener>>> {
    let mut w = state_where(f, LISTENER_KEY)?;
    if let Some(p) = f.port {
        w.and("t.port = ?", [p.into()]);
    }
    if let Some(a) = f.address {
        w.and("t.address = ?", [text(&a.to_string())]);
    }
    if f.unauthenticated {
        w.and("t.auth_verdict IN ('unauthenticated', 'local_only')", []);
    }
    sockets(tx, "listeners", LISTENER_COLUMNS, LISTENER_KEY, w, f.limit, listener_from_row)
}

pub(super) fn connections(tx: &Transaction<'_>, f: &StateFilter) -> Result<Page<Located<Connection>>> {
    let mut w = state_where(f, CONNECTION_KEY)?;
    if let Some(p) = f.port {
        w.and("t.remote_port = ?", [p.into()]);
    }
    if let Some(d) = f.direction {
        w.and("t.direction = ?", [text(d.as_str())]);
    }
    if let Some(net) = &f.remote {
        let (cond, args) = in_block(tx, Keyed::Connections, "t", net, f.limit)?;
        w.and(&cond, args);
    }
    sockets(tx, "connections", CONNECTION_COLUMNS, CONNECTION_KEY, w, f.limit, connection_from_row)
}

/// A finding's severity as a number that sorts ([`severity_rank`]'s), in SQL.
const SEVERITY_RANK: &str = "(CASE f.severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3 \
     WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END)";

/// Findings, most severe first, then the most recently seen, then the newest; cursor
/// `RANK/LAST_SEEN/ID`. Without a limit, every one.
pub(super) fn findings(tx: &Transaction<'_>, f: &FindingFilter) -> Result<Page<Finding>> {
    let mut w = Where::new();
    if let Some(h) = f.host_id {
        w.and("f.host_id = ?", [h.into()]);
    }
    if let Some(k) = f.kind {
        w.and("f.kind = ?", [text(k.as_str())]);
    }
    if !f.statuses.is_empty() {
        let marks = vec!["?"; f.statuses.len()].join(", ");
        w.and(&format!("f.status IN ({marks})"), f.statuses.iter().map(|s| text(s.as_str())));
    }
    if let Some(sev) = f.severity {
        w.and(&format!("{SEVERITY_RANK} >= ?"), [i64::from(severity_rank(sev)).into()]);
    }
    if let Some(workload) = &f.workload {
        w.and("h.workload = ?", [text(workload)]);
    }
    if let Some(since) = f.since {
        w.and("f.last_seen >= ?", [text(&ts(since))]);
    }
    if let Some(c) = &f.after {
        let (rank, seen, id) = findings_cursor(c)?;
        w.and(
            &format!("({SEVERITY_RANK}, f.last_seen, f.id) < (?, ?, ?)"),
            [rank.into(), text(&ts(seen)), id.into()],
        );
    }
    let limit = f.limit.map(|l| format!(" LIMIT {}", u64::from(l) + 1)).unwrap_or_default();
    let sql = format!(
        "SELECT {FINDING_COLUMNS} FROM findings f JOIN hosts h ON h.id = f.host_id{} \
         ORDER BY {SEVERITY_RANK} DESC, f.last_seen DESC, f.id DESC{limit}",
        w.sql
    );
    let mut stmt = tx.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(w.args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(finding_from_row(r)?);
    }
    Ok(match f.limit {
        Some(limit) => paged(out, limit, finding_cursor),
        None => Page { items: out, next: None },
    })
}

/// Which history table a filter is applied to: what each can be filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum History {
    Processes,
    Sockets,
    Files,
}

/// The WHERE, ORDER and LIMIT of a history query over the table aliased `e`, newest first.
pub(super) fn history_where(
    tx: &Transaction<'_>,
    f: &HistoryFilter,
    table: History,
) -> Result<(String, Vec<Value>)> {
    let mut w = Where::new();
    if let Some(h) = f.host_id {
        w.and("e.host_id = ?", [h.into()]);
    }
    if let Some(since) = f.since {
        w.and("e.at >= ?", [text(&ts(since))]);
    }
    if let Some(c) = &f.after {
        let (at, id) = history_cursor(c)?;
        w.and("(e.at, e.id) < (?, ?)", [text(&ts(at)), id.into()]);
    }
    match table {
        History::Processes => {
            if let Some(n) = &f.name {
                w.and("e.name = ?", [text(n)]);
            }
            // The starts of a hash: its index holds execs (an exit's hash is its exec's).
            if let Some(s) = &f.sha256 {
                w.and("e.kind = 'exec' AND e.sha256 = ?", [text(&s.to_ascii_lowercase())]);
            }
        }
        History::Sockets => {
            if let Some(net) = &f.remote {
                let (cond, args) = in_block(tx, Keyed::SocketEvents, "e", net, f.limit.max(1))?;
                w.and(&cond, args);
            }
            if let Some(p) = f.port {
                w.and(
                    "(e.remote_port = ? OR (e.socket = 'listener' AND e.local_port = ?))",
                    [p.into(), p.into()],
                );
            }
        }
        History::Files => {
            if let Some(p) = &f.path {
                w.and("e.path GLOB ?", [text(p)]);
            }
        }
    }
    if let Some(e) = &f.exe
        && table != History::Files
    {
        w.and("e.exe GLOB ?", [text(e)]);
    }
    let sql = format!("{} ORDER BY e.at DESC, e.id DESC LIMIT {}", w.sql, u64::from(f.limit.max(1)) + 1);
    Ok((sql, w.args))
}

/// The page of history rows read with [`history_where`], cursor from each one's time and id.
pub(super) fn history_page<T>(
    rows: Vec<T>,
    f: &HistoryFilter,
    key: impl Fn(&T) -> (i64, time::OffsetDateTime),
) -> Page<T> {
    pages::history_page(rows, f.limit, key)
}

pub(super) fn process_events(tx: &Transaction<'_>, f: &HistoryFilter) -> Result<Page<ProcessEvent>> {
    let (clause, args) = history_where(tx, f, History::Processes)?;
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT e.id, e.host_id, h.hostname, e.at, e.kind, e.pid, e.ppid, e.name, e.exe, e.cmdline, e.user, e.uid, \
         e.start_time, e.login_uid, e.session_id, e.ancestry, e.explained \
         FROM process_events e JOIN hosts h ON h.id = e.host_id{clause}"
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let kind: String = r.get(4)?;
        let cmdline: Option<String> = r.get(9)?;
        out.push(ProcessEvent {
            id: r.get(0)?,
            host_id: r.get(1)?,
            hostname: r.get(2)?,
            at: parse_ts(&r.get::<_, String>(3)?)?,
            kind: if kind == "exec" { "exec" } else { "exit" },
            pid: r.get(5)?,
            ppid: r.get(6)?,
            name: r.get(7)?,
            exe: r.get(8)?,
            cmdline: opt_json(cmdline, "cmdline")?.unwrap_or_default(),
            user: r.get(10)?,
            uid: r.get(11)?,
            start_time: parse_ts(&r.get::<_, String>(12)?)?,
            login_uid: r.get(13)?,
            session_id: r.get(14)?,
            ancestry: opt_json(r.get(15)?, "ancestry")?.unwrap_or_default(),
            explained: r.get(16)?,
        });
    }
    Ok(history_page(out, f, |e| (e.id, e.at)))
}

pub(super) fn socket_events(tx: &Transaction<'_>, f: &HistoryFilter) -> Result<Page<SocketEvent>> {
    let (clause, args) = history_where(tx, f, History::Sockets)?;
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT e.id, e.host_id, h.hostname, e.at, e.kind, e.socket, e.protocol, e.local_address, e.local_port, \
         e.remote_address, e.remote_port, e.direction, e.pid, e.process, e.exe, e.netns \
         FROM socket_events e JOIN hosts h ON h.id = e.host_id{clause}"
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let kind: String = r.get(4)?;
        let socket: String = r.get(5)?;
        let remote = match r.get::<_, Option<String>>(9)? {
            Some(_) => Some(SocketAddr::new(ip(r, 9)?, r.get(10)?)),
            None => None,
        };
        out.push(SocketEvent {
            id: r.get(0)?,
            host_id: r.get(1)?,
            hostname: r.get(2)?,
            at: parse_ts(&r.get::<_, String>(3)?)?,
            kind: if kind == "open" { "open" } else { "close" },
            socket: if socket == "listener" { "listener" } else { "connection" },
            protocol: parse_enum::<Protocol>(&r.get::<_, String>(6)?)?,
            local: SocketAddr::new(ip(r, 7)?, r.get(8)?),
            remote,
            direction: r.get::<_, Option<String>>(11)?.map(|d| parse_enum::<Direction>(&d)).transpose()?,
            pid: r.get(12)?,
            process: r.get(13)?,
            exe: r.get(14)?,
            netns: r.get::<_, Option<i64>>(15)?.map(crate::store::unbits),
        });
    }
    Ok(history_page(out, f, |e| (e.id, e.at)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rusqlite::params;

    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{FindingFilter, Store, StoreError, parse_net};

    const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    /// Three hosts (the third retired) with processes, listeners, connections, history and
    /// findings: what every filter below is checked against.
    async fn store(dir: &std::path::Path) -> SqliteStore {
        let s = SqliteStore::open(&dir.join("hw.db")).unwrap();
        s.tx(|tx| {
            tx.execute_batch(&format!(
                "INSERT INTO hosts (id, hostname, machine_id, enrolled_at, workload, retired_at) VALUES
                   (1, 'web-1', 'm1', '2026-01-01T00:00:00.000Z', 'web', NULL),
                   (2, 'db-1', 'm2', '2026-01-01T00:00:00.000Z', 'db', NULL),
                   (3, 'old-1', 'm3', '2026-01-01T00:00:00.000Z', 'web', '2026-02-01T00:00:00.000Z');
                 INSERT INTO processes (host_id, pid, ppid, name, exe, uid, user, start_time, sha256, cmdline) VALUES
                   (1, 10, 1, 'xmrig', '/tmp/.x/xmrig', 1000, 'www', '2026-01-01T00:00:00.000Z', '{HASH_A}', '[]'),
                   (1, 11, 1, 'nginx', '/usr/sbin/nginx', 0, 'root', '2026-01-01T00:00:00.000Z', 'bb', '[]'),
                   (2, 20, 1, 'xmrig', '/var/tmp/xmrig', 1001, NULL, '2026-01-01T00:00:00.000Z', '{HASH_A}', '[]'),
                   (2, 21, 1, 'postgres', '/usr/lib/postgresql/15/bin/postgres', 105, 'postgres', '2026-01-01T00:00:00.000Z', 'cc', '[]'),
                   (3, 30, 1, 'xmrig', '/tmp/xmrig', 0, 'root', '2026-01-01T00:00:00.000Z', '{HASH_A}', '[]');
                 INSERT INTO listeners (host_id, protocol, address, port, uid) VALUES
                   (1, 'tcp', '0.0.0.0', 22, 0), (1, 'tcp', '127.0.0.1', 22, 0), (2, 'tcp', '0.0.0.0', 5432, 105),
                   (2, 'tcp', '::', 22, 0), (3, 'tcp', '0.0.0.0', 22, 0);
                 INSERT INTO connections (host_id, protocol, local_address, local_port, remote_address, remote_port, direction, uid, remote_key) VALUES
                   (1, 'tcp', '10.0.0.5', 40000, '10.1.2.3', 5432, 'outbound', 0, ip_key('10.1.2.3')),
                   (1, 'tcp', '10.0.0.5', 40001, '203.0.113.7', 443, 'outbound', 0, ip_key('203.0.113.7')),
                   (2, 'tcp', '::ffff:10.0.0.6', 5432, '::ffff:10.9.9.9', 50000, 'inbound', 0, ip_key('::ffff:10.9.9.9')),
                   (2, 'tcp', '2001:db8::6', 40002, '2001:db8::99', 443, 'outbound', 0, ip_key('2001:db8::99')),
                   (3, 'tcp', '10.0.0.7', 40003, '10.1.1.1', 5432, 'outbound', 0, ip_key('10.1.1.1'));
                 INSERT INTO process_events (host_id, at, kind, pid, name, exe, sha256, start_time) VALUES
                   (1, '2026-03-01T10:00:00.000Z', 'exec', 10, 'xmrig', '/tmp/.x/xmrig', '{HASH_A}', '2026-03-01T10:00:00.000Z'),
                   (2, '2026-03-01T11:00:00.000Z', 'exec', 20, 'xmrig', '/var/tmp/xmrig', '{HASH_A}', '2026-03-01T11:00:00.000Z'),
                   (2, '2026-03-01T11:30:00.000Z', 'exit', 20, 'xmrig', '/var/tmp/xmrig', '{HASH_A}', '2026-03-01T11:00:00.000Z'),
                   (2, '2026-03-01T12:00:00.000Z', 'exec', 22, 'curl', '/usr/bin/curl', 'dd', '2026-03-01T12:00:00.000Z');
                 INSERT INTO socket_events (host_id, at, kind, socket, protocol, local_address, local_port, remote_address, remote_port, direction, remote_key) VALUES
                   (1, '2026-03-01T10:00:00.000Z', 'open', 'connection', 'tcp', '10.0.0.5', 1, '10.200.0.1', 22, 'outbound', ip_key('10.200.0.1')),
                   (2, '2026-03-01T11:00:00.000Z', 'open', 'connection', 'tcp', '10.0.0.6', 2, '192.168.0.1', 22, 'outbound', ip_key('192.168.0.1')),
                   (2, '2026-03-01T11:30:00.000Z', 'open', 'connection', 'tcp', '10.0.0.6', 3, '10.3.0.1', 443, 'outbound', ip_key('10.3.0.1')),
                   (2, '2026-03-01T12:00:00.000Z', 'close', 'connection', 'tcp', '10.0.0.6', 3, '10.3.0.1', 443, 'outbound', ip_key('10.3.0.1'));
                 INSERT INTO findings (id, host_id, kind, severity, subject, status, first_seen, last_seen, opened_at) VALUES
                   (1, 1, 'unexpected_process', 'medium', 'a', 'open', '2026-03-01T00:00:00.000Z', '2026-03-01T09:00:00.000Z', '2026-03-01T00:00:00.000Z'),
                   (2, 1, 'suspicious_process', 'critical', 'b', 'open', '2026-03-01T00:00:00.000Z', '2026-03-01T08:00:00.000Z', '2026-03-01T00:00:00.000Z'),
                   (3, 2, 'unexpected_listener', 'high', 'c', 'open', '2026-03-01T00:00:00.000Z', '2026-03-01T10:00:00.000Z', '2026-03-01T00:00:00.000Z'),
                   (4, 2, 'unexpected_listener', 'high', 'd', 'resolved', '2026-03-01T00:00:00.000Z', '2026-03-01T11:00:00.000Z', '2026-03-01T00:00:00.000Z'),
                   (5, 2, 'outlier', 'low', 'e', 'open', '2026-03-01T00:00:00.000Z', '2026-03-01T12:00:00.000Z', '2026-03-01T00:00:00.000Z');"
            ))?;
            Ok(())
        })
        .await
        .unwrap();
        s
    }

    /// Hosts of every status, by the same rule `Host::status` applies: each status filter lists
    /// exactly the hosts shown with that status, tags match exactly (a key with a quote is a key),
    /// and pages give every host once.
    #[tokio::test]
    async fn hosts_by_status_workload_and_tags_in_pages() {
        use hostwatch_proto::v1::HostStatus;
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("hw.db")).unwrap();
        let now = parse_ts("2026-03-01T12:00:00.500Z").unwrap();
        let ago = |secs: i64| ts(now - time::Duration::seconds(secs));
        let (a10, a40) = (ago(10), ago(40));
        s.tx(move |tx| {
            let (a10, a40) = (Some(a10.as_str()), Some(a40.as_str()));
            let rows = [
                (1, "web", a10, 10, None, None, r#"{"role":"web","env":"prod"}"#),
                (2, "db", a40, 20, None, None, r#"{"role":"db","a\"b":"x"}"#),
                (3, "web", a40, 10, None, None, r#"{"role":"web"}"#),
                (4, "web", a10, 10, Some("stopped by systemd"), None, r#"{}"#),
                (5, "web", a10, 10, None, Some("2026-02-01T00:00:00.000Z"), r#"{"role":"web"}"#),
                (6, "web", None, 10, None, None, r#"{"role":"web"}"#),
            ];
            for (id, workload, seen, interval, goodbye, retired, tags) in rows {
                tx.execute(
                    "INSERT INTO hosts (id, hostname, machine_id, enrolled_at, workload, last_seen, interval_secs, goodbye, retired_at, tags) \
                     VALUES (?1, ?2, ?3, '2026-01-01T00:00:00.000Z', ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![id, format!("h-{id}"), format!("m{id}"), workload, seen, interval, goodbye, retired, tags],
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
        let list = |f: HostFilter| {
            let s = s.clone();
            async move {
                let f = HostFilter { now: Some(now), limit: 100, ..f };
                s.hosts_page(&f).await.unwrap().items.into_iter().map(|h| h.id).collect::<Vec<_>>()
            }
        };
        let of =
            |statuses: &[HostStatus]| HostFilter { statuses: statuses.to_vec(), ..HostFilter::default() };
        assert_eq!(
            list(of(&[HostStatus::Online])).await,
            [1, 2],
            "40 s of silence is within 3 intervals of 20 s"
        );
        assert_eq!(list(of(&[HostStatus::Offline])).await, [3, 6], "never seen is offline");
        assert_eq!(list(of(&[HostStatus::Stopped])).await, [4]);
        assert_eq!(list(of(&[HostStatus::Retired])).await, [5]);
        assert_eq!(list(of(&[HostStatus::Online, HostStatus::Stopped])).await, [1, 2, 4]);
        assert_eq!(list(HostFilter::default()).await, [1, 2, 3, 4, 6], "retired left out");
        assert_eq!(list(HostFilter { all: true, ..HostFilter::default() }).await, [1, 2, 3, 4, 5, 6]);
        let fixed = Some(std::time::Duration::from_secs(35));
        assert_eq!(list(HostFilter { offline_after: fixed, ..of(&[HostStatus::Online]) }).await, [1]);
        // The filter and the status a host is shown with are one rule.
        let every =
            s.hosts_page(&HostFilter { all: true, limit: 100, ..HostFilter::default() }).await.unwrap();
        for offline_after in [None, fixed] {
            for status in [HostStatus::Online, HostStatus::Offline, HostStatus::Stopped, HostStatus::Retired]
            {
                let want: Vec<i64> = every
                    .items
                    .iter()
                    .filter(|h| h.status(now, offline_after) == status)
                    .map(|h| h.id)
                    .collect();
                assert_eq!(
                    list(HostFilter { offline_after, ..of(&[status]) }).await,
                    want,
                    "{status:?} {offline_after:?}"
                );
            }
        }
        let tags = |t: &[(&str, &str)]| HostFilter {
            tags: t.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..HostFilter::default()
        };
        assert_eq!(list(tags(&[("role", "web")])).await, [1, 3, 6]);
        assert_eq!(list(tags(&[("role", "web"), ("env", "prod")])).await, [1]);
        assert_eq!(list(tags(&[("a\"b", "x")])).await, [2]);
        assert_eq!(list(tags(&[("role", "web%")])).await, Vec::<i64>::new());
        assert_eq!(list(HostFilter { workload: Some("db".into()), ..HostFilter::default() }).await, [2]);
        // Pages of two: every host once, then no cursor.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .hosts_page(&HostFilter { after: after.clone(), limit: 2, ..HostFilter::default() })
                .await
                .unwrap();
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|h| h.id));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, [1, 2, 3, 4, 6]);
        let bad =
            s.hosts_page(&HostFilter { after: Some("x".into()), limit: 2, ..HostFilter::default() }).await;
        assert!(matches!(bad, Err(StoreError::Query(m)) if m.contains("cursor \"x\"")));
    }

    fn all(limit: u32) -> StateFilter {
        StateFilter { limit, ..StateFilter::default() }
    }

    async fn pids(s: &SqliteStore, f: StateFilter) -> Vec<u32> {
        s.list_processes(&f).await.unwrap().items.into_iter().map(|l| l.item.pid).collect()
    }

    #[tokio::test]
    async fn each_state_filter_finds_what_it_names_and_nothing_of_retired_hosts() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        assert_eq!(pids(&s, StateFilter { sha256: Some(HASH_A.into()), ..all(100) }).await, [10, 20]);
        assert_eq!(pids(&s, StateFilter { exe: Some("*/xmrig".into()), ..all(100) }).await, [10, 20]);
        assert_eq!(pids(&s, StateFilter { exe: Some("/tmp/*".into()), ..all(100) }).await, [10]);
        assert_eq!(pids(&s, StateFilter { user: Some("root".into()), ..all(100) }).await, [11]);
        // A uid matches a process whose user has no name.
        assert_eq!(pids(&s, StateFilter { user: Some("1001".into()), ..all(100) }).await, [20]);
        assert_eq!(
            pids(&s, StateFilter { host_id: Some(2), name: Some("xmrig".into()), ..all(100) }).await,
            [20]
        );

        let ports = |f: StateFilter| {
            let s = s.clone();
            async move {
                s.list_listeners(&f)
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .map(|l| (l.host_id, l.item.address.to_string(), l.item.port))
                    .collect::<Vec<_>>()
            }
        };
        let any4: std::net::IpAddr = "0.0.0.0".parse().unwrap();
        assert_eq!(
            ports(StateFilter { port: Some(22), address: Some(any4), ..all(100) }).await,
            [(1, "0.0.0.0".to_owned(), 22)]
        );
        assert_eq!(ports(StateFilter { port: Some(22), ..all(100) }).await.len(), 3);

        let remotes = |f: StateFilter| {
            let s = s.clone();
            async move {
                s.list_connections(&f)
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .map(|l| l.item.remote.ip().to_string())
                    .collect::<Vec<_>>()
            }
        };
        let net = |n: &str| Some(parse_net(n).unwrap());
        // A dual-stack socket's mapped address is in its IPv4 block.
        assert_eq!(
            remotes(StateFilter { remote: net("10.0.0.0/8"), ..all(100) }).await,
            ["10.1.2.3", "::ffff:10.9.9.9"]
        );
        assert_eq!(
            remotes(StateFilter { remote: net("10.0.0.0/8"), port: Some(5432), ..all(100) }).await,
            ["10.1.2.3"]
        );
        assert_eq!(remotes(StateFilter { remote: net("2001:db8::/32"), ..all(100) }).await, ["2001:db8::99"]);
        assert_eq!(remotes(StateFilter { remote: net("203.0.113.7"), ..all(100) }).await, ["203.0.113.7"]);
        assert!(remotes(StateFilter { remote: net("192.168.0.0/16"), ..all(100) }).await.is_empty());
    }

    /// A block with more rows than its index is worth reading (here 10.0.0.0/8 with 1,500
    /// connections, against 2 of 172.16.0.0/12) is read in the listing's order instead: the
    /// same rows either way, each once.
    #[tokio::test]
    async fn a_wide_block_lists_the_same_rows_as_a_narrow_one_would() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        s.tx(|tx| {
            for i in 0..1500u32 {
                let remote = if i % 750 == 0 { format!("172.16.0.{}", i % 250 + 1) } else { format!("10.{}.{}.{}", i % 7, i % 250, i % 200 + 1) };
                tx.execute(
                    "INSERT INTO connections (host_id, protocol, local_address, local_port, remote_address, remote_port, direction, uid, remote_key) \
                     VALUES (?1, 'tcp', '10.0.0.5', ?2, ?3, 443, 'outbound', 0, ip_key(?3))",
                    params![1 + i64::from(i % 2), 1000 + i, remote],
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
        let net = parse_net("10.0.0.0/8").unwrap();
        let wide_plan = s.read(move |tx| wide(tx, Keyed::Connections, net_range(&net), 10)).await.unwrap();
        assert!(wide_plan, "1,500 rows of a page of 10 is wide");
        let narrow = parse_net("172.16.0.0/12").unwrap();
        assert!(!s.read(move |tx| wide(tx, Keyed::Connections, net_range(&narrow), 10)).await.unwrap());
        let mut seen = Vec::new();
        let mut f = StateFilter { remote: Some(net), ..all(10) };
        loop {
            let page = s.list_connections(&f).await.unwrap();
            seen.extend(page.items.iter().map(|l| (l.host_id, l.item.local.port(), l.item.remote.ip())));
            match page.next {
                Some(n) => f.after = Some(n),
                None => break,
            }
        }
        // 1,498 of the new ones and the fixture's two in 10/8 (one of them dual-stack).
        assert_eq!(seen.len(), 1500, "{} rows", seen.len());
        assert!(
            seen.iter()
                .all(|(_, _, ip)| ip.to_string().starts_with("10.")
                    || ip.to_string().starts_with("::ffff:10."))
        );
        let unique: BTreeSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len());
    }

    #[tokio::test]
    async fn history_filters_read_newest_first_and_pages_hold_every_event_once() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        let h = |f: HistoryFilter| {
            let s = s.clone();
            async move { s.process_events(&f).await.unwrap().items.into_iter().map(|e| e.pid).collect::<Vec<_>>() }
        };
        let base = HistoryFilter { limit: 100, ..HistoryFilter::default() };
        assert_eq!(h(base.clone()).await, [22, 20, 20, 10]);
        // The starts of a hash: pid 20's exit is not one.
        assert_eq!(h(HistoryFilter { sha256: Some(HASH_A.into()), ..base.clone() }).await, [20, 10]);
        assert_eq!(h(HistoryFilter { exe: Some("/usr/*".into()), ..base.clone() }).await, [22]);
        let since = parse_ts("2026-03-01T10:30:00.000Z").unwrap();
        assert_eq!(
            h(HistoryFilter { since: Some(since), sha256: Some(HASH_A.into()), ..base.clone() }).await,
            [20]
        );
        let sockets = |f: HistoryFilter| {
            let s = s.clone();
            async move {
                s.socket_events(&f)
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .map(|e| e.local.port())
                    .collect::<Vec<_>>()
            }
        };
        let net = Some(parse_net("10.0.0.0/8").unwrap());
        // The sockets opened to the block: port 3's close is not one.
        assert_eq!(sockets(HistoryFilter { remote: net, ..base.clone() }).await, [3, 1]);
        assert_eq!(sockets(base.clone()).await, [3, 3, 2, 1], "every event without a block");
        assert_eq!(sockets(HistoryFilter { remote: net, port: Some(22), ..base.clone() }).await, [1]);
        assert_eq!(sockets(HistoryFilter { remote: net, since: Some(since), ..base.clone() }).await, [3]);
        // One event a page: each once, newest first, and the last page says there is no more.
        let mut seen = Vec::new();
        let mut f = HistoryFilter { limit: 1, ..base.clone() };
        loop {
            let page = s.process_events(&f).await.unwrap();
            seen.extend(page.items.iter().map(|e| e.pid));
            match page.next {
                Some(n) => f.after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, [22, 20, 20, 10]);
        let e =
            s.process_events(&HistoryFilter { after: Some("nonsense".into()), ..base }).await.unwrap_err();
        assert!(matches!(e, StoreError::Query(ref m) if m.contains("cursor")), "{e}");
    }

    /// Pages of a listing while the state changes between them: every row that stays is on
    /// exactly one page.
    #[tokio::test]
    async fn every_row_that_stays_is_on_exactly_one_page_while_the_state_changes() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        s.tx(|tx| {
            for pid in 100..200 {
                tx.execute(
                    "INSERT INTO processes (host_id, pid, ppid, name, uid, start_time, cmdline) VALUES (?1, ?2, 1, 'p', 0, '2026-01-01T00:00:00.000Z', '[]')",
                    params![1 + pid % 2, pid],
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
        let mut seen = Vec::new();
        let mut f = all(7);
        let mut round = 0u32;
        loop {
            let page = s.list_processes(&f).await.unwrap();
            assert!(page.items.len() <= 7);
            seen.extend(page.items.iter().map(|l| (l.host_id, l.item.pid)));
            // Between pages: a process of each host ends and a new one starts.
            round += 1;
            s.tx(move |tx| {
                tx.execute("DELETE FROM processes WHERE pid = ?1", params![300 + round - 1])?;
                tx.execute(
                    "INSERT INTO processes (host_id, pid, ppid, name, uid, start_time, cmdline) VALUES (?1, ?2, 1, 'n', 0, '2026-01-01T00:00:00.000Z', '[]')",
                    params![1 + round % 2, 300 + round],
                )?;
                Ok(())
            })
            .await
            .unwrap();
            match page.next {
                Some(n) => f.after = Some(n),
                None => break,
            }
        }
        let stayed: BTreeSet<(i64, u32)> = (100..200)
            .map(|p| (1 + i64::from(p % 2), p))
            .chain([(1, 10), (1, 11), (2, 20), (2, 21)])
            .collect();
        for key in &stayed {
            assert_eq!(seen.iter().filter(|k| *k == key).count(), 1, "{key:?} not on exactly one page");
        }
        let unique: BTreeSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "a row twice");
        assert!(!seen.iter().any(|(h, _)| *h == 3), "a retired host's process");
    }

    #[tokio::test]
    async fn findings_come_most_severe_first_and_filter_by_severity_workload_and_time() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        let ids = |f: FindingFilter| {
            let s = s.clone();
            async move { s.list_findings(&f).await.unwrap().items.into_iter().map(|f| f.id).collect::<Vec<_>>() }
        };
        // Critical, then high by last seen (newest first), then medium, then low.
        assert_eq!(ids(FindingFilter::default()).await, [2, 4, 3, 1, 5]);
        let sev = Some(hostwatch_proto::v1::Severity::High);
        assert_eq!(ids(FindingFilter { severity: sev, ..Default::default() }).await, [2, 4, 3]);
        assert_eq!(ids(FindingFilter { workload: Some("db".into()), ..Default::default() }).await, [4, 3, 5]);
        let since = parse_ts("2026-03-01T09:30:00.000Z").unwrap();
        assert_eq!(ids(FindingFilter { since: Some(since), ..Default::default() }).await, [4, 3, 5]);
        // Paged two at a time through the cursors the pages give; the last page says it is.
        let mut seen = Vec::new();
        let mut f = FindingFilter { limit: Some(2), ..Default::default() };
        let mut pages = 0;
        loop {
            let page = s.list_findings(&f).await.unwrap();
            pages += 1;
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|f| f.id));
            match page.next {
                Some(n) => f.after = Some(n),
                None => break,
            }
        }
        assert_eq!((seen, pages), (vec![2, 4, 3, 1, 5], 3));
    }

    /// The incident questions are answered from indexes, not by reading every host's rows.
    #[tokio::test]
    async fn incident_questions_use_their_indexes() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        let plan = |sql: &'static str| {
            let s = s.clone();
            async move {
                s.read(move |tx| {
                    let mut stmt = tx.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let rows: Vec<String> =
                        stmt.query_map([], |r| r.get::<_, String>(3))?.collect::<rusqlite::Result<_>>()?;
                    Ok(rows.join(" | "))
                })
                .await
                .unwrap()
            }
        };
        for (sql, index) in [
            ("SELECT * FROM processes WHERE sha256 = 'x'", "processes_sha256"),
            ("SELECT * FROM processes WHERE exe GLOB '/tmp/*'", "processes_exe"),
            ("SELECT * FROM listeners WHERE port = 22 AND address = '0.0.0.0'", "listeners_port"),
            (
                "SELECT * FROM connections WHERE remote_key BETWEEN cidr_first('10.0.0.0/8') AND cidr_last('10.0.0.0/8')",
                "connections_remote",
            ),
            (
                "SELECT * FROM process_events WHERE kind = 'exec' AND sha256 = 'x' ORDER BY at DESC",
                "process_events_sha256",
            ),
            (
                "SELECT * FROM socket_events WHERE kind = 'open' AND remote_key BETWEEN cidr_first('10.1.0.0/16') AND cidr_last('10.1.0.0/16')",
                "socket_events_remote",
            ),
            ("SELECT * FROM socket_events WHERE at >= '2026-01-01' ORDER BY at DESC", "socket_events_at"),
        ] {
            let p = plan(sql).await;
            assert!(p.contains(index), "{sql}: {p}");
        }
    }
}
