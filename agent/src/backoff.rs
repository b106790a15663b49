//! Exponential backoff with full jitter, so that a fleet whose collector comes back does not
//! return all at once.

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

#[cfg(test)]
mod tests {
    use super::*;

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
