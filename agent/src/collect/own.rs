//! The agent's own cost: resident memory and CPU time, from `/proc/self`.

/// What the agent uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// This process's usage now; `None` where `/proc/self` cannot be read.
pub fn usage() -> Option<Usage> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let ticks = procfs::ticks_per_second().max(1) as f64;
    Some(Usage {
        rss_bytes: stat.rss.saturating_mul(procfs::page_size()),
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
    })
}

#[cfg(test)]
mod tests {
    /// The CPU time read from `/proc` follows the process's own clock (the kernel's
    /// `CLOCK_PROCESS_CPUTIME_ID`, read another way): 0.3 s of work shows as about 0.3 s, to the
    /// clock tick.
    #[test]
    fn own_usage_follows_the_cpu_this_process_spends() {
        use nix::time::{ClockId, clock_gettime};
        let cpu = || {
            let t = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap();
            t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
        };
        let before = super::usage().unwrap();
        assert!(before.rss_bytes > 1 << 20 && before.rss_bytes < 1 << 34, "{before:?}");
        let (start, deadline) = (cpu(), std::time::Instant::now() + std::time::Duration::from_secs(20));
        let mut x = 0u64;
        while cpu() - start < 0.3 && std::time::Instant::now() < deadline {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let spent = cpu() - start;
        let after = super::usage().unwrap();
        let seen = after.cpu_seconds - before.cpu_seconds;
        assert!(spent >= 0.3, "the machine gave this test {spent:.3} s of CPU in 20 s");
        // Ticks are 10 ms; other threads of the test binary may add to /proc's count.
        assert!(seen >= spent - 0.03, "/proc says {seen:.3} s for {spent:.3} s spent");
    }
}
