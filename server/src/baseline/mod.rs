//! Baselines: the expected state of a workload, as TOML files a reviewer reads in a pull request.
//!
//! [`parse`] turns one file into a [`Baseline`], refusing anything malformed with file, line,
//! column and what is wrong; [`BaselineSet`] holds every stored baseline, resolves `include`,
//! and selects a host's workload by its tags ([`select`]); [`learn`] writes a baseline from what a
//! host runs.
//!
//! Architecture invariant: nothing here does I/O. Sources come in as text, from the store or from
//! a file the caller read.

pub mod learn;
mod parse;
pub mod select;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use globset::GlobMatcher;
use hostwatch_agent::shared::config::file::FileError;
use hostwatch_proto::v1::{Ancestor, Direction, FindingKind, Protocol, Severity};
use ipnet::IpNet;
use time::OffsetDateTime;

use crate::model::{Connection, Listener, Process};

pub use parse::parse;
pub use select::Selection;

/// A compiled glob and the text it was written as.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    matcher: GlobMatcher,
}

impl Pattern {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }

    /// Whether the pattern has no glob syntax: it names exactly one thing.
    pub fn is_literal(&self) -> bool {
        !self.text.contains(['*', '?', '[', '{', '\\'])
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Where a rule was written, for findings and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOrigin {
    pub baseline: String,
    /// 1-based position among the baseline's rules of its kind.
    pub index: usize,
    /// 1-based line in the baseline's source.
    pub line: usize,
}

/// `until`: when an allowance ends; after it, what it explained is a finding again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Until {
    pub time: OffsetDateTime,
    /// As written.
    pub text: String,
    /// Line and column in the source, for lint.
    pub at: (usize, usize),
}

/// Whether a rule with `until` still applies at `now`.
pub fn active(until: &Option<Until>, now: OffsetDateTime) -> bool {
    until.as_ref().is_none_or(|u| now < u.time)
}

/// `[[process]]`: processes the workload is expected to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRule {
    /// Glob over the process name.
    pub name: Pattern,
    /// Glob over the executable's path; `*` does not cross `/`, `**` does.
    pub exe: Option<Pattern>,
    /// Allowed user names (or uids written as numbers); empty allows every user.
    pub users: Vec<String>,
    /// Allowed SHA-256 of the executable, lowercase hex; empty allows any.
    pub sha256: Vec<String>,
    /// Glob over the command line (arguments joined by spaces).
    pub cmdline: Option<Pattern>,
    /// Glob over the parent process's name.
    pub parent: Option<Pattern>,
    /// Glob over any ancestor's name or executable (`nginx`, `/usr/sbin/sshd`).
    pub ancestor: Option<Pattern>,
    /// At least this many matching processes must run (0: not required).
    pub min: u32,
    /// At most this many may run.
    pub max: Option<u32>,
    pub reason: Option<String>,
    pub until: Option<Until>,
    pub origin: RuleOrigin,
}

impl ProcessRule {
    /// Whether the rule explains `p`, whose parent is named `parent` (where it is known). A rule
    /// with hashes explains nothing whose hash is unknown, and a rule with a parent nothing whose
    /// parent is unknown: an allowance that cannot be checked is not granted.
    pub fn matches(&self, p: &Process, parent: Option<&str>) -> bool {
        self.name.is_match(&p.name)
            && self.exe.as_ref().is_none_or(|e| p.exe.as_deref().is_some_and(|x| e.is_match(x)))
            && (self.users.is_empty()
                || self
                    .users
                    .iter()
                    .any(|u| p.user.as_deref() == Some(u.as_str()) || *u == p.uid.to_string()))
            && (self.sha256.is_empty()
                || p.sha256.as_deref().is_some_and(|h| self.sha256.iter().any(|x| x.eq_ignore_ascii_case(h))))
            && self.cmdline.as_ref().is_none_or(|c| c.is_match(&p.cmdline_string()))
            && self.parent.as_ref().is_none_or(|pp| parent.is_some_and(|n| pp.is_match(n)))
            && self.ancestor.as_ref().is_none_or(|a| ancestor_matches(a, Some(&p.ancestry)))
    }

    /// The subject of a finding about this rule: the executable where the rule names one, else
    /// the name.
    pub fn subject(&self) -> &str {
        match &self.exe {
            Some(exe) => exe.as_str(),
            None => self.name.as_str(),
        }
    }
}

/// Whether any of `ancestry` (parent first) has a name or executable `pattern` matches. Unknown
/// ancestry matches nothing: an allowance that cannot be checked is not granted.
fn ancestor_matches(pattern: &Pattern, ancestry: Option<&[Ancestor]>) -> bool {
    ancestry.is_some_and(|chain| {
        chain
            .iter()
            .any(|a| pattern.is_match(&a.name) || a.exe.as_deref().is_some_and(|e| pattern.is_match(e)))
    })
}

/// `[[session]]`: interactive login sessions the workload expects, by who logged in (the audit
/// login uid's name, or the uid written as a number) and, with `from`, where from (the peer of
/// the session's sshd connection). What such a session runs is explained as that session's,
/// whatever the program; a process no login started is never explained by one.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRule {
    pub users: Vec<String>,
    /// Networks the login must come from; empty: anywhere, or where it came from is not known.
    pub from: Vec<IpNet>,
    pub reason: Option<String>,
    pub until: Option<Until>,
    pub origin: RuleOrigin,
}

impl SessionRule {
    /// Whether `p` belongs to a login session of one of the rule's users, from one of its
    /// networks where it names any (`peer`: where the session came from, if known; a rule with
    /// `from` allows no session whose origin is unknown).
    pub fn allows(&self, p: &Process, peer: Option<IpAddr>) -> bool {
        let (Some(uid), Some(_)) = (p.login_uid, p.session_id) else { return false };
        let from_ok = self.from.is_empty()
            || peer.is_some_and(|a| self.from.iter().any(|n| n.contains(&a.to_canonical())));
        from_ok
            && self.users.iter().any(|u| p.login_user.as_deref() == Some(u.as_str()) || *u == uid.to_string())
    }
}

/// `[[file]]`: changes to watched paths the workload makes on purpose (`allow`), or that must
/// stay findings whatever another rule allows (`deny`). A change no rule allows is a finding.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRule {
    /// Glob over paths: `*` within one directory, `**` across them.
    pub path: Pattern,
    pub allow: bool,
    pub reason: Option<String>,
    pub until: Option<Until>,
    pub origin: RuleOrigin,
}

/// `[[connect]]`: connections the workload is expected to make (or, `inbound`, to take).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRule {
    /// `None`: TCP and UDP.
    pub protocol: Option<Protocol>,
    /// Networks the peer may be in (an address is a network of one).
    pub remotes: Vec<IpNet>,
    /// The service's port: the peer's for an outbound connection, this host's for an inbound
    /// one. `None`: any.
    pub ports: Option<RangeInclusive<u16>>,
    /// Glob over the owning process's name.
    pub process: Option<Pattern>,
    /// Glob over any of the owning process's ancestors' names or executables.
    pub ancestor: Option<Pattern>,
    /// `None`: either way.
    pub direction: Option<Direction>,
    pub reason: Option<String>,
    pub until: Option<Until>,
    pub origin: RuleOrigin,
}

impl ConnectRule {
    /// Whether the rule explains `c`. An IPv4 peer seen through an IPv6 socket (`::ffff:a.b.c.d`)
    /// is its IPv4 address.
    pub fn matches(&self, c: &Connection, ancestry: Option<&[Ancestor]>) -> bool {
        let remote = c.remote.ip().to_canonical();
        let port = match c.direction {
            Direction::Inbound => c.local.port(),
            Direction::Outbound => c.remote.port(),
        };
        self.protocol.is_none_or(|p| p == c.protocol)
            && self.direction.is_none_or(|d| d == c.direction)
            && self.remotes.iter().any(|n| n.contains(&remote))
            && self.ports.as_ref().is_none_or(|r| r.contains(&port))
            && self.process.as_ref().is_none_or(|p| c.process.as_deref().is_some_and(|n| p.is_match(n)))
            && self.ancestor.as_ref().is_none_or(|a| ancestor_matches(a, ancestry))
    }
}

/// `[peers]`: in a workload of at least `min_hosts` hosts, an item found on fewer than
/// `rare_below_percent` of them is an outlier finding (unless another finding covers it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerSettings {
    pub enabled: bool,
    pub min_hosts: u32,
    pub rare_below_percent: f64,
}

impl PeerSettings {
    pub const DEFAULT: PeerSettings = PeerSettings { enabled: true, min_hosts: 10, rare_below_percent: 5.0 };
}

/// `[[builtin]]`: a built-in rule turned off for the workload (with a reason) or re-graded.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinSetting {
    pub rule: String,
    pub enabled: bool,
    pub severity: Option<Severity>,
    pub reason: Option<String>,
}

/// `[[listen]]`: sockets the workload is expected to listen on.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenRule {
    pub protocol: Protocol,
    pub ports: RangeInclusive<u16>,
    /// Allowed local addresses; empty allows every address.
    pub addresses: Vec<IpAddr>,
    /// Glob over the owning process's name.
    pub process: Option<Pattern>,
    /// Glob over any of the owning process's ancestors' names or executables.
    pub ancestor: Option<Pattern>,
    /// A matching listener must exist.
    pub required: bool,
    /// A matching listener may answer without credentials (its probe's `unauthenticated_service`
    /// finding is accepted); a rule that says so has a reason.
    pub unauthenticated: bool,
    pub reason: Option<String>,
    pub until: Option<Until>,
    pub origin: RuleOrigin,
}

impl ListenRule {
    /// Whether the rule explains `l`, whose owner descends from `ancestry` (where known).
    pub fn matches(&self, l: &Listener, ancestry: Option<&[Ancestor]>) -> bool {
        self.protocol == l.protocol
            && self.ports.contains(&l.port)
            && (self.addresses.is_empty() || self.addresses.contains(&l.address))
            && self.process.as_ref().is_none_or(|p| l.process.as_deref().is_some_and(|n| p.is_match(n)))
            && self.ancestor.as_ref().is_none_or(|a| ancestor_matches(a, ancestry))
    }

    /// The subject of a missing_listener finding: `tcp/*:443`, `tcp/0.0.0.0:443`, `udp/*:8000-8099`.
    pub fn subject(&self) -> String {
        let port = if self.ports.start() == self.ports.end() {
            self.ports.start().to_string()
        } else {
            format!("{}-{}", self.ports.start(), self.ports.end())
        };
        match self.addresses.as_slice() {
            [IpAddr::V6(ip)] => format!("{}/[{ip}]:{port}", self.protocol),
            [IpAddr::V4(ip)] => format!("{}/{ip}:{port}", self.protocol),
            _ => format!("{}/*:{port}", self.protocol),
        }
    }
}

/// One parsed baseline file.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub name: String,
    pub description: Option<String>,
    /// Host tags it selects; `None` for a library that others include, an empty table for every host.
    pub selector: Option<BTreeMap<String, String>>,
    pub include: Vec<String>,
    pub processes: Vec<ProcessRule>,
    pub listens: Vec<ListenRule>,
    pub files: Vec<FileRule>,
    pub connects: Vec<ConnectRule>,
    pub sessions: Vec<SessionRule>,
    pub builtins: Vec<BuiltinSetting>,
    /// `[severity]`: a kind's severity for this workload.
    pub severity: BTreeMap<FindingKind, Severity>,
    /// `[peers]`: when a rare item is an outlier; `None` leaves it to the includes, then the default.
    pub peers: Option<PeerSettings>,
    /// `package_changes`: whether a change a package made is allowed (kept as info); `None`
    /// leaves it to the baselines included, then to the default (allowed).
    pub package_changes: Option<bool>,
    /// What lint warns of: rules that explain too much, or can never match as written.
    pub warnings: Vec<FileError>,
}

impl Baseline {
    /// Rules of its own, not counting included ones.
    pub fn rule_count(&self) -> usize {
        self.processes.len()
            + self.listens.len()
            + self.files.len()
            + self.connects.len()
            + self.sessions.len()
    }

    /// Every `until` of its rules, with what kind of rule carries it.
    pub fn untils(&self) -> impl Iterator<Item = (&'static str, &Until)> {
        let p = self.processes.iter().filter_map(|r| r.until.as_ref().map(|u| ("process", u)));
        let l = self.listens.iter().filter_map(|r| r.until.as_ref().map(|u| ("listen", u)));
        let f = self.files.iter().filter_map(|r| r.until.as_ref().map(|u| ("file", u)));
        let c = self.connects.iter().filter_map(|r| r.until.as_ref().map(|u| ("connect", u)));
        p.chain(l).chain(f).chain(c)
    }
}

/// What lint warns of in `b` (read from `file`) at `now`: rules that explain too much or cannot
/// mean what they say, and allowances whose `until` has passed.
pub fn warnings(b: &Baseline, file: &str, now: OffsetDateTime) -> Vec<String> {
    let mut out: Vec<String> = b.warnings.iter().map(ToString::to_string).collect();
    for (kind, u) in b.untils().filter(|(_, u)| u.time <= now) {
        out.push(format!(
            "{file}:{}:{}: warning: this [[{kind}]] rule expired (until {}): what it explained is a finding again",
            u.at.0, u.at.1, u.text
        ));
    }
    out
}

/// A baseline with everything it includes: the rules a host of the workload is held to.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub name: String,
    pub processes: Vec<ProcessRule>,
    pub listens: Vec<ListenRule>,
    pub files: Vec<FileRule>,
    pub connects: Vec<ConnectRule>,
    pub sessions: Vec<SessionRule>,
    /// Built-in rules' settings, by rule: the workload's own baseline first, then its includes.
    pub builtins: BTreeMap<String, BuiltinSetting>,
    /// Severity per kind: the workload's own baseline first, then its includes.
    pub severity: BTreeMap<FindingKind, Severity>,
    /// The workload's own `[peers]`, else the first included one's, else the default.
    pub peers: PeerSettings,
    /// Whether package-made changes are allowed (kept as info): the workload's own baseline
    /// decides, else the first included one that says, else yes.
    pub package_changes: bool,
}

impl Workload {
    /// An empty workload named `name`.
    fn named(name: &str) -> Workload {
        Workload {
            name: name.to_owned(),
            processes: Vec::new(),
            listens: Vec::new(),
            files: Vec::new(),
            connects: Vec::new(),
            sessions: Vec::new(),
            builtins: BTreeMap::new(),
            severity: BTreeMap::new(),
            peers: PeerSettings::DEFAULT,
            package_changes: true,
        }
    }

    /// Whether an active `[[session]]` rule allows the login session `p` belongs to, which came
    /// from `peer` where known.
    pub fn allows_session(&self, p: &Process, peer: Option<IpAddr>, now: OffsetDateTime) -> bool {
        self.sessions.iter().any(|r| active(&r.until, now) && r.allows(p, peer))
    }

    /// Whether a change at `path` is expected at `now`: some `allow` rule matches and no `deny`
    /// rule does.
    pub fn allows_file_change(&self, path: &str, now: OffsetDateTime) -> bool {
        let mut allowed = false;
        for r in self.files.iter().filter(|r| active(&r.until, now) && r.path.is_match(path)) {
            if !r.allow {
                return false;
            }
            allowed = true;
        }
        allowed
    }
}

/// Why a set of baselines does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error("baseline `{baseline}` includes `{missing}`, which is not a known baseline")]
    MissingInclude { baseline: String, missing: String },
    #[error("baselines include each other in a cycle: {}", cycle.join(" -> "))]
    IncludeCycle { cycle: Vec<String> },
}

/// Every known baseline, by name.
#[derive(Debug, Clone, Default)]
pub struct BaselineSet {
    baselines: BTreeMap<String, Baseline>,
}

impl BaselineSet {
    pub fn new(baselines: impl IntoIterator<Item = Baseline>) -> Self {
        BaselineSet { baselines: baselines.into_iter().map(|b| (b.name.clone(), b)).collect() }
    }

    pub fn get(&self, name: &str) -> Option<&Baseline> {
        self.baselines.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Baseline> {
        self.baselines.values()
    }

    /// Adds or replaces one baseline.
    pub fn insert(&mut self, b: Baseline) {
        self.baselines.insert(b.name.clone(), b);
    }

    /// Checks that every include names a known baseline and that includes form no cycle.
    pub fn check(&self) -> Result<(), SetError> {
        for name in self.baselines.keys() {
            self.workload(name)?;
        }
        Ok(())
    }

    /// The rules of `name` and of everything it includes, each baseline's rules once.
    pub fn workload(&self, name: &str) -> Result<Workload, SetError> {
        let mut w = Workload::named(name);
        let mut done = BTreeSet::new();
        let mut path = Vec::new();
        let mut package_changes = None;
        self.collect(name, &mut w, &mut done, &mut path, &mut package_changes)?;
        w.package_changes = package_changes.unwrap_or(true);
        // The same order as package_changes: own first, then includes depth first.
        w.peers = self.peers_of(name, &mut BTreeSet::new()).unwrap_or(PeerSettings::DEFAULT);
        Ok(w)
    }

    fn peers_of(&self, name: &str, seen: &mut BTreeSet<String>) -> Option<PeerSettings> {
        if !seen.insert(name.to_owned()) {
            return None;
        }
        let b = self.baselines.get(name)?;
        b.peers.or_else(|| b.include.iter().find_map(|i| self.peers_of(i, seen)))
    }

    fn collect(
        &self,
        name: &str,
        w: &mut Workload,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        package_changes: &mut Option<bool>,
    ) -> Result<(), SetError> {
        if path.iter().any(|p| p == name) {
            let mut cycle = path.clone();
            cycle.push(name.to_owned());
            return Err(SetError::IncludeCycle { cycle });
        }
        if !done.insert(name.to_owned()) {
            return Ok(());
        }
        let b = self.baselines.get(name).ok_or_else(|| SetError::MissingInclude {
            baseline: path.last().cloned().unwrap_or_else(|| name.to_owned()),
            missing: name.to_owned(),
        })?;
        path.push(name.to_owned());
        w.processes.extend(b.processes.iter().cloned());
        w.listens.extend(b.listens.iter().cloned());
        w.files.extend(b.files.iter().cloned());
        w.connects.extend(b.connects.iter().cloned());
        w.sessions.extend(b.sessions.iter().cloned());
        for s in &b.builtins {
            w.builtins.entry(s.rule.clone()).or_insert_with(|| s.clone());
        }
        for (k, v) in &b.severity {
            w.severity.entry(*k).or_insert(*v);
        }
        // The workload's own baseline first, then its includes depth first: the first that says.
        if package_changes.is_none() {
            *package_changes = b.package_changes;
        }
        for inc in &b.include {
            self.collect(inc, w, done, path, package_changes)?;
        }
        path.pop();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(src: &str) -> Baseline {
        parse("t.toml", src).unwrap()
    }

    #[test]
    fn include_composes_rules_once() {
        let set = BaselineSet::new([
            b("name = \"base\"\n[[process]]\nname = \"sshd\"\n"),
            b("name = \"mid\"\ninclude = [\"base\"]\n[[process]]\nname = \"cron\"\n"),
            b(
                "name = \"web\"\nselector = {}\ninclude = [\"mid\", \"base\"]\n[[listen]]\nprotocol = \"tcp\"\nport = 443\n",
            ),
        ]);
        set.check().unwrap();
        let w = set.workload("web").unwrap();
        let names: Vec<_> = w.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["cron", "sshd"], "base's rules once, though included twice");
        assert_eq!(w.listens.len(), 1);
        assert_eq!(w.processes[1].origin.baseline, "base");
    }

    #[test]
    fn missing_includes_and_cycles_are_errors() {
        let set = BaselineSet::new([b("name = \"a\"\ninclude = [\"nope\"]\n")]);
        assert_eq!(
            set.check().unwrap_err().to_string(),
            "baseline `a` includes `nope`, which is not a known baseline"
        );
        let set = BaselineSet::new([
            b("name = \"a\"\ninclude = [\"b\"]\n"),
            b("name = \"b\"\ninclude = [\"a\"]\n"),
        ]);
        assert_eq!(
            set.check().unwrap_err().to_string(),
            "baselines include each other in a cycle: a -> b -> a"
        );
    }

    #[test]
    fn listen_subjects() {
        let w = b(
            "name = \"x\"\n[[listen]]\nprotocol = \"tcp\"\nport = 443\n[[listen]]\nprotocol = \"udp\"\nport = \"8000-8099\"\naddress = \"::\"\n[[listen]]\nprotocol = \"tcp\"\nport = 22\naddress = [\"0.0.0.0\"]\n",
        );
        let s: Vec<_> = w.listens.iter().map(ListenRule::subject).collect();
        assert_eq!(s, ["tcp/*:443", "udp/[::]:8000-8099", "tcp/0.0.0.0:22"]);
    }
}
