//! Loading the socket event program in a short-lived helper process: the agent runs itself
//! again (`/proc/self/exe`, which works even when a package upgrade replaced the file) with
//! [`HELPER_ARG`], the helper loads and attaches the program, sends back the ring, the drop
//! counter and the links as file descriptors over a socket pair, and exits.
//!
//! Why a process: loading parses the kernel's whole BTF (about 5 MB read and 5 MB parsed) and
//! runs the loader's relocation code. In the agent itself that left about 1.5 MiB resident for
//! good (a fragmented heap arena and the loader's code pages), over the agent's 20 MiB budget.
//! Only the reader's few pages of code ever run in the agent now.
//!
//! Invariants: the program stays attached exactly as long as the agent holds the link
//! descriptors (links are not pinned; nothing outlives the agent). The helper never logs and
//! never reads the configuration: its one output is the message on the socket, which the agent
//! treats like any other input (a reason that does not decode is a reason, not a crash).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use aya::programs::links::FdLink;
use aya::programs::{BtfTracePoint, FExit, RawTracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use super::ebpf::UdpHook;
use crate::transport::chain;

/// The compiled program: what `agent/bpf/build.sh` makes of `connections.bpf.c`.
static OBJECT: &[u8] = include_bytes!("../../../bpf/connections.bpf.o");

/// The first argument that makes either binary (`hostwatch-agent`, or `hostwatch` in dev mode)
/// the helper rather than itself; not a command anyone types.
pub const HELPER_ARG: &str = "__hostwatch-load-socket-events";

/// How long the helper may take: loading takes a few hundred milliseconds; a helper that
/// hangs is killed and the agent runs on its scans.
const HELPER_DEADLINE: Duration = Duration::from_secs(30);

/// The largest reason the helper sends back.
const MAX_MESSAGE: usize = 4096;

/// What the helper hands over: the program is attached while `links` are open.
#[derive(Debug)]
pub struct Attached {
    pub ring: OwnedFd,
    pub dropped: OwnedFd,
    pub links: Vec<OwnedFd>,
    pub udp_hook: UdpHook,
}

/// Loads and attaches the program through the helper; `Err` with the reason where the kernel
/// refuses (the helper's words) or the helper fails.
pub fn attach(ring_bytes: u32) -> Result<Attached, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("cannot make a socket pair: {e}"))?;
    ours.set_read_timeout(Some(HELPER_DEADLINE))
        .map_err(|e| format!("cannot bound the wait for the loader: {e}"))?;
    let mut child = Command::new("/proc/self/exe")
        .arg(HELPER_ARG)
        .arg(ring_bytes.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the eBPF loader (/proc/self/exe): {e}"))?;
    let received = receive(&ours);
    if received.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| format!("the eBPF loader: {e}"))?;
    let (message, fds) = received?;
    decode(&message, fds).map_err(|why| match status.code() {
        Some(0) => why,
        _ => format!("{why} (the loader exited with {status})"),
    })
}

/// Whether the program loads and attaches here (for `doctor`), the way the agent loads it, and
/// where it takes UDP connects; the reason where it does not. It is detached again at once.
pub fn probe(ring_bytes: u32) -> Result<UdpHook, String> {
    attach(ring_bytes).map(|a| a.udp_hook)
}

fn receive(sock: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let msg = loop {
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(format!("the eBPF loader did not answer within {}s", HELPER_DEADLINE.as_secs()));
            }
            Err(e) => return Err(format!("cannot read the eBPF loader's answer: {e}")),
            Ok(m) => break m,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| format!("the eBPF loader's answer: {e}"))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: descriptors that arrive with SCM_RIGHTS are new in this process and
            // owned by nothing else; each is wrapped once.
            #[allow(unsafe_code)]
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let n = msg.bytes;
    if truncated {
        return Err("the eBPF loader sent more descriptors than expected".to_owned());
    }
    buf.truncate(n);
    Ok((buf, fds))
}

/// The helper's answer when the program is attached: where it takes UDP connects.
fn answer(hook: UdpHook) -> &'static str {
    match hook {
        UdpHook::Fexit => "ok fexit",
        UdpHook::SysExit => "ok sys_exit",
    }
}

/// The answer: [`answer`] with the ring, the drop counter and the links, in that order; or
/// `err REASON`.
fn decode(message: &[u8], mut fds: Vec<OwnedFd>) -> Result<Attached, String> {
    let text = String::from_utf8_lossy(message);
    if let Some(why) = text.strip_prefix("err ") {
        return Err(why.to_owned());
    }
    if text.is_empty() {
        return Err("the eBPF loader ended without an answer".to_owned());
    }
    let udp_hook =
        [UdpHook::Fexit, UdpHook::SysExit].into_iter().find(|h| text == answer(*h)).ok_or_else(|| {
            format!("the eBPF loader's answer is not understood: {:?}", text.escape_debug().to_string())
        })?;
    if fds.len() < 3 {
        return Err(format!("the eBPF loader sent {} descriptors, expected at least 3", fds.len()));
    }
    let links = fds.split_off(2);
    let dropped = fds.pop().ok_or("no drop counter")?;
    let ring = fds.pop().ok_or("no ring")?;
    Ok(Attached { ring, dropped, links, udp_hook })
}

/// The helper's side, run by `main` of either binary when its first argument is [`HELPER_ARG`]:
/// `None` otherwise. Standard input is the socket to answer on.
pub fn helper_main() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(HELPER_ARG)) {
        return None;
    }
    let ring_bytes = args.next().and_then(|a| a.to_str().and_then(|s| s.parse::<u32>().ok()));
    let socket = std::io::stdin().as_fd().as_raw_fd();
    // `loaded` holds the program attached until the descriptors are sent.
    let loaded =
        ring_bytes.ok_or_else(|| "the loader was started without a ring size".to_owned()).and_then(load);
    let reply = loaded.as_ref().map_err(String::clone).and_then(|l| {
        let mut fds = vec![l.ring.as_raw_fd(), l.dropped.as_raw_fd()];
        fds.extend(links_of_this_process()?);
        Ok((answer(l.udp_hook), fds))
    });
    let sent = match reply {
        Ok((word, fds)) => send(socket, word.as_bytes(), &fds),
        Err(why) => send(socket, format!("err {why}").as_bytes(), &[]),
    };
    Some(if sent.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn send(fd: RawFd, message: &[u8], fds: &[RawFd]) -> nix::Result<usize> {
    let mut message = message.to_vec();
    message.truncate(MAX_MESSAGE);
    let iov = [IoSlice::new(&message)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(fd, &iov, cmsgs, MsgFlags::empty(), None)
}

/// The helper's links, found among its descriptors: aya gives no access to a link's
/// descriptor, and the helper holds no link but the program's. They stay open (held by
/// [`Loaded`]) until the helper exits, after it has sent them.
fn links_of_this_process() -> Result<Vec<RawFd>, String> {
    let mut links = Vec::new();
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|e| format!("cannot list /proc/self/fd: {e}"))?;
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if target.as_os_str() == "anon_inode:bpf_link"
            && let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok())
        {
            links.push(fd);
        }
    }
    if links.len() != 2 {
        return Err(format!("the loader holds {} links, expected 2", links.len()));
    }
    Ok(links)
}

/// The program attached, as the helper holds it until it has sent the descriptors.
struct Loaded {
    _links: Vec<FdLink>,
    ring: OwnedFd,
    dropped: OwnedFd,
    udp_hook: UdpHook,
}

fn load(ring_bytes: u32) -> Result<Loaded, String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF (/sys/kernel/btf/vmlinux): {e}"))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .map_max_entries("EVENTS", ring_bytes)
        .override_global("wake_at", &u64::from(ring_bytes / 4), true)
        .load(OBJECT)
        .map_err(|e| format!("eBPF refused: {}", chain(&e)))?;
    let tcp: &mut BtfTracePoint = ebpf
        .program_mut("set_state")
        .ok_or("the eBPF object lacks set_state")?
        .try_into()
        .map_err(|e| format!("set_state: {e}"))?;
    tcp.load("inet_sock_set_state", &btf).map_err(|e| format!("eBPF refused: {}", chain(&e)))?;
    let id = tcp.attach().map_err(|e| format!("cannot attach to inet_sock_set_state: {}", chain(&e)))?;
    let tcp_link = FdLink::from(tcp.take_link(id).map_err(|e| format!("set_state: {}", chain(&e)))?);
    let (udp_link, udp_hook) = match attach_udp_fexit(&mut ebpf, &btf) {
        Ok(link) => (link, UdpHook::Fexit),
        Err(fexit_why) => {
            let link =
                attach_udp_sys_exit(&mut ebpf).map_err(|why| format!("{why} (and fexit: {fexit_why})"))?;
            (link, UdpHook::SysExit)
        }
    };
    let ring = map_fd(&ebpf, "EVENTS")?;
    let dropped = map_fd(&ebpf, "DROPPED")?;
    Ok(Loaded { _links: vec![tcp_link, udp_link], ring, dropped, udp_hook })
}

fn map_fd(ebpf: &Ebpf, name: &str) -> Result<OwnedFd, String> {
    let map = ebpf.map(name).ok_or_else(|| format!("the eBPF object lacks {name}"))?;
    let data = match map {
        aya::maps::Map::RingBuf(d) | aya::maps::Map::PerCpuArray(d) => d,
        _ => return Err(format!("{name} is not the map the program declares")),
    };
    data.fd().as_fd().try_clone_to_owned().map_err(|e| format!("{name}: {e}"))
}

fn attach_udp_fexit(ebpf: &mut Ebpf, btf: &Btf) -> Result<FdLink, String> {
    let udp: &mut FExit = ebpf
        .program_mut("udp_connect")
        .ok_or("the eBPF object lacks udp_connect")?
        .try_into()
        .map_err(|e| format!("udp_connect: {e}"))?;
    udp.load("inet_dgram_connect", btf).map_err(|e| format!("eBPF refused: {}", chain(&e)))?;
    let id = udp.attach().map_err(|e| format!("cannot attach to inet_dgram_connect: {}", chain(&e)))?;
    Ok(FdLink::from(udp.take_link(id).map_err(|e| format!("udp_connect: {}", chain(&e)))?))
}

fn attach_udp_sys_exit(ebpf: &mut Ebpf) -> Result<FdLink, String> {
    let udp: &mut RawTracePoint = ebpf
        .program_mut("udp_connect_exit")
        .ok_or("the eBPF object lacks udp_connect_exit")?
        .try_into()
        .map_err(|e| format!("udp_connect_exit: {e}"))?;
    udp.load().map_err(|e| format!("eBPF refused: {}", chain(&e)))?;
    let id = udp.attach("sys_exit").map_err(|e| format!("cannot attach to sys_exit: {}", chain(&e)))?;
    Ok(FdLink::from(udp.take_link(id).map_err(|e| format!("udp_connect_exit: {}", chain(&e)))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_do_not_fit_are_reasons_not_crashes() {
        let e = decode(b"err no kernel BTF", Vec::new()).expect_err("an error");
        assert_eq!(e, "no kernel BTF");
        assert!(decode(b"", Vec::new()).expect_err("empty").contains("without an answer"));
        assert!(decode(b"ok fexit", Vec::new()).expect_err("no fds").contains("0 descriptors"));
        let odd = decode(b"ok \x1b[31m", Vec::new()).expect_err("odd");
        assert!(odd.contains("not understood") && !odd.contains('\x1b'), "{odd}");
    }
}
