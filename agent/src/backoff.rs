//! Randomised waits, so that a fleet does not act in step: exponential backoff with full jitter
//! (a collector that comes back is not hit by every agent at once), and intervals jittered by
//! ±10% (instances booted together from one AMI drift apart instead of scanning and reporting
//! in the same second forever).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap, attempt: 0 }
    }

    /// The next wait ("full jitter"): uniformly random in `[0, min(cap, base * 2^attempt)]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << self.attempt.min(20)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.as_millis() as u64;
        let r = getrandom::u64().unwrap_or(span / 2);
        Duration::from_millis(r % (span + 1))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How soon the agent tries again while nothing answers at the collector's address.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The wait before the next delivery, chosen by how the last one failed.
///
/// Two failures call for opposite answers. A collector that answered and failed (503 busy,
/// 500, 429) is alive and loaded: agents back off exponentially with full jitter, so that it
/// is not hit by the whole fleet at once. A collector that accepted no connection at all
/// (refused, connect timeout) is down: a retry costs it nothing (the kernel's RST, or a SYN to
/// a host that is not there), so the agent tries again within [`PROBE_EVERY`], and what it
/// spooled meanwhile reaches the collector within about a second of its return. Should the
/// fleet's backlogs then arrive together, the collector answers the excess `503 busy`, and
/// those agents fall back to the exponential wait.
#[derive(Debug, Clone)]
pub struct Retry {
    loaded: Backoff,
}

impl Retry {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Retry { loaded: Backoff::new(base, cap) }
    }

    /// After a failure: `absent` is true when no connection was accepted; `asked` is the
    /// collector's `Retry-After`, which it gets (plus up to a quarter more, so that the hosts it
    /// turned away together do not come back together), whatever the backoff says.
    pub fn after_failure(&mut self, absent: bool, asked: Option<Duration>) -> Duration {
        if let Some(asked) = asked {
            let spread = asked.as_millis() as u64 / 4;
            let r = getrandom::u64().unwrap_or(0) % (spread + 1);
            return asked + Duration::from_millis(r);
        }
        if absent {
            // Uniform in [PROBE_EVERY / 2, PROBE_EVERY]: soon, but not in step across a fleet.
            let half = PROBE_EVERY / 2;
            let r = getrandom::u64().unwrap_or(0) % (half.as_millis() as u64 + 1);
            half + Duration::from_millis(r)
        } else {
            self.loaded.next_delay()
        }
    }

    /// After a delivery: the next failure starts from the shortest wait again.
    pub fn reset(&mut self) {
        self.loaded.reset();
    }
}

/// How far an interval may stray either way, as a fraction.
const INTERVAL_JITTER: f64 = 0.1;

/// `d` stretched or shrunk by a random amount of at most ±10%.
pub fn jittered(d: Duration) -> Duration {
    // 53 random bits make a uniform f64 in [0, 1).
    let unit = getrandom::u64().map_or(0.5, |r| (r >> 11) as f64 / (1u64 << 53) as f64);
    d.mul_f64(1.0 + INTERVAL_JITTER * (2.0 * unit - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_stray_by_at_most_a_tenth_and_do_stray() {
        let d = Duration::from_secs(10);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(d)).collect();
        assert!(
            draws.iter().all(|j| *j >= Duration::from_secs(9) && *j <= Duration::from_secs(11)),
            "{draws:?}"
        );
        // 200 draws all within 0.2 s of each other would be a generator that does not jitter.
        let (min, max) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
        assert!(*max - *min > Duration::from_millis(200), "{min:?}..{max:?}");
    }

    #[test]
    fn a_collector_that_is_not_there_is_probed_every_second_however_long_it_is_away() {
        let mut r = Retry::new(Duration::from_secs(1), Duration::from_secs(60));
        // Answered failures first: the wait grows towards the cap.
        let loaded: Vec<_> = (0..12).map(|_| r.after_failure(false, None)).collect();
        assert!(loaded[6..].iter().any(|d| *d > Duration::from_secs(5)), "{loaded:?}");
        // Then nothing answers: every wait is within a second, however many came before.
        let absent: Vec<_> = (0..200).map(|_| r.after_failure(true, None)).collect();
        assert!(absent.iter().all(|d| *d >= PROBE_EVERY / 2 && *d <= PROBE_EVERY), "{absent:?}");
        // Not in step: 200 draws within 50 ms of each other would be a generator that does not jitter.
        let (min, max) = (absent.iter().min().unwrap(), absent.iter().max().unwrap());
        assert!(*max - *min > Duration::from_millis(50), "{min:?}..{max:?}");
        // The exponential wait was not reset by the probes; a delivery resets it.
        assert!((0..20).map(|_| r.after_failure(false, None)).any(|d| d > Duration::from_secs(5)));
        r.reset();
        assert!(r.after_failure(false, None) <= Duration::from_secs(1));
        // The collector's word wins, spread over a quarter more.
        let asked: Vec<_> = (0..100).map(|_| r.after_failure(false, Some(Duration::from_secs(8)))).collect();
        assert!(
            asked.iter().all(|d| *d >= Duration::from_secs(8) && *d <= Duration::from_secs(10)),
            "{asked:?}"
        );
    }

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let delays: Vec<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)), "{delays:?}");
        // Past the cap, 45 draws from [0, 30s] all below 15s would be a broken generator.
        assert!(delays[5..].iter().any(|d| *d > Duration::from_secs(15)), "{delays:?}");
        b.reset();
        let first = b.next_delay();
        assert!(first <= Duration::from_secs(1), "{first:?}");
    }
}
