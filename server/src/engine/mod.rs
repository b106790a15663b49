//! The engine: explains a host's state against its workload and returns what it cannot explain.
//!
//! Architecture invariant: only the server decides what is a finding, and within the server only
//! this module does. It is a pure function of state, tags, rules and the time it is told (no
//! store, no clock of its own, no I/O), so every decision it makes can be tested by value.
//! [`builtin`] holds the rules that run on every host whatever its baseline.

pub mod builtin;
pub mod session;

use std::collections::{BTreeMap, HashMap, HashSet};

use hostwatch_proto::v1::{Direction, FindingKind, Severity};
use serde_json::json;
use time::OffsetDateTime;

use crate::baseline::{Workload, active};
use crate::model::{Connection, HostState, Item, Listener, Observation, PeerCounts, Process, Started};

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
        FindingKind::AmbiguousWorkload | FindingKind::DataLost | FindingKind::FindingsHeldBack => {
            Severity::Medium
        }
        FindingKind::AgentOffline
        | FindingKind::FileChanged
        | FindingKind::UnauthenticatedService
        | FindingKind::DuplicateIdentity
        | FindingKind::UnexpectedSession => Severity::High,
        FindingKind::NoBaseline | FindingKind::Outlier => Severity::Low,
    }
}

/// The kinds about the workload itself, and those judged whatever the workload (the built-in
/// rules, services answering without credentials).
const WORKLOAD_KINDS: &[FindingKind] = &[
    FindingKind::NoBaseline,
    FindingKind::AmbiguousWorkload,
    FindingKind::SuspiciousProcess,
    FindingKind::UnauthenticatedService,
];

/// Which findings an evaluation against `target` may resolve by not observing them. Without a
/// single workload nothing was explained, so the findings about items stay as they are: a miner
/// must not be "resolved" because a host's tags came to match two baselines, or none.
pub fn resolvable(target: Target<'_>) -> &'static [FindingKind] {
    match target {
        Target::Workload(_) => crate::findings::STATE_KINDS,
        Target::NoBaseline | Target::Ambiguous(_) => WORKLOAD_KINDS,
    }
}

/// Two or more hosts enrolled under one machine id: an image baked with an identity and booted
/// twice, or a machine posing as another. Filed on each of `hosts` (all of them, in id order).
pub fn duplicate_identity(machine_id: &str, hosts: &[i64]) -> Option<Observation> {
    (hosts.len() > 1).then(|| {
        Observation::event(
            FindingKind::DuplicateIdentity,
            None,
            default_severity(FindingKind::DuplicateIdentity),
            format!("machine-id {machine_id}"),
            json!({ "machine_id": machine_id, "hosts": hosts }),
        )
    })
}

/// One node key reported from two machines at once (a cloned disk: same state directory, same
/// key): two agent sessions take turns, which one agent never does.
pub fn shared_node_key(host_id: i64, sessions: (u64, u64)) -> Observation {
    Observation::event(
        FindingKind::DuplicateIdentity,
        None,
        default_severity(FindingKind::DuplicateIdentity),
        "node key".to_owned(),
        json!({
            "host_id": host_id,
            "sessions": [sessions.0, sessions.1],
            "why": "reports of two agent sessions alternate under this host's node key: two machines use it (a cloned disk?). Revoke it (hostwatch host revoke) and reset the clones' identity (hostwatch-agent reset-identity).",
        }),
    )
}

/// A host that stopped reporting: after a goodbye (`last_words` = `stopped` or `shutdown`) it
/// is low, an agent that went silent is high (killed, crashed, or cut off).
pub fn agent_offline(last_words: Option<&str>, last_seen: Option<OffsetDateTime>) -> Observation {
    Observation {
        kind: FindingKind::AgentOffline,
        rule: None,
        severity: if last_words.is_some() {
            Severity::Low
        } else {
            default_severity(FindingKind::AgentOffline)
        },
        subject: "agent".to_owned(),
        detail: json!({
            "last_words": last_words.unwrap_or("none"),
            "last_seen": last_seen.map(hostwatch_proto::v1::timestamp::format),
        }),
        // A state of the host, filed again at every housekeeping round: no new occurrence.
        occurrences: 0,
        transient: false,
    }
}

/// Reports that never arrived: dropped by the agent when its spool was full (`lost`), or missing
/// between two sequence numbers (`gap`, as expected and received). One finding per host, kept
/// open until acknowledged: what was lost cannot be explained after the fact.
pub fn data_lost(lost: u64, gap: Option<(u64, u64)>) -> Option<Observation> {
    if lost == 0 && gap.is_none() {
        return None;
    }
    Some(Observation::event(
        FindingKind::DataLost,
        None,
        default_severity(FindingKind::DataLost),
        "reports".to_owned(),
        json!({
            "dropped_by_agent": lost,
            "missing_seq": gap.map(|(from, to)| json!({ "from": from, "before": to })),
        }),
    ))
}

/// The changes to watched files that `target` does not allow, one observation each (a path
/// changed twice in one report is one observation, the later change). Without a workload nothing
/// is allowed: watched paths default to deny. A change whose new content is what a package
/// installed is kept, at severity info.
///
/// The built-in file rules (persistence paths, new setuid files) come first: a baseline's `allow`
/// does not cover them; only turning the rule off for the workload does.
pub fn explain_files(
    changes: &[hostwatch_proto::v1::FileChange],
    target: Target<'_>,
    now: OffsetDateTime,
) -> Vec<Observation> {
    let workload = target.workload();
    let mut out: Vec<Observation> = Vec::new();
    // One observation per (path, rule), as findings are keyed: a chmod to setuid then an edit
    // in one report is the setuid finding and the edit's, not the edit's alone.
    let mut at: HashMap<(&str, Option<&str>), usize> = HashMap::new();
    for c in changes {
        let rule = builtin::file_rule(c).and_then(|r| enabled(workload, r));
        let allowed = workload.is_some_and(|w| w.allows_file_change(&c.path, now));
        if allowed && rule.is_none() {
            continue;
        }
        let by_package = c.package.as_ref().is_some_and(|p| p.matches);
        let package_allowed = workload.is_none_or(|w| w.package_changes);
        let severity = match rule {
            Some((_, severity)) => severity,
            None if by_package && package_allowed => Severity::Info,
            None => severity_of(workload, FindingKind::FileChanged),
        };
        let hash = |s: &Option<hostwatch_proto::v1::FileState>| s.as_ref().and_then(|s| s.sha256.clone());
        let mut o = Observation::event(
            FindingKind::FileChanged,
            rule.map(|(r, _)| r.name.to_owned()),
            severity,
            c.path.clone(),
            json!({
                "change": c.change.as_str(),
                "origin": c.origin.as_str(),
                "at": hostwatch_proto::v1::timestamp::format(c.at),
                "from_path": c.from_path,
                "old_sha256": hash(&c.old),
                "new_sha256": hash(&c.new),
                "old": c.old,
                "new": c.new,
                "package": c.package,
                "why": rule.map(|(r, _)| r.what),
            }),
        );
        let key = (c.path.as_str(), rule.map(|(r, _)| r.name));
        match at.get(&key) {
            Some(&i) => {
                o.occurrences += out[i].occurrences;
                out[i] = o;
            }
            None => {
                at.insert(key, out.len());
                out.push(o);
            }
        }
    }
    out
}

impl<'a> Target<'a> {
    fn workload(self) -> Option<&'a Workload> {
        match self {
            Target::Workload(w) => Some(w),
            Target::NoBaseline | Target::Ambiguous(_) => None,
        }
    }
}

/// The severity of `kind` for `workload`: its `[severity]`, else the default.
fn severity_of(workload: Option<&Workload>, kind: FindingKind) -> Severity {
    workload.and_then(|w| w.severity.get(&kind).copied()).unwrap_or_else(|| default_severity(kind))
}

/// A built-in rule and its severity, unless the workload turned it off.
fn enabled(workload: Option<&Workload>, name: &str) -> Option<(&'static builtin::Rule, Severity)> {
    let rule = builtin::rule_named(name)?;
    let setting = workload.and_then(|w| w.builtins.get(name));
    if setting.is_some_and(|s| !s.enabled) {
        return None;
    }
    Some((rule, setting.and_then(|s| s.severity).unwrap_or(rule.severity)))
}

/// What the evaluation of one host needs besides its state and rules.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub tags: &'a BTreeMap<String, String>,
    pub now: OffsetDateTime,
    /// The host's hostwatch agent: its connection to the collector explains itself.
    pub agent_pid: Option<u32>,
}

/// Everything about `state` that `target` does not explain, and everything a built-in rule
/// finds, one observation per (kind, subject). These say what is there: no new occurrence.
pub fn evaluate(state: &HostState, target: Target<'_>, cx: Context<'_>) -> Vec<Observation> {
    let mut out = Observations::default();
    let workload = target.workload();
    let lineage = Lineage::of(state.processes.iter(), &state.connections);
    match target {
        Target::NoBaseline => {
            out.add(FindingKind::NoBaseline, "workload".to_owned(), json!({ "tags": cx.tags }))
        }
        Target::Ambiguous(names) => out.add(
            FindingKind::AmbiguousWorkload,
            names.join(", "),
            json!({ "baselines": names, "tags": cx.tags }),
        ),
        Target::Workload(w) => {
            process_counts(state, w, &lineage, cx.now, &mut out);
            missing_listeners(state, w, &lineage, cx.now, &mut out);
        }
    }
    judge_items(state, &lineage, &state.listeners, workload, cx, &mut out);
    out.finish(workload)
}

/// Judges every start a report recorded (`started`, see [`Started`]), whether or not its item
/// still exists, against `target` and the built-in rules: one observation per finding key, with
/// the number of new starts it stands for and whether any was gone before it was judged.
/// `state` is the host's state after the report: it names the parents and the listeners that
/// explain inbound connections.
pub fn judge(
    started: &[Started],
    state: &HostState,
    target: Target<'_>,
    cx: Context<'_>,
) -> Vec<Observation> {
    let workload = target.workload();
    // Parents may be gone too (`curl | sh`): the report's own starts name them as well.
    let lineage = Lineage::of(
        state.processes.iter().chain(started.iter().filter_map(|s| match &s.item {
            Item::Process(p) => Some(&**p),
            _ => None,
        })),
        &state.connections,
    );
    let mut merged: BTreeMap<(FindingKind, String, String), Observation> = BTreeMap::new();
    for s in started {
        let mut one = HostState::default();
        match &s.item {
            Item::Process(p) => one.processes.push((**p).clone()),
            Item::Listener(l) => one.listeners.push(l.clone()),
            Item::Connection(c) => one.connections.push(c.clone()),
        }
        let mut out = Observations::default();
        judge_items(&one, &lineage, &state.listeners, workload, cx, &mut out);
        let at = |t: Option<OffsetDateTime>| t.map(hostwatch_proto::v1::timestamp::format);
        for mut o in out.finish(workload) {
            o.occurrences = u64::from(s.new);
            o.transient = s.ended.is_some();
            let (began, ended) = match s.item {
                Item::Process(_) => ("started_at", "exited_at"),
                Item::Listener(_) | Item::Connection(_) => ("opened_at", "closed_at"),
            };
            if o.kind == FindingKind::UnexpectedSession {
                // The session's one command, whose entry has its start: when it ended, if it had.
                if let Some(entry) = o.detail["ran"].get_mut(0) {
                    entry[ended] = json!(at(s.ended));
                }
            } else {
                o.detail[began] = json!(at(s.at));
                o.detail[ended] = json!(at(s.ended));
                o.detail["transient"] = json!(o.transient);
            }
            let key = o.owned_key();
            match merged.get_mut(&key) {
                Some(m) if session::accumulates(o.kind) => {
                    m.occurrences += o.occurrences;
                    m.transient |= o.transient;
                    session::combine(&mut m.detail, &o.detail);
                }
                Some(m) => {
                    let (occurrences, transient) =
                        (m.occurrences + o.occurrences, m.transient || o.transient);
                    // The detail of the latest start; the finding counts them all.
                    *m = Observation { occurrences, transient, ..o };
                }
                None => {
                    merged.insert(key, o);
                }
            }
        }
    }
    merged.into_values().collect()
}

/// The starts among `started` that a `[[session]]` rule of `target` explains, as the history
/// shows them: `interactive session of USER`. Nothing is looked up unless a start belongs to a
/// login and the workload has session rules.
pub fn sessions_explained(
    started: &[Started],
    state: &HostState,
    target: Target<'_>,
    now: OffsetDateTime,
) -> Vec<crate::model::ExecExplained> {
    let Some(w) = target.workload().filter(|w| !w.sessions.is_empty()) else { return Vec::new() };
    let logins: Vec<&Process> = started
        .iter()
        .filter(|s| s.new)
        .filter_map(|s| match &s.item {
            Item::Process(p) if session::login(p).is_some() => Some(&**p),
            _ => None,
        })
        .collect();
    if logins.is_empty() {
        return Vec::new();
    }
    let peers = session::Peers::of(state.connections.iter());
    logins
        .into_iter()
        .filter(|p| w.allows_session(p, peers.of_login(p), now))
        .map(|p| crate::model::ExecExplained {
            pid: p.pid,
            start_time: p.start_time,
            why: format!("interactive session of {}", session::user(p)),
        })
        .collect()
}

/// Merges the judgement of a report's starts (`events`, from [`judge`]) into the evaluation of
/// the state after it (`state`, from [`evaluate`]): one observation per key, counting the starts,
/// transient if any was, with the event's detail over the state's (which keeps how many are
/// running and their pids).
pub fn merge(mut state: Vec<Observation>, events: Vec<Observation>) -> Vec<Observation> {
    let at: HashMap<(FindingKind, String, String), usize> =
        state.iter().enumerate().map(|(i, o)| (o.owned_key(), i)).collect();
    for e in events {
        match at.get(&e.owned_key()) {
            Some(&i) if session::accumulates(e.kind) => {
                let s = &mut state[i];
                session::combine(&mut s.detail, &e.detail);
                s.occurrences += e.occurrences;
                s.transient |= e.transient;
            }
            Some(&i) => {
                let s = &mut state[i];
                if let (Some(into), Some(from)) = (s.detail.as_object_mut(), e.detail.as_object()) {
                    into.extend(
                        from.iter()
                            .filter(|(k, _)| {
                                !matches!(k.as_str(), "count" | "pids" | "sockets" | "connections")
                            })
                            .map(|(k, v)| (k.clone(), v.clone())),
                    );
                }
                s.occurrences += e.occurrences;
                s.transient |= e.transient;
            }
            None => state.push(e),
        }
    }
    state
}

/// Items of `state` rare among the workload's peers (`counts`, which include this host): an
/// outlier finding each, unless an observation of this evaluation (`covered`) is already about
/// the item. Nothing in a workload smaller than `[peers] min_hosts`.
pub fn outliers(
    state: &HostState,
    w: &Workload,
    counts: &PeerCounts,
    covered: &[Observation],
) -> Vec<Observation> {
    let p = w.peers;
    if !p.enabled || counts.hosts < u64::from(p.min_hosts) {
        return Vec::new();
    }
    let rare = |n: u64| (n as f64) * 100.0 < p.rare_below_percent * counts.hosts as f64;
    let taken: HashSet<&str> = covered.iter().map(|o| o.subject.as_str()).collect();
    let mut out = Observations::default();
    let severity = severity_of(Some(w), FindingKind::Outlier);
    let mut add = |what: &str, subject: String, n: u64| {
        out.add(
            FindingKind::Outlier,
            subject,
            json!({
                "item": what,
                "peers_with_it": n,
                "peers": counts.hosts,
                "percent": (n as f64) * 100.0 / counts.hosts as f64,
                "rare_below_percent": p.rare_below_percent,
            }),
        )
    };
    // A login's commands are judged as its session: rare or not, they are not filed one by one.
    for proc_ in state.processes.iter().filter(|p| session::login(p).is_none()) {
        let s = proc_.subject();
        let n = counts.processes.get(s).copied().unwrap_or(1);
        if rare(n) && !taken.contains(s) {
            add("process", s.to_owned(), n);
        }
    }
    for l in &state.listeners {
        let n = counts.listeners.get(&(l.protocol, l.port)).copied().unwrap_or(1);
        let s = l.subject();
        if rare(n) && !taken.contains(s.as_str()) {
            add("listener", s, n);
        }
    }
    for c in state.connections.iter().filter(|c| c.direction == Direction::Outbound) {
        let key = c.peer_key();
        let n = counts.connections.get(&key).copied().unwrap_or(1);
        if rare(n) && !taken.contains(c.subject().as_str()) {
            add("connection", key, n);
        }
    }
    let mut obs: Vec<Observation> = out.0.into_values().collect();
    for o in &mut obs {
        o.severity = severity;
    }
    obs
}

/// The processes a host is known to run or have run, by pid: parents' names for the rules that
/// name a parent, and the parent chain a finding about a process shows; and where its logins
/// came from.
struct Lineage<'a> {
    procs: HashMap<u32, &'a Process>,
    peers: session::Peers,
}

/// Ancestors listed in a finding's detail at most.
const MAX_PARENTS: usize = 12;

impl<'a> Lineage<'a> {
    /// Later processes win a pid: the state's own come first. `connections` are the host's,
    /// whose sshd's clients say where logins came from.
    fn of(procs: impl Iterator<Item = &'a Process>, connections: &[Connection]) -> Lineage<'a> {
        let mut map = HashMap::new();
        for p in procs {
            map.entry(p.pid).or_insert(p);
        }
        Lineage { procs: map, peers: session::Peers::of(connections.iter()) }
    }

    fn parent_name(&self, p: &Process) -> Option<&'a str> {
        self.procs.get(&p.ppid).map(|q| q.name.as_str())
    }

    /// The process known under `pid`.
    fn process(&self, pid: u32) -> Option<&'a Process> {
        self.procs.get(&pid).copied()
    }

    /// What the login `p` belongs to came through: its nearest ancestor known to be outside
    /// the session (the sshd, cron or login that opened it), else the top of its chain.
    fn login_via(&self, p: &'a Process) -> Option<&'a hostwatch_proto::v1::Ancestor> {
        let outside = |a: &&hostwatch_proto::v1::Ancestor| {
            self.process(a.pid).is_some_and(|q| q.name == a.name && q.session_id != p.session_id)
        };
        p.ancestry.iter().find(outside).or(p.ancestry.last())
    }

    /// Where the login `p` belongs to came from, where known.
    fn login_peer(&self, p: &Process) -> Option<std::net::IpAddr> {
        self.peers.of_login(p)
    }

    /// The ancestry of the process `pid` (a socket's owner), where it is known.
    fn ancestry_of(&self, pid: Option<u32>) -> Option<&'a [hostwatch_proto::v1::Ancestor]> {
        pid.and_then(|pid| self.process(pid)).map(|p| p.ancestry.as_slice())
    }

    /// `p`'s parent, its parent's parent, and so on: the ancestry the agent recorded when `p`
    /// started (which names parents that have exited since), else as far as the host's known
    /// processes tell (a loop or an unknown pid ends it).
    fn parents(&self, p: &Process) -> serde_json::Value {
        if !p.ancestry.is_empty() {
            let chain = p.ancestry.iter().take(MAX_PARENTS).map(|a| {
                // The command line, where the ancestor is still known as that same program.
                let cmdline = self.process(a.pid).filter(|q| q.name == a.name).map(|q| q.cmdline_string());
                json!({ "pid": a.pid, "name": a.name, "exe": a.exe, "cmdline": cmdline })
            });
            return json!(chain.collect::<Vec<_>>());
        }
        let mut out = Vec::new();
        let mut pid = p.ppid;
        while pid != 0 && out.len() < MAX_PARENTS {
            let Some(q) = self.procs.get(&pid) else {
                out.push(json!({ "pid": pid }));
                break;
            };
            out.push(json!({ "pid": q.pid, "name": q.name, "exe": q.exe, "cmdline": q.cmdline_string() }));
            if q.ppid == pid || q.ppid == p.pid {
                break;
            }
            pid = q.ppid;
        }
        json!(out)
    }
}

/// Whether an active rule of `w` explains `p`.
fn process_explained(w: &Workload, p: &Process, lineage: &Lineage<'_>, now: OffsetDateTime) -> bool {
    let parent = lineage.parent_name(p);
    (!w.sessions.is_empty() && session::login(p).is_some() && w.allows_session(p, lineage.login_peer(p), now))
        || w.processes.iter().any(|r| active(&r.until, now) && r.matches(p, parent))
}

/// The items of `items` the workload does not explain, and what the built-in rules find in them.
/// `lineage` names parents; `listeners` are the host's, which explain inbound connections.
fn judge_items(
    items: &HostState,
    lineage: &Lineage<'_>,
    listeners: &[Listener],
    workload: Option<&Workload>,
    cx: Context<'_>,
    out: &mut Observations,
) {
    // Which processes the workload explains: worked out once, read by the baseline's rules and
    // the built-in ones alike.
    let explained: Vec<bool> = items
        .processes
        .iter()
        .map(|p| workload.is_some_and(|w| process_explained(w, p, lineage, cx.now)))
        .collect();
    if let Some(w) = workload {
        explain_processes(items, lineage, &explained, out);
        explain_listeners(items, w, lineage, cx.now, out);
        explain_connections(items, listeners, w, lineage, cx, out);
    }
    builtin_rules(items, lineage, listeners, workload, &explained, cx.now, out);
    unauthenticated_services(items, lineage, workload, cx.now, out);
}

/// Listeners whose probe found they answer a client without credentials, whatever the workload
/// (a workload is no excuse for an open Redis), unless a `[[listen]]` rule of the workload with
/// `unauthenticated = true` accepts them. Graded by exposure ([`exposure`]); a service that
/// answers only this host's clients so (Redis's protected mode) is low.
fn unauthenticated_services(
    items: &HostState,
    lineage: &Lineage<'_>,
    workload: Option<&Workload>,
    now: OffsetDateTime,
    out: &mut Observations,
) {
    use hostwatch_proto::v1::AuthVerdict;
    for l in &items.listeners {
        let Some(auth) = &l.auth else { continue };
        let (severity, exposure) = match auth.verdict {
            AuthVerdict::Unauthenticated => exposure(l.address),
            AuthVerdict::LocalOnly => (Severity::Low, "this host's clients only"),
            AuthVerdict::Authenticated | AuthVerdict::Unknown => continue,
        };
        let accepted = workload.is_some_and(|w| {
            w.listens.iter().any(|r| {
                r.unauthenticated && active(&r.until, now) && r.matches(l, lineage.ancestry_of(l.pid))
            })
        });
        if accepted {
            continue;
        }
        let mut detail = listener_detail(l);
        detail["service"] = json!(auth.service);
        detail["verdict"] = json!(auth.verdict.as_str());
        detail["reason"] = json!(auth.reason);
        detail["probed_at"] = json!(hostwatch_proto::v1::timestamp::format(auth.probed_at));
        detail["exposure"] = json!(exposure);
        out.add_graded(
            FindingKind::UnauthenticatedService,
            severity,
            format!("{} on {}", auth.service, l.subject()),
            detail,
        );
    }
}

/// How far a service bound to `address` is reachable, and the severity of its answering anyone:
/// loopback low, a private address high, every address or a public one critical.
pub fn exposure(address: std::net::IpAddr) -> (Severity, &'static str) {
    use std::net::IpAddr;
    let private = match address {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    };
    if address.is_loopback() {
        (Severity::Low, "loopback only")
    } else if address.is_unspecified() {
        (Severity::Critical, "every address")
    } else if private {
        (Severity::High, "a private address")
    } else {
        (Severity::Critical, "a public address")
    }
}

/// The fields of a process that a finding about it shows.
fn process_detail(p: &Process, lineage: &Lineage<'_>) -> serde_json::Value {
    json!({
        "name": p.name,
        "exe": p.exe,
        "exe_deleted": p.exe_deleted,
        "user": p.user_or_uid(),
        "pid": p.pid,
        "ppid": p.ppid,
        "parents": lineage.parents(p),
        "login_uid": p.login_uid,
        "session_id": p.session_id,
        "cmdline": p.cmdline_string(),
        "sha256": p.sha256,
    })
}

/// `explained[i]`: whether the workload explains `state.processes[i]`.
/// What a login session runs that nothing explains is that session's: one `unexpected_session`
/// finding per session, listing the commands, rather than one finding per program.
fn explain_processes(state: &HostState, lineage: &Lineage<'_>, explained: &[bool], out: &mut Observations) {
    let mut unexplained: BTreeMap<&str, Vec<&Process>> = BTreeMap::new();
    let mut sessions: BTreeMap<String, Vec<&Process>> = BTreeMap::new();
    for (p, _) in state.processes.iter().zip(explained).filter(|(_, e)| !**e) {
        match session::subject(p) {
            Some(s) => sessions.entry(s).or_default().push(p),
            None => unexplained.entry(p.subject()).or_default().push(p),
        }
    }
    for (subject, procs) in sessions {
        let ran = procs
            .iter()
            .map(|p| session::ran(p, Some(&hostwatch_proto::v1::timestamp::format(p.start_time))))
            .collect();
        let from = procs.iter().find_map(|p| lineage.login_peer(p));
        let via = lineage.login_via(procs[0]);
        out.add(FindingKind::UnexpectedSession, subject, session::detail(procs[0], from, via, ran));
    }
    for (subject, procs) in unexplained {
        let mut detail = process_detail(procs[0], lineage);
        detail["count"] = json!(procs.len());
        detail["pids"] = json!(procs.iter().take(MAX_PIDS).map(|p| p.pid).collect::<Vec<_>>());
        out.add(FindingKind::UnexpectedProcess, subject.to_owned(), detail);
    }
}

/// Rules with a count: too few matching processes (a required one missing) or too many.
fn process_counts(
    state: &HostState,
    w: &Workload,
    lineage: &Lineage<'_>,
    now: OffsetDateTime,
    out: &mut Observations,
) {
    for rule in w.processes.iter().filter(|r| active(&r.until, now)) {
        if rule.min == 0 && rule.max.is_none() {
            continue;
        }
        let matching: Vec<&Process> =
            state.processes.iter().filter(|p| rule.matches(p, lineage.parent_name(p))).collect();
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

fn explain_listeners(
    state: &HostState,
    w: &Workload,
    lineage: &Lineage<'_>,
    now: OffsetDateTime,
    out: &mut Observations,
) {
    let mut unexplained: BTreeMap<String, Vec<&Listener>> = BTreeMap::new();
    for l in &state.listeners {
        let owner = lineage.ancestry_of(l.pid);
        if !w.listens.iter().any(|r| active(&r.until, now) && r.matches(l, owner)) {
            unexplained.entry(l.subject()).or_default().push(l);
        }
    }
    for (subject, ls) in unexplained {
        let mut detail = listener_detail(ls[0]);
        detail["sockets"] = json!(ls.len());
        out.add(FindingKind::UnexpectedListener, subject, detail);
    }
}

/// The fields of a listener that a finding about it shows.
fn listener_detail(l: &Listener) -> serde_json::Value {
    json!({
        "protocol": l.protocol.as_str(),
        "address": l.address.to_string(),
        "port": l.port,
        "pid": l.pid,
        "process": l.process,
        "exe": l.exe,
        "uid": l.uid,
    })
}

/// Required listeners none of the state's listeners matches.
fn missing_listeners(
    state: &HostState,
    w: &Workload,
    lineage: &Lineage<'_>,
    now: OffsetDateTime,
    out: &mut Observations,
) {
    for rule in w.listens.iter().filter(|r| r.required && active(&r.until, now)) {
        if !state.listeners.iter().any(|l| rule.matches(l, lineage.ancestry_of(l.pid))) {
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

/// Outbound connections no `[[connect]]` rule explains; inbound ones are explained by the
/// listener they came to (one of `listeners` that a `[[listen]]` rule explains) or by a
/// `[[connect]]` rule. The agent's own connections (to its collector, to the cloud's metadata
/// service) explain themselves.
fn explain_connections(
    state: &HostState,
    listeners: &[Listener],
    w: &Workload,
    lineage: &Lineage<'_>,
    cx: Context<'_>,
    out: &mut Observations,
) {
    let mut unexplained: BTreeMap<String, Vec<&Connection>> = BTreeMap::new();
    for c in &state.connections {
        if c.pid.is_some() && c.pid == cx.agent_pid {
            continue;
        }
        if w.connects.iter().any(|r| active(&r.until, cx.now) && r.matches(c, lineage.ancestry_of(c.pid))) {
            continue;
        }
        if c.direction == Direction::Inbound && inbound_explained(listeners, w, lineage, c, cx.now) {
            continue;
        }
        unexplained.entry(c.subject()).or_default().push(c);
    }
    for (subject, cs) in unexplained {
        let c = cs[0];
        out.add(
            FindingKind::UnexpectedConnection,
            subject,
            json!({
                "protocol": c.protocol.as_str(),
                "direction": c.direction.as_str(),
                "local": c.local.to_string(),
                "remote": c.remote.to_string(),
                "pid": c.pid,
                "process": c.process,
                "exe": c.exe,
                "uid": c.uid,
                "connections": cs.len(),
            }),
        );
    }
}

/// Whether an inbound connection came to one of `listeners` that the workload explains.
fn inbound_explained(
    listeners: &[Listener],
    w: &Workload,
    lineage: &Lineage<'_>,
    c: &Connection,
    now: OffsetDateTime,
) -> bool {
    listeners.iter().any(|l| {
        l.protocol == c.protocol
            && l.port == c.local.port()
            && (l.address.is_unspecified() || l.address.to_canonical() == c.local.ip().to_canonical())
            && w.listens.iter().any(|r| active(&r.until, now) && r.matches(l, lineage.ancestry_of(l.pid)))
    })
}

/// The built-in rules over processes and connections, whatever the workload (`None`: none);
/// `explained[i]`: whether the workload explains `state.processes[i]`.
fn builtin_rules(
    state: &HostState,
    lineage: &Lineage<'_>,
    listeners: &[Listener],
    workload: Option<&Workload>,
    explained: &[bool],
    now: OffsetDateTime,
    out: &mut Observations,
) {
    // Asked only for shells no login started, of their few ancestors: a scan of the host's
    // listeners then costs less than building a set for every judged start.
    let listens = |pid: u32| listeners.iter().any(|l| l.pid == Some(pid));
    for (p, explained) in state.processes.iter().zip(explained) {
        if let Some(service) = builtin::listening_ancestor(p, |pid| lineage.process(pid), listens)
            && let Some((rule, severity)) = enabled(workload, builtin::SERVICE_SPAWNED_SHELL)
        {
            let mut detail = process_detail(p, lineage);
            detail["service"] =
                json!({ "pid": service.pid, "name": service.name, "exe": service.exe, "unit": service.unit });
            out.add_rule(rule, severity, p.subject().to_owned(), detail);
        }
        for name in builtin::process_rules(p, *explained, now) {
            let Some((rule, severity)) = enabled(workload, name) else { continue };
            let mut detail = process_detail(p, lineage);
            detail["cpu_percent"] = json!(p.cpu_percent);
            detail["stdio_socket"] = json!(p.stdio_socket);
            detail["exe_replacement"] = json!(p.exe_replacement);
            out.add_rule(rule, severity, p.subject().to_owned(), detail);
        }
    }
    for c in state.connections.iter().filter(|c| builtin::pool_port(c)) {
        // A reviewed `[[connect]]` rule naming the port explains it.
        let allowed = workload.is_some_and(|w| {
            w.connects.iter().any(|r| {
                r.ports.is_some() && active(&r.until, now) && r.matches(c, lineage.ancestry_of(c.pid))
            })
        });
        let Some((rule, severity)) = enabled(workload, builtin::MINING_POOL_PORT) else { continue };
        if allowed {
            continue;
        }
        out.add_rule(
            rule,
            severity,
            c.subject(),
            json!({
                "protocol": c.protocol.as_str(),
                "remote": c.remote.to_string(),
                "local": c.local.to_string(),
                "pid": c.pid,
                "process": c.process,
                "exe": c.exe,
            }),
        );
    }
}

/// Observations keyed by (kind, rule, subject), as findings are: the first one for a key wins.
#[derive(Default)]
struct Observations(BTreeMap<(FindingKind, &'static str, String), Observation>);

impl Observations {
    /// A built-in rule's observation: one finding per rule, so each is triaged (and turned off)
    /// on its own.
    fn add_rule(
        &mut self,
        rule: &builtin::Rule,
        severity: Severity,
        subject: String,
        mut detail: serde_json::Value,
    ) {
        detail["why"] = json!(rule.what);
        self.0.entry((rule.kind, rule.name, subject.clone())).or_insert_with(|| Observation {
            kind: rule.kind,
            rule: Some(rule.name.to_owned()),
            severity,
            subject,
            detail,
            occurrences: 0,
            transient: false,
        });
    }

    /// An observation graded when filed (by what it concerns); the workload's `[severity]` for
    /// its kind still wins.
    fn add_graded(
        &mut self,
        kind: FindingKind,
        severity: Severity,
        subject: String,
        detail: serde_json::Value,
    ) {
        self.0.entry((kind, "", subject.clone())).or_insert_with(|| Observation {
            kind,
            rule: None,
            severity,
            subject,
            detail,
            occurrences: 0,
            transient: false,
        });
    }

    fn add(&mut self, kind: FindingKind, subject: String, detail: serde_json::Value) {
        self.add_graded(kind, default_severity(kind), subject, detail);
    }

    /// The observations, the kinds no rule files graded by the workload's `[severity]`.
    fn finish(self, workload: Option<&Workload>) -> Vec<Observation> {
        let mut obs: Vec<Observation> = self.0.into_values().collect();
        for o in obs.iter_mut().filter(|o| o.rule.is_none()) {
            o.severity = match workload.and_then(|w| w.severity.get(&o.kind)) {
                Some(s) => *s,
                // Graded when filed, by exposure.
                None if o.kind == FindingKind::UnauthenticatedService => o.severity,
                None => default_severity(o.kind),
            };
        }
        obs
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
            auth: None,
        }
    }

    fn workload(srcs: &[&str], name: &str) -> Workload {
        let set = BaselineSet::new(srcs.iter().map(|s| parse("t.toml", s).unwrap()));
        set.check().unwrap();
        set.workload(name).unwrap()
    }

    fn ev(state: &HostState, tags: &BTreeMap<String, String>, target: Target<'_>) -> Vec<Observation> {
        evaluate(state, target, Context { tags, now: OffsetDateTime::UNIX_EPOCH, agent_pid: None })
    }

    fn probed(addr: &str, port: u16, verdict: hostwatch_proto::v1::AuthVerdict) -> Listener {
        Listener {
            auth: Some(hostwatch_proto::v1::ListenerAuth {
                verdict,
                service: "redis".into(),
                reason: "PING and INFO answered without credentials".into(),
                probed_at: OffsetDateTime::UNIX_EPOCH,
            }),
            ..listener(Protocol::Tcp, addr, port, Some("redis-server"))
        }
    }

    #[test]
    fn a_service_answering_anyone_is_graded_by_exposure_and_accepted_only_with_a_reason() {
        use hostwatch_proto::v1::AuthVerdict::{Authenticated, LocalOnly, Unauthenticated, Unknown};
        let state = HostState {
            listeners: vec![
                probed("0.0.0.0", 6379, Unauthenticated),
                probed("10.0.0.5", 6380, Unauthenticated),
                probed("127.0.0.1", 6381, Unauthenticated),
                probed("203.0.113.9", 6382, Unauthenticated),
                probed("0.0.0.0", 6383, LocalOnly),
                probed("0.0.0.0", 6384, Authenticated),
                probed("0.0.0.0", 6385, Unknown),
            ],
            ..HostState::default()
        };
        let tags = BTreeMap::new();
        // Whatever the workload: without a baseline too.
        let obs = ev(&state, &tags, Target::NoBaseline);
        let graded: BTreeMap<&str, Severity> = obs
            .iter()
            .filter(|o| o.kind == FindingKind::UnauthenticatedService)
            .map(|o| (o.subject.as_str(), o.severity))
            .collect();
        assert_eq!(
            graded,
            BTreeMap::from([
                ("redis on tcp/0.0.0.0:6379", Severity::Critical),
                ("redis on tcp/10.0.0.5:6380", Severity::High),
                ("redis on tcp/127.0.0.1:6381", Severity::Low),
                ("redis on tcp/203.0.113.9:6382", Severity::Critical),
                ("redis on tcp/0.0.0.0:6383", Severity::Low),
            ])
        );
        // A rule that accepts it, with its reason; another rule only explains the listener.
        let w = workload(
            &[r#"
name = "cache"
selector = {}
[[listen]]
protocol = "tcp"
port = "6379-6385"
[[listen]]
protocol = "tcp"
port = 6379
unauthenticated = true
reason = "a cache of public pages, on an isolated network"
"#],
            "cache",
        );
        let obs = ev(&state, &tags, Target::Workload(&w));
        let subjects: Vec<&str> = obs
            .iter()
            .filter(|o| o.kind == FindingKind::UnauthenticatedService)
            .map(|o| o.subject.as_str())
            .collect();
        assert!(!subjects.contains(&"redis on tcp/0.0.0.0:6379"), "{subjects:?}");
        assert!(subjects.contains(&"redis on tcp/10.0.0.5:6380"), "{subjects:?}");
        assert!(!obs.iter().any(|o| o.kind == FindingKind::UnexpectedListener), "{obs:?}");
        let refused = parse(
            "t.toml",
            "name = \"x\"\n[[listen]]\nprotocol = \"tcp\"\nport = 6379\nunauthenticated = true\n",
        );
        assert!(refused.is_err_and(|e| e.to_string().contains("needs a reason")));
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
        assert_eq!(ev(&state, &BTreeMap::new(), Target::Workload(&w)), vec![]);
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
        let obs = ev(&state, &BTreeMap::new(), Target::Workload(&w));
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
                // Built-in rules, whatever the baseline: both run from /tmp, one is a miner.
                (FindingKind::SuspiciousProcess, "/tmp/sshd"),
                (FindingKind::SuspiciousProcess, "/tmp/xmrig"),
                (FindingKind::SuspiciousProcess, "/tmp/xmrig"),
            ]
        );
        let rules: Vec<(&str, Severity)> = obs
            .iter()
            .filter(|o| o.kind == FindingKind::SuspiciousProcess && o.subject == "/tmp/xmrig")
            .map(|o| (o.rule.as_deref().unwrap(), o.severity))
            .collect();
        assert_eq!(
            rules,
            [("exe-in-temp", Severity::High), ("miner", Severity::Critical)],
            "a finding per rule"
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
        let obs = ev(&state, &BTreeMap::new(), Target::Workload(&w));
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
        let obs = ev(&state, &BTreeMap::new(), Target::Workload(&w));
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
        let obs = ev(&state, &tags, Target::NoBaseline);
        assert_eq!(kinds(&obs), vec![(FindingKind::NoBaseline, "workload")]);
        assert_eq!(obs[0].detail["tags"]["role"], "db");
        let names = vec!["a".to_owned(), "b".to_owned()];
        let obs = ev(&state, &tags, Target::Ambiguous(&names));
        assert_eq!(kinds(&obs), vec![(FindingKind::AmbiguousWorkload, "a, b")]);
    }

    #[test]
    fn a_learned_baseline_explains_what_it_learned_from() {
        let mut odd = proc(5, "we*i\\rd [name]\\", Some("/opt/a b/we*i\\rd\\"), "root");
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
            connections: (1..=12)
                .map(|i| {
                    conn(Direction::Outbound, "10.0.0.2:40000", &format!("10.0.{i}.9:6379"), 3, "worker")
                })
                .chain([
                    conn(Direction::Outbound, "10.0.0.2:40001", "192.0.2.1:443", 4, "python3"),
                    conn(Direction::Outbound, "[fd00::2]:40002", "[fd00::5]:443", 4, "python3"),
                    conn(Direction::Inbound, "10.0.0.2:443", "203.0.113.7:50000", 1, "nginx"),
                ])
                .collect(),
        };
        let sel: BTreeMap<String, String> = [("role".to_owned(), "dev".to_owned())].into();
        let seen = [crate::baseline::learn::Seen { hostname: "box".into(), state: state.clone() }];
        let text = learn("dev-box", &sel, &seen, "now", OffsetDateTime::UNIX_EPOCH);
        let b = parse("learned.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(b.selector.as_ref().unwrap()["role"], "dev");
        let set = BaselineSet::new([b]);
        let w = set.workload("dev-box").unwrap();
        assert_eq!(ev(&state, &sel, Target::Workload(&w)), vec![], "{text}");
        // Something new is exactly one finding.
        let mut more = state.clone();
        more.listeners.push(listener(Protocol::Tcp, "0.0.0.0", 8000, Some("python3")));
        assert_eq!(
            kinds(&ev(&more, &sel, Target::Workload(&w))),
            vec![(FindingKind::UnexpectedListener, "tcp/0.0.0.0:8000")]
        );
        // Twelve peers are learned as the network that holds them; a peer elsewhere is new.
        assert!(text.contains("remote = [\"10.0.0.0/20\"]"), "{text}");
        let mut out = state.clone();
        out.connections.push(conn(Direction::Outbound, "10.0.0.2:40003", "10.9.0.1:6379", 3, "worker"));
        out.connections.push(conn(Direction::Outbound, "10.0.0.2:40004", "192.0.2.1:8443", 4, "python3"));
        assert_eq!(
            kinds(&ev(&out, &sel, Target::Workload(&w))),
            vec![
                (FindingKind::UnexpectedConnection, "tcp/10.9.0.1:6379 by /usr/bin/worker"),
                (FindingKind::UnexpectedConnection, "tcp/192.0.2.1:8443 by /usr/bin/python3"),
            ]
        );
        // Bound to another address is not the same listener.
        let mut moved = state.clone();
        moved.listeners[2].address = "0.0.0.0".parse().unwrap();
        assert_eq!(
            kinds(&ev(&moved, &sel, Target::Workload(&w))),
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
            sev(&explain_files(&changes, Target::Workload(&strict), OffsetDateTime::UNIX_EPOCH)),
            [
                ("/srv/secret".to_owned(), Severity::High),
                ("/usr/bin/ls".to_owned(), Severity::High),
                ("/usr/bin/cat".to_owned(), Severity::High)
            ]
        );
        let lenient = workload(&[&base.replace("\"deny\"\n[[file]]", "\"allow\"\n[[file]]"), app], "app");
        assert!(lenient.package_changes);
        let obs = explain_files(&changes, Target::Workload(&lenient), OffsetDateTime::UNIX_EPOCH);
        assert_eq!(obs.iter().find(|o| o.subject == "/usr/bin/ls").map(|o| o.severity), Some(Severity::Info));
        // Without a workload every change is a finding; package-made ones at info.
        let none = explain_files(&changes, Target::NoBaseline, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(none.len(), 4);
        assert_eq!(
            none.iter().find(|o| o.subject == "/usr/bin/ls").map(|o| o.severity),
            Some(Severity::Info)
        );
    }

    fn conn(dir: Direction, local: &str, remote: &str, pid: u32, process: &str) -> Connection {
        Connection {
            protocol: Protocol::Tcp,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            direction: dir,
            pid: Some(pid),
            process: Some(process.into()),
            exe: Some(format!("/usr/bin/{process}")),
            uid: 0,
            netns: None,
        }
    }

    #[test]
    fn every_start_is_judged_whether_or_not_it_still_exists() {
        use crate::model::{Item, Started};
        let w = workload(
            &[
                "name = \"w\"\nselector = {}\n[[process]]\nname = \"bash\"\n[[listen]]\nprotocol = \"tcp\"\nport = 22\n",
            ],
            "w",
        );
        let mut shell = proc(100, "bash", Some("/usr/bin/bash"), "root");
        shell.ppid = 1;
        let mut init = proc(1, "systemd", Some("/usr/lib/systemd/systemd"), "root");
        init.ppid = 0;
        // `curl | sh`: the sh is gone too, and still names its parent.
        let mut sh = proc(200, "sh", Some("/usr/bin/sh"), "root");
        sh.ppid = 100;
        let mut dropper = proc(201, "x", Some("/tmp/x"), "root");
        dropper.ppid = 200;
        let state = HostState { processes: vec![init, shell], ..Default::default() };
        let t = |s: i64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s);
        let gone = |p: &Process, end: i64| Started {
            item: Item::Process(Box::new(p.clone())),
            at: Some(t(0)),
            ended: Some(t(end)),
            new: true,
        };
        let listener = Started {
            item: Item::Listener(listener(Protocol::Tcp, "0.0.0.0", 8000, Some("python3"))),
            at: Some(t(0)),
            ended: Some(t(1)),
            new: true,
        };
        let events = [gone(&sh, 1), gone(&dropper, 1), gone(&dropper, 2), listener];
        let tags = BTreeMap::new();
        let cx = Context { tags: &tags, now: t(3), agent_pid: None };
        let obs = judge(&events, &state, Target::Workload(&w), cx);
        let find = |kind, rule: Option<&str>, subject: &str| {
            obs.iter()
                .find(|o| o.kind == kind && o.rule.as_deref() == rule && o.subject == subject)
                .unwrap_or_else(|| panic!("{kind} {rule:?} {subject} in {obs:#?}"))
        };
        let x = find(FindingKind::UnexpectedProcess, None, "/tmp/x");
        assert_eq!((x.occurrences, x.transient), (2, true), "two runs, one observation");
        let parents: Vec<u64> =
            x.detail["parents"].as_array().unwrap().iter().map(|p| p["pid"].as_u64().unwrap()).collect();
        assert_eq!(parents, [200, 100, 1], "its parent chain, the gone sh included");
        assert_eq!(x.detail["exited_at"], "1970-01-01T00:00:02.000Z");
        assert_eq!(x.detail["transient"], true);
        let temp = find(FindingKind::SuspiciousProcess, Some("exe-in-temp"), "/tmp/x");
        assert_eq!((temp.occurrences, temp.severity), (2, Severity::High));
        assert_eq!(find(FindingKind::UnexpectedProcess, None, "/usr/bin/sh").occurrences, 1);
        let l = find(FindingKind::UnexpectedListener, None, "tcp/0.0.0.0:8000");
        assert_eq!((l.transient, l.detail["closed_at"].as_str()), (true, Some("1970-01-01T00:00:01.000Z")));
        assert_eq!(obs.len(), 4, "the explained shell's parent is no finding: {obs:#?}");
        // A start already judged, re-judged to mark it transient, counts no occurrence; merged
        // with the state's observation of the same program it keeps the state's count.
        let again = judge(&[Started { new: false, ..gone(&dropper, 2) }], &state, Target::Workload(&w), cx);
        assert!(again.iter().all(|o| o.occurrences == 0 && o.transient));
        let running = HostState { processes: vec![dropper.clone()], ..Default::default() };
        let merged = merge(evaluate(&running, Target::Workload(&w), cx), obs.clone());
        let x = merged
            .iter()
            .find(|o| o.kind == FindingKind::UnexpectedProcess && o.subject == "/tmp/x")
            .unwrap();
        assert_eq!((x.occurrences, x.transient, x.detail["count"].as_u64()), (2, true, Some(1)));
        // Without a baseline only the built-in rules judge.
        let none = judge(&events, &state, Target::NoBaseline, cx);
        assert_eq!(kinds(&none), [(FindingKind::SuspiciousProcess, "/tmp/x")]);
    }

    #[test]
    fn connections_by_rule_listener_and_agent() {
        let w = workload(
            &[r#"
name = "app"
selector = {}
[[listen]]
protocol = "tcp"
port = 8080
[[connect]]
remote = "10.0.0.0/8"
port = 5432
process = "app"
direction = "outbound"
reason = "the database"
"#],
            "app",
        );
        let state = HostState {
            listeners: vec![listener(Protocol::Tcp, "0.0.0.0", 8080, Some("app"))],
            connections: vec![
                conn(Direction::Outbound, "10.1.1.1:40000", "10.2.3.4:5432", 5, "app"),
                // IPv4 through an IPv6 socket is the same peer.
                conn(Direction::Outbound, "[::ffff:10.1.1.1]:40001", "[::ffff:10.2.3.5]:5432", 5, "app"),
                // A client of an explained listener.
                conn(Direction::Inbound, "10.1.1.1:8080", "203.0.113.9:51234", 5, "app"),
                // The agent's own report.
                conn(Direction::Outbound, "127.0.0.1:40002", "127.0.0.1:8443", 77, "hostwatch-agent"),
                // Right peer, wrong port; right port, wrong peer; wrong program.
                conn(Direction::Outbound, "10.1.1.1:40003", "10.2.3.4:22", 5, "app"),
                conn(Direction::Outbound, "10.1.1.1:40004", "192.0.2.1:5432", 5, "app"),
                conn(Direction::Outbound, "10.1.1.1:40005", "10.2.3.4:5432", 6, "curl"),
                // A client of a listener nobody explains.
                conn(Direction::Inbound, "10.1.1.1:9999", "198.51.100.7:50000", 8, "nc"),
            ],
            ..Default::default()
        };
        let tags = BTreeMap::new();
        let obs = evaluate(
            &state,
            Target::Workload(&w),
            Context { tags: &tags, now: OffsetDateTime::UNIX_EPOCH, agent_pid: Some(77) },
        );
        let conns: Vec<&str> = obs
            .iter()
            .filter(|o| o.kind == FindingKind::UnexpectedConnection)
            .map(|o| o.subject.as_str())
            .collect();
        assert_eq!(
            conns,
            [
                "tcp/10.2.3.4:22 by /usr/bin/app",
                "tcp/10.2.3.4:5432 by /usr/bin/curl",
                "tcp/192.0.2.1:5432 by /usr/bin/app",
                "tcp/198.51.100.7 to :9999 by /usr/bin/nc",
            ]
        );
        // Without the agent's pid its connection is like any other.
        let obs = ev(&state, &tags, Target::Workload(&w));
        assert!(obs.iter().any(|o| o.subject == "tcp/127.0.0.1:8443 by /usr/bin/hostwatch-agent"));
    }

    #[test]
    fn until_cmdline_parent_and_hashes() {
        let hash = "ab".repeat(32);
        let w = workload(
            &[&format!(
                r#"
name = "w"
selector = {{}}
[[process]]
name = "worker"
cmdline = "worker --queue *"
parent = "supervisord"
[[process]]
name = "tool"
sha256 = ["{}"]
[[process]]
name = "supervisord"
[[process]]
name = "migrate"
until = 2024-06-30
reason = "the schema migration this week"
"#,
                hash.to_uppercase()
            )],
            "w",
        );
        let mut sup = proc(1, "supervisord", None, "root");
        sup.pid = 100;
        let mut good = proc(2, "worker", None, "app");
        (good.ppid, good.cmdline) = (100, vec!["worker".into(), "--queue".into(), "mail".into()]);
        let mut orphan = good.clone();
        (orphan.pid, orphan.ppid) = (3, 1);
        let mut args = good.clone();
        (args.pid, args.cmdline) = (4, vec!["worker".into(), "--evil".into()]);
        let mut tool = proc(5, "tool", None, "root");
        tool.sha256 = Some(hash.clone());
        let mut other_tool = proc(6, "tool", None, "root");
        other_tool.sha256 = Some("cd".repeat(32));
        let migrate = proc(7, "migrate", None, "root");
        let state = HostState {
            processes: vec![sup, good, orphan, args, tool, other_tool, migrate],
            ..Default::default()
        };
        let tags = BTreeMap::new();
        let at =
            |date: time::Date| Context { tags: &tags, now: date.midnight().assume_utc(), agent_pid: None };
        let pids = |obs: &[Observation]| {
            let mut v: Vec<u64> = obs
                .iter()
                .flat_map(|o| o.detail["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()))
                .collect();
            v.sort_unstable();
            v
        };
        let june = evaluate(&state, Target::Workload(&w), at(time::macros::date!(2024 - 06 - 30)));
        assert_eq!(
            pids(&june),
            [3, 4, 6],
            "wrong parent, wrong arguments, wrong hash; migrate allowed that day"
        );
        let july = evaluate(&state, Target::Workload(&w), at(time::macros::date!(2024 - 07 - 01)));
        assert_eq!(pids(&july), [3, 4, 6, 7], "the allowance ended with its day");
    }

    #[test]
    fn builtins_turned_off_regraded_and_kinds_regraded() {
        let hot = |pid: u32| {
            let mut p = proc(pid, "enc", Some("/opt/enc/enc"), "root");
            p.cpu_high_since = Some(OffsetDateTime::UNIX_EPOCH);
            p
        };
        let mut temp = proc(2, "x", Some("/tmp/x"), "root");
        temp.cpu_high_since = None;
        let state = HostState { processes: vec![hot(1), temp], ..Default::default() };
        let tags = BTreeMap::new();
        let later = Context {
            tags: &tags,
            now: OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1),
            agent_pid: None,
        };
        let w = workload(
            &[r#"
name = "w"
selector = {}
[severity]
unexpected_process = "low"
[[builtin]]
rule = "high-cpu"
enabled = false
reason = "the encoder runs hot by design"
[[builtin]]
rule = "exe-in-temp"
severity = "critical"
"#],
            "w",
        );
        let obs = evaluate(&state, Target::Workload(&w), later);
        let find = |kind, subject: &str| obs.iter().find(|o| o.kind == kind && o.subject == subject);
        assert!(find(FindingKind::SuspiciousProcess, "/opt/enc/enc").is_none(), "high-cpu is off here");
        assert_eq!(
            find(FindingKind::SuspiciousProcess, "/tmp/x").map(|o| o.severity),
            Some(Severity::Critical)
        );
        assert_eq!(
            find(FindingKind::UnexpectedProcess, "/opt/enc/enc").map(|o| o.severity),
            Some(Severity::Low)
        );
        // Without a baseline every built-in rule runs at its own severity.
        let obs = evaluate(&state, Target::NoBaseline, later);
        let hot = obs.iter().find(|o| o.subject == "/opt/enc/enc").unwrap();
        assert_eq!((hot.rule.as_deref(), hot.severity), (Some("high-cpu"), Severity::Medium));
    }

    #[test]
    fn pool_ports_unless_a_rule_names_the_port_and_persistence_whatever_allows_it() {
        let state = HostState {
            connections: vec![
                conn(Direction::Outbound, "10.1.1.1:40000", "203.0.113.5:3333", 5, "svc"),
                conn(Direction::Outbound, "10.1.1.1:40001", "10.0.0.8:4444", 6, "relay"),
            ],
            ..Default::default()
        };
        let w = workload(
            &[r#"
name = "w"
selector = {}
[[connect]]
remote = "0.0.0.0/0"
process = "svc"
[[connect]]
remote = "10.0.0.8"
port = 4444
process = "relay"
reason = "the relay's upstream really is on 4444"
[[file]]
path = "/etc/**"
change = "allow"
"#],
            "w",
        );
        let tags = BTreeMap::new();
        let obs = ev(&state, &tags, Target::Workload(&w));
        assert_eq!(
            kinds(&obs),
            [(FindingKind::SuspiciousProcess, "tcp/203.0.113.5:3333 by /usr/bin/svc")],
            "a rule without a port does not vouch for a pool port"
        );
        use hostwatch_proto::v1 as p;
        let change = |path: &str| p::FileChange {
            path: path.into(),
            change: p::FileChangeKind::Modified,
            origin: p::ChangeOrigin::Live,
            at: OffsetDateTime::UNIX_EPOCH,
            old: None,
            new: None,
            from_path: None,
            package: None,
        };
        let obs = explain_files(
            &[change("/etc/cron.d/backup"), change("/etc/motd")],
            Target::Workload(&w),
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(obs.len(), 1, "{obs:?}");
        assert_eq!(
            (obs[0].subject.as_str(), obs[0].rule.as_deref()),
            ("/etc/cron.d/backup", Some("persistence"))
        );
    }

    #[test]
    fn a_baseline_learned_from_several_hosts_explains_each_and_counts_them() {
        use crate::baseline::learn::Seen;
        let host = |n: u32, extra: Option<Process>| {
            let mut processes = vec![proc(1, "nginx", Some("/usr/sbin/nginx"), "root")];
            processes.extend(extra);
            Seen {
                hostname: format!("web-{n}"),
                state: HostState {
                    processes,
                    listeners: vec![listener(Protocol::Tcp, "0.0.0.0", 443, Some("nginx"))],
                    connections: vec![conn(
                        Direction::Outbound,
                        "10.0.0.2:40000",
                        &format!("10.0.9.{n}:5432"),
                        1,
                        "nginx",
                    )],
                },
            }
        };
        let hosts =
            [host(1, None), host(2, Some(proc(7, "cron", Some("/usr/sbin/cron"), "root"))), host(3, None)];
        let sel: BTreeMap<String, String> = [("role".to_owned(), "web".to_owned())].into();
        let text = learn("web", &sel, &hosts, "over the 24h before then", OffsetDateTime::UNIX_EPOCH);
        assert!(text.contains("# seen on 3 of 3 hosts\n[[process]]\nname = \"nginx\""), "{text}");
        assert!(text.contains("# seen on 1 of 3 hosts\n[[process]]\nname = \"cron\""), "{text}");
        assert!(text.contains("from 3 hosts (web-1, web-2, web-3), over the 24h before then"), "{text}");
        let b = parse("learned.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let w = BaselineSet::new([b]).workload("web").unwrap();
        for h in &hosts {
            assert_eq!(ev(&h.state, &sel, Target::Workload(&w)), vec![], "{}: {text}", h.hostname);
        }
    }

    #[test]
    fn rare_items_among_peers_are_outliers_unless_another_finding_covers_them() {
        let w = workload(
            &[
                "name = \"fleet\"\nselector = {}\n[[process]]\nname = \"*\"\n[[listen]]\nprotocol = \"tcp\"\nport = \"1-65535\"\n[[connect]]\nremote = \"0.0.0.0/0\"\nport = \"1-65535\"\n",
            ],
            "fleet",
        );
        let state = HostState {
            processes: vec![
                proc(1, "nginx", Some("/usr/sbin/nginx"), "root"),
                proc(2, "odd", Some("/opt/odd/odd"), "root"),
                proc(3, "x", Some("/tmp/x"), "root"),
            ],
            listeners: vec![
                listener(Protocol::Tcp, "0.0.0.0", 443, Some("nginx")),
                listener(Protocol::Tcp, "0.0.0.0", 6667, Some("odd")),
            ],
            connections: vec![conn(Direction::Outbound, "10.0.0.2:40000", "10.9.9.9:5432", 1, "nginx")],
        };
        let mut counts = PeerCounts { hosts: 40, ..Default::default() };
        counts.processes.insert("/usr/sbin/nginx".into(), 40);
        counts.processes.insert("/opt/odd/odd".into(), 1);
        counts.processes.insert("/tmp/x".into(), 1);
        counts.listeners.insert((Protocol::Tcp, 443), 40);
        counts.listeners.insert((Protocol::Tcp, 6667), 1);
        counts.connections.insert("tcp/*:5432 by /usr/bin/nginx".into(), 2);
        let tags = BTreeMap::new();
        let covered = ev(&state, &tags, Target::Workload(&w));
        let got = outliers(&state, &w, &counts, &covered);
        assert_eq!(
            kinds(&got),
            [(FindingKind::Outlier, "/opt/odd/odd"), (FindingKind::Outlier, "tcp/0.0.0.0:6667")],
            "/tmp/x has its own finding (exe-in-temp); the connection is on 2 of 40 hosts, 5%: not fewer"
        );
        let mut one = counts.clone();
        one.connections.insert("tcp/*:5432 by /usr/bin/nginx".into(), 1);
        assert!(
            kinds(&outliers(&state, &w, &one, &covered))
                .contains(&(FindingKind::Outlier, "tcp/*:5432 by /usr/bin/nginx"))
        );
        assert_eq!(got[0].detail["peers_with_it"], 1);
        assert_eq!(got[0].severity, Severity::Low);
        // 2 of 40 is not rare; 1 of 40 is.
        assert!(!got.iter().any(|o| o.subject.contains("nginx") && o.detail["item"] == "process"));
        // A small workload has no peers to speak of.
        assert!(outliers(&state, &w, &PeerCounts { hosts: 9, ..counts.clone() }, &covered).is_empty());
        let off = workload(&["name = \"f\"\nselector = {}\n[peers]\nenabled = false\n"], "f");
        assert!(outliers(&state, &off, &counts, &[]).is_empty());
    }

    #[test]
    fn a_logins_unexplained_commands_are_one_session_finding_unless_a_session_rule_allows_it() {
        use crate::model::{Item, Started};
        let ancestor =
            |pid: u32, name: &str| hostwatch_proto::v1::Ancestor { pid, name: name.into(), exe: None };
        let in_session = |pid: u32, name: &str| {
            let mut p = proc(pid, name, Some(&format!("/usr/bin/{name}")), "root");
            (p.login_uid, p.login_user, p.session_id) = (Some(1000), Some("alice".into()), Some(7));
            p.ancestry = vec![ancestor(90, "bash"), ancestor(80, "sshd"), ancestor(70, "sshd")];
            p
        };
        let (curl, vi) = (in_session(101, "curl"), in_session(102, "vi"));
        // A daemon's program is its own finding, as before.
        let daemon = proc(103, "miner", Some("/usr/sbin/miner"), "root");
        let ssh_in = |remote: &str| Connection {
            protocol: Protocol::Tcp,
            local: "10.0.0.1:22".parse().unwrap(),
            remote: remote.parse().unwrap(),
            direction: Direction::Inbound,
            pid: Some(80),
            process: Some("sshd".into()),
            exe: Some("/usr/sbin/sshd".into()),
            uid: 0,
            netns: None,
        };
        let state = |remote: &str| HostState {
            processes: vec![curl.clone(), vi.clone(), daemon.clone()],
            connections: vec![ssh_in(remote)],
            listeners: vec![listener(Protocol::Tcp, "0.0.0.0", 22, Some("sshd"))],
        };
        let tags = BTreeMap::new();
        let cx = Context { tags: &tags, now: OffsetDateTime::UNIX_EPOCH, agent_pid: None };
        let rule = |extra: &str| {
            let sshd = "[[listen]]\nprotocol = \"tcp\"\nport = 22\n";
            workload(&[&format!("name = \"w\"\nselector = {{}}\n{sshd}{extra}")], "w")
        };

        // No session rule: the login is one finding naming who, from where, and what ran.
        let w = rule("");
        let obs = evaluate(&state("192.0.2.7:50123"), Target::Workload(&w), cx);
        let mut k = kinds(&obs);
        k.sort();
        assert_eq!(
            k,
            [
                (FindingKind::UnexpectedProcess, "/usr/sbin/miner"),
                (FindingKind::UnexpectedSession, "session 7 of alice")
            ]
        );
        let s = obs.iter().find(|o| o.kind == FindingKind::UnexpectedSession).unwrap();
        assert_eq!(s.severity, Severity::High);
        assert_eq!(
            (s.detail["from"].as_str(), s.detail["via"]["pid"].as_u64()),
            (Some("192.0.2.7"), Some(70))
        );
        let ran: Vec<&str> =
            s.detail["ran"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(ran, ["curl", "vi"]);

        // A rule for the user explains the whole session; one for another user does not.
        let allowed = rule("[[session]]\nuser = [\"alice\"]\n");
        let obs = evaluate(&state("192.0.2.7:50123"), Target::Workload(&allowed), cx);
        assert_eq!(kinds(&obs), [(FindingKind::UnexpectedProcess, "/usr/sbin/miner")]);
        let other = rule("[[session]]\nuser = [\"bob\", \"1001\"]\n");
        let obs = evaluate(&state("192.0.2.7:50123"), Target::Workload(&other), cx);
        assert!(obs.iter().any(|o| o.kind == FindingKind::UnexpectedSession), "{obs:#?}");
        // By uid as well as by name.
        let by_uid = rule("[[session]]\nuser = [\"1000\"]\n");
        let obs = evaluate(&state("192.0.2.7:50123"), Target::Workload(&by_uid), cx);
        assert!(obs.iter().all(|o| o.kind != FindingKind::UnexpectedSession), "{obs:#?}");

        // `from`: the login's sshd peer must be in it; an unknown peer is not.
        let bastion = rule("[[session]]\nuser = [\"alice\"]\nfrom = [\"10.9.0.0/16\"]\n");
        let judged = |st: &HostState| evaluate(st, Target::Workload(&bastion), cx);
        assert!(judged(&state("10.9.3.4:40000")).iter().all(|o| o.kind != FindingKind::UnexpectedSession));
        let outside = judged(&state("192.0.2.7:50123"));
        let s = outside.iter().find(|o| o.kind == FindingKind::UnexpectedSession).expect("from elsewhere");
        assert_eq!(s.detail["from"], "192.0.2.7");
        let unknown = HostState { connections: Vec::new(), ..state("10.9.3.4:40000") };
        assert!(judged(&unknown).iter().any(|o| o.kind == FindingKind::UnexpectedSession));

        // Judged as starts: one observation for the session, each start one occurrence, the
        // gone one with its end; merged with the state's, each command listed once.
        let t = |s: i64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s);
        let started = |p: &Process, ended: Option<i64>| Started {
            item: Item::Process(Box::new(p.clone())),
            at: Some(t(0)),
            ended: ended.map(t),
            new: true,
        };
        let id = in_session(104, "id");
        let st = state("192.0.2.7:50123");
        let events = judge(&[started(&curl, None), started(&id, Some(1))], &st, Target::Workload(&w), cx);
        let s = events.iter().find(|o| o.kind == FindingKind::UnexpectedSession).expect("the session");
        assert_eq!((s.occurrences, s.transient), (2, true));
        assert_eq!(events.iter().filter(|o| o.kind == FindingKind::UnexpectedSession).count(), 1);
        let merged = merge(evaluate(&st, Target::Workload(&w), cx), events);
        let s = merged.iter().find(|o| o.kind == FindingKind::UnexpectedSession).unwrap();
        let ran: Vec<&str> =
            s.detail["ran"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(ran, ["curl", "vi", "id"], "by start, then pid: {}", s.detail);
        let gone = s.detail["ran"].as_array().unwrap().iter().find(|r| r["name"] == "id").unwrap();
        assert_eq!(gone["exited_at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(s.occurrences, 2);

        // Learnt: a session rule for the user (where from, as a hint), no rule per command, and
        // it explains the session it was learnt from.
        let mut history_only = in_session(105, "top");
        (history_only.login_user, history_only.login_uid) = (None, Some(1001));
        let mut seen = state("192.0.2.7:50123");
        seen.processes.push(history_only);
        let sel = BTreeMap::new();
        let text = learn(
            "l",
            &sel,
            &[crate::baseline::learn::Seen { hostname: "b".into(), state: seen.clone() }],
            "now",
            t(0),
        );
        assert!(text.contains("[[session]]\nuser = [\"alice\"]\n# logins came from: to allow only those, from = [\"192.0.2.7\"]"), "{text}");
        assert!(text.contains("[[session]]\nuser = [\"1001\"]"), "{text}");
        assert!(!text.contains("/usr/bin/curl"), "a login's command is no program rule: {text}");
        let set = BaselineSet::new([parse("l.toml", &text).unwrap()]);
        let learnt = set.workload("l").unwrap();
        assert_eq!(ev(&seen, &sel, Target::Workload(&learnt)), vec![], "{text}");
    }
}
