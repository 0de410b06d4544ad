//! Links: bridges, VXLAN devices, veth pairs and the container's end of one.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, InfoVxlan, VxlanDf};
use netlink_packet_route::route::RouteScope;
use nix::errno::Errno;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, LinkWireguard,
    RouteMessageBuilder,
};
use weft_proto::names::Mac;

use super::{InterfaceExists, Link, add_addresses, errno, reason, tolerate};

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

/// Creates a link (down) and quiets its IPv6 ([`quiet_ipv6`]) before anything brings it up.
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
    quiet_ipv6(name);
    link_by_name(handle, name)
        .await?
        .ok_or_else(|| anyhow!("link {name} vanished right after it was created"))
}

/// Makes a new (still down) interface quiet and quick on IPv6: no duplicate address detection
/// (weft's addresses are unique, and detection holds each back for a second) and no router
/// solicitations (weft's networks have no router). Bridges, VXLAN devices and veths send into a
/// network whatever their own IPv6 sends, and each such frame would flood every host of it.
/// `/proc/sys/net` is that of the calling thread's namespace; a kernel without IPv6 has no such
/// files and needs nothing. A read-only `/proc/sys` costs the quiet, not the link: logged.
pub fn quiet_ipv6(ifname: &str) {
    for knob in ["accept_dad", "accept_ra"] {
        let path = format!("/proc/sys/net/ipv6/conf/{ifname}/{knob}");
        match std::fs::write(&path, "0") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => tracing::warn!(link = ifname, "cannot write {path}: {e}"),
        }
    }
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
    tolerate(handle.link().del(link.index).execute().await, Errno::ENODEV)
        .map_err(reason)
        .with_context(|| format!("cannot delete link {}", link.name))
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
    pub local: IpAddr,
    /// The link it sends through (an encrypted network's: the WireGuard interface).
    pub link: Option<u32>,
    pub mtu: u32,
    /// A probe device: sets DF on the outer header, so a path that cannot carry a full frame
    /// drops it rather than have it fragmented on the way, and answers no ARP itself (a
    /// network's device does: `proxy`).
    pub probe: bool,
}

impl VxlanSpec {
    fn matches(&self, link: &Link) -> bool {
        let has = |want: &InfoVxlan| link.vxlan.contains(want);
        let local = match self.local {
            IpAddr::V4(ip) => InfoVxlan::Local(ip),
            IpAddr::V6(ip) => InfoVxlan::Local6(ip),
        };
        link.kind == Some(InfoKind::Vxlan)
            && has(&InfoVxlan::Id(self.vni))
            && has(&InfoVxlan::Port(self.port))
            && has(&local)
            && link.vxlan_link() == self.link
            && has(&InfoVxlan::Learning(false))
            && has(&InfoVxlan::Proxy(!self.probe))
            && (!self.probe || has(&InfoVxlan::Df(VxlanDf::Set)))
    }
}

/// Makes `name` a VXLAN device as `spec` says, enslaved to `bridge` (if any) and up. One that
/// already matches is kept as it is; one that does not (say, another local address) is replaced.
pub async fn ensure_vxlan(
    handle: &Handle,
    name: &str,
    spec: VxlanSpec,
    bridge: Option<&Link>,
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
            let mut msg = LinkVxlan::new(name, spec.vni).port(spec.port);
            msg = match spec.local {
                IpAddr::V4(ip) => msg.local(ip),
                IpAddr::V6(ip) => msg.local6(ip),
            };
            if let Some(link) = spec.link {
                msg = msg.dev(link);
            }
            msg = msg
                .learning(false)
                // ARP for remote endpoints is answered from the neighbour table, not flooded.
                .proxy(!spec.probe);
            if spec.probe {
                msg = msg.df(VxlanDf::Set);
            }
            add_link(handle, name, msg.mtu(spec.mtu).build()).await?
        }
    };
    settle_link(handle, &link, spec.mtu, bridge.map(|b| b.index)).await?;
    Ok(link)
}

/// Creates a veth pair: `name` on `bridge`, up (once quiet, see [`add_link`]), here; `peer`
/// (down, with its MAC and MTU) born in the namespace open as `netns` (none: here, for Docker to
/// move). Creating the peer there spares moving it afterwards, which cost 15–23 ms of a 33 ms
/// attach (the kernel tears the device down in the old namespace).
pub async fn create_veth_into(
    handle: &Handle,
    name: &str,
    bridge: &Link,
    peer: &str,
    mac: Mac,
    mtu: u32,
    netns: Option<&std::fs::File>,
) -> anyhow::Result<Link> {
    use std::os::fd::AsRawFd;
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .address(mac.0.to_vec())
        .mtu(mtu);
    if let Some(netns) = netns {
        peer_msg = peer_msg.setns_by_fd(netns.as_raw_fd());
    }
    let peer_msg = peer_msg.build();
    let msg = LinkVeth::new(name, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .mtu(mtu)
        .controller(bridge.index)
        .build();
    let link = add_link(handle, name, msg).await?;
    set_up(handle, &link).await?;
    Ok(Link { up: true, ..link })
}

/// Creates a kernel WireGuard interface `name`; none if the kernel has no WireGuard.
pub async fn create_wireguard(handle: &Handle, name: &str) -> anyhow::Result<Option<Link>> {
    let created = handle
        .link()
        .add(LinkWireguard::new(name).build())
        .execute()
        .await;
    match created {
        Ok(()) => Ok(link_by_name(handle, name).await?),
        // EOPNOTSUPP: no `wireguard` link kind (`ip link`: "Unknown device type"), the module
        // is neither built in nor loadable.
        Err(e) if errno(&e) == Some(Errno::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(reason(e)).with_context(|| format!("cannot create link {name}")),
    }
}

/// Sets a link's MTU and brings it up.
pub async fn set_mtu_up(handle: &Handle, link: &Link, mtu: u32) -> anyhow::Result<()> {
    settle_link(handle, link, mtu, None).await
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
    cidrs: &[ipnetwork::IpNetwork],
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
    tolerate(handle.route().add(route).execute().await, Errno::EEXIST)
        .map_err(reason)
        .with_context(|| format!("cannot add the multicast route on {name}"))
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
