//! Sockets through netlink sock_diag (`NETLINK_SOCK_DIAG`, inet_diag), filtered by state in the
//! kernel: TCP in one request for both families where the kernel allows it, UDP one per family.
//!
//! Each dump walks a whole kernel hash table, empty buckets too: TCP's established table is
//! 262,144 buckets on a 24 GiB machine, shared by every namespace. The walk was the largest part
//! of an idle agent's CPU, so TCP is asked once with the legacy `TCPDIAG_GETSOCK` request and
//! `AF_UNSPEC` (one walk for IPv4 and IPv6) instead of once per family; a kernel that refuses it
//! is asked per family from then on.
//!
//! Another network namespace is read from a short-lived thread that enters it with setns(2)
//! (CAP_SYS_ADMIN): a netlink socket belongs to the namespace it was created in.

use std::fs::File;
use std::net::SocketAddr;

use hostwatch_proto::v1::Protocol;
use netlink_packet_core::{
    ErrorBuffer, ErrorMessage, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, Parseable,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, AF_UNSPEC, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags};
use netlink_packet_sock_diag::{SOCK_DIAG_BY_FAMILY, SockDiagMessage};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::{SockState, SocketRecord, Want};
use crate::collect::HostRoot;
use crate::collect::netns::Netns;

/// TCP states as the kernel numbers them.
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

/// inet_diag's legacy request for TCP sockets (`linux/inet_diag.h`): the one that takes
/// `AF_UNSPEC`. Its answers are the same `inet_diag_msg` as `SOCK_DIAG_BY_FAMILY`'s.
const TCPDIAG_GETSOCK: u16 = 18;
/// `struct inet_diag_req`: family, two prefix lengths, extensions, the 48-byte socket id, the
/// states and the (unused) tables.
const INET_DIAG_REQ_LEN: usize = 4 + 48 + 4 + 4;
/// A netlink header's length.
const HEADER_LEN: usize = 16;

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

/// sock_diag as the agent uses it: a netlink socket kept for its own namespace (it looks every
/// second; a new socket each time was a tenth of that look), and what this kernel answers.
///
/// Invariant: the kept socket has nothing left to read between dumps. A dump that fails part way
/// drops it, and the next one makes a new socket; answers are matched to their request by
/// sequence number besides.
pub struct Diag {
    own: Option<Socket>,
    buf: Vec<u8>,
    seq: u32,
    /// Whether TCP can be asked for both families in one request (until the kernel says not).
    tcp_unspec: bool,
}

impl Default for Diag {
    fn default() -> Self {
        Diag { own: None, buf: Vec::new(), seq: 0, tcp_unspec: true }
    }
}

impl std::fmt::Debug for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diag").field("tcp_unspec", &self.tcp_unspec).finish_non_exhaustive()
    }
}

impl Diag {
    /// Dumps the sockets of one namespace.
    pub fn dump(&mut self, root: &HostRoot, ns: &Netns, want: Want) -> Result<Vec<SocketRecord>, DiagError> {
        if ns.own {
            let socket = match self.own.take() {
                Some(s) => s,
                None => new_socket()?,
            };
            let mut walk = Walk {
                socket: &socket,
                buf: &mut self.buf,
                seq: &mut self.seq,
                tcp_unspec: &mut self.tcp_unspec,
            };
            let out = walk.dump(ns.inode, want)?;
            // Kept only after a whole dump: nothing of it is left to read.
            self.own = Some(socket);
            return Ok(out);
        }
        let path = ns.ns_file(root);
        let file = File::open(&path).map_err(|e| DiagError::of_io(&format!("open {}", path.display()), e))?;
        let (buf, seq, tcp_unspec) = (&mut self.buf, &mut self.seq, &mut self.tcp_unspec);
        std::thread::scope(|s| {
            s.spawn(|| {
                // This thread alone moves into the namespace, and ends there; a netlink socket
                // belongs to the namespace it was made in, so this one is not kept.
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| DiagError::of_io("setns", std::io::Error::from(e)))?;
                let socket = new_socket()?;
                Walk { socket: &socket, buf, seq, tcp_unspec }.dump(ns.inode, want)
            })
            .join()
            .unwrap_or_else(|_| Err(DiagError::Failed("namespace reader thread panicked".to_owned())))
        })
    }
}

fn new_socket() -> Result<Socket, DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| DiagError::of_io("netlink socket", e))?;
    socket.bind_auto().map_err(|e| DiagError::of_io("netlink bind", e))?;
    socket.connect(&NetlinkAddr::new(0, 0)).map_err(|e| DiagError::of_io("netlink connect", e))?;
    Ok(socket)
}

/// One namespace's dump through one socket.
struct Walk<'a> {
    socket: &'a Socket,
    buf: &'a mut Vec<u8>,
    seq: &'a mut u32,
    tcp_unspec: &'a mut bool,
}

/// Why reading a dump's answers stopped short.
enum Stop {
    /// The kernel answered the request with an error.
    Kernel(std::io::Error),
    Other(DiagError),
}

impl<'a> Walk<'a> {
    fn dump(&mut self, netns: u64, want: Want) -> Result<Vec<SocketRecord>, DiagError> {
        // An answer is read whole into the vector's spare room: room for many sockets at once.
        self.buf.reserve(64 * 1024);
        let mut out = Vec::new();
        let mut keep = |protocol: Protocol, h: &InetResponseHeader| {
            let id = &h.socket_id;
            let (local, remote) = (
                SocketAddr::new(id.source_address, id.source_port),
                SocketAddr::new(id.destination_address, id.destination_port),
            );
            let state = match (protocol, h.state) {
                (Protocol::Tcp, TCP_LISTEN) => SockState::Listen,
                (Protocol::Udp, TCP_CLOSE) if remote.port() == 0 => SockState::Listen,
                (_, TCP_ESTABLISHED) => SockState::Connected,
                _ => return,
            };
            if want.keeps(state) {
                out.push(SocketRecord {
                    protocol,
                    state,
                    local,
                    remote,
                    uid: h.uid,
                    inode: u64::from(h.inode),
                    netns,
                });
            }
        };
        let mut tcp_done = false;
        if *self.tcp_unspec {
            let seq = self.next_seq();
            self.send(&tcp_unspec_request(seq, states(Protocol::Tcp, want)))?;
            match self.receive(seq, |h| keep(Protocol::Tcp, h)) {
                Ok(()) => tcp_done = true,
                // Nothing was answered before the error: asked per family instead, from now on.
                Err(Stop::Kernel(e)) => {
                    tracing::debug!(error = %e, "this kernel refuses TCP sockets of both families in one request; asking per family");
                    *self.tcp_unspec = false;
                }
                Err(Stop::Other(e)) => return Err(e),
            }
        }
        for (family, proto, protocol) in [
            (AF_INET, IPPROTO_TCP, Protocol::Tcp),
            (AF_INET6, IPPROTO_TCP, Protocol::Tcp),
            (AF_INET, IPPROTO_UDP, Protocol::Udp),
            (AF_INET6, IPPROTO_UDP, Protocol::Udp),
        ] {
            if protocol == Protocol::Tcp && tcp_done {
                continue;
            }
            let seq = self.next_seq();
            self.send(&by_family_request(seq, family, proto, states(protocol, want)))?;
            self.receive(seq, |h| keep(protocol, h)).map_err(|stop| match stop {
                Stop::Kernel(e) => DiagError::of_io("sock_diag", e),
                Stop::Other(e) => e,
            })?;
        }
        Ok(out)
    }

    fn next_seq(&mut self) -> u32 {
        *self.seq = self.seq.wrapping_add(1);
        *self.seq
    }

    fn send(&self, bytes: &[u8]) -> Result<(), DiagError> {
        self.socket.send(bytes, 0).map_err(|e| DiagError::of_io("netlink send", e))?;
        Ok(())
    }

    /// Reads the answers to request `seq` until its end, handing each socket to `each`; answers
    /// to any other request (none, unless a dump was cut short) are skipped.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(&InetResponseHeader)) -> Result<(), Stop> {
        loop {
            self.buf.clear();
            let n = self
                .socket
                .recv(&mut *self.buf, 0)
                .map_err(|e| Stop::Other(DiagError::of_io("netlink recv", e)))?;
            let n = n.min(self.buf.len());
            let mut at = 0;
            while at < n {
                let msg = NetlinkBuffer::new_checked(&self.buf[at..n])
                    .map_err(|e| Stop::Other(DiagError::Failed(format!("sock_diag answer: {e}"))))?;
                let len = msg.length() as usize;
                if msg.sequence_number() == seq {
                    match msg.message_type() {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let payload = msg.payload();
                            let e = ErrorBuffer::new_checked(&payload)
                                .and_then(|b| ErrorMessage::parse(&b))
                                .map_err(|e| {
                                    Stop::Other(DiagError::Failed(format!("sock_diag error answer: {e}")))
                                })?;
                            return Err(Stop::Kernel(e.to_io()));
                        }
                        SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                            let h = InetResponseHeader::parse(msg.payload()).map_err(|e| {
                                Stop::Other(DiagError::Failed(format!("sock_diag answer: {e}")))
                            })?;
                            each(&h);
                        }
                        _ => {}
                    }
                }
                // Messages are 4-byte aligned; new_checked saw `len` fit in what was read.
                at += len.max(HEADER_LEN).next_multiple_of(4);
            }
        }
    }
}

/// The states a dump of `protocol` asks for: a UDP socket bound and not connected is `CLOSE`.
fn states(protocol: Protocol, want: Want) -> StateFlags {
    let mut states = StateFlags::empty();
    if want.listen {
        states |= if protocol == Protocol::Tcp { StateFlags::LISTEN } else { StateFlags::CLOSE };
    }
    if want.connected {
        states |= StateFlags::ESTABLISHED;
    }
    states
}

fn by_family_request(seq: u32, family: u8, protocol: u8, states: StateFlags) -> Vec<u8> {
    let socket_id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
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
    bytes
}

/// `TCPDIAG_GETSOCK` for both families (the netlink crate knows only `SOCK_DIAG_BY_FAMILY`):
/// a header and a `struct inet_diag_req` with every field but the family and states zero.
fn tcp_unspec_request(seq: u32, states: StateFlags) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_LEN + INET_DIAG_REQ_LEN];
    let mut msg = NetlinkBuffer::new(&mut bytes[..]);
    msg.set_length((HEADER_LEN + INET_DIAG_REQ_LEN) as u32);
    msg.set_message_type(TCPDIAG_GETSOCK);
    msg.set_flags(NLM_F_REQUEST | NLM_F_DUMP);
    msg.set_sequence_number(seq);
    let req = msg.payload_mut();
    req[0] = AF_UNSPEC;
    req[52..56].copy_from_slice(&states.bits().to_ne_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn tcp_of(records: &[SocketRecord]) -> Vec<(SockState, SocketAddr, SocketAddr, u64)> {
        let mut v: Vec<_> = records
            .iter()
            .filter(|r| r.protocol == Protocol::Tcp)
            .map(|r| (r.state, r.local, r.remote, r.inode))
            .collect();
        v.sort_by_key(|t| (t.3, t.1, t.2));
        v
    }

    /// The one-walk request answers what the two per-family requests do, sockets of both
    /// families included, and a kept socket serves dump after dump.
    #[test]
    fn tcp_in_one_request_is_tcp_per_family() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").ok();
        let client = TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let (_server, _) = v4.accept().unwrap();
        let ns = Netns { inode: 0, pid: std::process::id(), own: true };
        let root = HostRoot::default();
        let mut one = Diag::default();
        let mut per_family = Diag { tcp_unspec: false, ..Diag::default() };
        for _ in 0..3 {
            let a = one.dump(&root, &ns, Want::ALL).expect("one request");
            assert!(one.tcp_unspec, "this kernel refused TCPDIAG_GETSOCK with AF_UNSPEC");
            let b = per_family.dump(&root, &ns, Want::ALL).expect("per family");
            // Sockets of other tests may come and go between the two dumps: compare ours.
            let ours = |t: &(SockState, SocketAddr, SocketAddr, u64)| {
                t.1 == v4.local_addr().unwrap()
                    || t.1 == client.local_addr().unwrap()
                    || v6.as_ref().is_some_and(|l| t.1 == l.local_addr().unwrap())
            };
            let (a, b): (Vec<_>, Vec<_>) = (
                tcp_of(&a).into_iter().filter(ours).collect(),
                tcp_of(&b).into_iter().filter(ours).collect(),
            );
            assert_eq!(a, b);
            assert_eq!(a.len(), 3 + usize::from(v6.is_some()), "{a:?}");
            assert!(a.iter().any(|t| t.0 == SockState::Connected && t.1 == client.local_addr().unwrap()));
            if let Some(l) = &v6 {
                assert!(a.iter().any(|t| t.0 == SockState::Listen && t.1 == l.local_addr().unwrap()));
            }
        }
        assert!(one.own.is_some(), "the socket is kept after whole dumps");
    }

    #[test]
    fn the_unspec_request_is_laid_out_as_the_kernel_reads_it() {
        let bytes = tcp_unspec_request(7, StateFlags::LISTEN);
        let msg = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(msg.length() as usize, bytes.len());
        assert_eq!((msg.message_type(), msg.sequence_number()), (TCPDIAG_GETSOCK, 7));
        let req = msg.payload();
        assert_eq!(req.len(), 60);
        assert_eq!(req[0], AF_UNSPEC);
        assert_eq!(u32::from_ne_bytes(req[52..56].try_into().unwrap()), 1 << TCP_LISTEN);
    }
}
