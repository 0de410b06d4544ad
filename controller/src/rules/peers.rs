//! Peers: registering (and re-registering) one, and forgetting one whose agent is gone.

use std::net::Ipv4Addr;

use weft_proto::tables::EndpointId;
use weft_proto::v1::{Peer, delta::Change};

use super::dns::delete_dns_records;
use super::{TableError, View};

pub(super) fn register_peer(view: &View, peer: Peer) -> Result<Vec<Change>, TableError> {
    if peer.name.is_empty() {
        return Err(TableError::Invalid("peer name is empty".into()));
    }
    peer.advertise_addr.parse::<Ipv4Addr>().map_err(|_| {
        TableError::Invalid(format!(
            "peer {}: advertise address \"{}\" is not an IPv4 address",
            peer.name, peer.advertise_addr
        ))
    })?;
    if view.tables.peers.get(&peer.name) == Some(&peer) {
        return Ok(vec![]);
    }
    Ok(vec![Change::PeerPut(peer)])
}

pub(super) fn remove_peer(
    view: &View,
    name: &str,
    connected: bool,
) -> Result<(Vec<String>, Vec<Change>), TableError> {
    if !view.tables.peers.contains_key(name) {
        return Err(TableError::UnknownPeer(name.to_string()));
    }
    if connected {
        return Err(TableError::PeerConnected(name.to_string()));
    }
    let mut released = Vec::new();
    let mut changes = Vec::new();
    for ep in view.tables.endpoints_on(name) {
        released.extend(ep.cidrs.iter().cloned());
        changes.push(Change::EndpointDeleted(EndpointId::of(ep).key()));
    }
    changes.extend(delete_dns_records(view.tables, |r| r.peer == name));
    changes.push(Change::PeerDeleted(name.to_string()));
    Ok((released, changes))
}
