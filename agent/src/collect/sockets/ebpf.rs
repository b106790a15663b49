//! Connections and listeners as the kernel makes them, however short they live: an eBPF
//! program (`agent/bpf/connections.bpf.c`, its compiled object committed beside it) on the
//! `inet_sock_set_state` BTF tracepoint for TCP and at the return of `inet_dgram_connect` (fexit;
//! where the kernel refuses trampolines, on `sys_exit`) for UDP sockets' `connect(2)`, each event with the process that made it, read from a ring buffer on a thread of
//! its own. The program is loaded in a helper process ([`super::loader`]), which hands over the
//! ring and the links.
//!
//! The scans ([`super::diag`]) stay the source of truth for what is open; these events add what
//! opened and closed between two looks. Where the kernel refuses (no CAP_BPF and CAP_PERFMON, no
//! BTF, a kernel before 5.8), the agent runs on the scans alone and says so
//! ([`SocketEvents::start`]'s error, in its status and coverage).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};

use super::loader::{self, Attached};
use hostwatch_proto::v1::Protocol;
use time::OffsetDateTime;
use tokio::sync::mpsc;

/// The ring's default size: about 1,300 events of 96 bytes. The reader is woken at a quarter
/// ring, so a burst has about a thousand events of room while it drains. Its pages are mapped
/// twice (the kernel's wrap-around), so each KiB here is two of the agent's resident memory.
pub const RING_BYTES: u32 = 128 << 10;

/// What the kernel did to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// This host connected out (TCP established); the owner called connect().
    Connect,
    /// A peer connected in (TCP established); the owner is the listener's.
    Accept,
    /// An established TCP connection closing.
    Close,
    /// A TCP socket began to listen; the owner called listen().
    Listen,
    /// A TCP listener closed.
    Unlisten,
    /// A UDP socket connected by connect(2).
    UdpConnect,
    /// An outbound TCP connection that never established.
    ConnectFailed,
}

impl Kind {
    fn from_wire(k: u8) -> Option<Kind> {
        Some(match k {
            1 => Kind::Connect,
            2 => Kind::Accept,
            3 => Kind::Close,
            4 => Kind::Listen,
            5 => Kind::Unlisten,
            6 => Kind::UdpConnect,
            7 => Kind::ConnectFailed,
            _ => return None,
        })
    }
}

/// One event, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEvent {
    pub kind: Kind,
    pub at: OffsetDateTime,
    /// The socket's kernel address: ties an open to its close while both are in flight.
    pub sock: u64,
    /// The owner's process id; `None` where the kernel acted outside it (an accepted
    /// connection: the listener's owner is the agent's to name).
    pub pid: Option<u32>,
    /// The owner's thread name (`comm`) at the event: a name even where the process is gone
    /// before the agent can read it.
    pub comm: String,
    pub netns: u32,
    /// The socket's owner uid (what sock_diag reports).
    pub uid: u32,
    pub protocol: Protocol,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// The size of `struct event` in the C program (its fields' offsets are in `decode`).
const EVENT_LEN: usize = 88;

impl SocketEvent {
    /// Decodes one ring record; `None` for one of another size or an unknown kind (a program
    /// and agent out of step), which is counted, never guessed at.
    pub fn decode(b: &[u8], boot_to_wall: i128) -> Option<SocketEvent> {
        if b.len() < EVENT_LEN {
            return None;
        }
        let u64_at = |o: usize| Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
        let u16_at = |o: usize| Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?));
        let at_ns = u64_at(0)?;
        let sock = u64_at(8)?;
        let tgid = u32_at(16)?;
        let netns = u32_at(24)?;
        let uid = u32_at(28)?;
        let (sport, dport) = (u16_at(32)?, u16_at(34)?);
        let kind = Kind::from_wire(b[36])?;
        let protocol = match b[38] {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => return None,
        };
        let addr = |o: usize| -> Option<IpAddr> {
            let raw: [u8; 16] = b.get(o..o + 16)?.try_into().ok()?;
            match b[37] {
                2 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
                10 => Some(IpAddr::V6(Ipv6Addr::from(raw))),
                _ => None,
            }
        };
        let comm = &b[72..88];
        let comm = &comm[..comm.iter().position(|&c| c == 0).unwrap_or(comm.len())];
        let at = OffsetDateTime::from_unix_timestamp_nanos(boot_to_wall + i128::from(at_ns)).ok()?;
        Some(SocketEvent {
            kind,
            at,
            sock,
            pid: (tgid != 0).then_some(tgid),
            comm: String::from_utf8_lossy(comm).into_owned(),
            netns,
            uid,
            protocol,
            local: SocketAddr::new(addr(40)?, sport),
            remote: SocketAddr::new(addr(56)?, dport),
        })
    }
}

/// Counts of what the source saw, shared with the runner for the agent's status.
#[derive(Debug, Default)]
pub struct Counters {
    pub events: AtomicU64,
    /// Events the kernel had no room for in the ring (the program's own count).
    pub dropped: AtomicU64,
    /// Records that did not decode.
    pub malformed: AtomicU64,
}

/// The loaded program and its reading thread; detached from the kernel when dropped.
#[derive(Debug)]
pub struct SocketEvents {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<Counters>,
    /// Where UDP connects are taken ([`UdpHook`]).
    pub udp_hook: UdpHook,
}

/// Where a UDP socket's `connect(2)` is seen: there is no state change to trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpHook {
    /// A trampoline at the return of `inet_dgram_connect`: costs only datagram connects.
    Fexit,
    /// The return of every system call (x86-64), where the kernel refuses trampolines: a few
    /// instructions on every system call of the host (BENCHMARKS.md measures them).
    SysExit,
}

impl UdpHook {
    pub fn describe(self) -> &'static str {
        match self {
            UdpHook::Fexit => "UDP connects at inet_dgram_connect's return (fexit)",
            UdpHook::SysExit => {
                "UDP connects at every system call's return (sys_exit; this kernel refuses fexit)"
            }
        }
    }
}

/// How often the thread drains the ring (and looks at the stop flag and the drop count). The
/// program wakes it sooner only when the ring is a quarter full: one wake-up and one batch per
/// look rather than per event (at 200 new connections a second, per-event wake-ups were most
/// of the agent's CPU).
const POLL: Duration = Duration::from_millis(200);

impl SocketEvents {
    /// Loads and attaches the program (in a helper process: [`loader`]) and starts the reading
    /// thread; `Err` with the reason where the kernel refuses. `ring_bytes`: the ring's size, a power of two of at least a page.
    pub fn start(ring_bytes: u32, tx: mpsc::Sender<Vec<SocketEvent>>) -> Result<SocketEvents, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (s, c) = (stop.clone(), counters.clone());
        let attached = loader::attach(ring_bytes)?;
        // The ring is read where it is mapped (aya's reader is not `Send`): the thread maps it
        // and says how that went before it reads.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("socket-events".into())
            .spawn(move || match Reading::map(attached) {
                Ok(reading) => {
                    let _ = ready_tx.send(Ok(reading.udp_hook));
                    receive(reading, tx, s, c);
                }
                Err(why) => {
                    let _ = ready_tx.send(Err(why));
                }
            })
            .map_err(|e| format!("cannot start the socket event thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(udp_hook)) => Ok(SocketEvents { stop, thread: Some(thread), counters, udp_hook }),
            Ok(Err(why)) => {
                let _ = thread.join();
                Err(why)
            }
            Err(_) => {
                let _ = thread.join();
                Err("the socket event thread ended while loading".to_owned())
            }
        }
    }
}

/// The attached program as the reading thread holds it: the programs stay attached while
/// `_links` are open.
struct Reading {
    _links: Vec<std::os::fd::OwnedFd>,
    ring: RingBuf<MapData>,
    dropped: PerCpuArray<MapData, u64>,
    udp_hook: UdpHook,
}

impl Reading {
    fn map(a: Attached) -> Result<Reading, String> {
        let ring = MapData::from_fd(a.ring)
            .and_then(Map::from_map_data)
            .and_then(RingBuf::try_from)
            .map_err(|e| format!("the ring from the eBPF loader: {e}"))?;
        let dropped = MapData::from_fd(a.dropped)
            .and_then(Map::from_map_data)
            .and_then(PerCpuArray::try_from)
            .map_err(|e| format!("the drop counter from the eBPF loader: {e}"))?;
        Ok(Reading { _links: a.links, ring, dropped, udp_hook: a.udp_hook })
    }
}

impl Drop for SocketEvents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Nanoseconds to add to a CLOCK_BOOTTIME reading to make it wall-clock time.
fn boot_to_wall() -> i128 {
    let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0);
    OffsetDateTime::now_utc().unix_timestamp_nanos() - boot
}

fn receive(
    reading: Reading,
    tx: mpsc::Sender<Vec<SocketEvent>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let Reading { _links, mut ring, dropped, .. } = reading;
    let timeout = PollTimeout::try_from(POLL).unwrap_or(PollTimeout::MAX);
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "socket events: poll failed; they stop");
                return;
            }
        }
        let offset = boot_to_wall();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            counters.events.fetch_add(1, Ordering::Relaxed);
            match SocketEvent::decode(&item, offset) {
                Some(e) => batch.push(e),
                None => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // The runner is gone: the agent is stopping.
        if !batch.is_empty() && tx.blocking_send(batch).is_err() {
            return;
        }
        if let Ok(per_cpu) = dropped.get(&0, 0) {
            counters.dropped.store(per_cpu.iter().sum(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, family: u8, protocol: u8) -> Vec<u8> {
        let mut b = vec![0u8; 88];
        b[0..8].copy_from_slice(&5_000_000_000u64.to_ne_bytes());
        b[8..16].copy_from_slice(&0xffff_8880_1234_5678u64.to_ne_bytes());
        b[16..20].copy_from_slice(&4242u32.to_ne_bytes());
        b[24..28].copy_from_slice(&4026531840u32.to_ne_bytes());
        b[28..32].copy_from_slice(&1000u32.to_ne_bytes());
        b[32..34].copy_from_slice(&40000u16.to_ne_bytes());
        b[34..36].copy_from_slice(&3333u16.to_ne_bytes());
        b[36] = kind;
        b[37] = family;
        b[38] = protocol;
        b[40..44].copy_from_slice(&[127, 0, 0, 1]);
        b[56..60].copy_from_slice(&[10, 1, 2, 3]);
        b[72..76].copy_from_slice(b"curl");
        b
    }

    #[test]
    fn records_decode_and_what_does_not_fit_is_refused() {
        let e = SocketEvent::decode(&record(1, 2, 6), 1_000_000_000_000_000_000).unwrap();
        assert_eq!(e.kind, Kind::Connect);
        assert_eq!((e.pid, e.comm.as_str(), e.protocol, e.uid), (Some(4242), "curl", Protocol::Tcp, 1000));
        assert_eq!(e.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(e.remote, "10.1.2.3:3333".parse().unwrap());
        assert_eq!(e.at.unix_timestamp(), 1_000_000_005);
        let mut v6 = record(6, 10, 17);
        v6[40..56].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        let e = SocketEvent::decode(&v6, 0).unwrap();
        assert_eq!(
            (e.kind, e.protocol, e.local.ip()),
            (Kind::UdpConnect, Protocol::Udp, IpAddr::from(Ipv6Addr::LOCALHOST))
        );
        assert!(SocketEvent::decode(&record(9, 2, 6), 0).is_none(), "unknown kind");
        assert!(SocketEvent::decode(&record(1, 3, 6), 0).is_none(), "unknown family");
        assert!(SocketEvent::decode(&record(1, 2, 1), 0).is_none(), "unknown protocol");
        assert!(SocketEvent::decode(&record(1, 2, 6)[..40], 0).is_none(), "short");
        let mut accepted = record(2, 2, 6);
        accepted[16..20].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(SocketEvent::decode(&accepted, 0).unwrap().kind, Kind::Accept);
        assert_eq!(SocketEvent::decode(&accepted, 0).unwrap().pid, None);
    }
}
