//! The tables every party shares: peers, networks, endpoints and DNS records at a revision. The controller
//! changes them; agents follow them through a snapshot and then one [`Change`] per revision.

use std::collections::BTreeMap;
use std::fmt;

use crate::v1::{DnsRecord, Endpoint, EndpointKey, Network, Peer, Snapshot, delta::Change};

/// The network every host has, whose subnet is the controller's `--ipalloc-range`.
pub const DEFAULT_NETWORK: &str = "default";
/// VNI of the default network.
pub const DEFAULT_VNI: u32 = 1;

/// One container's interface in one network on one host: what an endpoint is known by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId {
    pub peer: String,
    pub network: String,
    pub container: String,
}

impl EndpointId {
    pub fn new(peer: &str, network: &str, container: &str) -> EndpointId {
        EndpointId {
            peer: peer.to_string(),
            network: network.to_string(),
            container: container.to_string(),
        }
    }

    pub fn of(ep: &Endpoint) -> EndpointId {
        EndpointId {
            peer: ep.peer.clone(),
            network: ep.network.clone(),
            container: ep.container_id.clone(),
        }
    }

    pub fn of_key(key: &EndpointKey) -> EndpointId {
        EndpointId {
            peer: key.peer.clone(),
            network: key.network.clone(),
            container: key.container_id.clone(),
        }
    }

    /// The least id on `peer`: where its endpoints begin in an ordered map.
    fn first_of(peer: &str) -> EndpointId {
        EndpointId::new(peer, "", "")
    }

    /// The wire form, as a deletion names it.
    pub fn key(&self) -> EndpointKey {
        EndpointKey {
            peer: self.peer.clone(),
            network: self.network.clone(),
            container_id: self.container.clone(),
        }
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "endpoint of {} in network {} on {}",
            self.container, self.network, self.peer
        )
    }
}

/// (name, ip): one DNS record added with `weftctl dns-add`.
pub type DnsRecordId = (String, String);

pub fn dns_record_id(r: &DnsRecord) -> DnsRecordId {
    (r.name.clone(), r.ip.clone())
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tables {
    pub revision: u64,
    /// The identity of the controller's store these tables come from, made once when the store
    /// was created (empty: a controller from before identities).
    pub store_id: String,
    pub peers: BTreeMap<String, Peer>,
    pub networks: BTreeMap<String, Network>,
    pub endpoints: BTreeMap<EndpointId, Endpoint>,
    pub dns_records: BTreeMap<DnsRecordId, DnsRecord>,
}

impl Tables {
    /// The tables a snapshot of store `store_id` taken at `revision` describes.
    pub fn from_snapshot(revision: u64, store_id: String, snapshot: Snapshot) -> Self {
        Tables {
            revision,
            store_id,
            peers: snapshot
                .peers
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
            networks: snapshot
                .networks
                .into_iter()
                .map(|n| (n.name.clone(), n))
                .collect(),
            endpoints: snapshot
                .endpoints
                .into_iter()
                .map(|e| (EndpointId::of(&e), e))
                .collect(),
            dns_records: snapshot
                .dns_records
                .into_iter()
                .map(|r| (dns_record_id(&r), r))
                .collect(),
        }
    }

    /// The change that puts back what `change` would replace: applied right after `change`, it
    /// restores these tables' contents (not their revision). For undoing changes that could
    /// not be persisted.
    pub fn undo(&self, change: &Change) -> Change {
        match change {
            Change::PeerPut(Peer { name, .. }) | Change::PeerDeleted(name) => {
                match self.peers.get(name) {
                    Some(old) => Change::PeerPut(old.clone()),
                    None => Change::PeerDeleted(name.clone()),
                }
            }
            Change::NetworkPut(Network { name, .. }) | Change::NetworkDeleted(name) => {
                match self.networks.get(name) {
                    Some(old) => Change::NetworkPut(old.clone()),
                    None => Change::NetworkDeleted(name.clone()),
                }
            }
            Change::EndpointPut(ep) => self.undo_endpoint(EndpointId::of(ep)),
            Change::EndpointDeleted(key) => self.undo_endpoint(EndpointId::of_key(key)),
            Change::DnsRecordPut(r) | Change::DnsRecordDeleted(r) => {
                match self.dns_records.get(&dns_record_id(r)) {
                    Some(old) => Change::DnsRecordPut(old.clone()),
                    None => Change::DnsRecordDeleted(r.clone()),
                }
            }
        }
    }

    fn undo_endpoint(&self, id: EndpointId) -> Change {
        match self.endpoints.get(&id) {
            Some(old) => Change::EndpointPut(old.clone()),
            None => Change::EndpointDeleted(id.key()),
        }
    }

    /// The endpoints on `peer` (a range of the map: it is ordered by peer first).
    pub fn endpoints_on<'a>(&'a self, peer: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints
            .range(EndpointId::first_of(peer)..)
            .take_while(move |(id, _)| id.peer == peer)
            .map(|(_, ep)| ep)
    }

    /// The endpoints on every peer but `peer`.
    pub fn endpoints_off<'a>(&'a self, peer: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints.values().filter(move |ep| ep.peer != peer)
    }

    /// The endpoints of container `container` on `peer`, one per network.
    pub fn endpoints_of<'a>(
        &'a self,
        peer: &'a str,
        container: &'a str,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints_on(peer)
            .filter(move |ep| ep.container_id == container)
    }

    /// Applies one change and counts it as one revision.
    pub fn apply(&mut self, change: &Change) {
        self.revision += 1;
        match change {
            Change::PeerPut(peer) => {
                self.peers.insert(peer.name.clone(), peer.clone());
            }
            Change::PeerDeleted(name) => {
                self.peers.remove(name);
            }
            Change::NetworkPut(net) => {
                self.networks.insert(net.name.clone(), net.clone());
            }
            Change::NetworkDeleted(name) => {
                self.networks.remove(name);
            }
            Change::EndpointPut(ep) => {
                self.endpoints.insert(EndpointId::of(ep), ep.clone());
            }
            Change::EndpointDeleted(key) => {
                self.endpoints.remove(&EndpointId::of_key(key));
            }
            Change::DnsRecordPut(r) => {
                self.dns_records.insert(dns_record_id(r), r.clone());
            }
            Change::DnsRecordDeleted(r) => {
                self.dns_records.remove(&dns_record_id(r));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(container: &str, cidr: &str) -> Endpoint {
        Endpoint {
            network: DEFAULT_NETWORK.into(),
            container_id: container.into(),
            cidrs: vec![cidr.into()],
            peer: "host1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_endpoints_of_a_peer_are_its_own_and_all_of_them() {
        let mut tables = Tables::default();
        for (peer, container) in [
            ("host1", "a"),
            ("host10", "b"),
            ("host1", "c"),
            ("host2", "a"),
        ] {
            let mut e = ep(container, "10.32.0.2/12");
            e.peer = peer.into();
            tables.apply(&Change::EndpointPut(e));
        }
        let on = |peer| -> Vec<String> {
            let eps = tables.endpoints_on(peer);
            eps.map(|e| format!("{}/{}", e.peer, e.container_id))
                .collect()
        };
        assert_eq!(on("host1"), ["host1/a", "host1/c"]);
        assert_eq!(on("host10"), ["host10/b"]);
        assert_eq!(on("host"), Vec::<String>::new());
        let off: Vec<&str> = tables
            .endpoints_off("host1")
            .map(|e| e.peer.as_str())
            .collect();
        assert_eq!(off, ["host10", "host2"]);
        assert_eq!(tables.endpoints_of("host2", "a").count(), 1);
        assert_eq!(tables.endpoints_of("host2", "c").count(), 0);
    }

    #[test]
    fn undoing_changes_in_reverse_restores_the_tables() {
        let mut tables = Tables::default();
        tables.apply(&Change::PeerPut(Peer {
            name: "host1".into(),
            advertise_addr: "198.18.0.1".into(),
        }));
        tables.apply(&Change::EndpointPut(ep("a", "10.32.0.2/12")));
        let before = tables.clone();
        let changes = [
            Change::PeerPut(Peer {
                name: "host1".into(),
                advertise_addr: "198.18.0.9".into(),
            }),
            Change::PeerPut(Peer {
                name: "host2".into(),
                advertise_addr: "198.18.0.2".into(),
            }),
            Change::NetworkPut(Network {
                name: "blue".into(),
                subnet: "10.9.0.0/24".into(),
                vni: 2,
            }),
            Change::EndpointPut(ep("a", "10.32.0.3/12")),
            Change::EndpointPut(ep("b", "10.32.0.4/12")),
            Change::EndpointDeleted(EndpointKey {
                peer: "host1".into(),
                container_id: "a".into(),
                network: DEFAULT_NETWORK.into(),
            }),
            Change::PeerDeleted("nobody".into()),
        ];
        let mut undo = Vec::new();
        for change in &changes {
            undo.push(tables.undo(change));
            tables.apply(change);
        }
        assert_ne!(tables.endpoints, before.endpoints);
        for change in undo.iter().rev() {
            tables.apply(change);
        }
        tables.revision = before.revision;
        assert_eq!(tables, before);
    }
}
