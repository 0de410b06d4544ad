//! Every kernel request the agent makes, through rtnetlink: links (bridge, VXLAN, veth),
//! addresses, routes and FDB entries. Callers get plain values ([`Link`], [`FdbEntry`]) back.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, State,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteScope;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use crate::desired::{FdbEntry, Neighbour};
use weft_proto::names::Mac;

/// What the agent needs to know of a kernel link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    /// Operationally up: the kernel has activated its queues, so a frame sent now is not
    /// dropped (RFC 2863 state, set a moment after the carrier comes on).
    pub running: bool,
    pub controller: Option<u32>,
    /// For a veth, the index of its other end (in the namespace that end is in).
    pub peer: Option<u32>,
    /// That other end is in another namespace (IFLA_LINK_NETNSID): `peer` is not an index of
    /// this one.
    pub peer_elsewhere: bool,
    pub kind: Option<InfoKind>,
    pub vxlan: Vec<InfoVxlan>,
}

impl Link {
    fn from_message(msg: netlink_packet_route::link::LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            running: false,
            controller: None,
            peer: None,
            peer_elsewhere: false,
            kind: None,
            vxlan: Vec::new(),
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Address(bytes) => link.mac = Mac::from_slice(&bytes),
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::OperState(state) => link.running = state == State::Up,
                LinkAttribute::Controller(index) => link.controller = Some(index),
                LinkAttribute::Link(index) => link.peer = Some(index),
                LinkAttribute::LinkNetNsId(_) => link.peer_elsewhere = true,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind),
                            LinkInfo::Data(InfoData::Vxlan(data)) => link.vxlan = data,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// The container has an interface of the name weft gives its own (another tool's, say).
#[derive(Debug, thiserror::Error)]
#[error("the container already has an interface {0}")]
pub struct InterfaceExists(pub String);

/// The kernel's errno behind a netlink error, if there is one.
fn errno(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error().map(Errno::from_raw),
        _ => None,
    }
}

/// A readable reason: the kernel's own words where it gave some.
fn reason(err: rtnetlink::Error) -> anyhow::Error {
    match &err {
        rtnetlink::Error::NetlinkError(msg) => anyhow!("{}", msg.to_io()),
        _ => anyhow!("{err}"),
    }
}

/// Sends one request that the kernel answers with an ACK.
async fn acked(
    handle: &Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut response = handle.clone().request(req)?;
    while let Some(msg) = futures::StreamExt::next(&mut response).await {
        if let NetlinkPayload::Error(err) = msg.payload {
            return Err(rtnetlink::Error::NetlinkError(err));
        }
    }
    Ok(())
}

pub async fn link_by_name(handle: &Handle, name: &str) -> anyhow::Result<Option<Link>> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(msg) => Ok(msg.map(Link::from_message)),
        Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(None),
        Err(e) => Err(reason(e)).with_context(|| format!("cannot read link {name}")),
    }
}

pub async fn links(handle: &Handle) -> anyhow::Result<Vec<Link>> {
    handle
        .link()
        .get()
        .execute()
        .map_ok(Link::from_message)
        .try_collect()
        .await
        .map_err(reason)
        .context("cannot list links")
}

async fn add_link(
    handle: &Handle,
    name: &str,
    msg: netlink_packet_route::link::LinkMessage,
) -> anyhow::Result<Link> {
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(reason)
        .with_context(|| format!("cannot create link {name}"))?;
    link_by_name(handle, name)
        .await?
        .ok_or_else(|| anyhow!("link {name} vanished right after it was created"))
}

/// Sets MTU, controller (bridge) and up on a link, sending nothing when all are as wanted.
async fn settle_link(
    handle: &Handle,
    link: &Link,
    mtu: u32,
    controller: Option<u32>,
) -> anyhow::Result<()> {
    let mut msg = LinkUnspec::new_with_index(link.index);
    let mut changed = false;
    if link.mtu != mtu {
        msg = msg.mtu(mtu);
        changed = true;
    }
    if let Some(bridge) = controller.filter(|b| link.controller != Some(*b)) {
        msg = msg.controller(bridge);
        changed = true;
    }
    if !link.up {
        msg = msg.up();
        changed = true;
    }
    if !changed {
        return Ok(());
    }
    set_link(handle, msg.build())
        .await
        .with_context(|| format!("cannot set up link {}", link.name))
}

/// Waits until a link is operationally up, for at most `limit`: the kernel activates a new
/// veth's queues from a deferred work item (up to a second later), and drops what is sent
/// before. Returns whether it came up.
pub async fn wait_running(
    handle: &Handle,
    name: &str,
    limit: std::time::Duration,
) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if link_by_name(handle, name).await?.is_some_and(|l| l.running) {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Brings a link up, if it is not.
pub async fn set_up(handle: &Handle, link: &Link) -> anyhow::Result<()> {
    if link.up {
        return Ok(());
    }
    set_link(handle, LinkUnspec::new_with_index(link.index).up().build())
        .await
        .with_context(|| format!("cannot bring link {} up", link.name))
}

/// Changes a link as `msg` says.
async fn set_link(
    handle: &Handle,
    msg: netlink_packet_route::link::LinkMessage,
) -> anyhow::Result<()> {
    handle.link().set(msg).execute().await.map_err(reason)
}

pub async fn delete_link(handle: &Handle, link: &Link) -> anyhow::Result<()> {
    match handle.link().del(link.index).execute().await {
        Ok(()) => Ok(()),
        // Gone already: what we wanted.
        Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(()),
        Err(e) => Err(reason(e)).with_context(|| format!("cannot delete link {}", link.name)),
    }
}

/// Makes `name` a bridge that is up with `mtu`; keeps one that already is.
pub async fn ensure_bridge(handle: &Handle, name: &str, mtu: u32) -> anyhow::Result<Link> {
    let link = match link_by_name(handle, name).await? {
        Some(link) if link.kind == Some(InfoKind::Bridge) => link,
        Some(_) => anyhow::bail!("link {name} exists and is not a bridge"),
        None => add_link(handle, name, LinkBridge::new(name).mtu(mtu).build()).await?,
    };
    settle_link(handle, &link, mtu, None).await?;
    Ok(link)
}

/// The VXLAN device weft wants: one VNI, static FDB only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub mtu: u32,
}

impl VxlanSpec {
    fn matches(&self, link: &Link) -> bool {
        let has = |want: &InfoVxlan| link.vxlan.contains(want);
        link.kind == Some(InfoKind::Vxlan)
            && has(&InfoVxlan::Id(self.vni))
            && has(&InfoVxlan::Port(self.port))
            && has(&InfoVxlan::Local(self.local))
            && has(&InfoVxlan::Learning(false))
            && has(&InfoVxlan::Proxy(true))
    }
}

/// Makes `name` a VXLAN device as `spec` says, enslaved to `bridge` and up. One that already
/// matches is kept as it is; one that does not (say, another local address) is replaced.
pub async fn ensure_vxlan(
    handle: &Handle,
    name: &str,
    spec: VxlanSpec,
    bridge: &Link,
) -> anyhow::Result<Link> {
    let existing = link_by_name(handle, name).await?;
    let link = match existing {
        Some(link) if spec.matches(&link) => link,
        other => {
            if let Some(stale) = other {
                tracing::warn!(
                    link = name,
                    "replacing a VXLAN device whose settings differ"
                );
                delete_link(handle, &stale).await?;
            }
            let msg = LinkVxlan::new(name, spec.vni)
                .port(spec.port)
                .local(spec.local)
                .learning(false)
                // ARP for remote endpoints is answered from the neighbour table, not flooded.
                .proxy(true)
                .mtu(spec.mtu)
                .build();
            add_link(handle, name, msg).await?
        }
    };
    settle_link(handle, &link, spec.mtu, Some(bridge.index)).await?;
    Ok(link)
}

/// Creates a veth pair: `name` on `bridge`, up, here; `peer` (down, with its MAC and MTU) born
/// in the namespace open as `netns`. Creating the peer there spares moving it afterwards, which
/// cost 15–23 ms of a 33 ms attach (the kernel tears the device down in the old namespace).
pub async fn create_veth_into(
    handle: &Handle,
    name: &str,
    bridge: &Link,
    peer: &str,
    mac: Mac,
    mtu: u32,
    netns: &std::fs::File,
) -> anyhow::Result<Link> {
    use std::os::fd::AsRawFd;
    let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .address(mac.0.to_vec())
        .mtu(mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(name, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .mtu(mtu)
        .controller(bridge.index)
        .up()
        .build();
    add_link(handle, name, msg).await
}

/// Enslaves a link to a bridge and brings it up.
pub async fn attach_to_bridge(
    handle: &Handle,
    link: &Link,
    bridge: &Link,
    mtu: u32,
) -> anyhow::Result<()> {
    settle_link(handle, link, mtu, Some(bridge.index)).await
}

/// Gives a new (down) container interface its addresses, then its name and up in one request
/// (the kernel renames before it changes flags), then the multicast route. Until the rename
/// the interface does not count as plugged, so an agent that dies half-way leaves nothing that
/// looks finished.
pub async fn configure_container_if(
    handle: &Handle,
    link: &Link,
    name: &str,
    cidrs: &[ipnetwork::Ipv4Network],
) -> anyhow::Result<()> {
    add_addresses(handle, link, cidrs)
        .await
        .with_context(|| format!("cannot set up {name}"))?;
    let msg = LinkUnspec::new_with_index(link.index)
        .name(name.to_string())
        .up()
        .build();
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| match errno(&e) {
            Some(Errno::EEXIST) => InterfaceExists(name.to_string()).into(),
            _ => reason(e).context(format!("cannot bring {name} up")),
        })?;
    // Multicast goes out on the weft interface, as Weave does. A container in several networks
    // keeps it on the interface that got it first.
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::new(224, 0, 0, 0), 4)
        .output_interface(link.index)
        .scope(RouteScope::Link)
        .build();
    match handle.route().add(route).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(Errno::EEXIST) => Ok(()),
        Err(e) => {
            Err(reason(e)).with_context(|| format!("cannot add the multicast route on {name}"))
        }
    }
}

/// Adds addresses to a link; ones it already has are fine.
pub async fn add_addresses(
    handle: &Handle,
    link: &Link,
    cidrs: &[ipnetwork::Ipv4Network],
) -> anyhow::Result<()> {
    for cidr in cidrs {
        match handle
            .address()
            .add(link.index, IpAddr::V4(cidr.ip()), cidr.prefix())
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(Errno::EEXIST) => {}
            Err(e) => return Err(reason(e)).with_context(|| format!("cannot add address {cidr}")),
        }
    }
    Ok(())
}

/// The IPv4 addresses a link holds, with their prefixes.
pub async fn ipv4_addresses(
    handle: &Handle,
    link: &Link,
) -> anyhow::Result<std::collections::BTreeSet<ipnetwork::Ipv4Network>> {
    let held: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(link.index)
        .execute()
        .try_collect()
        .await
        .map_err(reason)
        .with_context(|| format!("cannot list the addresses of {}", link.name))?;
    Ok(held
        .iter()
        .flat_map(|msg| {
            msg.attributes.iter().filter_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V4(ip)) => {
                    ipnetwork::Ipv4Network::new(*ip, msg.header.prefix_len).ok()
                }
                _ => None,
            })
        })
        .collect())
}

/// Gives a link a MAC address.
pub async fn set_mac(handle: &Handle, link: &Link, mac: Mac) -> anyhow::Result<()> {
    let msg = LinkUnspec::new_with_index(link.index)
        .address(mac.0.to_vec())
        .build();
    set_link(handle, msg)
        .await
        .with_context(|| format!("cannot set the MAC of {} to {mac}", link.name))
}

/// Removes addresses from a link; ones it does not have are fine.
pub async fn del_addresses(
    handle: &Handle,
    link: &Link,
    cidrs: &[ipnetwork::Ipv4Network],
) -> anyhow::Result<()> {
    let held: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(link.index)
        .execute()
        .try_collect()
        .await
        .map_err(reason)
        .with_context(|| format!("cannot list the addresses of {}", link.name))?;
    for msg in held {
        let prefix = msg.header.prefix_len;
        let listed = msg.attributes.iter().any(|attr| {
            matches!(attr, AddressAttribute::Address(IpAddr::V4(ip))
                if cidrs.iter().any(|c| c.ip() == *ip && c.prefix() == prefix))
        });
        if listed {
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(reason)
                .with_context(|| format!("cannot remove an address of {}", link.name))?;
        }
    }
    Ok(())
}

fn fdb_message(vxlan: u32, entry: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = vxlan;
    msg.header.state = NeighbourState::Permanent;
    // NTF_SELF: the entry belongs to the VXLAN device's own table, where `dst` means a VTEP.
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.0.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            entry.dst,
        )));
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

/// The link-layer address and IPv4 destination of a neighbour or FDB entry, where it has them.
fn mac_and_ipv4(msg: NeighbourMessage) -> Option<(Mac, Ipv4Addr)> {
    let (mut mac, mut ip) = (None, None);
    for attr in msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = Mac::from_slice(&bytes),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)) => ip = Some(addr),
            // Bridge-family dumps do not say the address family of NDA_DST: go by length.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                ip = <[u8; 4]>::try_from(bytes.as_slice())
                    .ok()
                    .map(Ipv4Addr::from)
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
            let (mac, dst) = mac_and_ipv4(msg)?;
            Some((index, FdbEntry { mac, dst }))
        })
        .collect())
}

/// Adds a permanent FDB entry. Flood entries (all-zero MAC) are appended, since there is one per
/// remote peer under the same MAC; unicast entries replace any older destination of their MAC.
pub async fn fdb_add(handle: &Handle, vxlan: u32, entry: &FdbEntry) -> anyhow::Result<()> {
    let how = if entry.mac.is_zero() {
        NLM_F_CREATE | NLM_F_APPEND
    } else {
        NLM_F_CREATE | NLM_F_REPLACE
    };
    acked(
        handle,
        RouteNetlinkMessage::NewNeighbour(fdb_message(vxlan, entry)),
        how,
    )
    .await
    .map_err(reason)
    .with_context(|| format!("cannot add FDB entry {entry}"))
}

pub async fn fdb_del(handle: &Handle, vxlan: u32, entry: &FdbEntry) -> anyhow::Result<()> {
    match handle
        .neighbours()
        .del(fdb_message(vxlan, entry))
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(Errno::ENOENT) => Ok(()),
        Err(e) => Err(reason(e)).with_context(|| format!("cannot delete FDB entry {entry}")),
    }
}

/// Every permanent IPv4 neighbour entry with its link's index: the VXLAN devices' ARP answers.
pub async fn neighbours(handle: &Handle) -> anyhow::Result<Vec<(u32, Neighbour)>> {
    let msgs = dump_neighbours(handle, AddressFamily::Inet, "neighbour table").await?;
    Ok(msgs
        .into_iter()
        .filter(|msg| msg.header.state == NeighbourState::Permanent)
        .filter_map(|msg| {
            let index = msg.header.ifindex;
            let (mac, ip) = mac_and_ipv4(msg)?;
            Some((index, Neighbour { ip, mac }))
        })
        .collect())
}

/// Adds (or corrects) a permanent neighbour entry.
pub async fn neigh_add(handle: &Handle, index: u32, n: &Neighbour) -> anyhow::Result<()> {
    handle
        .neighbours()
        .add(index, IpAddr::V4(n.ip))
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
    msg.header.family = AddressFamily::Inet;
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            n.ip,
        )));
    match handle.neighbours().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(Errno::ENOENT) => Ok(()),
        Err(e) => Err(reason(e)).with_context(|| format!("cannot delete neighbour {}", n.ip)),
    }
}

/// A link appeared, changed or went away.
pub enum LinkEvent {
    Changed(Link),
    Removed(Link),
}

/// The kernel's link notifications (what `ip monitor link` shows), on their own socket.
pub fn link_events() -> anyhow::Result<impl futures::Stream<Item = LinkEvent>> {
    let (connection, _, messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
            .context("cannot subscribe to link notifications")?;
    tokio::spawn(connection);
    Ok(futures::StreamExt::filter_map(
        messages,
        |(msg, _)| async move {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    Some(LinkEvent::Changed(Link::from_message(link)))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    Some(LinkEvent::Removed(Link::from_message(link)))
                }
                _ => None,
            }
        },
    ))
}

/// The MTU of the link that holds `addr`.
pub async fn mtu_of_address_holder(handle: &Handle, addr: Ipv4Addr) -> anyhow::Result<u32> {
    // Read the whole dump: a dump dropped half-way leaves netlink replies with nobody to take them.
    let holders: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_address_filter(IpAddr::V4(addr))
        .execute()
        .try_collect()
        .await
        .map_err(reason)
        .context("cannot list addresses")?;
    let holder = holders
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no interface holds the advertise address {addr}"))?;
    let index = holder.header.index;
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(reason)
        .with_context(|| format!("cannot read link {index}"))?
        .map(Link::from_message)
        .ok_or_else(|| anyhow!("link {index} holding {addr} vanished"))?;
    Ok(link.mtu)
}
