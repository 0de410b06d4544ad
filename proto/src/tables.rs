//! The tables every party shares: peers, networks, endpoints and DNS records at a revision. The controller
//! changes them; agents follow them through a snapshot and then one [`Change`] per revision.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::rows::{BadRow, EndpointRow, NetworkRow, PeerRow, RecordRow, RowChange};
use crate::v1::{EndpointKey, Snapshot};

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
pub type DnsRecordId = (String, IpAddr);

/// The tables at a revision, their rows typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tables {
    pub revision: u64,
    /// The identity of the controller's store these tables come from, made once when the store
    /// was created (empty: a controller from before identities).
    pub store_id: String,
    pub peers: BTreeMap<String, PeerRow>,
    pub networks: BTreeMap<String, NetworkRow>,
    pub endpoints: BTreeMap<EndpointId, EndpointRow>,
    pub dns_records: BTreeMap<DnsRecordId, RecordRow>,
}

impl Tables {
    /// The tables a snapshot of store `store_id` taken at `revision` describes, and the rows of
    /// it that do not read (left out), each with why.
    pub fn from_snapshot(
        revision: u64,
        store_id: String,
        snapshot: Snapshot,
    ) -> (Self, Vec<BadRow>) {
        let mut refused = Vec::new();
        let mut keep = |row| match row {
            Ok(row) => Some(row),
            Err(bad) => {
                refused.push(bad);
                None
            }
        };
        let mut tables = Tables {
            revision,
            store_id,
            ..Tables::default()
        };
        for peer in snapshot.peers.into_iter().map(PeerRow::read) {
            if let Some(p) = keep(peer.map(RowChange::PeerPut)) {
                tables.put(p);
            }
        }
        for net in snapshot.networks.into_iter().map(NetworkRow::read) {
            if let Some(n) = keep(net.map(RowChange::NetworkPut)) {
                tables.put(n);
            }
        }
        // Built in one go, the map's nodes are full: inserted one by one in key order, they
        // would be split half full (at 100,000 endpoints, 39 MB of nodes instead of 25).
        let endpoints: Vec<_> = snapshot
            .endpoints
            .into_iter()
            .filter_map(
                |ep| match keep(EndpointRow::read(ep).map(RowChange::EndpointPut)) {
                    Some(RowChange::EndpointPut(ep)) => Some((ep.id.clone(), ep)),
                    _ => None,
                },
            )
            .collect();
        tables.endpoints = endpoints.into_iter().collect();
        for record in snapshot.dns_records.into_iter().map(RecordRow::read) {
            if let Some(r) = keep(record.map(RowChange::RecordPut)) {
                tables.put(r);
            }
        }
        (tables, refused)
    }

    /// The change that puts back what `change` would replace: applied right after `change`, it
    /// restores these tables' contents (not their revision). For undoing changes that could
    /// not be persisted.
    pub fn undo(&self, change: &RowChange) -> RowChange {
        match change {
            RowChange::PeerPut(PeerRow { name, .. }) | RowChange::PeerDeleted(name) => {
                match self.peers.get(name) {
                    Some(old) => RowChange::PeerPut(old.clone()),
                    None => RowChange::PeerDeleted(name.clone()),
                }
            }
            RowChange::NetworkPut(NetworkRow { name, .. }) | RowChange::NetworkDeleted(name) => {
                match self.networks.get(name) {
                    Some(old) => RowChange::NetworkPut(old.clone()),
                    None => RowChange::NetworkDeleted(name.clone()),
                }
            }
            RowChange::EndpointPut(EndpointRow { id, .. }) | RowChange::EndpointDeleted(id) => {
                match self.endpoints.get(id) {
                    Some(old) => RowChange::EndpointPut(old.clone()),
                    None => RowChange::EndpointDeleted(id.clone()),
                }
            }
            RowChange::RecordPut(r) | RowChange::RecordDeleted(r) => {
                match self.dns_records.get(&r.id()) {
                    Some(old) => RowChange::RecordPut(old.clone()),
                    None => RowChange::RecordDeleted(r.clone()),
                }
            }
        }
    }

    /// The endpoints on `peer` (a range of the map: it is ordered by peer first).
    pub fn endpoints_on<'a>(&'a self, peer: &'a str) -> impl Iterator<Item = &'a EndpointRow> + 'a {
        self.endpoints
            .range(EndpointId::first_of(peer)..)
            .take_while(move |(id, _)| id.peer == peer)
            .map(|(_, ep)| ep)
    }

    /// The endpoints on every peer but `peer`.
    pub fn endpoints_off<'a>(
        &'a self,
        peer: &'a str,
    ) -> impl Iterator<Item = &'a EndpointRow> + 'a {
        self.endpoints.values().filter(move |ep| ep.id.peer != peer)
    }

    /// The endpoints of container `container` on `peer`, one per network.
    pub fn endpoints_of<'a>(
        &'a self,
        peer: &'a str,
        container: &'a str,
    ) -> impl Iterator<Item = &'a EndpointRow> + 'a {
        self.endpoints_on(peer)
            .filter(move |ep| ep.id.container == container)
    }

    /// Applies one change and counts it as one revision.
    pub fn apply(&mut self, change: RowChange) {
        self.revision += 1;
        self.put(change);
    }

    fn put(&mut self, change: RowChange) {
        match change {
            RowChange::PeerPut(peer) => {
                self.peers.insert(peer.name.clone(), peer);
            }
            RowChange::PeerDeleted(name) => {
                self.peers.remove(&name);
            }
            RowChange::NetworkPut(net) => {
                self.networks.insert(net.name.clone(), net);
            }
            RowChange::NetworkDeleted(name) => {
                self.networks.remove(&name);
            }
            RowChange::EndpointPut(ep) => {
                self.endpoints.insert(ep.id.clone(), ep);
            }
            RowChange::EndpointDeleted(id) => {
                self.endpoints.remove(&id);
            }
            RowChange::RecordPut(r) => {
                self.dns_records.insert(r.id(), r);
            }
            RowChange::RecordDeleted(r) => {
                self.dns_records.remove(&r.id());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::v1::{Endpoint, Network};

    use super::*;

    fn ep(peer: &str, container: &str, cidr: &str) -> RowChange {
        RowChange::EndpointPut(EndpointRow {
            id: EndpointId::new(peer, DEFAULT_NETWORK, container),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            cidrs: vec![cidr.parse().unwrap()],
            host_ifname: String::new(),
            container_ifname: String::new(),
            dns_name: String::new(),
        })
    }

    fn peer(name: &str, addr: &str) -> RowChange {
        RowChange::PeerPut(PeerRow {
            name: name.into(),
            addr: addr.parse().unwrap(),
            wireguard: None,
        })
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
            tables.apply(ep(peer, container, "10.32.0.2/12"));
        }
        let on = |peer| -> Vec<String> {
            let eps = tables.endpoints_on(peer);
            eps.map(|e| format!("{}/{}", e.id.peer, e.id.container))
                .collect()
        };
        assert_eq!(on("host1"), ["host1/a", "host1/c"]);
        assert_eq!(on("host10"), ["host10/b"]);
        assert_eq!(on("host"), Vec::<String>::new());
        let off: Vec<&str> = tables
            .endpoints_off("host1")
            .map(|e| e.id.peer.as_str())
            .collect();
        assert_eq!(off, ["host10", "host2"]);
        assert_eq!(tables.endpoints_of("host2", "a").count(), 1);
        assert_eq!(tables.endpoints_of("host2", "c").count(), 0);
    }

    #[test]
    fn undoing_changes_in_reverse_restores_the_tables() {
        let mut tables = Tables::default();
        tables.apply(peer("host1", "198.18.0.1"));
        tables.apply(ep("host1", "a", "10.32.0.2/12"));
        let before = tables.clone();
        let changes = [
            peer("host1", "198.18.0.9"),
            peer("host2", "198.18.0.2"),
            RowChange::NetworkPut(NetworkRow {
                name: "blue".into(),
                subnets: vec!["10.9.0.0/24".parse().unwrap()],
                vni: 2,
                encrypted: false,
            }),
            ep("host1", "a", "10.32.0.3/12"),
            ep("host1", "b", "10.32.0.4/12"),
            RowChange::EndpointDeleted(EndpointId::new("host1", DEFAULT_NETWORK, "a")),
            RowChange::PeerDeleted("nobody".into()),
        ];
        let mut undo = Vec::new();
        for change in changes {
            undo.push(tables.undo(&change));
            tables.apply(change);
        }
        assert_ne!(tables.endpoints, before.endpoints);
        for change in undo.into_iter().rev() {
            tables.apply(change);
        }
        tables.revision = before.revision;
        assert_eq!(tables, before);
    }

    #[test]
    fn a_snapshot_keeps_the_rows_that_read() {
        let endpoint = |mac: &str| Endpoint {
            peer: "host1".into(),
            network: DEFAULT_NETWORK.into(),
            container_id: mac.into(),
            mac: mac.into(),
            cidrs: vec!["10.32.0.5/12".into()],
            ..Endpoint::default()
        };
        let snapshot = Snapshot {
            endpoints: vec![endpoint("02:00:0a:20:00:05"), endpoint("zz")],
            networks: vec![Network {
                name: "blue".into(),
                subnet: "10.9.0.300/24".into(),
                vni: 2,
                ..Default::default()
            }],
            ..Snapshot::default()
        };
        let (tables, refused) = Tables::from_snapshot(7, "s".into(), snapshot);
        assert_eq!((tables.revision, tables.endpoints.len()), (7, 1));
        assert!(tables.networks.is_empty());
        let rows: Vec<&str> = refused.iter().map(|b| b.row.as_str()).collect();
        assert_eq!(
            rows,
            ["network blue", "endpoint of zz in network default on host1"]
        );
    }
}
