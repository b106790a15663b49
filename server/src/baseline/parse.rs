//! Baseline files, from TOML text to [`Baseline`], with located errors.

use std::collections::BTreeMap;
use std::net::IpAddr;

use globset::GlobBuilder;
use hostwatch_agent::config::file::{FileError, from_toml};
use hostwatch_proto::v1::{Protocol, check_tags, limits};
use serde::Deserialize;
use toml::Spanned;

use super::{Baseline, FileRule, ListenRule, Pattern, ProcessRule, RuleOrigin};

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
    #[serde(default)]
    reason: Option<String>,
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
    required: bool,
    #[serde(default)]
    reason: Option<String>,
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

    let mut processes = Vec::new();
    for (i, p) in raw.process.into_iter().enumerate() {
        let origin = RuleOrigin { baseline: name.clone(), index: i + 1 };
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
        let mut sha256 = Vec::new();
        for h in p.sha256 {
            let v = h.get_ref().to_ascii_lowercase();
            if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(
                    h.span(),
                    format!("{:?} is not a SHA-256 (64 hexadecimal digits)", h.get_ref()),
                ));
            }
            sha256.push(v);
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
            min,
            max,
            reason: p.reason,
            origin,
        });
    }

    let mut listens = Vec::new();
    for (i, l) in raw.listen.into_iter().enumerate() {
        let origin = RuleOrigin { baseline: name.clone(), index: i + 1 };
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
        let process = match l.process {
            Some(p) => Some(glob(p.get_ref(), false).map_err(|m| err(p.span(), m))?),
            None => None,
        };
        listens.push(ListenRule {
            protocol: l.protocol,
            ports,
            addresses,
            process,
            required: l.required,
            reason: l.reason,
            origin,
        });
    }

    let mut files = Vec::new();
    for (i, f) in raw.file.into_iter().enumerate() {
        let origin = RuleOrigin { baseline: name.clone(), index: i + 1 };
        let text = f.path.get_ref();
        if !(text.starts_with('/') || text.starts_with('*')) {
            return Err(err(
                f.path.span(),
                format!("path {text:?} must be absolute (or a glob starting with / or *)"),
            ));
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
        files.push(FileRule { path, allow, reason: f.reason, origin });
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
        package_changes,
    })
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
}
