//! Baseline files, from TOML text to [`Baseline`], with located errors.

use std::collections::BTreeMap;
use std::net::IpAddr;

use globset::GlobBuilder;
use hostwatch_agent::shared::config::file::{FileError, from_toml};
use hostwatch_proto::v1::{Protocol, check_tags, limits};
use serde::Deserialize;
use toml::Spanned;

use hostwatch_agent::shared::config::file::line_column;
use hostwatch_proto::v1::{Direction, FindingKind, Severity};
use ipnet::IpNet;
use time::OffsetDateTime;

use super::{
    Baseline, BuiltinSetting, ConnectRule, FileRule, ListenRule, Pattern, PeerSettings, ProcessRule,
    RuleOrigin, SessionRule, Until,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaseline {
    /// Unique name; the store's key and what `include` refers to.
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    /// Host tags to select; absent: a library for others to include.
    #[serde(default)]
    selector: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    process: Vec<RawProcess>,
    #[serde(default)]
    listen: Vec<RawListen>,
    #[serde(default)]
    file: Vec<RawFile>,
    #[serde(default)]
    connect: Vec<RawConnect>,
    /// Interactive login sessions the workload expects, by who logged in.
    #[serde(default)]
    session: Vec<RawSession>,
    /// Built-in rules turned off or re-graded for this workload.
    #[serde(default)]
    builtin: Vec<RawBuiltin>,
    /// Severity per finding kind, for this workload.
    #[serde(default)]
    severity: BTreeMap<Spanned<String>, Spanned<String>>,
    /// When an item rare among the workload's hosts is an outlier.
    #[serde(default)]
    peers: Option<Spanned<RawPeers>>,
    /// `allow` (the default: a change whose content a package installed is kept as an info
    /// finding) or `deny` (it is a finding like any other).
    #[serde(default)]
    package_changes: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Spanned<String>,
    change: Spanned<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    until: Option<Spanned<RawDate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    user: Spanned<OneOrMany>,
    /// Networks the login may come from (its sshd's peer); none: from anywhere.
    #[serde(default)]
    from: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    until: Option<Spanned<RawDate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnect {
    remote: Spanned<OneOrMany>,
    #[serde(default)]
    port: Option<Spanned<RawPort>>,
    #[serde(default)]
    protocol: Option<Protocol>,
    #[serde(default)]
    process: Option<Spanned<String>>,
    #[serde(default)]
    ancestor: Option<Spanned<String>>,
    #[serde(default)]
    direction: Option<Spanned<String>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    until: Option<Spanned<RawDate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuiltin {
    rule: Spanned<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    severity: Option<Spanned<String>>,
    #[serde(default)]
    reason: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeers {
    #[serde(default)]
    min_hosts: Option<u32>,
    #[serde(default)]
    rare_below_percent: Option<f64>,
    #[serde(default)]
    enabled: Option<bool>,
}

/// `until`: a TOML date or date-time (`until = 2026-12-31`), or the same as a string.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a date such as 2026-12-31 or a date-time such as 2026-12-31T18:00:00Z")]
enum RawDate {
    Toml(toml::value::Datetime),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    name: Spanned<String>,
    #[serde(default)]
    exe: Option<Spanned<String>>,
    #[serde(default)]
    user: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    sha256: Vec<Spanned<String>>,
    #[serde(default)]
    count: Option<Spanned<RawCount>>,
    /// Glob over the command line, its arguments joined by spaces.
    #[serde(default)]
    cmdline: Option<Spanned<String>>,
    /// Glob over the parent process's name.
    #[serde(default)]
    parent: Option<Spanned<String>>,
    /// Glob over any ancestor's name or executable.
    #[serde(default)]
    ancestor: Option<Spanned<String>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    until: Option<Spanned<RawDate>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCount {
    #[serde(default)]
    min: Option<u32>,
    #[serde(default)]
    max: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    protocol: Protocol,
    port: Spanned<RawPort>,
    #[serde(default)]
    address: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    process: Option<Spanned<String>>,
    #[serde(default)]
    ancestor: Option<Spanned<String>>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    unauthenticated: Option<Spanned<bool>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    until: Option<Spanned<RawDate>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a port number or a range written as \"8000-8099\"")]
enum RawPort {
    Number(i64),
    Range(String),
}

/// Parses one baseline file. `file` names it in errors.
pub fn parse(file: &str, src: &str) -> Result<Baseline, FileError> {
    if src.len() > limits::MAX_BASELINE_BYTES {
        return Err(FileError::at(
            file,
            src,
            None,
            format!("{} bytes, more than the limit of {}", src.len(), limits::MAX_BASELINE_BYTES),
        ));
    }
    let raw: RawBaseline = from_toml(file, src)?;
    let err = |span: std::ops::Range<usize>, msg: String| FileError::at(file, src, Some(span), msg);
    // An optional glob over names (`*` crosses `/`), refused with where it stands.
    let name_glob = |v: Option<Spanned<String>>| match v {
        Some(g) => glob(g.get_ref(), false).map(Some).map_err(|m| err(g.span(), m)),
        None => Ok(None),
    };

    let name = raw.name.get_ref().clone();
    check_name(&name).map_err(|m| err(raw.name.span(), m))?;
    let selector = match raw.selector {
        Some(sel) => {
            let span = sel.span();
            let sel = sel.into_inner();
            check_tags("selector", &sel).map_err(|e| err(span, e.to_string()))?;
            Some(sel)
        }
        None => None,
    };
    let mut include = Vec::new();
    for inc in raw.include {
        check_name(inc.get_ref()).map_err(|m| err(inc.span(), m))?;
        if inc.get_ref() == &name {
            return Err(err(inc.span(), format!("baseline `{name}` includes itself")));
        }
        include.push(inc.into_inner());
    }

    let origin = |i: usize, span: std::ops::Range<usize>| RuleOrigin {
        baseline: name.clone(),
        index: i + 1,
        line: line_column(src, span.start).0,
    };
    let until = |u: Option<Spanned<RawDate>>| -> Result<Option<Until>, FileError> {
        let Some(u) = u else { return Ok(None) };
        let at = line_column(src, u.span().start);
        let (text, time) = until_time(u.get_ref()).map_err(|m| err(u.span(), m))?;
        Ok(Some(Until { time, text, at }))
    };
    let mut warnings = Vec::new();
    let mut warn = |span: std::ops::Range<usize>, msg: String| {
        warnings.push(FileError::at(file, src, Some(span), format!("warning: {msg}")))
    };

    let mut processes = Vec::new();
    for (i, p) in raw.process.into_iter().enumerate() {
        let origin = origin(i, p.name.span());
        let name_pat = glob(p.name.get_ref(), false).map_err(|m| err(p.name.span(), m))?;
        let exe = match p.exe {
            Some(e) => {
                if !(e.get_ref().starts_with('/') || e.get_ref().starts_with('*')) {
                    return Err(err(
                        e.span(),
                        format!(
                            "exe {:?} must be an absolute path (or a glob starting with / or *)",
                            e.get_ref()
                        ),
                    ));
                }
                if e.get_ref().ends_with('/') {
                    warn(
                        e.span(),
                        format!(
                            "exe {:?} ends with '/': no executable's path does, so it never matches",
                            e.get_ref()
                        ),
                    );
                }
                Some(glob(e.get_ref(), true).map_err(|m| err(e.span(), m))?)
            }
            None => None,
        };
        let users = match p.user {
            Some(u) => {
                let span = u.span();
                let users = u.into_inner().into_vec();
                if users.is_empty() || users.iter().any(|u| u.is_empty()) {
                    return Err(err(span, "user must name at least one user, and no empty names".to_owned()));
                }
                users
            }
            None => Vec::new(),
        };
        let mut sha256: Vec<String> = Vec::new();
        for h in p.sha256 {
            let v = h.get_ref().to_ascii_lowercase();
            if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(
                    h.span(),
                    format!("{:?} is not a SHA-256 (64 hexadecimal digits)", h.get_ref()),
                ));
            }
            if sha256.contains(&v) {
                warn(h.span(), format!("sha256 {v} is listed twice"));
                continue;
            }
            sha256.push(v);
        }
        let cmdline = name_glob(p.cmdline)?;
        let parent = name_glob(p.parent)?;
        let ancestor = name_glob(p.ancestor)?;
        if p.name.get_ref().trim_matches('*').is_empty()
            && exe.is_none()
            && users.is_empty()
            && sha256.is_empty()
            && cmdline.is_none()
            && parent.is_none()
            && ancestor.is_none()
        {
            warn(p.name.span(), "this rule explains every process: a miner too".to_owned());
        }
        let (min, max) = match p.count {
            Some(c) => {
                let span = c.span();
                let c = c.into_inner();
                let min = c.min.unwrap_or(0);
                if let Some(max) = c.max {
                    if max == 0 {
                        return Err(err(
                            span,
                            "count.max = 0 allows nothing; remove the rule instead".to_owned(),
                        ));
                    }
                    if max < min {
                        return Err(err(
                            span,
                            format!("count.min ({min}) is greater than count.max ({max})"),
                        ));
                    }
                }
                (min, c.max)
            }
            None => (0, None),
        };
        processes.push(ProcessRule {
            name: name_pat,
            exe,
            users,
            sha256,
            cmdline,
            parent,
            ancestor,
            min,
            max,
            reason: p.reason,
            until: until(p.until)?,
            origin,
        });
    }

    let mut listens = Vec::new();
    for (i, l) in raw.listen.into_iter().enumerate() {
        let origin = origin(i, l.port.span());
        let ports = port_range(l.port.get_ref()).map_err(|m| err(l.port.span(), m))?;
        let addresses = match l.address {
            Some(a) => {
                let span = a.span();
                let mut out = Vec::new();
                for s in a.into_inner().into_vec() {
                    out.push(
                        s.parse::<IpAddr>()
                            .map_err(|_| err(span.clone(), format!("{s:?} is not an IP address")))?,
                    );
                }
                out
            }
            None => Vec::new(),
        };
        let process = name_glob(l.process)?;
        let ancestor = name_glob(l.ancestor)?;
        let unauthenticated = match l.unauthenticated {
            Some(u) if *u.get_ref() => {
                if l.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                    return Err(err(
                        u.span(),
                        "accepting a service that answers without credentials (unauthenticated = true) needs a reason"
                            .to_owned(),
                    ));
                }
                true
            }
            _ => false,
        };
        listens.push(ListenRule {
            protocol: l.protocol,
            ports,
            addresses,
            process,
            ancestor,
            required: l.required,
            unauthenticated,
            reason: l.reason,
            until: until(l.until)?,
            origin,
        });
    }

    let mut files = Vec::new();
    for (i, f) in raw.file.into_iter().enumerate() {
        let origin = origin(i, f.path.span());
        let text = f.path.get_ref();
        if !(text.starts_with('/') || text.starts_with('*')) {
            return Err(err(
                f.path.span(),
                format!("path {text:?} must be absolute (or a glob starting with / or *)"),
            ));
        }
        if text.ends_with('/') {
            warn(
                f.path.span(),
                format!(
                    "path {text:?} ends with '/': no file's path does, so it never matches (write {text}** for what is below)"
                ),
            );
        }
        let path = glob(text, true).map_err(|m| err(f.path.span(), m))?;
        let allow = match f.change.get_ref().as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(err(
                    f.change.span(),
                    format!("change must be \"allow\" or \"deny\", not {other:?}"),
                ));
            }
        };
        files.push(FileRule { path, allow, reason: f.reason, until: until(f.until)?, origin });
    }

    let mut connects = Vec::new();
    for (i, c) in raw.connect.into_iter().enumerate() {
        let origin = origin(i, c.remote.span());
        let span = c.remote.span();
        let mut remotes = Vec::new();
        for r in c.remote.into_inner().into_vec() {
            let net = parse_net(&r).map_err(|m| err(span.clone(), m))?;
            if net.trunc() != net {
                warn(span.clone(), format!("{r} has host bits set: it means {}", net.trunc()));
            }
            remotes.push(net.trunc());
        }
        if remotes.is_empty() {
            return Err(err(span, "remote must name at least one address or network".to_owned()));
        }
        let ports = match c.port {
            Some(p) => Some(port_range(p.get_ref()).map_err(|m| err(p.span(), m))?),
            None => None,
        };
        let process = name_glob(c.process)?;
        let ancestor = name_glob(c.ancestor)?;
        let direction = match c.direction {
            Some(d) => Some(match d.get_ref().as_str() {
                "inbound" => Direction::Inbound,
                "outbound" => Direction::Outbound,
                other => {
                    return Err(err(
                        d.span(),
                        format!("direction must be \"inbound\" or \"outbound\", not {other:?}"),
                    ));
                }
            }),
            None => None,
        };
        if remotes.iter().any(|n| n.prefix_len() == 0)
            && ports.is_none()
            && process.is_none()
            && ancestor.is_none()
        {
            warn(span, "this rule explains every connection: to a mining pool too".to_owned());
        }
        connects.push(ConnectRule {
            protocol: c.protocol,
            remotes,
            ports,
            process,
            ancestor,
            direction,
            reason: c.reason,
            until: until(c.until)?,
            origin,
        });
    }

    let mut sessions = Vec::new();
    for (i, s) in raw.session.into_iter().enumerate() {
        let span = s.user.span();
        let origin = origin(i, span.clone());
        let users = s.user.into_inner().into_vec();
        if users.is_empty() || users.iter().any(|u| u.is_empty()) {
            return Err(err(span, "user must name at least one user, and no empty names".to_owned()));
        }
        let mut from = Vec::new();
        if let Some(f) = s.from {
            let span = f.span();
            for r in f.into_inner().into_vec() {
                let net = parse_net(&r).map_err(|m| err(span.clone(), m))?;
                if net.trunc() != net {
                    warn(span.clone(), format!("{r} has host bits set: it means {}", net.trunc()));
                }
                from.push(net.trunc());
            }
            if from.is_empty() {
                return Err(err(
                    span,
                    "from must name at least one address or network (leave it out for anywhere)".to_owned(),
                ));
            }
        }
        sessions.push(SessionRule { users, from, reason: s.reason, until: until(s.until)?, origin });
    }

    let mut builtins = Vec::new();
    for b in raw.builtin {
        let rule = b.rule.get_ref();
        if crate::engine::builtin::rule_named(rule).is_none() {
            return Err(err(
                b.rule.span(),
                format!(
                    "{rule:?} is not a built-in rule (one of: {})",
                    crate::engine::builtin::RULES.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if !b.enabled && b.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(err(b.rule.span(), format!("turning off the built-in rule {rule:?} needs a reason")));
        }
        let severity = match b.severity {
            Some(s) => Some(s.get_ref().parse::<Severity>().map_err(|e| err(s.span(), e.to_string()))?),
            None => None,
        };
        builtins.push(BuiltinSetting { rule: rule.clone(), enabled: b.enabled, severity, reason: b.reason });
    }

    let peers = match raw.peers {
        Some(p) => {
            let span = p.span();
            let p = p.into_inner();
            if p.min_hosts.is_some_and(|n| n < 2) {
                return Err(err(span, "peers.min_hosts must be at least 2".to_owned()));
            }
            if p.rare_below_percent.is_some_and(|r| !(r > 0.0 && r < 100.0)) {
                return Err(err(span, "peers.rare_below_percent must be above 0 and below 100".to_owned()));
            }
            Some(PeerSettings {
                enabled: p.enabled.unwrap_or(true),
                min_hosts: p.min_hosts.unwrap_or(PeerSettings::DEFAULT.min_hosts),
                rare_below_percent: p.rare_below_percent.unwrap_or(PeerSettings::DEFAULT.rare_below_percent),
            })
        }
        None => None,
    };

    let mut severity = BTreeMap::new();
    for (k, v) in raw.severity {
        let kind = k.get_ref().parse::<FindingKind>().map_err(|e| err(k.span(), e.to_string()))?;
        let sev = v.get_ref().parse::<Severity>().map_err(|e| err(v.span(), e.to_string()))?;
        severity.insert(kind, sev);
    }

    let package_changes = match raw.package_changes {
        Some(p) => match p.get_ref().as_str() {
            "allow" => Some(true),
            "deny" => Some(false),
            other => {
                return Err(err(
                    p.span(),
                    format!("package_changes must be \"allow\" or \"deny\", not {other:?}"),
                ));
            }
        },
        None => None,
    };

    Ok(Baseline {
        name,
        description: raw.description,
        selector,
        include,
        processes,
        listens,
        files,
        connects,
        sessions,
        builtins,
        severity,
        peers,
        package_changes,
        warnings,
    })
}

/// An address (a network of one) or a CIDR network.
fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    s.parse::<IpNet>().map_err(|_| format!("{s:?} is not an IP address or a network such as 10.0.0.0/8"))
}

/// When an `until` ends: after the day it names (UTC), or at the instant of a date-time.
fn until_time(d: &RawDate) -> Result<(String, OffsetDateTime), String> {
    let text = match d {
        RawDate::Toml(t) => t.to_string(),
        RawDate::Text(s) => s.trim().to_owned(),
    };
    let bad = || format!("until {text:?} is not a date (2026-12-31) or a date-time (2026-12-31T18:00:00Z)");
    if let Ok(t) = OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339) {
        return Ok((text, t));
    }
    let date = time::Date::parse(&text, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| bad())?;
    let end = date.next_day().ok_or_else(bad)?.midnight().assume_utc();
    Ok((text, end))
}

/// Baseline names: 1 to 64 of `a-z A-Z 0-9 . _ -`, starting with a letter or digit.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid baseline name (1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit)"
        ))
    }
}

/// Compiles a glob; paths (`path = true`) do not let `*` cross `/`.
fn glob(text: &str, path: bool) -> Result<Pattern, String> {
    if text.is_empty() {
        return Err("empty pattern".to_owned());
    }
    let g = GlobBuilder::new(text)
        .literal_separator(path)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Pattern { text: text.to_owned(), matcher: g.compile_matcher() })
}

fn port_range(p: &RawPort) -> Result<std::ops::RangeInclusive<u16>, String> {
    let port = |n: i64| -> Result<u16, String> {
        u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| format!("port {n} is outside 1-65535"))
    };
    match p {
        RawPort::Number(n) => {
            let n = port(*n)?;
            Ok(n..=n)
        }
        RawPort::Range(s) => {
            let bad = || format!("{s:?} is not a port or a range (write 443 or \"8000-8099\")");
            let (a, b) = match s.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (s.trim(), s.trim()),
            };
            let a = port(a.parse().map_err(|_| bad())?)?;
            let b = port(b.parse().map_err(|_| bad())?)?;
            if a > b {
                return Err(format!("range {s:?} ends before it starts"));
            }
            Ok(a..=b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> String {
        parse("web.toml", src).unwrap_err().to_string()
    }

    #[test]
    fn the_design_example_parses() {
        let b = parse(
            "web.toml",
            r#"
name = "web"
selector = { role = "web" }
include = ["linux-base"]

[[process]]
name = "nginx"
exe = "/usr/sbin/nginx"
user = ["root", "www-data"]
sha256 = []
count = { min = 1 }

[[listen]]
protocol = "tcp"
port = 443
address = ["0.0.0.0", "::"]
process = "nginx"
required = true
"#,
        )
        .unwrap();
        assert_eq!(b.name, "web");
        assert_eq!(b.selector.as_ref().unwrap()["role"], "web");
        assert_eq!(b.include, ["linux-base"]);
        let p = &b.processes[0];
        assert_eq!((p.min, p.max, p.users.len()), (1, None, 2));
        let l = &b.listens[0];
        assert_eq!((l.ports.clone(), l.addresses.len(), l.required), (443..=443, 2, true));
    }

    #[test]
    fn toml_errors_have_file_line_and_column() {
        let e = err("name = \"web\"\n[[process]]\nname = \"x\"\nnmae = \"y\"\n");
        assert!(e.starts_with("web.toml:4:1: unknown field `nmae`"), "{e}");
        let e = err("name = \"web\"\n[[listen\n");
        assert!(e.starts_with("web.toml:2:"), "{e}");
    }

    #[test]
    fn semantic_errors_are_located() {
        let e = err("name = \"web\"\n[[process]]\nname = \"[abc\"\n");
        assert!(e.starts_with("web.toml:3:8: error parsing glob '[abc'"), "{e}");
        let e = err("name = \"web\"\n[[listen]]\nprotocol = \"tcp\"\nport = 70000\n");
        assert_eq!(e, "web.toml:4:8: port 70000 is outside 1-65535");
        let e = err("name = \"web\"\n[[listen]]\nprotocol = \"tcp\"\nport = \"90-80\"\n");
        assert!(e.contains("ends before it starts"), "{e}");
        let e = err("name = \"web\"\n[[listen]]\nprotocol = \"sctp\"\nport = 1\n");
        assert!(e.starts_with("web.toml:3:12: unknown variant `sctp`"), "{e}");
        let e = err("name = \"we b\"\n");
        assert!(e.starts_with("web.toml:1:8:") && e.contains("not a valid baseline name"), "{e}");
        let e = err("name = \"web\"\n[[process]]\nname = \"x\"\ncount = { min = 3, max = 1 }\n");
        assert!(e.contains("count.min (3) is greater than count.max (1)"), "{e}");
        let e = err("name = \"web\"\n[[process]]\nname = \"x\"\nexe = \"nginx\"\n");
        assert!(e.contains("absolute path"), "{e}");
        let e = err("name = \"web\"\n[[process]]\nname = \"x\"\nsha256 = [\"abc\"]\n");
        assert!(e.contains("not a SHA-256"), "{e}");
        let e = err("name = \"web\"\ninclude = [\"web\"]\n");
        assert!(e.contains("includes itself"), "{e}");
        let e = err("name = \"web\"\n[[listen]]\nprotocol = \"tcp\"\nport = 1\naddress = \"localhost\"\n");
        assert!(e.contains("\"localhost\" is not an IP address"), "{e}");
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(port_range(&RawPort::Number(22)).unwrap(), 22..=22);
        assert_eq!(port_range(&RawPort::Range("8000-8099".into())).unwrap(), 8000..=8099);
        assert_eq!(port_range(&RawPort::Range("53".into())).unwrap(), 53..=53);
        assert!(port_range(&RawPort::Number(0)).is_err());
        assert!(port_range(&RawPort::Range("a-b".into())).is_err());
    }

    #[test]
    fn globs() {
        let p = glob("/usr/bin/*", true).unwrap();
        assert!(p.is_match("/usr/bin/python3") && !p.is_match("/usr/bin/x/y"));
        assert!(glob("/usr/**", true).unwrap().is_match("/usr/lib/x/y"));
        let n = glob("php-fpm*", false).unwrap();
        assert!(n.is_match("php-fpm8.2") && !n.is_match("nginx"));
        assert!(!n.is_literal() && glob("nginx", false).unwrap().is_literal());
        let alt = glob("/{usr/,}lib/systemd/systemd", true).unwrap();
        assert!(alt.is_match("/lib/systemd/systemd") && alt.is_match("/usr/lib/systemd/systemd"));
    }

    #[test]
    fn connect_builtin_severity_and_until() {
        let b = parse(
            "w.toml",
            r#"
name = "w"
selector = {}
[severity]
unexpected_connection = "critical"
[[process]]
name = "app"
cmdline = "app --serve *"
parent = "systemd"
until = 2030-01-01
[[connect]]
remote = ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]
port = "5432-5433"
protocol = "tcp"
process = "app"
direction = "outbound"
reason = "the database"
until = "2030-01-01T12:00:00Z"
[[builtin]]
rule = "high-cpu"
enabled = false
reason = "video encoding runs hot"
[[builtin]]
rule = "exe-replaced"
severity = "medium"
"#,
        )
        .unwrap();
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        assert_eq!(b.severity[&FindingKind::UnexpectedConnection], Severity::Critical);
        let p = &b.processes[0];
        assert_eq!(
            p.until.as_ref().map(|u| u.time),
            Some(time::macros::datetime!(2030-01-02 0:00 UTC)),
            "after that day"
        );
        assert!(p.cmdline.as_ref().unwrap().is_match("app --serve 0.0.0.0:80") && p.parent.is_some());
        let c = &b.connects[0];
        assert_eq!(c.remotes.len(), 3);
        assert_eq!(
            (c.ports.clone(), c.direction, c.protocol),
            (Some(5432..=5433), Some(Direction::Outbound), Some(Protocol::Tcp))
        );
        assert_eq!(
            c.until.as_ref().map(|u| (u.at, u.time)),
            Some(((18, 9), time::macros::datetime!(2030-01-01 12:00 UTC)))
        );
        assert_eq!(c.origin.line, 12);
        assert_eq!(b.builtins.len(), 2);
        assert!(!b.builtins[0].enabled && b.builtins[1].severity == Some(Severity::Medium));
    }

    #[test]
    fn connect_and_builtin_errors_are_located() {
        let e = err("name = \"w\"\n[[connect]]\nremote = \"10.0.0.0/33\"\n");
        assert!(e.starts_with("web.toml:3:10:") && e.contains("not an IP address or a network"), "{e}");
        let e = err("name = \"w\"\n[[connect]]\nremote = []\n");
        assert!(e.contains("at least one address"), "{e}");
        let e = err("name = \"w\"\n[[connect]]\nremote = \"10.0.0.1\"\ndirection = \"sideways\"\n");
        assert!(e.starts_with("web.toml:4:13:") && e.contains("\"inbound\" or \"outbound\""), "{e}");
        let e = err("name = \"w\"\n[[builtin]]\nrule = \"nope\"\n");
        assert!(
            e.starts_with("web.toml:3:8:") && e.contains("not a built-in rule (one of: exe-deleted"),
            "{e}"
        );
        let e = err("name = \"w\"\n[[builtin]]\nrule = \"miner\"\nenabled = false\n");
        assert!(e.contains("needs a reason"), "{e}");
        let e = err("name = \"w\"\n[severity]\nunexpected_thing = \"high\"\n");
        assert!(e.starts_with("web.toml:3:1:"), "{e}");
        let e = err("name = \"w\"\n[severity]\nunexpected_process = \"urgent\"\n");
        assert!(e.starts_with("web.toml:3:22:"), "{e}");
        let e = err("name = \"w\"\n[[file]]\npath = \"/etc/x\"\nchange = \"allow\"\nuntil = \"next week\"\n");
        assert!(e.starts_with("web.toml:5:9:") && e.contains("is not a date"), "{e}");
        let e = err("name = \"w\"\n[[session]]\nuser = []\n");
        assert!(e.starts_with("web.toml:3:8:") && e.contains("at least one user"), "{e}");
        let e = err("name = \"w\"\n[[session]]\nuser = \"alice\"\nshell = \"bash\"\n");
        assert!(e.starts_with("web.toml:4:1:") && e.contains("unknown field `shell`"), "{e}");
    }

    #[test]
    fn lint_warns_of_rules_that_explain_too_much_or_cannot_mean_what_they_say() {
        let b = parse(
            "w.toml",
            "name = \"w\"\n[[process]]\nname = \"*\"\n[[process]]\nname = \"x\"\nsha256 = [\"aa\", \"AA\"]\n[[connect]]\nremote = \"0.0.0.0/0\"\n[[connect]]\nremote = \"10.1.2.3/8\"\nport = 443\n"
                .replace("\"aa\", \"AA\"", &format!("\"{}\", \"{}\"", "aa".repeat(32), "AA".repeat(32)))
                .as_str(),
        )
        .unwrap();
        let w: Vec<String> = b.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[0].starts_with("w.toml:3:8: warning: this rule explains every process"), "{w:?}");
        assert!(w[1].starts_with("w.toml:6:") && w[1].contains("listed twice"), "{w:?}");
        assert!(w[2].starts_with("w.toml:8:10: warning: this rule explains every connection"), "{w:?}");
        assert!(w[3].contains("10.1.2.3/8 has host bits set: it means 10.0.0.0/8"), "{w:?}");
        assert_eq!(b.connects[1].remotes[0].to_string(), "10.0.0.0/8");
        let b = parse("w.toml", "name = \"w\"\n[[process]]\nname = \"x\"\nexe = \"/opt/app/\"\n[[file]]\npath = \"/srv/www/\"\nchange = \"allow\"\n").unwrap();
        let w: Vec<String> = b.warnings.iter().map(ToString::to_string).collect();
        assert!(w.len() == 2 && w.iter().all(|m| m.contains("never matches")), "{w:?}");
        assert!(w[0].starts_with("w.toml:4:7:") && w[1].starts_with("w.toml:6:8:"), "{w:?}");
    }
}
