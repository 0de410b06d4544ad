//! What the rules look up on every request, kept beside the tables so that a request costs the
//! same with ten endpoints as with a hundred thousand: who holds which address in each network,
//! the MACs in use, each peer's veth names, and each container's networks.

use std::collections::{BTreeMap, HashMap, HashSet};

use weft_proto::names::Mac;
use weft_proto::rows::{EndpointRow, NetworkRow, RowChange};
use weft_proto::tables::{EndpointId, Tables};

use crate::ipam::Pool;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    /// Per network, a pool for each of its subnets, in their order.
    pub pools: BTreeMap<String, Vec<Pool>>,
    pub macs: HashSet<Mac>,
    /// Per peer.
    pub host_ifnames: HashMap<String, HashSet<String>>,
    /// Per (peer, container id): the networks it has an endpoint in, sorted. A vector, not a
    /// set: nearly every container is in one network, and a set's first node would take ten
    /// times the memory (about 25 MB at 100,000 containers).
    pub containers: HashMap<(String, String), Vec<String>>,
}

impl Index {
    pub fn build(tables: &Tables) -> Index {
        let mut index = Index::default();
        for net in tables.networks.values() {
            index.add_network(net);
        }
        for ep in tables.endpoints.values() {
            index.add_endpoint(ep);
        }
        index
    }

    /// Follows one change. Call it before `tables` apply the change: it needs the endpoint the
    /// change replaces or removes.
    pub fn apply(&mut self, tables: &Tables, change: &RowChange) {
        match change {
            RowChange::NetworkPut(net) => self.add_network(net),
            RowChange::NetworkDeleted(name) => {
                self.pools.remove(name);
            }
            RowChange::EndpointPut(ep) => {
                if let Some(old) = tables.endpoints.get(&ep.id) {
                    self.remove_endpoint(old);
                }
                self.add_endpoint(ep);
            }
            RowChange::EndpointDeleted(id) => {
                if let Some(old) = tables.endpoints.get(id) {
                    self.remove_endpoint(old);
                }
            }
            RowChange::PeerPut(_)
            | RowChange::PeerDeleted(_)
            | RowChange::RecordPut(_)
            | RowChange::RecordDeleted(_) => {}
        }
    }

    /// A pool for each of the network's subnets.
    fn add_network(&mut self, net: &NetworkRow) {
        self.pools.entry(net.name.clone()).or_insert_with(|| {
            net.subnets
                .iter()
                .map(|subnet| Pool::new(&net.name, *subnet))
                .collect()
        });
    }

    fn add_endpoint(&mut self, ep: &EndpointRow) {
        let id = &ep.id;
        if let Some(pools) = self.pools.get_mut(&id.network) {
            for ip in ep.cidrs.iter().map(|c| c.ip()) {
                if let Some(pool) = pools.iter_mut().find(|p| p.subnet.contains(ip)) {
                    pool.note_held(ip, (id.container.clone(), id.peer.clone()));
                }
            }
        }
        self.macs.insert(ep.mac);
        self.host_ifnames
            .entry(id.peer.clone())
            .or_default()
            .insert(ep.host_ifname.clone());
        let networks = self
            .containers
            .entry((id.peer.clone(), id.container.clone()))
            .or_default();
        if let Err(at) = networks.binary_search(&id.network) {
            networks.insert(at, id.network.clone());
        }
    }

    fn remove_endpoint(&mut self, ep: &EndpointRow) {
        let id = &ep.id;
        if let Some(pools) = self.pools.get_mut(&id.network) {
            for ip in ep.cidrs.iter().map(|c| c.ip()) {
                if let Some(pool) = pools.iter_mut().find(|p| p.subnet.contains(ip)) {
                    pool.release(ip);
                }
            }
        }
        self.macs.remove(&ep.mac);
        if let Some(names) = self.host_ifnames.get_mut(&id.peer) {
            names.remove(&ep.host_ifname);
            if names.is_empty() {
                self.host_ifnames.remove(&id.peer);
            }
        }
        let key = (id.peer.clone(), id.container.clone());
        if let Some(networks) = self.containers.get_mut(&key) {
            networks.retain(|n| *n != id.network);
            if networks.is_empty() {
                self.containers.remove(&key);
            }
        }
    }

    /// The endpoints of a container on a peer.
    pub fn endpoints_of<'t>(
        &self,
        tables: &'t Tables,
        peer: &str,
        container: &str,
    ) -> Vec<&'t EndpointRow> {
        let key = (peer.to_string(), container.to_string());
        self.containers
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|net| tables.endpoints.get(&EndpointId::new(peer, net, container)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::v1::{Endpoint, EndpointKey, Network, delta::Change};

    use super::*;

    fn endpoint(container: &str, mac: &str, cidrs: &[&str]) -> Endpoint {
        Endpoint {
            network: "blue".into(),
            container_id: container.into(),
            mac: mac.into(),
            cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            peer: "host1".into(),
            host_ifname: format!("vethwepl{container}"),
            container_ifname: "ethwe".into(),
            dns_name: String::new(),
        }
    }

    #[test]
    fn following_changes_gives_what_building_from_the_tables_gives() {
        let changes = [
            Change::NetworkPut(Network {
                name: "blue".into(),
                subnet: "10.9.0.0/24".into(),
                vni: 2,
                ..Default::default()
            }),
            Change::EndpointPut(endpoint("a", "02:00:00:00:00:01", &["10.9.0.2/24"])),
            Change::EndpointPut(endpoint("b", "02:00:00:00:00:02", &["10.9.0.3/24"])),
            // a gets another address, b leaves, a's first address is released.
            Change::EndpointPut(endpoint(
                "a",
                "02:00:00:00:00:01",
                &["10.9.0.2/24", "10.9.0.4/24"],
            )),
            Change::EndpointDeleted(EndpointKey {
                peer: "host1".into(),
                container_id: "b".into(),
                network: "blue".into(),
            }),
            Change::EndpointPut(endpoint("a", "02:00:00:00:00:01", &["10.9.0.4/24"])),
        ];
        let (mut tables, mut index) = (Tables::default(), Index::default());
        for change in changes.into_iter().map(|c| RowChange::read(c).unwrap()) {
            index.apply(&tables, &change);
            tables.apply(change.clone());
            assert_eq!(index, Index::build(&tables), "after {change:?}");
        }
        assert_eq!(index.pools["blue"][0].used(), 1);
        let mac = |s: &str| s.parse::<Mac>().unwrap();
        assert!(
            index.macs.contains(&mac("02:00:00:00:00:01"))
                && !index.macs.contains(&mac("02:00:00:00:00:02"))
        );
        let a = index.endpoints_of(&tables, "host1", "a");
        assert_eq!(a.len(), 1);
        assert!(index.endpoints_of(&tables, "host1", "b").is_empty());
    }
}
