//! The rules that keep the controller's tables consistent. Pure: every request is first checked
//! and turned into a list of changes, which the caller persists and only then applies, so a
//! failed write changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use weft_proto::addr::{AddrSpec, NetRef, parse_cidr, parse_subnet};
use weft_proto::dns_name;
use weft_proto::names::{Mac, container_ifname, host_ifname, mac_for_address, short_container_id};
use weft_proto::subnet::{PREFIX_RANGE, canonical};
use weft_proto::tables::{DEFAULT_NETWORK, DEFAULT_VNI, Tables, dns_record_id, endpoint_id};
use weft_proto::v1::{DnsRecord, Endpoint, EndpointKey, Network, Peer, delta::Change};

use crate::index::Index;
use crate::ipam::{Holder, IpamError, Pool, Taken};

/// Largest VNI VXLAN has (24 bits).
const MAX_VNI: u32 = (1 << 24) - 1;
/// Tries at a MAC (and so a veth name) no other endpoint has.
const MAC_TRIES: usize = 16;
const MAX_NETWORK_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("{0}")]
    Invalid(String),
    #[error("peer {0} is not registered with the controller")]
    UnknownPeer(String),
    #[error("unknown network {0}")]
    UnknownNetwork(String),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("network {name} already exists ({subnet})")]
    NetworkExists { name: String, subnet: String },
    #[error("subnet {subnet} overlaps network {other} ({other_subnet})")]
    Overlap {
        subnet: String,
        other: String,
        other_subnet: String,
    },
    #[error("network {name} still has {count} endpoint(s), e.g. {example}")]
    NetworkInUse {
        name: String,
        count: usize,
        example: String,
    },
    #[error("{} is not attached on {peer}", short_container_id(.container))]
    NotAttached { container: String, peer: String },
    #[error("{what} is not held by {} on {peer}", short_container_id(.container))]
    NotHeld {
        what: String,
        container: String,
        peer: String,
    },
    #[error("peer {0} is connected: only a peer whose agent is gone can be removed")]
    PeerConnected(String),
    #[error("no free MAC address found after {MAC_TRIES} tries")]
    NoFreeMac,
    #[error("no DNS record {name} {ip}")]
    NoDnsRecord { name: String, ip: String },
}

/// What an attach did: the container's endpoints in the networks it touched (and those
/// networks), every address it asked for (with prefix), and which of them are new.
#[derive(Debug, Clone, PartialEq)]
pub struct Attached {
    pub endpoints: Vec<Endpoint>,
    pub networks: Vec<Network>,
    pub cidrs: Vec<String>,
    pub added: Vec<String>,
}

/// What a detach did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detached {
    pub updated: Vec<Endpoint>,
    pub removed: Vec<Endpoint>,
    pub released: Vec<String>,
}

/// Checks requests against the tables and plans the changes they make.
pub trait TableRules {
    /// Makes the default network exist with `range`; refuses to move a stored one.
    fn ensure_default_network(&self, range: Ipv4Network) -> Result<Vec<Change>, TableError>;
    /// Adds or updates a peer; nothing changes when it is already known as it is.
    fn register_peer(&self, peer: Peer) -> Result<Vec<Change>, TableError>;
    /// Claims or allocates `addrs` (none: one from the default network) for a container, and
    /// names it `dns_name` (empty: keeps the name it has).
    fn attach(
        &self,
        peer: &str,
        container_id: &str,
        addrs: &[AddrSpec],
        dns_name: &str,
        new_mac: &mut dyn FnMut() -> Mac,
    ) -> Result<(Attached, Vec<Change>), TableError>;
    /// Releases `addrs` (none: all) of a container.
    fn detach(
        &self,
        peer: &str,
        container_id: &str,
        addrs: &[AddrSpec],
    ) -> Result<(Detached, Vec<Change>), TableError>;
    fn create_network(
        &self,
        name: &str,
        subnet: &str,
    ) -> Result<(Network, Vec<Change>), TableError>;
    fn delete_network(&self, name: &str) -> Result<Vec<Change>, TableError>;
    /// Forgets a peer that is not `connected`, releasing its endpoints.
    fn remove_peer(
        &self,
        name: &str,
        connected: bool,
    ) -> Result<(Vec<String>, Vec<Change>), TableError>;
    /// Adds DNS records for `peer`, or removes them (by name and address).
    fn update_dns(
        &self,
        peer: &str,
        remove: bool,
        records: &[DnsRecord],
    ) -> Result<Vec<Change>, TableError>;
}

/// The changes that delete the DNS records `which` selects.
fn delete_dns_records(tables: &Tables, which: impl Fn(&DnsRecord) -> bool) -> Vec<Change> {
    tables
        .dns_records
        .values()
        .filter(|r| which(r))
        .map(|r| Change::DnsRecordDeleted(r.clone()))
        .collect()
}

fn check_prefix(subnet: Ipv4Network) -> Result<(), TableError> {
    if PREFIX_RANGE.contains(&subnet.prefix()) {
        return Ok(());
    }
    Err(TableError::Invalid(format!(
        "prefix /{} of {} is outside /{}../{}",
        subnet.prefix(),
        canonical(subnet),
        PREFIX_RANGE.start(),
        PREFIX_RANGE.end()
    )))
}

fn network_subnet(net: &Network) -> Result<Ipv4Network, TableError> {
    net.subnet.parse().map_err(|_| {
        TableError::Invalid(format!(
            "network {} has a corrupt subnet \"{}\"",
            net.name, net.subnet
        ))
    })
}

fn cidr_of(cidr: &str) -> Result<Ipv4Network, TableError> {
    parse_cidr(cidr, cidr).map_err(|e| TableError::Invalid(e.to_string()))
}

fn validate_network_name(name: &str) -> Result<(), TableError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
    if name.is_empty()
        || name.len() > MAX_NETWORK_NAME
        || name.starts_with('-')
        || !name.chars().all(ok_char)
    {
        return Err(TableError::Invalid(format!(
            "invalid network name \"{name}\": use 1 to {MAX_NETWORK_NAME} letters, digits, '.', '_', '-' or '/'"
        )));
    }
    Ok(())
}

/// The tables and their index, as the rules read them.
pub struct View<'a> {
    pub tables: &'a Tables,
    pub index: &'a Index,
}

/// The tables as a request sees them while it is planned: networks it creates and addresses it
/// takes count at once, so two parts of one request cannot take the same thing.
struct Planner<'a> {
    index: &'a Index,
    networks: BTreeMap<String, Network>,
    /// Pools of the networks this request creates.
    new_pools: BTreeMap<String, Pool>,
    /// Addresses this request takes, per network.
    taken: BTreeMap<String, Taken>,
    changes: Vec<Change>,
}

impl<'a> Planner<'a> {
    fn new(view: &View<'a>) -> Self {
        Planner {
            index: view.index,
            networks: view.tables.networks.clone(),
            new_pools: BTreeMap::new(),
            taken: BTreeMap::new(),
            changes: Vec::new(),
        }
    }

    /// The network whose subnet is `subnet`. With `create`, one is made (named by the subnet)
    /// when no network has it; a network that overlaps without being equal is an error.
    fn network_for_subnet(
        &mut self,
        subnet: Ipv4Network,
        create: bool,
    ) -> Result<Option<String>, TableError> {
        check_prefix(subnet)?;
        let wanted = canonical(subnet);
        for net in self.networks.values() {
            let theirs = network_subnet(net)?;
            if theirs == subnet {
                return Ok(Some(net.name.clone()));
            }
            if theirs.overlaps(subnet) {
                return Err(TableError::Overlap {
                    subnet: wanted,
                    other: net.name.clone(),
                    other_subnet: net.subnet.clone(),
                });
            }
        }
        if !create {
            return Ok(None);
        }
        self.add_network(&wanted, subnet)?;
        Ok(Some(wanted))
    }

    fn add_network(&mut self, name: &str, subnet: Ipv4Network) -> Result<Network, TableError> {
        let vni = self
            .networks
            .values()
            .map(|n| n.vni)
            .max()
            .unwrap_or(DEFAULT_VNI)
            + 1;
        if vni > MAX_VNI {
            return Err(TableError::Invalid("no VNI left for a new network".into()));
        }
        let net = Network {
            name: name.to_string(),
            subnet: canonical(subnet),
            vni,
        };
        self.networks.insert(net.name.clone(), net.clone());
        self.new_pools
            .insert(net.name.clone(), Pool::new(name, subnet));
        self.changes.push(Change::NetworkPut(net.clone()));
        Ok(net)
    }

    fn network_by_ref(&mut self, r: &NetRef) -> Result<String, TableError> {
        match r {
            NetRef::Default => Ok(DEFAULT_NETWORK.to_string()),
            NetRef::Subnet(subnet) => Ok(self
                .network_for_subnet(*subnet, true)?
                .expect("created when missing")),
            NetRef::Name(name) if self.networks.contains_key(name) => Ok(name.clone()),
            NetRef::Name(name) => Err(TableError::UnknownNetwork(name.clone())),
        }
    }

    /// The network's pool (recorded addresses) and what this request has taken there.
    fn pool(&mut self, network: &str) -> Result<(&Pool, &mut Taken), TableError> {
        let pool = self
            .new_pools
            .get(network)
            .or_else(|| self.index.pools.get(network))
            .ok_or_else(|| TableError::UnknownNetwork(network.to_string()))?;
        Ok((pool, self.taken.entry(network.to_string()).or_default()))
    }

    /// Claims `cidr` in `network`; true if the holder did not have it yet.
    fn claim(
        &mut self,
        network: &str,
        cidr: Ipv4Network,
        holder: &Holder,
    ) -> Result<bool, TableError> {
        let (pool, taken) = self.pool(network)?;
        let new = pool.claim(cidr.ip(), holder, taken)?;
        taken.insert(cidr.ip(), holder.clone());
        Ok(new)
    }

    /// Takes the lowest free address of `network`, with the network's prefix.
    fn allocate(&mut self, network: &str, holder: &Holder) -> Result<Ipv4Network, TableError> {
        let (pool, taken) = self.pool(network)?;
        let ip = pool.allocate(holder, taken)?;
        let cidr = Ipv4Network::new(ip, pool.subnet.prefix()).expect("a valid prefix");
        taken.insert(ip, holder.clone());
        Ok(cidr)
    }

    /// The network a detach's `net:` argument means, which must exist.
    fn existing_network(&self, r: &NetRef) -> Result<String, TableError> {
        match r {
            NetRef::Default => Ok(DEFAULT_NETWORK.to_string()),
            NetRef::Name(name) if self.networks.contains_key(name) => Ok(name.clone()),
            NetRef::Name(name) => Err(TableError::UnknownNetwork(name.clone())),
            NetRef::Subnet(subnet) => self
                .networks
                .values()
                .find(|n| n.subnet == canonical(*subnet))
                .map(|n| n.name.clone())
                .ok_or_else(|| TableError::UnknownNetwork(canonical(*subnet))),
        }
    }
}

impl TableRules for View<'_> {
    fn ensure_default_network(&self, range: Ipv4Network) -> Result<Vec<Change>, TableError> {
        check_prefix(range)?;
        let subnet = canonical(range);
        match self.tables.networks.get(DEFAULT_NETWORK) {
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
        if self.tables.peers.get(&peer.name) == Some(&peer) {
            return Ok(vec![]);
        }
        Ok(vec![Change::PeerPut(peer)])
    }

    fn attach(
        &self,
        peer: &str,
        container_id: &str,
        addrs: &[AddrSpec],
        dns_name: &str,
        new_mac: &mut dyn FnMut() -> Mac,
    ) -> Result<(Attached, Vec<Change>), TableError> {
        if !self.tables.peers.contains_key(peer) {
            return Err(TableError::UnknownPeer(peer.to_string()));
        }
        if container_id.is_empty() {
            return Err(TableError::Invalid("container id is empty".into()));
        }
        let default = [AddrSpec::Allocate(NetRef::Default)];
        let addrs = if addrs.is_empty() {
            &default[..]
        } else {
            addrs
        };
        let holder = (container_id.to_string(), peer.to_string());
        let mut plan = Planner::new(self);
        // Network → the addresses this attach gives the container there, in request order.
        let mut wanted: BTreeMap<String, Vec<Ipv4Network>> = BTreeMap::new();
        let (mut cidrs, mut added) = (Vec::new(), Vec::new());
        for addr in addrs {
            let (network, cidr) = match addr {
                AddrSpec::Static(cidr) => {
                    let subnet = Ipv4Network::new(cidr.network(), cidr.prefix())
                        .expect("a prefix that parsed is valid");
                    let network = plan
                        .network_for_subnet(subnet, true)?
                        .expect("created when missing");
                    if plan.claim(&network, *cidr, &holder)? {
                        added.push(cidr.to_string());
                    }
                    (network, *cidr)
                }
                AddrSpec::Allocate(r) => {
                    let network = plan.network_by_ref(r)?;
                    // As Weave's IPAM does, a container that holds an address in the network
                    // gets that one: a retried attach must not pile addresses up.
                    let taken = wanted.get(&network).map_or(&[][..], Vec::as_slice);
                    let held = self
                        .tables
                        .endpoints
                        .get(&(peer.to_string(), network.clone(), container_id.to_string()))
                        .into_iter()
                        .flat_map(|ep| &ep.cidrs)
                        .filter_map(|c| c.parse::<Ipv4Network>().ok())
                        .find(|c| !taken.contains(c));
                    let cidr = match held {
                        Some(cidr) => cidr,
                        None => {
                            let cidr = plan.allocate(&network, &holder)?;
                            added.push(cidr.to_string());
                            cidr
                        }
                    };
                    (network, cidr)
                }
            };
            cidrs.push(cidr.to_string());
            wanted.entry(network).or_default().push(cidr);
        }

        // What the new endpoints of this request take, beside what the index knows is taken.
        let mut new_macs: BTreeSet<String> = BTreeSet::new();
        let mut new_ifnames: BTreeSet<String> = BTreeSet::new();
        let peer_ifnames = self.index.host_ifnames.get(peer);
        let held = self.index.endpoints_of(self.tables, peer, container_id);
        let mut container_ifnames: BTreeSet<String> =
            held.iter().map(|ep| ep.container_ifname.clone()).collect();
        // A name belongs to the container: all its endpoints carry the same one.
        let dns_name = match dns_name {
            "" => held.first().map_or("", |ep| ep.dns_name.as_str()),
            name => name,
        };
        let mut endpoints = Vec::new();
        for (network, new_cidrs) in wanted {
            let id = (peer.to_string(), network.clone(), container_id.to_string());
            let ep = match self.tables.endpoints.get(&id) {
                Some(existing) => {
                    let mut ep = existing.clone();
                    ep.dns_name = dns_name.to_string();
                    for cidr in new_cidrs.iter().map(|c| c.to_string()) {
                        if !ep.cidrs.contains(&cidr) {
                            ep.cidrs.push(cidr);
                        }
                    }
                    ep
                }
                None => {
                    // The MAC of an address is the same whoever holds it, so a container that
                    // gets an address another one had is reached at once: others' ARP caches
                    // (which no gratuitous ARP can update through proxying VXLAN devices) stay
                    // right. Random MACs are the fallback when that one is taken.
                    let (mac, ifname) = std::iter::once(mac_for_address(new_cidrs[0].ip()))
                        .chain((0..MAC_TRIES).map(|_| new_mac()))
                        .map(|mac| (mac, host_ifname(mac)))
                        .find(|(mac, ifname)| {
                            let mac = mac.to_string();
                            !self.index.macs.contains(&mac)
                                && !new_macs.contains(&mac)
                                && !peer_ifnames.is_some_and(|names| names.contains(ifname))
                                && !new_ifnames.contains(ifname)
                        })
                        .ok_or(TableError::NoFreeMac)?;
                    new_macs.insert(mac.to_string());
                    new_ifnames.insert(ifname.clone());
                    let cname = (0..)
                        .map(container_ifname)
                        .find(|n| !container_ifnames.contains(n))
                        .expect("unbounded");
                    container_ifnames.insert(cname.clone());
                    let mut dedup: Vec<String> = Vec::new();
                    for cidr in new_cidrs.iter().map(|c| c.to_string()) {
                        if !dedup.contains(&cidr) {
                            dedup.push(cidr);
                        }
                    }
                    Endpoint {
                        network,
                        container_id: container_id.to_string(),
                        mac: mac.to_string(),
                        cidrs: dedup,
                        peer: peer.to_string(),
                        host_ifname: ifname,
                        container_ifname: cname,
                        dns_name: dns_name.to_string(),
                    }
                }
            };
            if self.tables.endpoints.get(&endpoint_id(&ep)) != Some(&ep) {
                plan.changes.push(Change::EndpointPut(ep.clone()));
            }
            endpoints.push(ep);
        }
        for other in held.iter().filter(|ep| ep.dns_name != dns_name) {
            if !endpoints.iter().any(|ep| ep.network == other.network) {
                let mut renamed = (*other).clone();
                renamed.dns_name = dns_name.to_string();
                plan.changes.push(Change::EndpointPut(renamed));
            }
        }
        let networks = endpoints
            .iter()
            .map(|ep| plan.networks[&ep.network].clone())
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

    fn detach(
        &self,
        peer: &str,
        container_id: &str,
        addrs: &[AddrSpec],
    ) -> Result<(Detached, Vec<Change>), TableError> {
        let mut current: BTreeMap<String, Endpoint> = self
            .index
            .endpoints_of(self.tables, peer, container_id)
            .into_iter()
            .map(|ep| (ep.network.clone(), ep.clone()))
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
        let plan = Planner::new(self);
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
                        let at = ep
                            .cidrs
                            .iter()
                            .position(|c| cidr_of(c).map(|c| c.ip()) == Ok(cidr.ip()))?;
                        Some(ep.cidrs.remove(at))
                    });
                    released.push(held.ok_or_else(|| not_held(format!("address {}", cidr.ip())))?);
                }
                AddrSpec::Allocate(r) => {
                    let network = plan.existing_network(r)?;
                    let ep = current
                        .get_mut(&network)
                        .filter(|ep| !ep.cidrs.is_empty())
                        .ok_or_else(|| not_held(format!("an address in network {network}")))?;
                    released.append(&mut ep.cidrs);
                }
            }
        }
        let mut done = Detached {
            released,
            ..Detached::default()
        };
        let mut changes = Vec::new();
        for ep in current.into_values() {
            let before = &self.tables.endpoints[&endpoint_id(&ep)];
            if ep.cidrs.is_empty() {
                changes.push(Change::EndpointDeleted(EndpointKey {
                    peer: ep.peer.clone(),
                    container_id: ep.container_id.clone(),
                    network: ep.network.clone(),
                }));
                done.removed.push(ep);
            } else if *before != ep {
                changes.push(Change::EndpointPut(ep.clone()));
                done.updated.push(ep);
            }
        }
        if done.removed.len()
            == self
                .index
                .endpoints_of(self.tables, peer, container_id)
                .len()
        {
            // The container is gone from the peer, and the names added for it with it.
            changes.extend(delete_dns_records(self.tables, |r| {
                r.peer == peer && r.container_id == container_id
            }));
        }
        Ok((done, changes))
    }

    fn create_network(
        &self,
        name: &str,
        subnet: &str,
    ) -> Result<(Network, Vec<Change>), TableError> {
        validate_network_name(name)?;
        let parsed = parse_subnet(subnet, subnet).map_err(|e| {
            TableError::Invalid(format!("invalid subnet \"{subnet}\": {}", e.reason))
        })?;
        if let Some(net) = self.tables.networks.get(name) {
            return Err(TableError::NetworkExists {
                name: name.to_string(),
                subnet: net.subnet.clone(),
            });
        }
        let mut plan = Planner::new(self);
        if let Some(other) = plan.network_for_subnet(parsed, false)? {
            return Err(TableError::Invalid(format!(
                "subnet {} is already network {other}",
                canonical(parsed)
            )));
        }
        let net = plan.add_network(name, parsed)?;
        Ok((net, plan.changes))
    }

    fn delete_network(&self, name: &str) -> Result<Vec<Change>, TableError> {
        if name == DEFAULT_NETWORK {
            return Err(TableError::Invalid(
                "the default network cannot be removed".into(),
            ));
        }
        if !self.tables.networks.contains_key(name) {
            return Err(TableError::UnknownNetwork(name.to_string()));
        }
        let members: Vec<&Endpoint> = self
            .tables
            .endpoints
            .values()
            .filter(|ep| ep.network == name)
            .collect();
        if let Some(first) = members.first() {
            return Err(TableError::NetworkInUse {
                name: name.to_string(),
                count: members.len(),
                example: format!("{} on {}", first.container_id, first.peer),
            });
        }
        Ok(vec![Change::NetworkDeleted(name.to_string())])
    }

    fn remove_peer(
        &self,
        name: &str,
        connected: bool,
    ) -> Result<(Vec<String>, Vec<Change>), TableError> {
        if !self.tables.peers.contains_key(name) {
            return Err(TableError::UnknownPeer(name.to_string()));
        }
        if connected {
            return Err(TableError::PeerConnected(name.to_string()));
        }
        let mut released = Vec::new();
        let mut changes = Vec::new();
        for ep in self.tables.endpoints.values().filter(|ep| ep.peer == name) {
            released.extend(ep.cidrs.iter().cloned());
            changes.push(Change::EndpointDeleted(EndpointKey {
                peer: ep.peer.clone(),
                container_id: ep.container_id.clone(),
                network: ep.network.clone(),
            }));
        }
        changes.extend(delete_dns_records(self.tables, |r| r.peer == name));
        changes.push(Change::PeerDeleted(name.to_string()));
        Ok((released, changes))
    }

    fn update_dns(
        &self,
        peer: &str,
        remove: bool,
        records: &[DnsRecord],
    ) -> Result<Vec<Change>, TableError> {
        if !self.tables.peers.contains_key(peer) {
            return Err(TableError::UnknownPeer(peer.to_string()));
        }
        let mut changes = Vec::new();
        for record in records {
            let name = dns_name::normalize(&record.name).map_err(TableError::Invalid)?;
            let ip: Ipv4Addr = record.ip.parse().map_err(|_| {
                TableError::Invalid(format!("\"{}\" is not an IPv4 address", record.ip))
            })?;
            let record = DnsRecord {
                name,
                ip: ip.to_string(),
                peer: peer.to_string(),
                container_id: record.container_id.clone(),
            };
            let existing = self.tables.dns_records.get(&dns_record_id(&record));
            match (remove, existing) {
                (false, Some(r)) if *r == record => {}
                (false, _) => changes.push(Change::DnsRecordPut(record)),
                (true, Some(r)) => changes.push(Change::DnsRecordDeleted(r.clone())),
                (true, None) => {
                    return Err(TableError::NoDnsRecord {
                        name: record.name,
                        ip: record.ip,
                    });
                }
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules on the tables alone, with the index built afresh for each call, as the
    /// controller has it after a restart: the index must not change any answer.
    trait OnTables {
        fn view<R>(&self, f: impl FnOnce(&View) -> R) -> R;
        fn ensure_default_network(&self, range: Ipv4Network) -> Result<Vec<Change>, TableError> {
            self.view(|v| v.ensure_default_network(range))
        }
        fn register_peer(&self, peer: Peer) -> Result<Vec<Change>, TableError> {
            self.view(|v| v.register_peer(peer))
        }
        fn attach(
            &self,
            peer: &str,
            container_id: &str,
            addrs: &[AddrSpec],
            dns_name: &str,
            new_mac: &mut dyn FnMut() -> Mac,
        ) -> Result<(Attached, Vec<Change>), TableError> {
            self.view(|v| v.attach(peer, container_id, addrs, dns_name, new_mac))
        }
        fn detach(
            &self,
            peer: &str,
            container_id: &str,
            addrs: &[AddrSpec],
        ) -> Result<(Detached, Vec<Change>), TableError> {
            self.view(|v| v.detach(peer, container_id, addrs))
        }
        fn create_network(
            &self,
            name: &str,
            subnet: &str,
        ) -> Result<(Network, Vec<Change>), TableError> {
            self.view(|v| v.create_network(name, subnet))
        }
        fn delete_network(&self, name: &str) -> Result<Vec<Change>, TableError> {
            self.view(|v| v.delete_network(name))
        }
        fn remove_peer(
            &self,
            name: &str,
            connected: bool,
        ) -> Result<(Vec<String>, Vec<Change>), TableError> {
            self.view(|v| v.remove_peer(name, connected))
        }
        fn update_dns(
            &self,
            peer: &str,
            remove: bool,
            records: &[DnsRecord],
        ) -> Result<Vec<Change>, TableError> {
            self.view(|v| v.update_dns(peer, remove, records))
        }
    }

    impl OnTables for Tables {
        fn view<R>(&self, f: impl FnOnce(&View) -> R) -> R {
            let index = Index::build(self);
            f(&View {
                tables: self,
                index: &index,
            })
        }
    }

    fn peer(name: &str, addr: &str) -> Peer {
        Peer {
            name: name.into(),
            advertise_addr: addr.into(),
        }
    }

    fn apply_all(t: &mut Tables, changes: Vec<Change>) {
        for c in &changes {
            t.apply(c);
        }
    }

    fn two_hosts() -> Tables {
        let mut t = Tables::default();
        let changes = t
            .ensure_default_network("10.32.0.0/12".parse().unwrap())
            .unwrap();
        apply_all(&mut t, changes);
        for (name, addr) in [("host1", "198.18.0.1"), ("host2", "198.18.0.2")] {
            let changes = t.register_peer(peer(name, addr)).unwrap();
            apply_all(&mut t, changes);
        }
        t
    }

    /// MACs 02:00:00:00:00:01, :02, ... in turn.
    fn macs() -> impl FnMut() -> Mac {
        let mut n = 0u8;
        move || {
            n += 1;
            Mac([2, 0, 0, 0, 0, n])
        }
    }

    fn specs(addrs: &[&str]) -> Vec<AddrSpec> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// Attaches and applies; returns the addresses the attach gave.
    fn attach(
        t: &mut Tables,
        peer: &str,
        container: &str,
        addrs: &[&str],
    ) -> Result<Vec<String>, String> {
        let (done, changes) = t
            .attach(peer, container, &specs(addrs), "", &mut macs_from(t))
            .map_err(|e| e.to_string())?;
        apply_all(t, changes);
        Ok(done.cidrs)
    }

    /// A MAC source that skips MACs the tables already hold.
    fn macs_from(t: &Tables) -> impl FnMut() -> Mac + use<> {
        let held: BTreeSet<String> = t.endpoints.values().map(|e| e.mac.clone()).collect();
        let mut next = macs();
        move || loop {
            let mac = next();
            if !held.contains(&mac.to_string()) {
                return mac;
            }
        }
    }

    fn detach(
        t: &mut Tables,
        peer: &str,
        container: &str,
        addrs: &[&str],
    ) -> Result<Vec<String>, String> {
        let (done, changes) = t
            .detach(peer, container, &specs(addrs))
            .map_err(|e| e.to_string())?;
        apply_all(t, changes);
        Ok(done.released)
    }

    #[test]
    fn default_network_is_created_once_and_never_moved() {
        let t = two_hosts();
        assert_eq!(t.networks[DEFAULT_NETWORK].subnet, "10.32.0.0/12");
        assert_eq!(t.networks[DEFAULT_NETWORK].vni, DEFAULT_VNI);
        assert_eq!(
            t.ensure_default_network("10.32.0.0/12".parse().unwrap()),
            Ok(vec![])
        );
        assert_eq!(
            t.ensure_default_network("10.40.0.0/16".parse().unwrap())
                .unwrap_err()
                .to_string(),
            "the stored default network is 10.32.0.0/12 but --ipalloc-range is 10.40.0.0/16"
        );
    }

    #[test]
    fn peers_register_once_and_bad_addresses_are_refused() {
        let t = two_hosts();
        assert_eq!(t.revision, 3);
        assert_eq!(t.register_peer(peer("host1", "198.18.0.1")), Ok(vec![]));
        assert_eq!(
            t.register_peer(peer("host1", "nope"))
                .unwrap_err()
                .to_string(),
            "peer host1: advertise address \"nope\" is not an IPv4 address"
        );
    }

    #[test]
    fn static_addresses_create_their_network_and_name_holders() {
        let mut t = two_hosts();
        assert_eq!(
            attach(&mut t, "host1", "c1", &["192.168.0.2/24"]),
            Ok(vec!["192.168.0.2/24".into()])
        );
        let net = &t.networks["192.168.0.0/24"];
        assert_eq!((net.subnet.as_str(), net.vni), ("192.168.0.0/24", 2));
        let ep = &t.endpoints[&("host1".into(), "192.168.0.0/24".into(), "c1".into())];
        assert_eq!(ep.mac, "0a:77:c0:a8:00:02");
        assert_eq!(ep.host_ifname, "vethwepl0a80002");
        assert_eq!(ep.container_ifname, "ethwe");
        assert_eq!(
            attach(&mut t, "host2", "c2", &["192.168.0.2/24"]),
            Err("address 192.168.0.2 already in use by c1 on host1".into())
        );
        // A retried attach of what the container already holds is harmless, and adds nothing.
        let (again, changes) = t
            .attach("host1", "c1", &specs(&["192.168.0.2/24"]), "", &mut macs())
            .unwrap();
        assert_eq!((again.added.len(), changes.len()), (0, 0));
        assert_eq!(again.networks[0].name, "192.168.0.0/24");
        let rev = t.revision;
        assert_eq!(
            attach(&mut t, "host1", "c1", &["192.168.0.2/24"]),
            Ok(vec!["192.168.0.2/24".into()])
        );
        assert_eq!(t.revision, rev);
        // A second network gets the next VNI and the container its next interface.
        assert_eq!(
            attach(&mut t, "host1", "c1", &["192.168.10.10/24"]),
            Ok(vec!["192.168.10.10/24".into()])
        );
        assert_eq!(t.networks["192.168.10.0/24"].vni, 3);
        let ep2 = &t.endpoints[&("host1".into(), "192.168.10.0/24".into(), "c1".into())];
        assert_eq!(ep2.container_ifname, "ethwe1");
    }

    #[test]
    fn a_name_belongs_to_the_whole_container() {
        let mut t = two_hosts();
        let name_of = |t: &Tables, net: &str| {
            t.endpoints[&("host1".into(), net.into(), "c1".into())]
                .dns_name
                .clone()
        };
        let (_, changes) = t
            .attach(
                "host1",
                "c1",
                &specs(&["192.168.0.2/24"]),
                "bbox1",
                &mut macs(),
            )
            .unwrap();
        apply_all(&mut t, changes);
        // A later attach without a name keeps it, also on the container's new endpoint.
        attach(&mut t, "host1", "c1", &["10.32.0.9/12"]).unwrap();
        assert_eq!(name_of(&t, "192.168.0.0/24"), "bbox1");
        assert_eq!(name_of(&t, "default"), "bbox1");
        // A new name renames every endpoint, also those the attach does not touch.
        let (_, changes) = t
            .attach(
                "host1",
                "c1",
                &specs(&["10.32.0.9/12"]),
                "bbox2",
                &mut macs(),
            )
            .unwrap();
        apply_all(&mut t, changes);
        assert_eq!(name_of(&t, "192.168.0.0/24"), "bbox2");
        assert_eq!(name_of(&t, "default"), "bbox2");
    }

    #[test]
    fn docker_ids_are_shown_short_in_errors() {
        let mut t = two_hosts();
        let id = "3f2a9c1d7e55".to_string() + &"0".repeat(52);
        attach(&mut t, "host2", &id, &["192.168.0.2/24"]).unwrap();
        assert_eq!(
            attach(&mut t, "host1", "c2", &["192.168.0.2/24"]),
            Err("address 192.168.0.2 already in use by 3f2a9c1d7e55 on host2".into())
        );
    }

    #[test]
    fn dns_records_live_with_their_container_and_peer() {
        let mut t = two_hosts();
        attach(&mut t, "host1", "c1", &["192.168.0.2/24"]).unwrap();
        let record = |name: &str, ip: &str, container: &str| DnsRecord {
            name: name.into(),
            ip: ip.into(),
            container_id: container.into(),
            ..DnsRecord::default()
        };
        let changes = t
            .update_dns(
                "host1",
                false,
                &[
                    record("Web.", "192.168.0.2", "c1"),
                    record("db", "10.9.9.9", ""),
                ],
            )
            .unwrap();
        apply_all(&mut t, changes);
        let names: Vec<_> = t.dns_records.keys().cloned().collect();
        assert_eq!(
            names,
            [
                ("db".to_string(), "10.9.9.9".to_string()),
                ("web".to_string(), "192.168.0.2".to_string())
            ]
        );
        // Adding again changes nothing; removing what is not there is refused, naming it.
        let again = t
            .update_dns("host1", false, &[record("web", "192.168.0.2", "c1")])
            .unwrap();
        assert!(again.is_empty());
        assert_eq!(
            t.update_dns("host1", true, &[record("web", "192.168.0.9", "")])
                .unwrap_err()
                .to_string(),
            "no DNS record web 192.168.0.9"
        );
        // The container's last endpoint takes its records along; the other stays until rmpeer.
        let (_, changes) = t.detach("host1", "c1", &[]).unwrap();
        apply_all(&mut t, changes);
        assert_eq!(t.dns_records.len(), 1);
        let (_, changes) = t.remove_peer("host1", false).unwrap();
        apply_all(&mut t, changes);
        assert!(t.dns_records.is_empty());
    }

    #[test]
    fn attach_without_addresses_allocates_from_the_default_network() {
        let mut t = two_hosts();
        assert_eq!(
            attach(&mut t, "host1", "c1", &[]),
            Ok(vec!["10.32.0.2/12".into()])
        );
        assert_eq!(
            attach(&mut t, "host2", "c2", &["net:default"]),
            Ok(vec!["10.32.0.3/12".into()])
        );
        assert_eq!(
            attach(&mut t, "host1", "c3", &["net:default", "net:default"]),
            Ok(vec!["10.32.0.4/12".into(), "10.32.0.5/12".into()])
        );
        let ep = &t.endpoints[&("host1".into(), DEFAULT_NETWORK.into(), "c3".into())];
        assert_eq!(ep.cidrs, ["10.32.0.4/12", "10.32.0.5/12"]);
    }

    #[test]
    fn a_container_asking_again_gets_the_address_it_holds() {
        let mut t = two_hosts();
        let (blue, changes) = t.create_network("blue", "10.9.0.0/24").unwrap();
        apply_all(&mut t, changes);
        let first = attach(&mut t, "host1", "c1", &[]).unwrap();
        assert_eq!(first, ["10.32.0.2/12"]);
        for again in [&[][..], &["net:default"], &["net:10.32.0.0/12"]] {
            assert_eq!(attach(&mut t, "host1", "c1", again).as_ref(), Ok(&first));
        }
        assert_eq!(
            attach(&mut t, "host1", "c1", &["net:blue"]),
            Ok(vec!["10.9.0.2/24".into()])
        );
        assert_eq!(
            attach(&mut t, "host1", "c1", &[&format!("net:{}", blue.name)]),
            Ok(vec!["10.9.0.2/24".into()])
        );
        // Two asked for at once: the one held, and one more.
        assert_eq!(
            attach(&mut t, "host1", "c1", &["net:default", "net:default"]),
            Ok(vec!["10.32.0.2/12".into(), "10.32.0.3/12".into()])
        );
        // The same container on another host is another holder.
        assert_eq!(
            attach(&mut t, "host2", "c1", &[]),
            Ok(vec!["10.32.0.4/12".into()])
        );
    }

    #[test]
    fn net_cidr_and_net_name_allocate_in_their_network() {
        let mut t = two_hosts();
        assert_eq!(
            attach(&mut t, "host1", "c1", &["net:10.2.0.0/30"]),
            Ok(vec!["10.2.0.2/30".into()])
        );
        assert_eq!(
            attach(&mut t, "host1", "c2", &["net:10.2.0.0/30"]),
            Err("network 10.2.0.0/30 (10.2.0.0/30) has no free address: all 1 are in use".into())
        );
        let (blue, changes) = t.create_network("blue", "10.9.0.0/24").unwrap();
        apply_all(&mut t, changes);
        assert_eq!(blue.vni, 3);
        assert_eq!(
            attach(&mut t, "host2", "c3", &["net:blue"]),
            Ok(vec!["10.9.0.2/24".into()])
        );
        assert_eq!(
            attach(&mut t, "host2", "c3", &["net:red"]),
            Err("unknown network red".into())
        );
    }

    #[test]
    fn failed_attaches_change_nothing() {
        let mut t = two_hosts();
        attach(&mut t, "host1", "c1", &["192.168.0.2/24"]).unwrap();
        let before = t.clone();
        for (addrs, why) in [
            (
                &["192.168.0.3/24", "192.168.0.2/24"][..],
                "address 192.168.0.2 already in use by c1 on host1",
            ),
            (
                &["192.168.0.0/24"],
                "address 192.168.0.0 is the network address of 192.168.0.0/24",
            ),
            (
                &["192.168.0.255/24"],
                "address 192.168.0.255 is the broadcast address of 192.168.0.0/24",
            ),
            (
                &["192.168.0.1/24"],
                "address 192.168.0.1 is the gateway address, kept for the host of 192.168.0.0/24",
            ),
            (
                &["192.168.0.9/23"],
                "subnet 192.168.0.0/23 overlaps network 192.168.0.0/24 (192.168.0.0/24)",
            ),
            (
                &["10.33.0.9/16"],
                "subnet 10.33.0.0/16 overlaps network default (10.32.0.0/12)",
            ),
            (
                &["10.0.0.2/31"],
                "prefix /31 of 10.0.0.2/31 is outside /8../30",
            ),
            (
                &["10.0.0.2/7"],
                "prefix /7 of 10.0.0.0/7 is outside /8../30",
            ),
        ] {
            assert_eq!(attach(&mut t, "host2", "c2", addrs), Err(why.to_string()));
            assert_eq!(t, before, "state after {addrs:?}");
        }
        assert_eq!(
            attach(&mut t, "host9", "c2", &[]),
            Err("peer host9 is not registered with the controller".into())
        );
    }

    #[test]
    fn detach_releases_what_it_names_and_removes_empty_endpoints() {
        let mut t = two_hosts();
        attach(
            &mut t,
            "host1",
            "c1",
            &["192.168.0.2/24", "192.168.0.3/24", "192.168.10.2/24"],
        )
        .unwrap();
        assert_eq!(
            detach(&mut t, "host1", "c1", &["192.168.0.3/24"]),
            Ok(vec!["192.168.0.3/24".into()])
        );
        assert_eq!(
            detach(&mut t, "host1", "c1", &["192.168.0.3/24"]),
            Err("address 192.168.0.3 is not held by c1 on host1".into())
        );
        assert_eq!(
            detach(&mut t, "host1", "c1", &["net:192.168.10.0/24"]),
            Ok(vec!["192.168.10.2/24".into()])
        );
        assert_eq!(t.endpoints.len(), 1, "the emptied endpoint is gone");
        // Released addresses are free again.
        assert!(attach(&mut t, "host2", "c2", &["192.168.0.3/24"]).is_ok());
        assert_eq!(
            detach(&mut t, "host1", "c1", &[]),
            Ok(vec!["192.168.0.2/24".into()])
        );
        assert_eq!(
            detach(&mut t, "host1", "c1", &[]),
            Err("c1 is not attached on host1".into())
        );
    }

    #[test]
    fn networks_are_created_checked_and_removed() {
        let mut t = two_hosts();
        let create = |t: &Tables, name: &str, subnet: &str| {
            t.create_network(name, subnet)
                .map(|(n, _)| n)
                .map_err(|e| e.to_string())
        };
        let (net, changes) = t.create_network("blue", "10.9.0.0/24").unwrap();
        apply_all(&mut t, changes);
        assert_eq!(
            (net.name.as_str(), net.subnet.as_str(), net.vni),
            ("blue", "10.9.0.0/24", 2)
        );
        assert_eq!(
            create(&t, "blue", "10.8.0.0/24"),
            Err("network blue already exists (10.9.0.0/24)".into())
        );
        assert_eq!(
            create(&t, "red", "10.9.0.0/24"),
            Err("subnet 10.9.0.0/24 is already network blue".into())
        );
        assert_eq!(
            create(&t, "red", "10.9.0.0/16"),
            Err("subnet 10.9.0.0/16 overlaps network blue (10.9.0.0/24)".into())
        );
        assert_eq!(
            create(&t, "red", "10.9.1.1/24"),
            Err("invalid subnet \"10.9.1.1/24\": host bits set; the subnet is 10.9.1.0/24".into())
        );
        assert_eq!(
            create(&t, "red", "10.9.1.0/31"),
            Err("prefix /31 of 10.9.1.0/31 is outside /8../30".into())
        );
        assert_eq!(
            create(&t, "red", "banana"),
            Err("invalid subnet \"banana\": expected IP/LEN, e.g. 192.168.0.2/24".into())
        );
        assert!(
            create(&t, "a b", "10.7.0.0/24")
                .unwrap_err()
                .starts_with("invalid network name \"a b\"")
        );
        attach(&mut t, "host1", "c1", &["net:blue"]).unwrap();
        assert_eq!(
            t.delete_network("blue").unwrap_err().to_string(),
            "network blue still has 1 endpoint(s), e.g. c1 on host1"
        );
        assert_eq!(
            t.delete_network("default").unwrap_err().to_string(),
            "the default network cannot be removed"
        );
        assert_eq!(
            t.delete_network("green").unwrap_err().to_string(),
            "unknown network green"
        );
        detach(&mut t, "host1", "c1", &[]).unwrap();
        let changes = t.delete_network("blue").unwrap();
        apply_all(&mut t, changes);
        assert!(!t.networks.contains_key("blue"));
    }

    #[test]
    fn removing_a_dead_peer_frees_its_addresses() {
        let mut t = two_hosts();
        attach(&mut t, "host2", "c2", &["192.168.0.2/24"]).unwrap();
        assert_eq!(
            t.remove_peer("host2", true).unwrap_err().to_string(),
            "peer host2 is connected: only a peer whose agent is gone can be removed"
        );
        let (released, changes) = t.remove_peer("host2", false).unwrap();
        assert_eq!(released, ["192.168.0.2/24"]);
        apply_all(&mut t, changes);
        assert!(!t.peers.contains_key("host2"));
        assert!(attach(&mut t, "host1", "c1", &["192.168.0.2/24"]).is_ok());
    }
}
