//! The engine: explains a host's state against its workload and returns what it cannot explain.
//!
//! Architecture invariant: only the server decides what is a finding, and within the server only
//! this module does. It is a pure function of state, tags and rules (no store, no clock, no I/O),
//! so every decision it makes can be tested by value.

use std::collections::BTreeMap;

use hostwatch_proto::v1::{FindingKind, Severity};
use serde_json::json;

use crate::baseline::Workload;
use crate::model::{HostState, Listener, Observation, Process};

/// What a host is held to.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// No baseline selects the host.
    NoBaseline,
    /// Several baselines select it equally.
    Ambiguous(&'a [String]),
    Workload(&'a Workload),
}

/// Pids listed in one finding's detail at most; `count` says how many there were.
const MAX_PIDS: usize = 20;

/// Default severity of each kind the engine files.
pub fn default_severity(kind: FindingKind) -> Severity {
    match kind {
        FindingKind::UnexpectedListener
        | FindingKind::UnexpectedConnection
        | FindingKind::SuspiciousProcess => Severity::High,
        FindingKind::UnexpectedProcess | FindingKind::MissingProcess | FindingKind::MissingListener => {
            Severity::Medium
        }
        FindingKind::AmbiguousWorkload | FindingKind::DataLost => Severity::Medium,
        FindingKind::AgentOffline
        | FindingKind::FileChanged
        | FindingKind::UnauthenticatedService
        | FindingKind::DuplicateIdentity => Severity::High,
        FindingKind::NoBaseline | FindingKind::Outlier => Severity::Low,
    }
}

/// Kinds whose findings describe current state: the reconciliation resolves those that are no
/// longer observed.
pub const STATE_KINDS: &[FindingKind] = &[
    FindingKind::UnexpectedProcess,
    FindingKind::MissingProcess,
    FindingKind::UnexpectedListener,
    FindingKind::MissingListener,
    FindingKind::NoBaseline,
    FindingKind::AmbiguousWorkload,
];

/// The kinds about the workload itself.
const WORKLOAD_KINDS: &[FindingKind] = &[FindingKind::NoBaseline, FindingKind::AmbiguousWorkload];

/// Which findings an evaluation against `target` may resolve by not observing them. Without a
/// single workload nothing was explained, so the findings about items stay as they are: a miner
/// must not be "resolved" because a host's tags came to match two baselines, or none.
pub fn resolvable(target: Target<'_>) -> &'static [FindingKind] {
    match target {
        Target::Workload(_) => STATE_KINDS,
        Target::NoBaseline | Target::Ambiguous(_) => WORKLOAD_KINDS,
    }
}

/// Two or more hosts enrolled under one machine id: an image baked with an identity and booted
/// twice, or a machine posing as another. Filed on each of `hosts` (all of them, in id order).
pub fn duplicate_identity(machine_id: &str, hosts: &[i64]) -> Option<Observation> {
    (hosts.len() > 1).then(|| Observation {
        kind: FindingKind::DuplicateIdentity,
        rule: None,
        severity: default_severity(FindingKind::DuplicateIdentity),
        subject: format!("machine-id {machine_id}"),
        detail: json!({ "machine_id": machine_id, "hosts": hosts }),
    })
}

/// Reports that never arrived: dropped by the agent when its spool was full (`lost`), or missing
/// between two sequence numbers (`gap`, as expected and received). One finding per host, kept
/// open until acknowledged: what was lost cannot be explained after the fact.
pub fn data_lost(lost: u64, gap: Option<(u64, u64)>) -> Option<Observation> {
    if lost == 0 && gap.is_none() {
        return None;
    }
    Some(Observation {
        kind: FindingKind::DataLost,
        rule: None,
        severity: default_severity(FindingKind::DataLost),
        subject: "reports".to_owned(),
        detail: json!({
            "dropped_by_agent": lost,
            "missing_seq": gap.map(|(from, to)| json!({ "from": from, "before": to })),
        }),
    })
}

/// The changes to watched files that `target` does not allow, one observation each (a path
/// changed twice in one report is one observation, the later change). Without a workload nothing
/// is allowed: watched paths default to deny. A change whose new content is what a package
/// installed is kept, at severity info.
pub fn explain_files(changes: &[hostwatch_proto::v1::FileChange], target: Target<'_>) -> Vec<Observation> {
    let mut out: Vec<Observation> = Vec::new();
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for c in changes {
        let allowed = match target {
            Target::Workload(w) => w.allows_file_change(&c.path),
            Target::NoBaseline | Target::Ambiguous(_) => false,
        };
        if allowed {
            continue;
        }
        let by_package = c.package.as_ref().is_some_and(|p| p.matches);
        let package_allowed = match target {
            Target::Workload(w) => w.package_changes,
            Target::NoBaseline | Target::Ambiguous(_) => true,
        };
        let severity = if by_package && package_allowed {
            Severity::Info
        } else {
            default_severity(FindingKind::FileChanged)
        };
        let hash = |s: &Option<hostwatch_proto::v1::FileState>| s.as_ref().and_then(|s| s.sha256.clone());
        let o = Observation {
            kind: FindingKind::FileChanged,
            rule: None,
            severity,
            subject: c.path.clone(),
            detail: json!({
                "change": c.change.as_str(),
                "origin": c.origin.as_str(),
                "at": hostwatch_proto::v1::timestamp::format(c.at),
                "from_path": c.from_path,
                "old_sha256": hash(&c.old),
                "new_sha256": hash(&c.new),
                "old": c.old,
                "new": c.new,
                "package": c.package,
            }),
        };
        match at.get(c.path.as_str()) {
            Some(&i) => out[i] = o,
            None => {
                at.insert(&c.path, out.len());
                out.push(o);
            }
        }
    }
    out
}

/// Everything about `state` that `target` does not explain, one observation per (kind, subject).
pub fn evaluate(state: &HostState, tags: &BTreeMap<String, String>, target: Target<'_>) -> Vec<Observation> {
    let mut out = Observations::default();
    match target {
        Target::NoBaseline => {
            out.add(FindingKind::NoBaseline, "workload".to_owned(), json!({ "tags": tags }))
        }
        Target::Ambiguous(names) => out.add(
            FindingKind::AmbiguousWorkload,
            names.join(", "),
            json!({ "baselines": names, "tags": tags }),
        ),
        Target::Workload(w) => {
            explain_processes(state, w, &mut out);
            explain_listeners(state, w, &mut out);
        }
    }
    out.0.into_values().collect()
}

fn explain_processes(state: &HostState, w: &Workload, out: &mut Observations) {
    let mut unexplained: BTreeMap<&str, Vec<&Process>> = BTreeMap::new();
    for p in &state.processes {
        if !w.processes.iter().any(|r| r.matches(p)) {
            unexplained.entry(p.subject()).or_default().push(p);
        }
    }
    for (subject, procs) in unexplained {
        let first = procs[0];
        out.add(
            FindingKind::UnexpectedProcess,
            subject.to_owned(),
            json!({
                "name": first.name,
                "exe": first.exe,
                "exe_deleted": first.exe_deleted,
                "user": first.user_or_uid(),
                "pid": first.pid,
                "ppid": first.ppid,
                "cmdline": first.cmdline_string(),
                "count": procs.len(),
                "pids": procs.iter().take(MAX_PIDS).map(|p| p.pid).collect::<Vec<_>>(),
            }),
        );
    }
    for rule in &w.processes {
        if rule.min == 0 && rule.max.is_none() {
            continue;
        }
        let matching: Vec<&Process> = state.processes.iter().filter(|p| rule.matches(p)).collect();
        let rule_detail = json!({
            "baseline": rule.origin.baseline,
            "name": rule.name.as_str(),
            "exe": rule.exe.as_ref().map(|e| e.as_str()),
            "user": rule.users,
            "min": rule.min,
            "max": rule.max,
            "found": matching.len(),
            "pids": matching.iter().take(MAX_PIDS).map(|p| p.pid).collect::<Vec<_>>(),
        });
        if (matching.len() as u64) < u64::from(rule.min) {
            out.add(FindingKind::MissingProcess, rule.subject().to_owned(), rule_detail);
        } else if rule.max.is_some_and(|max| matching.len() as u64 > u64::from(max)) {
            out.add(FindingKind::UnexpectedProcess, rule.subject().to_owned(), rule_detail);
        }
    }
}

fn explain_listeners(state: &HostState, w: &Workload, out: &mut Observations) {
    let mut unexplained: BTreeMap<String, Vec<&Listener>> = BTreeMap::new();
    for l in &state.listeners {
        if !w.listens.iter().any(|r| r.matches(l)) {
            unexplained.entry(l.subject()).or_default().push(l);
        }
    }
    for (subject, ls) in unexplained {
        let l = ls[0];
        out.add(
            FindingKind::UnexpectedListener,
            subject,
            json!({
                "protocol": l.protocol.as_str(),
                "address": l.address.to_string(),
                "port": l.port,
                "pid": l.pid,
                "process": l.process,
                "exe": l.exe,
                "uid": l.uid,
                "sockets": ls.len(),
            }),
        );
    }
    for rule in w.listens.iter().filter(|r| r.required) {
        if !state.listeners.iter().any(|l| rule.matches(l)) {
            out.add(
                FindingKind::MissingListener,
                rule.subject(),
                json!({
                    "baseline": rule.origin.baseline,
                    "protocol": rule.protocol.as_str(),
                    "ports": format!("{}-{}", rule.ports.start(), rule.ports.end()),
                    "address": rule.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "process": rule.process.as_ref().map(|p| p.as_str()),
                }),
            );
        }
    }
}

/// Observations keyed by (kind, subject): the first one for a key wins, as a finding is one per key.
#[derive(Default)]
struct Observations(BTreeMap<(FindingKind, String), Observation>);

impl Observations {
    fn add(&mut self, kind: FindingKind, subject: String, detail: serde_json::Value) {
        self.0.entry((kind, subject.clone())).or_insert_with(|| Observation {
            kind,
            rule: None,
            severity: default_severity(kind),
            subject,
            detail,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{BaselineSet, learn::learn, parse};
    use crate::model::Process;
    use hostwatch_proto::v1::Protocol;
    use time::OffsetDateTime;

    fn proc(pid: u32, name: &str, exe: Option<&str>, user: &str) -> Process {
        let uid = if user == "root" { 0 } else { 1000 };
        Process {
            exe: exe.map(Into::into),
            cmdline: vec![name.into()],
            user: Some(user.into()),
            ..Process::from(hostwatch_proto::v1::Process::new(pid, 1, name, uid, OffsetDateTime::UNIX_EPOCH))
        }
    }

    fn listener(proto: Protocol, addr: &str, port: u16, process: Option<&str>) -> Listener {
        Listener {
            protocol: proto,
            address: addr.parse().unwrap(),
            port,
            pid: Some(10),
            process: process.map(Into::into),
            exe: None,
            uid: 0,
            netns: None,
        }
    }

    fn workload(srcs: &[&str], name: &str) -> Workload {
        let set = BaselineSet::new(srcs.iter().map(|s| parse("t.toml", s).unwrap()));
        set.check().unwrap();
        set.workload(name).unwrap()
    }

    fn kinds(obs: &[Observation]) -> Vec<(FindingKind, &str)> {
        obs.iter().map(|o| (o.kind, o.subject.as_str())).collect()
    }

    const WEB: &str = r#"
name = "web"
selector = { role = "web" }
include = ["base"]
[[process]]
name = "nginx"
exe = "/usr/sbin/nginx"
user = ["root", "www-data"]
count = { min = 1, max = 3 }
[[process]]
name = "php-fpm*"
exe = "/usr/sbin/php-fpm*"
[[listen]]
protocol = "tcp"
port = 443
address = ["0.0.0.0", "::"]
process = "nginx"
required = true
[[listen]]
protocol = "tcp"
port = "9000-9010"
address = "127.0.0.1"
"#;
    const BASE: &str = "name = \"base\"\n[[process]]\nname = \"sshd\"\nexe = \"/usr/sbin/sshd\"\nuser = \"root\"\n[[listen]]\nprotocol = \"tcp\"\nport = 22\n";

    #[test]
    fn everything_explained_gives_nothing() {
        let w = workload(&[WEB, BASE], "web");
        let state = HostState {
            processes: vec![
                proc(10, "nginx", Some("/usr/sbin/nginx"), "root"),
                proc(11, "nginx", Some("/usr/sbin/nginx"), "www-data"),
                proc(12, "php-fpm8.2", Some("/usr/sbin/php-fpm8.2"), "www-data"),
                proc(13, "sshd", Some("/usr/sbin/sshd"), "root"),
            ],
            listeners: vec![
                listener(Protocol::Tcp, "0.0.0.0", 443, Some("nginx")),
                listener(Protocol::Tcp, "::", 443, Some("nginx")),
                listener(Protocol::Tcp, "127.0.0.1", 9005, Some("php-fpm8.2")),
                listener(Protocol::Tcp, "0.0.0.0", 22, Some("sshd")),
            ],
            ..Default::default()
        };
        assert_eq!(evaluate(&state, &BTreeMap::new(), Target::Workload(&w)), vec![]);
    }

    #[test]
    fn unexplained_items_and_missing_requirements() {
        let w = workload(&[WEB, BASE], "web");
        let state = HostState {
            processes: vec![
                // Wrong user for nginx: not explained, and nginx is then missing.
                proc(10, "nginx", Some("/usr/sbin/nginx"), "mallory"),
                proc(20, "xmrig", Some("/tmp/xmrig"), "www-data"),
                proc(21, "xmrig", Some("/tmp/xmrig"), "www-data"),
                // The right name at the wrong path is not nginx.
                proc(22, "sshd", Some("/tmp/sshd"), "root"),
            ],
            listeners: vec![
                listener(Protocol::Tcp, "0.0.0.0", 9005, Some("php-fpm8.2")),
                listener(Protocol::Udp, "0.0.0.0", 443, Some("nginx")),
                listener(Protocol::Tcp, "::", 22, Some("sshd")),
            ],
            ..Default::default()
        };
        let obs = evaluate(&state, &BTreeMap::new(), Target::Workload(&w));
        assert_eq!(
            kinds(&obs),
            vec![
                (FindingKind::UnexpectedProcess, "/tmp/sshd"),
                (FindingKind::UnexpectedProcess, "/tmp/xmrig"),
                (FindingKind::UnexpectedProcess, "/usr/sbin/nginx"),
                (FindingKind::MissingProcess, "/usr/sbin/nginx"),
                (FindingKind::UnexpectedListener, "tcp/0.0.0.0:9005"),
                (FindingKind::UnexpectedListener, "udp/0.0.0.0:443"),
                (FindingKind::MissingListener, "tcp/*:443"),
            ]
        );
        let xmrig = obs.iter().find(|o| o.subject == "/tmp/xmrig").unwrap();
        assert_eq!(xmrig.detail["count"], 2);
        assert_eq!(xmrig.detail["pids"], json!([20, 21]));
        assert_eq!(xmrig.severity, Severity::Medium);
        let l = obs.iter().find(|o| o.subject == "udp/0.0.0.0:443").unwrap();
        assert_eq!(
            (l.detail["port"].as_u64(), l.detail["process"].as_str(), l.severity),
            (Some(443), Some("nginx"), Severity::High)
        );
    }

    #[test]
    fn counts_above_max() {
        let w = workload(&[WEB, BASE], "web");
        let state = HostState {
            processes: (0..4).map(|i| proc(30 + i, "nginx", Some("/usr/sbin/nginx"), "www-data")).collect(),
            listeners: vec![listener(Protocol::Tcp, "::", 443, Some("nginx"))],
            ..Default::default()
        };
        let obs = evaluate(&state, &BTreeMap::new(), Target::Workload(&w));
        assert_eq!(kinds(&obs), vec![(FindingKind::UnexpectedProcess, "/usr/sbin/nginx")]);
        assert_eq!((obs[0].detail["found"].as_u64(), obs[0].detail["max"].as_u64()), (Some(4), Some(3)));
    }

    #[test]
    fn users_by_uid_and_hashes_fail_closed() {
        let w = workload(
            &[
                "name = \"x\"\nselector = {}\n[[process]]\nname = \"a\"\nuser = \"1000\"\n[[process]]\nname = \"b\"\nsha256 = [\"0000000000000000000000000000000000000000000000000000000000000000\"]\n",
            ],
            "x",
        );
        let mut a = proc(1, "a", None, "alice");
        a.user = None;
        let state = HostState {
            processes: vec![a, proc(2, "b", None, "root")],
            listeners: vec![],
            ..Default::default()
        };
        let obs = evaluate(&state, &BTreeMap::new(), Target::Workload(&w));
        assert_eq!(kinds(&obs), vec![(FindingKind::UnexpectedProcess, "b")]);
    }

    #[test]
    fn without_one_workload_item_findings_are_left_alone() {
        let w = workload(&[WEB, BASE], "web");
        let names = vec!["a".to_owned()];
        assert!(resolvable(Target::Workload(&w)).contains(&FindingKind::UnexpectedProcess));
        for t in [Target::NoBaseline, Target::Ambiguous(&names)] {
            let r = resolvable(t);
            assert!(r.contains(&FindingKind::NoBaseline) && r.contains(&FindingKind::AmbiguousWorkload));
            assert!(
                !r.contains(&FindingKind::UnexpectedProcess) && !r.contains(&FindingKind::MissingListener)
            );
        }
    }

    #[test]
    fn lost_reports() {
        assert!(data_lost(0, None).is_none());
        let o = data_lost(3, None).unwrap();
        assert_eq!(
            (o.kind, o.subject.as_str(), o.detail["dropped_by_agent"].as_u64()),
            (FindingKind::DataLost, "reports", Some(3))
        );
        let o = data_lost(0, Some((5, 9))).unwrap();
        assert_eq!(o.detail["missing_seq"], json!({"from": 5, "before": 9}));
    }

    #[test]
    fn one_machine_id_on_two_hosts() {
        assert!(duplicate_identity("m", &[3]).is_none());
        let o = duplicate_identity("m", &[3, 9]).unwrap();
        assert_eq!(
            (o.kind, o.subject.as_str(), o.severity),
            (FindingKind::DuplicateIdentity, "machine-id m", Severity::High)
        );
        assert_eq!(o.detail["hosts"], json!([3, 9]));
    }

    #[test]
    fn no_baseline_and_ambiguity() {
        let state = HostState {
            processes: vec![proc(1, "x", None, "root")],
            listeners: vec![],
            ..Default::default()
        };
        let tags: BTreeMap<String, String> = [("role".to_owned(), "db".to_owned())].into();
        let obs = evaluate(&state, &tags, Target::NoBaseline);
        assert_eq!(kinds(&obs), vec![(FindingKind::NoBaseline, "workload")]);
        assert_eq!(obs[0].detail["tags"]["role"], "db");
        let names = vec!["a".to_owned(), "b".to_owned()];
        let obs = evaluate(&state, &tags, Target::Ambiguous(&names));
        assert_eq!(kinds(&obs), vec![(FindingKind::AmbiguousWorkload, "a, b")]);
    }

    #[test]
    fn a_learned_baseline_explains_what_it_learned_from() {
        let mut odd = proc(5, "we*ird [name]", Some("/opt/a b/we*ird"), "root");
        odd.user = None;
        let state = HostState {
            processes: vec![
                proc(1, "nginx", Some("/usr/sbin/nginx"), "root"),
                proc(2, "nginx", Some("/usr/sbin/nginx"), "www-data"),
                proc(3, "worker", Some("/usr/bin/python3.11"), "app"),
                proc(4, "python3", Some("/usr/bin/python3.11"), "app"),
                odd,
                proc(6, "zombie", None, "root"),
            ],
            listeners: vec![
                listener(Protocol::Tcp, "0.0.0.0", 443, Some("nginx")),
                listener(Protocol::Tcp, "::", 443, Some("nginx")),
                listener(Protocol::Udp, "127.0.0.1", 5353, None),
            ],
            ..Default::default()
        };
        let sel: BTreeMap<String, String> = [("role".to_owned(), "dev".to_owned())].into();
        let text = learn("dev-box", &sel, "box", &state, OffsetDateTime::UNIX_EPOCH);
        let b = parse("learned.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(b.selector.as_ref().unwrap()["role"], "dev");
        let set = BaselineSet::new([b]);
        let w = set.workload("dev-box").unwrap();
        assert_eq!(evaluate(&state, &sel, Target::Workload(&w)), vec![], "{text}");
        // Something new is exactly one finding.
        let mut more = state.clone();
        more.listeners.push(listener(Protocol::Tcp, "0.0.0.0", 8000, Some("python3")));
        assert_eq!(
            kinds(&evaluate(&more, &sel, Target::Workload(&w))),
            vec![(FindingKind::UnexpectedListener, "tcp/0.0.0.0:8000")]
        );
        // Bound to another address is not the same listener.
        let mut moved = state.clone();
        moved.listeners[2].address = "0.0.0.0".parse().unwrap();
        assert_eq!(
            kinds(&evaluate(&moved, &sel, Target::Workload(&w))),
            vec![(FindingKind::UnexpectedListener, "udp/0.0.0.0:5353")]
        );
    }

    #[test]
    fn file_changes_by_rule_and_by_package() {
        use hostwatch_proto::v1 as p;
        let change = |path: &str, package: Option<bool>| p::FileChange {
            path: path.into(),
            change: p::FileChangeKind::Modified,
            origin: p::ChangeOrigin::Live,
            at: OffsetDateTime::UNIX_EPOCH,
            old: None,
            new: None,
            from_path: None,
            package: package.map(|matches| p::PackageMatch { name: "pkg".into(), version: None, matches }),
        };
        let base = r#"
name = "base"
package_changes = "deny"
[[file]]
path = "/srv/**"
change = "allow"
[[file]]
path = "/srv/secret"
change = "deny"
"#;
        let app = "name = \"app\"\nselector = {}\ninclude = [\"base\"]\n";
        let strict = workload(&[base, app], "app");
        assert!(!strict.package_changes, "inherited from the included baseline");
        let changes = [
            change("/srv/site/index.html", None),
            change("/srv/secret", None),
            change("/usr/bin/ls", Some(true)),
            change("/usr/bin/cat", Some(false)),
            change("/srv/secret", None),
        ];
        let sev =
            |obs: &[Observation]| obs.iter().map(|o| (o.subject.clone(), o.severity)).collect::<Vec<_>>();
        // Allowed by a rule: nothing; denied: a finding, once however often it changed; a
        // package-made change is high where the workload denies package changes.
        assert_eq!(
            sev(&explain_files(&changes, Target::Workload(&strict))),
            [
                ("/srv/secret".to_owned(), Severity::High),
                ("/usr/bin/ls".to_owned(), Severity::High),
                ("/usr/bin/cat".to_owned(), Severity::High)
            ]
        );
        let lenient = workload(&[&base.replace("\"deny\"\n[[file]]", "\"allow\"\n[[file]]"), app], "app");
        assert!(lenient.package_changes);
        let obs = explain_files(&changes, Target::Workload(&lenient));
        assert_eq!(obs.iter().find(|o| o.subject == "/usr/bin/ls").map(|o| o.severity), Some(Severity::Info));
        // Without a workload every change is a finding; package-made ones at info.
        let none = explain_files(&changes, Target::NoBaseline);
        assert_eq!(none.len(), 4);
        assert_eq!(
            none.iter().find(|o| o.subject == "/usr/bin/ls").map(|o| o.severity),
            Some(Severity::Info)
        );
    }
}
