//! Reading the host: processes, sockets, users and host facts, from `/proc` and `/etc`.
//!
//! Architecture invariant: collectors are plain blocking functions over an injectable [`HostRoot`];
//! they never talk to the network and never decide what is suspicious. The runner calls them on
//! a blocking thread, never on the async runtime.
//!
//! Partial results are data: a process that exits mid-scan is simply not there, a file that cannot
//! be read is an entry in [`Scan::problems`], and the scan returns everything else it saw.

pub mod exec;
pub mod hash;
pub mod host;
pub mod netns;
pub mod own;
pub mod process;
pub mod redact;
pub mod sockets;
pub mod users;

use std::path::{Path, PathBuf};

/// Where the host's `/proc`, `/etc` and `/sys` are, so collectors run against the real machine, a
/// container's view of it, or a fixture tree in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    pub proc: PathBuf,
    pub etc: PathBuf,
    pub sys: PathBuf,
}

impl HostRoot {
    /// `/proc`, `/etc` and `/sys` under `root`.
    pub fn new(root: &Path) -> Self {
        HostRoot { proc: root.join("proc"), etc: root.join("etc"), sys: root.join("sys") }
    }
}

impl Default for HostRoot {
    fn default() -> Self {
        HostRoot::new(Path::new("/"))
    }
}

/// What a scan saw, and what kept it from seeing more.
#[derive(Debug)]
pub struct Scan<T> {
    pub items: Vec<T>,
    pub problems: Problems,
}

/// Counts of what a scan could not read, by cause. A count rather than a list: a host where the
/// agent lacks privilege would otherwise produce one message per process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems {
    /// Files refused for lack of privilege.
    pub denied: usize,
    /// Other failures, each described once with its path.
    pub failed: Vec<String>,
}

impl Problems {
    pub fn merge(&mut self, other: Problems) {
        self.denied += other.denied;
        self.failed.extend(other.failed);
    }

    pub fn is_empty(&self) -> bool {
        self.denied == 0 && self.failed.is_empty()
    }
}

/// How a failed read of a process's file is counted.
#[derive(Debug)]
pub enum ReadFailure {
    /// The process exited while being read: not a problem, it is simply gone.
    Vanished,
    Denied,
    Failed(String),
}

impl ReadFailure {
    pub fn of_io(path: &Path, e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => ReadFailure::Vanished,
            std::io::ErrorKind::PermissionDenied => ReadFailure::Denied,
            // ESRCH: the process died between open and read.
            _ if e.raw_os_error() == Some(libc_esrch()) => ReadFailure::Vanished,
            _ => ReadFailure::Failed(format!("{}: {e}", path.display())),
        }
    }

    pub fn of_proc(e: &procfs::ProcError) -> Self {
        use procfs::ProcError as E;
        match e {
            E::NotFound(_) | E::Incomplete(_) => ReadFailure::Vanished,
            E::PermissionDenied(_) => ReadFailure::Denied,
            E::Io(io, path) => match path {
                Some(p) => ReadFailure::of_io(p, io),
                None => ReadFailure::Failed(io.to_string()),
            },
            other => ReadFailure::Failed(other.to_string()),
        }
    }

    pub fn record(self, problems: &mut Problems) {
        match self {
            ReadFailure::Vanished => {}
            ReadFailure::Denied => problems.denied += 1,
            ReadFailure::Failed(msg) => problems.failed.push(msg),
        }
    }
}

fn libc_esrch() -> i32 {
    nix::errno::Errno::ESRCH as i32
}
