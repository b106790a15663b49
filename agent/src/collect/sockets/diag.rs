//! Sockets through netlink sock_diag (`NETLINK_SOCK_DIAG`, inet_diag): one dump request per
//! family and protocol, filtered by state in the kernel.
//!
//! Another network namespace is read from a short-lived thread that enters it with setns(2)
//! (CAP_SYS_ADMIN): a netlink socket belongs to the namespace it was created in.

use std::fs::File;
use std::net::SocketAddr;

use hostwatch_proto::v1::Protocol;
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::{SockState, SocketRecord, Want};
use crate::collect::HostRoot;
use crate::collect::netns::Netns;

/// TCP states as the kernel numbers them.
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

/// Why a dump did not happen.
#[derive(Debug)]
pub enum DiagError {
    /// The kernel or the sandbox does not allow it (no netlink, no setns): use the fallback.
    Refused(String),
    /// It started and went wrong.
    Failed(String),
}

impl DiagError {
    fn of_io(what: &str, e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::PermissionDenied | K::Unsupported => DiagError::Refused(format!("{what}: {e}")),
            _ if matches!(e.raw_os_error(), Some(code) if code == nix::errno::Errno::EPROTONOSUPPORT as i32 || code == nix::errno::Errno::EAFNOSUPPORT as i32 || code == nix::errno::Errno::EPERM as i32) => {
                DiagError::Refused(format!("{what}: {e}"))
            }
            _ => DiagError::Failed(format!("{what}: {e}")),
        }
    }
}

/// Dumps the sockets of one namespace.
pub fn dump(root: &HostRoot, ns: &Netns, want: Want) -> Result<Vec<SocketRecord>, DiagError> {
    if ns.own {
        return dump_here(ns.inode, want);
    }
    let path = ns.ns_file(root);
    let file = File::open(&path).map_err(|e| DiagError::of_io(&format!("open {}", path.display()), e))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread alone moves into the namespace, and ends there.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| DiagError::of_io("setns", std::io::Error::from(e)))?;
            dump_here(ns.inode, want)
        })
        .join()
        .unwrap_or_else(|_| Err(DiagError::Failed("namespace reader thread panicked".to_owned())))
    })
}

/// Dumps the sockets of the calling thread's namespace.
fn dump_here(netns: u64, want: Want) -> Result<Vec<SocketRecord>, DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| DiagError::of_io("netlink socket", e))?;
    socket.bind_auto().map_err(|e| DiagError::of_io("netlink bind", e))?;
    socket.connect(&NetlinkAddr::new(0, 0)).map_err(|e| DiagError::of_io("netlink connect", e))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (family, proto, protocol) in [
        (AF_INET, IPPROTO_TCP, Protocol::Tcp),
        (AF_INET6, IPPROTO_TCP, Protocol::Tcp),
        (AF_INET, IPPROTO_UDP, Protocol::Udp),
        (AF_INET6, IPPROTO_UDP, Protocol::Udp),
    ] {
        let mut states = StateFlags::empty();
        if want.listen {
            states |= if protocol == Protocol::Tcp { StateFlags::LISTEN } else { StateFlags::CLOSE };
        }
        if want.connected {
            states |= StateFlags::ESTABLISHED;
        }
        request(&socket, family, proto, states)?;
        receive(&socket, &mut buf, |state, local, remote, uid, inode| {
            let state = match (protocol, state) {
                (Protocol::Tcp, TCP_LISTEN) => SockState::Listen,
                (Protocol::Udp, TCP_CLOSE) if remote.port() == 0 => SockState::Listen,
                (_, TCP_ESTABLISHED) => SockState::Connected,
                _ => return,
            };
            if want.keeps(state) {
                out.push(SocketRecord { protocol, state, local, remote, uid, inode, netns });
            }
        })?;
    }
    Ok(out)
}

fn request(socket: &Socket, family: u8, protocol: u8, states: StateFlags) -> Result<(), DiagError> {
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol,
            extensions: ExtensionFlags::empty(),
            states,
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut bytes = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut bytes);
    socket.send(&bytes, 0).map_err(|e| DiagError::of_io("netlink send", e))?;
    Ok(())
}

/// Reads a dump's answers until its end, calling `each` with (state, local, remote, uid, inode).
fn receive(
    socket: &Socket,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(u8, SocketAddr, SocketAddr, u32, u64),
) -> Result<(), DiagError> {
    loop {
        buf.clear();
        let n = socket.recv(buf, 0).map_err(|e| DiagError::of_io("netlink recv", e))?;
        let mut offset = 0;
        while offset < n {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[offset..n])
                .map_err(|e| DiagError::Failed(format!("sock_diag answer: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    let io = e.to_io();
                    return Err(DiagError::of_io("sock_diag", io));
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    let id = &h.socket_id;
                    each(
                        h.state,
                        SocketAddr::new(id.source_address, id.source_port),
                        SocketAddr::new(id.destination_address, id.destination_port),
                        h.uid,
                        u64::from(h.inode),
                    );
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}
