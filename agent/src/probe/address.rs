//! Where a probe connects: the listener's own address, or for a listener on every address, one
//! of this host's addresses that is not loopback (a service may answer loopback clients more
//! freely than others: Redis's protected mode does).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// This host's addresses (in the agent's network namespace), read again at most once a minute.
#[derive(Debug, Default)]
pub struct HostAddresses {
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    via: Option<IpAddr>,
    read_at: Option<Instant>,
}

const READ_EVERY: Duration = Duration::from_secs(60);

impl HostAddresses {
    /// Probes of listeners on every address go through `via` where it is given.
    pub fn new(via: Option<IpAddr>) -> HostAddresses {
        HostAddresses { via, ..HostAddresses::default() }
    }

    /// Addresses as given (tests, and the reading below).
    pub fn with(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> HostAddresses {
        HostAddresses { v4, v6, via: None, read_at: Some(Instant::now()) }
    }

    /// Reads the interfaces' addresses again if the last reading is a minute old.
    pub fn refresh(&mut self) {
        if self.read_at.is_some_and(|t| t.elapsed() < READ_EVERY) {
            return;
        }
        let (mut v4, mut v6) = (None, None);
        match nix::ifaddrs::getifaddrs() {
            Ok(addrs) => {
                for a in addrs {
                    let Some(addr) = a.address else { continue };
                    if let Some(sin) = addr.as_sockaddr_in() {
                        let ip = sin.ip();
                        if !ip.is_loopback() && !ip.is_unspecified() && !ip.is_link_local() {
                            // The lowest, so the choice does not flap between readings.
                            v4 = Some(v4.map_or(ip, |o: Ipv4Addr| o.min(ip)));
                        }
                    } else if let Some(sin6) = addr.as_sockaddr_in6() {
                        let ip = sin6.ip();
                        if !ip.is_loopback() && !ip.is_unspecified() && !ip.is_unicast_link_local() {
                            v6 = Some(v6.map_or(ip, |o: Ipv6Addr| o.min(ip)));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this host's addresses; probing listeners on every address through loopback")
            }
        }
        *self = HostAddresses { v4, v6, via: self.via, read_at: Some(Instant::now()) };
    }

    /// Where to reach a listener bound to `bound`: itself, or for every address, a non-loopback
    /// address of the host of that family (for `::`, an IPv4 one where there is no IPv6: Linux's
    /// `::` listeners take IPv4 too), loopback where the host has none. None for an address a
    /// probe cannot use (IPv6 link-local needs an interface).
    pub fn target_for(&self, bound: IpAddr, port: u16) -> Option<SocketAddr> {
        let ip = match bound {
            // `[probes] via`: the address an operator chose (the one the VPC reaches).
            IpAddr::V4(v4) if v4.is_unspecified() && self.via.is_some_and(|v| v.is_ipv4()) => self.via?,
            IpAddr::V6(v6) if v6.is_unspecified() && self.via.is_some() => self.via?,
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(self.v4.unwrap_or(Ipv4Addr::LOCALHOST)),
            IpAddr::V6(v6) if v6.is_unspecified() => match (self.v6, self.v4) {
                (Some(v6), _) => IpAddr::V6(v6),
                (None, Some(v4)) => IpAddr::V4(v4),
                (None, None) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            },
            IpAddr::V6(v6) if v6.is_unicast_link_local() => return None,
            other => other,
        };
        Some(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_is_reached_through_one_that_is_not_loopback() {
        let h = HostAddresses::with(Some(Ipv4Addr::new(10, 9, 0, 1)), None);
        assert_eq!(h.target_for("0.0.0.0".parse().unwrap(), 6379), Some("10.9.0.1:6379".parse().unwrap()));
        assert_eq!(h.target_for("::".parse().unwrap(), 6379), Some("10.9.0.1:6379".parse().unwrap()));
        assert_eq!(h.target_for("127.0.0.1".parse().unwrap(), 1), Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(h.target_for("fe80::1".parse().unwrap(), 1), None);
        let none = HostAddresses::with(None, None);
        assert_eq!(none.target_for("0.0.0.0".parse().unwrap(), 2), Some("127.0.0.1:2".parse().unwrap()));
    }

    #[test]
    fn the_host_has_an_address_to_read() {
        let mut h = HostAddresses::default();
        h.refresh();
        assert!(h.read_at.is_some());
    }
}
