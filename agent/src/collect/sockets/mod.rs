//! Sockets: every listening and connected TCP and UDP socket, IPv4 and IPv6, in every network
//! namespace on the host, each with the process that owns it.
//!
//! Two readers give the same records: netlink sock_diag ([`diag`], the default: the kernel fills
//! binary records, and asks for only the states wanted) and the `/proc/PID/net` tables
//! ([`procnet`], the fallback where netlink or entering a namespace is refused). Owners come from
//! `/proc/PID/fd`, through a cache ([`owners`]) so that a steady-state rescan does not read every
//! process's descriptors again.

pub mod diag;
pub mod ebpf;
pub mod loader;
pub mod owners;
pub mod procnet;

use std::net::SocketAddr;

use hostwatch_proto::v1::Protocol;

use super::netns::Netns;
use super::{HostRoot, Problems, Scan};

pub use owners::OwnerCache;

/// What a socket does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockState {
    /// TCP in LISTEN, or UDP bound and not connected.
    Listen,
    /// TCP established, or UDP connected.
    Connected,
}

/// One socket as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRecord {
    pub protocol: Protocol,
    pub state: SockState,
    pub local: SocketAddr,
    /// `0.0.0.0:0` or `[::]:0` for a listener.
    pub remote: SocketAddr,
    /// Uid that created the socket.
    pub uid: u32,
    /// Socket inode: the link to the file descriptors that hold it.
    pub inode: u64,
    /// Inode of its network namespace.
    pub netns: u64,
}

/// Which states a read is for: the listeners alone are a cheap read done every second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub listen: bool,
    pub connected: bool,
}

impl Want {
    pub const ALL: Want = Want { listen: true, connected: true };
    pub const LISTEN: Want = Want { listen: true, connected: false };

    fn keeps(self, state: SockState) -> bool {
        match state {
            SockState::Listen => self.listen,
            SockState::Connected => self.connected,
        }
    }
}

/// The socket readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    SockDiag,
    ProcNet,
}

impl Reader {
    pub fn as_str(self) -> &'static str {
        match self {
            Reader::SockDiag => "sock_diag",
            Reader::ProcNet => "proc_net",
        }
    }
}

/// Reads sockets with sock_diag where the kernel allows it, and falls back to `/proc/PID/net`
/// (for good, once sock_diag is refused in the agent's own namespace; per namespace where only
/// entering that namespace is refused).
#[derive(Debug)]
pub struct SocketSource {
    prefer: Reader,
    diag: diag::Diag,
    /// Why sock_diag is not used, once it was refused.
    pub fallback: Option<String>,
}

impl SocketSource {
    pub fn new(prefer: Reader) -> Self {
        SocketSource { prefer, diag: diag::Diag::default(), fallback: None }
    }

    /// The reader in use for the agent's own namespace.
    pub fn reader(&self) -> Reader {
        if self.fallback.is_some() { Reader::ProcNet } else { self.prefer }
    }

    /// Reads the sockets of every namespace in `namespaces`.
    pub fn read(&mut self, root: &HostRoot, namespaces: &[Netns], want: Want) -> Scan<SocketRecord> {
        let mut items = Vec::new();
        let mut problems = Problems::default();
        for ns in namespaces {
            let records = match self.reader() {
                Reader::SockDiag => match self.diag.dump(root, ns, want) {
                    Ok(r) => Ok(r),
                    Err(diag::DiagError::Refused(why)) if ns.own => {
                        tracing::warn!(reason = %why, "sock_diag refused; reading sockets from /proc/net from now on");
                        self.fallback = Some(why);
                        procnet::read(root, ns, want)
                    }
                    // Another namespace that cannot be entered (no CAP_SYS_ADMIN): its tables in
                    // /proc/PID/net show the same sockets.
                    Err(diag::DiagError::Refused(_)) => procnet::read(root, ns, want),
                    Err(diag::DiagError::Failed(e)) => {
                        problems.failed.push(format!("sock_diag in netns {}: {e}", ns.inode));
                        procnet::read(root, ns, want)
                    }
                },
                Reader::ProcNet => procnet::read(root, ns, want),
            };
            match records {
                // The first namespace's list is taken as it is, not copied.
                Ok(r) if items.is_empty() => items = r,
                Ok(mut r) => items.append(&mut r),
                // The namespace's last process exited: nothing left to see there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !ns.own => {}
                Err(e) => problems.failed.push(format!("sockets of netns {}: {e}", ns.inode)),
            }
        }
        // In the order of the wire's socket keys (protocol, local end, remote end), which makes
        // sorting them again by key cheap; a socket seen twice (the same namespace read through
        // two processes) is adjacent to itself.
        items.sort_unstable_by_key(|s| {
            (
                s.protocol,
                s.state,
                ip_order(s.local),
                s.local.port(),
                ip_order(s.remote),
                s.remote.port(),
                s.netns,
                s.inode,
            )
        });
        items.dedup_by_key(|s| (s.netns, s.inode, s.local, s.remote));
        Scan { items, problems }
    }
}

/// An address as integers that sort as `IpAddr` does (IPv4 before IPv6, then by octets), and
/// compare faster: a host's 10,000 sockets are sorted at every scan.
fn ip_order(a: SocketAddr) -> (bool, u128) {
    match a {
        SocketAddr::V4(v4) => (false, u128::from(v4.ip().to_bits())),
        SocketAddr::V6(v6) => (true, v6.ip().to_bits()),
    }
}

/// Whether a connection's local end is a listener's: the peer connected in.
pub fn is_inbound(conn: &SocketRecord, listeners: &[&SocketRecord]) -> bool {
    listeners.iter().any(|l| {
        l.protocol == conn.protocol
            && l.netns == conn.netns
            && l.local.port() == conn.local.port()
            && (l.local.ip().is_unspecified() || same_ip(l.local.ip(), conn.local.ip()))
    })
}

/// Equal addresses, counting an IPv4-mapped IPv6 address as its IPv4 address.
fn same_ip(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::netns;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    fn read_with(reader: Reader) -> Vec<SocketRecord> {
        let root = HostRoot::default();
        let ns = netns::discover(&root, &[]);
        let scan = SocketSource::new(reader).read(&root, &ns, Want::ALL);
        assert!(scan.problems.failed.is_empty(), "{:?}", scan.problems);
        scan.items
    }

    #[test]
    fn both_readers_see_the_same_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let udp = UdpSocket::bind("[::1]:0").ok();
        let connected_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        connected_udp.connect("127.0.0.1:9").unwrap();
        for reader in [Reader::SockDiag, Reader::ProcNet] {
            let all = read_with(reader);
            let find = |state, local: SocketAddr, proto| {
                all.iter()
                    .find(|s| s.state == state && s.local == local && s.protocol == proto)
                    .unwrap_or_else(|| panic!("{reader:?}: no {state:?} {proto} {local}"))
            };
            find(SockState::Listen, listener.local_addr().unwrap(), Protocol::Tcp);
            let c = find(SockState::Connected, client.local_addr().unwrap(), Protocol::Tcp);
            assert_eq!(c.remote, listener.local_addr().unwrap());
            find(SockState::Connected, server.local_addr().unwrap(), Protocol::Tcp);
            if let Some(u) = &udp {
                find(SockState::Listen, u.local_addr().unwrap(), Protocol::Udp);
            }
            let cu = find(SockState::Connected, connected_udp.local_addr().unwrap(), Protocol::Udp);
            assert_eq!(cu.remote.port(), 9);
        }
    }

    #[test]
    fn inbound_is_to_a_local_listener() {
        let rec = |state, local: &str, remote: &str| SocketRecord {
            protocol: Protocol::Tcp,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid: 0,
            inode: 1,
            netns: 7,
        };
        let l = rec(SockState::Listen, "0.0.0.0:443", "0.0.0.0:0");
        let l6 = rec(SockState::Listen, "[::]:22", "[::]:0");
        let ls = [&l, &l6];
        assert!(is_inbound(&rec(SockState::Connected, "10.0.0.1:443", "10.0.0.9:50000"), &ls));
        assert!(is_inbound(&rec(SockState::Connected, "[::ffff:10.0.0.1]:22", "[::ffff:10.0.0.9]:5"), &ls));
        assert!(!is_inbound(&rec(SockState::Connected, "10.0.0.1:50000", "10.0.0.9:443"), &ls));
        let mut other_ns = rec(SockState::Connected, "10.0.0.1:443", "10.0.0.9:1");
        other_ns.netns = 8;
        assert!(!is_inbound(&other_ns, &ls));
    }
}
