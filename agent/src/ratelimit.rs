//! A token bucket of bytes a second: what bounds the disk reads of hashing, for executables (a
//! burst of new programs never turns into a burst of reads) and for watched files (a scan of
//! `/usr` never saturates the disk of a production host).

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBucket {
    /// Bytes a second; 0 is no limit.
    rate: u64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A bucket holding one second's worth, full.
    pub fn new(rate: u64) -> Self {
        TokenBucket { rate, tokens: rate as f64, refilled: Instant::now() }
    }

    pub fn unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Takes `bytes` if any tokens are left (a read may overdraw a bucket that is not empty: the
    /// debt is paid before the next one); `false` when the bucket is empty.
    pub fn try_take(&mut self, bytes: u64) -> bool {
        if self.unlimited() {
            return true;
        }
        self.refill();
        if self.tokens <= 0.0 {
            return false;
        }
        self.tokens -= bytes as f64;
        true
    }

    /// Takes `bytes`, sleeping first while the bucket is in debt.
    pub fn take(&mut self, bytes: u64) {
        if self.unlimited() {
            return;
        }
        self.refill();
        if self.tokens < 0.0 {
            std::thread::sleep(Duration::from_secs_f64(-self.tokens / self.rate as f64));
            self.refill();
        }
        self.tokens -= bytes as f64;
    }

    /// Whether the budget is spent (a `false` from [`TokenBucket::try_take`] is then "later").
    pub fn starved(&self) -> bool {
        !self.unlimited() && self.tokens <= 0.0
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.rate as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_may_be_overdrawn_once_and_waits_pay_the_debt() {
        let mut b = TokenBucket::new(1_000_000);
        assert!(b.try_take(3_000_000), "a full bucket lends");
        assert!(!b.try_take(1) && b.starved(), "in debt");
        let t = Instant::now();
        b.take(1);
        // 2 MB of debt at 1 MB/s.
        assert!(t.elapsed() >= Duration::from_millis(1900), "{:?}", t.elapsed());
        let mut free = TokenBucket::new(0);
        assert!(free.try_take(u64::MAX) && free.try_take(u64::MAX) && !free.starved());
    }
}
