//! Reading the controller's tables as the controller itself holds them, through the same Watch
//! an agent opens: its first event is a snapshot of everything, at the controller's revision.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tonic::Streaming;
use tonic::transport::Channel;
use weft_proto::snapshot::Joiner;
use weft_proto::v1::controller_client::ControllerClient;
use weft_proto::v1::{
    DnsRecord, Endpoint, Network, Peer, Snapshot, WatchEvent, WatchRequest, watch_event::Event,
};

use crate::client::refused;

/// The controller's tables as JSON: `{"revision", "store_id", "peers", "networks", "endpoints",
/// "dns_records"}`, watched
/// as `watcher`. The controller counts it as a watcher only while the dump runs; a name that is
/// no peer of the tables never shows in `status peers`.
pub async fn dump(mut client: ControllerClient<Channel>, watcher: &str) -> anyhow::Result<Value> {
    let mut stream = refused(
        client
            .watch(WatchRequest {
                peer: watcher.to_string(),
                // No revision of ours: the controller must answer with a whole snapshot.
                from_revision: 0,
                snapshot_in_parts: true,
                store_id: String::new(),
            })
            .await,
    )?;
    let (revision, store_id, snapshot) = receive_snapshot(&mut stream).await?;
    Ok(tables_json(revision, &store_id, &snapshot))
}

/// Reads the snapshot a watch from revision 0 starts with, all its parts; returns it with its
/// revision and the id of the controller's store.
pub async fn receive_snapshot(
    stream: &mut Streaming<WatchEvent>,
) -> anyhow::Result<(u64, String, Snapshot)> {
    let mut joiner = Joiner::default();
    loop {
        let event = stream
            .message()
            .await
            .context("watch stream broke")?
            .context("watch stream ended before the snapshot was whole")?;
        match joiner.take(event)? {
            None => {}
            Some(WatchEvent {
                revision,
                event: Some(Event::Snapshot(snapshot)),
                store_id,
            }) => return Ok((revision, store_id, snapshot)),
            Some(other) => bail!(
                "the first event of a watch from revision 0 is not a snapshot: {:?} at revision {}",
                other.event,
                other.revision
            ),
        }
    }
}

fn tables_json(revision: u64, store_id: &str, snapshot: &Snapshot) -> Value {
    json!({
        "revision": revision,
        "store_id": store_id,
        "peers": snapshot.peers.iter().map(peer_json).collect::<Vec<_>>(),
        "networks": snapshot.networks.iter().map(network_json).collect::<Vec<_>>(),
        "endpoints": snapshot.endpoints.iter().map(endpoint_json).collect::<Vec<_>>(),
        "dns_records": snapshot.dns_records.iter().map(dns_json).collect::<Vec<_>>(),
    })
}

fn peer_json(peer: &Peer) -> Value {
    json!({"name": peer.name, "advertise_addr": peer.advertise_addr})
}

fn network_json(network: &Network) -> Value {
    json!({"name": network.name, "subnet": network.subnet, "vni": network.vni})
}

fn endpoint_json(ep: &Endpoint) -> Value {
    json!({
        "network": ep.network,
        "container_id": ep.container_id,
        "mac": ep.mac,
        "cidrs": ep.cidrs,
        "peer": ep.peer,
        "host_ifname": ep.host_ifname,
        "container_ifname": ep.container_ifname,
    })
}

fn dns_json(r: &DnsRecord) -> Value {
    json!({"name": r.name, "ip": r.ip, "peer": r.peer, "container_id": r.container_id})
}
