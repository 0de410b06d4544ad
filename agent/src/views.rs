//! What weftctl's `ps`, `status`, `network ls` and `status ipam` show of the tables: pure
//! functions of the agent's copy of the controller's tables, so each is tested without a kernel
//! or a controller.

use std::collections::{BTreeMap, HashMap};

use weft_proto::names::EXPOSE_ID;
use weft_proto::rows::{self, EndpointRow, NetworkRow};
use weft_proto::subnet::pool_size;
use weft_proto::tables::{DEFAULT_NETWORK, Tables};
use weft_proto::v1::{
    IpamStatusResponse, NetworkInfo, PeerIpam, PsEntry, StatusResponse, SubnetUse,
};

/// Each network with its endpoint count, pool size and addresses in use, in VNI order (so the
/// default network comes first).
pub fn network_infos(t: &Tables) -> Vec<NetworkInfo> {
    // Per network: endpoints, and addresses held of each family (IPv4, IPv6).
    let mut counts: HashMap<&str, (u32, [u64; 2])> = HashMap::new();
    for ep in t.endpoints.values() {
        let c = counts.entry(ep.id.network.as_str()).or_default();
        c.0 += 1;
        for cidr in &ep.cidrs {
            c.1[usize::from(cidr.is_ipv6())] += 1;
        }
    }
    let mut nets: Vec<_> = t.networks.values().collect();
    nets.sort_by_key(|net| net.vni);
    nets.into_iter()
        .map(|net| {
            let (endpoints, used) = counts.get(net.name.as_str()).copied().unwrap_or_default();
            NetworkInfo {
                network: Some(net.wire()),
                endpoints,
                subnets: net
                    .subnets
                    .iter()
                    .map(|s| SubnetUse {
                        subnet: s.to_string(),
                        used: used[usize::from(s.is_ipv6())],
                    })
                    .collect(),
            }
        })
        .collect()
}

/// One entry per container on `me`, as `weave ps` has it: the MAC of its first interface
/// (`ethwe`) and every address it holds, interface by interface.
pub fn ps_entries(t: &Tables, me: &str) -> Vec<PsEntry> {
    let mut by_container: BTreeMap<&str, Vec<&EndpointRow>> = BTreeMap::new();
    for ep in t.endpoints_on(me) {
        by_container.entry(&ep.id.container).or_default().push(ep);
    }
    // The host itself first, as `weave ps` shows it.
    let mut order: Vec<_> = by_container.into_iter().collect();
    order.sort_by_key(|(container, _)| *container != EXPOSE_ID);
    order
        .into_iter()
        .map(|(container, mut eps)| {
            // ethwe, ethwe1, ..., ethwe10: by length, then by name.
            eps.sort_by_key(|ep| (ep.container_ifname.len(), ep.container_ifname.clone()));
            PsEntry {
                container_id: container.to_string(),
                mac: eps[0].mac.to_string(),
                cidrs: eps
                    .iter()
                    .flat_map(|ep| rows::cidr_strings(&ep.cidrs))
                    .collect(),
                dns_name: eps[0].dns_name.clone(),
            }
        })
        .collect()
}

/// Addresses in use per (peer, network).
fn peer_usage(t: &Tables) -> Vec<PeerIpam> {
    let mut used: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for ep in t.endpoints.values() {
        *used
            .entry((ep.id.peer.as_str(), ep.id.network.as_str()))
            .or_default() += ep.cidrs.len() as u64;
    }
    used.into_iter()
        .map(|((peer, network), used)| PeerIpam {
            peer: peer.to_string(),
            network: network.to_string(),
            used,
        })
        .collect()
}

/// `weftctl status ipam`: the default range, every network's use and every peer's.
pub fn ipam_status(t: &Tables) -> IpamStatusResponse {
    IpamStatusResponse {
        range: t
            .networks
            .get(DEFAULT_NETWORK)
            .map(NetworkRow::subnets_text)
            .unwrap_or_default(),
        networks: network_infos(t),
        peers: peer_usage(t),
    }
}

/// The part of `weftctl status` the tables give for host `me`: their revision, how many peers,
/// networks and local endpoints they hold, and the default network's range and use.
pub fn tables_status(t: &Tables, me: &str, status: &mut StatusResponse) {
    status.revision = t.revision;
    status.peers = t.peers.len() as u32;
    status.networks = t.networks.len() as u32;
    status.endpoints = t.endpoints_on(me).count() as u32;
    let default = network_infos(t).into_iter().find(|i| {
        i.network
            .as_ref()
            .is_some_and(|n| n.name == DEFAULT_NETWORK)
    });
    // The figures of the default network's first subnet (its IPv4 one).
    let first = default.and_then(|d| d.subnets.into_iter().next());
    if let Some(first) = first {
        let pool = first.subnet.parse().map(pool_size).unwrap_or_default();
        status.ipam_range = first.subnet;
        status.ipam_used = first.used;
        status.ipam_free =
            u64::try_from(pool.saturating_sub(first.used.into())).unwrap_or(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::rows::NetworkRow;
    use weft_proto::tables::EndpointId;

    use super::*;

    /// Networks default (10.32.0.0/12) and blue (10.9.0.0/24); c1 on host1 with two addresses
    /// in default, c2 on host2 with one in each.
    fn tables() -> Tables {
        let mut t = Tables::default();
        for (name, subnet, vni) in [("default", "10.32.0.0/12", 1), ("blue", "10.9.0.0/24", 2)] {
            t.networks.insert(
                name.into(),
                NetworkRow {
                    name: name.into(),
                    subnets: vec![subnet.parse().unwrap()],
                    vni,
                    encrypted: false,
                },
            );
        }
        for (peer, network, container, cidrs) in [
            (
                "host1",
                "default",
                "c1",
                vec!["10.32.0.2/12", "10.32.0.3/12"],
            ),
            ("host2", "default", "c2", vec!["10.32.0.4/12"]),
            ("host2", "blue", "c2", vec!["10.9.0.2/24"]),
        ] {
            let ep = EndpointRow {
                id: EndpointId::new(peer, network, container),
                mac: weft_proto::names::Mac::ZERO,
                cidrs: cidrs.into_iter().map(|c| c.parse().unwrap()).collect(),
                host_ifname: String::new(),
                container_ifname: if network == "blue" { "ethwe1" } else { "ethwe" }.into(),
                dns_name: String::new(),
            };
            t.endpoints.insert(ep.id.clone(), ep);
        }
        t.revision = 7;
        t
    }

    #[test]
    fn usage_is_counted_per_network_and_peer() {
        let t = tables();
        let ps: Vec<_> = ps_entries(&t, "host2")
            .into_iter()
            .map(|e| (e.container_id, e.cidrs))
            .collect();
        assert_eq!(
            ps,
            [(
                "c2".to_string(),
                vec!["10.32.0.4/12".to_string(), "10.9.0.2/24".to_string()]
            )]
        );
        let ipam = ipam_status(&t);
        assert_eq!(ipam.range, "10.32.0.0/12");
        let summary: Vec<_> = ipam
            .networks
            .iter()
            .map(|i| {
                (
                    i.network.as_ref().unwrap().name.as_str(),
                    i.endpoints,
                    i.subnets[0].subnet.as_str(),
                    i.subnets[0].used,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("default", 2, "10.32.0.0/12", 3),
                ("blue", 1, "10.9.0.0/24", 1)
            ]
        );
        let peers: Vec<_> = ipam
            .peers
            .into_iter()
            .map(|p| (p.peer, p.network, p.used))
            .collect();
        assert_eq!(
            peers,
            [
                ("host1".into(), "default".into(), 2),
                ("host2".into(), "blue".into(), 1),
                ("host2".into(), "default".into(), 1)
            ]
        );
    }

    #[test]
    fn status_counts_the_local_endpoints_and_the_default_range() {
        let mut status = StatusResponse::default();
        tables_status(&tables(), "host1", &mut status);
        assert_eq!(
            (
                status.revision,
                status.peers,
                status.networks,
                status.endpoints
            ),
            (7, 0, 2, 1)
        );
        assert_eq!(
            (
                status.ipam_range.as_str(),
                status.ipam_used,
                status.ipam_free
            ),
            ("10.32.0.0/12", 3, 1_048_570)
        );
    }
}
