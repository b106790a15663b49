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
    #[test]
    fn own_usage_is_plausible() {
        let u = super::usage().unwrap();
        assert!(u.rss_bytes > 1 << 20 && u.rss_bytes < 1 << 34, "{u:?}");
        assert!(u.cpu_seconds >= 0.0);
    }
}
