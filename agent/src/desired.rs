//! From the controller's tables to the kernel state this host must hold, and the difference
//! between that and what the kernel holds now. Pure functions: no kernel needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use weft_proto::names::Mac;
use weft_proto::tables::{DEFAULT_NETWORK, Tables};

/// A permanent entry in a VXLAN device's FDB: frames for `mac` go to the VTEP `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dst {}", self.mac, self.dst)
    }
}

/// The FDB of `network`'s VXLAN device on peer `me`: one entry per remote endpoint's MAC and one
/// flood entry per remote peer that has endpoints in the network.
pub fn vxlan_fdb(tables: &Tables, me: &str, network: &str) -> BTreeSet<FdbEntry> {
    let mut fdb = BTreeSet::new();
    for ep in tables.endpoints.values() {
        if ep.network != network || ep.peer == me {
            continue;
        }
        // An endpoint whose peer or MAC we cannot read cannot be reached; skip it, not the rest.
        let Some(dst) = tables
            .peers
            .get(&ep.peer)
            .and_then(|p| p.advertise_addr.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let Ok(mac) = ep.mac.parse::<Mac>() else {
            continue;
        };
        fdb.insert(FdbEntry { mac, dst });
        fdb.insert(FdbEntry {
            mac: Mac::ZERO,
            dst,
        });
    }
    fdb
}

/// The networks this host needs a bridge and VXLAN device for, by VNI, each with the FDB its
/// VXLAN device must hold: the default network always, others while a local container is in it.
pub fn host_networks(tables: &Tables, me: &str) -> BTreeMap<u32, BTreeSet<FdbEntry>> {
    tables
        .networks
        .values()
        .filter(|net| {
            net.name == DEFAULT_NETWORK
                || tables
                    .endpoints
                    .values()
                    .any(|ep| ep.peer == me && ep.network == net.name)
        })
        .map(|net| (net.vni, vxlan_fdb(tables, me, &net.name)))
        .collect()
}

/// What to add and what to remove to turn `current` into `desired`; entries in both are left
/// alone, so a kernel that is already right sees no request at all.
pub fn diff<T: Ord + Clone>(current: &BTreeSet<T>, desired: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    let add = desired.difference(current).cloned().collect();
    let remove = current.difference(desired).cloned().collect();
    (add, remove)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::v1::{Endpoint, Network, Peer};

    fn tables(endpoints: &[(&str, &str, &str)]) -> Tables {
        let mut t = Tables::default();
        for (name, addr) in [
            ("host1", "198.18.0.1"),
            ("host2", "198.18.0.2"),
            ("host3", "198.18.0.3"),
        ] {
            t.peers.insert(
                name.into(),
                Peer {
                    name: name.into(),
                    advertise_addr: addr.into(),
                },
            );
        }
        for (i, (peer, container, mac)) in endpoints.iter().enumerate() {
            let ep = Endpoint {
                network: DEFAULT_NETWORK.into(),
                container_id: container.to_string(),
                mac: mac.to_string(),
                cidrs: vec![format!("192.168.0.{}/24", i + 2)],
                peer: peer.to_string(),
                host_ifname: String::new(),
                container_ifname: "ethwe".into(),
            };
            t.endpoints.insert(weft_proto::tables::endpoint_id(&ep), ep);
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
        let fdb = vxlan_fdb(&t, "host1", DEFAULT_NETWORK);
        let want: BTreeSet<_> = [
            entry("02:00:00:00:00:02", "198.18.0.2"),
            entry("02:00:00:00:00:03", "198.18.0.2"),
            entry("02:00:00:00:00:04", "198.18.0.3"),
            entry("00:00:00:00:00:00", "198.18.0.2"),
            entry("00:00:00:00:00:00", "198.18.0.3"),
        ]
        .into();
        assert_eq!(fdb, want);
        // The local endpoint never appears; a network with nothing remote needs nothing.
        assert!(vxlan_fdb(&t, "host1", "other").is_empty());
    }

    #[test]
    fn peers_without_endpoints_and_unknown_peers_get_nothing() {
        let t = tables(&[
            ("host1", "netns:a", "02:00:00:00:00:01"),
            ("host9", "netns:x", "02:00:00:00:00:09"),
        ]);
        assert!(vxlan_fdb(&t, "host1", DEFAULT_NETWORK).is_empty());
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
        for (name, vni) in [(DEFAULT_NETWORK, 1), ("blue", 2), ("red", 3)] {
            t.networks.insert(
                name.into(),
                Network {
                    name: name.into(),
                    subnet: String::new(),
                    vni,
                },
            );
        }
        let mut blue = t.endpoints.values().next().unwrap().clone();
        blue.network = "blue".into();
        blue.mac = "02:00:00:00:00:0b".into();
        t.endpoints
            .insert(weft_proto::tables::endpoint_id(&blue), blue);
        let on_host1 = host_networks(&t, "host1");
        assert_eq!(on_host1.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            on_host1[&1],
            [
                entry("00:00:00:00:00:00", "198.18.0.2"),
                entry("02:00:00:00:00:02", "198.18.0.2")
            ]
            .into()
        );
        assert!(on_host1[&2].is_empty(), "blue has nothing remote");
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
