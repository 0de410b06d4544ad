//! The tables every party shares: peers, networks, endpoints and DNS records at a revision. The controller
//! changes them; agents follow them through a snapshot and then one [`Change`] per revision.

use std::collections::BTreeMap;

use crate::v1::{DnsRecord, Endpoint, EndpointKey, Network, Peer, Snapshot, delta::Change};

/// The network every host has, whose subnet is the controller's `--ipalloc-range`.
pub const DEFAULT_NETWORK: &str = "default";
/// VNI of the default network.
pub const DEFAULT_VNI: u32 = 1;

/// (peer, network, container id): one container's interface in one network on one host.
pub type EndpointId = (String, String, String);

pub fn endpoint_id(ep: &Endpoint) -> EndpointId {
    (ep.peer.clone(), ep.network.clone(), ep.container_id.clone())
}

fn key_id(key: &EndpointKey) -> EndpointId {
    (
        key.peer.clone(),
        key.network.clone(),
        key.container_id.clone(),
    )
}

/// (name, ip): one DNS record added with `weftctl dns-add`.
pub type DnsRecordId = (String, String);

pub fn dns_record_id(r: &DnsRecord) -> DnsRecordId {
    (r.name.clone(), r.ip.clone())
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tables {
    pub revision: u64,
    pub peers: BTreeMap<String, Peer>,
    pub networks: BTreeMap<String, Network>,
    pub endpoints: BTreeMap<EndpointId, Endpoint>,
    pub dns_records: BTreeMap<DnsRecordId, DnsRecord>,
}

impl Tables {
    /// The tables a snapshot taken at `revision` describes.
    pub fn from_snapshot(revision: u64, snapshot: Snapshot) -> Self {
        Tables {
            revision,
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
                .map(|e| (endpoint_id(&e), e))
                .collect(),
            dns_records: snapshot
                .dns_records
                .into_iter()
                .map(|r| (dns_record_id(&r), r))
                .collect(),
        }
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
                self.endpoints.insert(endpoint_id(ep), ep.clone());
            }
            Change::EndpointDeleted(key) => {
                self.endpoints.remove(&key_id(key));
            }
            Change::DnsRecordPut(r) => {
                self.dns_records.insert(dns_record_id(r), r.clone());
            }
            Change::DnsRecordDeleted(r) => {
                self.dns_records.remove(&dns_record_id(r));
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            peers: self.peers.values().cloned().collect(),
            networks: self.networks.values().cloned().collect(),
            endpoints: self.endpoints.values().cloned().collect(),
            dns_records: self.dns_records.values().cloned().collect(),
        }
    }
}
