//! Connections and listeners as the kernel makes them, however short they live: an eBPF
//! program (`agent/bpf/connections.bpf.c`, its compiled object committed beside it) on the
//! `inet_sock_set_state` BTF tracepoint for TCP and at the return of `inet_dgram_connect` (fexit;
//! where the kernel refuses trampolines, on `sys_exit`) for UDP sockets' `connect(2)`, each event
//! with the process that made it, in a ring buffer the runner drains at each of its ticks (and
//! sooner when the program says the ring is a quarter full). The program is loaded in a helper
//! process ([`super::loader`]), which hands over the ring and the links.
//!
//! The scans ([`super::diag`]) stay the source of truth for what is open; these events add what
//! opened and closed between two looks. Where the kernel refuses (no CAP_BPF and CAP_PERFMON, no
//! BTF, a kernel before 5.8), the agent runs on the scans alone and says so
//! ([`SocketEvents::start`]'s error, in its status and coverage).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use tokio::io::unix::AsyncFd;

use super::loader;
use hostwatch_proto::v1::Protocol;
use time::OffsetDateTime;

/// The ring's default size: about 1,300 events of 96 bytes. The runner is woken at a quarter
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

/// Counts of what the source saw, for the agent's status.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub events: u64,
    /// Events the kernel had no room for in the ring (the program's own count, as last read).
    pub dropped: u64,
    /// Records that did not decode.
    pub malformed: u64,
}

/// The attached program as the runner holds it: attached while `_links` are open, detached from
/// the kernel when dropped.
///
/// No thread of its own: the runner drains the ring at each tick ([`SocketEvents::drain`]),
/// and the program wakes it ([`SocketEvents::wake`]) only past a quarter ring. A reader thread
/// that looked every 200 ms was a twelfth of the agent's CPU on an idle host (its wake-ups and
/// a system call to read the drop count each time).
pub struct SocketEvents {
    _links: Vec<OwnedFd>,
    ring: AsyncFd<RingBuf<MapData>>,
    dropped: PerCpuArray<MapData, u64>,
    counters: Counters,
    /// Where UDP connects are taken ([`UdpHook`]).
    pub udp_hook: UdpHook,
}

impl std::fmt::Debug for SocketEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketEvents")
            .field("counters", &self.counters)
            .field("udp_hook", &self.udp_hook)
            .finish()
    }
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

impl SocketEvents {
    /// Loads and attaches the program (in a helper process: [`loader`]) and maps its ring; `Err`
    /// with the reason where the kernel refuses. `ring_bytes`: the ring's size, a power of two of
    /// at least a page. Called within the runtime (the ring is registered with its reactor).
    pub fn start(ring_bytes: u32) -> Result<SocketEvents, String> {
        let a = loader::attach(ring_bytes)?;
        let ring = MapData::from_fd(a.ring)
            .and_then(Map::from_map_data)
            .and_then(RingBuf::try_from)
            .map_err(|e| format!("the ring from the eBPF loader: {e}"))?;
        // SAFETY: the ring owns its descriptor (its `MapData` holds the `OwnedFd`) from here until
        // the `AsyncFd` drops it, and `as_raw_fd` gives that same descriptor every time.
        #[allow(unsafe_code)]
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| format!("cannot wait on the eBPF ring: {e}"))?;
        let dropped = MapData::from_fd(a.dropped)
            .and_then(Map::from_map_data)
            .and_then(PerCpuArray::try_from)
            .map_err(|e| format!("the drop counter from the eBPF loader: {e}"))?;
        Ok(SocketEvents {
            _links: a.links,
            ring,
            dropped,
            counters: Counters::default(),
            udp_hook: a.udp_hook,
        })
    }

    /// Resolves when the program asks for a drain (the ring is a quarter full); the caller then
    /// drains. Cancel-safe. `Err` only if the ring can no longer be waited on.
    pub async fn wake(&self) -> std::io::Result<()> {
        let mut ready = self.ring.readable().await?;
        // Edge-triggered: the next wake-up is the program's next one, whatever is drained.
        ready.clear_ready();
        Ok(())
    }

    /// Every event in the ring now, oldest first, with the drop count read again.
    pub fn drain(&mut self) -> Vec<SocketEvent> {
        let offset = boot_to_wall();
        let mut batch = Vec::new();
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            self.counters.events += 1;
            match SocketEvent::decode(&item, offset) {
                Some(e) => batch.push(e),
                None => self.counters.malformed += 1,
            }
        }
        if let Ok(per_cpu) = self.dropped.get(&0, 0) {
            self.counters.dropped = per_cpu.iter().sum();
        }
        batch
    }

    /// What the source saw, as of the last drain.
    pub fn counters(&self) -> Counters {
        self.counters
    }
}

/// Nanoseconds to add to a CLOCK_BOOTTIME reading to make it wall-clock time.
fn boot_to_wall() -> i128 {
    let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0);
    OffsetDateTime::now_utc().unix_timestamp_nanos() - boot
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
