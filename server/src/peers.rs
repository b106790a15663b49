//! How many hosts of each workload have each item (process, listener, outbound connection): what
//! the engine's outlier rule compares a host with.
//!
//! Kept as hosts are judged, not counted over the fleet for each report: a workload is counted
//! from the store once (on a reading connection), then each host judged replaces its own items
//! in the counts. It is counted again from the store every [`RECOUNT`], in the background while
//! the counts in hand go on serving, so that what this collector does not see (hosts retired,
//! hosts judged by another collector on the same store) is caught up with.
//!
//! Invariant: a workload's counts are always those of its `members`' items, one each.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::{PeerCounts, PeerItems};

/// How often a workload is counted again from the store.
pub const RECOUNT: Duration = Duration::from_secs(600);

/// The counts of every workload that has peers judged.
#[derive(Debug, Default)]
pub struct Peers {
    workloads: Mutex<HashMap<String, Workload>>,
}

#[derive(Debug, Default)]
struct Workload {
    counted_at: Option<Instant>,
    recounting: bool,
    members: HashMap<i64, PeerItems>,
    counts: PeerCounts,
}

/// What [`Peers::due`] says of a workload's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Fresh enough.
    No,
    /// Never counted: count it before judging.
    First,
    /// Old: count it again in the background (this caller does; no other is told to).
    Again,
}

impl Peers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Workload>> {
        self.workloads.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `workload` must be counted from the store.
    pub fn due(&self, workload: &str, now: Instant) -> Due {
        let mut all = self.lock();
        let w = all.entry(workload.to_owned()).or_default();
        match w.counted_at {
            None => Due::First,
            Some(at) if now.duration_since(at) >= RECOUNT && !w.recounting => {
                w.recounting = true;
                Due::Again
            }
            Some(_) => Due::No,
        }
    }

    /// Replaces `workload`'s members with those counted from the store at `at`.
    pub fn counted(&self, workload: &str, members: HashMap<i64, PeerItems>, at: Instant) {
        let counts = count(&members);
        let mut all = self.lock();
        // A host counted here leaves whatever workload it was in before.
        leave_others(&mut all, workload, members.keys().copied());
        all.insert(
            workload.to_owned(),
            Workload { counted_at: Some(at), recounting: false, members, counts },
        );
    }

    /// A host no longer anyone's peer (retired).
    pub fn forget(&self, host_id: i64) {
        for w in self.lock().values_mut() {
            w.remove(host_id);
        }
    }

    /// A recount that failed: the next judgement asks for one again.
    pub fn recount_failed(&self, workload: &str) {
        if let Some(w) = self.lock().get_mut(workload) {
            w.recounting = false;
        }
    }

    /// Makes `items` host `host_id`'s in `workload` (and takes it out of any other workload),
    /// then answers `judge` with the workload's counts.
    pub fn judge<R>(
        &self,
        workload: &str,
        host_id: i64,
        items: PeerItems,
        judge: impl FnOnce(&PeerCounts) -> R,
    ) -> R {
        let mut all = self.lock();
        leave_others(&mut all, workload, [host_id]);
        let w = all.entry(workload.to_owned()).or_default();
        w.set(host_id, items);
        judge(&w.counts)
    }
}

impl Workload {
    fn set(&mut self, host_id: i64, items: PeerItems) {
        match self.members.get(&host_id) {
            Some(old) if *old == items => return,
            Some(old) => add(&mut self.counts, old, -1),
            None => self.counts.hosts += 1,
        }
        add(&mut self.counts, &items, 1);
        self.members.insert(host_id, items);
    }

    fn remove(&mut self, host_id: i64) {
        if let Some(old) = self.members.remove(&host_id) {
            add(&mut self.counts, &old, -1);
            self.counts.hosts = self.counts.hosts.saturating_sub(1);
        }
    }
}

/// Takes `hosts` out of every workload but `workload`.
fn leave_others(
    all: &mut HashMap<String, Workload>,
    workload: &str,
    hosts: impl IntoIterator<Item = i64> + Clone,
) {
    for (_, other) in all.iter_mut().filter(|(name, _)| name.as_str() != workload) {
        for id in hosts.clone() {
            other.remove(id);
        }
    }
}

/// The counts of `members` from scratch.
fn count(members: &HashMap<i64, PeerItems>) -> PeerCounts {
    let mut counts = PeerCounts { hosts: members.len() as u64, ..PeerCounts::default() };
    for items in members.values() {
        add(&mut counts, items, 1);
    }
    counts
}

/// Adds (`by` 1) or takes away (`by` -1) one host's items; an item no host has is forgotten.
fn add(counts: &mut PeerCounts, items: &PeerItems, by: i8) {
    fn step<K: Eq + Hash + Clone>(map: &mut HashMap<K, u64>, keys: impl Iterator<Item = K>, by: i8) {
        for k in keys {
            if by > 0 {
                *map.entry(k).or_default() += 1;
            } else if let Some(n) = map.get_mut(&k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&k);
                }
            }
        }
    }
    step(&mut counts.processes, items.processes.iter().cloned(), by);
    step(&mut counts.listeners, items.listeners.iter().copied(), by);
    step(&mut counts.connections, items.connections.iter().cloned(), by);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostwatch_proto::v1::Protocol;

    fn items(procs: &[&str], ports: &[u16]) -> PeerItems {
        PeerItems {
            processes: procs.iter().map(|p| (*p).to_owned()).collect(),
            listeners: ports.iter().map(|p| (Protocol::Tcp, *p)).collect(),
            connections: Default::default(),
        }
    }

    #[test]
    fn counts_follow_each_host_judged_and_equal_a_recount() {
        let peers = Peers::default();
        let now = Instant::now();
        assert_eq!(peers.due("web", now), Due::First);
        let stored =
            HashMap::from([(1, items(&["/usr/sbin/nginx"], &[80])), (2, items(&["/usr/sbin/nginx"], &[80]))]);
        peers.counted("web", stored, now);
        assert_eq!(peers.due("web", now), Due::No);
        // A third host joins with an odd program; the first drops nginx for it.
        let c = peers.judge("web", 3, items(&["/usr/sbin/nginx", "/tmp/x"], &[80]), |c| c.clone());
        assert_eq!((c.hosts, c.processes["/usr/sbin/nginx"], c.processes["/tmp/x"]), (3, 3, 1));
        let c = peers.judge("web", 1, items(&["/tmp/x"], &[80, 8080]), |c| c.clone());
        assert_eq!((c.hosts, c.processes["/usr/sbin/nginx"], c.processes["/tmp/x"]), (3, 2, 2));
        assert_eq!(c.listeners[&(Protocol::Tcp, 8080)], 1);
        // Host 2 moves to another workload: it leaves web's counts.
        peers.judge("db", 2, items(&["/usr/bin/postgres"], &[5432]), |_| ());
        let c = peers.judge("web", 3, items(&["/usr/sbin/nginx", "/tmp/x"], &[80]), |c| c.clone());
        assert_eq!((c.hosts, c.processes["/usr/sbin/nginx"]), (2, 1));
        let all = peers.lock();
        for w in all.values() {
            // What the counts must be: counted from scratch over the members.
            assert_eq!(w.counts, count(&w.members));
        }
        assert!(!all["web"].counts.processes.contains_key("/usr/bin/postgres"));
    }

    #[test]
    fn an_old_count_is_redone_once_in_the_background() {
        let peers = Peers::default();
        let then = Instant::now();
        peers.counted("web", HashMap::new(), then);
        let later = then + RECOUNT;
        assert_eq!(peers.due("web", later), Due::Again);
        assert_eq!(peers.due("web", later), Due::No, "one recount at a time");
        peers.recount_failed("web");
        assert_eq!(peers.due("web", later), Due::Again);
        peers.counted("web", HashMap::from([(7, items(&["/bin/a"], &[]))]), later);
        assert_eq!(peers.due("web", later), Due::No);
        assert_eq!(peers.judge("web", 8, PeerItems::default(), |c| c.hosts), 2);
    }
}
