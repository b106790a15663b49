//! A process as the agent reports it.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;

use super::timestamp;
use super::validate::{Validate, ValidationError, count, limits, name, nonempty, opt_stored, opt_text, text};

/// One running process. Kernel threads are never reported (they have no executable to explain),
/// nor zombies (they have ended and only wait for their parent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// The kernel's name for it (`comm`), or the executable's file name where `comm` was cut at
    /// 15 bytes. A process can set this to anything; `exe` is what it really runs.
    pub name: String,
    /// Absolute path of the executable, without the kernel's ` (deleted)` suffix. Absent where the
    /// agent could not read it (no privilege) or the process exited while being read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The executable was deleted (or replaced) after the process started.
    #[serde(default, skip_serializing_if = "is_false")]
    pub exe_deleted: bool,
    /// Arguments, already redacted by the agent.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// The agent cut the command line to the limits of this version.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cmdline_truncated: bool,
    /// Effective user id.
    pub uid: u32,
    /// User name of `uid`, where the host's user database names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(with = "timestamp")]
    pub start_time: OffsetDateTime,
    /// SHA-256 of the executable, lowercase hex. Absent until hashed (hashing is rate-limited, so
    /// a new process may be reported first without it), or where the file is above the size cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The executable is an anonymous memory file (`memfd:`): nothing on disk to inspect.
    #[serde(default, skip_serializing_if = "is_false")]
    pub exe_memfd: bool,
    /// The executable's directory is writable by every user (as `/tmp`, `/dev/shm`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub exe_writable_dir: bool,
    /// The process's cgroup (v2 path, or the v1 path of the first controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The container it runs in (Docker, containerd, CRI-O, Podman id), from the cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The systemd unit it belongs to (`nginx.service`, `session-3.scope`), from the cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Share of one CPU used over the last interval, in percent (can exceed 100 on several CPUs);
    /// for a process first seen since the last full scan, its lifetime average (as `ps` shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f32>,
    /// Resident memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// The deleted executable's path holds a file again: replaced, by an upgrade or by someone.
    /// [`Process::exe_replacement`] says which (older agents sent this alone, for a root-owned
    /// file changed after the process started).
    #[serde(default, skip_serializing_if = "is_false")]
    pub exe_replaced: bool,
    /// For a replaced executable: what the package database says of the file now at its path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe_replacement: Option<ExeReplacement>,
    /// For a shell or interpreter whose standard input or output is a network socket: that
    /// socket, as `tcp 10.0.0.9:4444` (protocol and peer). A reverse shell looks like this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio_socket: Option<String>,
    /// The audit login uid (`/proc/PID/loginuid`): who logged in to start the session this
    /// process belongs to, kept across `su` and `sudo`. Absent for what no login started
    /// (services, their children) and where the kernel keeps no audit ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
    /// The login uid's name, where the host's user database names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_user: Option<String>,
    /// The audit session id (`/proc/PID/sessionid`): a login session's processes share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<u32>,
    /// Its ancestors, parent first, up to (not including) PID 1, as they were when the agent first
    /// saw this process: a parent that has exited since is still named. At most
    /// [`limits::MAX_ANCESTRY`]; empty where the parent was never seen.
    /// Shared (`Arc`): an agent holds one list for a parent's many children, and copies of a
    /// process (what it reads, what it last sent) share it.
    #[serde(default, skip_serializing_if = "no_ancestors")]
    pub ancestry: Arc<[Ancestor]>,
}

fn no_ancestors(a: &Arc<[Ancestor]>) -> bool {
    a.is_empty()
}

/// One ancestor of a process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

impl Process {
    /// A process with what every process has; the optional facts empty.
    pub fn new(pid: u32, ppid: u32, name: impl Into<String>, uid: u32, start_time: OffsetDateTime) -> Self {
        Process {
            pid,
            ppid,
            name: name.into(),
            exe: None,
            exe_deleted: false,
            cmdline: Vec::new(),
            cmdline_truncated: false,
            uid,
            user: None,
            start_time,
            sha256: None,
            exe_memfd: false,
            exe_writable_dir: false,
            cgroup: None,
            container_id: None,
            unit: None,
            cpu_percent: None,
            rss_bytes: None,
            exe_replaced: false,
            exe_replacement: None,
            stdio_socket: None,
            login_uid: None,
            login_user: None,
            session_id: None,
            ancestry: Arc::from(Vec::new()),
        }
    }
}

/// What stands at the path of a running process's deleted executable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExeReplacement {
    /// The installed package that records the path, and whether the file now there is what it
    /// installed (an upgrade); absent where no package owns the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<super::PackageMatch>,
}

/// Programs that give whoever holds their standard input a command line: shells, interpreters,
/// and the tools that wire a socket to one. The agent reports `stdio_socket` for these only; the
/// collector's reverse-shell rule reads it.
pub const INTERACTIVE: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "ash", "busybox", "python", "perl",
    "ruby", "php", "node", "lua", "nc", "ncat", "netcat", "socat", "telnet", "awk", "gawk",
];

/// Whether a process name or an executable's file name is one of [`INTERACTIVE`], version
/// suffixes aside (`python3.11` is python).
pub fn is_interactive(name: &str) -> bool {
    INTERACTIVE.contains(&name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.'))
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

impl Validate for Process {
    fn validate(&self) -> Result<(), ValidationError> {
        // A name is shown and logged as it is: the agent replaces what a program put in its own
        // name to hide or forge text (control and invisible characters).
        nonempty("name", &self.name, limits::MAX_NAME_BYTES)?;
        name("name", &self.name, limits::MAX_NAME_BYTES)?;
        opt_text("exe", &self.exe, limits::MAX_PATH_BYTES)?;
        opt_text("user", &self.user, limits::MAX_NAME_BYTES)?;
        opt_text("cgroup", &self.cgroup, limits::MAX_PATH_BYTES)?;
        opt_text("container_id", &self.container_id, limits::MAX_NAME_BYTES)?;
        opt_text("unit", &self.unit, limits::MAX_NAME_BYTES)?;
        opt_text("stdio_socket", &self.stdio_socket, limits::MAX_NAME_BYTES)?;
        opt_text("login_user", &self.login_user, limits::MAX_NAME_BYTES)?;
        opt_stored("rss_bytes", self.rss_bytes)?;
        if let Some(p) = self.exe_replacement.as_ref().and_then(|r| r.package.as_ref()) {
            nonempty("exe_replacement.package.name", &p.name, limits::MAX_NAME_BYTES)?;
            opt_text("exe_replacement.package.version", &p.version, limits::MAX_NAME_BYTES)?;
        }
        if let Some(h) = &self.sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ValidationError::new("sha256", "not 64 hexadecimal digits"));
        }
        count("ancestry", &self.ancestry, limits::MAX_ANCESTRY)?;
        for (i, a) in self.ancestry.iter().enumerate() {
            nonempty(format_args!("ancestry[{i}].name"), &a.name, limits::MAX_NAME_BYTES)?;
            name(format_args!("ancestry[{i}].name"), &a.name, limits::MAX_NAME_BYTES)?;
            opt_text(format_args!("ancestry[{i}].exe"), &a.exe, limits::MAX_PATH_BYTES)?;
        }
        count("cmdline", &self.cmdline, limits::MAX_ARGS)?;
        let mut total = 0;
        for (i, arg) in self.cmdline.iter().enumerate() {
            text(format_args!("cmdline[{i}]"), arg, limits::MAX_CMDLINE_BYTES)?;
            total += arg.len();
        }
        if total > limits::MAX_CMDLINE_BYTES {
            return Err(ValidationError::new(
                "cmdline",
                format!("{total} bytes, more than the limit of {}", limits::MAX_CMDLINE_BYTES),
            ));
        }
        Ok(())
    }
}
