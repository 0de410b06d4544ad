//! Routes in a container's namespace: the default route through the host that a CNI attachment
//! may ask for, and what CHECK compares with the result of its ADD.

use std::net::Ipv4Addr;

use anyhow::Context;
use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use nix::errno::Errno;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{Link, reason, tolerate};

/// An IPv4 route of the main table: where to, and through which gateway (none: on-link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Network,
    pub gw: Option<Ipv4Addr>,
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
    let default = Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid");
    let held = ipv4_routes(handle, link).await?;
    if !held.contains(&Route {
        dst: default,
        gw: Some(gw),
    }) {
        anyhow::bail!(
            "cannot add the default route via {gw} on {}: the namespace has another default route",
            link.name
        );
    }
    Ok(())
}

/// The IPv4 routes of the main table that leave through `link`.
pub async fn ipv4_routes(handle: &Handle, link: &Link) -> anyhow::Result<Vec<Route>> {
    let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let messages: Vec<_> = handle
        .route()
        .get(dump)
        .execute()
        .try_collect()
        .await
        .map_err(reason)
        .context("cannot list routes")?;
    let mut routes = Vec::new();
    for msg in messages {
        let (mut dst, mut gw, mut oif) = (Ipv4Addr::UNSPECIFIED, None, None);
        let mut table = u32::from(msg.header.table);
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
                RouteAttribute::Oif(index) => oif = Some(*index),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        // RT_TABLE_MAIN: local and broadcast routes live in the local table.
        if table != 254 || oif != Some(link.index) {
            continue;
        }
        if let Ok(dst) = Ipv4Network::new(dst, msg.header.destination_prefix_length) {
            routes.push(Route { dst, gw });
        }
    }
    Ok(routes)
}
