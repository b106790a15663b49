//! Facts about the host itself: names, identity, OS and boot time.

use std::path::Path;

use time::OffsetDateTime;

use super::HostRoot;

/// What the host says about itself. Every field is best effort except where noted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub hostname: String,
    /// `/etc/machine-id` (or D-Bus's copy); `None` on hosts without one, such as minimal containers.
    pub machine_id: Option<String>,
    pub os: String,
    pub kernel: String,
    pub boot_time: Option<OffsetDateTime>,
}

pub fn read(root: &HostRoot) -> HostInfo {
    let first_line =
        |p: &Path| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let hostname =
        first_line(&root.proc.join("sys/kernel/hostname")).unwrap_or_else(|| "localhost".to_owned());
    let machine_id = first_line(&root.etc.join("machine-id"))
        .or_else(|| root.etc.parent().and_then(|r| first_line(&r.join("var/lib/dbus/machine-id"))));
    let os = std::fs::read_to_string(root.etc.join("os-release"))
        .ok()
        .and_then(|t| os_pretty_name(&t))
        .unwrap_or_else(|| "Linux".to_owned());
    let kernel = first_line(&root.proc.join("sys/kernel/osrelease")).unwrap_or_default();
    HostInfo { hostname, machine_id, os, kernel, boot_time: boot_time(&root.proc) }
}

/// `PRETTY_NAME` of an os-release file, unquoted.
pub fn os_pretty_name(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_owned())
        .filter(|v| !v.is_empty())
}

/// Boot time from the `btime` line of `/proc/stat`.
pub fn boot_time(proc_root: &Path) -> Option<OffsetDateTime> {
    let stat = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    let secs = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse::<i64>().ok()?;
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_name() {
        assert_eq!(
            os_pretty_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_pretty_name("NAME=x\n"), None);
    }

    #[test]
    fn this_machine() {
        let h = read(&HostRoot::default());
        assert!(!h.hostname.is_empty());
        let boot = h.boot_time.expect("btime in /proc/stat");
        assert!(boot < OffsetDateTime::now_utc());
        assert!(!h.kernel.is_empty());
    }
}
