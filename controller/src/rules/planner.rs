//! The tables as one request sees them while it is planned: networks it creates and addresses it
//! takes count at once, so two parts of one request cannot take the same thing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_proto::addr::NetRef;
use weft_proto::names::PROBE_VNI;
use weft_proto::rows::{NetworkRow, RowChange};
use weft_proto::subnet::canonical;
use weft_proto::tables::{DEFAULT_NETWORK, DEFAULT_VNI};

use super::{TableError, View, check_prefix};
use crate::index::Index;
use crate::ipam::{Holder, Pool, Taken};

/// Largest VNI a network may have: VXLAN has 24 bits, and the last is the probe device's.
const MAX_VNI: u32 = PROBE_VNI - 1;

/// What one request has planned so far.
pub(super) struct Planner<'a> {
    pub(super) index: &'a Index,
    pub(super) networks: BTreeMap<String, NetworkRow>,
    /// Pools of the networks this request creates.
    pub(super) new_pools: BTreeMap<String, Vec<Pool>>,
    /// Addresses this request takes, per network.
    pub(super) taken: BTreeMap<String, Taken>,
    pub(super) changes: Vec<RowChange>,
}

impl<'a> Planner<'a> {
    pub(super) fn new(view: &View<'a>) -> Self {
        Planner {
            index: view.index,
            networks: view.tables.networks.clone(),
            new_pools: BTreeMap::new(),
            taken: BTreeMap::new(),
            changes: Vec::new(),
        }
    }

    /// The network one of whose subnets is `subnet`. With `create`, one is made (named by the
    /// subnet) when no network has it; a network that overlaps without being equal is an error.
    pub(super) fn network_for_subnet(
        &mut self,
        subnet: IpNetwork,
        create: bool,
    ) -> Result<Option<String>, TableError> {
        check_prefix(subnet)?;
        let subnet = canonical(subnet);
        let wanted = subnet.to_string();
        for net in self.networks.values() {
            for theirs in &net.subnets {
                if *theirs == subnet {
                    return Ok(Some(net.name.clone()));
                }
                if overlap(*theirs, subnet) {
                    return Err(TableError::Overlap {
                        subnet: wanted,
                        other: net.name.clone(),
                        other_subnet: theirs.to_string(),
                    });
                }
            }
        }
        if !create {
            return Ok(None);
        }
        self.add_network(&wanted, vec![subnet], false)?;
        Ok(Some(wanted))
    }

    /// `subnets` as [`super::networks`] checked them: one or two, IPv4 first.
    pub(super) fn add_network(
        &mut self,
        name: &str,
        subnets: Vec<IpNetwork>,
        encrypted: bool,
    ) -> Result<NetworkRow, TableError> {
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
        let subnets: Vec<IpNetwork> = subnets.into_iter().map(canonical).collect();
        let pools = subnets.iter().map(|s| Pool::new(name, *s)).collect();
        let net = NetworkRow {
            name: name.to_string(),
            subnets,
            vni,
            encrypted,
        };
        self.networks.insert(net.name.clone(), net.clone());
        self.new_pools.insert(net.name.clone(), pools);
        self.changes.push(RowChange::NetworkPut(net.clone()));
        Ok(net)
    }

    pub(super) fn network_by_ref(&mut self, r: &NetRef) -> Result<String, TableError> {
        match r {
            NetRef::Default => Ok(DEFAULT_NETWORK.to_string()),
            NetRef::Subnet(subnet) => Ok(self
                .network_for_subnet(*subnet, true)?
                .expect("created when missing")),
            NetRef::Name(name) if self.networks.contains_key(name) => Ok(name.clone()),
            NetRef::Name(name) => Err(TableError::UnknownNetwork(name.clone())),
        }
    }

    /// The network's pools (recorded addresses, one per subnet) and what this request has
    /// taken there.
    pub(super) fn pools(&mut self, network: &str) -> Result<(&[Pool], &mut Taken), TableError> {
        let pools = self
            .new_pools
            .get(network)
            .or_else(|| self.index.pools.get(network))
            .ok_or_else(|| TableError::UnknownNetwork(network.to_string()))?;
        Ok((pools, self.taken.entry(network.to_string()).or_default()))
    }

    /// Claims `cidr` in `network`; true if the holder did not have it yet.
    pub(super) fn claim(
        &mut self,
        network: &str,
        cidr: IpNetwork,
        holder: &Holder,
    ) -> Result<bool, TableError> {
        let (pools, taken) = self.pools(network)?;
        let pool = pools
            .iter()
            .find(|p| p.subnet.is_ipv4() == cidr.is_ipv4())
            .ok_or_else(|| TableError::UnknownNetwork(canonical(cidr).to_string()))?;
        let new = pool.claim(cidr.ip(), holder, taken)?;
        taken.insert(cidr.ip(), holder.clone());
        Ok(new)
    }

    /// Counts `ip` of `network` as `holder`'s from now on in this request, whoever holds it in
    /// the tables (an address taken over from another container).
    pub(super) fn hand_over(&mut self, network: &str, ip: IpAddr, holder: &Holder) {
        self.taken
            .entry(network.to_string())
            .or_default()
            .insert(ip, holder.clone());
    }

    /// Takes the lowest free address of `network`'s subnet `subnet`, with its prefix.
    pub(super) fn allocate(
        &mut self,
        network: &str,
        subnet: IpNetwork,
        holder: &Holder,
    ) -> Result<IpNetwork, TableError> {
        let (pools, taken) = self.pools(network)?;
        let pool = pools
            .iter()
            .find(|p| p.subnet == subnet)
            .ok_or_else(|| TableError::UnknownNetwork(network.to_string()))?;
        let ip = pool.allocate(holder, taken)?;
        let cidr = IpNetwork::new(ip, pool.subnet.prefix()).expect("a valid prefix");
        taken.insert(ip, holder.clone());
        Ok(cidr)
    }

    /// The network a detach's `net:` argument means, which must exist.
    pub(super) fn existing_network(&self, r: &NetRef) -> Result<String, TableError> {
        match r {
            NetRef::Default => Ok(DEFAULT_NETWORK.to_string()),
            NetRef::Name(name) if self.networks.contains_key(name) => Ok(name.clone()),
            NetRef::Name(name) => Err(TableError::UnknownNetwork(name.clone())),
            NetRef::Subnet(subnet) => self
                .networks
                .values()
                .find(|n| n.subnets.contains(&canonical(*subnet)))
                .map(|n| n.name.clone())
                .ok_or_else(|| TableError::UnknownNetwork(canonical(*subnet).to_string())),
        }
    }
}

/// Whether two subnets share an address (never across families).
fn overlap(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}
