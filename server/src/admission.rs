//! Who may be served now: one report in flight per host, reports per host and enrollments per
//! source address held to a rate. The answer to a caller over its share is `429` with
//! `Retry-After`, never a wait that holds a slot other hosts need.
//!
//! Architecture invariant: memory here is bounded whoever calls; keys come from callers (a
//! source address, a host id), so the tables are capped and pruned.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys a rate table keeps at most; past it, keys whose bucket has refilled are forgotten, and
/// if none has, a new key is refused until one does (the table is full of active callers).
const MAX_KEYS: usize = 100_000;

/// A token bucket per key: `per_minute` sustained, bursts of `burst`.
#[derive(Debug)]
pub struct Rate<K> {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> Rate<K> {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Rate {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how long until one is there.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= MAX_KEYS {
            let full_after = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, (_, at)| now.saturating_duration_since(*at) < full_after);
            if buckets.len() >= MAX_KEYS {
                return Err(Duration::from_secs(1));
            }
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

/// The key of a source address for enrollment: IPv6 hosts get a /64 each, so that one host
/// cannot pose as many.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The collector's admission state.
#[derive(Debug)]
pub struct Admission {
    reporting: Arc<Mutex<HashSet<i64>>>,
    pub reports: Rate<i64>,
    pub enrollments: Rate<IpAddr>,
}

/// A host's report in flight; the host may send another once this is dropped.
#[derive(Debug)]
pub struct InFlight {
    host_id: i64,
    reporting: Arc<Mutex<HashSet<i64>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.reporting.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.host_id);
    }
}

/// Why a caller is not served now.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// This host already has a report being read or processed.
    Busy,
    /// Over the rate; a token is there after this long.
    Rate(Duration),
}

impl Refusal {
    /// When the caller may try again (`Retry-After`).
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::Busy => Duration::from_secs(1),
            Refusal::Rate(after) => *after,
        }
    }
}

impl Admission {
    pub fn new(reports_per_minute: u32, enrollments_per_minute: u32) -> Self {
        Admission {
            reporting: Arc::default(),
            // Bursts of ten seconds' worth: an agent delivering its spool after an outage sends
            // back to back.
            reports: Rate::new(reports_per_minute, (reports_per_minute / 6).max(10)),
            enrollments: Rate::new(enrollments_per_minute, (enrollments_per_minute / 6).max(5)),
        }
    }

    /// Admits one report of `host_id`: none of its own in flight, and within its rate.
    pub fn report(&self, host_id: i64) -> Result<InFlight, Refusal> {
        let mut reporting = self.reporting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if reporting.contains(&host_id) {
            return Err(Refusal::Busy);
        }
        self.reports.check(&host_id, Instant::now()).map_err(Refusal::Rate)?;
        reporting.insert(host_id);
        Ok(InFlight { host_id, reporting: self.reporting.clone() })
    }

    /// Whether a report of `host_id` is being read, waits for a processing turn, or is being
    /// processed: the host is talking to the collector, whatever its `last_seen` says.
    pub fn reporting(&self, host_id: i64) -> bool {
        self.reporting.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&host_id)
    }

    /// Admits one enrollment from `ip`.
    pub fn enrollment(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.enrollments.check(&address_key(ip), Instant::now()).map_err(Refusal::Rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_host_at_a_time() {
        let a = Admission::new(6000, 60);
        let first = a.report(1).unwrap();
        assert!(a.reporting(1) && !a.reporting(2));
        assert_eq!(a.report(1).unwrap_err(), Refusal::Busy);
        let other = a.report(2).unwrap();
        drop(first);
        assert!(!a.reporting(1));
        assert!(a.report(1).is_ok());
        drop(other);
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let r = Rate::new(60, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            r.check(&"k", t0).unwrap();
        }
        let wait = r.check(&"k", t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        // Another key has its own bucket.
        r.check(&"other", t0).unwrap();
        // One a second comes back.
        r.check(&"k", t0 + Duration::from_millis(1001)).unwrap();
        assert!(r.check(&"k", t0 + Duration::from_millis(1002)).is_err());
    }

    #[test]
    fn a_full_table_forgets_refilled_keys_and_refuses_when_all_are_active() {
        let r = Rate::new(60, 1);
        let t0 = Instant::now();
        for k in 0..MAX_KEYS {
            r.check(&k, t0).unwrap();
        }
        // All active: a new key waits.
        assert!(r.check(&usize::MAX, t0).is_err());
        // Two seconds on, every bucket has refilled: forgotten, and the new key is served.
        r.check(&usize::MAX, t0 + Duration::from_secs(2)).unwrap();
        assert!(r.buckets.lock().unwrap().len() < 10);
    }

    #[test]
    fn ipv6_hosts_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
