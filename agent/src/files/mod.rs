//! File integrity: the watched paths, a manifest of every file under them ([`manifest`]), whole
//! scans that compare the disk with it ([`scan`]), and the monitor thread that runs them and hands
//! changes to the runner.
//!
//! The monitor builds the manifest at first start (as `aide --init` does, reporting nothing),
//! compares at every start (changes made while the agent was down: origin `downtime`, or `bake`
//! when the manifest came with an image from another machine), and again every `rescan_every`
//! (origin `rescan`), re-hashing everything every `rehash_every`. It runs at low CPU and I/O
//! priority, its reads bounded by `hash_rate`.
//!
//! Invariant: the manifest on disk is replaced only after the changes it absorbs are in the
//! spool (the runner counts them back), so a crash in between finds them again at the next start.

pub mod bake;
pub mod manifest;
pub mod package;
pub mod rpmdb;
pub mod scan;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use self::manifest::Manifest;
use crate::ratelimit::TokenBucket;
use crate::stop::StopSwitch;

/// Where attackers persist and what they replace: watched unless `[files] defaults = false`.
/// (`/bin` and `/sbin` are links into `/usr` on merged-/usr systems: recorded as links.)
pub const DEFAULT_PATHS: &[&str] = &[
    "/etc",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/bin",
    "/sbin",
    "/usr/lib/systemd",
    "/var/spool/cron",
    "/root/.ssh",
];

/// Every home's `.ssh`, expanded at each scan (a new user's keys are watched from the next).
const HOME_SSH: &str = "/home/*/.ssh";

/// Changes handed to the runner at once, at most (a report carries at most
/// [`proto::limits::MAX_FILE_CHANGES`]).
pub const BATCH: usize = 1_000;

/// The manifest's file in the state directory.
pub const MANIFEST_FILE: &str = "files.manifest";

/// A path is looked at once no event came for it this long (an editor's write, rename and chmod
/// are one change) ...
const QUIET: Duration = Duration::from_millis(200);
/// ... or this long after its first event, however busy it stays.
const HOLD_MAX: Duration = Duration::from_secs(1);
/// The longest the monitor sleeps while it has something to finish: changes held for dpkg, or a
/// manifest to save once the runner has spooled what it was handed (which wakes nothing here).
const WAIT_MAX: Duration = Duration::from_secs(1);
/// The longest it sleeps with nothing to finish: inotify and the stop switch wake it sooner.
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// Changes are held at most this long while dpkg holds its lock, to be put down to its package.
const DPKG_WAIT: Duration = Duration::from_secs(120);
/// While live changes keep coming, the manifest is saved at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// Changes on their way to the runner, held while dpkg is at work so that they can be put down to
/// their package once its database records them.
struct Outbox {
    packages: package::Packages,
    held: Vec<proto::FileChange>,
    /// When the oldest held change came.
    since: Instant,
}

impl Outbox {
    /// Hands `changes` (and what was held) to `send`, annotated, unless dpkg is at work and has
    /// not been waited for [`DPKG_WAIT`] yet; `false` if the runner is gone.
    fn deliver(
        &mut self,
        config: &FilesConfig,
        changes: Vec<proto::FileChange>,
        send: &dyn Fn(Vec<proto::FileChange>) -> bool,
    ) -> bool {
        if self.held.is_empty() {
            self.since = Instant::now();
        }
        self.held.extend(changes);
        if self.held.is_empty() || (self.packages.busy() && self.since.elapsed() < DPKG_WAIT) {
            return true;
        }
        self.packages.annotate(&mut self.held, &|p| config.real(p), &|p| config.covers(p));
        send(std::mem::take(&mut self.held))
    }
}

/// Paths with events, waiting for their events to settle: (first event, last event, where a
/// rename brought it from).
#[derive(Debug, Default)]
struct Pending {
    paths: HashMap<PathBuf, (Instant, Instant, Option<PathBuf>)>,
}

impl Pending {
    /// A path had an event; `from`: it was moved there from `from`. A move's settling looks at
    /// both ends, so what is pending at or below its source is taken into it (the moved
    /// directory's own `IN_MOVE_SELF`, events inside it still under its old name).
    fn touch(&mut self, path: PathBuf, from: Option<PathBuf>) {
        match &from {
            Some(f) => self.paths.retain(|p, _| !p.starts_with(f)),
            None if self.paths.values().any(|(_, _, f)| f.as_ref().is_some_and(|f| path.starts_with(f))) => {
                return;
            }
            None => {}
        }
        let now = Instant::now();
        let e = self.paths.entry(path).or_insert((now, now, None));
        e.1 = now;
        if from.is_some() {
            e.2 = from;
        }
    }

    fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// When the next path is due.
    fn next_due(&self) -> Option<Instant> {
        self.paths.values().map(|(first, last, _)| (*last + QUIET).min(*first + HOLD_MAX)).min()
    }

    /// The paths due now, parents before children (a directory settled first takes in what came
    /// below it).
    fn take_due(&mut self, now: Instant) -> Vec<(PathBuf, Option<PathBuf>)> {
        let due: Vec<PathBuf> = self
            .paths
            .iter()
            .filter(|(_, (first, last, _))| now >= *last + QUIET || now >= *first + HOLD_MAX)
            .map(|(p, _)| p.clone())
            .collect();
        let mut out: Vec<(PathBuf, Option<PathBuf>)> = due
            .into_iter()
            .filter_map(|p| self.paths.remove_entry(&p).map(|(p, (_, _, from))| (p, from)))
            .collect();
        out.sort();
        // A path below one settled now is settled with it.
        let mut kept: Vec<(PathBuf, Option<PathBuf>)> = Vec::with_capacity(out.len());
        for (p, from) in out {
            if from.is_none() && kept.last().is_some_and(|(k, _)| p.starts_with(k)) {
                continue;
            }
            kept.push((p, from));
        }
        kept
    }
}

/// How much the monitor may read, and how often it scans.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Bytes a second read for hashing; 0 is no limit.
    pub hash_rate: u64,
    pub hash_max_size: u64,
    pub rescan_every: Duration,
    pub rehash_every: Duration,
    /// Inotify watches the monitor may hold; 0: three quarters of `fs.inotify.max_user_watches`.
    pub max_watches: u64,
}

/// `[files]`, checked.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Watched paths as the host sees them (absolute, normalised).
    pub paths: Vec<PathBuf>,
    /// Whether the home directories' `.ssh` are watched (part of the default set).
    pub homes: bool,
    exclude: GlobSet,
    pub exclude_patterns: Vec<String>,
    pub budget: Budget,
    pub dpkg_dir: PathBuf,
    /// rpm's database directory.
    pub rpm_dir: PathBuf,
    /// The host's root as the agent sees it (`/`, or where a container mounted it).
    pub host_root: PathBuf,
}

/// A refusal: the environment variable, the key, and what is wrong.
pub type Refusal = (&'static str, &'static str, String);

impl FilesConfig {
    pub fn new(
        defaults: bool,
        paths: &[PathBuf],
        exclude: &[String],
        budget: Budget,
        dpkg_dir: PathBuf,
    ) -> Result<FilesConfig, Refusal> {
        let mut all: Vec<PathBuf> =
            if defaults { DEFAULT_PATHS.iter().map(PathBuf::from).collect() } else { Vec::new() };
        for p in paths {
            if !p.is_absolute() {
                return Err((
                    "HOSTWATCH_FILES_PATHS",
                    "files.paths",
                    format!("{} is not an absolute path", p.display()),
                ));
            }
            all.push(p.components().collect());
        }
        all.sort();
        all.dedup();
        let mut set = GlobSetBuilder::new();
        for pattern in exclude {
            let glob = Glob::new(pattern).map_err(|e| {
                ("HOSTWATCH_FILES_EXCLUDE", "files.exclude", format!("invalid glob {pattern:?}: {e}"))
            })?;
            set.add(glob);
        }
        let exclude_set =
            set.build().map_err(|e| ("HOSTWATCH_FILES_EXCLUDE", "files.exclude", e.to_string()))?;
        if budget.rescan_every < Duration::from_secs(60) {
            return Err((
                "HOSTWATCH_FILES_RESCAN_EVERY",
                "files.rescan_every",
                "must be at least 1m".to_owned(),
            ));
        }
        if budget.rehash_every < budget.rescan_every {
            return Err((
                "HOSTWATCH_FILES_REHASH_EVERY",
                "files.rehash_every",
                "must be at least files.rescan_every".to_owned(),
            ));
        }
        Ok(FilesConfig {
            paths: all,
            homes: defaults,
            exclude: exclude_set,
            exclude_patterns: exclude.to_vec(),
            budget,
            dpkg_dir,
            rpm_dir: PathBuf::from("/var/lib/rpm"),
            host_root: PathBuf::from("/"),
        })
    }

    /// The package databases, as the agent reads them.
    pub fn databases(&self) -> package::Databases {
        package::Databases {
            dpkg_dir: self.real(&self.dpkg_dir),
            rpm_dir: self.real(&self.rpm_dir),
            host_root: self.host_root.clone(),
        }
    }

    /// The same, with rpm's database at `dir` (as the host sees it).
    pub fn with_rpm_dir(mut self, dir: PathBuf) -> Self {
        self.rpm_dir = dir;
        self
    }

    /// The same paths, read under `host_root` (an agent in a container with the host mounted).
    pub fn under(mut self, host_root: &Path) -> Self {
        self.host_root = host_root.to_owned();
        self
    }

    /// Whether `path` (a host path) is under a watched root and not excluded.
    pub fn covers(&self, path: &Path) -> bool {
        let home_ssh = || {
            let mut c = path.components().skip(1);
            matches!((c.next(), c.next(), c.next()), (Some(h), Some(_), Some(s)) if h.as_os_str() == "home" && s.as_os_str() == ".ssh")
        };
        (self.paths.iter().any(|r| path.starts_with(r)) || (self.homes && home_ssh())) && !self.excluded(path)
    }

    /// Whether anything is watched at all.
    pub fn enabled(&self) -> bool {
        !self.paths.is_empty() || self.homes
    }

    /// The roots to scan now: the configured paths, and every home's `.ssh` that exists.
    pub fn roots(&self) -> Vec<PathBuf> {
        let mut roots = self.paths.clone();
        if self.homes
            && let Ok(homes) = std::fs::read_dir(self.real(Path::new("/home")))
        {
            for home in homes.flatten() {
                let ssh = Path::new("/home").join(home.file_name()).join(".ssh");
                if self.real(&ssh).is_dir() {
                    roots.push(ssh);
                }
            }
        }
        roots.retain(|r| !self.excluded(r));
        roots
    }

    /// Where a host path is for the agent.
    pub fn real(&self, path: &Path) -> PathBuf {
        if self.host_root == Path::new("/") {
            path.to_owned()
        } else {
            self.host_root.join(path.strip_prefix("/").unwrap_or(path))
        }
    }

    pub fn excluded(&self, path: &Path) -> bool {
        self.exclude.is_match(path)
    }

    /// A description of what is watched, for the log.
    pub fn describe(&self) -> String {
        let mut paths: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        if self.homes {
            paths.push(HOME_SSH.to_owned());
        }
        paths.join(", ")
    }
}

/// The running monitor: its statistics for heartbeats, and the switch that stops it.
#[derive(Debug, Clone)]
pub struct Monitor {
    stats: Arc<Mutex<proto::FileStats>>,
    problem: Arc<Mutex<Option<String>>>,
    /// What inotify cannot cover (unavailable, or directories beyond the watch budget).
    inotify_problem: Arc<Mutex<Option<String>>>,
    /// File changes the runner has put in spooled reports: the manifest on disk is replaced only
    /// once every change handed over is spooled, so no change is forgotten by a crash between.
    spooled: Arc<std::sync::atomic::AtomicU64>,
    /// Closed when the monitor thread ends.
    finished: Arc<Mutex<Option<std::sync::mpsc::Receiver<()>>>>,
    stop: Arc<StopSwitch>,
}

impl Monitor {
    /// Starts the monitor thread; changes arrive on `tx` in batches of at most [`BATCH`].
    pub fn start(
        config: FilesConfig,
        state_dir: &Path,
        machine_id: String,
        tx: mpsc::Sender<Vec<proto::FileChange>>,
    ) -> std::io::Result<Monitor> {
        let monitor = Monitor {
            stats: Arc::default(),
            problem: Arc::default(),
            inotify_problem: Arc::default(),
            stop: Arc::new(StopSwitch::new()?),
            spooled: Arc::default(),
            finished: Arc::default(),
        };
        let m = monitor.clone();
        let path = state_dir.join(MANIFEST_FILE);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        *lock(&monitor.finished) = Some(done_rx);
        std::thread::Builder::new().name("files".to_owned()).spawn(move || {
            m.run(&config, &path, &machine_id, &tx);
            drop(done_tx);
        })?;
        Ok(monitor)
    }

    /// What the heartbeat says of file watching.
    pub fn stats(&self) -> proto::FileStats {
        lock(&self.stats).clone()
    }

    /// Why coverage of files is incomplete, if it is.
    pub fn problem(&self) -> Option<String> {
        let problems: Vec<String> = [lock(&self.problem).clone(), lock(&self.inotify_problem).clone()]
            .into_iter()
            .flatten()
            .collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// The runner spooled `n` more file changes.
    pub fn spooled(&self, n: usize) {
        self.spooled.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn stop(&self) {
        self.stop.set();
    }

    /// Waits (blocking) up to `timeout` for the monitor thread to end after [`Monitor::stop`],
    /// so that its last save of the manifest is not cut short by the process ending.
    pub fn wait_stopped(&self, timeout: Duration) {
        if let Some(rx) = lock(&self.finished).take() {
            let _ = rx.recv_timeout(timeout);
        }
    }

    fn run(
        &self,
        config: &FilesConfig,
        path: &Path,
        machine_id: &str,
        tx: &mpsc::Sender<Vec<proto::FileChange>>,
    ) {
        lower_priority();
        let stop = || self.stop.is_set() || tx.is_closed();
        // Changes handed to the runner, to be matched by what it reports spooled.
        let handed = std::sync::atomic::AtomicU64::new(0);
        let send = |changes: Vec<proto::FileChange>| {
            changes.chunks(BATCH).all(|b| {
                handed.fetch_add(b.len() as u64, Ordering::Relaxed);
                tx.blocking_send(b.to_vec()).is_ok()
            })
        };
        let mut outbox = Outbox {
            packages: package::Packages::new(&config.databases()),
            held: Vec::new(),
            since: Instant::now(),
        };
        let deliver =
            |outbox: &mut Outbox, changes: Vec<proto::FileChange>| outbox.deliver(config, changes, &send);
        let (loaded, mut origin) = match Manifest::load(path) {
            Ok(Some(m)) if m.baked => {
                tracing::info!(baked_at = ?m.scanned_at, "the file manifest is the image's golden manifest: every file is hashed again, and what differs is reported as `bake`");
                (Some(m), proto::ChangeOrigin::Bake)
            }
            Ok(Some(m)) if m.machine_id != machine_id && !m.machine_id.is_empty() => {
                tracing::warn!(made_on = %m.machine_id, "the file manifest was made on another machine and is not an image's (a cloned disk?): changes since are reported as `downtime`");
                (Some(m), proto::ChangeOrigin::Downtime)
            }
            Ok(Some(m)) => (Some(m), proto::ChangeOrigin::Downtime),
            Ok(None) => (None, proto::ChangeOrigin::Downtime),
            Err(e) => {
                // What changed while the manifest was unreadable cannot be told: say so, loudly.
                tracing::error!(error = %e, "the file manifest is damaged; building a new one (changes made meanwhile are not known)");
                *lock(&self.problem) = Some(format!("file manifest rebuilt: {e}"));
                (None, proto::ChangeOrigin::Downtime)
            }
        };
        let mut initial = loaded.is_none();
        let mut manifest = loaded.unwrap_or_default();
        let mut budget = TokenBucket::new(config.budget.hash_rate);
        let limit = watch::max_user_watches(&config.real(Path::new("/proc")));
        // A quarter of the user's watches is left to the other programs that run as root.
        let kernel_budget = limit.map_or(8192, |l| l / 4 * 3);
        let wanted = if config.budget.max_watches == 0 {
            kernel_budget
        } else {
            config.budget.max_watches.min(kernel_budget)
        };
        let watch_budget = usize::try_from(wanted).unwrap_or(usize::MAX);
        let mut watcher = match watch::Watcher::new(watch_budget) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "inotify unavailable: file changes are found by the periodic scan only");
                *lock(&self.inotify_problem) =
                    Some(format!("inotify unavailable ({e}): files checked every rescan_every only"));
                None
            }
        };
        lock(&self.stats).watch_limit = limit.unwrap_or(0);
        tracing::info!(paths = %config.describe(), known = manifest.len(), watch_limit = ?limit, "file monitor starting");
        let mut rehashed = Instant::now();
        let mut next_scan = Instant::now();
        let mut pending = Pending::default();
        // The manifest on disk may know only of changes safe in the spool: none held for dpkg, and
        // every one handed over spooled (what is not is found again at the next start).
        let may_save = |outbox: &Outbox| {
            outbox.held.is_empty() && self.spooled.load(Ordering::Relaxed) >= handed.load(Ordering::Relaxed)
        };
        let mut missing: Vec<PathBuf> = Vec::new();
        let mut unsaved = false;
        let mut saved_at = Instant::now();
        loop {
            if stop() {
                if unsaved
                    && may_save(&outbox)
                    && let Err(e) = manifest.save(path)
                {
                    tracing::error!(error = %e, "cannot save the file manifest at stop");
                }
                return;
            }
            if Instant::now() >= next_scan {
                // A golden manifest is checked by content: an image can be changed offline
                // with its metadata kept.
                let rehash = origin == proto::ChangeOrigin::Bake
                    || !initial && rehashed.elapsed() >= config.budget.rehash_every;
                if let Some(w) = watcher.as_mut() {
                    w.recount();
                }
                let started = Instant::now();
                let old = (!initial).then_some(&manifest);
                let mut on_dir = |p: &Path, real: &Path| {
                    if let Some(w) = watcher.as_mut() {
                        w.watch(p, real);
                    }
                };
                let Some(mut outcome) =
                    scan::scan_roots(config, &config.roots(), old, rehash, &mut budget, &stop, &mut on_dir)
                else {
                    return;
                };
                if rehash {
                    rehashed = Instant::now();
                }
                let changes = if initial {
                    Vec::new()
                } else {
                    scan::changes(&manifest, &outcome.manifest, origin, OffsetDateTime::now_utc())
                };
                tracing::info!(
                    entries = outcome.manifest.len(), changes = changes.len(), hashed_mib = outcome.hashed_bytes >> 20,
                    took = ?started.elapsed(), origin = origin.as_str(), initial, "file scan done"
                );
                if !deliver(&mut outbox, changes) {
                    return;
                }
                outcome.manifest.machine_id = machine_id.to_owned();
                manifest = std::mem::take(&mut outcome.manifest);
                unsaved = true;
                missing.clone_from(&outcome.missing);
                self.watch_missing(config, watcher.as_mut(), &missing);
                self.record(&outcome, &manifest, watcher.as_ref(), initial);
                initial = false;
                origin = proto::ChangeOrigin::Rescan;
                next_scan = Instant::now() + config.budget.rescan_every;
            }
            if unsaved && may_save(&outbox) && (pending.is_empty() || saved_at.elapsed() >= SAVE_EVERY) {
                if let Err(e) = manifest.save(path) {
                    tracing::error!(error = %e, "cannot save the file manifest; changes may be reported again after a restart");
                }
                unsaved = false;
                saved_at = Instant::now();
            }
            let until_due = pending.next_due().map(|d| d.saturating_duration_since(Instant::now()));
            let until_scan = next_scan.saturating_duration_since(Instant::now());
            let idle = !unsaved && outbox.held.is_empty() && pending.is_empty();
            let most = if idle { IDLE_WAIT } else { WAIT_MAX };
            let wait = until_due.unwrap_or(most).min(most).min(until_scan);
            let mut noted = watch::Noted::default();
            match watcher.as_mut() {
                Some(w) => {
                    let wait = if w.moves_pending() { wait.min(QUIET) } else { wait };
                    let ready = match w.wait(&self.stop, wait) {
                        Ok(ready) => ready,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot wait for inotify events");
                            self.stop.sleep(WAIT_MAX);
                            false
                        }
                    };
                    if (ready || w.moves_pending())
                        && let Err(e) = w.read(&mut noted)
                    {
                        tracing::error!(error = %e, "cannot read inotify events; rescanning");
                        noted.overflow = true;
                    }
                }
                None => self.stop.sleep(wait),
            }
            if noted.overflow {
                // Events were lost: only a scan can tell what changed. What was pending is in it.
                tracing::warn!("inotify queue overflow: events lost; rescanning the watched paths");
                lock(&self.stats).overflows += 1;
                pending = Pending::default();
                next_scan = Instant::now();
                continue;
            }
            if noted.appeared {
                // Watched deeper first, then checked: what appears after the watch is an event,
                // what appeared before is found by the check.
                self.watch_missing(config, watcher.as_mut(), &missing);
                let appeared: Vec<PathBuf> =
                    missing.iter().filter(|m| config.real(m).exists()).cloned().collect();
                missing.retain(|m| !appeared.contains(m));
                for root in appeared {
                    pending.touch(root, None);
                }
                self.set_missing(&missing);
            }
            for p in noted.paths {
                if !config.excluded(&p) {
                    pending.touch(p, None);
                }
            }
            for (from, to) in noted.renames {
                match (config.excluded(&from), config.excluded(&to)) {
                    (false, false) => pending.touch(to, Some(from)),
                    (false, true) => pending.touch(from, None),
                    (true, false) => pending.touch(to, None),
                    (true, true) => {}
                }
            }
            // Changes held for dpkg go out once it is done (or has taken too long).
            if !deliver(&mut outbox, Vec::new()) {
                return;
            }
            let due = pending.take_due(Instant::now());
            if due.is_empty() {
                continue;
            }
            let mut changes = Vec::new();
            for (p, from) in due {
                changes.extend(self.settle(
                    config,
                    &mut manifest,
                    &p,
                    from.as_deref(),
                    &mut budget,
                    watcher.as_mut(),
                    &stop,
                ));
                // A watched root deleted: watched for again, from its nearest ancestor.
                if config.paths.contains(&p) && !missing.contains(&p) && !config.real(&p).exists() {
                    missing.push(p);
                    self.watch_missing(config, watcher.as_mut(), &missing);
                    self.set_missing(&missing);
                }
            }
            lock(&self.stats).entries = manifest.len() as u64;
            if !changes.is_empty() {
                tracing::debug!(changes = changes.len(), "live file changes");
                if !deliver(&mut outbox, changes) {
                    return;
                }
                unsaved = true;
            }
        }
    }

    /// Looks again at `path` (and `from`, where it was moved from) and below: the changes since
    /// the manifest, which is brought up to date.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        config: &FilesConfig,
        manifest: &mut Manifest,
        path: &Path,
        from: Option<&Path>,
        budget: &mut TokenBucket,
        mut watcher: Option<&mut watch::Watcher>,
        stop: scan::Stop<'_>,
    ) -> Vec<proto::FileChange> {
        let mut old = manifest.take_under(path);
        if let Some(f) = from {
            old.merge(manifest.take_under(f));
        }
        let mut on_dir = |p: &Path, real: &Path| {
            if let Some(w) = watcher.as_deref_mut() {
                w.watch(p, real);
            }
        };
        // Both ends of a move: its source may hold something new by now.
        let roots: Vec<PathBuf> = std::iter::once(path).chain(from).map(Path::to_path_buf).collect();
        let Some(new) = scan::scan_roots(config, &roots, Some(&old), false, budget, stop, &mut on_dir) else {
            // Stopping: what was taken out goes back, unreported.
            manifest.merge(old);
            return Vec::new();
        };
        if let Some(w) = watcher {
            // Directories gone (or moved away: taken up again under their new path above).
            for o in old.iter() {
                if o.entry.kind == proto::FileKind::Dir && !new.manifest.contains_key(o.path) {
                    w.forget_under(o.path());
                }
            }
        }
        let changes =
            scan::changes(&old, &new.manifest, proto::ChangeOrigin::Live, OffsetDateTime::now_utc());
        manifest.merge(new.manifest);
        changes
    }

    /// Watches the nearest existing ancestor of each missing path, to take it up when it appears.
    fn watch_missing(&self, config: &FilesConfig, watcher: Option<&mut watch::Watcher>, missing: &[PathBuf]) {
        let Some(w) = watcher else { return };
        for m in missing {
            if let Some(ancestor) = m.ancestors().skip(1).find(|a| config.real(a).is_dir()) {
                w.watch_ancestor(ancestor, &config.real(ancestor));
            }
        }
    }

    /// The configured paths that do not exist, as the heartbeat lists them (within the wire's
    /// limit on their number).
    fn set_missing(&self, missing: &[PathBuf]) {
        lock(&self.stats).missing =
            missing.iter().take(proto::limits::MAX_REASONS).map(|p| p.display().to_string()).collect();
    }

    /// Keeps what the heartbeat says of the last whole scan. A rebuilt manifest is said until the
    /// first scan that compares with the rebuilt one (`initial` is the scan that built it).
    fn record(
        &self,
        outcome: &scan::ScanOutcome,
        manifest: &Manifest,
        watcher: Option<&watch::Watcher>,
        initial: bool,
    ) {
        let mut s = lock(&self.stats);
        s.entries = manifest.len() as u64;
        s.watches = watcher.map_or(0, |w| w.watches() as u64);
        s.unwatched_dirs = watcher.map_or(0, |w| w.unwatched);
        s.last_scan = manifest.scanned_at;
        drop(s);
        self.set_missing(&outcome.missing);
        if let Some(w) = watcher {
            *lock(&self.inotify_problem) = (w.unwatched > 0).then(|| {
                format!(
                    "{} watched directories beyond the inotify watch budget (files.max_watches, fs.inotify.max_user_watches): checked every rescan_every only",
                    w.unwatched
                )
            });
        }
        let mut problem = lock(&self.problem);
        if outcome.unreadable > 0 {
            *problem = Some(format!(
                "{} watched paths unreadable (first: {})",
                outcome.unreadable,
                outcome.problems.first().map_or("", String::as_str)
            ));
        } else if !initial || problem.as_deref().is_some_and(|p| !p.starts_with("file manifest rebuilt")) {
            *problem = None;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Scans yield to everything else: nice 10 and the idle I/O class for this thread.
fn lower_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), 10) {
        tracing::debug!(error = %e, "cannot lower the file monitor's CPU priority");
    }
    // ioprio_set(IOPRIO_WHO_PROCESS, tid, IOPRIO_CLASS_IDLE): no wrapper in libc or rustix.
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    // SAFETY: a plain system call with integer arguments; it changes only this thread's I/O class.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            libc::c_long::from(tid.as_raw_nonzero().get()),
            IOPRIO_CLASS_IDLE << 13,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the file monitor's I/O priority");
    }
}
