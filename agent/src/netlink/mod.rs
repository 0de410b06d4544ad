//! Every kernel request the agent makes, through rtnetlink: links (bridge, VXLAN, veth) in
//! [`link`], addresses in [`address`], FDB and neighbour entries in [`neighbour`] (written many
//! to a system call by [`batch`]), a container's routes in [`route`]. Callers get
//! plain values ([`Link`], [`FdbEntry`]) back; this module holds what they share: the errno of
//! a failure and the kernel's own words for it.

mod address;
mod batch;
mod link;
mod neighbour;
mod route;

use anyhow::{Context, anyhow};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, State,
};
use nix::errno::Errno;
use weft_proto::names::Mac;

pub use address::*;
pub use link::*;
pub use neighbour::*;
pub use route::*;

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
    /// A VXLAN device's lower link (IFLA_VXLAN_LINK), if it has one.
    pub fn vxlan_link(&self) -> Option<u32> {
        self.vxlan.iter().find_map(|v| match v {
            InfoVxlan::Link(index) => Some(*index),
            _ => None,
        })
    }

    pub(super) fn from_message(msg: netlink_packet_route::link::LinkMessage) -> Link {
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
pub(super) fn errno(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error().map(Errno::from_raw),
        _ => None,
    }
}

/// A request's outcome with `already` counted as success: the errno by which the kernel says
/// that what was asked is so already (gone, or there).
pub(super) fn tolerate(
    result: Result<(), rtnetlink::Error>,
    already: Errno,
) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if errno(&e) == Some(already) => Ok(()),
        other => other,
    }
}

/// A readable reason: the kernel's own words where it gave some.
pub(super) fn reason(err: rtnetlink::Error) -> anyhow::Error {
    match &err {
        rtnetlink::Error::NetlinkError(msg) => anyhow!("{}", msg.to_io()),
        _ => anyhow!("{err}"),
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
