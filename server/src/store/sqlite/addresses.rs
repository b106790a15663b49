//! Addresses as keys an index can range over: every IP address as the 16 bytes of its IPv6 form
//! (IPv4 as `::ffff:a.b.c.d`, so that a dual-stack socket's mapped address and the plain IPv4 one
//! are the same key), so that a CIDR block is one contiguous range, `first..=last`.
//!
//! The same functions are SQL functions on every connection of the store, for migrations and for
//! analysts: `ip_key(text)`, `cidr_first(text)`, `cidr_last(text)`
//! (`WHERE remote_key BETWEEN cidr_first('10.0.0.0/8') AND cidr_last('10.0.0.0/8')` reads the
//! index).

use std::net::IpAddr;

use ipnet::IpNet;
use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;

/// The key of an address.
pub fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The first and last keys of a block.
pub fn net_range(net: &IpNet) -> ([u8; 16], [u8; 16]) {
    (ip_key(net.network()), ip_key(net.broadcast()))
}

/// Registers `ip_key`, `cidr_first` and `cidr_last` on `conn`.
pub(super) fn register(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    // Text that is not an address has no key (NULL): such a row matches no block.
    conn.create_scalar_function("ip_key", 1, flags, |ctx| {
        let s: Option<String> = ctx.get(0)?;
        Ok(s.and_then(|s| s.parse::<IpAddr>().ok()).map(|ip| ip_key(ip).to_vec()))
    })?;
    let bound = |ctx: &rusqlite::functions::Context<'_>, last: bool| {
        let s: String = ctx.get(0)?;
        let net = crate::store::parse_net(&s).map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
        let (first, end) = net_range(&net);
        Ok((if last { end } else { first }).to_vec())
    };
    conn.create_scalar_function("cidr_first", 1, flags, move |ctx| bound(ctx, false))?;
    conn.create_scalar_function("cidr_last", 1, flags, move |ctx| bound(ctx, true))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::parse_net;

    #[test]
    fn a_block_is_one_range_of_keys_and_mapped_addresses_are_their_ipv4() {
        let net = parse_net("10.0.0.0/8").unwrap();
        let (first, last) = net_range(&net);
        let key = |s: &str| ip_key(s.parse().unwrap());
        for inside in ["10.0.0.0", "10.1.2.3", "10.255.255.255", "::ffff:10.9.9.9"] {
            assert!(first <= key(inside) && key(inside) <= last, "{inside}");
        }
        for outside in ["9.255.255.255", "11.0.0.0", "::a00:1", "fe80::1", "192.168.1.1"] {
            assert!(!(first <= key(outside) && key(outside) <= last), "{outside}");
        }
        let (f6, l6) = net_range(&parse_net("2001:db8::/32").unwrap());
        assert!(f6 <= key("2001:db8:ffff::1") && key("2001:db8:ffff::1") <= l6);
        assert!(key("2001:db9::") > l6);
        // One address is its own block; host bits are dropped.
        assert_eq!(net_range(&parse_net("203.0.113.7").unwrap()), (key("203.0.113.7"), key("203.0.113.7")));
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_net("10.0.0.0/33").unwrap_err().contains("CIDR"));
        assert!(parse_net("example.com").is_err());
    }
}
