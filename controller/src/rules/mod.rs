//! The rules that keep the controller's tables consistent. Pure: every request is first checked
//! and turned into a list of changes, which the caller persists and only then applies, so a
//! failed write changes nothing. One file per thing ruled on: [`endpoints`] (attach, detach),
//! [`networks`], [`peers`], [`dns`]; [`planner`] holds what one request has taken so far.

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use weft_proto::addr::AddrSpec;
use weft_proto::names::{Mac, short_container_id};
use weft_proto::rows::{EndpointRow, NetworkRow, RowChange};
use weft_proto::subnet::{canonical, prefix_range};
use weft_proto::tables::Tables;
use weft_proto::v1::{DnsRecord, Peer};

use crate::index::Index;
use crate::ipam::IpamError;

mod dns;
mod endpoints;
mod networks;
mod peers;
mod planner;
#[cfg(test)]
mod tests;

/// Tries at a MAC (and so a veth name) no other endpoint has.
const MAC_TRIES: usize = 16;

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
    #[error("MAC {mac} belongs to an endpoint of peer {owner}, not of {peer}")]
    OthersMac {
        mac: String,
        owner: String,
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
    pub endpoints: Vec<EndpointRow>,
    pub networks: Vec<NetworkRow>,
    pub cidrs: Vec<String>,
    pub added: Vec<String>,
}

/// What an attach gives besides addresses: the container's DNS name (empty: keep the one it
/// has), the interface of a new endpoint in the container (empty: ethwe, ethwe1, ...), and the
/// container of the same peer whose static addresses it takes over (empty: none).
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions<'a> {
    pub dns_name: &'a str,
    pub ifname: &'a str,
    pub take_from: &'a str,
}

/// What a detach did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detached {
    pub updated: Vec<EndpointRow>,
    pub removed: Vec<EndpointRow>,
    pub released: Vec<IpNetwork>,
}

/// Checks requests against the tables and plans the changes they make.
pub trait TableRules {
    /// Makes the default network exist with `range` (and `range6`: dual stack), encrypted or
    /// not; refuses to move a stored one or change its encryption.
    fn ensure_default_network(
        &self,
        range: Ipv4Network,
        range6: Option<Ipv6Network>,
        encrypted: bool,
    ) -> Result<Vec<RowChange>, TableError>;
    /// Adds or updates a peer; nothing changes when it is already known as it is.
    fn register_peer(&self, peer: Peer) -> Result<Vec<RowChange>, TableError>;
    /// Claims or allocates `addrs` (none: one from the default network) for a container, and
    /// names it `dns_name` (empty: keeps the name it has). A new endpoint's interface in the
    /// container is `ifname` (empty: ethwe, ethwe1, ...).
    fn attach(
        &self,
        peer: &str,
        container_id: &str,
        addrs: &[AddrSpec],
        options: AttachOptions<'_>,
        new_mac: &mut dyn FnMut() -> Mac,
    ) -> Result<(Attached, Vec<RowChange>), TableError>;
    /// Releases `addrs` (none: all) of a container; with `only_mac`, only if the container still
    /// has the endpoint of that MAC (an agent releasing what it saw without a veth).
    fn detach(
        &self,
        peer: &str,
        container_id: &str,
        addrs: &[AddrSpec],
        only_mac: &str,
    ) -> Result<(Detached, Vec<RowChange>), TableError>;
    /// Creates network `name` on `subnets` (an IPv4 one, an IPv6 one, or one of each);
    /// `encrypted`: its frames cross between hosts only inside WireGuard.
    fn create_network(
        &self,
        name: &str,
        subnets: &[String],
        encrypted: bool,
    ) -> Result<(NetworkRow, Vec<RowChange>), TableError>;
    fn delete_network(&self, name: &str) -> Result<Vec<RowChange>, TableError>;
    /// Forgets a peer that is not `connected`, releasing its endpoints.
    fn remove_peer(
        &self,
        name: &str,
        connected: bool,
    ) -> Result<(Vec<IpNetwork>, Vec<RowChange>), TableError>;
    /// Adds DNS records for `peer`, or removes them (by name and address).
    fn update_dns(
        &self,
        peer: &str,
        remove: bool,
        records: &[DnsRecord],
    ) -> Result<Vec<RowChange>, TableError>;
}

/// The tables and their index, as the rules read them.
pub struct View<'a> {
    pub tables: &'a Tables,
    pub index: &'a Index,
}

impl TableRules for View<'_> {
    fn ensure_default_network(
        &self,
        range: Ipv4Network,
        range6: Option<Ipv6Network>,
        encrypted: bool,
    ) -> Result<Vec<RowChange>, TableError> {
        networks::ensure_default_network(self, range, range6, encrypted)
    }

    fn register_peer(&self, peer: Peer) -> Result<Vec<RowChange>, TableError> {
        peers::register_peer(self, peer)
    }

    fn attach(
        &self,
        peer: &str,
        container_id: &str,
        addrs: &[AddrSpec],
        options: AttachOptions<'_>,
        new_mac: &mut dyn FnMut() -> Mac,
    ) -> Result<(Attached, Vec<RowChange>), TableError> {
        endpoints::attach(self, peer, container_id, addrs, options, new_mac)
    }

    fn detach(
        &self,
        peer: &str,
        container_id: &str,
        addrs: &[AddrSpec],
        only_mac: &str,
    ) -> Result<(Detached, Vec<RowChange>), TableError> {
        endpoints::detach(self, peer, container_id, addrs, only_mac)
    }

    fn create_network(
        &self,
        name: &str,
        subnets: &[String],
        encrypted: bool,
    ) -> Result<(NetworkRow, Vec<RowChange>), TableError> {
        networks::create_network(self, name, subnets, encrypted)
    }

    fn delete_network(&self, name: &str) -> Result<Vec<RowChange>, TableError> {
        networks::delete_network(self, name)
    }

    fn remove_peer(
        &self,
        name: &str,
        connected: bool,
    ) -> Result<(Vec<IpNetwork>, Vec<RowChange>), TableError> {
        peers::remove_peer(self, name, connected)
    }

    fn update_dns(
        &self,
        peer: &str,
        remove: bool,
        records: &[DnsRecord],
    ) -> Result<Vec<RowChange>, TableError> {
        dns::update_dns(self, peer, remove, records)
    }
}

pub(super) fn check_prefix(subnet: IpNetwork) -> Result<(), TableError> {
    let range = prefix_range(subnet);
    if range.contains(&subnet.prefix()) {
        return Ok(());
    }
    Err(TableError::Invalid(format!(
        "prefix /{} of {} is outside /{}../{}",
        subnet.prefix(),
        canonical(subnet),
        range.start(),
        range.end()
    )))
}
