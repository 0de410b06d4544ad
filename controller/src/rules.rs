//! The rules that keep the controller's tables consistent. Pure: every request is first checked
//! and turned into a list of changes, which the caller persists and only then applies, so a
//! failed write changes nothing.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use weft_proto::addr::parse_cidr;
use weft_proto::tables::{DEFAULT_NETWORK, DEFAULT_VNI, Tables, endpoint_id};
use weft_proto::v1::{Endpoint, EndpointKey, Network, Peer, delta::Change};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("{0}")]
    Invalid(String),
    #[error("peer {0} is not registered with the controller")]
    UnknownPeer(String),
    #[error("unknown network {0}")]
    UnknownNetwork(String),
    #[error("address {ip} already in use by {container} on {peer}")]
    AddressInUse {
        ip: Ipv4Addr,
        container: String,
        peer: String,
    },
    #[error("MAC {mac} already in use by {container} on {peer}")]
    MacInUse {
        mac: String,
        container: String,
        peer: String,
    },
    #[error("{container} is already attached on {peer} with {cidrs}")]
    AlreadyAttached {
        container: String,
        peer: String,
        cidrs: String,
    },
    #[error("{container} is not attached on {peer}")]
    NotAttached { container: String, peer: String },
}

/// Checks requests against the tables and plans the changes they make.
pub trait TableRules {
    fn ensure_default_network(&self, range: Ipv4Network) -> Result<Vec<Change>, TableError>;
    fn register_peer(&self, peer: Peer) -> Result<Vec<Change>, TableError>;
    fn create_endpoint(&self, ep: Endpoint) -> Result<Vec<Change>, TableError>;
    fn delete_endpoints(
        &self,
        peer: &str,
        container_id: &str,
    ) -> Result<(Vec<Endpoint>, Vec<Change>), TableError>;
}

impl TableRules for Tables {
    /// The change that makes the default network exist with `range`, or an error if the stored
    /// one has another subnet (the range of allocated addresses cannot silently move).
    fn ensure_default_network(&self, range: Ipv4Network) -> Result<Vec<Change>, TableError> {
        let subnet = format!("{}/{}", range.network(), range.prefix());
        match self.networks.get(DEFAULT_NETWORK) {
            Some(net) if net.subnet == subnet => Ok(vec![]),
            Some(net) => Err(TableError::Invalid(format!(
                "the stored default network is {} but --ipalloc-range is {subnet}",
                net.subnet
            ))),
            None => Ok(vec![Change::NetworkPut(Network {
                name: DEFAULT_NETWORK.into(),
                subnet,
                vni: DEFAULT_VNI,
            })]),
        }
    }

    /// Adds or updates a peer; nothing changes when it is already known as it is.
    fn register_peer(&self, peer: Peer) -> Result<Vec<Change>, TableError> {
        if peer.name.is_empty() {
            return Err(TableError::Invalid("peer name is empty".into()));
        }
        peer.advertise_addr.parse::<Ipv4Addr>().map_err(|_| {
            TableError::Invalid(format!(
                "peer {}: advertise address \"{}\" is not an IPv4 address",
                peer.name, peer.advertise_addr
            ))
        })?;
        if self.peers.get(&peer.name) == Some(&peer) {
            return Ok(vec![]);
        }
        Ok(vec![Change::PeerPut(peer)])
    }

    /// Records a new endpoint after checking that its peer and network exist, that the
    /// container has no endpoint there yet, and that no other endpoint holds its MAC or addresses.
    fn create_endpoint(&self, ep: Endpoint) -> Result<Vec<Change>, TableError> {
        if !self.peers.contains_key(&ep.peer) {
            return Err(TableError::UnknownPeer(ep.peer));
        }
        if !self.networks.contains_key(&ep.network) {
            return Err(TableError::UnknownNetwork(ep.network));
        }
        if ep.container_id.is_empty() {
            return Err(TableError::Invalid("container id is empty".into()));
        }
        if ep.cidrs.is_empty() {
            return Err(TableError::Invalid("no address given".into()));
        }
        if let Some(held) = self.endpoints.get(&endpoint_id(&ep)) {
            return Err(TableError::AlreadyAttached {
                container: ep.container_id,
                peer: ep.peer,
                cidrs: held.cidrs.join(" "),
            });
        }
        let mut ips = Vec::with_capacity(ep.cidrs.len());
        for cidr in &ep.cidrs {
            let net = parse_cidr(cidr, cidr).map_err(|e| TableError::Invalid(e.to_string()))?;
            if ips.contains(&net.ip()) {
                return Err(TableError::Invalid(format!(
                    "address {} is given twice",
                    net.ip()
                )));
            }
            ips.push(net.ip());
        }
        for other in self.endpoints.values() {
            if other.mac == ep.mac {
                return Err(TableError::MacInUse {
                    mac: ep.mac,
                    container: other.container_id.clone(),
                    peer: other.peer.clone(),
                });
            }
            for cidr in &other.cidrs {
                let held =
                    parse_cidr(cidr, cidr).map_err(|e| TableError::Invalid(e.to_string()))?;
                if ips.contains(&held.ip()) {
                    return Err(TableError::AddressInUse {
                        ip: held.ip(),
                        container: other.container_id.clone(),
                        peer: other.peer.clone(),
                    });
                }
            }
        }
        Ok(vec![Change::EndpointPut(ep)])
    }

    /// Removes every endpoint of a container on a peer; returns them with the changes.
    fn delete_endpoints(
        &self,
        peer: &str,
        container_id: &str,
    ) -> Result<(Vec<Endpoint>, Vec<Change>), TableError> {
        let removed: Vec<Endpoint> = self
            .endpoints
            .values()
            .filter(|ep| ep.peer == peer && ep.container_id == container_id)
            .cloned()
            .collect();
        if removed.is_empty() {
            return Err(TableError::NotAttached {
                container: container_id.into(),
                peer: peer.into(),
            });
        }
        let changes = removed
            .iter()
            .map(|ep| {
                Change::EndpointDeleted(EndpointKey {
                    peer: ep.peer.clone(),
                    container_id: ep.container_id.clone(),
                    network: ep.network.clone(),
                })
            })
            .collect();
        Ok((removed, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, addr: &str) -> Peer {
        Peer {
            name: name.into(),
            advertise_addr: addr.into(),
        }
    }

    fn endpoint(peer: &str, container: &str, mac: &str, cidrs: &[&str]) -> Endpoint {
        Endpoint {
            network: DEFAULT_NETWORK.into(),
            container_id: container.into(),
            mac: mac.into(),
            cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            peer: peer.into(),
            host_ifname: "vethwepl1".into(),
        }
    }

    fn apply_all(t: &mut Tables, changes: Vec<Change>) {
        for c in &changes {
            t.apply(c);
        }
    }

    fn two_hosts() -> Tables {
        let mut t = Tables::default();
        let range = "10.32.0.0/12".parse().unwrap();
        let changes = t.ensure_default_network(range).unwrap();
        apply_all(&mut t, changes);
        let changes = t.register_peer(peer("host1", "198.18.0.1")).unwrap();
        apply_all(&mut t, changes);
        let changes = t.register_peer(peer("host2", "198.18.0.2")).unwrap();
        apply_all(&mut t, changes);
        t
    }

    #[test]
    fn default_network_is_created_once_and_never_moved() {
        let t = two_hosts();
        assert_eq!(t.networks[DEFAULT_NETWORK].subnet, "10.32.0.0/12");
        assert_eq!(t.networks[DEFAULT_NETWORK].vni, DEFAULT_VNI);
        let same = "10.32.0.0/12".parse().unwrap();
        assert_eq!(t.ensure_default_network(same), Ok(vec![]));
        let other = "10.40.0.0/16".parse().unwrap();
        assert_eq!(
            t.ensure_default_network(other).unwrap_err().to_string(),
            "the stored default network is 10.32.0.0/12 but --ipalloc-range is 10.40.0.0/16"
        );
    }

    #[test]
    fn every_change_is_one_revision() {
        let t = two_hosts();
        assert_eq!(t.revision, 3);
        // Registering a peer as it already is changes nothing.
        assert_eq!(t.register_peer(peer("host1", "198.18.0.1")), Ok(vec![]));
        let moved = t.register_peer(peer("host1", "198.18.0.9")).unwrap();
        assert_eq!(moved, vec![Change::PeerPut(peer("host1", "198.18.0.9"))]);
    }

    #[test]
    fn bad_peer_address_is_refused() {
        let t = Tables::default();
        assert_eq!(
            t.register_peer(peer("host1", "nope"))
                .unwrap_err()
                .to_string(),
            "peer host1: advertise address \"nope\" is not an IPv4 address"
        );
    }

    #[test]
    fn an_address_in_use_names_its_holder() {
        let mut t = two_hosts();
        let c1 = endpoint(
            "host1",
            "netns:c1",
            "02:00:00:00:00:01",
            &["192.168.0.2/24"],
        );
        let changes = t.create_endpoint(c1).unwrap();
        apply_all(&mut t, changes);
        let c2 = endpoint(
            "host2",
            "netns:c2",
            "02:00:00:00:00:02",
            &["192.168.0.2/24"],
        );
        assert_eq!(
            t.create_endpoint(c2).unwrap_err().to_string(),
            "address 192.168.0.2 already in use by netns:c1 on host1"
        );
    }

    #[test]
    fn endpoints_are_refused_for_unknown_peers_and_twice_attached_containers() {
        let mut t = two_hosts();
        let stranger = endpoint(
            "host9",
            "netns:c1",
            "02:00:00:00:00:01",
            &["192.168.0.2/24"],
        );
        assert_eq!(
            t.create_endpoint(stranger).unwrap_err().to_string(),
            "peer host9 is not registered with the controller"
        );
        let c1 = endpoint(
            "host1",
            "netns:c1",
            "02:00:00:00:00:01",
            &["192.168.0.2/24"],
        );
        let changes = t.create_endpoint(c1).unwrap();
        apply_all(&mut t, changes);
        let again = endpoint(
            "host1",
            "netns:c1",
            "02:00:00:00:00:03",
            &["192.168.0.4/24"],
        );
        assert_eq!(
            t.create_endpoint(again).unwrap_err().to_string(),
            "netns:c1 is already attached on host1 with 192.168.0.2/24"
        );
        let same_mac = endpoint(
            "host2",
            "netns:c2",
            "02:00:00:00:00:01",
            &["192.168.0.5/24"],
        );
        assert_eq!(
            t.create_endpoint(same_mac).unwrap_err().to_string(),
            "MAC 02:00:00:00:00:01 already in use by netns:c1 on host1"
        );
    }

    #[test]
    fn deleting_releases_the_addresses() {
        let mut t = two_hosts();
        let c1 = endpoint(
            "host1",
            "netns:c1",
            "02:00:00:00:00:01",
            &["192.168.0.2/24"],
        );
        let changes = t.create_endpoint(c1.clone()).unwrap();
        apply_all(&mut t, changes);
        let (removed, changes) = t.delete_endpoints("host1", "netns:c1").unwrap();
        assert_eq!(removed, vec![c1]);
        apply_all(&mut t, changes);
        assert!(t.endpoints.is_empty());
        assert_eq!(
            t.delete_endpoints("host1", "netns:c1")
                .unwrap_err()
                .to_string(),
            "netns:c1 is not attached on host1"
        );
        let c2 = endpoint(
            "host2",
            "netns:c2",
            "02:00:00:00:00:02",
            &["192.168.0.2/24"],
        );
        assert!(t.create_endpoint(c2).is_ok());
    }
}
