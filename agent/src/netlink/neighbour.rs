//! FDB entries of the VXLAN devices (which VTEP holds a MAC) and their neighbour entries (the
//! ARP and neighbour discovery answers for remote endpoints, and the probe device's peers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context;
use futures::TryStreamExt;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use rtnetlink::Handle;
use weft_proto::names::Mac;

use super::{acked, reason, tolerate};
use crate::desired::{FdbEntry, Neighbour};

fn fdb_message(vxlan: u32, entry: &FdbEntry, via: Option<u32>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = vxlan;
    msg.header.state = NeighbourState::Permanent;
    // NTF_SELF: the entry belongs to the VXLAN device's own table, where `dst` means a VTEP.
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.0.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(match entry.dst {
            IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
            IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
        }));
    // The interface a link-local destination is on (`via` of `bridge fdb`).
    if let Some(via) = via {
        msg.attributes.push(NeighbourAttribute::IfIndex(via));
    }
    msg
}

/// A neighbour-table dump of one address family.
async fn dump_neighbours(
    handle: &Handle,
    family: AddressFamily,
    what: &str,
) -> anyhow::Result<Vec<NeighbourMessage>> {
    handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(reason)
        .with_context(|| format!("cannot dump the {what}"))
}

/// The link-layer address and IP destination of a neighbour or FDB entry, where it has them.
fn mac_and_ip(msg: NeighbourMessage) -> Option<(Mac, IpAddr)> {
    let (mut mac, mut ip) = (None, None);
    for attr in msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = Mac::from_slice(&bytes),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)) => ip = Some(addr.into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(addr)) => {
                ip = Some(addr.into())
            }
            // Bridge-family dumps do not say the address family of NDA_DST: go by length.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(bytes.as_slice())
                        .ok()
                        .map(|b| Ipv4Addr::from(b).into()),
                    16 => <[u8; 16]>::try_from(bytes.as_slice())
                        .ok()
                        .map(|b| Ipv6Addr::from(b).into()),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Some((mac?, ip?))
}

/// Every device's own FDB entries that have a destination VTEP (VXLAN devices'), with the
/// device's index: one dump serves every network.
pub async fn fdb_entries(handle: &Handle) -> anyhow::Result<Vec<(u32, FdbEntry)>> {
    let msgs = dump_neighbours(handle, AddressFamily::Bridge, "FDB").await?;
    Ok(msgs
        .into_iter()
        .filter(|msg| msg.header.flags.contains(NeighbourFlags::Own))
        .filter_map(|msg| {
            let index = msg.header.ifindex;
            let (mac, dst) = mac_and_ip(msg)?;
            Some((index, FdbEntry { mac, dst }))
        })
        .collect())
}

/// Adds a permanent FDB entry. Flood entries (all-zero MAC) are appended, since there is one per
/// remote peer under the same MAC; unicast entries replace any older destination of their MAC.
pub async fn fdb_add(
    handle: &Handle,
    vxlan: u32,
    entry: &FdbEntry,
    via: Option<u32>,
) -> anyhow::Result<()> {
    let how = if entry.mac.is_zero() {
        NLM_F_CREATE | NLM_F_APPEND
    } else {
        NLM_F_CREATE | NLM_F_REPLACE
    };
    acked(
        handle,
        RouteNetlinkMessage::NewNeighbour(fdb_message(vxlan, entry, via)),
        how,
    )
    .await
    .map_err(reason)
    .with_context(|| format!("cannot add FDB entry {entry}"))
}

pub async fn fdb_del(handle: &Handle, vxlan: u32, entry: &FdbEntry) -> anyhow::Result<()> {
    let deleted = handle
        .neighbours()
        .del(fdb_message(vxlan, entry, None))
        .execute()
        .await;
    tolerate(deleted, Errno::ENOENT)
        .map_err(reason)
        .with_context(|| format!("cannot delete FDB entry {entry}"))
}

/// Every permanent neighbour entry with its link's index: the VXLAN devices' answers to ARP
/// (IPv4) and neighbour discovery (IPv6), and the probe device's peers (IPv6).
pub async fn neighbours(handle: &Handle) -> anyhow::Result<Vec<(u32, Neighbour)>> {
    let mut msgs = dump_neighbours(handle, AddressFamily::Inet, "neighbour table").await?;
    msgs.extend(dump_neighbours(handle, AddressFamily::Inet6, "IPv6 neighbour table").await?);
    Ok(msgs
        .into_iter()
        .filter(|msg| msg.header.state == NeighbourState::Permanent)
        .filter_map(|msg| {
            let index = msg.header.ifindex;
            let (mac, ip) = mac_and_ip(msg)?;
            Some((index, Neighbour { ip, mac }))
        })
        .collect())
}

/// Adds (or corrects) a permanent neighbour entry.
pub async fn neigh_add(handle: &Handle, index: u32, n: &Neighbour) -> anyhow::Result<()> {
    handle
        .neighbours()
        .add(index, n.ip)
        .link_layer_address(&n.mac.0)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(reason)
        .with_context(|| format!("cannot add neighbour {} lladdr {}", n.ip, n.mac))
}

pub async fn neigh_del(handle: &Handle, index: u32, n: &Neighbour) -> anyhow::Result<()> {
    let mut msg = NeighbourMessage::default();
    msg.header.ifindex = index;
    let (family, dst) = match n.ip {
        IpAddr::V4(ip) => (AddressFamily::Inet, NeighbourAddress::Inet(ip)),
        IpAddr::V6(ip) => (AddressFamily::Inet6, NeighbourAddress::Inet6(ip)),
    };
    msg.header.family = family;
    msg.attributes.push(NeighbourAttribute::Destination(dst));
    tolerate(handle.neighbours().del(msg).execute().await, Errno::ENOENT)
        .map_err(reason)
        .with_context(|| format!("cannot delete neighbour {}", n.ip))
}
