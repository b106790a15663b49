//! A stop switch a blocking thread sleeps on. The exec event thread and the file monitor wait in
//! poll(2) on their own descriptor and this one's eventfd, so an idle thread sleeps until there
//! is work or a stop, rather than waking every second to look at a flag (those wake-ups were
//! about a tenth of an idle agent's CPU).
//!
//! Invariant: once set, the switch stays set and its descriptor stays readable, so every wait
//! after the stop returns at once.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

#[derive(Debug)]
pub struct StopSwitch {
    set: AtomicBool,
    fd: EventFd,
}

impl StopSwitch {
    pub fn new() -> std::io::Result<StopSwitch> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(std::io::Error::from)?;
        Ok(StopSwitch { set: AtomicBool::new(false), fd })
    }

    /// Sets the switch and wakes whoever waits on it.
    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        // Fails only when the counter would pass 2^64 - 2: it is readable then already.
        let _ = self.fd.write(1);
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Waits until `fd` has something to read (or an error to report), the switch is set, or
    /// `timeout` passes (`None`: no limit). Whether `fd` is ready; `false` on a stop, a timeout
    /// or a signal.
    pub fn wait(&self, fd: BorrowedFd<'_>, timeout: Option<Duration>) -> std::io::Result<bool> {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN), PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(timeout)) {
            Ok(_) => Ok(fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP))),
            Err(Errno::EINTR) => Ok(false),
            Err(e) => Err(std::io::Error::from(e)),
        }
    }

    /// Sleeps for `timeout`, or less if the switch is set.
    pub fn sleep(&self, timeout: Duration) {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        // Only a signal can make it fail here, and a sleep cut short is no error.
        let _ = poll(&mut fds, poll_timeout(Some(timeout)));
    }
}

/// Whole milliseconds, rounded up (a wait of 0.4 ms must not become a busy loop), and at most
/// what poll(2) takes.
fn poll_timeout(timeout: Option<Duration>) -> PollTimeout {
    match timeout {
        None => PollTimeout::NONE,
        Some(t) => {
            let ms = t.as_micros().div_ceil(1000);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_set_switch_ends_a_wait_without_limit() {
        let stop = std::sync::Arc::new(StopSwitch::new().unwrap());
        let (quiet, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let s = stop.clone();
        let waiter = std::thread::spawn(move || {
            let ready = s.wait(quiet.as_fd(), None).unwrap();
            (ready, s.is_set())
        });
        std::thread::sleep(Duration::from_millis(50));
        stop.set();
        assert_eq!(waiter.join().unwrap(), (false, true), "woken by the switch, nothing to read");
        // Set, it stays readable: a later sleep returns at once.
        let t = Instant::now();
        stop.sleep(Duration::from_secs(30));
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_ready_descriptor_is_told_apart_from_a_timeout() {
        use std::io::Write;
        let stop = StopSwitch::new().unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!stop.wait(a.as_fd(), Some(Duration::from_millis(1))).unwrap());
        b.write_all(b"x").unwrap();
        assert!(stop.wait(a.as_fd(), Some(Duration::from_secs(30))).unwrap());
        assert!(!stop.is_set());
    }
}
