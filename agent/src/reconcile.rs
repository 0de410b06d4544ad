//! The reconcile loop: whenever the tables change, a kernel notification says one of weft's
//! devices changed, or a while has passed, bring the kernel in line with the tables (dump, diff,
//! fix: see `Datapath::reconcile`), and give back addresses of endpoints that lost their veth.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::bail;
use futures::StreamExt;
use tracing::{debug, info, warn};
use weft_proto::names::{EXPOSE_ID, HOST_IFNAME_PREFIX, vni_of_device};
use weft_proto::tables::endpoint_id;
use weft_proto::v1::{DetachRequest, Endpoint};

use crate::agent::Agent;
use crate::datapath::Desired;
use crate::desired::host_networks;
use crate::dns::records::Records;
use crate::netlink::{self, LinkEvent};

/// A full reconcile runs this often even when nothing changed, to repair what was missed.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

impl Agent {
    /// Brings the kernel in line with the tables whenever they change, and every RESYNC_EVERY.
    pub async fn reconcile_loop(&self) {
        loop {
            tokio::select! {
                _ = self.reconcile_requested() => {}
                _ = tokio::time::sleep(RESYNC_EVERY) => {}
            }
            if let Err(e) = self.reconcile().await {
                warn!("reconcile failed, retrying: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.request_reconcile();
            }
        }
    }

    async fn reconcile(&self) -> anyhow::Result<()> {
        if self.is_stopping() {
            return Ok(());
        }
        // Stray veths (no endpoint calls for them) are removed only when the tables hold every
        // change this agent made and no attach, detach or release is under way: otherwise a veth
        // may be newer than the tables.
        let desired = || {
            self.with_tables(|t| Desired {
                networks: host_networks(t, &self.name),
                remove_stray_veths: self.is_idle() && t.revision >= self.own_revision(),
            })
        };
        let Some(report) = self.datapath.reconcile(desired).await? else {
            return Ok(());
        };
        if report.changed() {
            info!(
                fdb_added = report.fdb_added,
                fdb_removed = report.fdb_removed,
                neigh_added = report.neigh_added,
                neigh_removed = report.neigh_removed,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "datapath reconciled"
            );
        }
        // Only tables that hold every change this agent made can say which endpoint lost its
        // veth: older ones may still show one that a detach and a new attach have replaced.
        let local = self.fresh_local_endpoints(|_| true);
        self.release_unplugged(&local).await?;
        self.refresh_dns().await;
        // Once a pass made the kernel follow the tables: a restarted agent then refuses a store
        // behind them.
        if let Err(e) = self.following.save() {
            warn!("cannot record the controller store followed in the state dir: {e}");
        }
        Ok(())
    }

    /// Serves the names the tables hold, and DNS inside each local container: containers gone
    /// from this host lose their listener; after a start, those attached before get theirs
    /// (attach opens it for new ones).
    async fn refresh_dns(&self) {
        self.serve_names();
        let Some(local) = self.with_tables(|t| {
            t.endpoints
                .values()
                .filter(|ep| ep.peer == self.name && ep.container_id != EXPOSE_ID)
                .map(|ep| ep.container_id.clone())
                .collect::<BTreeSet<String>>()
        }) else {
            return;
        };
        self.dns.retain(|id| local.contains(id));
        if !self.first_dns_catch_up() {
            return;
        }
        for id in local.iter().filter(|id| !self.dns.serves(id)) {
            let served = match self.containers.identify(id).await {
                Ok(container) => self.dns.ensure(&container).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = served {
                warn!(container = %id, "no DNS for this container: {e:#}");
            }
        }
    }

    /// Gives the DNS server the names the tables hold now.
    pub(crate) fn serve_names(&self) {
        let domain = &self.dns.state().domain;
        if let Some(records) = self.with_tables(|t| Records::from_tables(t, domain)) {
            self.dns.state().set_records(records);
        }
    }

    /// This host's container endpoints that `keep` selects, from tables that hold every change
    /// this agent made (none from older ones).
    pub(crate) fn fresh_local_endpoints(&self, keep: impl Fn(&Endpoint) -> bool) -> Vec<Endpoint> {
        self.with_tables(|t| {
            let fresh = t.revision >= self.own_revision();
            t.endpoints
                .values()
                .filter(|ep| fresh && ep.peer == self.name && ep.container_id != EXPOSE_ID)
                .filter(|ep| keep(ep))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
    }

    /// Reconciles as soon as one of weft's devices changes or goes away behind its back (say,
    /// `ip link del vxlan-6784`), rather than at the next periodic pass.
    pub async fn follow_link_events(&self, port: u16) -> anyhow::Result<()> {
        let mut events = std::pin::pin!(netlink::link_events()?);
        while let Some(event) = events.next().await {
            let (LinkEvent::Changed(link) | LinkEvent::Removed(link)) = &event;
            let ours = vni_of_device(&link.name, port).is_some()
                || (matches!(event, LinkEvent::Removed(_))
                    && link.name.starts_with(HOST_IFNAME_PREFIX));
            if ours {
                debug!(link = %link.name, "link event");
                self.request_reconcile();
            }
        }
        bail!("link notifications ended")
    }

    /// Gives back the addresses of local endpoints that have no veth: their container is gone,
    /// or an attach never finished (the controller or the agent died half-way). Each endpoint is
    /// looked at under its container's lock and as the tables hold it then: an attach or detach
    /// under way is left alone, and one that starts meanwhile waits until the release is done,
    /// so a release never takes an endpoint that an attach is adding to or has just plugged.
    /// On the first pass after the agent starts, endpoints whose veth is there but whose
    /// container has no interface for it (the agent died while plugging) are unplugged and
    /// released too.
    async fn release_unplugged(&self, local: &[Endpoint]) -> anyhow::Result<()> {
        if local.is_empty() {
            return Ok(());
        }
        let first_pass = self.first_container_check();
        for seen in local {
            let Some(_lock) = self.try_lock_container(&seen.container_id) else {
                continue;
            };
            // An attach or detach may have finished since `local` was read.
            let Some(ep) = self.current(seen) else {
                continue;
            };
            if self.datapath.link_exists(&ep.host_ifname).await? {
                if !first_pass || self.container_side_plugged(&ep).await {
                    continue;
                }
                warn!(container = %ep.container_id, veth = %ep.host_ifname,
                    "the container has no interface for its endpoint; unplugging");
                self.datapath.unplug(&ep.host_ifname).await?;
            }
            warn!(container = %ep.container_id, network = %ep.network, veth = %ep.host_ifname,
                "endpoint has no veth on this host; releasing its addresses");
            self.release(&ep).await;
        }
        Ok(())
    }

    /// Gives back the addresses of an endpoint this agent saw, and only of that one: a newer
    /// endpoint of the same container in the same network (another MAC) keeps its own.
    pub(crate) async fn release(&self, ep: &Endpoint) {
        let request = DetachRequest {
            peer: self.name.clone(),
            container_id: ep.container_id.clone(),
            addrs: vec![format!("net:{}", ep.network)],
            only_mac: ep.mac.clone(),
        };
        match self
            .ask(request, |mut c, r| async move { c.detach(r).await })
            .await
        {
            // Until the tables show the release, they would show the endpoint again.
            Ok(done) => self.made(done.revision),
            Err(status) => {
                warn!(container = %ep.container_id, "release failed: {}", status.message())
            }
        }
    }

    /// The endpoint as the tables hold it now, if they hold every change this agent made and it
    /// still has the MAC it had.
    pub(crate) fn current(&self, ep: &Endpoint) -> Option<Endpoint> {
        self.with_tables(|t| {
            let fresh = t.revision >= self.own_revision();
            t.endpoints
                .get(&endpoint_id(ep))
                .filter(|now| fresh && now.mac == ep.mac)
                .cloned()
        })
        .flatten()
    }

    /// Whether the endpoint's interface is in its container (a container that is gone counts
    /// as plugged: its veth goes with it, and the release follows from that).
    async fn container_side_plugged(&self, ep: &Endpoint) -> bool {
        let Ok(container) = self.containers.identify(&ep.container_id).await else {
            return true;
        };
        if !container.netns.exists() {
            return true;
        }
        match self
            .datapath
            .container_has(&container, &ep.container_ifname)
            .await
        {
            Ok(has) => has,
            Err(e) => {
                warn!(container = %ep.container_id, "cannot look into the container: {e:#}");
                true
            }
        }
    }
}
