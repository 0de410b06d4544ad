//! Addresses of links.

use std::net::IpAddr;

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use nix::errno::Errno;
use rtnetlink::Handle;

use super::{Link, errno, reason, tolerate};

/// Adds addresses to a link; ones it already has are fine. IPv6 ones skip duplicate address
/// detection: weft's IPAM makes them unique, and detection would hold each back (and send a
/// solicitation) for a second, losing the first packets.
pub async fn add_addresses(
    handle: &Handle,
    link: &Link,
    cidrs: &[IpNetwork],
) -> anyhow::Result<()> {
    for cidr in cidrs {
        let added = add(handle, link, cidr.ip(), cidr.prefix()).await;
        // EACCES: the interface has IPv6 turned off (a container started so, say).
        if cidr.is_ipv6() && added.as_ref().err().and_then(errno) == Some(Errno::EACCES) {
            anyhow::bail!(
                "cannot add address {cidr}: IPv6 is disabled on {} (net.ipv6.conf.{}.disable_ipv6)",
                link.name,
                link.name
            );
        }
        tolerate(added, Errno::EEXIST)
            .map_err(reason)
            .with_context(|| format!("cannot add address {cidr}"))?;
    }
    Ok(())
}

async fn add(handle: &Handle, link: &Link, ip: IpAddr, prefix: u8) -> Result<(), rtnetlink::Error> {
    let mut request = handle.address().add(link.index, ip, prefix);
    if ip.is_ipv6() {
        let msg = request.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request.execute().await
}

/// Gives a link the IPv6 address `ip/prefix` for use at once (as [`add_addresses`]); a link
/// that has it is left alone.
pub async fn ensure_address_nodad(
    handle: &Handle,
    link: &Link,
    ip: IpAddr,
    prefix: u8,
) -> anyhow::Result<()> {
    let held = address_messages(handle, link).await?.iter().any(|msg| {
        msg.header.prefix_len == prefix && msg.attributes.contains(&AddressAttribute::Address(ip))
    });
    if held {
        return Ok(());
    }
    tolerate(add(handle, link, ip, prefix).await, Errno::EEXIST)
        .map_err(reason)
        .with_context(|| format!("cannot add address {ip}/{prefix} to {}", link.name))
}

/// The addresses a link holds, with their prefixes, but for IPv6 link-local ones: the kernel
/// gives those itself, and weft never asks for one.
pub async fn addresses(
    handle: &Handle,
    link: &Link,
) -> anyhow::Result<std::collections::BTreeSet<IpNetwork>> {
    let held = address_messages(handle, link).await?;
    Ok(held
        .iter()
        .flat_map(|msg| {
            msg.attributes.iter().filter_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V6(ip)) if ip.is_unicast_link_local() => None,
                AddressAttribute::Address(ip) => IpNetwork::new(*ip, msg.header.prefix_len).ok(),
                _ => None,
            })
        })
        .collect())
}

/// Removes addresses from a link; ones it does not have are fine.
pub async fn del_addresses(
    handle: &Handle,
    link: &Link,
    cidrs: &[IpNetwork],
) -> anyhow::Result<()> {
    let held = address_messages(handle, link).await?;
    for msg in held {
        let prefix = msg.header.prefix_len;
        let listed = msg.attributes.iter().any(|attr| {
            matches!(attr, AddressAttribute::Address(ip)
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

/// The MTU of the link that holds `addr`.
pub async fn mtu_of_address_holder(handle: &Handle, addr: IpAddr) -> anyhow::Result<u32> {
    // Read the whole dump: a dump dropped half-way leaves netlink replies with nobody to take them.
    let holders: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_address_filter(addr)
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

/// The kernel's address messages of one link: the one dump the address functions read.
async fn address_messages(handle: &Handle, link: &Link) -> anyhow::Result<Vec<AddressMessage>> {
    handle
        .address()
        .get()
        .set_link_index_filter(link.index)
        .execute()
        .try_collect()
        .await
        .map_err(reason)
        .with_context(|| format!("cannot list the addresses of {}", link.name))
}
