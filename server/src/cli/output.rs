//! Listings as a table for people, or JSON (an array of objects) or CSV for scripts.
//!
//! Table cells are made safe for a terminal: agents report process names and command lines, and a
//! name with escape sequences in it must not be able to rewrite the screen of whoever lists it.

use std::io::Write;

use comfy_table::{ContentArrangement, Table, presets};
use hostwatch_proto::v1 as proto;
use serde::Serialize;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Csv,
}

/// What a cell is for: a terminal (short, escaped) or a file (complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Table,
    Csv,
}

/// A row type of a listing.
pub trait Tabular {
    /// Column names, as the JSON fields are named.
    fn columns() -> Vec<&'static str>;
    fn cells(&self, style: Style) -> Vec<String>;
}

/// An item with its host: the host's columns first.
impl<T: Tabular> Tabular for proto::Located<T> {
    fn columns() -> Vec<&'static str> {
        let mut c = vec!["host_id", "hostname"];
        c.extend(T::columns());
        c
    }
    fn cells(&self, style: Style) -> Vec<String> {
        let mut c = vec![self.host_id.to_string(), text(&self.hostname, style, 30)];
        c.extend(self.item.cells(style));
        c
    }
}

/// Prints `items` to stdout in `format`.
pub fn print<T: Tabular + Serialize>(items: &[T], format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return write_out(|out| json(items).map_err(std::io::Error::from).and_then(|j| writeln!(out, "{j}")))
            .map(drop);
    }
    let style = if format == OutputFormat::Csv { Style::Csv } else { Style::Table };
    let header = T::columns().iter().map(|c| c.to_string()).collect();
    grid(header, items.iter().map(|i| i.cells(style)), format)
}

/// A listing printed page by page as it arrives: JSON (one array) and CSV rows are written at
/// once, so a fleet-wide listing never sits whole in memory; a table, whose columns are as wide
/// as their widest cell, is written at the end.
pub struct Stream<T> {
    format: OutputFormat,
    rows: usize,
    table: Vec<Vec<String>>,
    /// stdout went away (`| head`): nothing more is written, and the listing may stop.
    pub closed: bool,
    kind: std::marker::PhantomData<T>,
}

impl<T: Tabular + Serialize> Stream<T> {
    pub fn new(format: OutputFormat) -> Stream<T> {
        Stream { format, rows: 0, table: Vec::new(), closed: false, kind: std::marker::PhantomData }
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    fn write(
        &mut self,
        f: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        if !self.closed {
            self.closed = write_out(f)?;
        }
        Ok(())
    }

    pub fn push(&mut self, items: &[T]) -> anyhow::Result<()> {
        for item in items {
            let first = self.rows == 0;
            self.rows += 1;
            match self.format {
                OutputFormat::Json => {
                    let j = json(item)?;
                    self.write(|out| write!(out, "{}{j}", if first { "[\n" } else { ",\n" }))?;
                }
                OutputFormat::Csv => {
                    let mut record = Vec::new();
                    let mut w = csv::Writer::from_writer(&mut record);
                    if first {
                        w.write_record(T::columns())?;
                    }
                    w.write_record(item.cells(Style::Csv))?;
                    drop(w);
                    self.write(|out| out.write_all(&record))?;
                }
                OutputFormat::Table => self.table.push(item.cells(Style::Table)),
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        match self.format {
            OutputFormat::Json if self.rows == 0 => self.write(|out| writeln!(out, "[]")),
            OutputFormat::Json => self.write(|out| writeln!(out, "\n]")),
            OutputFormat::Csv if self.rows == 0 => {
                let header = T::columns().join(",");
                self.write(|out| writeln!(out, "{header}"))
            }
            OutputFormat::Csv => Ok(()),
            OutputFormat::Table => {
                let header = T::columns().iter().map(|c| c.to_string()).collect();
                grid(header, std::mem::take(&mut self.table).into_iter(), OutputFormat::Table)
            }
        }
    }
}

/// Prints a query's answer to stdout in `format`: JSON as an array of objects (column to value),
/// CSV with its header, a table for people (cells made safe and cut).
pub fn print_rows(
    columns: &[String],
    rows: &[Vec<serde_json::Value>],
    format: OutputFormat,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        let objects: Vec<serde_json::Map<String, serde_json::Value>> =
            rows.iter().map(|r| columns.iter().cloned().zip(r.iter().cloned()).collect()).collect();
        return write_out(|out| {
            json(&objects).map_err(std::io::Error::from).and_then(|j| writeln!(out, "{j}"))
        })
        .map(drop);
    }
    let style = if format == OutputFormat::Csv { Style::Csv } else { Style::Table };
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => text(s, style, 80),
        other => text(&other.to_string(), style, 80),
    };
    grid(columns.to_vec(), rows.iter().map(|r| r.iter().map(cell).collect()), format)
}

/// A header and rows of cells as CSV or a table.
fn grid(
    header: Vec<String>,
    rows: impl Iterator<Item = Vec<String>>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    write_out(|out| match format {
        OutputFormat::Csv | OutputFormat::Json => {
            let mut w = csv::Writer::from_writer(out);
            std::iter::once(header)
                .chain(rows)
                .try_for_each(|r| w.write_record(r))
                .map_err(std::io::Error::other)
                .and_then(|()| w.flush())
        }
        OutputFormat::Table => {
            let mut t = Table::new();
            t.load_style(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
            t.set_header(header.iter().map(|c| c.to_uppercase().replace('_', " ")));
            for r in rows {
                t.add_row(r);
            }
            writeln!(
                out,
                "{}",
                t.lines()
                    .map(|l| l.strip_prefix(' ').unwrap_or(&l).trim_end().to_owned())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }
    })
    .map(drop)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error: whether it did.
fn write_out(
    f: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
) -> anyhow::Result<bool> {
    match f(&mut std::io::stdout().lock()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        other => other.map(|()| false).map_err(Into::into),
    }
}

/// `value` as pretty JSON with every character a terminal could act on escaped: serde_json
/// escapes C0 controls only, so DEL, C1 controls (U+009B is a CSI on many terminals) and
/// invisible characters are written as `\uXXXX` too. They can only occur inside strings (JSON's
/// own syntax is ASCII), where the escape means the same character.
pub fn json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let raw = serde_json::to_string_pretty(value)?;
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if (c.is_control() && u32::from(c) >= 0x7f) || proto::invisible(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// A string as a terminal may show it: control and invisible characters escaped, and cut to
/// `max` characters.
pub fn safe(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() || proto::invisible(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn when(t: Option<OffsetDateTime>, style: Style) -> String {
    match (t, style) {
        (None, _) => String::new(),
        (Some(t), Style::Csv) => proto::timestamp::format(t),
        (Some(t), Style::Table) => proto::timestamp::format(t).replace('T', " ").chars().take(19).collect(),
    }
}

fn text(s: &str, style: Style, max: usize) -> String {
    match style {
        Style::Csv => s.to_owned(),
        Style::Table => safe(s, max),
    }
}

fn tags(t: &std::collections::BTreeMap<String, String>) -> String {
    t.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

impl Tabular for proto::Host {
    fn columns() -> Vec<&'static str> {
        vec![
            "id",
            "hostname",
            "instance",
            "workload",
            "tags",
            "status",
            "coverage",
            "last_seen",
            "agent_version",
            "open_findings",
        ]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        let coverage = match self.coverage.state {
            proto::CoverageState::Full => "full".to_owned(),
            proto::CoverageState::Degraded => format!("degraded: {}", self.coverage.why.join("; ")),
        };
        vec![
            self.id.to_string(),
            text(&self.hostname, style, 40),
            // Provider, instance and region: what a cloud console is searched by.
            text(
                &self.cloud.as_ref().map_or_else(String::new, |c| {
                    format!("{} {} {}", c.provider.as_str(), c.instance_id, c.region.as_deref().unwrap_or(""))
                        .trim_end()
                        .to_owned()
                }),
                style,
                48,
            ),
            text(self.workload.as_deref().unwrap_or("-"), style, 30),
            text(&tags(&self.tags), style, 40),
            self.status.as_str().to_owned(),
            text(&coverage, style, 60),
            when(self.last_seen, style),
            text(&self.agent_version, style, 20),
            self.open_findings.to_string(),
        ]
    }
}

impl Tabular for proto::TokenInfo {
    fn columns() -> Vec<&'static str> {
        vec!["id", "name", "role", "state", "created_at", "created_by", "expires_at", "revoked_at"]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        vec![
            self.id.to_string(),
            text(&self.name, style, 40),
            self.role.clone(),
            self.state.as_str().to_owned(),
            when(Some(self.created_at), style),
            text(&self.created_by, style, 30),
            when(self.expires_at, style),
            when(self.revoked_at, style),
        ]
    }
}

impl Tabular for proto::SecretInfo {
    fn columns() -> Vec<&'static str> {
        vec!["id", "name", "tags", "state", "hosts", "created_at", "created_by", "expires_at", "revoked_at"]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        vec![
            self.id.to_string(),
            text(&self.name, style, 40),
            text(&tags(&self.tags), style, 50),
            self.state.as_str().to_owned(),
            self.hosts.to_string(),
            when(Some(self.created_at), style),
            text(&self.created_by, style, 30),
            when(self.expires_at, style),
            when(self.revoked_at, style),
        ]
    }
}

impl Tabular for proto::AuditEntry {
    fn columns() -> Vec<&'static str> {
        vec!["id", "at", "actor", "action", "target", "detail"]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        // Details hold what agents and people wrote (hostnames, notes): escaped like any text.
        vec![
            self.id.to_string(),
            when(Some(self.at), style),
            text(&self.actor, style, 40),
            self.action.clone(),
            text(&self.target, style, 30),
            text(&self.detail.to_string(), style, 100),
        ]
    }
}

impl Tabular for proto::Silence {
    fn columns() -> Vec<&'static str> {
        vec!["id", "host_id", "selector", "starts_at", "ends_at", "reason", "created_by"]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        let selector = self
            .selector
            .as_ref()
            .map(|s| s.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
        vec![
            self.id.to_string(),
            self.host_id.map(|h| h.to_string()).unwrap_or_default(),
            text(selector.as_deref().unwrap_or(""), style, 40),
            when(Some(self.starts_at), style),
            when(Some(self.ends_at), style),
            text(&self.reason, style, 60),
            text(&self.created_by, style, 30),
        ]
    }
}

impl Tabular for proto::Finding {
    fn columns() -> Vec<&'static str> {
        vec![
            "id",
            "host_id",
            "hostname",
            "kind",
            "rule",
            "severity",
            "subject",
            "detail",
            "status",
            "occurrences",
            "transient",
            "first_seen",
            "last_seen",
        ]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.host_id.to_string(),
            text(&self.hostname, style, 30),
            text(&self.kind, style, 30),
            text(self.rule.as_deref().unwrap_or(""), style, 30),
            self.severity.as_str().to_owned(),
            text(&self.subject, style, 60),
            match style {
                Style::Csv => self.detail.to_string(),
                Style::Table => safe(&telling(&self.detail), 120),
            },
            self.status.as_str().to_owned(),
            self.occurrences.to_string(),
            self.transient.to_string(),
            when(Some(self.first_seen), style),
            when(Some(self.last_seen), style),
        ]
    }
}

/// A finding's detail as a person triages it: its few telling fields (who, what ran it, what it
/// talked to, what changed) in words, rather than its JSON; the whole of it is in `--output json`.
pub fn telling(detail: &serde_json::Value) -> String {
    let s = |k: &str| {
        detail.get(k).and_then(|v| match v {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let mut parts = Vec::new();
    if let Some(u) = s("user") {
        parts.push(format!("user {u}"));
    }
    if let Some(p) = s("pid") {
        parts.push(format!("pid {p}"));
    }
    if let Some(p) = s("process").or_else(|| (detail.get("cmdline").is_none()).then(|| s("exe")).flatten()) {
        parts.push(format!("by {p}"));
    }
    if let Some(parents) = detail.get("parents").and_then(|p| p.as_array()).filter(|p| !p.is_empty()) {
        let names: Vec<String> = parents
            .iter()
            .take(4)
            .map(|p| p.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_owned())
            .collect();
        let more = if parents.len() > 4 { " < …" } else { "" };
        parts.push(format!("from {}{more}", names.join(" < ")));
    }
    if let Some(r) = s("remote") {
        parts.push(format!("peer {r}"));
    }
    for (key, label) in
        [("change", "change"), ("origin", "origin"), ("package", "package"), ("last_words", "last words")]
    {
        if let Some(v) = s(key) {
            parts.push(format!("{label} {v}"));
        }
    }
    if let Some(c) = s("cmdline") {
        parts.push(format!("cmd {c}"));
    }
    if let Some(w) = s("why") {
        parts.push(w);
    }
    if parts.is_empty() {
        return match detail {
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            other => other.to_string(),
        };
    }
    parts.join("; ")
}

impl Tabular for proto::BaselineSummary {
    fn columns() -> Vec<&'static str> {
        vec!["name", "selector", "include", "rules", "applied_at", "applied_by"]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        vec![
            text(&self.name, style, 40),
            self.selector.as_ref().map_or_else(
                || "(library)".to_owned(),
                |s| {
                    if s.is_empty() { "(every host)".to_owned() } else { text(&tags(s), style, 40) }
                },
            ),
            text(&self.include.join(","), style, 40),
            self.rules.to_string(),
            when(Some(self.applied_at), style),
            text(&self.applied_by, style, 40),
        ]
    }
}

impl Tabular for proto::Process {
    fn columns() -> Vec<&'static str> {
        vec!["pid", "ppid", "user", "name", "cpu%", "rss_mib", "where", "exe", "cmdline"]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        // Flags that deserve a second look ride on the executable, where the eye already is.
        let mut exe = self.exe.clone().unwrap_or_else(|| "?".into());
        for (on, flag) in [
            (self.exe_deleted, " (deleted)"),
            (self.exe_memfd, " [memfd]"),
            (self.exe_writable_dir, " [world-writable dir]"),
        ] {
            if on {
                exe.push_str(flag);
            }
        }
        // A container is the more specific place; a unit otherwise.
        let place = match (&self.container_id, &self.unit) {
            (Some(id), _) => format!("container:{}", id.get(..12).unwrap_or(id)),
            (None, Some(unit)) => unit.clone(),
            (None, None) => String::new(),
        };
        vec![
            self.pid.to_string(),
            self.ppid.to_string(),
            text(&self.user.clone().unwrap_or_else(|| self.uid.to_string()), style, 16),
            text(&self.name, style, 20),
            self.cpu_percent.map(|c| format!("{c:.1}")).unwrap_or_default(),
            self.rss_bytes.map(|b| format!("{:.1}", b as f64 / (1024.0 * 1024.0))).unwrap_or_default(),
            text(&place, style, 32),
            text(&exe, style, 60),
            text(&self.cmdline.join(" "), style, 80),
        ]
    }
}

impl Tabular for proto::Listener {
    fn columns() -> Vec<&'static str> {
        vec!["protocol", "address", "port", "pid", "process", "exe", "auth", "service", "auth_reason"]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        let auth = self.auth.as_ref();
        vec![
            self.protocol.as_str().to_owned(),
            self.address.to_string(),
            self.port.to_string(),
            self.pid.map(|p| p.to_string()).unwrap_or_default(),
            text(self.process.as_deref().unwrap_or(""), style, 20),
            text(self.exe.as_deref().unwrap_or(""), style, 50),
            auth.map(|a| a.verdict.as_str().to_owned()).unwrap_or_default(),
            text(auth.map_or("", |a| a.service.as_str()), style, 16),
            text(auth.map_or("", |a| a.reason.as_str()), style, 80),
        ]
    }
}

impl Tabular for proto::Connection {
    fn columns() -> Vec<&'static str> {
        vec!["protocol", "local", "remote", "direction", "pid", "process", "exe"]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        vec![
            self.protocol.as_str().to_owned(),
            std::net::SocketAddr::new(self.local_address, self.local_port).to_string(),
            std::net::SocketAddr::new(self.remote_address, self.remote_port).to_string(),
            self.direction.as_str().to_owned(),
            self.pid.map(|p| p.to_string()).unwrap_or_default(),
            text(self.process.as_deref().unwrap_or(""), style, 20),
            text(self.exe.as_deref().unwrap_or(""), style, 50),
        ]
    }
}

impl Tabular for proto::ProcessEvent {
    fn columns() -> Vec<&'static str> {
        vec![
            "at",
            "host_id",
            "hostname",
            "kind",
            "pid",
            "ppid",
            "lineage",
            "user",
            "name",
            "exe",
            "cmdline",
            "explained",
        ]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        // Who started it, top first, the nearest four: `sshd > bash`, `… > nginx > sh`.
        let mut lineage: Vec<&str> = self.ancestry.iter().take(4).rev().map(|a| a.name.as_str()).collect();
        if self.ancestry.len() > 4 {
            lineage.insert(0, "…");
        }
        vec![
            when(Some(self.at), style),
            self.host_id.to_string(),
            text(&self.hostname, style, 30),
            self.kind.clone(),
            self.pid.to_string(),
            self.ppid.map(|p| p.to_string()).unwrap_or_default(),
            text(&lineage.join(" > "), style, 60),
            text(&self.user.clone().or(self.uid.map(|u| u.to_string())).unwrap_or_default(), style, 16),
            text(self.name.as_deref().unwrap_or(""), style, 20),
            text(self.exe.as_deref().unwrap_or(""), style, 50),
            text(&self.cmdline.join(" "), style, 80),
            text(self.explained.as_deref().unwrap_or(""), style, 40),
        ]
    }
}

impl Tabular for proto::FileEvent {
    fn columns() -> Vec<&'static str> {
        vec![
            "at",
            "host_id",
            "hostname",
            "change",
            "origin",
            "path",
            "from",
            "old_sha256",
            "new_sha256",
            "package",
        ]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        let c = &self.change;
        let hash = |s: &Option<proto::FileState>| {
            s.as_ref().map(|s| match (&s.sha256, s.metadata_only) {
                (Some(h), _) => h[..h.len().min(16)].to_owned(),
                (None, true) => "(too large)".to_owned(),
                (None, false) => s.kind.as_str().to_owned(),
            })
        };
        let package = c.package.as_ref().map(|p| {
            let v = p.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
            format!("{}{v}{}", p.name, if p.matches { "" } else { " (differs)" })
        });
        vec![
            when(Some(c.at), style),
            self.host_id.to_string(),
            text(&self.hostname, style, 30),
            c.change.as_str().to_owned(),
            c.origin.as_str().to_owned(),
            text(&c.path, style, 60),
            text(c.from_path.as_deref().unwrap_or(""), style, 60),
            hash(&c.old).unwrap_or_default(),
            hash(&c.new).unwrap_or_default(),
            text(package.as_deref().unwrap_or(""), style, 40),
        ]
    }
}

impl Tabular for proto::FileRecord {
    fn columns() -> Vec<&'static str> {
        vec![
            "changed_at",
            "host_id",
            "hostname",
            "path",
            "kind",
            "mode",
            "uid",
            "gid",
            "size",
            "sha256",
            "target",
        ]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        let s = &self.state;
        vec![
            when(Some(self.changed_at), style),
            self.host_id.to_string(),
            text(&self.hostname, style, 30),
            text(&self.path, style, 60),
            s.kind.as_str().to_owned(),
            format!("{:04o}", s.mode),
            s.uid.to_string(),
            s.gid.to_string(),
            s.size.to_string(),
            match (&s.sha256, s.metadata_only) {
                (Some(h), _) => h[..h.len().min(16)].to_owned(),
                (None, true) => "(too large)".to_owned(),
                (None, false) => String::new(),
            },
            text(s.target.as_deref().unwrap_or(""), style, 40),
        ]
    }
}

impl Tabular for proto::SocketEvent {
    fn columns() -> Vec<&'static str> {
        vec![
            "at",
            "host_id",
            "hostname",
            "kind",
            "socket",
            "protocol",
            "local",
            "remote",
            "direction",
            "pid",
            "process",
        ]
    }
    fn cells(&self, style: Style) -> Vec<String> {
        vec![
            when(Some(self.at), style),
            self.host_id.to_string(),
            text(&self.hostname, style, 30),
            self.kind.clone(),
            self.socket.clone(),
            self.protocol.as_str().to_owned(),
            std::net::SocketAddr::new(self.local_address, self.local_port).to_string(),
            match (self.remote_address, self.remote_port) {
                (Some(a), Some(p)) => std::net::SocketAddr::new(a, p).to_string(),
                _ => String::new(),
            },
            self.direction.map(|d| d.as_str().to_owned()).unwrap_or_default(),
            self.pid.map(|p| p.to_string()).unwrap_or_default(),
            text(self.process.as_deref().unwrap_or(""), style, 20),
        ]
    }
}

#[cfg(test)]
mod tests {
    /// A finding's table cell names who and what in words; a detail with none of its fields is
    /// shown as it is.
    #[test]
    fn a_findings_detail_in_a_table_is_its_telling_fields() {
        let d = serde_json::json!({
            "user": "www-data", "pid": 4242, "exe": "/tmp/x", "cmdline": "/tmp/x -o pool:3333",
            "parents": [{"pid": 1, "name": "sh"}, {"pid": 2, "name": "bash"}, {"pid": 3, "name": "sshd"},
                        {"pid": 4, "name": "sshd"}, {"pid": 5, "name": "systemd"}],
            "remote": "203.0.113.7:3333",
        });
        assert_eq!(
            telling(&d),
            "user www-data; pid 4242; from sh < bash < sshd < sshd < …; peer 203.0.113.7:3333; cmd /tmp/x -o pool:3333"
        );
        let socket = serde_json::json!({"process": "nc", "pid": 7, "last_words": ""});
        assert_eq!(telling(&socket), "pid 7; by nc");
        assert_eq!(telling(&serde_json::json!({"count": 3})), r#"{"count":3}"#);
        assert_eq!(telling(&serde_json::json!({})), "");
    }

    use super::*;

    #[test]
    fn terminal_safety() {
        assert_eq!(safe("evil\x1b[2Jname\n", 100), "evil\\u{1b}[2Jname\\n");
        assert_eq!(safe("abcdef", 3), "abc…");
        assert_eq!(safe("sshd\u{202E}gpj.exe", 100), "sshd\\u{202e}gpj.exe");
        assert_eq!(safe("a\u{9b}2Jb\u{7f}", 100), "a\\u{9b}2Jb\\u{7f}");
    }

    #[test]
    fn json_output_escapes_what_a_terminal_would_act_on_and_means_the_same() {
        let names = vec!["csi\u{9b}2J", "bidi\u{202e}exe.sh", "esc\u{1b}]52;c;x\u{7}", "plain ünïcode"];
        let j = json(&names).unwrap();
        assert!(!j.chars().any(|c| proto::invisible(c) || (c.is_control() && c != '\n')), "{j:?}");
        assert!(j.contains("csi\\u009b2J") && j.contains("bidi\\u202eexe.sh"), "{j}");
        assert!(j.contains("plain ünïcode"), "ordinary text stays as it is: {j}");
        let back: Vec<String> = serde_json::from_str(&j).unwrap();
        assert_eq!(back, names);
    }
}
