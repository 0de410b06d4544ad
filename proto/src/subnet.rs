//! Address arithmetic of a network's subnet that every party agrees on: which prefixes a network
//! may have, which addresses are never a container's, how many are left for containers. Both
//! families, with addresses as 128-bit numbers: an IPv6 /64 is counted, never walked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// Shortest and longest prefix a network may have. IPv4: /8 is already 16M addresses, and /30
/// the last size with an address left for a container. IPv6: /48 is a site's whole allocation,
/// and /126 the last size with one left.
pub fn prefix_range(subnet: IpNetwork) -> std::ops::RangeInclusive<u8> {
    match subnet {
        IpNetwork::V4(_) => 8..=30,
        IpNetwork::V6(_) => 48..=126,
    }
}

/// An address as a number, for arithmetic across both families.
pub fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => v6.into(),
    }
}

/// The address of `subnet`'s family that is `n`, as [`number`] made it.
pub fn address(subnet: IpNetwork, n: u128) -> IpAddr {
    match subnet {
        IpNetwork::V4(_) => Ipv4Addr::from(u32::try_from(n).expect("an IPv4 number")).into(),
        IpNetwork::V6(_) => Ipv6Addr::from(n).into(),
    }
}

/// The address the host takes on the network's bridge (`weftctl expose`): the first one.
pub fn gateway(subnet: IpNetwork) -> IpAddr {
    address(subnet, number(subnet.network()) + 1)
}

/// The last address of the subnet.
fn last(subnet: IpNetwork) -> u128 {
    match subnet {
        IpNetwork::V4(net) => u32::from(net.broadcast()).into(),
        IpNetwork::V6(net) => u128::from(net.network()) | (u128::MAX >> net.prefix()),
    }
}

/// Why an address is not a container's, if it is not. IPv6 has no broadcast: its network
/// address is the subnet routers' anycast address.
pub fn reserved_reason(subnet: IpNetwork, ip: IpAddr) -> Option<&'static str> {
    if ip == subnet.network() {
        Some("is the network address")
    } else if subnet.is_ipv4() && number(ip) == last(subnet) {
        Some("is the broadcast address")
    } else if ip == gateway(subnet) {
        Some("is the gateway address, kept for the host")
    } else {
        None
    }
}

/// How many addresses of the subnet containers can have: all but the network address, the
/// gateway and (IPv4) the broadcast address.
pub fn pool_size(subnet: IpNetwork) -> u128 {
    let (first, last) = pool_bounds(subnet);
    (last + 1).saturating_sub(first)
}

/// The first and last address containers can have, as numbers.
pub fn pool_bounds(subnet: IpNetwork) -> (u128, u128) {
    let broadcast = u128::from(subnet.is_ipv4());
    (
        number(gateway(subnet)) + 1,
        last(subnet).saturating_sub(broadcast),
    )
}

/// The canonical form of a subnet: its network address and prefix.
pub fn canonical(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).expect("the prefix of a network")
}

/// An address count as weft shows it: decimal below 2^53 (every IPv4 count, and what a JSON
/// number holds exactly), else exactly as a power of two less a remainder, `2^64-2`, which an
/// IPv6 pool's count always is (its size is a power of two).
pub fn count_text(n: u128) -> String {
    if n < 1 << 53 {
        return n.to_string();
    }
    let bits = 128 - (n - 1).leading_zeros();
    match 1u128.checked_shl(bits).map(|p| p - n) {
        Some(0) => format!("2^{bits}"),
        Some(rest) => format!("2^{bits}-{rest}"),
        None => format!("2^128-{}", u128::MAX - n + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserved_addresses_and_pool() {
        let net4 = net("192.168.0.0/24");
        assert_eq!(gateway(net4), ip("192.168.0.1"));
        assert_eq!(pool_size(net4), 253);
        let (first, last) = pool_bounds(net4);
        assert_eq!(address(net4, first), ip("192.168.0.2"));
        assert_eq!(address(net4, last), ip("192.168.0.254"));
        assert_eq!(
            reserved_reason(net4, ip("192.168.0.0")),
            Some("is the network address")
        );
        assert_eq!(
            reserved_reason(net4, ip("192.168.0.255")),
            Some("is the broadcast address")
        );
        assert!(reserved_reason(net4, ip("192.168.0.1")).is_some());
        assert_eq!(reserved_reason(net4, ip("192.168.0.2")), None);
        let tiny = net("10.0.0.4/30");
        assert_eq!(pool_size(tiny), 1);
        assert_eq!(pool_bounds(tiny).0, pool_bounds(tiny).1);
        assert_eq!(pool_size(net("10.32.0.0/12")), 1_048_573);
    }

    #[test]
    fn ipv6_pools_have_no_broadcast_and_are_counted_not_walked() {
        let net6 = net("fd00:9::/64");
        assert_eq!(gateway(net6), ip("fd00:9::1"));
        assert_eq!(pool_size(net6), (1 << 64) - 2);
        let (first, last) = pool_bounds(net6);
        assert_eq!(address(net6, first), ip("fd00:9::2"));
        assert_eq!(address(net6, last), ip("fd00:9::ffff:ffff:ffff:ffff"));
        assert_eq!(
            reserved_reason(net6, ip("fd00:9::ffff:ffff:ffff:ffff")),
            None
        );
        assert_eq!(
            reserved_reason(net6, ip("fd00:9::")),
            Some("is the network address")
        );
        assert_eq!(pool_size(net("fd00:9::/126")), 2);
        assert_eq!(pool_size(net("2001:db8::/48")), (1 << 80) - 2);
    }

    #[test]
    fn counts_read_exactly() {
        assert_eq!(count_text(253), "253");
        assert_eq!(count_text((1 << 64) - 2), "2^64-2");
        assert_eq!(count_text((1 << 64) - 7), "2^64-7");
        assert_eq!(count_text(1 << 80), "2^80");
        assert_eq!(count_text((1 << 53) - 1), "9007199254740991");
        assert_eq!(count_text(u128::MAX), "2^128-1");
    }
}
