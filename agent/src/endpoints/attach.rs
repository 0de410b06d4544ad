//! Attach (a container gets an interface per network, with addresses the controller claimed)
//! and expose (the host gets an address on a network's bridge).

use std::path::{Path, PathBuf};

use tracing::warn;
use weft_proto::dns_name;
use weft_proto::names::{EXPOSE_ID, short_container_id};
use weft_proto::rows::{EndpointRow, cidr_strings, ips_of};

use super::seam::{Claims, Host};
use super::{Claimed, EndpointError, Endpoints, check_addrs};
use crate::container::Container;
use crate::desired::{Exposed, Segment};
use crate::dns::resolv_conf;
use crate::metrics::METRICS;

/// What a front end asks of an attach.
#[derive(Debug, Clone, Default)]
pub struct AttachOrder {
    /// A CONTAINER reference (see `container.rs`).
    pub container: String,
    /// The container's namespace, when the front end is told it (CNI_NETNS) rather than finding
    /// it from the reference.
    pub netns: Option<PathBuf>,
    /// The interface in the container (CNI_IFNAME); empty: ethwe, ethwe1, ...
    pub ifname: String,
    /// ADDR arguments; none: the default network.
    pub addrs: Vec<String>,
    /// Empty: the container's hostname, if it makes a DNS name.
    pub dns_name: String,
    /// Whether to point the container's resolv.conf at weft's DNS; None: for Docker
    /// containers.
    pub rewrite_resolv: Option<bool>,
}

/// The name attach records: the one given, else the container's hostname if it makes a DNS
/// name (a hostname that does not is left out rather than refused).
fn dns_name_for(given: &str, container: &Container) -> Result<String, EndpointError> {
    if !given.is_empty() {
        return dns_name::normalize(given).map_err(EndpointError::Invalid);
    }
    Ok(dns_name::normalize(&container.hostname).unwrap_or_default())
}

/// The file system whose resolv.conf an attach points at weft's DNS: a Docker container's,
/// unless told not to (`rewrite`: None is the default). Refused before anything is attached
/// for a namespace, which has none.
fn resolv_root(
    container: &Container,
    rewrite: Option<bool>,
) -> Result<Option<&Path>, EndpointError> {
    match (rewrite, &container.root) {
        (Some(false), _) | (None, None) => Ok(None),
        (Some(true), None) => Err(EndpointError::Precondition(format!(
            "{} has no file system of its own to write a resolv.conf in; \
             --rewrite-resolv is for Docker containers",
            container.id
        ))),
        (_, Some(root)) => Ok(Some(root)),
    }
}

/// An endpoint's network, as the attach that made it says.
fn attached_segment(done: &Claimed, ep: &EndpointRow) -> Result<Segment, EndpointError> {
    done.networks
        .iter()
        .find(|n| n.name == ep.id.network)
        .map(Segment::of)
        .ok_or_else(|| {
            EndpointError::Internal(format!(
                "controller sent no network {} with the attach",
                ep.id.network
            ))
        })
}

impl<H: Host, C: Claims> Endpoints<H, C> {
    /// Attaches a container: the controller claims the addresses first (so no two hosts can
    /// plug the same one), then the kernel plugs them; success only once the container holds
    /// each interface and the tables each endpoint. Returns the addresses attached.
    pub async fn attach(&self, order: AttachOrder) -> Result<Vec<String>, EndpointError> {
        let outcome = self.do_attach(order).await;
        METRICS.operation("attach", &outcome);
        outcome
    }

    async fn do_attach(&self, order: AttachOrder) -> Result<Vec<String>, EndpointError> {
        check_addrs(&order.addrs)?;
        if !order.dns_name.is_empty() {
            dns_name::normalize(&order.dns_name).map_err(EndpointError::Invalid)?;
        }
        let container = match &order.netns {
            None => self.host.resolve(&order.container).await?,
            Some(netns) => self.host.resolve_at(&order.container, netns).await?,
        };
        let name = dns_name_for(&order.dns_name, &container)?;
        let resolv_root = resolv_root(&container, order.rewrite_resolv)?;
        let _lock = self.locks.lock(&container.id).await;
        let mut done = self
            .claim(&container.id, order.addrs, &name, &order.ifname)
            .await?;
        let plugged = async {
            self.plug_attached(&container, &mut done).await?;
            self.caught_up(done.revision).await;
            self.confirm_attached(&container, &done).await
        };
        if let Err(e) = plugged.await {
            self.undo_attach(&container, &done).await;
            return Err(e);
        }
        self.serve_dns(&container, resolv_root).await?;
        Ok(ips_of(&done.cidrs))
    }

    /// Gives back what a failed attach took, and unplugs what it plugged: a failed attach must
    /// leave nothing claimed.
    async fn undo_attach(&self, container: &Container, done: &Claimed) {
        match self
            .give_back(&container.id, cidr_strings(&done.added))
            .await
        {
            Ok(undone) => {
                if let Err(e) = self.unplug_detached(container, &undone).await {
                    warn!(container = %container.id, "undoing a failed attach: {e:#}");
                }
            }
            Err(e) => warn!(container = %container.id,
                "releasing the addresses of a failed attach failed: {e}"),
        }
    }

    /// Plugs the endpoints of an attach in. A new veth's endpoint may also hold addresses this
    /// attach did not ask for: an earlier attach of the container that the controller recorded
    /// but never answered (the controller or this agent died) left them, and the container never
    /// got them. They are given back first, so the container holds what the attach reports.
    async fn plug_attached(
        &self,
        container: &Container,
        done: &mut Claimed,
    ) -> Result<(), EndpointError> {
        let mut unreported = Vec::new();
        for ep in &mut done.endpoints {
            if !self.host.link_exists(&ep.host_ifname).await? {
                let (asked, left): (Vec<_>, Vec<_>) =
                    ep.cidrs.drain(..).partition(|c| done.cidrs.contains(c));
                ep.cidrs = asked;
                unreported.extend(left);
            }
        }
        if !unreported.is_empty() {
            warn!(container = %container.id, addresses = ?unreported,
                "releasing what an unanswered attach left");
            self.give_back(&container.id, cidr_strings(&unreported))
                .await?;
        }
        for ep in &done.endpoints {
            let net = attached_segment(done, ep)?;
            self.host.plug(container, ep, net).await?;
        }
        Ok(())
    }

    /// An attach reports success only when the container holds each of its interfaces (with
    /// its MAC, on its veth) and the tables, once they have caught up, hold each endpoint.
    async fn confirm_attached(
        &self,
        container: &Container,
        done: &Claimed,
    ) -> Result<(), EndpointError> {
        for ep in &done.endpoints {
            let held = self
                .host
                .holds(container, &ep.container_ifname, ep.mac, &ep.host_ifname)
                .await?;
            if !held {
                return Err(EndpointError::Lost(format!(
                    "{} lost its interface {} (veth {}) while it was being attached",
                    short_container_id(&container.id),
                    ep.container_ifname,
                    ep.host_ifname
                )));
            }
            let recorded = self.tables.read(|t| {
                t.revision < done.revision
                    || t.endpoints.get(&ep.id).is_some_and(|now| now.mac == ep.mac)
            });
            if recorded == Some(false) {
                return Err(EndpointError::Lost(format!(
                    "the controller no longer holds the endpoint of {} in network {}",
                    short_container_id(&container.id),
                    ep.id.network
                )));
            }
        }
        Ok(())
    }

    /// Opens DNS inside a container just attached and points the resolv.conf under
    /// `resolv_root` (see [`resolv_root`]) at it. A DNS that cannot be served does not undo
    /// the attach; a resolv.conf that was asked for and cannot be written is an error.
    async fn serve_dns(
        &self,
        container: &Container,
        resolv_root: Option<&Path>,
    ) -> Result<(), EndpointError> {
        if let Err(e) = self.dns.ensure(container).await {
            warn!(container = %container.id, "no DNS for this container: {e:#}");
            return Ok(());
        }
        let Some(root) = resolv_root else {
            return Ok(());
        };
        Ok(resolv_conf::point_to_weft(root, &self.dns.state().domain)?)
    }

    /// Gives the host an address on each network's bridge (`weftctl expose`); returns the
    /// addresses.
    pub async fn expose(&self, addrs: Vec<String>) -> Result<Vec<String>, EndpointError> {
        check_addrs(&addrs)?;
        let _lock = self.locks.lock(EXPOSE_ID).await;
        let done = self.claim(EXPOSE_ID, addrs, "", "").await?;
        // A reconcile from tables without the exposed address would take it off the bridge.
        self.caught_up(done.revision).await;
        for ep in &done.endpoints {
            let result = match attached_segment(&done, ep) {
                Ok(net) => self
                    .host
                    .expose(net, Some(&Exposed::of(ep)))
                    .await
                    .map_err(EndpointError::Kernel),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                if let Err(undo) = self.give_back(EXPOSE_ID, cidr_strings(&done.added)).await {
                    warn!("releasing the addresses of a failed expose failed: {undo}");
                }
                self.tables.request_reconcile();
                return Err(e);
            }
        }
        Ok(ips_of(&done.cidrs))
    }
}
