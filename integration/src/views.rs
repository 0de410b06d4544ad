//! The views of one world that must agree: the controller's tables, each host's kernel (VXLAN
//! FDB and neighbour entries, veths on the bridge) and each container's interfaces. Tests that
//! inflict faults compare them once the world has settled.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::{BRIDGE, FLOOD_MAC, VXLAN_DEV, World, fdb, links, neighbours};

/// One endpoint as the controller's tables hold it.
#[derive(Debug)]
pub struct TableEndpoint {
    pub peer: String,
    pub network: String,
    pub container: String,
    pub mac: String,
    pub cidrs: BTreeSet<String>,
    pub host_ifname: String,
    pub container_ifname: String,
}

fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_owned()
}

pub fn table_endpoints(tables: &Value) -> Vec<TableEndpoint> {
    let all = tables["endpoints"].as_array();
    all.unwrap_or_else(|| panic!("no endpoints in {tables}"))
        .iter()
        .map(|ep| TableEndpoint {
            peer: text(ep, "peer"),
            network: text(ep, "network"),
            container: text(ep, "container_id"),
            mac: text(ep, "mac"),
            cidrs: ep["cidrs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c.as_str().unwrap_or_default().to_owned())
                .collect(),
            host_ifname: text(ep, "host_ifname"),
            container_ifname: text(ep, "container_ifname"),
        })
        .collect()
}

/// Peer name → VTEP address, from the controller's tables.
pub fn table_peers(tables: &Value) -> BTreeMap<String, String> {
    let all = tables["peers"].as_array();
    all.unwrap_or_else(|| panic!("no peers in {tables}"))
        .iter()
        .map(|p| (text(p, "name"), text(p, "advertise_addr")))
        .collect()
}

/// What host `me` must hold for the endpoints of the other peers: FDB entries (each MAC, and
/// one flood entry per peer with endpoints) and permanent neighbours (each address → MAC).
type Remote = (BTreeSet<(String, String)>, BTreeSet<(String, String)>);

fn remote_entries(me: &str, eps: &[TableEndpoint], peers: &BTreeMap<String, String>) -> Remote {
    let (mut fdb, mut neigh) = (BTreeSet::new(), BTreeSet::new());
    for ep in eps.iter().filter(|ep| ep.peer != me) {
        let vtep = peers.get(&ep.peer).cloned().unwrap_or_default();
        fdb.insert((ep.mac.clone(), vtep.clone()));
        fdb.insert((FLOOD_MAC.to_owned(), vtep));
        for cidr in &ep.cidrs {
            let ip = cidr.split('/').next().unwrap_or(cidr);
            neigh.insert((ip.to_owned(), ep.mac.clone()));
        }
    }
    (fdb, neigh)
}

/// Host `host`'s agent is connected at the controller's revision, and the kernels and the
/// containers of `pool` agree with the controller's tables: in sync, seen from outside.
pub fn in_sync(world: &World, host: usize, pool: &[(usize, String)]) -> bool {
    let revision = world.controller_tables()["revision"].as_u64();
    connected_at(world, host, revision) && disagreements(world, pool).0.is_empty()
}

/// [`in_sync`] for every host, looking at the controller's tables and the kernels once.
pub fn hosts_in_sync(world: &World, pool: &[(usize, String)]) -> Vec<bool> {
    let revision = world.controller_tables()["revision"].as_u64();
    let agree = disagreements(world, pool).0.is_empty();
    (1..=world.hosts())
        .map(|host| agree && connected_at(world, host, revision))
        .collect()
}

/// Host `host`'s agent says it is connected, with its tables at `revision`.
fn connected_at(world: &World, host: usize, revision: Option<u64>) -> bool {
    let status = world.status(host);
    status["controller"]["connected"] == true
        && status["controller"]["revision"].as_u64() == revision
}

/// Where the controller's tables, the hosts' kernels and the containers' interfaces disagree,
/// and how many endpoints the tables hold.
pub fn disagreements(world: &World, pool: &[(usize, String)]) -> (Vec<String>, usize) {
    let tables = world.controller_tables();
    let (eps, peers) = (table_endpoints(&tables), table_peers(&tables));
    let mut found: Vec<String> = eps
        .iter()
        .filter(|ep| {
            ep.network != "default"
                || ep.container_ifname != "ethwe"
                || !peers.contains_key(&ep.peer)
        })
        .map(|ep| format!("tables: an endpoint the test never asked for {ep:?}"))
        .collect();
    for host in 1..=world.hosts() {
        found.extend(host_disagreements(world, host, &eps, &peers));
    }
    found.extend(container_disagreements(pool, &eps));
    (found, eps.len())
}

/// Where host `host`'s kernel differs from what the tables call for: the remote entries of its
/// VXLAN device, and one veth on the bridge per local endpoint. Only the default network is
/// used, so its devices are the only ones.
fn host_disagreements(
    world: &World,
    host: usize,
    eps: &[TableEndpoint],
    peers: &BTreeMap<String, String>,
) -> Vec<String> {
    let (me, ns) = (format!("host{host}"), world.host_ns(host));
    let (fdb_want, neigh_want) = remote_entries(&me, eps, peers);
    let veths_want: BTreeSet<(String, Option<String>)> = eps
        .iter()
        .filter(|ep| ep.peer == me)
        .map(|ep| (ep.host_ifname.clone(), Some(BRIDGE.to_owned())))
        .collect();
    let veths_have: BTreeSet<(String, Option<String>)> = links(&ns)
        .into_iter()
        .filter(|l| l.name.starts_with("vethwepl"))
        .map(|l| (l.name, l.master))
        .collect();
    [
        ("FDB", fdb(&ns, VXLAN_DEV), fdb_want),
        ("neighbours", neighbours(&ns, VXLAN_DEV), neigh_want),
    ]
    .into_iter()
    .filter(|(_, have, want)| have != want)
    .map(|(what, have, want)| {
        format!(
            "{me} {what}: missing {:?}, extra {:?}",
            want.difference(&have).collect::<Vec<_>>(),
            have.difference(&want).collect::<Vec<_>>()
        )
    })
    .chain((veths_have != veths_want).then(|| {
        format!("{me} veths (name, bridge): {veths_have:?}, tables call for {veths_want:?}")
    }))
    .collect()
}

/// A container's interface: name, MAC, CIDRs.
type Interface = (String, String, BTreeSet<String>);

/// Where a container's `ethwe` (MAC, addresses) differs from its endpoint in the tables, or
/// exists without one, or the container holds any other interface besides its loopback (say,
/// half of a veth pair); or where the tables hold an endpoint of no container of the test.
fn container_disagreements(pool: &[(usize, String)], eps: &[TableEndpoint]) -> Vec<String> {
    let mut found = Vec::new();
    for (host, ns) in pool {
        let id = format!("netns:{ns}");
        let mine: Vec<&TableEndpoint> = eps.iter().filter(|ep| ep.container == id).collect();
        let want: Vec<Interface> = match mine[..] {
            [] => Vec::new(),
            [ep] if ep.peer == format!("host{host}") => {
                vec![("ethwe".to_owned(), ep.mac.clone(), ep.cidrs.clone())]
            }
            _ => {
                found.push(format!("tables: {id} of host{host} has endpoints {mine:?}"));
                continue;
            }
        };
        let have: Vec<Interface> = links(ns)
            .into_iter()
            .filter(|l| l.name != "lo")
            .map(|l| (l.name, l.mac, l.addrs.into_iter().collect()))
            .collect();
        if have != want {
            found.push(format!(
                "{ns}: interfaces (name, MAC, CIDRs) {have:?}, tables call for {want:?}"
            ));
        }
    }
    let known: BTreeSet<String> = pool.iter().map(|(_, ns)| format!("netns:{ns}")).collect();
    found.extend(
        eps.iter()
            .filter(|ep| !known.contains(&ep.container))
            .map(|ep| format!("tables: endpoint of no test container {ep:?}")),
    );
    found
}
