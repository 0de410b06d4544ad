//! Peers: registering (and re-registering) one, and forgetting one whose agent is gone.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_proto::names::host_tag;
use weft_proto::rows::{PeerRow, RowChange};
use weft_proto::v1::Peer;

use super::dns::delete_dns_records;
use super::{TableError, View};

pub(super) fn register_peer(view: &View, peer: Peer) -> Result<Vec<RowChange>, TableError> {
    if peer.name.is_empty() {
        return Err(TableError::Invalid("peer name is empty".into()));
    }
    // A new key (a host re-joined) replaces the old one: the change reaches every agent.
    let peer = PeerRow::read(peer).map_err(|e| TableError::Invalid(e.to_string()))?;
    check_underlay(view, &peer).map_err(|why| {
        TableError::Invalid(format!(
            "peer {}: advertise address {}: {why}",
            peer.name, peer.addr
        ))
    })?;
    if view.tables.peers.get(&peer.name) == Some(&peer) {
        return Ok(vec![]);
    }
    Ok(vec![RowChange::PeerPut(peer)])
}

/// Whether a peer's VTEP can join the others': a unicast address of the family theirs are
/// (one VXLAN device cannot send over both), and not one whose tag ([`host_tag`]) another
/// address has.
fn check_underlay(view: &View, peer: &PeerRow) -> Result<(), String> {
    let unusable = match peer.addr {
        IpAddr::V4(ip) => ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast(),
        IpAddr::V6(ip) => ip.is_unspecified() || ip.is_multicast() || ip.is_unicast_link_local(),
    };
    if unusable {
        return Err("not a unicast address other hosts can send to".into());
    }
    let others = view.tables.peers.values().filter(|p| p.name != peer.name);
    for other in others {
        if other.addr.is_ipv4() != peer.addr.is_ipv4() {
            let family = |ip: IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(format!(
                "the underlay is {} (peer {} advertises {}): weft does not mix IPv4 and IPv6 \
                 underlays in one cluster",
                family(other.addr),
                other.name,
                other.addr
            ));
        }
        if other.addr != peer.addr && host_tag(other.addr) == host_tag(peer.addr) {
            return Err(format!(
                "its probe and tunnel addresses would be those of peer {} ({}); advertise \
                 another address",
                other.name, other.addr
            ));
        }
    }
    Ok(())
}

pub(super) fn remove_peer(
    view: &View,
    name: &str,
    connected: bool,
) -> Result<(Vec<IpNetwork>, Vec<RowChange>), TableError> {
    if !view.tables.peers.contains_key(name) {
        return Err(TableError::UnknownPeer(name.to_string()));
    }
    if connected {
        return Err(TableError::PeerConnected(name.to_string()));
    }
    let mut released = Vec::new();
    let mut changes = Vec::new();
    for ep in view.tables.endpoints_on(name) {
        released.extend(ep.cidrs.iter().copied());
        changes.push(RowChange::EndpointDeleted(ep.id.clone()));
    }
    changes.extend(delete_dns_records(view.tables, |r| r.peer == name));
    changes.push(RowChange::PeerDeleted(name.to_string()));
    Ok((released, changes))
}
