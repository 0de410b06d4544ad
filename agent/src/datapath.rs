//! This host's datapath: per network a bridge and a VXLAN device enslaved to it, one veth pair per
//! local endpoint, and the VXLAN FDB that sends remote MACs to their hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::Ipv4Addr;

use anyhow::{Context, anyhow};
use futures::{StreamExt, TryStreamExt, stream};
use ipnetwork::Ipv4Network;
use rtnetlink::Handle;
use tracing::{info, warn};
use weft_proto::names::{Mac, bridge_name, guest_tmp_ifname, vni_of_device, vxlan_name};
use weft_proto::v1::Endpoint;

use crate::container::Container;
use crate::desired::{FdbEntry, diff};
use crate::netlink::{self, Link, VxlanSpec};
use crate::netns;

/// Netlink requests kept in flight at once when programming many entries.
const NETLINK_PIPELINE: usize = 64;

pub struct Datapath {
    handle: Handle,
    port: u16,
    local: Ipv4Addr,
    mtu: u32,
    /// Held by every change of devices and veths: a plug never meets a half-removed bridge, and
    /// a reconcile never sees a half-plugged veth.
    lock: tokio::sync::Mutex<()>,
}

/// How many FDB entries one reconcile added and removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FdbChanges {
    pub added: usize,
    pub removed: usize,
}

fn parse_cidrs(cidrs: &[String]) -> anyhow::Result<Vec<Ipv4Network>> {
    cidrs
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|_| anyhow!("invalid address {c} in the tables"))
        })
        .collect()
}

impl Datapath {
    pub fn new(handle: Handle, port: u16, local: Ipv4Addr, mtu: u32) -> Self {
        Datapath {
            handle,
            port,
            local,
            mtu,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Makes the bridge and VXLAN device of network `vni` exist as wanted, keeping what is
    /// already right.
    pub async fn ensure_devices(&self, vni: u32) -> anyhow::Result<(Link, Link)> {
        let _lock = self.lock.lock().await;
        self.ensure_devices_locked(vni).await
    }

    async fn ensure_devices_locked(&self, vni: u32) -> anyhow::Result<(Link, Link)> {
        let bridge = netlink::ensure_bridge(&self.handle, &bridge_name(vni), self.mtu).await?;
        let spec = VxlanSpec {
            vni,
            port: self.port,
            local: self.local,
            mtu: self.mtu,
        };
        let vxlan =
            netlink::ensure_vxlan(&self.handle, &vxlan_name(vni, self.port), spec, &bridge).await?;
        Ok((bridge, vxlan))
    }

    /// Makes the devices and FDBs of `networks` (VNI → FDB) as given, touching only entries
    /// that differ, and removes the devices of networks this host no longer needs.
    pub async fn reconcile(
        &self,
        networks: &BTreeMap<u32, BTreeSet<FdbEntry>>,
    ) -> anyhow::Result<FdbChanges> {
        let _lock = self.lock.lock().await;
        let mut changes = FdbChanges::default();
        let entries = netlink::fdb_entries(&self.handle).await?;
        for (vni, desired) in networks {
            let (_, vxlan) = self.ensure_devices_locked(*vni).await?;
            let current: BTreeSet<FdbEntry> = entries
                .iter()
                .filter(|(index, _)| *index == vxlan.index)
                .map(|(_, entry)| *entry)
                .collect();
            let (add, remove) = diff(&current, desired);
            // Many requests in flight at once: one round trip each would make a host joining a
            // large network wait for thousands of them in turn.
            stream::iter(&remove)
                .map(|entry| netlink::fdb_del(&self.handle, vxlan.index, entry))
                .buffer_unordered(NETLINK_PIPELINE)
                .try_collect::<()>()
                .await?;
            stream::iter(&add)
                .map(|entry| netlink::fdb_add(&self.handle, vxlan.index, entry))
                .buffer_unordered(NETLINK_PIPELINE)
                .try_collect::<()>()
                .await?;
            changes.added += add.len();
            changes.removed += remove.len();
        }
        self.remove_left_networks(networks).await?;
        Ok(changes)
    }

    /// Removes the bridge and VXLAN device of networks not in `networks`, unless a veth is still
    /// on the bridge: the tables may not yet show the endpoint an attach just plugged.
    async fn remove_left_networks(
        &self,
        networks: &BTreeMap<u32, BTreeSet<FdbEntry>>,
    ) -> anyhow::Result<()> {
        let links = netlink::links(&self.handle).await?;
        let mut left: BTreeMap<u32, Vec<&Link>> = BTreeMap::new();
        for link in &links {
            if let Some(vni) =
                vni_of_device(&link.name, self.port).filter(|v| !networks.contains_key(v))
            {
                left.entry(vni).or_default().push(link);
            }
        }
        for (vni, devices) in left {
            let in_use = devices.iter().any(|dev| {
                links.iter().any(|l| {
                    l.controller == Some(dev.index)
                        && vni_of_device(&l.name, self.port) != Some(vni)
                })
            });
            if in_use {
                continue;
            }
            for dev in devices {
                info!(link = %dev.name, "removing the device of a network this host left");
                netlink::delete_link(&self.handle, dev).await?;
            }
        }
        Ok(())
    }

    pub async fn link_exists(&self, name: &str) -> anyhow::Result<bool> {
        Ok(netlink::link_by_name(&self.handle, name).await?.is_some())
    }

    /// Makes endpoint `ep` of network `vni` exist in the kernel: its veth on the network's bridge
    /// and its interface in the container with the endpoint's MAC, the MTU and every address.
    /// An endpoint already plugged only gets the addresses it lacks. A new veth that cannot be
    /// set up completely is removed again.
    pub async fn plug(&self, container: &Container, ep: &Endpoint, vni: u32) -> anyhow::Result<()> {
        let _lock = self.lock.lock().await;
        let cidrs = parse_cidrs(&ep.cidrs)?;
        let inside = ep.container_ifname.clone();
        if self.link_exists(&ep.host_ifname).await? {
            return netns::run_in(&container.netns, move |handle| async move {
                let link = netlink::link_by_name(&handle, &inside)
                    .await?
                    .with_context(|| format!("the container has no interface {inside}"))?;
                netlink::add_addresses(&handle, &link, &cidrs).await
            })
            .await;
        }
        let netns_file = File::open(&container.netns).with_context(|| {
            format!(
                "cannot open network namespace {}",
                container.netns.display()
            )
        })?;
        let mac: Mac = ep.mac.parse().map_err(|e: String| anyhow!(e))?;
        let (bridge, _) = self.ensure_devices_locked(vni).await?;
        let mtu = self.mtu;
        let guest_name = guest_tmp_ifname(&ep.host_ifname);
        let (host, guest) =
            netlink::create_veth(&self.handle, &ep.host_ifname, &guest_name, mtu).await?;
        let result = async {
            netlink::move_to_netns(&self.handle, &guest, &netns_file).await?;
            netns::run_in(&container.netns, move |handle| async move {
                let guest = netlink::link_by_name(&handle, &guest_name)
                    .await?
                    .with_context(|| format!("{guest_name} did not arrive in the container"))?;
                netlink::configure_container_if(&handle, &guest, &inside, mac, mtu, &cidrs).await
            })
            .await?;
            netlink::attach_to_bridge(&self.handle, &host, &bridge, mtu).await
        }
        .await;
        if result.is_err() {
            // Deleting one end of a veth deletes both, wherever the other end is.
            if let Err(e) = netlink::delete_link(&self.handle, &host).await {
                warn!("cleaning up {} failed: {e:#}", ep.host_ifname);
            }
        }
        result?;
        info!(container = %container.id, veth = %ep.host_ifname, %mac, "plugged");
        Ok(())
    }

    /// Removes `cidrs` from an endpoint's interface in the container; gone ones are fine.
    pub async fn remove_addresses(
        &self,
        container: &Container,
        ep: &Endpoint,
        cidrs: &[String],
    ) -> anyhow::Result<()> {
        let cidrs = parse_cidrs(cidrs)?;
        let inside = ep.container_ifname.clone();
        netns::run_in(&container.netns, move |handle| async move {
            match netlink::link_by_name(&handle, &inside).await? {
                Some(link) => netlink::del_addresses(&handle, &link, &cidrs).await,
                None => Ok(()),
            }
        })
        .await
    }

    /// Removes an endpoint's veth pair (and so its interface in the container); nothing to do
    /// if it is gone.
    pub async fn unplug(&self, host_ifname: &str) -> anyhow::Result<()> {
        let _lock = self.lock.lock().await;
        if let Some(link) = netlink::link_by_name(&self.handle, host_ifname).await? {
            netlink::delete_link(&self.handle, &link).await?;
            info!(veth = host_ifname, "unplugged");
        }
        Ok(())
    }
}
