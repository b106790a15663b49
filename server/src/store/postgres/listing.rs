//! The fleet's listings for people in the PostgreSQL store: current state (`ps`, `ports`,
//! `conns`), findings and history, filtered, sorted and paged in SQL, with the cursors of the
//! SQLite store ([`crate::store::pages`]), so a listing pages alike whatever the store.
//!
//! A glob (`--exe`, `--path`) is matched as the anchored regular expression it means; a CIDR
//! block as INET containment (`<<=`, which the address indexes answer), IPv4 blocks also over the
//! IPv4-mapped IPv6 addresses a dual-stack socket shows, as the SQLite store's keys do.

use std::net::{IpAddr, SocketAddr};

use hostwatch_proto::v1 as proto;
use hostwatch_proto::v1::Located;
use ipnet::IpNet;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::findings::{FINDING_COLUMNS, finding_from_row};
use super::state::{
    CONNECTION_COLUMNS, LISTENER_COLUMNS, PROCESS_COLUMNS, connection_from_row, json_text, listener_from_row,
    process_from_row, u32_of, unbits,
};
use super::{Col, PgStore, error};
use crate::model::{Connection, Finding, Listener, Process, ProcessEvent, SocketEvent};
use crate::store::pages::{
    finding_cursor, findings_cursor, history_cursor, history_page, paged, state_cursor,
};
use crate::store::{
    FindingFilter, HistoryFilter, Page, Result, StateFilter, StoreError, parse_enum, severity_rank,
};

type Param = Box<dyn ToSql + Sync + Send>;

/// A WHERE clause under construction, with its numbered arguments.
struct Where {
    sql: String,
    args: Vec<Param>,
}

impl Where {
    fn new() -> Where {
        Where { sql: String::from(" WHERE TRUE"), args: Vec::new() }
    }

    /// Adds `AND <cond>`, where each `?` in `cond` takes the next of `args`.
    fn and(&mut self, cond: &str, args: impl IntoIterator<Item = Param>) {
        let mut args = args.into_iter();
        self.sql.push_str(" AND ");
        for part in cond.split_inclusive('?') {
            match part.strip_suffix('?') {
                Some(before) => {
                    self.args.push(args.next().unwrap_or_else(|| Box::new(None::<String>)));
                    self.sql.push_str(&format!("{before}${}", self.args.len()));
                }
                None => self.sql.push_str(part),
            }
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.args.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}

fn p<T: ToSql + Sync + Send + 'static>(v: T) -> Param {
    Box::new(v)
}

/// A glob as the anchored POSIX regular expression that matches what it matches: `*` any
/// characters (`/` too), `?` one, `[...]` a class (`[^...]` its complement); everything else
/// literally.
pub(super) fn glob_regex(glob: &str) -> String {
    let chars: Vec<char> = glob.chars().collect();
    let mut out = String::from("^");
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            // A class to its closing bracket (not empty); one never closed is a literal bracket.
            '[' if chars[i + 1..].iter().skip(1).any(|&c| c == ']') => {
                let end = i + 2 + chars[i + 2..].iter().position(|&c| c == ']').unwrap_or(0);
                out.push('[');
                for &c in &chars[i + 1..end] {
                    if c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push(']');
                i = end;
            }
            c if "\\.^$|()+{}[]".contains(c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
        i += 1;
    }
    out.push('$');
    out
}

/// The condition that keeps rows whose `column` is in `net`, as the SQLite store's keys match
/// (an IPv4 block takes the IPv4-mapped addresses too, and the reverse).
fn in_block(w: &mut Where, column: &str, net: &IpNet) {
    let mut blocks = vec![*net];
    match net {
        IpNet::V4(v4) => {
            let mapped = v4.network().to_ipv6_mapped();
            if let Ok(n) = ipnet::Ipv6Net::new(mapped, v4.prefix_len() + 96) {
                blocks.push(IpNet::V6(n));
            }
        }
        IpNet::V6(v6) => {
            let mapped_all: ipnet::Ipv6Net = "::ffff:0:0/96".parse().unwrap_or(*v6);
            if v6.contains(&mapped_all) {
                blocks.push("0.0.0.0/0".parse().unwrap_or(*net));
            } else if mapped_all.contains(v6)
                && let Some(v4) = v6.network().to_ipv4_mapped()
                && let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len().saturating_sub(96))
            {
                blocks.push(IpNet::V4(n));
            }
        }
    }
    let conds: Vec<String> = blocks.iter().map(|_| format!("{column} <<= ?::text::inet")).collect();
    w.and(&format!("({})", conds.join(" OR ")), blocks.iter().map(|b| p(b.to_string())));
}

/// The filters every state listing shares, over the table aliased `t` joined to hosts `h`;
/// `key`: the listing's order (its columns of `t`).
fn state_where(f: &StateFilter, key: &[&str]) -> Result<Where> {
    let mut w = Where::new();
    w.and("h.retired_at IS NULL", []);
    if let Some(h) = f.host_id {
        w.and("t.host_id = ?", [p(h)]);
    }
    if let Some(e) = &f.exe {
        w.and("t.exe ~ ?", [p(glob_regex(e))]);
    }
    if let Some(proto) = f.protocol {
        w.and("t.protocol = ?", [p(proto.as_str())]);
    }
    if let Some(c) = &f.after {
        let values = state_cursor(c, key.len())?;
        let cols = key.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ");
        let marks = vec!["?::bigint"; key.len()].join(", ");
        w.and(&format!("({cols}) > ({marks})"), values.into_iter().map(p));
    }
    Ok(w)
}

/// A finding's severity as a number that sorts ([`severity_rank`]'s), in SQL.
const SEVERITY_RANK: &str = "(CASE f.severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3 \
     WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END)";

/// Which history table a filter is applied to: what each can be filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum History {
    Processes,
    Sockets,
    Files,
}

/// The WHERE, ORDER and LIMIT of a history query over the table aliased `e`, newest first.
fn history_where(f: &HistoryFilter, table: History) -> Result<Where> {
    let mut w = Where::new();
    if let Some(h) = f.host_id {
        w.and("e.host_id = ?", [p(h)]);
    }
    if let Some(since) = f.since {
        w.and("e.at >= ?", [p(super::ms(since))]);
    }
    if let Some(c) = &f.after {
        let (at, id) = history_cursor(c)?;
        w.and("(e.at, e.id) < (?, ?)", [p(super::ms(at)), p(id)]);
    }
    match table {
        History::Processes => {
            if let Some(n) = &f.name {
                w.and("e.name = ?", [p(n.clone())]);
            }
            if let Some(s) = &f.sha256 {
                w.and("e.kind = 'exec' AND e.sha256 = ?", [p(s.to_ascii_lowercase())]);
            }
        }
        History::Sockets => {
            if let Some(net) = &f.remote {
                w.and("e.kind = 'open'", []);
                in_block(&mut w, "e.remote_address", net);
            }
            if let Some(port) = f.port {
                let port = i32::from(port);
                w.and(
                    "(e.remote_port = ? OR (e.socket = 'listener' AND e.local_port = ?))",
                    [p(port), p(port)],
                );
            }
        }
        History::Files => {
            if let Some(path) = &f.path {
                w.and("e.path ~ ?", [p(glob_regex(path))]);
            }
        }
    }
    if let Some(e) = &f.exe
        && table != History::Files
    {
        w.and("e.exe ~ ?", [p(glob_regex(e))]);
    }
    w.sql.push_str(&format!(" ORDER BY e.at DESC, e.id DESC LIMIT {}", u64::from(f.limit.max(1)) + 1));
    Ok(w)
}

fn port(r: &Row, i: usize) -> Result<u16> {
    let v: i32 = r.col(i)?;
    u16::try_from(v).map_err(|_| StoreError::Corrupt(format!("port {v} is out of range")))
}

impl PgStore {
    /// Rows of `sql` with the arguments of `w`.
    async fn rows(&self, sql: &str, w: &Where) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(error)?;
        client.query(&stmt, &w.params()).await.map_err(error)
    }

    /// Findings, most severe first, then the most recently seen, then the newest; cursor
    /// `RANK/LAST_SEEN/ID`. Without a limit, every one.
    pub async fn list_findings(&self, f: &FindingFilter) -> Result<Page<Finding>> {
        let mut w = Where::new();
        if let Some(h) = f.host_id {
            w.and("f.host_id = ?", [p(h)]);
        }
        if let Some(k) = f.kind {
            w.and("f.kind = ?", [p(k.as_str())]);
        }
        if !f.statuses.is_empty() {
            let statuses: Vec<&'static str> = f.statuses.iter().map(|s| s.as_str()).collect();
            w.and("f.status = ANY(?)", [p(statuses)]);
        }
        if let Some(sev) = f.severity {
            w.and(&format!("{SEVERITY_RANK} >= ?"), [p(i32::from(severity_rank(sev)))]);
        }
        if let Some(workload) = &f.workload {
            w.and("h.workload = ?", [p(workload.clone())]);
        }
        if let Some(since) = f.since {
            w.and("f.last_seen >= ?", [p(super::ms(since))]);
        }
        if let Some(c) = &f.after {
            let (rank, seen, id) = findings_cursor(c)?;
            let rank = i32::try_from(rank).map_err(|_| crate::store::pages::bad_cursor(c))?;
            w.and(
                &format!("({SEVERITY_RANK}, f.last_seen, f.id) < (?, ?, ?)"),
                [p(rank), p(super::ms(seen)), p(id)],
            );
        }
        let limit = f.limit.map(|l| format!(" LIMIT {}", u64::from(l) + 1)).unwrap_or_default();
        let sql = format!(
            "SELECT {FINDING_COLUMNS} FROM findings f JOIN hosts h ON h.id = f.host_id{} \
             ORDER BY {SEVERITY_RANK} DESC, f.last_seen DESC, f.id DESC{limit}",
            w.sql
        );
        let out =
            self.rows(&sql, &w).await?.iter().map(|r| finding_from_row(r, 0)).collect::<Result<Vec<_>>>()?;
        Ok(match f.limit {
            Some(limit) => paged(out, limit, finding_cursor),
            None => Page { items: out, next: None },
        })
    }

    /// Running processes of the fleet, by host and pid.
    pub async fn list_processes(&self, f: &StateFilter) -> Result<Page<Located<Process>>> {
        let mut w = state_where(f, &["host_id", "pid"])?;
        if let Some(n) = &f.name {
            w.and("t.name = ?", [p(n.clone())]);
        }
        if let Some(u) = &f.user {
            match u.parse::<i64>() {
                Ok(uid) => {
                    w.and("(t.\"user\" = ? OR (t.\"user\" IS NULL AND t.uid = ?))", [p(u.clone()), p(uid)])
                }
                Err(_) => w.and("t.\"user\" = ?", [p(u.clone())]),
            }
        }
        if let Some(s) = &f.sha256 {
            w.and("t.sha256 = ?", [p(s.to_ascii_lowercase())]);
        }
        let columns = PROCESS_COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ");
        let n = PROCESS_COLUMNS.split(", ").count();
        let sql = format!(
            "SELECT {columns}, t.host_id, h.hostname FROM processes t JOIN hosts h ON h.id = t.host_id{} \
             ORDER BY t.host_id, t.pid LIMIT {}",
            w.sql,
            u64::from(f.limit) + 1
        );
        let mut out = Vec::new();
        for r in self.rows(&sql, &w).await? {
            let (item, _) = process_from_row(&r, 0)?;
            out.push(Located { host_id: r.col(n)?, hostname: r.col(n + 1)?, item });
        }
        Ok(paged(out, f.limit, |l| format!("{}.{}", l.host_id, l.item.pid)))
    }

    /// Listening sockets of the fleet, in the order of their key index (host, port, id).
    pub async fn list_listeners(&self, f: &StateFilter) -> Result<Page<Located<Listener>>> {
        let mut w = state_where(f, LISTENER_KEY)?;
        if let Some(port) = f.port {
            w.and("t.port = ?", [p(i32::from(port))]);
        }
        if let Some(a) = f.address {
            w.and("t.address = ?", [p(a)]);
        }
        if f.unauthenticated {
            w.and("t.auth_verdict IN ('unauthenticated', 'local_only')", []);
        }
        self.sockets("listeners", LISTENER_COLUMNS, LISTENER_KEY, w, f.limit, |r| Ok(listener_from_row(r)?.0))
            .await
    }

    /// Connections of the fleet, in the order of their key index (host, ports, id).
    pub async fn list_connections(&self, f: &StateFilter) -> Result<Page<Located<Connection>>> {
        let mut w = state_where(f, CONNECTION_KEY)?;
        if let Some(port) = f.port {
            w.and("t.remote_port = ?", [p(i32::from(port))]);
        }
        if let Some(d) = f.direction {
            w.and("t.direction = ?", [p(d.as_str())]);
        }
        if let Some(net) = &f.remote {
            in_block(&mut w, "t.remote_address", net);
        }
        self.sockets("connections", CONNECTION_COLUMNS, CONNECTION_KEY, w, f.limit, |r| {
            Ok(connection_from_row(r)?.0)
        })
        .await
    }

    /// Listeners and connections in the order of `key`, with the cursor of that order.
    async fn sockets<T>(
        &self,
        table: &str,
        columns: &str,
        key: &[&str],
        w: Where,
        limit: u32,
        from_row: fn(&Row) -> Result<T>,
    ) -> Result<Page<Located<T>>> {
        let n = columns.split(", ").count();
        let columns = columns.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ");
        let order = key.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ");
        let keys = key.iter().map(|k| format!("t.{k}::bigint")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT {columns}, h.hostname, {keys} FROM {table} t JOIN hosts h ON h.id = t.host_id{} \
             ORDER BY {order} LIMIT {}",
            w.sql,
            u64::from(limit) + 1
        );
        let mut out = Vec::new();
        for r in self.rows(&sql, &w).await? {
            let values = (0..key.len()).map(|i| r.col::<i64>(n + 1 + i)).collect::<Result<Vec<_>>>()?;
            let located = Located { host_id: values[0], hostname: r.col(n)?, item: from_row(&r)? };
            out.push((values, located));
        }
        let page =
            paged(out, limit, |(values, _)| values.iter().map(i64::to_string).collect::<Vec<_>>().join("."));
        Ok(Page { items: page.items.into_iter().map(|(_, l)| l).collect(), next: page.next })
    }

    /// Processes that started and ended, newest first.
    pub async fn process_events(&self, f: &HistoryFilter) -> Result<Page<ProcessEvent>> {
        let w = history_where(f, History::Processes)?;
        let sql = format!(
            "SELECT e.id, e.host_id, h.hostname, e.at, e.kind, e.pid, e.ppid, e.name, e.exe, e.cmdline, e.\"user\", \
             e.uid, e.start_time, e.login_uid, e.session_id, e.ancestry, e.explained \
             FROM process_events e JOIN hosts h ON h.id = e.host_id{}",
            w.sql
        );
        let mut out = Vec::new();
        for r in self.rows(&sql, &w).await? {
            let kind: &str = r.col(4)?;
            let cmdline: Option<String> = r.col(9)?;
            let ancestry: Option<String> = r.col(15)?;
            out.push(ProcessEvent {
                id: r.col(0)?,
                host_id: r.col(1)?,
                hostname: r.col(2)?,
                at: r.col(3)?,
                kind: if kind == "exec" { "exec" } else { "exit" },
                pid: u32_of(r.col(5)?, "pid")?,
                ppid: r.col::<Option<i64>>(6)?.map(|v| u32_of(v, "ppid")).transpose()?,
                name: r.col(7)?,
                exe: r.col(8)?,
                cmdline: cmdline.map(|c| json_text(&c, "cmdline")).transpose()?.unwrap_or_default(),
                user: r.col(10)?,
                uid: r.col::<Option<i64>>(11)?.map(|v| u32_of(v, "uid")).transpose()?,
                start_time: r.col(12)?,
                login_uid: r.col::<Option<i64>>(13)?.map(|v| u32_of(v, "login_uid")).transpose()?,
                session_id: r.col::<Option<i64>>(14)?.map(|v| u32_of(v, "session_id")).transpose()?,
                ancestry: ancestry.map(|a| json_text(&a, "ancestry")).transpose()?.unwrap_or_default(),
                explained: r.col(16)?,
            });
        }
        Ok(history_page(out, f.limit, |e| (e.id, e.at)))
    }

    /// Listeners and connections that opened and closed, newest first.
    pub async fn socket_events(&self, f: &HistoryFilter) -> Result<Page<SocketEvent>> {
        let w = history_where(f, History::Sockets)?;
        let sql = format!(
            "SELECT e.id, e.host_id, h.hostname, e.at, e.kind, e.socket, e.protocol, e.local_address, e.local_port, \
             e.remote_address, e.remote_port, e.direction, e.pid, e.process, e.exe, e.netns \
             FROM socket_events e JOIN hosts h ON h.id = e.host_id{}",
            w.sql
        );
        let mut out = Vec::new();
        for r in self.rows(&sql, &w).await? {
            let (kind, socket): (&str, &str) = (r.col(4)?, r.col(5)?);
            let remote = match r.col::<Option<IpAddr>>(9)? {
                Some(ip) => Some(SocketAddr::new(ip, port(&r, 10)?)),
                None => None,
            };
            out.push(SocketEvent {
                id: r.col(0)?,
                host_id: r.col(1)?,
                hostname: r.col(2)?,
                at: r.col(3)?,
                kind: if kind == "open" { "open" } else { "close" },
                socket: if socket == "listener" { "listener" } else { "connection" },
                protocol: parse_enum(r.col::<&str>(6)?)?,
                local: SocketAddr::new(r.col(7)?, port(&r, 8)?),
                remote,
                direction: r.col::<Option<&str>>(11)?.map(parse_enum).transpose()?,
                pid: r.col::<Option<i64>>(12)?.map(|v| u32_of(v, "pid")).transpose()?,
                process: r.col(13)?,
                exe: r.col(14)?,
                netns: r.col::<Option<i64>>(15)?.map(unbits),
            });
        }
        Ok(history_page(out, f.limit, |e| (e.id, e.at)))
    }

    /// Changes to watched files, newest first.
    pub async fn file_events(&self, f: &HistoryFilter) -> Result<Page<proto::FileEvent>> {
        let w = history_where(f, History::Files)?;
        let sql = format!(
            "SELECT e.id, e.host_id, h.hostname, e.detail, e.at FROM file_changes e JOIN hosts h ON h.id = e.host_id{}",
            w.sql
        );
        let mut out = Vec::new();
        for r in self.rows(&sql, &w).await? {
            let id: i64 = r.col(0)?;
            let change: proto::FileChange = serde_json::from_str(r.col::<&str>(3)?)
                .map_err(|e| StoreError::Corrupt(format!("file change {id}: {e}")))?;
            out.push((r.col(4)?, proto::FileEvent { id, host_id: r.col(1)?, hostname: r.col(2)?, change }));
        }
        let page = history_page(out, f.limit, |(at, e)| (e.id, *at));
        Ok(Page { items: page.items.into_iter().map(|(_, e)| e).collect(), next: page.next })
    }

    /// The latest state of each changed watched path, most recently changed first.
    pub async fn current_files(&self, f: &HistoryFilter) -> Result<Page<proto::FileRecord>> {
        let w = history_where(f, History::Files)?;
        // As a history table (alias `e`, time `at`, key `id`), so that the filters and pages
        // are the same.
        let sql = format!(
            "SELECT e.host_id, h.hostname, e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime, e.sha256, e.target, \
             e.metadata_only, e.at, e.inode, e.id FROM (SELECT *, changed_at AS at FROM files) e \
             JOIN hosts h ON h.id = e.host_id{}",
            w.sql
        );
        let mut out = Vec::new();
        for r in self.rows(&sql, &w).await? {
            let id: i64 = r.col(14)?;
            out.push((
                id,
                proto::FileRecord {
                    host_id: r.col(0)?,
                    hostname: r.col(1)?,
                    path: r.col(2)?,
                    state: proto::FileState {
                        kind: parse_enum(r.col::<&str>(3)?)?,
                        mode: u32_of(r.col(4)?, "mode")?,
                        uid: u32_of(r.col(5)?, "uid")?,
                        gid: u32_of(r.col(6)?, "gid")?,
                        size: unbits(r.col(7)?),
                        mtime: r.col(8)?,
                        inode: unbits(r.col(13)?),
                        sha256: r.col(9)?,
                        metadata_only: r.col(11)?,
                        target: r.col(10)?,
                    },
                    changed_at: r.col(12)?,
                },
            ));
        }
        let page = history_page(out, f.limit, |(id, r)| (*id, r.changed_at));
        Ok(Page { items: page.items.into_iter().map(|(_, r)| r).collect(), next: page.next })
    }
}

/// The order of the listeners' listing: their key index's.
const LISTENER_KEY: &[&str] = &["host_id", "port", "id"];
/// The order of the connections' listing: their key index's.
const CONNECTION_KEY: &[&str] = &["host_id", "local_port", "remote_port", "id"];

#[cfg(test)]
mod tests {
    use super::glob_regex;

    /// What each glob means is checked against SQLite's GLOB through both stores (the stores'
    /// end-to-end tests); here, the expressions themselves.
    #[test]
    fn a_glob_is_the_anchored_expression_it_means() {
        assert_eq!(glob_regex("/tmp/*"), "^/tmp/.*$");
        assert_eq!(glob_regex("*/x?.py"), "^.*/x.\\.py$");
        assert_eq!(glob_regex("a[0-9]b"), "^a[0-9]b$");
        assert_eq!(glob_regex("a[^x]"), "^a[^x]$");
        assert_eq!(glob_regex("a[]x]"), "^a[]x]$");
        assert_eq!(glob_regex("a(b)+c$"), "^a\\(b\\)\\+c\\$$");
        assert_eq!(glob_regex("a[b"), "^a\\[b$");
        assert_eq!(glob_regex("a[]"), "^a\\[\\]$");
    }
}
