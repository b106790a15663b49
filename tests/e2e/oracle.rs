//! The agent against the tools everybody trusts, both ways: every process `ps` lists is in the
//! snapshot with the same ppid, user and executable, and every socket `ss -tuanp` lists is there
//! with the same owner; and the snapshot invents nothing: each of its processes and sockets is one
//! `ps` or `ss` saw, or belongs to a program that started while the test ran. `ps` and `ss` run
//! before and after the snapshot; the first direction compares only what both runs agree on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;

use hostwatch_proto::v1 as proto;

use crate::support::Guard;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PsRow {
    pid: u32,
    ppid: u32,
    user: String,
    exe: Option<String>,
}

fn ps() -> BTreeMap<u32, PsRow> {
    let out =
        crate::support::tool("ps").args(["-eo", "pid=,ppid=,stat=,user:64=,exe="]).output().expect("run ps");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let pid = f.next()?.parse().ok()?;
            let ppid = f.next()?.parse().ok()?;
            // Zombies have ended; hostwatch leaves them out.
            if f.next()?.starts_with('Z') {
                return None;
            }
            let user = f.next()?.to_owned();
            let exe = f.collect::<Vec<_>>().join(" ");
            let exe = (exe != "-" && !exe.is_empty()).then(|| exe.trim_end_matches(" (deleted)").to_owned());
            Some((pid, PsRow { pid, ppid, user, exe }))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SsRow {
    protocol: String,
    state: String,
    local: (Option<IpAddr>, u16),
    peer: (Option<IpAddr>, u16),
    pids: BTreeSet<u32>,
}

/// `1.2.3.4:80`, `[::1]:80`, `*:68`, `127.0.0.53%lo:53`; `None` for `*` (any address).
fn parse_endpoint(s: &str) -> Option<(Option<IpAddr>, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = if port == "*" { 0 } else { port.parse().ok()? };
    let host = host.split('%').next()?.trim_start_matches('[').trim_end_matches(']');
    let ip = if host == "*" { None } else { Some(host.parse().ok()?) };
    Some((ip, port))
}

fn ss() -> BTreeSet<SsRow> {
    let out = crate::support::tool("ss").args(["-tuanpH"]).output().expect("run ss (iproute2)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let pids = l
                .split("pid=")
                .skip(1)
                .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                .collect();
            Some(SsRow {
                protocol: f.first()?.to_string(),
                state: f.get(1)?.to_string(),
                local: parse_endpoint(f.get(4)?)?,
                peer: parse_endpoint(f.get(5)?)?,
                pids,
            })
        })
        .collect()
}

fn same_ip(ss: Option<IpAddr>, ours: IpAddr) -> bool {
    match ss {
        None => ours.is_unspecified(),
        Some(ip) => ip.to_canonical() == ours.to_canonical(),
    }
}

/// The inode of this process's network namespace, as the snapshot names it.
fn own_netns() -> u64 {
    let link = std::fs::read_link("/proc/self/ns/net").expect("read /proc/self/ns/net");
    let link = link.to_string_lossy();
    link.trim_start_matches("net:[").trim_end_matches(']').parse().unwrap_or_else(|_| panic!("{link}"))
}

#[test]
fn every_process_and_socket_that_ps_and_ss_see() {
    // The machine to itself: what another test starts between `ps` and the snapshot would be
    // left out one way and excused the other; alone, what is excused is the system's own.
    let _turn = crate::support::Turn::alone();
    // Something of each kind this test owns, so that the comparison can never be empty.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let _listener6 = TcpListener::bind("[::1]:0").ok();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let connected_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    connected_udp.connect(udp.local_addr().unwrap()).unwrap();
    let child = Guard(Command::new("sleep").arg("60").spawn().unwrap());

    // Start times are read to the second of boot time: a program born in the window may appear
    // to have started up to a second before it.
    let began = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let (ps1, ss1) = (ps(), ss());
    let (report, _, _) = crate::support::agent_snapshot(&[("HOSTWATCH_CLOUD_PROVIDER", "none")]);
    let (ps2, ss2) = (ps(), ss());
    let snap = report.snapshot.unwrap();

    // Processes: those ps saw the same way twice, but kernel threads (kthreadd and its children).
    let by_pid: BTreeMap<u32, &proto::Process> = snap.processes.iter().map(|p| (p.pid, p)).collect();
    let stable: Vec<&PsRow> =
        ps1.values().filter(|r| ps2.get(&r.pid) == Some(r) && r.pid != 2 && r.ppid != 2).collect();
    assert!(stable.iter().any(|r| r.pid == child.pid() as u32), "the test's child is among what ps saw");
    for r in &stable {
        let p = by_pid.get(&r.pid).unwrap_or_else(|| panic!("ps lists {r:?}, the snapshot does not"));
        assert_eq!(p.ppid, r.ppid, "ppid of {}", r.pid);
        let user = p.user.clone().unwrap_or_else(|| p.uid.to_string());
        assert_eq!(user, r.user, "user of {}", r.pid);
        if let Some(exe) = &r.exe {
            assert_eq!(p.exe.as_deref(), Some(exe.as_str()), "exe of {}", r.pid);
        }
    }

    // Sockets: those ss saw twice (by protocol, state and ends; their holders may differ, as a
    // child forked by another test holds copies of this process's descriptors until it execs),
    // in the states hostwatch reports, with the holders either run named.
    let key = |r: &SsRow| (r.protocol.clone(), r.state.clone(), r.local, r.peer);
    let second: BTreeMap<_, &SsRow> = ss2.iter().map(|r| (key(r), r)).collect();
    let stable: Vec<SsRow> = ss1
        .iter()
        .filter_map(|r| {
            let other = second.get(&key(r))?;
            Some(SsRow { pids: r.pids.union(&other.pids).copied().collect(), ..r.clone() })
        })
        .collect();
    let mut mine = 0;
    for r in &stable {
        let protocol = match r.protocol.as_str() {
            "tcp" => proto::Protocol::Tcp,
            "udp" => proto::Protocol::Udp,
            _ => continue,
        };
        let owner = match r.state.as_str() {
            "LISTEN" | "UNCONN" => {
                let l = snap
                    .listeners
                    .iter()
                    .find(|l| l.protocol == protocol && l.port == r.local.1 && same_ip(r.local.0, l.address))
                    .unwrap_or_else(|| panic!("ss lists {r:?}, the snapshot has no such listener"));
                l.pid
            }
            "ESTAB" => {
                let c = snap
                    .connections
                    .iter()
                    .find(|c| {
                        c.protocol == protocol
                            && c.local_port == r.local.1
                            && c.remote_port == r.peer.1
                            && same_ip(r.local.0, c.local_address)
                            && same_ip(r.peer.0, c.remote_address)
                    })
                    .unwrap_or_else(|| panic!("ss lists {r:?}, the snapshot has no such connection"));
                c.pid
            }
            _ => continue,
        };
        if !r.pids.is_empty() {
            let pid = owner.unwrap_or_else(|| panic!("ss knows the owner of {r:?}, the snapshot does not"));
            assert!(r.pids.contains(&pid), "owner {pid} of {r:?} is not one ss names");
        }
        mine += usize::from(r.pids.contains(&std::process::id()));
    }
    assert!(mine >= 4, "the test's own sockets were compared ({mine})");
    let c = snap.connections.iter().find(|c| c.local_port == client.local_addr().unwrap().port()).unwrap();
    assert_eq!(c.direction, proto::Direction::Outbound);
    let s = snap.connections.iter().find(|c| c.local_port == listener.local_addr().unwrap().port()).unwrap();
    assert_eq!(s.direction, proto::Direction::Inbound);

    // The other way: the snapshot invents nothing. A process neither `ps` run listed must have
    // started in the window between them (the agent itself, a timer's program), and be gone.
    let born_in_window = |pid: u32| by_pid.get(&pid).is_some_and(|p| p.start_time >= began);
    let mut excused = Vec::new();
    for p in &snap.processes {
        if ps1.contains_key(&p.pid) || ps2.contains_key(&p.pid) {
            continue;
        }
        assert!(
            born_in_window(p.pid),
            "the snapshot has pid {} ({:?}, started {}), which neither ps run listed and which did not start while the test ran",
            p.pid,
            p.exe,
            p.start_time
        );
        excused.push(p.pid);
    }
    assert!(excused.len() < 20, "too much started in the window to compare: {excused:?}");
    // Sockets in this namespace: each one `ss` listed in either run (by protocol and ends,
    // whatever the state: a connection may move from SYN-SENT to ESTAB between runs), or one
    // whose owner started in the window.
    let netns = own_netns();
    let here = |n: Option<u64>| n.is_none_or(|n| n == netns);
    let listed = |protocol: proto::Protocol, local: (IpAddr, u16), peer: Option<(IpAddr, u16)>| {
        ss1.iter().chain(ss2.iter()).any(|r| {
            r.protocol == protocol.as_str()
                && r.local.1 == local.1
                && same_ip(r.local.0, local.0)
                && match peer {
                    None => matches!(r.state.as_str(), "LISTEN" | "UNCONN"),
                    Some((ip, port)) => r.peer.1 == port && same_ip(r.peer.0, ip),
                }
        })
    };
    let mut sockets = 0;
    for l in snap.listeners.iter().filter(|l| here(l.netns)) {
        sockets += 1;
        assert!(
            listed(l.protocol, (l.address, l.port), None) || l.pid.is_some_and(born_in_window),
            "the snapshot has a listener neither ss run listed: {l:?}"
        );
    }
    for c in snap.connections.iter().filter(|c| here(c.netns)) {
        sockets += 1;
        assert!(
            listed(c.protocol, (c.local_address, c.local_port), Some((c.remote_address, c.remote_port)))
                || c.pid.is_some_and(born_in_window),
            "the snapshot has a connection neither ss run listed: {c:?}"
        );
    }
    assert!(sockets >= 5, "the test's own sockets were in the snapshot ({sockets})");
}
