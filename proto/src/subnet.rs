//! Address arithmetic of a network's subnet that every party agrees on: which prefixes a network
//! may have, which addresses are never a container's, how many are left for containers.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// Shortest and longest prefix a network may have: /8 is already 16M addresses, and /30 the
/// last size with an address left for a container.
pub const PREFIX_RANGE: std::ops::RangeInclusive<u8> = 8..=30;

/// The address the host takes on the network's bridge (`weftctl expose`): the first one.
pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Why an address is not a container's, if it is not.
pub fn reserved_reason(subnet: Ipv4Network, ip: Ipv4Addr) -> Option<&'static str> {
    if ip == subnet.network() {
        Some("is the network address")
    } else if ip == subnet.broadcast() {
        Some("is the broadcast address")
    } else if ip == gateway(subnet) {
        Some("is the gateway address, kept for the host")
    } else {
        None
    }
}

/// How many addresses of the subnet containers can have: all but network, gateway, broadcast.
pub fn pool_size(subnet: Ipv4Network) -> u64 {
    (1u64 << (32 - u32::from(subnet.prefix()))).saturating_sub(3)
}

/// The first and last address containers can have.
pub fn pool_bounds(subnet: Ipv4Network) -> (u32, u32) {
    (
        u32::from(gateway(subnet)) + 1,
        u32::from(subnet.broadcast()) - 1,
    )
}

/// The canonical form of a subnet: its network address and prefix.
pub fn canonical(net: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(net.network(), net.prefix()).expect("the prefix of a network")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_addresses_and_pool() {
        let net: Ipv4Network = "192.168.0.0/24".parse().unwrap();
        assert_eq!(gateway(net), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(pool_size(net), 253);
        let (first, last) = pool_bounds(net);
        assert_eq!(Ipv4Addr::from(first), Ipv4Addr::new(192, 168, 0, 2));
        assert_eq!(Ipv4Addr::from(last), Ipv4Addr::new(192, 168, 0, 254));
        assert_eq!(
            reserved_reason(net, "192.168.0.0".parse().unwrap()),
            Some("is the network address")
        );
        assert_eq!(
            reserved_reason(net, "192.168.0.255".parse().unwrap()),
            Some("is the broadcast address")
        );
        assert!(reserved_reason(net, "192.168.0.1".parse().unwrap()).is_some());
        assert_eq!(reserved_reason(net, "192.168.0.2".parse().unwrap()), None);
        let tiny: Ipv4Network = "10.0.0.4/30".parse().unwrap();
        assert_eq!(pool_size(tiny), 1);
        assert_eq!(
            pool_bounds(tiny),
            (
                u32::from(Ipv4Addr::new(10, 0, 0, 6)),
                u32::from(Ipv4Addr::new(10, 0, 0, 6))
            )
        );
        assert_eq!(pool_size("10.32.0.0/12".parse().unwrap()), 1_048_573);
    }
}
