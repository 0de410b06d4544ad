//! FDB entries of the VXLAN devices (which VTEP holds a MAC) and their neighbour entries (the
//! ARP and neighbour discovery answers for remote endpoints, and the probe device's peers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context;
use futures::TryStreamExt;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NetlinkPayload};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use rtnetlink::Handle;
use rtnetlink::sys::AsyncSocket;
use weft_proto::names::Mac;

use super::batch::{self, Request};
use super::reason;
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

/// A neighbour-table dump of one address family, each entry read by `read` as it arrives: at
/// 100,000 entries, holding the messages themselves would take tens of MB.
async fn dump_neighbours<T>(
    handle: &Handle,
    family: AddressFamily,
    what: &str,
    read: impl Fn(NeighbourMessage) -> Option<T>,
) -> anyhow::Result<Vec<T>> {
    handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_filter_map(|msg| futures::future::ready(Ok(read(msg))))
        .try_collect()
        .await
        .map_err(reason)
        .with_context(|| format!("cannot dump the {what}"))
}

/// The link-layer address and IP destination of a neighbour or FDB entry, where it has them.
fn mac_and_ip(msg: NeighbourMessage) -> (Option<Mac>, Option<IpAddr>) {
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
    (mac, ip)
}

/// A device's own FDB entry with a destination VTEP (a VXLAN device's), with the device's
/// index.
fn own_fdb_entry(msg: NeighbourMessage) -> Option<(u32, FdbEntry)> {
    if !msg.header.flags.contains(NeighbourFlags::Own) {
        return None;
    }
    let index = msg.header.ifindex;
    let (Some(mac), Some(dst)) = mac_and_ip(msg) else {
        return None;
    };
    Some((index, FdbEntry { mac, dst }))
}

/// Every device's own FDB entries that have a destination VTEP (VXLAN devices'), with the
/// device's index: one dump serves every network.
pub async fn fdb_entries(handle: &Handle) -> anyhow::Result<Vec<(u32, FdbEntry)>> {
    dump_neighbours(handle, AddressFamily::Bridge, "FDB", own_fdb_entry).await
}

/// Runs a batch where the caller is (the kernel does the work within the system calls), while
/// the runtime moves this worker's other tasks elsewhere.
async fn in_batch(send: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    tokio::task::block_in_place(send)
}

/// Adds permanent FDB entries to VXLAN device `vxlan` (see [`batch`]). Flood entries (all-zero
/// MAC) are appended, since there is one per remote peer under the same MAC; unicast entries
/// replace any older destination of their MAC.
pub async fn fdb_add_all(vxlan: u32, entries: &[FdbEntry], via: Option<u32>) -> anyhow::Result<()> {
    in_batch(|| {
        batch::send_all(
            entries,
            |entry| Request {
                message: RouteNetlinkMessage::NewNeighbour(fdb_message(vxlan, entry, via)),
                flags: match entry.mac.is_zero() {
                    true => NLM_F_CREATE | NLM_F_APPEND,
                    false => NLM_F_CREATE | NLM_F_REPLACE,
                },
            },
            None,
            |entry| format!("cannot add FDB entry {entry}"),
        )
    })
    .await
}

/// Deletes FDB entries of VXLAN device `vxlan`; those already gone are no failure.
pub async fn fdb_del_all(vxlan: u32, entries: &[FdbEntry]) -> anyhow::Result<()> {
    in_batch(|| {
        batch::send_all(
            entries,
            |entry| Request {
                message: RouteNetlinkMessage::DelNeighbour(fdb_message(vxlan, entry, None)),
                flags: 0,
            },
            Some(Errno::ENOENT),
            |entry| format!("cannot delete FDB entry {entry}"),
        )
    })
    .await
}

/// Every permanent neighbour entry with its link's index: the VXLAN devices' answers to ARP
/// (IPv4) and neighbour discovery (IPv6), and the probe device's peers (IPv6).
pub async fn neighbours(handle: &Handle) -> anyhow::Result<Vec<(u32, Neighbour)>> {
    let mut held =
        dump_neighbours(handle, AddressFamily::Inet, "neighbour table", permanent).await?;
    held.extend(
        dump_neighbours(
            handle,
            AddressFamily::Inet6,
            "IPv6 neighbour table",
            permanent,
        )
        .await?,
    );
    Ok(held)
}

/// A permanent neighbour entry, with its link's index.
fn permanent(msg: NeighbourMessage) -> Option<(u32, Neighbour)> {
    if msg.header.state != NeighbourState::Permanent {
        return None;
    }
    let index = msg.header.ifindex;
    let (Some(mac), Some(ip)) = mac_and_ip(msg) else {
        return None;
    };
    Some((index, Neighbour { ip, mac }))
}

/// A change to an FDB or neighbour entry, as the kernel's notifications tell it.
#[derive(Debug)]
pub enum EntryEvent {
    /// A device's own FDB entry with a destination came (`present`) or went.
    Fdb {
        index: u32,
        entry: FdbEntry,
        present: bool,
    },
    /// The permanent neighbour entry of `ip` now has `mac`; none: `ip` has no permanent entry
    /// any more (deleted, or replaced by one the kernel manages).
    Neighbour {
        index: u32,
        ip: IpAddr,
        mac: Option<Mac>,
    },
    /// Notifications were lost: the socket's buffer overflowed.
    Overrun,
}

/// What an FDB or neighbour notification says, if it is about an entry weft could hold.
fn entry_event(msg: NeighbourMessage, present: bool) -> Option<EntryEvent> {
    if msg.header.family == AddressFamily::Bridge {
        let (index, entry) = own_fdb_entry(msg)?;
        return Some(EntryEvent::Fdb {
            index,
            entry,
            present,
        });
    }
    let index = msg.header.ifindex;
    let permanent = present && msg.header.state == NeighbourState::Permanent;
    let (mac, ip) = mac_and_ip(msg);
    Some(EntryEvent::Neighbour {
        index,
        ip: ip?,
        mac: mac.filter(|_| permanent),
    })
}

/// How much the kernel may queue for the notification socket before it drops them: room for a
/// few thousand, so that programming a large network rarely overflows it.
const EVENTS_BUFFER: usize = 4 << 20;

/// The kernel's FDB and neighbour notifications (what `ip monitor neigh` shows), on their own
/// socket.
pub fn entry_events() -> anyhow::Result<impl futures::Stream<Item = EntryEvent>> {
    let (mut connection, _, messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Neigh])
            .context("cannot subscribe to neighbour notifications")?;
    // Root may pass the system's limit (net.core.rmem_max); others get what it allows.
    let socket = connection.socket_mut().socket_mut();
    if setsockopt(&*socket, sockopt::RcvBufForce, &EVENTS_BUFFER).is_err() {
        let _ = socket.set_rx_buf_sz(EVENTS_BUFFER);
    }
    tokio::spawn(connection);
    Ok(futures::StreamExt::filter_map(
        messages,
        |(msg, _)| async move {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(msg)) => {
                    entry_event(msg, true)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(msg)) => {
                    entry_event(msg, false)
                }
                NetlinkPayload::Overrun(_) => Some(EntryEvent::Overrun),
                _ => None,
            }
        },
    ))
}

/// A neighbour message for `n` on link `index`: its address, and its MAC if `with_mac`.
fn neighbour_message(index: u32, n: &Neighbour, with_mac: bool) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.ifindex = index;
    let (family, dst) = match n.ip {
        IpAddr::V4(ip) => (AddressFamily::Inet, NeighbourAddress::Inet(ip)),
        IpAddr::V6(ip) => (AddressFamily::Inet6, NeighbourAddress::Inet6(ip)),
    };
    msg.header.family = family;
    msg.attributes.push(NeighbourAttribute::Destination(dst));
    if with_mac {
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(n.mac.0.to_vec()));
    }
    msg
}

/// Adds (or corrects) permanent neighbour entries on link `index` (see [`batch`]).
pub async fn neigh_add_all(index: u32, neighbours: &[Neighbour]) -> anyhow::Result<()> {
    in_batch(|| {
        batch::send_all(
            neighbours,
            |n| Request {
                message: RouteNetlinkMessage::NewNeighbour(neighbour_message(index, n, true)),
                flags: NLM_F_CREATE | NLM_F_REPLACE,
            },
            None,
            |n| format!("cannot add neighbour {} lladdr {}", n.ip, n.mac),
        )
    })
    .await
}

/// Deletes neighbour entries of link `index`; those already gone are no failure.
pub async fn neigh_del_all(index: u32, neighbours: &[Neighbour]) -> anyhow::Result<()> {
    in_batch(|| {
        batch::send_all(
            neighbours,
            |n| Request {
                message: RouteNetlinkMessage::DelNeighbour(neighbour_message(index, n, false)),
                flags: 0,
            },
            Some(Errno::ENOENT),
            |n| format!("cannot delete neighbour {}", n.ip),
        )
    })
    .await
}
