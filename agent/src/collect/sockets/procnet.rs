//! Sockets from the `/proc/PID/net/{tcp,tcp6,udp,udp6}` tables: no privilege needed, text to parse.

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;

use hostwatch_proto::v1::Protocol;
use procfs::FromBufReadSI;
use procfs::net::{TcpNetEntries, TcpState, UdpNetEntries, UdpState};

use super::{SockState, SocketRecord, Want};
use crate::collect::HostRoot;
use crate::collect::netns::Netns;

const TABLES: [(&str, Protocol); 4] =
    [("tcp", Protocol::Tcp), ("tcp6", Protocol::Tcp), ("udp", Protocol::Udp), ("udp6", Protocol::Udp)];

/// Reads the sockets of one namespace. A missing `tcp6`/`udp6` (IPv6 disabled) is no error.
pub fn read(root: &HostRoot, ns: &Netns, want: Want) -> std::io::Result<Vec<SocketRecord>> {
    let dir = ns.net_dir(root);
    let info = procfs::current_system_info();
    let mut out = Vec::new();
    for (file, protocol) in TABLES {
        let path = dir.join(file);
        let f = match File::open(&path) {
            Ok(f) => BufReader::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.ends_with('6') => continue,
            Err(e) => return Err(e),
        };
        let bad = |e: procfs::ProcError| std::io::Error::other(format!("{}: {e}", path.display()));
        let rows: Vec<(SocketAddr, SocketAddr, Option<SockState>, u32, u64)> = match protocol {
            Protocol::Tcp => TcpNetEntries::from_buf_read(f, info)
                .map_err(bad)?
                .0
                .into_iter()
                .map(|e| {
                    let state = match e.state {
                        TcpState::Listen => Some(SockState::Listen),
                        TcpState::Established => Some(SockState::Connected),
                        _ => None,
                    };
                    (e.local_address, e.remote_address, state, e.uid, e.inode)
                })
                .collect(),
            Protocol::Udp => UdpNetEntries::from_buf_read(f, info)
                .map_err(bad)?
                .0
                .into_iter()
                .map(|e| {
                    let state = match e.state {
                        UdpState::Close if e.remote_address.port() == 0 => Some(SockState::Listen),
                        UdpState::Established => Some(SockState::Connected),
                        _ => None,
                    };
                    (e.local_address, e.remote_address, state, e.uid, e.inode)
                })
                .collect(),
        };
        out.extend(rows.into_iter().filter_map(|(local, remote, state, uid, inode)| {
            let state = state.filter(|s| want.keeps(*s))?;
            Some(SocketRecord { protocol, state, local, remote, uid, inode, netns: ns.inode })
        }));
    }
    Ok(out)
}
