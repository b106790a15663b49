//! What every request handler shares: the store, settings, the baseline cache and counters.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use std::collections::HashMap;

use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore};

use crate::baseline::BaselineSet;
use crate::model::PeerCounts;

/// How long peer counts are reused.
pub const PEER_COUNTS_TTL: Duration = Duration::from_secs(60);
use crate::dev::DevLearner;
use crate::store::Store;

/// Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub settings: Settings,
    /// The baselines as of a store revision; reloaded when the revision moves, so that several
    /// collectors on one store all follow `baseline apply`.
    pub baselines: Mutex<Option<Arc<LoadedBaselines>>>,
    /// In `serve --dev` only: learns a baseline for this machine when none selects it.
    pub learner: Option<DevLearner>,
    pub counters: Counters,
    /// Reports being read and processed; the bound on the memory agents can make us use.
    pub report_permits: Arc<Semaphore>,
    /// Per workload, how many hosts have each item, and when that was counted: outliers are
    /// judged against counts at most [`PEER_COUNTS_TTL`] old (a fleet's makeup moves slowly;
    /// counting it for every report would cost the whole fleet each time).
    peers: std::sync::Mutex<HashMap<String, (std::time::Instant, Arc<PeerCounts>)>>,
    /// One lock per host: recording a report and explaining it, or re-explaining after a baseline
    /// change, run one at a time per host, so an older view never overwrites a newer verdict.
    /// (Several collectors on one store will need the store's own row lock for this.)
    host_locks: std::sync::Mutex<HashMap<i64, Arc<Mutex<()>>>>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_report_bytes: usize,
    pub max_concurrent_reports: usize,
    /// Fixed silence after which a host is offline; `None`: 3 of its intervals, at least 30 s.
    pub offline_after: Option<Duration>,
    /// Silence after which a host is retired.
    pub retire_after: Duration,
    /// `[findings] max_new_per_host_per_minute`: the budget [`crate::findings`] holds each host to.
    pub max_new_findings_per_minute: u32,
}

/// Baselines parsed from one revision of the store.
#[derive(Debug)]
pub struct LoadedBaselines {
    pub revision: i64,
    pub set: BaselineSet,
}

/// Counts of what the collector accepted, refused and ignored.
#[derive(Debug, Default)]
pub struct Counters {
    pub reports_accepted: AtomicU64,
    pub reports_rejected: AtomicU64,
    /// Fields of agent messages this version does not know (newer agents), ignored.
    pub unknown_fields: AtomicU64,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, settings: Settings, learner: Option<DevLearner>) -> Self {
        let report_permits = Arc::new(Semaphore::new(settings.max_concurrent_reports.max(1)));
        AppState(Arc::new(Inner {
            store,
            settings,
            baselines: Mutex::new(None),
            learner,
            counters: Counters::default(),
            report_permits,
            host_locks: std::sync::Mutex::new(HashMap::new()),
            peers: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    /// The peer counts of `workload`, from the cache while fresh.
    pub async fn peer_counts(&self, workload: &str) -> Result<Arc<PeerCounts>, crate::store::StoreError> {
        let cached = {
            let cache = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            cache.get(workload).filter(|(at, _)| at.elapsed() < PEER_COUNTS_TTL).map(|(_, c)| c.clone())
        };
        if let Some(c) = cached {
            return Ok(c);
        }
        let counts = Arc::new(self.store.peer_counts(workload).await?);
        let mut cache = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.insert(workload.to_owned(), (std::time::Instant::now(), counts.clone()));
        Ok(counts)
    }

    /// Waits for this host's turn (see `host_locks`).
    pub async fn lock_host(&self, host_id: i64) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.host_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(host_id).or_default().clone()
        };
        lock.lock_owned().await
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
