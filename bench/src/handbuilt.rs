//! What weft builds for a network, built by hand with `ip` and `bridge` in a world's hosts: the
//! reference the benchmarks measure weft against. Its devices have names, a VNI and a UDP port of
//! their own, so they never meet weft's, which the agents leave alone.

use weft_integration::{FLOOD_MAC, World, bridge, ip, link};
use weft_proto::names::{WIREGUARD_DEVICE, tunnel_addr};

/// The container's end of a hand-built veth.
pub const HB_IF: &str = "eth0";

/// A hand-built overlay: device names `<prefix>br0` (bridge), `<prefix>vx0` (VXLAN) and
/// `<prefix>v<n>` (host ends of veths), container addresses in `<subnet>.0/24`.
pub struct HandBuilt {
    pub label: &'static str,
    pub prefix: &'static str,
    pub vni: &'static str,
    pub port: &'static str,
    /// The first three octets.
    pub subnet: &'static str,
    /// `proxy` on the VXLAN device and a permanent neighbour entry for each remote container
    /// there, as weft has them.
    pub weft_options: bool,
    /// VXLAN between the hosts' tunnel addresses through weft's WireGuard interface (which must
    /// be up, with its peers: an encrypted network of weft's on both hosts), as weft's encrypted
    /// networks send; else between their underlay addresses.
    pub over_wireguard: bool,
}

impl HandBuilt {
    pub fn bridge(&self) -> String {
        format!("{}br0", self.prefix)
    }

    pub fn vxlan(&self) -> String {
        format!("{}vx0", self.prefix)
    }

    /// The address of the container numbered `n` (the first two are on host1 and host2).
    pub fn addr(&self, n: usize) -> String {
        format!("{}.{n}", self.subnet)
    }

    /// Where host `host`'s VXLAN device sends from and others send to it: its underlay
    /// address (IPv4 or IPv6, as the world's underlay is), or its tunnel address.
    fn vtep(&self, world: &World, host: usize) -> String {
        let underlay = world.vtep(host);
        match self.over_wireguard {
            false => underlay,
            true => tunnel_addr(underlay.parse().expect("an underlay address")).to_string(),
        }
    }

    /// Builds the overlay in host1 and host2, with `mtu` everywhere: on each a bridge and a
    /// VXLAN device without learning on the host's underlay address, a container plugged in
    /// (addresses 1 and 2), static FDB entries for the other container and for flooding (ARP).
    /// Returns the two containers.
    pub fn build(&self, world: &mut World, mtu: u64) -> [String; 2] {
        let mtu = mtu.to_string();
        let (bridge, vxlan) = (self.bridge(), self.vxlan());
        let containers = [1, 2].map(|h| world.container(h, &format!("{}{h}", self.prefix)));
        for h in 1..=2 {
            let host = world.host_ns(h);
            let local = self.vtep(world, h);
            ip(
                &host,
                &["link", "add", &bridge, "mtu", &mtu, "type", "bridge"],
            );
            let mut add_vxlan = vec![
                "link",
                "add",
                &vxlan,
                "mtu",
                &mtu,
                "type",
                "vxlan",
                "id",
                self.vni,
                "dstport",
                self.port,
                "local",
                &local,
                "nolearning",
            ];
            if self.weft_options {
                add_vxlan.push("proxy");
            }
            if self.over_wireguard {
                add_vxlan.extend(["dev", WIREGUARD_DEVICE]);
            }
            ip(&host, &add_vxlan);
            ip(&host, &["link", "set", &vxlan, "master", &bridge, "up"]);
            ip(&host, &["link", "set", &bridge, "up"]);
            self.plug(world, h, &containers[h - 1], 0, &self.addr(h), None, &mtu);
        }
        for h in 1..=2 {
            let other = 3 - h;
            let mac = link(&containers[other - 1], HB_IF)
                .expect("hand-built interface")
                .mac;
            self.learn(world, h, other, &mac, &self.addr(other));
            self.fdb_entry(world, h, "append", FLOOD_MAC, other);
        }
        containers
    }

    /// Plugs namespace `ns` into the overlay on host `host`: a veth `<prefix>v<n>` on the
    /// bridge, its other end [`HB_IF`] in `ns` with `addr`/24 (and `mac`, if given), both up.
    #[allow(clippy::too_many_arguments)]
    pub fn plug(
        &self,
        world: &World,
        host: usize,
        ns: &str,
        n: usize,
        addr: &str,
        mac: Option<&str>,
        mtu: &str,
    ) {
        let host_ns = world.host_ns(host);
        let veth = format!("{}v{n}", self.prefix);
        let mut peer = vec!["name", HB_IF, "mtu", mtu, "netns", ns];
        if let Some(mac) = mac {
            peer.extend(["address", mac]);
        }
        let add = [
            &["link", "add", &veth, "mtu", mtu, "type", "veth", "peer"],
            &peer[..],
        ]
        .concat();
        ip(&host_ns, &add);
        ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", HB_IF]);
        ip(ns, &["link", "set", HB_IF, "up"]);
        ip(
            &host_ns,
            &["link", "set", &veth, "master", &self.bridge(), "up"],
        );
    }

    /// Tells host `host` that the container with `mac` and `addr` is on host `remote`: a
    /// permanent FDB entry (and, with weft's options, a permanent neighbour entry).
    pub fn learn(&self, world: &World, host: usize, remote: usize, mac: &str, addr: &str) {
        let host_ns = world.host_ns(host);
        let vxlan = self.vxlan();
        self.fdb_entry(world, host, "add", mac, remote);
        if self.weft_options {
            ip(
                &host_ns,
                &[
                    "neigh",
                    "add",
                    addr,
                    "lladdr",
                    mac,
                    "dev",
                    &vxlan,
                    "nud",
                    "permanent",
                ],
            );
        }
    }

    /// `bridge fdb VERB MAC dev <vxlan> dst <host remote's VTEP> self permanent` on host
    /// `host` (with `via` the WireGuard interface, where the VTEP is a link-local tunnel
    /// address).
    fn fdb_entry(&self, world: &World, host: usize, verb: &str, mac: &str, remote: usize) {
        let (vxlan, dst) = (self.vxlan(), self.vtep(world, remote));
        let mut entry = vec![
            "fdb",
            verb,
            mac,
            "dev",
            &vxlan,
            "dst",
            &dst,
            "self",
            "permanent",
        ];
        if self.over_wireguard {
            entry.extend(["via", WIREGUARD_DEVICE]);
        }
        bridge(&world.host_ns(host), &entry);
    }

    /// Undoes [`HandBuilt::learn`] on host `host`.
    pub fn forget(&self, world: &World, host: usize, mac: &str, addr: &str) {
        let host_ns = world.host_ns(host);
        let vxlan = self.vxlan();
        bridge(&host_ns, &["fdb", "del", mac, "dev", &vxlan, "self"]);
        if self.weft_options {
            ip(&host_ns, &["neigh", "del", addr, "dev", &vxlan]);
        }
    }
}
