//! This host's datapath: per network a bridge and a VXLAN device enslaved to it, one veth pair per
//! local endpoint, and the VXLAN FDB that sends remote MACs to their hosts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use ipnetwork::IpNetwork;
use rtnetlink::Handle;
use tracing::{info, warn};
use weft_proto::names::{
    HOST_IFNAME_PREFIX, Mac, PROBE_DEVICE, PROBE_PREFIX_LEN, PROBE_VNI, WIREGUARD_DEVICE,
    bridge_name, container_ifname, guest_tmp_ifname, probe_addr, probe_mac, vni_of_device,
    vxlan_name,
};
use weft_proto::rows::EndpointRow;
use weft_proto::wireguard::WgKey;

use crate::container::Container;
use crate::desired::{Exposed, NetworkState, Segment, Touched, diff};
use crate::heap;
use crate::held::{Changes, Entries, Held};
use crate::netlink::{self, Link, VxlanSpec};
use crate::netns;
use crate::wireguard::{PeerSpec, Wireguard};

/// What an encrypted network's frames lose to WireGuard: its own header and the outer IP and
/// UDP headers (80 on an IPv6 underlay, the larger), and VXLAN over IPv6 tunnel addresses takes
/// 20 more than over IPv4.
const ENCRYPTION_OVERHEAD: u32 = 80 + 20;

/// VXLAN's overhead over IPv6: what the WireGuard interface carries beyond a network's frame.
const VXLAN6_OVERHEAD: u32 = 70;

/// How long plugging waits for a new veth's ends to pass frames.
const RUNNING_WAIT: Duration = Duration::from_millis(1500);

pub struct Datapath {
    handle: Handle,
    port: u16,
    local: IpAddr,
    mtu: u32,
    wireguard: Wireguard,
    /// Held by every change of devices and veths: a plug never meets a half-removed bridge, and
    /// a reconcile never sees a half-plugged veth.
    lock: tokio::sync::Mutex<()>,
    /// What the VXLAN devices hold, so a reconcile need not read it from the kernel.
    held: Held,
}

/// What a reconcile is to bring about.
pub struct Desired<'a> {
    /// VNI → what the network's devices must be and hold.
    pub networks: &'a BTreeMap<u32, NetworkState>,
    /// VNI → the entries whose presence changed since the last pass (none for a network: none
    /// did); none: every entry is to be looked at.
    pub touched: Option<BTreeMap<u32, Touched>>,
    /// What the probe device must hold (its FDB and neighbour entries).
    pub probe: NetworkState,
    /// The WireGuard interface's peers; none: no interface (no encrypted network here).
    pub wireguard: Option<BTreeMap<WgKey, PeerSpec>>,
    /// Whether veths no endpoint calls for may go: only when the tables are known to be
    /// newer than every veth.
    pub remove_stray_veths: bool,
}

/// How many table entries one reconcile changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub fdb_added: usize,
    pub fdb_removed: usize,
    pub neigh_added: usize,
    pub neigh_removed: usize,
    /// WireGuard peers added, changed or removed.
    pub wireguard_changed: usize,
    /// The entries weft's VXLAN devices hold once the pass is done.
    pub fdb_held: usize,
    pub neigh_held: usize,
    /// Why the probe device could not be made as wanted (say, IPv6 is disabled on this host):
    /// probing then fails, and the networks work all the same, so the pass does not fail.
    pub probe_error: Option<String>,
    /// From reading the kernel to the last change made.
    pub elapsed: std::time::Duration,
}

impl Report {
    pub fn changed(&self) -> bool {
        self.fdb_added
            + self.fdb_removed
            + self.neigh_added
            + self.neigh_removed
            + self.wireguard_changed
            > 0
    }
}

/// Whether weft made the link `name` (with VXLAN port `port`): a network's bridge or VXLAN
/// device, the probe device, the WireGuard interface, or an endpoint's veth.
pub fn is_ours(name: &str, port: u16) -> bool {
    vni_of_device(name, port).is_some()
        || name == PROBE_DEVICE
        || name == WIREGUARD_DEVICE
        || name.starts_with(HOST_IFNAME_PREFIX)
}

/// Removes every link weft made in this namespace: veths (their container ends go with them),
/// VXLAN devices (the probe device too), bridges and the WireGuard interface (its wireguard-go
/// ends with it), and with them every FDB and neighbour entry and exposed address. Links that
/// are not weft's are left alone. Returns the names removed.
pub async fn remove_all(handle: &Handle, port: u16) -> anyhow::Result<Vec<String>> {
    let ours = |name: &str| is_ours(name, port);
    let mut removed = Vec::new();
    for link in netlink::links(handle).await? {
        if ours(&link.name) {
            netlink::delete_link(handle, &link).await?;
            info!(link = %link.name, "removed");
            removed.push(link.name);
        }
    }
    Ok(removed)
}

impl Datapath {
    /// The MTU of plaintext networks' devices, and the largest frame a probe sends.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The MTU of a network's devices and its containers' interfaces.
    pub fn mtu_of(&self, net: Segment) -> u32 {
        match net.encrypted {
            false => self.mtu,
            true => self.mtu - ENCRYPTION_OVERHEAD,
        }
    }

    pub fn wireguard(&self) -> &Wireguard {
        &self.wireguard
    }

    /// The WireGuard interface's peers with their latest handshake (none without one).
    pub async fn wireguard_handshakes(&self) -> BTreeMap<WgKey, Option<std::time::SystemTime>> {
        self.wireguard.handshakes(&self.handle).await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn new(handle: Handle, port: u16, local: IpAddr, mtu: u32, wireguard: Wireguard) -> Self {
        Datapath {
            handle,
            port,
            local,
            mtu,
            wireguard,
            lock: tokio::sync::Mutex::new(()),
            held: Held::default(),
        }
    }

    /// What the VXLAN devices hold, which the kernel's notifications are checked against.
    pub fn held(&self) -> &Held {
        &self.held
    }

    /// Makes the default network's devices as plaintext ones unless they exist: the bridge is
    /// there from the start, and what an earlier run made (perhaps encrypted) is left to the
    /// first reconcile, which knows the network.
    pub async fn prepare_default(&self, vni: u32) -> anyhow::Result<()> {
        let _lock = self.lock.lock().await;
        if netlink::link_by_name(&self.handle, &bridge_name(vni))
            .await?
            .is_none()
        {
            let plaintext = Segment {
                vni,
                encrypted: false,
            };
            self.ensure_devices_locked(plaintext).await?;
        }
        Ok(())
    }

    /// Makes the bridge and VXLAN device of a network exist as wanted (for an encrypted one,
    /// the WireGuard interface too), keeping what is already right.
    async fn ensure_devices_locked(&self, net: Segment) -> anyhow::Result<(Link, Link)> {
        let mtu = self.mtu_of(net);
        let bridge = netlink::ensure_bridge(&self.handle, &bridge_name(net.vni), mtu).await?;
        let (local, link): (IpAddr, _) = match net.encrypted {
            false => (self.local, None),
            true => {
                let wg = self.ensure_wireguard().await?;
                (self.wireguard.tunnel().into(), Some(wg.index))
            }
        };
        let spec = VxlanSpec {
            vni: net.vni,
            port: self.port,
            local,
            link,
            mtu,
            probe: false,
        };
        let name = vxlan_name(net.vni, self.port);
        let vxlan = netlink::ensure_vxlan(&self.handle, &name, spec, Some(&bridge)).await?;
        Ok((bridge, vxlan))
    }

    /// Makes the WireGuard interface exist as wanted.
    async fn ensure_wireguard(&self) -> anyhow::Result<Link> {
        let mtu = self.mtu - ENCRYPTION_OVERHEAD + VXLAN6_OVERHEAD;
        self.wireguard
            .ensure(&self.handle, mtu)
            .await
            .with_context(|| format!("WireGuard interface {WIREGUARD_DEVICE}"))
    }

    /// Makes the WireGuard interface and its peers as `wanted` says (none: no interface).
    async fn reconcile_wireguard(
        &self,
        wanted: Option<&BTreeMap<WgKey, PeerSpec>>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        match wanted {
            Some(peers) => {
                let link = self.ensure_wireguard().await?;
                report.wireguard_changed += self.wireguard.settle_peers(&link, peers).await?;
            }
            None => {
                if let Some(link) = netlink::link_by_name(&self.handle, WIREGUARD_DEVICE).await? {
                    info!(
                        link = WIREGUARD_DEVICE,
                        "no encrypted network here any more; removing it"
                    );
                    netlink::delete_link(&self.handle, &link).await?;
                }
            }
        }
        Ok(())
    }

    /// Makes the probe device exist as wanted: on no bridge, with this host's probe MAC and
    /// address (see `probe/mod.rs`).
    async fn ensure_probe_device(&self) -> anyhow::Result<Link> {
        let spec = VxlanSpec {
            vni: PROBE_VNI,
            port: self.port,
            local: self.local,
            link: None,
            mtu: self.mtu,
            probe: true,
        };
        let link = netlink::ensure_vxlan(&self.handle, PROBE_DEVICE, spec, None).await?;
        let mac = probe_mac(self.local);
        if link.mac != Some(mac) {
            netlink::set_mac(&self.handle, &link, mac).await?;
        }
        let addr = probe_addr(self.local).into();
        netlink::ensure_address_nodad(&self.handle, &link, addr, PROBE_PREFIX_LEN).await?;
        Ok(link)
    }

    /// Makes this host's devices and their tables as `networks` (VNI → state) says, touching
    /// only what differs, and removes the devices of networks this host no longer needs.
    ///
    /// `desired` is read only once the datapath is this reconcile's alone: an expose or attach
    /// that finished while it waited is then in the tables it reads, and is not undone.
    pub async fn reconcile<'a>(
        &self,
        desired: impl FnOnce() -> Option<Desired<'a>>,
    ) -> anyhow::Result<Option<Report>> {
        let _lock = self.lock.lock().await;
        let Some(desired) = desired() else {
            return Ok(None);
        };
        let networks = desired.networks;
        let nothing = Touched::default();
        let touched = |vni| {
            let touched = desired.touched.as_ref();
            touched.map(|t: &BTreeMap<u32, Touched>| t.get(&vni).unwrap_or(&nothing))
        };
        let started = std::time::Instant::now();
        let mut report = Report::default();
        // Each network on its own: one that cannot be fixed (say, its VXLAN device cannot be
        // made) leaves the others to be fixed all the same, and fails the pass at its end.
        let mut bridges = BTreeMap::new();
        let mut failed = Vec::new();
        // Before the networks: encrypted ones send through it. Plaintext ones are fixed even if
        // it cannot be.
        if let Err(e) = self
            .reconcile_wireguard(desired.wireguard.as_ref(), &mut report)
            .await
        {
            failed.push(format!("{e:#}"));
        }
        for (vni, state) in networks {
            let fixed = self
                .reconcile_network(*vni, state, touched(*vni), &mut report)
                .await;
            match fixed {
                Ok(bridge) => {
                    bridges.insert(*vni, bridge);
                }
                Err(e) => failed.push(format!("network with VNI {vni}: {e:#}")),
            }
        }
        if let Err(e) = self.reconcile_probe(&desired.probe, &mut report).await {
            report.probe_error = Some(format!("probe device {PROBE_DEVICE}: {e:#}"));
        }
        let links = netlink::links(&self.handle).await?;
        for (vni, bridge) in &bridges {
            // A port knocked off its bridge (say, the bridge was deleted and made anew) goes back.
            let state = &networks[vni];
            let mtu = self.mtu_of(state.segment(*vni));
            for link in links.iter().filter(|l| state.ports.contains(&l.name)) {
                netlink::attach_to_bridge(&self.handle, link, bridge, mtu).await?;
            }
        }
        if desired.remove_stray_veths {
            self.remove_stray_veths(&links, networks).await?;
        }
        self.remove_left_networks(&links, networks).await?;
        if !failed.is_empty() {
            anyhow::bail!("{}", failed.join("; "));
        }
        report.elapsed = started.elapsed();
        Ok(Some(report))
    }

    /// Makes one network's devices exist and its VXLAN device hold what `state` says; returns
    /// its bridge.
    async fn reconcile_network(
        &self,
        vni: u32,
        state: &NetworkState,
        touched: Option<&Touched>,
        report: &mut Report,
    ) -> anyhow::Result<Link> {
        let (bridge, vxlan) = self.ensure_devices_locked(state.segment(vni)).await?;
        self.settle_entries(&vxlan, state, touched, report).await?;
        self.settle_exposed(&bridge, state.exposed.as_ref()).await?;
        Ok(bridge)
    }

    /// Makes the probe device exist and hold what `state` says.
    async fn reconcile_probe(
        &self,
        state: &NetworkState,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let device = self.ensure_probe_device().await?;
        self.settle_entries(&device, state, None, report).await
    }

    /// Makes a VXLAN device's FDB and neighbour entries those of `state`, touching only what
    /// differs from what it holds: among the `touched` entries alone, if given.
    async fn settle_entries(
        &self,
        vxlan: &Link,
        state: &NetworkState,
        touched: Option<&Touched>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let mut touched = touched;
        if self.held.must_dump() {
            self.read_entries().await?;
            touched = None;
        }
        let changes = self.held.settle(vxlan.index, state, touched);
        if let Err(e) = self.write_entries(vxlan, state, &changes).await {
            self.held.forget();
            return Err(e);
        }
        report.fdb_added += changes.fdb_add.len();
        report.fdb_removed += changes.fdb_remove.len();
        report.neigh_added += changes.neigh_add.len();
        report.neigh_removed += changes.neigh_remove.len();
        report.fdb_held += state.fdb.len();
        report.neigh_held += state.neighbours.len();
        Ok(())
    }

    /// Reads every device's FDB and neighbour entries from the kernel into what is held.
    async fn read_entries(&self) -> anyhow::Result<()> {
        self.held.dumping();
        let dumped = async {
            let fdb = netlink::fdb_entries(&self.handle).await?;
            let neighbours = netlink::neighbours(&self.handle).await?;
            anyhow::Ok((fdb, neighbours))
        };
        let (fdb, neighbours) = match dumped.await {
            Ok(dumped) => dumped,
            Err(e) => {
                self.held.forget();
                return Err(e);
            }
        };
        let mut by_device: HashMap<u32, (Vec<_>, Vec<_>)> = HashMap::new();
        for (index, entry) in fdb {
            by_device.entry(index).or_default().0.push(entry);
        }
        for (index, n) in neighbours {
            by_device.entry(index).or_default().1.push(n);
        }
        // Collected in one go, the sets' nodes are full.
        let by_device = by_device.into_iter().map(|(index, (fdb, neighbours))| {
            let entries = Entries {
                fdb: fdb.into_iter().collect(),
                neighbours: neighbours.into_iter().collect(),
            };
            (index, entries)
        });
        self.held.load(by_device.collect());
        // The dump's messages are freed by now.
        heap::give_back_freed();
        Ok(())
    }

    async fn write_entries(
        &self,
        vxlan: &Link,
        state: &NetworkState,
        changes: &Changes,
    ) -> anyhow::Result<()> {
        // Tunnel addresses are link-local: the kernel must be told the interface they are on.
        let via = match state.encrypted {
            true => vxlan.vxlan_link(),
            false => None,
        };
        let index = vxlan.index;
        netlink::fdb_del_all(index, &changes.fdb_remove).await?;
        netlink::fdb_add_all(index, &changes.fdb_add, via).await?;
        netlink::neigh_del_all(index, &changes.neigh_remove).await?;
        netlink::neigh_add_all(index, &changes.neigh_add).await
    }

    /// Makes the host's place on a network's bridge as `exposed` says (none: hidden).
    pub async fn expose(&self, net: Segment, exposed: Option<&Exposed>) -> anyhow::Result<()> {
        let _lock = self.lock.lock().await;
        let (bridge, _) = self.ensure_devices_locked(net).await?;
        self.settle_exposed(&bridge, exposed).await
    }

    /// Removes every kernel object weft made on this host; returns their names.
    pub async fn reset(&self) -> anyhow::Result<Vec<String>> {
        let _lock = self.lock.lock().await;
        self.held.forget();
        remove_all(&self.handle, self.port).await
    }

    /// Gives the bridge the host's exposed MAC and exactly the exposed addresses.
    async fn settle_exposed(&self, bridge: &Link, exposed: Option<&Exposed>) -> anyhow::Result<()> {
        let held = netlink::addresses(&self.handle, bridge).await?;
        let wanted: BTreeSet<IpNetwork> = exposed.map(|e| e.cidrs.clone()).unwrap_or_default();
        let (add, remove) = diff(&held, &wanted);
        if let Some(e) = exposed.filter(|e| bridge.mac != Some(e.mac)) {
            netlink::set_mac(&self.handle, bridge, e.mac).await?;
        }
        netlink::del_addresses(&self.handle, bridge, &remove).await?;
        netlink::add_addresses(&self.handle, bridge, &add).await
    }

    /// Removes veths no endpoint calls for: left by an agent that died after the controller
    /// released an endpoint but before unplugging it, or while plugging one. Their container
    /// ends go with them.
    async fn remove_stray_veths(
        &self,
        links: &[Link],
        networks: &BTreeMap<u32, NetworkState>,
    ) -> anyhow::Result<()> {
        for link in links {
            let wanted = networks.values().any(|n| n.ports.contains(&link.name));
            if link.name.starts_with(HOST_IFNAME_PREFIX) && !wanted {
                warn!(veth = %link.name, "no endpoint calls for this veth; removing it");
                netlink::delete_link(&self.handle, link).await?;
            }
        }
        Ok(())
    }

    /// Whether the container holds an interface named `ifname`.
    pub async fn container_has(&self, container: &Container, ifname: &str) -> anyhow::Result<bool> {
        let ifname = ifname.to_string();
        netns::run_in(&container.netns, move |handle| async move {
            Ok(netlink::link_by_name(&handle, &ifname).await?.is_some())
        })
        .await
    }

    /// Removes the bridge and VXLAN device of networks not in `networks`, unless a veth is still
    /// on the bridge: the tables may not yet show the endpoint an attach just plugged.
    async fn remove_left_networks(
        &self,
        links: &[Link],
        networks: &BTreeMap<u32, NetworkState>,
    ) -> anyhow::Result<()> {
        let mut left: BTreeMap<u32, Vec<&Link>> = BTreeMap::new();
        for link in links {
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
                self.held.removed(dev.index);
            }
        }
        Ok(())
    }

    pub async fn link_exists(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.link(name).await?.is_some())
    }

    /// The host's link `name`, if there is one.
    pub async fn link(&self, name: &str) -> anyhow::Result<Option<netlink::Link>> {
        netlink::link_by_name(&self.handle, name).await
    }

    /// Makes endpoint `ep` of network `net` exist in the kernel: its veth on the network's bridge
    /// and its interface in the container with the endpoint's MAC, the MTU and every address.
    /// An endpoint already plugged only gets the addresses it lacks. A new veth that cannot be
    /// set up completely is removed again.
    pub async fn plug(
        &self,
        container: &Container,
        ep: &EndpointRow,
        net: Segment,
    ) -> anyhow::Result<()> {
        let _lock = self.lock.lock().await;
        let cidrs = ep.cidrs.clone();
        let inside = ep.container_ifname.clone();
        if let Some(host) = netlink::link_by_name(&self.handle, &ep.host_ifname).await? {
            let (name, more) = (inside.clone(), cidrs.clone());
            let added = netns::run_in(&container.netns, move |handle| async move {
                match netlink::link_by_name(&handle, &name).await? {
                    Some(link) => netlink::add_addresses(&handle, &link, &more)
                        .await
                        .map(|_| true),
                    None => Ok(false),
                }
            })
            .await?;
            if added {
                return Ok(());
            }
            // A veth of that name whose other end is not in this container is left from an
            // endpoint that is gone (its address, and so its MAC and name, went to this one).
            warn!(veth = %ep.host_ifname, "replacing a veth left from an earlier endpoint");
            netlink::delete_link(&self.handle, &host).await?;
        }
        let netns_file = netns::open(&container.netns)?;
        let mac = ep.mac;
        let (bridge, _) = self.ensure_devices_locked(net).await?;
        let guest_name = guest_tmp_ifname(&ep.host_ifname);
        let host = netlink::create_veth_into(
            &self.handle,
            &ep.host_ifname,
            &bridge,
            &guest_name,
            mac,
            self.mtu_of(net),
            Some(&netns_file),
        )
        .await?;
        let inside_ready = netns::run_in(&container.netns, move |handle| async move {
            let guest = netlink::link_by_name(&handle, &guest_name)
                .await?
                .with_context(|| format!("{guest_name} did not arrive in the container"))?;
            netlink::quiet_ipv6(&guest_name);
            netlink::configure_container_if(&handle, &guest, &inside, &cidrs).await?;
            netlink::wait_running(&handle, &inside, RUNNING_WAIT).await
        });
        // The attach answers once both ends pass frames: the container's first ARP would
        // otherwise be dropped, and retried only a second later.
        let (host_up, inside_up) = tokio::join!(
            netlink::wait_running(&self.handle, &ep.host_ifname, RUNNING_WAIT),
            inside_ready
        );
        let result = match (host_up, inside_up) {
            (Ok(host_up), Ok(inside_up)) => {
                if !(host_up && inside_up) {
                    warn!(veth = %ep.host_ifname, "the veth is not running after {RUNNING_WAIT:?}");
                }
                Ok(())
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
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

    /// Makes an endpoint's veth with both ends here, the host's on the network's bridge and
    /// the container's (down, with the endpoint's MAC and the MTU) for Docker to move into its
    /// sandbox and set up (Join); returns the container end's name. A veth of the endpoint's
    /// name that is there already is made anew (a Join retried after its answer was lost).
    pub async fn plug_unmoved(&self, ep: &EndpointRow, net: Segment) -> anyhow::Result<String> {
        let _lock = self.lock.lock().await;
        if let Some(old) = netlink::link_by_name(&self.handle, &ep.host_ifname).await? {
            netlink::delete_link(&self.handle, &old).await?;
        }
        let (bridge, _) = self.ensure_devices_locked(net).await?;
        let guest_name = guest_tmp_ifname(&ep.host_ifname);
        netlink::create_veth_into(
            &self.handle,
            &ep.host_ifname,
            &bridge,
            &guest_name,
            ep.mac,
            self.mtu_of(net),
            None,
        )
        .await?;
        info!(endpoint = %ep.id.container, veth = %ep.host_ifname, mac = %ep.mac,
            "veth made for Docker to move");
        Ok(guest_name)
    }

    /// Weft's interfaces in `container` (`ethwe`, `ethwe1`, ...); none if it is gone.
    pub async fn container_interfaces(&self, container: &Container) -> anyhow::Result<Vec<Link>> {
        Ok(self
            .container_links(container)
            .await?
            .into_iter()
            .filter(|l| l.name.starts_with(&container_ifname(0)))
            .collect())
    }

    /// Every link in `container`'s namespace; none if it is gone. A link's `peer` there is an
    /// index in the host's namespace only if `peer_elsewhere` says its other end is out there
    /// (a container's own veth pairs or tunnels point inside it).
    async fn container_links(&self, container: &Container) -> anyhow::Result<Vec<Link>> {
        if container.netns.as_os_str().is_empty() || !container.netns.exists() {
            return Ok(Vec::new());
        }
        netns::run_in(&container.netns, |handle| async move {
            netlink::links(&handle).await
        })
        .await
    }

    /// Removes the veths whose other end is in `container` (weft's interfaces there, and any a
    /// plug cut short left under its temporary name), whatever the tables say; returns the host
    /// ends removed.
    pub async fn unplug_container(&self, container: &Container) -> anyhow::Result<Vec<String>> {
        let _lock = self.lock.lock().await;
        let peers: BTreeSet<u32> = self
            .container_links(container)
            .await?
            .into_iter()
            .filter(|l| l.peer_elsewhere)
            .filter_map(|l| l.peer)
            .collect();
        let mut removed = Vec::new();
        for link in netlink::links(&self.handle).await? {
            if link.name.starts_with(HOST_IFNAME_PREFIX) && peers.contains(&link.index) {
                netlink::delete_link(&self.handle, &link).await?;
                info!(veth = %link.name, "unplugged");
                removed.push(link.name);
            }
        }
        Ok(removed)
    }

    /// Removes the veth `host_ifname` if its other end is in `container`. Its name comes from its
    /// MAC, which comes from its first address: once the controller has detached the endpoint,
    /// the address, and so the name, may already be another container's, whose veth this
    /// detach must not touch. Returns whether it was removed.
    pub async fn unplug_from(
        &self,
        container: &Container,
        host_ifname: &str,
    ) -> anyhow::Result<bool> {
        let _lock = self.lock.lock().await;
        let Some(host) = netlink::link_by_name(&self.handle, host_ifname).await? else {
            return Ok(false);
        };
        let ours = self
            .container_links(container)
            .await?
            .iter()
            .any(|l| l.peer_elsewhere && l.peer == Some(host.index));
        if !ours {
            info!(container = %container.id, veth = host_ifname,
                "the veth is not in this container (another endpoint has it now); leaving it");
            return Ok(false);
        }
        netlink::delete_link(&self.handle, &host).await?;
        info!(veth = host_ifname, "unplugged");
        Ok(true)
    }

    /// Whether `container` holds the interface `ifname` with `mac`, the other end of the veth
    /// `host_ifname`: an attach has done its work only then.
    pub async fn holds(
        &self,
        container: &Container,
        ifname: &str,
        mac: Mac,
        host_ifname: &str,
    ) -> anyhow::Result<bool> {
        let Some(host) = netlink::link_by_name(&self.handle, host_ifname).await? else {
            return Ok(false);
        };
        Ok(self.container_links(container).await?.iter().any(|l| {
            l.name == ifname && l.mac == Some(mac) && l.peer_elsewhere && l.peer == Some(host.index)
        }))
    }

    /// Removes `cidrs` from an endpoint's interface in the container; gone ones are fine.
    pub async fn remove_addresses(
        &self,
        container: &Container,
        ep: &EndpointRow,
        cidrs: &[IpNetwork],
    ) -> anyhow::Result<()> {
        let cidrs = cidrs.to_vec();
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
