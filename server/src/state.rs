//! What every request handler shares: the store, settings, the baseline cache and metrics.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore};

use crate::admission::Admission;
use crate::api::body::Budget;
use crate::baseline::BaselineSet;
use crate::dev::DevLearner;
use crate::listen::ConnCounters;
use crate::model::{PeerCounts, PeerItems};
use crate::peers::{Due, Peers};
use crate::store::Store;
use std::time::Instant;

/// Shares of one report turn: a report of `max_report_bytes` takes them all, one of a sixteenth of
/// that or less one, so the memory reports take while decoded stays within what
/// `max_concurrent_reports` full-size ones would.
pub const TURN_SHARES: u32 = 16;

/// The shares of a turn a report body of `len` bytes takes: at least one, at most a turn.
pub fn turn_shares(len: usize, max_report_bytes: usize) -> u32 {
    let share = (max_report_bytes / TURN_SHARES as usize).max(1);
    u32::try_from(len.div_ceil(share)).unwrap_or(TURN_SHARES).clamp(1, TURN_SHARES)
}

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
    /// Reports being processed (decoded, recorded, judged), taken once a body is read whole:
    /// [`TURN_SHARES`] per turn of `max_concurrent_reports`, a report taking [`turn_shares`].
    pub report_permits: Arc<Semaphore>,
    /// The deadline and byte budget of every body being read ([`crate::api::body`]).
    pub bodies: Budget,
    /// One report in flight per host, and the rates of reports and enrollments.
    pub admission: Admission,
    /// What the listeners turned away ([`crate::listen`]).
    pub conns: Arc<ConnCounters>,
    /// Per workload, how many hosts have each item: what outliers are judged against
    /// ([`crate::peers`]).
    pub peers: Peers,
    /// Held while a workload is counted from the store for the first time, so that the reports
    /// that all need it after a start count it once.
    first_count: Mutex<()>,
    /// One lock per host: recording a report and explaining it, or re-explaining after a baseline
    /// change, run one at a time per host, so an older view never overwrites a newer verdict.
    /// Several collectors on one store also take the store's turn ([`AppState::lock_host`]).
    host_locks: std::sync::Mutex<HashMap<i64, Arc<Mutex<()>>>>,
}

/// A host's turn ([`AppState::lock_host`]): the store's given up before this collector's.
pub struct HostTurn {
    _store: Option<crate::store::Turn>,
    _local: OwnedMutexGuard<()>,
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
    /// History older than this is pruned ([`crate::housekeeping`]).
    pub retention: Duration,
    /// `[query]`: what one analyst's SQL may take.
    pub query: QueryLimits,
}

/// `[query]` in server.toml: the bounds of `hostwatch query`.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// A query is stopped after this long.
    pub timeout: Duration,
    /// Rows returned at most (the answer says when it was cut).
    pub max_rows: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { timeout: Duration::from_secs(30), max_rows: 100_000 }
    }
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
        let report_permits =
            Arc::new(Semaphore::new(settings.max_concurrent_reports.max(1) * TURN_SHARES as usize));
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
            peers: Peers::default(),
            first_count: Mutex::new(()),
        }))
    }

    /// Makes `items` host `host_id`'s among the peers of `workload` and answers `judge` with the
    /// workload's counts, counting the workload from the store first where it never was (and
    /// again in the background where that was long ago).
    pub async fn judge_peers<R>(
        &self,
        workload: &str,
        host_id: i64,
        items: PeerItems,
        judge: impl FnOnce(&PeerCounts) -> R,
    ) -> Result<R, crate::store::StoreError> {
        match self.peers.due(workload, Instant::now()) {
            Due::No => {}
            Due::First => {
                let _one = self.first_count.lock().await;
                if self.peers.due(workload, Instant::now()) == Due::First {
                    let at = Instant::now();
                    let members = self.store.peer_items(workload).await?;
                    self.peers.counted(workload, members, at);
                }
            }
            Due::Again => {
                let (state, name) = (self.clone(), workload.to_owned());
                tokio::spawn(async move {
                    let at = Instant::now();
                    match state.store.peer_items(&name).await {
                        Ok(members) => state.peers.counted(&name, members, at),
                        Err(e) => {
                            state.peers.recount_failed(&name);
                            tracing::warn!(workload = %name, error = %e, "cannot count the workload's peers again; keeping the counts in hand");
                        }
                    }
                });
            }
        }
        Ok(self.peers.judge(workload, host_id, items, judge))
    }

    /// Waits for this host's turn: this collector's first (see `host_locks`), then the store's,
    /// among every collector on it ([`crate::store::Store::host_turn`]). Held until dropped.
    pub async fn lock_host(&self, host_id: i64) -> Result<HostTurn, crate::store::StoreError> {
        let lock = {
            let mut locks = self.host_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(host_id).or_default().clone()
        };
        let local = lock.lock_owned().await;
        let store = self.store.host_turn(host_id).await?;
        Ok(HostTurn { _store: store, _local: local })
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_takes_a_share_of_a_turn_by_its_size() {
        let max = 16 << 20;
        assert_eq!(turn_shares(0, max), 1);
        assert_eq!(turn_shares(3_000, max), 1);
        assert_eq!(turn_shares(1 << 20, max), 1);
        assert_eq!(turn_shares((1 << 20) + 1, max), 2);
        assert_eq!(turn_shares(175_000 * 20, max), 4);
        assert_eq!(turn_shares(max, max), TURN_SHARES);
        assert_eq!(turn_shares(usize::MAX, max), TURN_SHARES);
    }
}
