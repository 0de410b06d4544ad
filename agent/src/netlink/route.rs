//! Routes in a container's namespace: the default route through the host that a CNI attachment
//! may ask for, and what CHECK compares with the result of its ADD.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context;
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use nix::errno::Errno;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{Link, reason, tolerate};

/// A route of the main table: where to, and through which gateway (none: on-link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// Adds `default via gw dev link`. EEXIST (a default route is there) is success only if it is
/// this one: another tool's default route is named, not replaced.
pub async fn add_default_route(handle: &Handle, link: &Link, gw: Ipv4Addr) -> anyhow::Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(link.index)
        .gateway(gw)
        .build();
    let added = tolerate(handle.route().add(route).execute().await, Errno::EEXIST);
    added
        .map_err(reason)
        .with_context(|| format!("cannot add the default route via {gw} on {}", link.name))?;
    let default = IpNetwork::new(Ipv4Addr::UNSPECIFIED.into(), 0).expect("valid");
    let held = routes(handle, link).await?;
    if !held.contains(&Route {
        dst: default,
        gw: Some(gw.into()),
    }) {
        anyhow::bail!(
            "cannot add the default route via {gw} on {}: the namespace has another default route",
            link.name
        );
    }
    Ok(())
}

/// The routes of the main table, IPv4 and IPv6, that leave through `link`.
pub async fn routes(handle: &Handle, link: &Link) -> anyhow::Result<Vec<Route>> {
    let mut messages = Vec::new();
    for dump in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let family: Vec<_> = handle
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await
            .map_err(reason)
            .context("cannot list routes")?;
        messages.extend(family);
    }
    let address = |a: &RouteAddress| match a {
        RouteAddress::Inet(ip) => Some(IpAddr::from(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::from(*ip)),
        _ => None,
    };
    let mut routes = Vec::new();
    for msg in messages {
        let (mut dst, mut gw, mut oif) = (None, None, None);
        let mut table = u32::from(msg.header.table);
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst = address(a),
                RouteAttribute::Gateway(a) => gw = address(a),
                RouteAttribute::Oif(index) => oif = Some(*index),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        // RT_TABLE_MAIN: local and broadcast routes live in the local table.
        if table != 254 || oif != Some(link.index) {
            continue;
        }
        // A default route has no destination attribute.
        let unspecified = match msg.header.address_family {
            netlink_packet_route::AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
            _ => Ipv4Addr::UNSPECIFIED.into(),
        };
        let dst = dst.unwrap_or(unspecified);
        if let Ok(dst) = IpNetwork::new(dst, msg.header.destination_prefix_length) {
            routes.push(Route { dst, gw });
        }
    }
    Ok(routes)
}
