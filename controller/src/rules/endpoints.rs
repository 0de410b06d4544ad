//! Attach and detach: which addresses a container gets or gives back, in which networks, and the
//! MAC and interface names of its new endpoints.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_proto::addr::{AddrSpec, NetRef};
use weft_proto::names::{Mac, container_ifname, host_ifname, mac_for_address, short_container_id};
use weft_proto::rows::{EndpointRow, RowChange};
use weft_proto::subnet::canonical;
use weft_proto::tables::EndpointId;

use super::dns::delete_dns_records;
use super::planner::Planner;
use super::{AttachOptions, Attached, Detached, MAC_TRIES, TableError, View};
use crate::index::Index;

pub(super) fn attach(
    view: &View,
    peer: &str,
    container_id: &str,
    addrs: &[AddrSpec],
    options: AttachOptions<'_>,
    new_mac: &mut dyn FnMut() -> Mac,
) -> Result<(Attached, Vec<RowChange>), TableError> {
    if !view.tables.peers.contains_key(peer) {
        return Err(TableError::UnknownPeer(peer.to_string()));
    }
    if container_id.is_empty() {
        return Err(TableError::Invalid("container id is empty".into()));
    }
    if options.take_from == container_id {
        return Err(TableError::Invalid(format!(
            "{} cannot take addresses over from itself",
            short_container_id(container_id)
        )));
    }
    let default = [AddrSpec::Allocate(NetRef::Default)];
    let addrs = if addrs.is_empty() {
        &default[..]
    } else {
        addrs
    };
    let holder = (container_id.to_string(), peer.to_string());
    let mut plan = Planner::new(view);
    // The endpoints of `take_from` that give addresses up, as they are left.
    let mut given_up: BTreeMap<EndpointId, EndpointRow> = BTreeMap::new();
    // Network → the addresses this attach gives the container there, in request order.
    let mut wanted: BTreeMap<String, Vec<IpNetwork>> = BTreeMap::new();
    let (mut cidrs, mut added) = (Vec::new(), Vec::new());
    for addr in addrs {
        let (network, new) = match addr {
            AddrSpec::Static(cidr) => {
                let subnet = canonical(*cidr);
                let network = plan
                    .network_for_subnet(subnet, true)?
                    .expect("created when missing");
                let taken_over = !options.take_from.is_empty()
                    && take_over(
                        view,
                        peer,
                        options.take_from,
                        &network,
                        *cidr,
                        &mut given_up,
                    );
                if taken_over {
                    plan.hand_over(&network, cidr.ip(), &holder);
                }
                // An address taken over is new to the container: undoing the attach releases it.
                if plan.claim(&network, *cidr, &holder)? || taken_over {
                    added.push(cidr.to_string());
                }
                (network, vec![*cidr])
            }
            AddrSpec::Allocate(r) => {
                let network = plan.network_by_ref(r)?;
                // One address of the subnet net:CIDR names, or of each of the network's
                // subnets (dual stack: one of each family). As Weave's IPAM does, a container
                // that holds an address in the subnet gets that one: a retried attach must not
                // pile addresses up.
                let taken = wanted.get(&network).map_or(&[][..], Vec::as_slice);
                let held =
                    view.tables
                        .endpoints
                        .get(&EndpointId::new(peer, &network, container_id));
                let mut new = Vec::new();
                let subnets = match (r, plan.networks.get(&network)) {
                    (NetRef::Subnet(subnet), _) => vec![canonical(*subnet)],
                    (_, Some(net)) => net.subnets.clone(),
                    (_, None) => return Err(TableError::UnknownNetwork(network)),
                };
                for subnet in subnets {
                    let mine = held
                        .into_iter()
                        .flat_map(|ep| ep.cidrs.iter().copied())
                        .find(|c| subnet.contains(c.ip()) && !taken.contains(c));
                    new.push(match mine {
                        Some(cidr) => cidr,
                        None => {
                            let cidr = plan.allocate(&network, subnet, &holder)?;
                            added.push(cidr.to_string());
                            cidr
                        }
                    });
                }
                (network, new)
            }
        };
        cidrs.extend(new.iter().map(IpNetwork::to_string));
        wanted.entry(network).or_default().extend(new);
    }

    // Before the endpoints that take the addresses, so the pools see them freed first. The MAC
    // and interface name of one that goes are free for them (an address keeps its MAC).
    let mut freed = Vec::new();
    for (id, ep) in given_up {
        plan.changes.push(if ep.cidrs.is_empty() {
            freed.push(ep.mac);
            RowChange::EndpointDeleted(id)
        } else {
            RowChange::EndpointPut(ep)
        });
    }
    let held = view.index.endpoints_of(view.tables, peer, container_id);
    let mut names = Names::new(view, peer, &held, freed);
    if !options.ifname.is_empty() {
        check_ifname_fits(&held, &wanted, container_id, options.ifname)?;
    }
    // A name belongs to the container: all its endpoints carry the same one.
    let dns_name = match options.dns_name {
        "" => held.first().map_or("", |ep| ep.dns_name.as_str()),
        name => name,
    };
    let mut endpoints = Vec::new();
    for (network, new_cidrs) in wanted {
        let id = EndpointId::new(peer, &network, container_id);
        let ep = match view.tables.endpoints.get(&id) {
            Some(existing) => {
                let mut ep = existing.clone();
                ep.dns_name = dns_name.to_string();
                add_new(&mut ep.cidrs, &new_cidrs);
                ep
            }
            None => {
                let (mac, host_ifname, container_ifname) =
                    names.pick(new_cidrs[0].ip(), options.ifname, new_mac)?;
                let mut cidrs = Vec::new();
                add_new(&mut cidrs, &new_cidrs);
                EndpointRow {
                    id: id.clone(),
                    mac,
                    cidrs,
                    host_ifname,
                    container_ifname,
                    dns_name: dns_name.to_string(),
                }
            }
        };
        if view.tables.endpoints.get(&id) != Some(&ep) {
            plan.changes.push(RowChange::EndpointPut(ep.clone()));
        }
        endpoints.push(ep);
    }
    for other in held.iter().filter(|ep| ep.dns_name != dns_name) {
        if !endpoints.iter().any(|ep| ep.id.network == other.id.network) {
            let mut renamed = (*other).clone();
            renamed.dns_name = dns_name.to_string();
            plan.changes.push(RowChange::EndpointPut(renamed));
        }
    }
    let networks = endpoints
        .iter()
        .map(|ep| plan.networks[&ep.id.network].clone())
        .collect();
    Ok((
        Attached {
            endpoints,
            networks,
            cidrs,
            added,
        },
        plan.changes,
    ))
}

pub(super) fn detach(
    view: &View,
    peer: &str,
    container_id: &str,
    addrs: &[AddrSpec],
    only_mac: &str,
) -> Result<(Detached, Vec<RowChange>), TableError> {
    check_only_mac(view, peer, container_id, only_mac)?;
    let mut current: BTreeMap<String, EndpointRow> = view
        .index
        .endpoints_of(view.tables, peer, container_id)
        .into_iter()
        .map(|ep| (ep.id.network.clone(), ep.clone()))
        .collect();
    if current.is_empty() {
        return Err(TableError::NotAttached {
            container: container_id.to_string(),
            peer: peer.to_string(),
        });
    }
    let not_held = |what: String| TableError::NotHeld {
        what,
        container: container_id.to_string(),
        peer: peer.to_string(),
    };
    let plan = Planner::new(view);
    let mut released = Vec::new();
    if addrs.is_empty() {
        for ep in current.values_mut() {
            released.append(&mut ep.cidrs);
        }
    }
    for addr in addrs {
        match addr {
            AddrSpec::Static(cidr) => {
                let held = current.values_mut().find_map(|ep| {
                    let at = ep.cidrs.iter().position(|c| c.ip() == cidr.ip())?;
                    Some(ep.cidrs.remove(at))
                });
                released.push(held.ok_or_else(|| not_held(format!("address {}", cidr.ip())))?);
            }
            AddrSpec::Allocate(r) => {
                let network = plan.existing_network(r)?;
                // net:CIDR gives back the addresses of that subnet only (a dual-stack
                // network's other family stays), as it took them.
                let inside = |c: &IpNetwork| match r {
                    NetRef::Subnet(subnet) => canonical(*subnet).contains(c.ip()),
                    _ => true,
                };
                let ep = current
                    .get_mut(&network)
                    .filter(|ep| ep.cidrs.iter().any(inside))
                    .ok_or_else(|| not_held(format!("an address in network {network}")))?;
                let (gone, kept) = ep.cidrs.drain(..).partition(inside);
                ep.cidrs = kept;
                released.extend::<Vec<IpNetwork>>(gone);
            }
        }
    }
    let mut done = Detached {
        released,
        ..Detached::default()
    };
    let mut changes = Vec::new();
    for ep in current.into_values() {
        let before = &view.tables.endpoints[&ep.id];
        if ep.cidrs.is_empty() {
            changes.push(RowChange::EndpointDeleted(ep.id.clone()));
            done.removed.push(ep);
        } else if *before != ep {
            changes.push(RowChange::EndpointPut(ep.clone()));
            done.updated.push(ep);
        }
    }
    if done.removed.len()
        == view
            .index
            .endpoints_of(view.tables, peer, container_id)
            .len()
    {
        // The container is gone from the peer, and the names added for it with it.
        changes.extend(delete_dns_records(view.tables, |r| {
            r.peer == peer && r.container == container_id
        }));
    }
    Ok((done, changes))
}

/// Takes `cidr` off the endpoint of `from` (same peer, same network) if that holds it, keeping
/// the endpoint as it is left in `given_up`; false if it does not (the address is then claimed
/// as any other).
fn take_over(
    view: &View,
    peer: &str,
    from: &str,
    network: &str,
    cidr: IpNetwork,
    given_up: &mut BTreeMap<EndpointId, EndpointRow>,
) -> bool {
    let id = EndpointId::new(peer, network, from);
    let ep = match given_up.entry(id) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => match view.tables.endpoints.get(e.key()) {
            Some(ep) => e.insert(ep.clone()),
            None => return false,
        },
    };
    let at = ep.cidrs.iter().position(|c| c.ip() == cidr.ip());
    at.map(|at| ep.cidrs.remove(at)).is_some()
}

/// Adds the addresses of `new` that `cidrs` does not have yet, in order.
fn add_new(cidrs: &mut Vec<IpNetwork>, new: &[IpNetwork]) {
    for cidr in new {
        if !cidrs.contains(cidr) {
            cidrs.push(*cidr);
        }
    }
}

/// A detach by `only_mac` goes ahead only while the container has the endpoint of that MAC. A MAC
/// of another peer's endpoint is refused as such, not as "not attached": it is an attempt to act
/// on another host's endpoints.
fn check_only_mac(
    view: &View,
    peer: &str,
    container_id: &str,
    only_mac: &str,
) -> Result<(), TableError> {
    if only_mac.is_empty() {
        return Ok(());
    }
    // A MAC that does not read is no endpoint's: "not attached", as for any other.
    let mac = only_mac.parse::<Mac>().ok();
    let held = view.index.endpoints_of(view.tables, peer, container_id);
    if held.iter().any(|ep| Some(ep.mac) == mac) {
        return Ok(());
    }
    // Only a MAC of some endpoint costs a look through them all.
    let owner = mac
        .filter(|mac| view.index.macs.contains(mac))
        .and_then(|mac| {
            view.tables
                .endpoints
                .values()
                .find(|ep| ep.mac == mac && ep.id.peer != peer)
        });
    Err(match owner {
        Some(ep) => TableError::OthersMac {
            mac: only_mac.to_string(),
            owner: ep.id.peer.clone(),
            peer: peer.to_string(),
        },
        None => TableError::NotAttached {
            container: format!("{container_id} with MAC {only_mac}"),
            peer: peer.to_string(),
        },
    })
}

/// An interface name the caller chose (CNI_IFNAME) names one endpoint: the attach must touch one
/// network, and the container's other endpoints must not have that name, nor its endpoint in
/// that network another one.
fn check_ifname_fits(
    held: &[&EndpointRow],
    wanted: &BTreeMap<String, Vec<IpNetwork>>,
    container_id: &str,
    ifname: &str,
) -> Result<(), TableError> {
    let mut networks = wanted.keys();
    let (Some(network), None) = (networks.next(), networks.next()) else {
        return Err(TableError::Invalid(format!(
            "interface {ifname} can be in one network only, not in {}",
            wanted.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    };
    let container = short_container_id(container_id);
    for ep in held {
        let same_network = &ep.id.network == network;
        if same_network && ep.container_ifname != ifname {
            return Err(TableError::Invalid(format!(
                "{container} is in network {network} as {}, not {ifname}",
                ep.container_ifname
            )));
        }
        if !same_network && ep.container_ifname == ifname {
            return Err(TableError::Invalid(format!(
                "{container} has {ifname} in network {} already",
                ep.id.network
            )));
        }
    }
    Ok(())
}

/// The MAC and interface names of one attach's new endpoints: none that an endpoint of the
/// tables (the index knows them) or an earlier endpoint of the same attach has.
struct Names<'a> {
    index: &'a Index,
    /// Host-side interface names of the peer's endpoints.
    peer_ifnames: Option<&'a HashSet<String>>,
    /// Container-side interface names the container has or this attach gave it.
    container_ifnames: BTreeSet<String>,
    new_macs: BTreeSet<Mac>,
    new_ifnames: BTreeSet<String>,
    /// MACs (and so host interface names) of endpoints this attach removes.
    freed: BTreeSet<Mac>,
}

impl<'a> Names<'a> {
    fn new(view: &View<'a>, peer: &str, held: &[&EndpointRow], freed: Vec<Mac>) -> Self {
        Names {
            index: view.index,
            peer_ifnames: view.index.host_ifnames.get(peer),
            container_ifnames: held.iter().map(|ep| ep.container_ifname.clone()).collect(),
            new_macs: BTreeSet::new(),
            new_ifnames: BTreeSet::new(),
            freed: freed.into_iter().collect(),
        }
    }

    /// A MAC, its host interface name and the container interface name (`chosen`, else the
    /// next free ethweN) for a new endpoint whose first address is `ip`. The MAC of an address
    /// is the same whoever holds it, so a container that gets an address another one had is
    /// reached at once: others' ARP caches (which no gratuitous ARP can update through proxying
    /// VXLAN devices) stay right. Random MACs from `new_mac` are the fallback when that one is
    /// taken.
    fn pick(
        &mut self,
        ip: IpAddr,
        chosen: &str,
        new_mac: &mut dyn FnMut() -> Mac,
    ) -> Result<(Mac, String, String), TableError> {
        let (mac, ifname) = std::iter::once(mac_for_address(ip))
            .chain((0..MAC_TRIES).map(|_| new_mac()))
            .map(|mac| (mac, host_ifname(mac)))
            .find(|(mac, ifname)| {
                let freed = self.freed.contains(mac);
                (freed || !self.index.macs.contains(mac))
                    && !self.new_macs.contains(mac)
                    && (freed
                        || !self
                            .peer_ifnames
                            .is_some_and(|names| names.contains(ifname)))
                    && !self.new_ifnames.contains(ifname)
            })
            .ok_or(TableError::NoFreeMac)?;
        self.new_macs.insert(mac);
        self.new_ifnames.insert(ifname.clone());
        let cname = match chosen {
            "" => (0..)
                .map(container_ifname)
                .find(|n| !self.container_ifnames.contains(n))
                .expect("unbounded"),
            given => given.to_string(),
        };
        self.container_ifnames.insert(cname.clone());
        Ok((mac, ifname, cname))
    }
}
