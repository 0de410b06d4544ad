//! Detach and hide (what weftctl asks), and the releases the agent makes on its own: of the
//! endpoints of containers that stopped or lost their veth, and of everything at a reset.

use std::collections::BTreeSet;
use std::path::Path;

use tonic::Code;
use tracing::{info, warn};
use weft_proto::names::{EXPOSE_ID, is_docker_plugin_key};
use weft_proto::rows::{EndpointRow, ips_of};
use weft_proto::v1::DetachRequest;

use super::seam::{Claims, Host};
use super::{EndpointError, Endpoints, Released, check_addrs};
use crate::container::Container;
use crate::desired::{Exposed, Segment};
use crate::metrics::METRICS;

impl<H: Host, C: Claims> Endpoints<H, C> {
    /// Detaches `addrs` of a container (none: all it has), running or gone; returns the
    /// addresses released. `netns` is the container's namespace when the front end was told it
    /// (CNI_NETNS), rather than finding it from the reference.
    pub async fn detach(
        &self,
        reference: &str,
        netns: Option<&Path>,
        addrs: Vec<String>,
    ) -> Result<Vec<String>, EndpointError> {
        let outcome = self.do_detach(reference, netns, addrs).await;
        METRICS.operation("detach", &outcome);
        outcome
    }

    async fn do_detach(
        &self,
        reference: &str,
        netns: Option<&Path>,
        addrs: Vec<String>,
    ) -> Result<Vec<String>, EndpointError> {
        check_addrs(&addrs)?;
        let mut container = self.host.identify(reference).await?;
        if let Some(netns) = netns {
            container.netns = netns.to_path_buf();
        }
        let _lock = self.locks.lock(&container.id).await;
        let whole = addrs.is_empty();
        // Whether the container holds weft interfaces as the detach starts: the reconcile may
        // remove leftover ones (below) while the controller is asked.
        let had_interfaces = whole && self.host.has_interfaces(&container).await?;
        let done = match self.give_back(&container.id, addrs).await {
            // Detaching everything, refused as not attached: an earlier detach the controller
            // recorded may never have been answered (it died), leaving the container's
            // interfaces here until the watch brings the change and a reconcile removes them.
            // Removing them (or finding them removed) finishes it.
            Err(EndpointError::Controller(s)) if whole && s.code() == Code::NotFound => {
                let removed = self.host.unplug_container(&container).await?;
                if removed.is_empty() && !had_interfaces {
                    return Err(EndpointError::Controller(s));
                }
                warn!(container = %container.id, veths = ?removed,
                    "the controller had detached the container already; its interfaces are gone");
                self.tables.request_reconcile();
                return Ok(Vec::new());
            }
            done => done?,
        };
        self.unplug_detached(&container, &done).await?;
        Ok(ips_of(&done.released))
    }

    /// Makes the kernel follow a detach: removed endpoints lose their veth, updated ones the
    /// released addresses (if their container is still there).
    pub(super) async fn unplug_detached(
        &self,
        container: &Container,
        done: &Released,
    ) -> anyhow::Result<()> {
        for ep in &done.removed {
            self.host.unplug_from(container, &ep.host_ifname).await?;
        }
        // The delta of this detach may have been reconciled before the veth was gone, when its
        // network's devices still looked in use: look again.
        if !done.removed.is_empty() {
            self.tables.request_reconcile();
        }
        if container.netns.exists() {
            for ep in &done.updated {
                self.host
                    .remove_addresses(container, ep, &done.released)
                    .await?;
            }
        }
        Ok(())
    }

    /// Takes addresses the host was given off the bridges (`weftctl hide`); returns them.
    pub async fn hide(&self, addrs: Vec<String>) -> Result<Vec<String>, EndpointError> {
        check_addrs(&addrs)?;
        let _lock = self.locks.lock(EXPOSE_ID).await;
        let done = self.give_back(EXPOSE_ID, addrs).await?;
        let left = done.removed.iter().map(|ep| (ep, None));
        let kept = done.updated.iter().map(|ep| (ep, Some(Exposed::of(ep))));
        for (ep, exposed) in left.chain(kept) {
            // A network the tables do not know yet has no bridge here to take addresses from.
            let net = self
                .tables
                .read(|t| t.networks.get(&ep.id.network).map(Segment::of))
                .flatten();
            if let Some(net) = net {
                self.host.expose(net, exposed.as_ref()).await?;
            }
        }
        Ok(ips_of(&done.released))
    }

    /// Releases every container of this host at a reset: the addresses released, and why the
    /// releases stopped if one failed (the datapath goes anyway).
    pub async fn release_all(&self) -> (Vec<String>, Option<EndpointError>) {
        let me = self.tables.me();
        let containers: BTreeSet<String> = self
            .tables
            .read(|t| {
                t.endpoints_on(me)
                    .map(|ep| ep.id.container.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut released = Vec::new();
        for id in &containers {
            match self.give_back(id, Vec::new()).await {
                Ok(done) => released.extend(ips_of(&done.released)),
                Err(EndpointError::Controller(s)) if s.code() == Code::NotFound => {}
                Err(e) => return (released, Some(e)),
            }
        }
        (released, None)
    }

    /// Gives back the addresses of an endpoint this agent saw, and only of that one: a newer
    /// endpoint of the same container in the same network (another MAC) keeps its own.
    async fn release(&self, ep: &EndpointRow) {
        let request = DetachRequest {
            peer: self.tables.me().to_string(),
            container_id: ep.id.container.clone(),
            addrs: vec![format!("net:{}", ep.id.network)],
            only_mac: ep.mac.to_string(),
        };
        match self.claims.detach(request).await {
            // Until the tables show the release, they would show the endpoint again.
            Ok(done) => self.tables.made(done.revision),
            Err(status) => {
                warn!(container = %ep.id.container, "release failed: {}", status.message())
            }
        }
    }

    /// Unplugs and releases endpoints of containers that are not running, but none with an
    /// attach or detach under way (a container that is started again and attached keeps its
    /// new endpoint).
    pub async fn release_stopped(&self, endpoints: &[EndpointRow]) {
        for seen in endpoints {
            let Some(_lock) = self.locks.try_lock(&seen.id.container) else {
                continue;
            };
            // As the tables hold it now: an attach or detach may have finished meanwhile.
            let Some(ep) = self.tables.current(seen) else {
                continue;
            };
            info!(container = %ep.id.container, network = %ep.id.network,
                "container is not running; releasing its addresses");
            if let Err(e) = self.host.unplug(&ep.host_ifname).await {
                warn!(container = %ep.id.container, veth = %ep.host_ifname, "unplug failed: {e:#}");
            }
            self.release(&ep).await;
        }
    }

    /// Gives back the addresses of local endpoints that have no veth: their container is gone,
    /// or an attach never finished (the controller or the agent died half-way). Each endpoint is
    /// looked at under its container's lock and as the tables hold it then: an attach or detach
    /// under way is left alone, and one that starts meanwhile waits until the release is done,
    /// so a release never takes an endpoint that an attach is adding to or has just plugged.
    /// On the `first_pass` after the agent starts, endpoints whose veth is there but whose
    /// container has no interface for it (the agent died while plugging) are unplugged and
    /// released too.
    pub async fn release_unplugged(
        &self,
        local: &[EndpointRow],
        first_pass: bool,
    ) -> anyhow::Result<()> {
        // Docker's plugin endpoints have no veth until Join, and reservations never: Docker
        // releases them (DeleteEndpoint, ReleaseAddress).
        for seen in local
            .iter()
            .filter(|ep| !is_docker_plugin_key(&ep.id.container))
        {
            let Some(_lock) = self.locks.try_lock(&seen.id.container) else {
                continue;
            };
            // An attach or detach may have finished since `local` was read.
            let Some(ep) = self.tables.current(seen) else {
                continue;
            };
            if self.host.link_exists(&ep.host_ifname).await? {
                if !first_pass || self.container_side_plugged(&ep).await {
                    continue;
                }
                warn!(container = %ep.id.container, veth = %ep.host_ifname,
                    "the container has no interface for its endpoint; unplugging");
                self.host.unplug(&ep.host_ifname).await?;
            }
            warn!(container = %ep.id.container, network = %ep.id.network, veth = %ep.host_ifname,
                "endpoint has no veth on this host; releasing its addresses");
            self.release(&ep).await;
        }
        Ok(())
    }

    /// Whether the endpoint's interface is in its container (a container that is gone counts
    /// as plugged: its veth goes with it, and the release follows from that).
    async fn container_side_plugged(&self, ep: &EndpointRow) -> bool {
        let Ok(container) = self.host.identify(&ep.id.container).await else {
            return true;
        };
        if !container.netns.exists() {
            return true;
        }
        match self
            .host
            .container_has(&container, &ep.container_ifname)
            .await
        {
            Ok(has) => has,
            Err(e) => {
                warn!(container = %ep.id.container, "cannot look into the container: {e:#}");
                true
            }
        }
    }
}
