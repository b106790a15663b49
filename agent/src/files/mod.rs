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
//! Invariant: the manifest on disk is replaced only after the changes it absorbs were handed to
//! the runner, so a change is reported before it can be forgotten.

pub mod manifest;
pub mod scan;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use self::manifest::Manifest;
use crate::ratelimit::TokenBucket;

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

/// How much the monitor may read, and how often it scans.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Bytes a second read for hashing; 0 is no limit.
    pub hash_rate: u64,
    pub hash_max_size: u64,
    pub rescan_every: Duration,
    pub rehash_every: Duration,
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
            host_root: PathBuf::from("/"),
        })
    }

    /// The same paths, read under `host_root` (an agent in a container with the host mounted).
    pub fn under(mut self, host_root: &Path) -> Self {
        self.host_root = host_root.to_owned();
        self
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
    stop: Arc<AtomicBool>,
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
            stop: Arc::new(AtomicBool::new(false)),
        };
        let m = monitor.clone();
        let path = state_dir.join(MANIFEST_FILE);
        std::thread::Builder::new()
            .name("files".to_owned())
            .spawn(move || m.run(&config, &path, &machine_id, &tx))?;
        Ok(monitor)
    }

    /// What the heartbeat says of file watching.
    pub fn stats(&self) -> proto::FileStats {
        lock(&self.stats).clone()
    }

    /// Why coverage of files is incomplete, if it is.
    pub fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn run(
        &self,
        config: &FilesConfig,
        path: &Path,
        machine_id: &str,
        tx: &mpsc::Sender<Vec<proto::FileChange>>,
    ) {
        lower_priority();
        let stop = || self.stop.load(Ordering::Relaxed) || tx.is_closed();
        let (mut manifest, mut origin) = match Manifest::load(path) {
            Ok(Some(m)) if m.machine_id != machine_id => {
                tracing::info!(made_on = %m.machine_id, "the file manifest was made on another machine (an image): changes since are reported as `bake`");
                (Some(m), proto::ChangeOrigin::Bake)
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
        let mut budget = TokenBucket::new(config.budget.hash_rate);
        let mut rehashed = Instant::now();
        tracing::info!(paths = %config.describe(), known = manifest.as_ref().map(|m| m.entries.len()), "file monitor starting");
        loop {
            let rehash = manifest.is_some() && rehashed.elapsed() >= config.budget.rehash_every;
            let started = Instant::now();
            let Some(mut outcome) = scan::scan(config, manifest.as_ref(), rehash, &mut budget, &stop) else {
                return;
            };
            if rehash {
                rehashed = Instant::now();
            }
            let now = OffsetDateTime::now_utc();
            let changes = manifest
                .as_ref()
                .map(|old| scan::changes(old, &outcome.manifest, origin, now))
                .unwrap_or_default();
            tracing::info!(
                entries = outcome.manifest.entries.len(), changes = changes.len(), hashed_mib = outcome.hashed_bytes >> 20,
                took = ?started.elapsed(), origin = ?origin, initial = manifest.is_none(), "file scan done"
            );
            for batch in changes.chunks(BATCH) {
                if tx.blocking_send(batch.to_vec()).is_err() {
                    return;
                }
            }
            outcome.manifest.machine_id = machine_id.to_owned();
            if let Err(e) = outcome.manifest.save(path) {
                tracing::error!(error = %e, "cannot save the file manifest; changes may be reported again after a restart");
            }
            self.record(&outcome);
            manifest = Some(outcome.manifest);
            origin = proto::ChangeOrigin::Rescan;
            let next = Instant::now() + config.budget.rescan_every;
            while Instant::now() < next {
                if stop() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }

    fn record(&self, outcome: &scan::ScanOutcome) {
        let mut s = lock(&self.stats);
        s.entries = outcome.manifest.entries.len() as u64;
        s.missing = outcome
            .missing
            .iter()
            .take(proto::limits::MAX_REASONS)
            .map(|p| p.display().to_string())
            .collect();
        s.last_scan = outcome.manifest.scanned_at;
        let mut problem = lock(&self.problem);
        if outcome.unreadable > 0 {
            *problem = Some(format!(
                "{} watched paths unreadable (first: {})",
                outcome.unreadable,
                outcome.problems.first().map_or("", String::as_str)
            ));
        } else if problem.as_deref().is_some_and(|p| !p.starts_with("file manifest rebuilt")) {
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
