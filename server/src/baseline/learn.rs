//! Learning a baseline from what hosts ran: a TOML file that explains all of it, generalised as
//! a reviewer would write it (one rule per program rather than per process, no pids, no
//! ephemeral ports, many peers as the network that holds them), each rule with a comment saying
//! on how many of the hosts it was seen.
//!
//! Invariant: the learned baseline, applied to the hosts it was learned from, explains every
//! process, listener and connection they were seen with (the tests check it by evaluation).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hostwatch_proto::v1::{Direction, Protocol};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use time::OffsetDateTime;

use crate::model::HostState;

/// What one host was seen with: its current state and what its history adds within the window.
#[derive(Debug, Clone)]
pub struct Seen {
    pub hostname: String,
    pub state: HostState,
}

/// The hosts each rule was seen on, by index.
type Hosts = BTreeSet<usize>;
/// Per program (executable, or name where none): the names it ran under, its users, its hosts.
type Programs<'a> =
    BTreeMap<(Option<&'a str>, Option<&'a str>), (BTreeSet<&'a str>, BTreeSet<String>, Hosts)>;
/// Per (protocol, port): the addresses bound, the owning process names, the hosts.
type Ports<'a> = BTreeMap<(Protocol, u16), (BTreeSet<IpAddr>, BTreeSet<Option<&'a str>>, Hosts)>;
/// Per (process, protocol, remote port): the peers connected to, the hosts.
type Outbound<'a> = BTreeMap<(Option<&'a str>, Protocol, u16), (BTreeSet<IpAddr>, Hosts)>;

/// A glob that matches `s` and nothing else: glob syntax escaped, and backslashes too (baseline
/// globs take a backslash as an escape).
fn lit(s: &str) -> String {
    globset::escape(&s.replace('\\', "\\\\"))
}

/// A TOML basic string. Agents name what is learned, so every control or invisible character
/// (C0, DEL, C1, bidirectional and zero-width) is written as `\uXXXX`: the reviewer reading the
/// file sees exactly what it matches, and nothing in it can reorder, hide or drive a terminal.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || hostwatch_proto::v1::invisible(c) => {
                out.push_str(&format!("\\u{:04X}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes a baseline named `name`, selecting `selector`, that explains everything `hosts` were
/// seen with; `window` says over what time, for the header. Nothing in it is required: a
/// learned baseline describes, a reviewer decides what must run.
pub fn learn(
    name: &str,
    selector: &BTreeMap<String, String>,
    hosts: &[Seen],
    window: &str,
    now: OffsetDateTime,
) -> String {
    let mut out = String::new();
    let names: Vec<&str> = hosts.iter().map(|h| h.hostname.as_str()).take(5).collect();
    let more = hosts.len().saturating_sub(names.len());
    let _ = writeln!(
        out,
        "# Learned by hostwatch at {} from {} host{} ({}{}), {window}.",
        hostwatch_proto::v1::timestamp::format(now),
        hosts.len(),
        if hosts.len() == 1 { "" } else { "s" },
        names.join(", "),
        if more > 0 { format!(" and {more} more") } else { String::new() }
    );
    let _ =
        writeln!(out, "# Review it: whatever ran then is now expected. Add `reason` to each rule you keep.");
    let _ = writeln!(out, "name = {}", q(name));
    let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{} = {}", q(k), q(v))).collect();
    let _ = writeln!(out, "selector = {{ {} }}", sel.join(", "));
    let seen = |h: &Hosts| {
        format!("# seen on {} of {} host{}", h.len(), hosts.len(), if hosts.len() == 1 { "" } else { "s" })
    };

    // One session rule per user seen logged in; what their logins ran is theirs, not a program
    // rule each (an admin's `vi` and `curl` are no part of the workload).
    let mut names: BTreeMap<u32, &str> = BTreeMap::new();
    for p in hosts.iter().flat_map(|h| &h.state.processes) {
        if let (Some(uid), Some(name)) = (p.login_uid, &p.login_user) {
            names.entry(uid).or_insert(name);
        }
    }
    let mut logins: BTreeMap<String, (BTreeSet<IpAddr>, Hosts)> = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        let peers = crate::engine::session::Peers::of(h.state.connections.iter());
        for p in &h.state.processes {
            let Some((uid, _)) = crate::engine::session::login(p) else { continue };
            // History names no user: the name the current state gives the uid, else the uid.
            let user =
                p.login_user.as_deref().or(names.get(&uid).copied()).map_or(uid.to_string(), str::to_owned);
            let entry = logins.entry(user).or_default();
            entry.0.extend(peers.of_login(p));
            entry.1.insert(i);
        }
    }
    for (user, (from, on)) in &logins {
        let _ = writeln!(out, "\n{}\n[[session]]\nuser = [{}]", seen(on), q(user));
        if !from.is_empty() {
            let from: Vec<String> = from.iter().take(MAX_LISTED_PEERS).map(|a| q(&a.to_string())).collect();
            let _ = writeln!(out, "# logins came from: to allow only those, from = [{}]", from.join(", "));
        }
    }

    // One rule per executable (or per name where the executable is unknown).
    let mut programs: Programs = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        for p in h.state.processes.iter().filter(|p| crate::engine::session::login(p).is_none()) {
            let key = match &p.exe {
                Some(exe) => (Some(exe.as_str()), None),
                None => (None, Some(p.name.as_str())),
            };
            let entry = programs.entry(key).or_default();
            entry.0.insert(p.name.as_str());
            entry.1.insert(p.user_or_uid());
            entry.2.insert(i);
        }
    }
    for ((exe, name), (names, users, on)) in &programs {
        let name = match (name, names.len()) {
            (Some(n), _) => lit(n),
            (None, 1) => names.iter().next().map(|n| lit(n)).unwrap_or_else(|| "*".to_owned()),
            // The same executable under several names (argv[0] tricks, renamed workers).
            _ => "*".to_owned(),
        };
        let _ = writeln!(out, "\n{}\n[[process]]\nname = {}", seen(on), q(&name));
        if let Some(exe) = exe {
            let _ = writeln!(out, "exe = {}", q(&lit(exe)));
        }
        let users: Vec<String> = users.iter().map(|u| q(u)).collect();
        let _ = writeln!(out, "user = [{}]", users.join(", "));
    }

    // One rule per (protocol, port), with the addresses and owner seen.
    let mut ports: Ports = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        for l in &h.state.listeners {
            let entry = ports.entry((l.protocol, l.port)).or_default();
            entry.0.insert(l.address);
            entry.1.insert(l.process.as_deref());
            entry.2.insert(i);
        }
    }
    for ((protocol, port), (addresses, owners, on)) in &ports {
        let _ =
            writeln!(out, "\n{}\n[[listen]]\nprotocol = {}\nport = {port}", seen(on), q(protocol.as_str()));
        let addresses: Vec<String> = addresses.iter().map(|a| q(&a.to_string())).collect();
        let _ = writeln!(out, "address = [{}]", addresses.join(", "));
        if let [Some(owner)] = owners.iter().collect::<Vec<_>>().as_slice() {
            let _ = writeln!(out, "process = {}", q(&lit(owner)));
        }
    }

    // One rule per (program, protocol, service port) connected out to. Inbound connections are
    // explained by the listeners above.
    let mut outbound: Outbound = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        for c in h.state.connections.iter().filter(|c| c.direction == Direction::Outbound) {
            let entry = outbound.entry((c.process.as_deref(), c.protocol, c.remote.port())).or_default();
            entry.0.insert(c.remote.ip().to_canonical());
            entry.1.insert(i);
        }
    }
    for ((process, protocol, port), (peers, on)) in &outbound {
        if crate::engine::builtin::POOL_PORTS.contains(port) {
            let _ = writeln!(
                out,
                "\n# CAUTION: {port} is a port mining pools use; keeping this rule also keeps the mining-pool-port rule quiet for it."
            );
        }
        let _ =
            writeln!(out, "\n{}\n[[connect]]\nprotocol = {}\nport = {port}", seen(on), q(protocol.as_str()));
        let remotes: Vec<String> = generalise(peers).iter().map(|n| q(&n.to_string())).collect();
        let _ = writeln!(out, "remote = [{}]", remotes.join(", "));
        if let Some(p) = process {
            let _ = writeln!(out, "process = {}", q(&lit(p)));
        }
        let _ = writeln!(out, "direction = \"outbound\"");
    }
    out
}

/// More peers than this for one program and port are written as the network that holds them.
const MAX_LISTED_PEERS: usize = 8;

/// Peers as a reviewer would write them: this host's loopback as a whole (its services move
/// ports and addresses within it), the rest each by address, or, where there are many, per
/// address family the smallest network that holds them all.
fn generalise(peers: &BTreeSet<IpAddr>) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    if peers.iter().any(|ip| matches!(ip, IpAddr::V4(a) if a.is_loopback())) {
        out.extend(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).ok().map(IpNet::V4));
    }
    if peers.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST)) {
        out.push(IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }
    let others: Vec<&IpAddr> = peers.iter().filter(|ip| !ip.is_loopback()).collect();
    if others.len() <= MAX_LISTED_PEERS {
        out.extend(others.iter().map(|ip| IpNet::from(**ip)));
        return out;
    }
    // `others` is sorted, IPv4 before IPv6: each family's first and last bound it.
    for v4 in [true, false] {
        let family: Vec<&&IpAddr> = others.iter().filter(|ip| ip.is_ipv4() == v4).collect();
        if let (Some(first), Some(last)) = (family.first(), family.last()) {
            out.extend(covering(***first, ***last));
        }
    }
    out
}

/// The smallest network that holds both `a` and `b` (of one family).
fn covering(a: IpAddr, b: IpAddr) -> Option<IpNet> {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let len = (u32::from(a) ^ u32::from(b)).leading_zeros() as u8;
            Ipv4Net::new(a, len).ok().map(|n| IpNet::V4(n.trunc()))
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let len = (u128::from(a) ^ u128::from(b)).leading_zeros() as u8;
            Ipv6Net::new(a, len).ok().map(|n| IpNet::V6(n.trunc()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_strings_show_every_hidden_character_and_mean_the_same() {
        for s in [
            "/usr/bin/app",
            "/tmp/\u{202e}gpj.sh",
            "csi\u{9b}2J",
            "tab\tnl\n",
            "q\"b\\s",
            "zw\u{200b}j",
            "del\u{7f}",
        ] {
            let written = q(s);
            assert!(
                !written.chars().any(|c| c.is_control() || hostwatch_proto::v1::invisible(c)),
                "{written:?}"
            );
            let parsed: toml::Table = toml::from_str(&format!("k = {written}")).expect("valid TOML");
            assert_eq!(parsed["k"].as_str(), Some(s), "{written}");
        }
    }
}
