//! Peers: registering (and re-registering) one, and forgetting one whose agent is gone.

use std::net::Ipv4Addr;

use ipnetwork::IpNetwork;
use weft_proto::rows::{PeerRow, RowChange};
use weft_proto::v1::Peer;

use super::dns::delete_dns_records;
use super::{TableError, View};

pub(super) fn register_peer(view: &View, peer: Peer) -> Result<Vec<RowChange>, TableError> {
    if peer.name.is_empty() {
        return Err(TableError::Invalid("peer name is empty".into()));
    }
    if peer.advertise_addr.parse::<Ipv4Addr>().is_err() {
        return Err(TableError::Invalid(format!(
            "peer {}: advertise address \"{}\" is not an IPv4 address",
            peer.name, peer.advertise_addr
        )));
    }
    // A new key (a host re-joined) replaces the old one: the change reaches every agent.
    let peer = PeerRow::read(peer).map_err(|e| TableError::Invalid(e.to_string()))?;
    if view.tables.peers.get(&peer.name) == Some(&peer) {
        return Ok(vec![]);
    }
    Ok(vec![RowChange::PeerPut(peer)])
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
