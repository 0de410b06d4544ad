//! weft's DNS service: the names of containers (`attach --name`, or their hostname) in the DNS
//! domain (`weave.local`), served by every agent from the controller's tables to the
//! containers of its host, and every other name forwarded to the host's upstream resolvers.
//!
//! - [`records`] turns the tables into names and addresses, both ways;
//! - [`handler`] answers one query;
//! - [`serve`] serves one listener's UDP and TCP sockets;
//! - [`listeners`] opens one inside each local container's namespace;
//! - [`resolv_conf`] points a container's resolver at it.

pub mod handler;
pub mod listeners;
pub mod records;
pub mod resolv_conf;
pub mod serve;

use std::net::{Ipv4Addr, SocketAddr};

/// Where a container finds the DNS service: loopback inside its own namespace.
pub const LISTEN_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// Where weft's DNS answers inside containers on a network of weft's Docker driver: Docker's
/// own DNS holds 127.0.0.11:53 there (it answers the names of its host's containers and
/// forwards the rest to the container's `--dns` servers, asking from inside the container), so
/// weft's is the `--dns` server.
pub const DOCKER_FORWARD_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 12);
/// The DNS domain when `--dns-domain` does not say.
pub const DEFAULT_DOMAIN: &str = "weave.local";

/// The resolvers a resolv.conf names (port 53), less weft's own address.
pub fn upstreams_of_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(words.next()?)
        })
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .filter(|ip| *ip != LISTEN_ADDR)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_nameserver_lines() {
        let conf = "# generated\nsearch example.com\nnameserver 192.0.2.53\n\
                    nameserver 127.0.0.11\nnameserver 2001:db8::53\nnameserver bogus\n";
        let ups: Vec<String> = upstreams_of_resolv_conf(conf)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(ups, ["192.0.2.53:53", "[2001:db8::53]:53"]);
    }
}
