//! Built-in rules: what is suspicious on any Linux host whatever its baseline. Each is named (the
//! finding's `rule`), listed in [`RULES`] and in docs/rules.md, and may be turned off for a
//! workload with a reason, or re-graded, by `[[builtin]]` in its baseline.
//!
//! Invariant: pure functions of what the agent reported (and `now`); the thresholds are here,
//! written once.

use globset::{Glob, GlobSet, GlobSetBuilder};
use hostwatch_proto::v1::{Direction, FileChange, FileChangeKind, FindingKind, Severity, is_interactive};
use std::sync::LazyLock;
use time::{Duration, OffsetDateTime};

use crate::model::{Connection, Process};

/// One built-in rule.
#[derive(Debug)]
pub struct Rule {
    pub name: &'static str,
    pub kind: FindingKind,
    pub severity: Severity,
    /// What it finds, for documentation and the finding's detail.
    pub what: &'static str,
}

const fn rule(name: &'static str, kind: FindingKind, severity: Severity, what: &'static str) -> Rule {
    Rule { name, kind, severity, what }
}

use FindingKind::{FileChanged, SuspiciousProcess};

/// Every built-in rule. Names are stable: baselines and alert routes refer to them.
pub const RULES: &[Rule] = &[
    rule(EXE_DELETED, SuspiciousProcess, Severity::High, "its executable was deleted while it runs"),
    rule(
        EXE_REPLACED,
        SuspiciousProcess,
        Severity::Info,
        "it still runs an executable its package has since upgraded: the file now at its path is what the package installed (restart it)",
    ),
    rule(
        EXE_TAMPERED,
        SuspiciousProcess,
        Severity::Critical,
        "its executable was replaced by a file its package did not install, or at a path no package owns",
    ),
    rule(EXE_IN_TEMP, SuspiciousProcess, Severity::High, "it runs from /tmp, /var/tmp or /dev/shm"),
    rule(EXE_MEMFD, SuspiciousProcess, Severity::Critical, "it runs from memory (a memfd), with no file"),
    rule(
        FAKE_KERNEL_THREAD,
        SuspiciousProcess,
        Severity::High,
        "it goes by a kernel thread's name ([kworker/0:1]) but has an executable",
    ),
    rule(MINER, SuspiciousProcess, Severity::Critical, "a cryptocurrency miner's name or arguments"),
    rule(
        MINING_POOL_PORT,
        SuspiciousProcess,
        Severity::High,
        "a connection to a port mining pools use (3333, 4444, 5555, 7777, 14444, ...)",
    ),
    rule(HIGH_CPU, SuspiciousProcess, Severity::Medium, "not in the baseline, above 90% CPU for 5 minutes"),
    rule(
        REVERSE_SHELL,
        SuspiciousProcess,
        Severity::Critical,
        "a shell or interpreter whose standard input or output is a network socket",
    ),
    rule(
        SERVICE_SPAWNED_SHELL,
        SuspiciousProcess,
        Severity::Critical,
        "a shell or interpreter started, within one service's unit or container, under a process that listens on a socket, and belonging to no login session: a web server's or a database's shell",
    ),
    rule(
        PERSISTENCE,
        FileChanged,
        Severity::High,
        "a change to a path attackers persist through: authorized_keys, cron, systemd units, ld.so.preload, sudoers, passwd, shadow, group, rc.local, profile.d",
    ),
    rule(SETUID_FILE, FileChanged, Severity::High, "a new setuid or setgid file"),
];

pub const EXE_DELETED: &str = "exe-deleted";
pub const SERVICE_SPAWNED_SHELL: &str = "service-spawned-shell";
pub const EXE_REPLACED: &str = "exe-replaced";
pub const EXE_TAMPERED: &str = "exe-tampered";
pub const EXE_IN_TEMP: &str = "exe-in-temp";
pub const EXE_MEMFD: &str = "exe-memfd";
pub const FAKE_KERNEL_THREAD: &str = "fake-kernel-thread";
pub const MINER: &str = "miner";
pub const MINING_POOL_PORT: &str = "mining-pool-port";
pub const HIGH_CPU: &str = "high-cpu";
pub const REVERSE_SHELL: &str = "reverse-shell";
pub const PERSISTENCE: &str = "persistence";
pub const SETUID_FILE: &str = "setuid-file";

/// The rule named `name`.
pub fn rule_named(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.name == name)
}

/// How long a process not in the baseline may run hot ([`crate::model::HIGH_CPU_PERCENT`]) before
/// it is a finding.
pub const HIGH_CPU_FOR: Duration = Duration::minutes(5);

/// Directories anyone may write, where nothing should be run from.
const TEMP_DIRS: &[&str] = &["/tmp/", "/var/tmp/", "/dev/shm/"];

/// Miners by program name (lowercase, compared with the name and the executable's file name).
const MINER_NAMES: &[&str] = &[
    "xmrig",
    "xmrig-notls",
    "xmrig-proxy",
    "xmr-stak",
    "xmr-stak-cpu",
    "minerd",
    "cpuminer",
    "cpuminer-multi",
    "ccminer",
    "cgminer",
    "bfgminer",
    "sgminer",
    "ethminer",
    "nbminer",
    "t-rex",
    "lolminer",
    "phoenixminer",
    "nanominer",
    "gminer",
    "srbminer",
    "srbminer-multi",
    "teamredminer",
    "kdevtmpfsi",
    "kinsing",
];

/// Miners by what they are told (lowercase substrings of the command line).
const MINER_ARGS: &[&str] = &[
    "stratum+tcp://",
    "stratum+ssl://",
    "stratum2+tcp://",
    "stratum+tls://",
    "--donate-level",
    "--cpu-max-threads-hint",
    "--randomx-mode",
    "-a rx/0",
    "--algo=rx/",
    "--algo rx/",
    "cryptonight",
    "--coin=monero",
    "--coin monero",
];

/// Remote ports mining pools listen on.
pub const POOL_PORTS: &[u16] =
    &[3333, 3334, 3335, 3357, 4444, 5555, 5588, 6666, 7777, 9999, 14433, 14444, 45560, 45700];

/// Where attackers persist (globs over host paths; `**/` first so a root mounted elsewhere, as a
/// container's, is covered too).
const PERSISTENCE_PATHS: &[&str] = &[
    "**/.ssh/authorized_keys",
    "**/.ssh/authorized_keys2",
    "**/etc/crontab",
    "**/etc/cron.d/**",
    "**/etc/cron.hourly/**",
    "**/etc/cron.daily/**",
    "**/etc/cron.weekly/**",
    "**/etc/cron.monthly/**",
    "**/etc/anacrontab",
    "**/var/spool/cron/**",
    "**/etc/systemd/system/**",
    "**/etc/systemd/user/**",
    "**/lib/systemd/system/**",
    "**/.config/systemd/user/**",
    "**/etc/ld.so.preload",
    "**/etc/sudoers",
    "**/etc/sudoers.d/**",
    "**/etc/passwd",
    "**/etc/shadow",
    "**/etc/group",
    "**/etc/gshadow",
    "**/etc/rc.local",
    "**/etc/rc.d/rc.local",
    "**/etc/profile",
    "**/etc/profile.d/**",
    "**/etc/bash.bashrc",
    "**/etc/init.d/**",
];

static PERSISTENCE_SET: LazyLock<Option<GlobSet>> = LazyLock::new(|| {
    let mut b = GlobSetBuilder::new();
    for p in PERSISTENCE_PATHS {
        b.add(Glob::new(p).ok()?);
    }
    b.build().ok()
});

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether `name` looks like a kernel thread's: `[kworker/0:1]`, `kworker/0:1`, `ksoftirqd/0`.
fn kernel_thread_name(name: &str) -> bool {
    let inner = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    (name.starts_with('[') && name.ends_with(']'))
        || ["kworker/", "ksoftirqd/", "migration/", "rcu_", "watchdog/", "kthreadd", "kswapd", "cpuhp/"]
            .iter()
            .any(|p| inner.starts_with(p))
}

/// The process-level rules `p` trips, given whether the workload's baseline explains it.
/// `service-spawned-shell`: the ancestor of `p` (a shell or interpreter no login session
/// started) that listens on a socket, looking up from its parent while the ancestors stay in
/// `p`'s systemd unit and container, below PID 1. `known` gives the host's processes by pid (an
/// ancestor known under another program is not the same process); `listens` says whether a pid
/// holds a listening socket. `None`: not such a shell.
pub fn listening_ancestor<'a>(
    p: &Process,
    known: impl Fn(u32) -> Option<&'a Process>,
    listens: impl Fn(u32) -> bool,
) -> Option<&'a Process> {
    let interactive =
        is_interactive(&p.name) || p.exe.as_deref().is_some_and(|e| is_interactive(file_name(e)));
    if !interactive || p.login_uid.is_some() {
        return None;
    }
    for a in &p.ancestry {
        if a.pid <= 1 {
            break;
        }
        // An ancestor gone since, or its pid taken by another program: nothing to check there.
        let Some(q) = known(a.pid).filter(|q| q.name == a.name) else { continue };
        if q.unit != p.unit || q.container_id != p.container_id {
            break;
        }
        if listens(q.pid) {
            return Some(q);
        }
    }
    None
}

pub fn process_rules(p: &Process, explained: bool, now: OffsetDateTime) -> Vec<&'static str> {
    let mut out = Vec::new();
    let exe = p.exe.as_deref();
    if p.exe_memfd {
        out.push(EXE_MEMFD);
    } else if p.exe_deleted {
        out.push(match (&p.exe_replacement, p.exe_replaced) {
            // The package database says an upgrade: the file now there is what was installed.
            (Some(r), _) if r.package.as_ref().is_some_and(|m| m.matches) => EXE_REPLACED,
            (Some(_), _) => EXE_TAMPERED,
            // An agent that does not ask the package database (older ones): its own guess.
            (None, true) => EXE_REPLACED,
            (None, false) => EXE_DELETED,
        });
    }
    if exe.is_some_and(|e| TEMP_DIRS.iter().any(|d| e.starts_with(d))) {
        out.push(EXE_IN_TEMP);
    }
    let argv0 = p.cmdline.first().map(String::as_str).unwrap_or_default();
    if exe.is_some() && (kernel_thread_name(&p.name) || kernel_thread_name(argv0)) {
        out.push(FAKE_KERNEL_THREAD);
    }
    let lower = |s: &str| s.to_ascii_lowercase();
    let names =
        [lower(&p.name), exe.map(|e| lower(file_name(e))).unwrap_or_default(), lower(file_name(argv0))];
    let cmdline = lower(&p.cmdline_string());
    if names.iter().any(|n| MINER_NAMES.contains(&n.as_str()))
        || MINER_ARGS.iter().any(|a| cmdline.contains(a))
    {
        out.push(MINER);
    }
    if !explained && p.cpu_high_since.is_some_and(|since| now - since >= HIGH_CPU_FOR) {
        out.push(HIGH_CPU);
    }
    if p.stdio_socket.is_some()
        && (is_interactive(&p.name) || exe.is_some_and(|e| is_interactive(file_name(e))))
    {
        out.push(REVERSE_SHELL);
    }
    out
}

/// Whether a connection goes out to a port mining pools use.
pub fn pool_port(c: &Connection) -> bool {
    c.direction == Direction::Outbound && POOL_PORTS.contains(&c.remote.port())
}

/// The file-level rule a change trips, if any. A change whose content is what its package
/// installed is patch day, not persistence.
pub fn file_rule(c: &FileChange) -> Option<&'static str> {
    if c.package.as_ref().is_some_and(|p| p.matches) {
        return None;
    }
    let special = |s: &Option<hostwatch_proto::v1::FileState>| {
        s.as_ref().is_some_and(|s| s.kind == hostwatch_proto::v1::FileKind::File && s.mode & 0o6000 != 0)
    };
    if c.change != FileChangeKind::Deleted && special(&c.new) && !special(&c.old) {
        return Some(SETUID_FILE);
    }
    let persistence = PERSISTENCE_SET
        .as_ref()
        .is_some_and(|set| set.is_match(&c.path) || c.from_path.as_deref().is_some_and(|f| set.is_match(f)));
    persistence.then_some(PERSISTENCE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostwatch_proto::v1 as p;

    fn proc(name: &str, exe: Option<&str>, cmdline: &[&str]) -> Process {
        Process {
            exe: exe.map(Into::into),
            cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
            ..Process::from(p::Process::new(10, 1, name, 0, OffsetDateTime::UNIX_EPOCH))
        }
    }

    #[test]
    fn a_shell_is_a_services_only_below_a_listener_in_its_own_unit_and_outside_any_login() {
        let with = |pid: u32, name: &str, unit: &str| Process {
            pid,
            unit: Some(unit.to_owned()),
            ..Process::from(p::Process::new(pid, 1, name, 0, OffsetDateTime::UNIX_EPOCH))
        };
        let nginx = with(100, "nginx", "nginx.service");
        let worker = with(101, "nginx", "nginx.service");
        let sshd = with(200, "sshd", "ssh.service");
        let known = [nginx.clone(), worker.clone(), sshd.clone()];
        let find = |pid: u32| known.iter().find(|q| q.pid == pid);
        let anc = |q: &Process| p::Ancestor { pid: q.pid, name: q.name.clone(), exe: None };
        let mut sh = with(300, "sh", "nginx.service");
        sh.ancestry = vec![anc(&worker), anc(&nginx)];
        // The master (two up) listens: found, through the worker.
        let got = listening_ancestor(&sh, find, |pid| pid == 100);
        assert_eq!(got.map(|q| q.pid), Some(100));
        // Nothing listens: not a service's shell.
        assert!(listening_ancestor(&sh, find, |_| false).is_none());
        // A login session's shell: not, whatever its ancestors hold.
        let mut login = sh.clone();
        login.login_uid = Some(1000);
        assert!(listening_ancestor(&login, find, |pid| pid == 100).is_none());
        // Past the unit's edge (a listener in another unit): not.
        let mut other = with(301, "bash", "session-3.scope");
        other.ancestry = vec![anc(&sshd)];
        assert!(listening_ancestor(&other, find, |pid| pid == 200).is_none());
        // Not a shell: not.
        let mut curl = with(302, "curl", "nginx.service");
        curl.ancestry = sh.ancestry.clone();
        assert!(listening_ancestor(&curl, find, |pid| pid == 100).is_none());
        // A pid now running another program is not the ancestor it was.
        let mut reused = sh.clone();
        reused.ancestry = vec![p::Ancestor { pid: 100, name: "php".into(), exe: None }];
        assert!(listening_ancestor(&reused, find, |pid| pid == 100).is_none());
    }

    #[test]
    fn every_rule_has_a_unique_name() {
        let mut names: Vec<_> = RULES.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RULES.len());
        assert!(PERSISTENCE_SET.is_some(), "the persistence globs compile");
    }

    #[test]
    fn process_rules_fire_on_what_they_name_only() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::hours(1);
        let rules = |p: &Process| process_rules(p, false, now);
        assert!(rules(&proc("nginx", Some("/usr/sbin/nginx"), &["nginx: worker"])).is_empty());
        assert_eq!(rules(&proc("x", Some("/dev/shm/x"), &["x"])), [EXE_IN_TEMP]);
        assert_eq!(rules(&proc("xmrig", Some("/opt/x/xmrig"), &["xmrig"])), [MINER]);
        assert_eq!(
            rules(&proc("java", Some("/usr/bin/java"), &["java", "-o", "stratum+tcp://pool:3333"])),
            [MINER]
        );
        assert_eq!(
            rules(&proc("[kworker/0:1]", Some("/usr/bin/x"), &["[kworker/0:1]"])),
            [FAKE_KERNEL_THREAD]
        );
        assert!(rules(&proc("kworker/0:1", None, &[])).is_empty(), "a real kernel thread has no exe");
        let mut deleted = proc("app", Some("/usr/bin/app"), &["app"]);
        deleted.exe_deleted = true;
        assert_eq!(rules(&deleted), [EXE_DELETED]);
        deleted.exe_replaced = true;
        assert_eq!(rules(&deleted), [EXE_REPLACED], "an older agent's guess");
        let package = |matches| p::PackageMatch { name: "app".into(), version: None, matches };
        deleted.exe_replacement = Some(p::ExeReplacement { package: Some(package(true)) });
        assert_eq!(rules(&deleted), [EXE_REPLACED], "the upgrade the package installed");
        deleted.exe_replacement = Some(p::ExeReplacement { package: Some(package(false)) });
        assert_eq!(rules(&deleted), [EXE_TAMPERED], "not what the package installed");
        deleted.exe_replacement = Some(p::ExeReplacement { package: None });
        assert_eq!(rules(&deleted), [EXE_TAMPERED], "a path no package owns");
        let mut memfd = proc("x", Some("/memfd:x"), &["x"]);
        (memfd.exe_memfd, memfd.exe_deleted) = (true, true);
        assert_eq!(rules(&memfd), [EXE_MEMFD]);
        let mut hot = proc("enc", Some("/usr/bin/enc"), &["enc"]);
        hot.cpu_high_since = Some(now - Duration::minutes(4));
        assert!(rules(&hot).is_empty(), "4 minutes is not 5");
        hot.cpu_high_since = Some(now - Duration::minutes(5));
        assert_eq!(rules(&hot), [HIGH_CPU]);
        assert!(process_rules(&hot, true, now).is_empty(), "a baseline's process may run hot");
        let mut shell = proc("bash", Some("/usr/bin/bash"), &["bash", "-i"]);
        shell.stdio_socket = Some("tcp 10.0.0.9:4444".into());
        assert_eq!(rules(&shell), [REVERSE_SHELL]);
        let mut py = proc("python3.11", Some("/usr/bin/python3.11"), &["python3"]);
        py.stdio_socket = Some("tcp 10.0.0.9:4444".into());
        assert_eq!(rules(&py), [REVERSE_SHELL]);
        let mut server = proc("nginx", Some("/usr/sbin/nginx"), &["nginx"]);
        server.stdio_socket = Some("tcp 10.0.0.9:4444".into());
        assert!(rules(&server).is_empty(), "socket-activated services are not shells");
    }

    #[test]
    fn file_rules() {
        let state = |mode: u32| p::FileState {
            kind: p::FileKind::File,
            mode,
            uid: 0,
            gid: 0,
            size: 1,
            mtime: OffsetDateTime::UNIX_EPOCH,
            inode: 1,
            sha256: None,
            metadata_only: false,
            target: None,
        };
        let change = |path: &str, old: Option<u32>, new: Option<u32>, package: bool| FileChange {
            path: path.into(),
            change: if new.is_none() { FileChangeKind::Deleted } else { FileChangeKind::Modified },
            origin: p::ChangeOrigin::Live,
            at: OffsetDateTime::UNIX_EPOCH,
            old: old.map(state),
            new: new.map(state),
            from_path: None,
            package: package.then(|| p::PackageMatch { name: "x".into(), version: None, matches: true }),
        };
        assert_eq!(file_rule(&change("/etc/cron.d/job", Some(0o644), Some(0o644), false)), Some(PERSISTENCE));
        assert_eq!(
            file_rule(&change("/home/a/.ssh/authorized_keys", None, Some(0o600), false)),
            Some(PERSISTENCE)
        );
        assert_eq!(file_rule(&change("/etc/passwd", Some(0o644), None, false)), Some(PERSISTENCE));
        assert_eq!(file_rule(&change("/etc/cron.d/job", Some(0o644), Some(0o644), true)), None, "patch day");
        assert_eq!(
            file_rule(&change("/usr/local/bin/x", Some(0o755), Some(0o4755), false)),
            Some(SETUID_FILE)
        );
        assert_eq!(file_rule(&change("/usr/local/bin/x", None, Some(0o2755), false)), Some(SETUID_FILE));
        assert_eq!(
            file_rule(&change("/usr/bin/sudo", Some(0o4755), Some(0o4755), false)),
            None,
            "was setuid"
        );
        assert_eq!(file_rule(&change("/srv/www/index.html", None, Some(0o644), false)), None);
    }
}
