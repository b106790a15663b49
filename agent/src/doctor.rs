//! `hostwatch-agent doctor`: can this agent do its job here? Each check gives a plain verdict and,
//! where something is wrong, the fix. A failure means the agent cannot run or cannot see what it
//! must; a warning means it runs with less than it could.
//!
//! Invariant: the doctor changes nothing anywhere. It sends no report and no enrollment (either
//! would be a host's state at the collector); it only asks `/healthz` and reads local state.

use std::path::Path;
use std::time::Duration;

use crate::cloud::{self, Detection};
use crate::collect::netns::Netns;
use crate::collect::sockets::{Reader, SocketSource, Want};
use crate::collect::{HostRoot, exec, host, netns};
use crate::config::AgentConfig;
use crate::identity::{NODE_KEY, StateDir};
use crate::transport::{CollectorClient, TransportError};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One check: what was looked at, how it came out, and what to do about it.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    pub fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check { name, verdict: Verdict::Ok, detail: detail.into(), fix: None }
}

fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, verdict: Verdict::Warn, detail: detail.into(), fix: Some(fix.into()) }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, verdict: Verdict::Fail, detail: detail.into(), fix: Some(fix.into()) }
}

/// The capabilities the agent needs, with what each is for.
const NEEDED: [(u32, &str, &str); 3] = [
    (2, "CAP_DAC_READ_SEARCH", "to read files of any owner, such as ssh keys and sudoers"),
    (19, "CAP_SYS_PTRACE", "to read other users' /proc/PID/exe and fd"),
    (12, "CAP_NET_ADMIN", "to hear every exec from the process connector"),
];

/// Runs every check, the configuration having loaded.
pub async fn run(config: &AgentConfig) -> Vec<Check> {
    let root = HostRoot::new(&config.host_root);
    let mut checks = vec![privileges()];
    let instance = cloud_check(config, &root, &mut checks).await;
    checks.push(state_dir(config));
    match &config.server {
        None => checks.push(fail(
            "collector",
            "no collector named: the agent will not start",
            "set `server` in the configuration, or HOSTWATCH_SERVER",
        )),
        Some(server) => {
            checks.push(reachable(config, server).await);
            checks.push(enrollment(config, &root, server, instance.as_deref()));
        }
    }
    checks.push(exec_source());
    checks.push(socket_source(&root));
    checks.push(connection_events(config));
    checks.push(inotify(config));
    checks
}

/// This process's own capabilities (not the host root's view: they are the agent's).
fn privileges() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<&(u32, &str, &str)> =
        NEEDED.iter().filter(|(bit, _, _)| effective & (1 << bit) == 0).collect();
    if missing.is_empty() {
        return ok("privileges", "CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE and CAP_NET_ADMIN held");
    }
    let what: Vec<String> = missing.iter().map(|(_, name, why)| format!("{name}, {why}")).collect();
    fail(
        "privileges",
        format!("missing {}", what.join("; ")),
        "run the agent as root, as its systemd unit does, or grant these capabilities",
    )
}

async fn cloud_check(config: &AgentConfig, root: &HostRoot, checks: &mut Vec<Check>) -> Option<String> {
    let detected = tokio::time::timeout(cloud::START_WAIT, cloud::detect(&config.cloud, &root.sys)).await;
    let (check, instance) = match detected {
        Ok(Detection::Found(i)) => {
            let f = &i.facts;
            let region = f.region.as_deref().map(|r| format!(" in {r}")).unwrap_or_default();
            (
                ok("cloud", format!("{} instance {}{region}", f.provider.as_str(), f.instance_id)),
                Some(f.instance_id.clone()),
            )
        }
        Ok(Detection::NotCloud) => (ok("cloud", "not a cloud instance (nothing to ask)"), None),
        Ok(Detection::Failed(why)) => (
            warn(
                "cloud",
                format!("the metadata service did not say which instance this is: {why}"),
                "on EC2: IMDSv2 enabled with a hop limit of at least 1 (2 in a container); or set [cloud] provider = \"none\" off the cloud",
            ),
            None,
        ),
        Err(_) => (
            warn(
                "cloud",
                format!("no answer from the metadata service within {} s", cloud::START_WAIT.as_secs()),
                "check the instance's metadata options, or set [cloud] provider = \"none\" off the cloud",
            ),
            None,
        ),
    };
    checks.push(check);
    instance
}

fn state_dir(config: &AgentConfig) -> Check {
    let dir = &config.state_dir;
    let probe = dir.join(".doctor-write-test");
    let result = StateDir::open(dir).map_err(|e| e.to_string()).and_then(|_| {
        std::fs::write(&probe, b"").map_err(|e| format!("cannot write in {}: {e}", dir.display()))
    });
    let _ = std::fs::remove_file(&probe);
    match result {
        Ok(()) => ok("state", format!("{} writable", dir.display())),
        Err(e) => fail(
            "state",
            e,
            "make state_dir a writable directory (the unit's StateDirectory= and ReadWritePaths=)",
        ),
    }
}

async fn reachable(config: &AgentConfig, server: &reqwest::Url) -> Check {
    let client = match CollectorClient::new(server.clone(), &config.tls) {
        Ok(c) => c,
        Err(e) => return fail("collector", e.to_string(), "fix ca_cert, client_cert or client_key"),
    };
    let how = if server.scheme() == "https" { "certificate and name verified" } else { "plain http" };
    match tokio::time::timeout(Duration::from_secs(10), client.health()).await {
        Ok(Ok(())) => ok("collector", format!("{server} answers ({how})")),
        Ok(Err(e)) => {
            let text = e.to_string();
            let lower = text.to_lowercase();
            let fix = if lower.contains("certificate") || lower.contains("issuer") || lower.contains("tls") {
                "the collector's certificate is not trusted for this name: set ca_cert to the CA that signed it, and name the collector as its certificate does"
            } else if lower.contains("refused") {
                "nothing listens there: check the address and port in `server`, and that the collector runs"
            } else if lower.contains("dns") || lower.contains("resolve") {
                "the name does not resolve: check `server`'s host name"
            } else if matches!(e, TransportError::Server { .. }) {
                "the collector answers but fails: see its log"
            } else {
                "check the network path to the collector (firewall, security group, proxy)"
            };
            fail("collector", text, fix)
        }
        Err(_) => fail(
            "collector",
            format!("{server} did not answer within 10 s"),
            "check the network path to the collector (firewall, security group, proxy)",
        ),
    }
}

fn enrollment(config: &AgentConfig, root: &HostRoot, server: &reqwest::Url, instance: Option<&str>) -> Check {
    let key = config.state_dir.join(NODE_KEY);
    let secret = config.enroll_secret.is_some();
    if !key.exists() {
        return if secret {
            ok("enrollment", "not enrolled yet: the agent enrolls with its enroll secret at start")
        } else {
            fail(
                "enrollment",
                "not enrolled and no enroll secret: the agent cannot enroll",
                "set enroll_secret_file (or HOSTWATCH_ENROLL_SECRET_FILE) to a valid secret",
            )
        };
    }
    let machine_id = host::read(root).machine_id.unwrap_or_default();
    let loaded = StateDir::open(&config.state_dir).and_then(|s| s.load(&machine_id, instance, server));
    match loaded {
        Ok(Some(id)) => ok(
            "enrollment",
            format!(
                "enrolled as host {} (a revoked key is refused at the next report, and the agent says so in its log)",
                id.host_id
            ),
        ),
        Ok(None) if secret => warn(
            "enrollment",
            "the identity in state_dir is another machine's or another collector's (a copied disk?): the agent enrolls anew",
            "nothing, if this is a new machine; an image should be baked after `hostwatch-agent reset-identity`",
        ),
        Ok(None) => fail(
            "enrollment",
            "the identity in state_dir is another machine's or another collector's, and there is no enroll secret to enroll anew",
            "set enroll_secret_file (or HOSTWATCH_ENROLL_SECRET_FILE)",
        ),
        Err(e) => fail("enrollment", e.to_string(), "make state_dir readable and writable by the agent"),
    }
}

fn exec_source() -> Check {
    match exec::probe() {
        Ok(()) => ok("exec", "process connector: every exec is seen as it happens"),
        Err(why) => warn(
            "exec",
            format!(
                "{why}: processes are found by scanning only, so one that lives less than a scan is missed"
            ),
            "run with CAP_NET_ADMIN in the host's network namespace",
        ),
    }
}

/// Loads the eBPF connection source as the agent would, and unloads it.
fn connection_events(config: &AgentConfig) -> Check {
    if !config.socket_events {
        return warn(
            "connections",
            "turned off (socket_events = false): connections and listeners shorter than a scan are not seen",
            "set socket_events = true",
        );
    }
    match crate::collect::sockets::loader::probe(config.socket_event_ring_bytes) {
        Ok(hook) => ok(
            "connections",
            format!(
                "eBPF: every connection and listener is seen with its owner, however short; {}",
                hook.describe()
            ),
        ),
        Err(why) => warn(
            "connections",
            format!("{why}: connections and listeners shorter than a scan are not seen"),
            "run with CAP_BPF and CAP_PERFMON (the unit grants them) on a kernel with BTF (5.8 or later)",
        ),
    }
}

fn socket_source(root: &HostRoot) -> Check {
    let Some(inode) = netns::own(root) else {
        return fail(
            "sockets",
            "cannot read this process's network namespace",
            "check that /proc is mounted",
        );
    };
    let mut source = SocketSource::new(Reader::SockDiag);
    let own = Netns { inode, pid: std::process::id(), own: true };
    let scan = source.read(root, &[own], Want::LISTEN);
    if !scan.problems.failed.is_empty() {
        return fail("sockets", scan.problems.failed.join("; "), "check that /proc/net is readable");
    }
    match source.reader() {
        Reader::SockDiag => ok("sockets", format!("sock_diag: {} listening sockets here", scan.items.len())),
        Reader::ProcNet => warn(
            "sockets",
            format!(
                "sock_diag refused; /proc/net read instead ({} listening sockets here)",
                scan.items.len()
            ),
            "allow AF_NETLINK (the unit's RestrictAddressFamilies)",
        ),
    }
}

/// Directories under the watched paths, counted up to `cap`.
fn count_dirs(roots: &[std::path::PathBuf], real: impl Fn(&Path) -> std::path::PathBuf, cap: u64) -> u64 {
    let mut n = 0u64;
    let mut stack: Vec<std::path::PathBuf> = roots.iter().map(|r| real(r)).collect();
    while let Some(d) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&d) else { continue };
        if !meta.is_dir() {
            continue;
        }
        n += 1;
        if n >= cap {
            break;
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    n
}

fn inotify(config: &AgentConfig) -> Check {
    let files = &config.files;
    let limit = crate::files::watch::max_user_watches(&files.real(Path::new("/proc")));
    let Some(limit) = limit else {
        return warn(
            "watches",
            "cannot read fs.inotify.max_user_watches: changes are found by rescans only",
            "check that /proc/sys is readable",
        );
    };
    let budget = limit / 4 * 3;
    let wanted = if files.budget.max_watches == 0 { budget } else { files.budget.max_watches.min(budget) };
    let dirs = count_dirs(&files.roots(), |p| files.real(p), wanted.saturating_add(1));
    if dirs > wanted {
        warn(
            "watches",
            format!(
                "more than {wanted} directories to watch, {wanted} watches allowed (fs.inotify.max_user_watches = {limit}): the rest are checked by rescans only"
            ),
            format!("raise it: sysctl -w fs.inotify.max_user_watches={}", (dirs * 2).max(limit * 2)),
        )
    } else {
        ok(
            "watches",
            format!(
                "{dirs} directories to watch, {wanted} watches allowed (fs.inotify.max_user_watches = {limit})"
            ),
        )
    }
}
