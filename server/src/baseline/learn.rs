//! Learning a baseline from what a host runs: a TOML file that explains all of its current state,
//! generalised as a reviewer would write it (one rule per program, no pids).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use hostwatch_proto::v1::Protocol;
use time::OffsetDateTime;

use crate::model::HostState;

/// Per program: the names it ran under and the users it ran as.
type Programs<'a> = BTreeMap<(Option<&'a str>, Option<&'a str>), (BTreeSet<&'a str>, BTreeSet<String>)>;
/// Per (protocol, port): the addresses bound and the owning process names.
type Ports<'a> = BTreeMap<(Protocol, u16), (BTreeSet<String>, BTreeSet<Option<&'a str>>)>;

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
    out
}
