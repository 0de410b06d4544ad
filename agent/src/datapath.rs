//! This host's datapath for the default network: the bridge, the VXLAN device enslaved to it,
//! one veth pair per local container, and the VXLAN FDB that sends remote MACs to their hosts.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;

use anyhow::Context;
use ipnetwork::Ipv4Network;
use rtnetlink::Handle;
use tracing::{info, warn};

use crate::container::Container;
use crate::desired::{FdbEntry, Mac, diff, guest_tmp_ifname};
use crate::netlink::{self, Link, VxlanSpec};
use crate::netns;

/// Name of the default network's bridge, as Weave named it.
pub const BRIDGE: &str = "weave";
/// Name of the container-side interface.
pub const CONTAINER_IFNAME: &str = "ethwe";

pub struct Datapath {
    handle: Handle,
    vxlan_name: String,
    spec: VxlanSpec,
}

/// How many FDB entries one reconcile added and removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FdbChanges {
    pub added: usize,
    pub removed: usize,
}

impl Datapath {
    pub fn new(handle: Handle, vni: u32, port: u16, local: Ipv4Addr, mtu: u32) -> Self {
        Datapath {
            handle,
            vxlan_name: format!("vxlan-{port}"),
            spec: VxlanSpec {
                vni,
                port,
                local,
                mtu,
            },
        }
    }

    pub fn mtu(&self) -> u32 {
        self.spec.mtu
    }

    /// Makes the bridge and VXLAN device exist as wanted, keeping what is already right.
    pub async fn ensure_devices(&self) -> anyhow::Result<(Link, Link)> {
        let bridge = netlink::ensure_bridge(&self.handle, BRIDGE, self.spec.mtu).await?;
        let vxlan =
            netlink::ensure_vxlan(&self.handle, &self.vxlan_name, self.spec, &bridge).await?;
        Ok((bridge, vxlan))
    }

    /// Makes the VXLAN FDB equal `desired`, touching only entries that differ.
    pub async fn reconcile_fdb(&self, desired: &BTreeSet<FdbEntry>) -> anyhow::Result<FdbChanges> {
        let (_, vxlan) = self.ensure_devices().await?;
        let current: BTreeSet<FdbEntry> = netlink::fdb_entries(&self.handle, vxlan.index)
            .await?
            .into_iter()
            .collect();
        let (add, remove) = diff(&current, desired);
        for entry in &remove {
            netlink::fdb_del(&self.handle, vxlan.index, entry).await?;
        }
        for entry in &add {
            netlink::fdb_add(&self.handle, vxlan.index, entry).await?;
        }
        Ok(FdbChanges {
            added: add.len(),
            removed: remove.len(),
        })
    }

    pub async fn link_exists(&self, name: &str) -> anyhow::Result<bool> {
        Ok(netlink::link_by_name(&self.handle, name).await?.is_some())
    }

    /// Connects a container to the bridge: veth `host_ifname` on the bridge, `ethwe` with `mac`,
    /// the network MTU and `cidrs` in the container. On failure nothing of it is left behind.
    pub async fn plug(
        &self,
        container: &Container,
        host_ifname: &str,
        mac: Mac,
        cidrs: &[Ipv4Network],
    ) -> anyhow::Result<()> {
        let netns = File::open(&container.netns).with_context(|| {
            format!(
                "cannot open network namespace {}",
                container.netns.display()
            )
        })?;
        let (bridge, _) = self.ensure_devices().await?;
        let mtu = self.spec.mtu;
        let guest_name = guest_tmp_ifname(host_ifname);
        let (host, guest) =
            netlink::create_veth(&self.handle, host_ifname, &guest_name, mtu).await?;
        let result = async {
            netlink::move_to_netns(&self.handle, &guest, &netns).await?;
            let cidrs = cidrs.to_vec();
            netns::run_in(&container.netns, move |handle| async move {
                let guest = netlink::link_by_name(&handle, &guest_name)
                    .await?
                    .with_context(|| format!("{guest_name} did not arrive in the container"))?;
                netlink::configure_container_if(&handle, &guest, CONTAINER_IFNAME, mac, mtu, &cidrs)
                    .await
            })
            .await?;
            netlink::attach_to_bridge(&self.handle, &host, &bridge, mtu).await
        }
        .await;
        if result.is_err() {
            // Deleting one end of a veth deletes both, wherever the other end is.
            if let Err(e) = netlink::delete_link(&self.handle, &host).await {
                warn!("cleaning up {host_ifname} failed: {e:#}");
            }
        }
        result?;
        info!(container = %container.id, veth = host_ifname, %mac, "plugged");
        Ok(())
    }

    /// Removes a container's veth pair (and so its `ethwe`); nothing to do if it is gone.
    pub async fn unplug(&self, host_ifname: &str) -> anyhow::Result<()> {
        if let Some(link) = netlink::link_by_name(&self.handle, host_ifname).await? {
            netlink::delete_link(&self.handle, &link).await?;
            info!(veth = host_ifname, "unplugged");
        }
        Ok(())
    }
}
