//! Learning a baseline from what a host runs: a TOML file that explains all of its current state,
//! generalised as a reviewer would write it (one rule per program, no pids).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hostwatch_proto::v1::{Direction, Protocol};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use time::OffsetDateTime;

use crate::model::HostState;

/// Per program: the names it ran under and the users it ran as.
type Programs<'a> = BTreeMap<(Option<&'a str>, Option<&'a str>), (BTreeSet<&'a str>, BTreeSet<String>)>;
/// Per (protocol, port): the addresses bound and the owning process names.
type Ports<'a> = BTreeMap<(Protocol, u16), (BTreeSet<String>, BTreeSet<Option<&'a str>>)>;
/// Per (process, protocol, remote port): the peers connected to.
type Outbound<'a> = BTreeMap<(Option<&'a str>, Protocol, u16), BTreeSet<IpAddr>>;

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Writes a baseline named `name`, selecting `selector`, that explains every process and listener
/// of `state`. Nothing in it is required: a learned baseline describes, a reviewer decides what
/// must run.
pub fn learn(
    name: &str,
    selector: &BTreeMap<String, String>,
    hostname: &str,
    state: &HostState,
    now: OffsetDateTime,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Learned by hostwatch from {hostname} at {}: everything it ran then.",
        hostwatch_proto::v1::timestamp::format(now)
    );
    let _ = writeln!(out, "# Review it: whatever ran at that moment is now expected.");
    let _ = writeln!(out, "name = {}", q(name));
    let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{} = {}", q(k), q(v))).collect();
    let _ = writeln!(out, "selector = {{ {} }}", sel.join(", "));

    // One rule per executable (or per name where the executable is unknown).
    let mut programs: Programs = BTreeMap::new();
    for p in &state.processes {
        let key = match &p.exe {
            Some(exe) => (Some(exe.as_str()), None),
            None => (None, Some(p.name.as_str())),
        };
        let entry = programs.entry(key).or_default();
        entry.0.insert(p.name.as_str());
        entry.1.insert(p.user_or_uid());
    }
    for ((exe, name), (names, users)) in &programs {
        let name = match (name, names.len()) {
            (Some(n), _) => globset::escape(n),
            (None, 1) => names.iter().next().map(|n| globset::escape(n)).unwrap_or_else(|| "*".to_owned()),
            // The same executable under several names (argv[0] tricks, renamed workers).
            _ => "*".to_owned(),
        };
        let _ = writeln!(out, "\n[[process]]\nname = {}", q(&name));
        if let Some(exe) = exe {
            let _ = writeln!(out, "exe = {}", q(&globset::escape(exe)));
        }
        let users: Vec<String> = users.iter().map(|u| q(u)).collect();
        let _ = writeln!(out, "user = [{}]", users.join(", "));
    }

    // One rule per (protocol, port), with the addresses and owner seen.
    let mut ports: Ports = BTreeMap::new();
    for l in &state.listeners {
        let entry = ports.entry((l.protocol, l.port)).or_default();
        entry.0.insert(l.address.to_string());
        entry.1.insert(l.process.as_deref());
    }
    for ((protocol, port), (addresses, owners)) in &ports {
        let _ = writeln!(out, "\n[[listen]]\nprotocol = {}\nport = {port}", q(protocol.as_str()));
        let addresses: Vec<String> = addresses.iter().map(|a| q(a)).collect();
        let _ = writeln!(out, "address = [{}]", addresses.join(", "));
        if let [Some(owner)] = owners.iter().collect::<Vec<_>>().as_slice() {
            let _ = writeln!(out, "process = {}", q(&globset::escape(owner)));
        }
    }

    // One rule per (program, protocol, service port) this host connected out to; the peers
    // listed, or the one network that holds them all where there are many (a fleet of replicas,
    // an object store).
    let mut outbound: Outbound = BTreeMap::new();
    for c in state.connections.iter().filter(|c| c.direction == Direction::Outbound) {
        let peers = outbound.entry((c.process.as_deref(), c.protocol, c.remote.port())).or_default();
        peers.insert(c.remote.ip().to_canonical());
    }
    for ((process, protocol, port), peers) in &outbound {
        let _ = writeln!(out, "\n[[connect]]\nprotocol = {}\nport = {port}", q(protocol.as_str()));
        let remotes: Vec<String> = generalise(peers).iter().map(|n| q(&n.to_string())).collect();
        let _ = writeln!(out, "remote = [{}]", remotes.join(", "));
        if let Some(p) = process {
            let _ = writeln!(out, "process = {}", q(&globset::escape(p)));
        }
        let _ = writeln!(out, "direction = \"outbound\"");
    }
    out
}

/// More peers than this for one program and port are written as the network that holds them.
const MAX_LISTED_PEERS: usize = 8;

/// Peers as a reviewer would write them: each address, or where there are many, per address
/// family the smallest network that holds them all.
fn generalise(peers: &BTreeSet<IpAddr>) -> Vec<IpNet> {
    if peers.len() <= MAX_LISTED_PEERS {
        return peers.iter().map(|ip| IpNet::from(*ip)).collect();
    }
    let mut out = Vec::new();
    let v4: Vec<u32> = peers
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(a) => Some(u32::from(*a)),
            IpAddr::V6(_) => None,
        })
        .collect();
    if let (Some(first), Some(last)) = (v4.first(), v4.last()) {
        let len = (first ^ last).leading_zeros() as u8;
        out.extend(Ipv4Net::new(Ipv4Addr::from(*first), len).ok().map(|n| IpNet::V4(n.trunc())));
    }
    let v6: Vec<u128> = peers
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(a) => Some(u128::from(*a)),
            IpAddr::V4(_) => None,
        })
        .collect();
    if let (Some(first), Some(last)) = (v6.first(), v6.last()) {
        let len = (first ^ last).leading_zeros() as u8;
        out.extend(Ipv6Net::new(Ipv6Addr::from(*first), len).ok().map(|n| IpNet::V6(n.trunc())));
    }
    out
}
