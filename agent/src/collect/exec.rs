//! Exec and exit events from the netlink process connector, so that a process that lives
//! milliseconds is still recorded: each exec is read from `/proc` at once, on the thread that
//! received it.
//!
//! Needs CAP_NET_ADMIN in the initial network namespace. Where the kernel refuses, the agent
//! polls instead (a 1 s listing of `/proc`) and says so in its status. A receive buffer overflow
//! (ENOBUFS) means events were lost: it is counted and the runner rescans `/proc`.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use proc_connector::{Error as ConnectorError, ProcConnector, ProcEvent};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::process::{self, Clock, ProcessRecord};
use super::redact::Redactor;
use super::{HostRoot, Problems};
use crate::stop::StopSwitch;

/// What the connector saw.
#[derive(Debug)]
pub enum Event {
    /// A process called execve. `record` is what `/proc` showed right after; `None` if the
    /// process was already gone (or is a kernel thread).
    Exec { pid: u32, at: OffsetDateTime, record: Option<Box<ProcessRecord>> },
    /// A process (thread group) ended.
    Exit { pid: u32, at: OffsetDateTime },
    /// A new process (not a thread): the same program as its parent until it execs, which most
    /// do at once, so it is read only if it is still there, unchanged, a moment later.
    Fork { pid: u32 },
    /// A process's real or effective uid or gid changed (any of its threads).
    Credentials { pid: u32 },
    /// The kernel dropped events: what happened meanwhile is only in `/proc` now.
    Lost,
}

/// Counts of what the watcher saw, shared with the runner for the agent's status.
#[derive(Debug, Default)]
pub struct Counters {
    pub execs: AtomicU64,
    /// Execs whose process exited before its `/proc` entry could be read.
    pub exec_read_misses: AtomicU64,
    pub overruns: AtomicU64,
}

/// The receiving thread; stops when dropped.
#[derive(Debug)]
pub struct ExecWatcher {
    stop: Arc<StopSwitch>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<Counters>,
}

/// Kernel buffer for bursts: 10,000 execs in a second are about 10 MiB of netlink messages.
const RECV_BUFFER: usize = 16 << 20;
/// The receiving thread's nice value. The agent as a whole runs at low priority (the unit's
/// `Nice=10`), but this thread must win the CPU within milliseconds of an exec or a short-lived
/// process is gone before it is read; it only reads a few `/proc` files per exec. auditd boosts
/// itself the same way and by the same amount (`priority_boost = 4`). Allowed by the unit's
/// `LimitNICE=-4` without CAP_SYS_NICE.
const BOOST: i32 = -4;

/// Whether the kernel lets this process subscribe to the connector (for `doctor`); the reason
/// where it does not.
pub fn probe() -> Result<(), String> {
    ProcConnector::new().map(drop).map_err(|e| format!("process connector refused: {e}"))
}

impl ExecWatcher {
    /// Subscribes to the connector and starts the receiving thread; `Err` with the reason where
    /// the kernel refuses (no CAP_NET_ADMIN, another network namespace, no CONFIG_PROC_EVENTS).
    /// `lineage`: read each process's audit login ids (see [`process::read_pid`]).
    pub fn start(
        root: HostRoot,
        redactor: Redactor,
        lineage: bool,
        tx: mpsc::Sender<Event>,
    ) -> Result<ExecWatcher, String> {
        let conn = ProcConnector::new().map_err(|e| format!("process connector refused: {e}"))?;
        // A larger buffer than rmem_max needs the privilege the connector needs anyway.
        if nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::RcvBufForce, &RECV_BUFFER).is_err()
        {
            let _ = conn.set_recv_buf_size(RECV_BUFFER);
        }
        let stop = Arc::new(
            StopSwitch::new().map_err(|e| format!("cannot make the exec thread's stop switch: {e}"))?,
        );
        let counters = Arc::new(Counters::default());
        let (s, c) = (stop.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name("exec-events".into())
            .spawn(move || receive(conn, root, redactor, lineage, tx, s, c))
            .map_err(|e| format!("cannot start the exec event thread: {e}"))?;
        Ok(ExecWatcher { stop, thread: Some(thread), counters })
    }
}

impl Drop for ExecWatcher {
    fn drop(&mut self) {
        self.stop.set();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn receive(
    conn: ProcConnector,
    root: HostRoot,
    redactor: Redactor,
    lineage: bool,
    tx: mpsc::Sender<Event>,
    stop: Arc<StopSwitch>,
    counters: Arc<Counters>,
) {
    // Linux nice values are per thread: this raises the receiver only.
    match rustix::process::setpriority_process(Some(rustix::thread::gettid()), BOOST) {
        Ok(()) => tracing::debug!(nice = BOOST, "exec event thread priority raised"),
        Err(e) => tracing::info!(
            nice = BOOST,
            error = %e,
            "cannot raise the exec event thread's priority (needs LimitNICE or CAP_SYS_NICE); \
             on a busy host more short-lived processes may end before they are read"
        ),
    }
    let mut buf = vec![0u8; 4096];
    let mut problems = Problems::default();
    let mut clock = Clock::read(&root, &mut problems);
    while !stop.is_set() {
        // Asleep until the kernel has an event (or an overrun to tell) or the agent stops.
        match stop.wait(conn.as_fd(), None) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot wait for process events; falling back to polling");
                let _ = tx.blocking_send(Event::Lost);
                return;
            }
        }
        let event = match conn.recv_timeout(&mut buf, Duration::ZERO) {
            Ok(Some(e)) => e,
            Ok(None) | Err(ConnectorError::Interrupted) => continue,
            Err(ConnectorError::Overrun) => {
                counters.overruns.fetch_add(1, Ordering::Relaxed);
                if tx.blocking_send(Event::Lost).is_err() {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "process connector failed; falling back to polling");
                let _ = tx.blocking_send(Event::Lost);
                return;
            }
        };
        let out = match event {
            // An exec by any thread replaces the whole thread group's program.
            ProcEvent::Exec { tgid, .. } => {
                counters.execs.fetch_add(1, Ordering::Relaxed);
                let at = OffsetDateTime::now_utc();
                // Gone (or a zombie already) before it could be read: the exec is still reported.
                let record = process::read_pid(&root, &redactor, tgid, clock, lineage, &mut problems)
                    .ok()
                    .flatten()
                    .map(Box::new);
                if record.is_none() {
                    counters.exec_read_misses.fetch_add(1, Ordering::Relaxed);
                }
                // A boot time that could not be read at start might be readable now.
                if !problems.failed.is_empty() {
                    problems = Problems::default();
                    clock = Clock::read(&root, &mut problems);
                }
                Event::Exec { pid: tgid, at, record }
            }
            // A thread's exit is not its process's.
            ProcEvent::Exit { pid, tgid, .. } if pid == tgid => {
                Event::Exit { pid: tgid, at: OffsetDateTime::now_utc() }
            }
            // A new thread is not a new process.
            ProcEvent::Fork { child_pid, child_tgid, .. } if child_pid == child_tgid => {
                Event::Fork { pid: child_tgid }
            }
            ProcEvent::Uid { tgid, .. } | ProcEvent::Gid { tgid, .. } => Event::Credentials { pid: tgid },
            _ => continue,
        };
        // A full channel blocks here: the kernel's buffer then fills, and an overrun (counted,
        // followed by a rescan) is the honest outcome of a runner that cannot keep up.
        if tx.blocking_send(out).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_is_seen_and_read_before_the_process_ends() {
        let (tx, mut rx) = mpsc::channel(1024);
        let watcher = match ExecWatcher::start(HostRoot::default(), Redactor::default(), true, tx) {
            Ok(w) => w,
            Err(e) => panic!("the process connector must work where the tests run (as root): {e}"),
        };
        let mut child = std::process::Command::new("/bin/sleep").arg("0.05").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (mut exec, mut exit) = (None, false);
        while !(exec.is_some() && exit) {
            assert!(std::time::Instant::now() < deadline, "no exec/exit event for {pid}");
            match rx.try_recv() {
                Ok(Event::Exec { pid: p, record, .. }) if p == pid => exec = record,
                Ok(Event::Exit { pid: p, .. }) if p == pid => exit = true,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        child.wait().unwrap();
        let rec = exec.unwrap();
        assert_eq!(rec.exe.as_deref(), Some("/usr/bin/sleep"));
        assert_eq!(rec.cmdline, ["/bin/sleep", "0.05"]);
        assert!(watcher.counters.execs.load(Ordering::Relaxed) >= 1);
        drop(watcher);
    }
}
