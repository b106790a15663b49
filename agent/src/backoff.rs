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
