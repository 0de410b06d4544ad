//! From the controller's tables to the kernel state this host must hold, and the difference
//! between that and what the kernel holds now. Pure functions: no kernel needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use weft_proto::names::{Mac, probe_addr, probe_mac, tunnel_addr};
use weft_proto::rows::{EndpointRow, NetworkRow, PeerRow};
use weft_proto::tables::Tables;
use weft_proto::wireguard::WgKey;

use crate::wireguard::PeerSpec;

mod networks;

pub use networks::{HostNetworks, Touched};

/// A permanent entry in a VXLAN device's FDB: frames for `mac` go to the VTEP `dst` (a host's
/// advertise address, or its tunnel address on an encrypted network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: IpAddr,
}

/// A network as its devices on a host see it: its VNI, and whether its frames go through
/// WireGuard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub vni: u32,
    pub encrypted: bool,
}

impl Segment {
    pub fn of(net: &NetworkRow) -> Segment {
        Segment {
            vni: net.vni,
            encrypted: net.encrypted,
        }
    }
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dst {}", self.mac, self.dst)
    }
}

/// A permanent neighbour entry on a VXLAN device: `ip` is at `mac`. On a network's device it is
/// an ARP answer the device gives itself (`proxy`): answering locally spares every other host a
/// broadcast for each container that looks up a remote one. On the probe device it is a peer's
/// probe address, so a probe needs no neighbour discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Mac,
}

/// What one network's devices on this host must be and hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkState {
    /// One entry per remote endpoint's MAC and one flood entry per remote peer with endpoints.
    pub fdb: BTreeSet<FdbEntry>,
    /// One per address of a remote endpoint.
    pub neighbours: BTreeSet<Neighbour>,
    /// Host-side veths of local containers, which belong on the bridge.
    pub ports: BTreeSet<String>,
    /// The host's own place on the bridge (`weftctl expose`): the bridge's MAC and addresses.
    pub exposed: Option<Exposed>,
    /// Its VXLAN device sends through WireGuard, to tunnel addresses.
    pub encrypted: bool,
}

impl NetworkState {
    /// The network of VNI `vni` with this state.
    pub fn segment(&self, vni: u32) -> Segment {
        Segment {
            vni,
            encrypted: self.encrypted,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    pub mac: Mac,
    pub cidrs: BTreeSet<IpNetwork>,
}

impl Exposed {
    /// The host's place on a bridge as its endpoint in the tables says.
    pub fn of(ep: &EndpointRow) -> Exposed {
        Exposed {
            mac: ep.mac,
            cidrs: ep.cidrs.iter().copied().collect(),
        }
    }
}

/// Where a peer's VXLAN frames go: its advertise address, or on an encrypted network its
/// tunnel address, if it has WireGuard.
pub(crate) fn vtep(peer: &PeerRow, encrypted: bool) -> Option<IpAddr> {
    match encrypted {
        false => Some(peer.addr),
        true => peer.wireguard.map(|_| tunnel_addr(peer.addr).into()),
    }
}

/// The WireGuard peers this host needs, by public key: every remote host its encrypted networks
/// send to (`networks` as [`HostNetworks`] derives them). None when this host is on no encrypted
/// network: it needs no WireGuard interface.
pub fn wireguard_peers(
    tables: &Tables,
    networks: &BTreeMap<u32, NetworkState>,
) -> Option<BTreeMap<WgKey, PeerSpec>> {
    let encrypted: Vec<&NetworkState> = networks.values().filter(|n| n.encrypted).collect();
    if encrypted.is_empty() {
        return None;
    }
    let tunnels: BTreeSet<IpAddr> = encrypted
        .iter()
        .flat_map(|n| n.fdb.iter().map(|e| e.dst))
        .collect();
    let peers = tables.peers.values().filter_map(|p| {
        let wg = p.wireguard?;
        let tunnel = tunnel_addr(p.addr);
        tunnels.contains(&tunnel.into()).then_some((
            wg.key,
            PeerSpec {
                endpoint: SocketAddr::new(p.addr, wg.port),
                tunnel,
            },
        ))
    });
    Some(peers.collect())
}

/// Every remote peer's VTEP, by name: the peers this host probes, whether or not they share a
/// network with it, so a path is known to work before the first container needs it.
pub fn probe_peers(tables: &Tables, me: &str) -> BTreeMap<String, IpAddr> {
    tables
        .peers
        .values()
        .filter(|p| p.name != me)
        .map(|p| (p.name.clone(), p.addr))
        .collect()
}

/// What the probe device must hold: for every remote peer, its probe MAC at its VTEP and its
/// probe address at that MAC. No flood entry: nothing on the probe device is multicast, so
/// neighbour discovery, router solicitations and MLD reports go nowhere.
pub fn probe_state(tables: &Tables, me: &str) -> NetworkState {
    let mut state = NetworkState::default();
    for vtep in probe_peers(tables, me).into_values() {
        let mac = probe_mac(vtep);
        state.fdb.insert(FdbEntry { mac, dst: vtep });
        state.neighbours.insert(Neighbour {
            ip: probe_addr(vtep).into(),
            mac,
        });
    }
    state
}

/// What to add and what to remove to turn `current` into `desired`; entries in both are left
/// alone, so a kernel that is already right sees no request at all.
pub fn diff<T: Ord + Clone>(current: &BTreeSet<T>, desired: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    let add = desired.difference(current).cloned().collect();
    let remove = current.difference(desired).cloned().collect();
    (add, remove)
}

/// What to add and what to remove, among `keys` alone, to turn `current` into `desired`: when
/// only those can differ.
pub fn diff_among<T: Ord + Clone>(
    current: &BTreeSet<T>,
    desired: &BTreeSet<T>,
    keys: &BTreeSet<T>,
) -> (Vec<T>, Vec<T>) {
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for key in keys {
        match (desired.contains(key), current.contains(key)) {
            (true, false) => add.push(key.clone()),
            (false, true) => remove.push(key.clone()),
            _ => {}
        }
    }
    (add, remove)
}

#[cfg(test)]
mod tests {
    use weft_proto::rows::{NetworkRow, PeerRow};
    use weft_proto::tables::{DEFAULT_NETWORK, EndpointId};

    use super::*;

    fn host_networks(tables: &Tables, me: &str) -> BTreeMap<u32, NetworkState> {
        HostNetworks::of(tables, me).networks
    }

    fn network(name: &str, subnet: &str, vni: u32) -> NetworkRow {
        NetworkRow {
            name: name.into(),
            subnets: vec![subnet.parse().unwrap()],
            vni,
            encrypted: false,
        }
    }

    fn tables(endpoints: &[(&str, &str, &str)]) -> Tables {
        let mut t = Tables::default();
        for (name, addr) in [
            ("host1", "198.18.0.1"),
            ("host2", "198.18.0.2"),
            ("host3", "198.18.0.3"),
        ] {
            let addr = addr.parse().unwrap();
            t.peers.insert(
                name.into(),
                PeerRow {
                    name: name.into(),
                    addr,
                    wireguard: None,
                },
            );
        }
        let default = network(DEFAULT_NETWORK, "192.168.0.0/24", 1);
        t.networks.insert(DEFAULT_NETWORK.into(), default);
        for (i, (peer, container, mac)) in endpoints.iter().enumerate() {
            let ep = EndpointRow {
                id: EndpointId::new(peer, DEFAULT_NETWORK, container),
                mac: mac.parse().unwrap(),
                cidrs: vec![format!("192.168.0.{}/24", i + 2).parse().unwrap()],
                host_ifname: format!("vethwepl{i}"),
                container_ifname: "ethwe".into(),
                dns_name: String::new(),
            };
            t.endpoints.insert(ep.id.clone(), ep);
        }
        t
    }

    fn entry(mac: &str, dst: &str) -> FdbEntry {
        FdbEntry {
            mac: mac.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    #[test]
    fn remote_endpoints_get_an_entry_and_their_peers_one_flood_entry() {
        let t = tables(&[
            ("host1", "netns:a", "02:00:00:00:00:01"),
            ("host2", "netns:b", "02:00:00:00:00:02"),
            ("host2", "netns:c", "02:00:00:00:00:03"),
            ("host3", "netns:d", "02:00:00:00:00:04"),
        ]);
        let fdb = host_networks(&t, "host1").remove(&1).unwrap().fdb;
        let want: BTreeSet<_> = [
            entry("02:00:00:00:00:02", "198.18.0.2"),
            entry("02:00:00:00:00:03", "198.18.0.2"),
            entry("02:00:00:00:00:04", "198.18.0.3"),
            entry("00:00:00:00:00:00", "198.18.0.2"),
            entry("00:00:00:00:00:00", "198.18.0.3"),
        ]
        .into();
        assert_eq!(fdb, want);
    }

    #[test]
    fn remote_addresses_are_answered_locally() {
        let t = tables(&[
            ("host1", "netns:a", "02:00:00:00:00:01"),
            ("host2", "netns:b", "02:00:00:00:00:02"),
        ]);
        let neighbours = host_networks(&t, "host1").remove(&1).unwrap().neighbours;
        let want: BTreeSet<_> = [Neighbour {
            ip: "192.168.0.3".parse().unwrap(),
            mac: "02:00:00:00:00:02".parse().unwrap(),
        }]
        .into();
        assert_eq!(
            neighbours, want,
            "only the remote endpoint, by each of its addresses"
        );
    }

    #[test]
    fn peers_without_endpoints_and_unknown_peers_get_nothing() {
        let t = tables(&[
            ("host1", "netns:a", "02:00:00:00:00:01"),
            ("host9", "netns:x", "02:00:00:00:00:09"),
        ]);
        let state = &host_networks(&t, "host1")[&1];
        assert!(state.fdb.is_empty() && state.neighbours.is_empty());
        assert_eq!(
            state.ports,
            ["vethwepl0".to_string()].into(),
            "the local veth"
        );
    }

    #[test]
    fn every_remote_peer_is_probed_at_its_own_probe_address() {
        let t = tables(&[("host2", "netns:b", "02:00:00:00:00:02")]);
        let state = probe_state(&t, "host1");
        assert_eq!(
            state.fdb,
            [
                entry("0e:77:c6:12:00:02", "198.18.0.2"),
                entry("0e:77:c6:12:00:03", "198.18.0.3")
            ]
            .into(),
            "host3 has no endpoint and is probed all the same; host1 is not its own peer"
        );
        let addrs: Vec<String> = state.neighbours.iter().map(|n| n.ip.to_string()).collect();
        assert_eq!(addrs, ["fd77:6566:7400::c612:2", "fd77:6566:7400::c612:3"]);
        assert!(state.ports.is_empty() && state.exposed.is_none());
    }

    #[test]
    fn an_encrypted_network_sends_to_the_tunnel_addresses_of_peers_with_wireguard() {
        let mut t = tables(&[
            ("host1", "netns:a", "02:00:00:00:00:01"),
            ("host2", "netns:b", "02:00:00:00:00:02"),
            ("host3", "netns:c", "02:00:00:00:00:03"),
        ]);
        assert_eq!(
            wireguard_peers(&t, &host_networks(&t, "host1")),
            None,
            "no encrypted network, no WireGuard"
        );
        t.networks.get_mut(DEFAULT_NETWORK).unwrap().encrypted = true;
        let key = WgKey([7; 32]);
        t.peers.get_mut("host2").unwrap().wireguard =
            Some(weft_proto::rows::WgPeer { key, port: 6787 });
        let networks = host_networks(&t, "host1");
        let tunnel2 = tunnel_addr("198.18.0.2".parse().unwrap());
        assert_eq!(tunnel2.to_string(), "fe80::7765:6674:c612:2");
        let want: BTreeSet<_> = ["02:00:00:00:00:02", "00:00:00:00:00:00"]
            .map(|mac| FdbEntry {
                mac: mac.parse().unwrap(),
                dst: tunnel2.into(),
            })
            .into();
        assert!(networks[&1].encrypted);
        assert_eq!(
            networks[&1].fdb, want,
            "host3 has no WireGuard key: its endpoint cannot be reached encrypted"
        );
        let peers = wireguard_peers(&t, &networks).unwrap();
        assert_eq!(
            peers,
            [(
                key,
                PeerSpec {
                    endpoint: "198.18.0.2:6787".parse().unwrap(),
                    tunnel: tunnel2
                }
            )]
            .into()
        );
    }

    #[test]
    fn diff_touches_only_what_differs() {
        let current: BTreeSet<_> = [
            entry("02:00:00:00:00:02", "198.18.0.2"),
            entry("02:00:00:00:00:05", "198.18.0.3"),
        ]
        .into();
        let desired: BTreeSet<_> = [
            entry("02:00:00:00:00:02", "198.18.0.2"),
            entry("02:00:00:00:00:03", "198.18.0.2"),
        ]
        .into();
        let (add, remove) = diff(&current, &desired);
        assert_eq!(add, vec![entry("02:00:00:00:00:03", "198.18.0.2")]);
        assert_eq!(remove, vec![entry("02:00:00:00:00:05", "198.18.0.3")]);
        assert_eq!(diff(&desired, &desired), (vec![], vec![]));
    }

    #[test]
    fn devices_exist_for_the_default_network_and_networks_with_local_containers() {
        let mut t = tables(&[
            ("host1", "netns:a", "02:00:00:00:00:01"),
            ("host2", "netns:b", "02:00:00:00:00:02"),
        ]);
        for (name, subnet, vni) in [
            (DEFAULT_NETWORK, "192.168.0.0/24", 1),
            ("blue", "10.9.0.0/24", 2),
            ("red", "10.8.0.0/24", 3),
        ] {
            t.networks.insert(name.into(), network(name, subnet, vni));
        }
        let mut blue = t.endpoints.values().next().unwrap().clone();
        blue.id.network = "blue".into();
        blue.mac = "02:00:00:00:00:0b".parse().unwrap();
        t.endpoints.insert(blue.id.clone(), blue);
        let on_host1 = host_networks(&t, "host1");
        assert_eq!(on_host1.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            on_host1[&1].fdb,
            [
                entry("00:00:00:00:00:00", "198.18.0.2"),
                entry("02:00:00:00:00:02", "198.18.0.2")
            ]
            .into()
        );
        assert!(on_host1[&2].fdb.is_empty(), "blue has nothing remote");
        assert_eq!(on_host1[&2].ports, ["vethwepl0".to_string()].into());
        // host2 has no container in blue, so no blue devices, although blue has one elsewhere.
        assert_eq!(
            host_networks(&t, "host2")
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [1]
        );
    }
}
