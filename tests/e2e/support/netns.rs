//! Network namespaces a test makes with `ip netns` (root), and a namespace joined to the host by
//! a veth pair whose link the test can cut and mend: removed when dropped.

use super::{Turn, unique};

/// A network namespace deleted when dropped. It holds a shared turn on the machine: `ip` runs
/// to make it and to remove it, programs every other test's agent would see.
pub struct Netns(pub String, Turn);

impl Netns {
    pub fn new() -> Netns {
        let turn = Turn::shared();
        let name = unique("hwns");
        ip(&["netns", "add", &name]);
        let ns = Netns(name, turn);
        ip(&["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = crate::support::tool("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A namespace joined to the host by a veth pair: the host side has `.1`, the namespace `.2`.
pub struct Linked {
    pub ns: Netns,
    pub host_ip: String,
    host_if: String,
}

impl Linked {
    pub fn new() -> Linked {
        let ns = Netns::new();
        // Names and a subnet of this run's own (unique() counts within the run).
        let id = unique("v");
        let n = id.bytes().fold(std::process::id(), |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % 250
            + 1;
        let host_if = format!("hw{id}a");
        let peer = format!("hw{id}b");
        let host_ip = format!("10.213.{n}.1");
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &peer]);
        let linked = Linked { ns, host_ip: host_ip.clone(), host_if: host_if.clone() };
        ip(&["link", "set", &peer, "netns", &linked.ns.0]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["netns", "exec", &linked.ns.0, "ip", "addr", "add", &format!("10.213.{n}.2/30"), "dev", &peer]);
        ip(&["netns", "exec", &linked.ns.0, "ip", "link", "set", &peer, "up"]);
        linked
    }

    /// The link goes down on the host's side: nothing passes until [`Linked::mend`].
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }

    pub fn mend(&self) {
        ip(&["link", "set", &self.host_if, "up"]);
    }
}

/// Runs `ip` (iproute2) with `args`, or panics saying which failed (the tests need root).
fn ip(args: &[&str]) {
    let st = crate::support::tool("ip").args(args).status().expect("run ip (iproute2)");
    assert!(st.success(), "ip {args:?} failed (root needed)");
}

impl Drop for Linked {
    fn drop(&mut self) {
        let _ = crate::support::tool("ip").args(["link", "del", &self.host_if]).status();
    }
}
