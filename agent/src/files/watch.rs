//! Live changes through inotify: one watch per watched directory, so that the number of watches
//! is the number of directories and can be held to a budget under `fs.inotify.max_user_watches`.
//!
//! The descriptors are kept here, both ways (descriptor to path, path to descriptor), rather than
//! in a general-purpose watcher: a directory renamed inside the tree keeps its descriptor, and
//! re-adding a watch for its new path hands back that same descriptor, which is how its path is
//! put right (a stale path is how watchers come to report changes under names that no longer
//! exist). A watch the kernel drops (the directory deleted, its file system unmounted) comes back
//! as `IN_IGNORED` and is forgotten. `IN_Q_OVERFLOW` means events were lost: the monitor rescans.
//!
//! This module turns events into paths to look at; what changed is decided by comparing with the
//! manifest ([`super::scan`]), never from the events themselves.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::stop::StopSwitch;

/// What a watched directory reports: entries created, deleted, written, closed after writing,
/// their metadata changed, moved in or out; the directory itself deleted or moved. Links are not
/// followed, and a file unlinked while open stops reporting.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR
        | WatchMask::EXCL_UNLINK
}

/// The kernel's limit of watches for this user (`fs.inotify.max_user_watches`), if readable.
pub fn max_user_watches(proc: &Path) -> Option<u64> {
    std::fs::read_to_string(proc.join("sys/fs/inotify/max_user_watches")).ok()?.trim().parse().ok()
}

/// What a batch of events said.
#[derive(Debug, Default)]
pub struct Noted {
    /// Paths where something happened (an entry, or a watched directory itself).
    pub paths: Vec<PathBuf>,
    /// Moves within the watched tree: (from, to).
    pub renames: Vec<(PathBuf, PathBuf)>,
    /// The kernel's queue overflowed: events were lost.
    pub overflow: bool,
    /// Something appeared in a directory watched for a missing path to appear.
    pub appeared: bool,
}

#[derive(Debug)]
pub struct Watcher {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    /// Directories watched only because a configured path below them does not exist yet.
    ancestors: HashMap<WatchDescriptor, PathBuf>,
    /// Watches this watcher may hold.
    budget: usize,
    /// Directories that got no watch (the budget spent, or the kernel refused).
    pub unwatched: u64,
    /// Moves out seen, waiting for their move in (matched by cookie).
    moves: HashMap<u32, (PathBuf, Instant)>,
    buf: Vec<u8>,
}

/// A move out not followed by its move in within this long left the tree.
const MOVE_PAIRING: Duration = Duration::from_millis(200);

impl Watcher {
    pub fn new(budget: usize) -> std::io::Result<Watcher> {
        Ok(Watcher {
            inotify: Inotify::init()?,
            dirs: HashMap::new(),
            by_path: HashMap::new(),
            ancestors: HashMap::new(),
            budget,
            unwatched: 0,
            moves: HashMap::new(),
            buf: vec![0u8; 64 << 10],
        })
    }

    /// Directories watched now.
    pub fn watches(&self) -> usize {
        self.dirs.len()
    }

    /// Watches the directory `path` (read at `real`); `false` when it could not be.
    pub fn watch(&mut self, path: &Path, real: &Path) -> bool {
        if let Some(wd) = self.by_path.get(path)
            && self.dirs.get(wd).is_some_and(|p| p == path)
        {
            return true;
        }
        if self.dirs.len() >= self.budget {
            self.unwatched += 1;
            return false;
        }
        match self.inotify.watches().add(real, mask()) {
            Ok(wd) => {
                // The same descriptor for a directory known under another path: it moved.
                if let Some(old) = self.dirs.insert(wd.clone(), path.to_owned())
                    && old != path
                {
                    self.by_path.remove(&old);
                }
                self.by_path.insert(path.to_owned(), wd);
                true
            }
            Err(e) => {
                // Gone since it was listed: nothing to watch. Anything else is a watch missing.
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(path = %path.display(), error = %e, "cannot watch a directory");
                    self.unwatched += 1;
                }
                false
            }
        }
    }

    /// Watches `ancestor` for a missing path below it to appear.
    pub fn watch_ancestor(&mut self, ancestor: &Path, real: &Path) {
        if self.ancestors.values().any(|a| a == ancestor) {
            return;
        }
        // A directory watched as part of the tree already reports creations in it.
        let wd = match self.by_path.get(ancestor) {
            Some(wd) => wd.clone(),
            None => match self.inotify.watches().add(real, mask()) {
                Ok(wd) => wd,
                Err(e) => {
                    tracing::debug!(path = %ancestor.display(), error = %e, "cannot watch for a missing path");
                    return;
                }
            },
        };
        self.ancestors.insert(wd, ancestor.to_owned());
    }

    /// Forgets the watches of `path` and below (the directories are gone or moved: a moved one
    /// was taken up again under its new path, with the same descriptor).
    pub fn forget_under(&mut self, path: &Path) {
        let gone: Vec<PathBuf> = self.by_path.keys().filter(|p| p.starts_with(path)).cloned().collect();
        for p in gone {
            if let Some(wd) = self.by_path.remove(&p)
                && self.dirs.get(&wd).is_some_and(|d| *d == p)
            {
                self.dirs.remove(&wd);
                let _ = self.inotify.watches().remove(wd);
            }
        }
    }

    /// Starts counting refusals afresh (before a full scan, which meets every directory again).
    pub fn recount(&mut self) {
        self.unwatched = 0;
    }

    /// Waits up to `timeout` for events, or until `stop` is set; whether any are ready.
    pub fn wait(&self, stop: &StopSwitch, timeout: Duration) -> std::io::Result<bool> {
        stop.wait(self.inotify.as_fd(), Some(timeout))
    }

    /// Reads what is queued into `noted`. Moves out whose move in did not come are the paths of
    /// things that left the tree.
    pub fn read(&mut self, noted: &mut Noted) -> std::io::Result<()> {
        loop {
            let events = match self.inotify.read_events(&mut self.buf) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            let mut any = false;
            // Collected first: the events borrow the buffer.
            let mut batch: Vec<(WatchDescriptor, EventMask, u32, Option<PathBuf>)> = Vec::new();
            for e in events {
                any = true;
                batch.push((e.wd.clone(), e.mask, e.cookie, e.name.map(|n: &OsStr| PathBuf::from(n))));
            }
            for (wd, mask, cookie, name) in batch {
                self.note(wd, mask, cookie, name, noted);
            }
            if !any {
                break;
            }
        }
        let now = Instant::now();
        let expired: Vec<u32> = self
            .moves
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= MOVE_PAIRING)
            .map(|(c, _)| *c)
            .collect();
        for cookie in expired {
            if let Some((from, _)) = self.moves.remove(&cookie) {
                noted.paths.push(from);
            }
        }
        Ok(())
    }

    /// Whether moves out are waiting for their move in.
    pub fn moves_pending(&self) -> bool {
        !self.moves.is_empty()
    }

    fn note(
        &mut self,
        wd: WatchDescriptor,
        mask: EventMask,
        cookie: u32,
        name: Option<PathBuf>,
        noted: &mut Noted,
    ) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            noted.overflow = true;
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            // A watch the kernel dropped (the directory deleted, its file system unmounted): the
            // directory is looked at again, which finds it gone or watches it anew and reports
            // what changed meanwhile. A watch this watcher removed itself is no longer mapped.
            if let Some(p) = self.dirs.remove(&wd) {
                if self.by_path.get(&p) == Some(&wd) {
                    self.by_path.remove(&p);
                }
                noted.paths.push(p);
            }
            self.ancestors.remove(&wd);
            return;
        }
        if self.ancestors.contains_key(&wd) && mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            noted.appeared = true;
        }
        let Some(dir) = self.dirs.get(&wd) else { return };
        let path = match name {
            Some(n) => dir.join(n),
            None => dir.clone(),
        };
        if mask.contains(EventMask::MOVED_FROM) {
            self.moves.insert(cookie, (path, Instant::now()));
        } else if mask.contains(EventMask::MOVED_TO) {
            match self.moves.remove(&cookie) {
                Some((from, _)) => noted.renames.push((from, path)),
                None => noted.paths.push(path),
            }
        } else {
            noted.paths.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(w: &mut Watcher) -> Noted {
        let mut noted = Noted::default();
        let stop = StopSwitch::new().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if w.wait(&stop, Duration::from_millis(300)).unwrap() || w.moves_pending() {
                w.read(&mut noted).unwrap();
            } else if !noted.paths.is_empty() || !noted.renames.is_empty() {
                break;
            }
        }
        noted
    }

    #[test]
    fn moves_are_paired_and_a_moved_directory_keeps_its_descriptor() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        std::fs::create_dir(root.join("a")).unwrap();
        let mut w = Watcher::new(100).unwrap();
        assert!(w.watch(&root, &root) && w.watch(&root.join("a"), &root.join("a")));
        std::fs::rename(root.join("a"), root.join("b")).unwrap();
        let noted = settle(&mut w);
        assert_eq!(noted.renames, [(root.join("a"), root.join("b"))], "{noted:?}");
        // Watching the new path hands back the same descriptor: no second watch.
        assert!(w.watch(&root.join("b"), &root.join("b")));
        assert_eq!(w.watches(), 2);
        std::fs::write(root.join("b/x"), "x").unwrap();
        let noted = settle(&mut w);
        assert!(noted.paths.contains(&root.join("b/x")), "{noted:?}");
        // A watch dropped by the kernel (the directory deleted) makes the directory a path to
        // look at; one this watcher forgot itself does not.
        std::fs::create_dir(root.join("gone")).unwrap();
        assert!(w.watch(&root.join("gone"), &root.join("gone")));
        std::fs::remove_dir(root.join("gone")).unwrap();
        let noted = settle(&mut w);
        assert!(
            noted.paths.iter().filter(|p| **p == root.join("gone")).count() >= 2,
            "DELETE_SELF and IGNORED: {noted:?}"
        );
        w.forget_under(&root.join("b"));
        let noted = settle(&mut w);
        assert!(!noted.paths.contains(&root.join("b")), "{noted:?}");
        // The budget: no watch beyond it.
        let mut small = Watcher::new(1).unwrap();
        assert!(small.watch(&root, &root));
        assert!(!small.watch(&root.join("b"), &root.join("b")));
        assert_eq!(small.unwatched, 1);
    }
}
