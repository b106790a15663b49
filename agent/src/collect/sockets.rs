//! Listening sockets from `/proc/net/{tcp,tcp6,udp,udp6}`, and their owners from `/proc/PID/fd`.
//!
//! These tables show the network namespace of the reading process. Netlink sock_diag and other
//! namespaces come with the agent collection work; this reader stays as the fallback.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;

use hostwatch_proto::v1::Protocol;
use procfs::FromBufReadSI;
use procfs::net::{TcpNetEntries, TcpState, UdpNetEntries, UdpState};

use super::{HostRoot, Problems, ReadFailure, Scan};

/// A socket that accepts connections or datagrams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSocket {
    pub protocol: Protocol,
    pub local: SocketAddr,
    /// Uid that created the socket.
    pub uid: u32,
    /// Socket inode: the link between the socket and the file descriptors that hold it.
    pub inode: u64,
}

/// TCP sockets in LISTEN and UDP sockets that are bound but not connected, IPv4 and IPv6.
pub fn listening(root: &HostRoot) -> Scan<ListenSocket> {
    let mut items = Vec::new();
    let mut problems = Problems::default();
    let info = procfs::current_system_info();
    for (file, protocol) in
        [("tcp", Protocol::Tcp), ("tcp6", Protocol::Tcp), ("udp", Protocol::Udp), ("udp6", Protocol::Udp)]
    {
        let path = root.proc.join("net").join(file);
        let f = match File::open(&path) {
            Ok(f) => BufReader::new(f),
            // No tcp6/udp6 where IPv6 is disabled: nothing to see, nothing missed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.ends_with('6') => continue,
            Err(e) => {
                ReadFailure::of_io(&path, &e).record(&mut problems);
                continue;
            }
        };
        let parsed = match protocol {
            Protocol::Tcp => TcpNetEntries::from_buf_read(f, info).map(|t| {
                t.0.into_iter()
                    .filter(|e| e.state == TcpState::Listen)
                    .map(|e| ListenSocket { protocol, local: e.local_address, uid: e.uid, inode: e.inode })
                    .collect::<Vec<_>>()
            }),
            Protocol::Udp => UdpNetEntries::from_buf_read(f, info).map(|t| {
                t.0.into_iter()
                    .filter(|e| e.state == UdpState::Close && e.remote_address.port() == 0)
                    .map(|e| ListenSocket { protocol, local: e.local_address, uid: e.uid, inode: e.inode })
                    .collect::<Vec<_>>()
            }),
        };
        match parsed {
            Ok(mut found) => items.append(&mut found),
            Err(e) => problems.failed.push(format!("{}: {e}", path.display())),
        }
    }
    items.sort_by_key(|s| (s.protocol, s.local.port(), s.local.ip(), s.inode));
    Scan { items, problems }
}

/// Maps each socket inode in `wanted` to the pids that hold it open, each list sorted, by reading
/// the fd links of `pids`. A process whose fds cannot be read counts as one `denied` or `failed`.
pub fn owners(root: &HostRoot, wanted: &HashSet<u64>, pids: &[u32]) -> (HashMap<u64, Vec<u32>>, Problems) {
    let mut map: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut problems = Problems::default();
    if wanted.is_empty() {
        return (map, problems);
    }
    for &pid in pids {
        let dir = root.proc.join(pid.to_string()).join("fd");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                ReadFailure::of_io(&dir, &e).record(&mut problems);
                continue;
            }
        };
        for entry in entries.flatten() {
            // An fd closed between listing and reading is simply gone.
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if let Some(inode) = socket_inode(target.as_os_str().as_encoded_bytes())
                && wanted.contains(&inode)
            {
                let holders = map.entry(inode).or_default();
                if holders.last() != Some(&pid) {
                    holders.push(pid);
                }
            }
        }
    }
    for holders in map.values_mut() {
        holders.sort_unstable();
    }
    (map, problems)
}

/// The inode of an fd link target `socket:[12345]`.
pub fn socket_inode(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};

    #[test]
    fn inode_from_link() {
        assert_eq!(socket_inode(b"socket:[4242]"), Some(4242));
        assert_eq!(socket_inode(b"pipe:[4242]"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);
    }

    #[test]
    fn sees_own_listeners_with_owner() {
        let tcp4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp6 = TcpListener::bind("[::1]:0").ok();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(udp.local_addr().unwrap()).unwrap();
        let root = HostRoot::default();
        let scan = listening(&root);
        let find =
            |proto, addr: SocketAddr| scan.items.iter().find(|s| s.protocol == proto && s.local == addr);
        let t = find(Protocol::Tcp, tcp4.local_addr().unwrap()).expect("tcp listener");
        let u = find(Protocol::Udp, udp.local_addr().unwrap()).expect("udp socket");
        assert!(
            find(Protocol::Udp, connected.local_addr().unwrap()).is_none(),
            "a connected UDP socket does not listen"
        );
        if let Some(l6) = &tcp6 {
            assert!(find(Protocol::Tcp, l6.local_addr().unwrap()).is_some(), "IPv6 listener");
        }
        let me = std::process::id();
        let wanted: HashSet<u64> = [t.inode, u.inode].into();
        let (owners, _) = owners(&root, &wanted, &[me]);
        assert_eq!(owners.get(&t.inode), Some(&vec![me]));
        assert_eq!(owners.get(&u.inode), Some(&vec![me]));
    }
}
