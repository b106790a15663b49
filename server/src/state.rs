//! What every request handler shares: the store, settings, the baseline cache and metrics.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore};

use crate::admission::Admission;
use crate::api::body::Budget;
use crate::baseline::BaselineSet;
use crate::listen::ConnCounters;
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
    /// What `/metrics` tells ([`crate::metrics`]).
    pub metrics: crate::metrics::Metrics,
    /// Reports being processed (decoded, recorded, judged), taken once a body is read whole.
    pub report_permits: Arc<Semaphore>,
    /// The deadline and byte budget of every body being read ([`crate::api::body`]).
    pub bodies: Budget,
    /// One report in flight per host, and the rates of reports and enrollments.
    pub admission: Admission,
    /// What the listeners turned away ([`crate::listen`]).
    pub conns: Arc<ConnCounters>,
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
    /// `[limits]`: what one caller may take of the collector.
    pub limits: Limits,
    /// `[tags] from_agents`: which tags follow what hosts report ([`crate::tags`]).
    pub tag_policy: crate::tags::TagPolicy,
    /// `[cloud] aws_identity_certificates`: EC2 claims must be proven ([`crate::cloud_identity`]).
    pub aws_identity: Option<crate::cloud_identity::AwsIdentity>,
}

/// `[limits]` in server.toml, as far as request handling goes (the listeners' own terms are
/// [`crate::listen::ConnLimits`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to receive a whole request body.
    pub body_timeout: Duration,
    /// Bytes of request bodies held at once, across all requests.
    pub max_body_bytes_in_flight: usize,
    /// Reports one host may send in a minute (bursts of a sixth of it).
    pub reports_per_host_per_minute: u32,
    /// Enrollments from one source address (an IPv6 /64) in a minute.
    pub enrollments_per_address_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_timeout: Duration::from_secs(30),
            max_body_bytes_in_flight: 128 << 20,
            reports_per_host_per_minute: 1200,
            enrollments_per_address_per_minute: 60,
        }
    }
}

/// Baselines parsed from one revision of the store.
#[derive(Debug)]
pub struct LoadedBaselines {
    pub revision: i64,
    pub set: BaselineSet,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, settings: Settings, learner: Option<DevLearner>) -> Self {
        let report_permits = Arc::new(Semaphore::new(settings.max_concurrent_reports.max(1)));
        let bodies = Budget::new(settings.limits.body_timeout, settings.limits.max_body_bytes_in_flight);
        let admission = Admission::new(
            settings.limits.reports_per_host_per_minute,
            settings.limits.enrollments_per_address_per_minute,
        );
        let conns: Arc<ConnCounters> = Arc::default();
        let metrics = crate::metrics::Metrics::new(&conns, &store.timings());
        AppState(Arc::new(Inner {
            store,
            settings,
            baselines: Mutex::new(None),
            learner,
            metrics,
            report_permits,
            bodies,
            admission,
            conns,
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
