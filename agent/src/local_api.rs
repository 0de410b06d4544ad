//! The API weftctl speaks to on the agent's unix socket. Error messages are the "why" of
//! weftctl's `weftctl: <what failed>: <why>` line, so each names the culprit.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request, Response, Status};
use tracing::warn;
use weft_proto::addr::AddrSpec;
use weft_proto::dns_name;
use weft_proto::names::{EXPOSE_ID, short_container_id};
use weft_proto::tables::{Tables, endpoint_id};
use weft_proto::v1::agent_server::Agent as AgentApi;
use weft_proto::v1::{
    AcceptControllerRequest, AcceptControllerResponse, AttachResponse, CreateNetworkRequest,
    CreateNetworkResponse, DeleteNetworkRequest, DeleteNetworkResponse, DnsEntry, DnsLookupRequest,
    DnsLookupResponse, DnsRecord, DnsStatusRequest, DnsStatusResponse, Endpoint, ExposeRequest,
    ExposeResponse, HideRequest, HideResponse, IpamStatusRequest, IpamStatusResponse,
    ListPeersRequest, ListPeersResponse, LocalAttachRequest, LocalAttachResponse,
    LocalDetachRequest, LocalDetachResponse, LocalDnsUpdateRequest, LocalDnsUpdateResponse,
    NetworkListRequest, NetworkListResponse, PsRequest, PsResponse, RemovePeerRequest,
    RemovePeerResponse, ResetRequest, ResetResponse, StatusRequest, StatusResponse,
    UpdateDnsRequest,
};

use crate::agent::{Agent, WatchStart};
use crate::container::{Container, ContainerError};
use crate::desired::Exposed;
use crate::dns::records::name_in_domain;
use crate::dns::resolv_conf;
use crate::docker::DockerError;
use crate::netlink::InterfaceExists;
use crate::netns::NamespaceError;
use crate::views;

/// How long `weftctl accept-controller` waits for the controller's tables.
const ACCEPT_WAIT: Duration = Duration::from_secs(5);

pub struct LocalApi {
    agent: Arc<Agent>,
}

/// The status of a failed step, by the kind of error at its root: a container that is not as
/// the attach needs it is the caller's problem, not the agent's.
fn status_of(e: anyhow::Error) -> Status {
    let message = format!("{e:#}");
    let kind = |code| Status::new(code, message.clone());
    for cause in e.chain() {
        if cause.is::<InterfaceExists>() {
            return kind(Code::AlreadyExists);
        }
        if let Some(e) = cause.downcast_ref::<NamespaceError>() {
            return kind(container_status(ContainerError::Namespace(e.clone())).code());
        }
    }
    Status::internal(message)
}

fn container_status(e: ContainerError) -> Status {
    let message = e.to_string();
    match e {
        ContainerError::Namespace(NamespaceError::Missing(_))
        | ContainerError::NoProcess(_)
        | ContainerError::Docker(DockerError::NoSuchContainer { .. }) => Status::not_found(message),
        ContainerError::Namespace(NamespaceError::Unreadable { .. }) => {
            Status::permission_denied(message)
        }
        ContainerError::Namespace(NamespaceError::NotNetwork { .. })
        | ContainerError::Unsupported(_)
        | ContainerError::TooLong { .. }
        | ContainerError::Docker(DockerError::Ambiguous { .. }) => {
            Status::invalid_argument(message)
        }
        ContainerError::NotRunning { .. } => Status::failed_precondition(message),
        ContainerError::Docker(DockerError::Unreachable { .. }) => Status::unavailable(message),
    }
}

/// The name attach records: the one given, else the container's hostname if it makes a DNS
/// name (a hostname that does not is left out rather than refused).
fn dns_name_for(given: &str, container: &Container) -> Result<String, Status> {
    if !given.is_empty() {
        return dns_name::normalize(given).map_err(Status::invalid_argument);
    }
    Ok(dns_name::normalize(&container.hostname).unwrap_or_default())
}

/// The file system whose resolv.conf an attach points at weft's DNS: a Docker container's,
/// unless told not to (`rewrite`: None is the default). Refused before anything is attached
/// for a namespace, which has none.
fn resolv_root(container: &Container, rewrite: Option<bool>) -> Result<Option<&Path>, Status> {
    match (rewrite, &container.root) {
        (Some(false), _) | (None, None) => Ok(None),
        (Some(true), None) => Err(Status::failed_precondition(format!(
            "{} has no file system of its own to write a resolv.conf in; \
             --rewrite-resolv is for Docker containers",
            container.id
        ))),
        (_, Some(root)) => Ok(Some(root)),
    }
}

/// Checks the ADDR arguments here, so that a typo never reaches the controller.
fn check_addrs(addrs: &[String]) -> Result<(), Status> {
    for addr in addrs {
        addr.parse::<AddrSpec>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    Ok(())
}

fn ips_of(cidrs: &[String]) -> Vec<String> {
    cidrs
        .iter()
        .map(|c| {
            c.split_once('/')
                .map_or(c.as_str(), |(ip, _)| ip)
                .to_string()
        })
        .collect()
}

impl LocalApi {
    pub fn new(agent: Arc<Agent>) -> Self {
        LocalApi { agent }
    }

    fn read_tables<T>(&self, read: impl FnOnce(&Tables) -> T) -> Result<T, Status> {
        self.agent.with_tables(read).ok_or_else(|| {
            Status::unavailable(format!(
                "no state from controller {} yet",
                self.agent.controller_url
            ))
        })
    }
}

impl LocalApi {
    /// Opens DNS inside a container just attached and points the resolv.conf under
    /// `resolv_root` (see [`resolv_root`]) at it. A DNS that cannot be served does not undo
    /// the attach; a resolv.conf that was asked for and cannot be written is an error.
    async fn serve_dns(
        &self,
        container: &Container,
        resolv_root: Option<&Path>,
    ) -> Result<(), Status> {
        if let Err(e) = self.agent.dns.ensure(container).await {
            warn!(container = %container.id, "no DNS for this container: {e:#}");
            return Ok(());
        }
        let Some(root) = resolv_root else {
            return Ok(());
        };
        let domain = &self.agent.dns.state().domain;
        resolv_conf::point_to_weft(root, domain).map_err(|e| Status::internal(format!("{e:#}")))
    }

    /// Plugs the endpoints of an attach in. A new veth's endpoint may also hold addresses this
    /// attach did not ask for: an earlier attach of the container that the controller recorded
    /// but never answered (the controller or this agent died) left them, and the container never
    /// got them. They are given back first, so the container holds what the attach reports.
    async fn plug_attached(
        &self,
        container: &Container,
        done: &mut AttachResponse,
    ) -> Result<(), Status> {
        let mut unreported = Vec::new();
        for ep in &mut done.endpoints {
            let plugged = self
                .agent
                .datapath
                .link_exists(&ep.host_ifname)
                .await
                .map_err(status_of)?;
            if !plugged {
                let (asked, left): (Vec<String>, Vec<String>) =
                    ep.cidrs.drain(..).partition(|c| done.cidrs.contains(c));
                ep.cidrs = asked;
                unreported.extend(left);
            }
        }
        if !unreported.is_empty() {
            warn!(container = %container.id, addresses = ?unreported,
                "releasing what an unanswered attach left");
            self.agent
                .detach_at_controller(&container.id, unreported)
                .await?;
        }
        for ep in &done.endpoints {
            let vni = attached_vni(done, ep).ok_or_else(|| {
                Status::internal(format!(
                    "controller sent no network {} with the attach",
                    ep.network
                ))
            })?;
            self.agent
                .datapath
                .plug(container, ep, vni)
                .await
                .map_err(status_of)?;
        }
        Ok(())
    }
}

impl LocalApi {
    /// An attach reports success only when the container holds each of its interfaces (with
    /// its MAC, on its veth) and the tables, once they have caught up, hold each endpoint.
    async fn confirm_attached(
        &self,
        container: &Container,
        done: &AttachResponse,
    ) -> Result<(), Status> {
        for ep in &done.endpoints {
            let mac = ep.mac.parse().map_err(|e: String| Status::internal(e))?;
            let held = self
                .agent
                .datapath
                .holds(container, &ep.container_ifname, mac, &ep.host_ifname)
                .await
                .map_err(status_of)?;
            if !held {
                return Err(Status::aborted(format!(
                    "{} lost its interface {} (veth {}) while it was being attached",
                    short_container_id(&container.id),
                    ep.container_ifname,
                    ep.host_ifname
                )));
            }
            let recorded = self.agent.with_tables(|t| {
                t.revision < done.revision
                    || t.endpoints
                        .get(&endpoint_id(ep))
                        .is_some_and(|now| now.mac == ep.mac)
            });
            if recorded == Some(false) {
                return Err(Status::aborted(format!(
                    "the controller no longer holds the endpoint of {} in network {}",
                    short_container_id(&container.id),
                    ep.network
                )));
            }
        }
        Ok(())
    }
}

/// The VNI of an endpoint's network, as the attach that made it says.
fn attached_vni(done: &AttachResponse, ep: &Endpoint) -> Option<u32> {
    done.networks
        .iter()
        .find(|n| n.name == ep.network)
        .map(|n| n.vni)
}

/// The VNI of a network the tables know.
fn vni_of(t: &Tables, network: &str) -> Option<u32> {
    t.networks.get(network).map(|n| n.vni)
}

#[tonic::async_trait]
impl AgentApi for LocalApi {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let agent = &self.agent;
        let link = agent.link();
        let mut status = StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            name: agent.name.clone(),
            advertise_addr: agent.advertise_addr.to_string(),
            controller_url: agent.controller_url.clone(),
            connected: link.connected,
            for_secs: link.since.elapsed().as_secs(),
            last_error: link.last_error,
            refused: agent.following.refused().unwrap_or_default(),
            watch_start: match link.start {
                WatchStart::None => "",
                WatchStart::Snapshot => "snapshot",
                WatchStart::Resume { .. } => "resume",
            }
            .to_string(),
            watch_missed: match link.start {
                WatchStart::Resume { missed } => missed,
                _ => 0,
            },
            ..StatusResponse::default()
        };
        // Before the first snapshot there is nothing more to tell.
        agent.with_tables(|t| {
            views::tables_status(t, &agent.name, &mut status);
            let records = agent.dns.state().records();
            status.dns_domain = agent.dns.state().domain.clone();
            status.dns_entries = records.len() as u32;
        });
        Ok(Response::new(status))
    }

    async fn expose(
        &self,
        request: Request<ExposeRequest>,
    ) -> Result<Response<ExposeResponse>, Status> {
        let addrs = request.into_inner().addrs;
        check_addrs(&addrs)?;
        let _lock = self.agent.lock_container(EXPOSE_ID).await;
        let done = self
            .agent
            .attach_at_controller(EXPOSE_ID, addrs, "")
            .await?;
        // A reconcile from tables without the exposed address would take it off the bridge.
        self.agent.caught_up(done.revision).await;
        for ep in &done.endpoints {
            let vni = attached_vni(&done, ep);
            let exposed = Exposed::of(ep);
            let result = match (vni, exposed) {
                (Some(vni), Some(exposed)) => self.agent.datapath.expose(vni, Some(&exposed)).await,
                _ => Err(anyhow::anyhow!(
                    "controller sent an unusable endpoint for {}",
                    ep.network
                )),
            };
            if let Err(e) = result {
                if let Err(s) = self
                    .agent
                    .detach_at_controller(EXPOSE_ID, done.added.clone())
                    .await
                {
                    warn!(
                        "releasing the addresses of a failed expose failed: {}",
                        s.message()
                    );
                }
                self.agent.request_reconcile();
                return Err(status_of(e));
            }
        }
        Ok(Response::new(ExposeResponse {
            ips: ips_of(&done.cidrs),
        }))
    }

    async fn hide(&self, request: Request<HideRequest>) -> Result<Response<HideResponse>, Status> {
        let addrs = request.into_inner().addrs;
        check_addrs(&addrs)?;
        let _lock = self.agent.lock_container(EXPOSE_ID).await;
        let done = self.agent.detach_at_controller(EXPOSE_ID, addrs).await?;
        let left = done.removed.iter().map(|ep| (ep, None));
        let kept = done.updated.iter().map(|ep| (ep, Exposed::of(ep)));
        for (ep, exposed) in left.chain(kept) {
            // A network the tables do not know yet has no bridge here to take addresses from.
            if let Some(vni) = self.agent.with_tables(|t| vni_of(t, &ep.network)).flatten() {
                self.agent
                    .datapath
                    .expose(vni, exposed.as_ref())
                    .await
                    .map_err(status_of)?;
            }
        }
        Ok(Response::new(HideResponse {
            ips: ips_of(&done.released),
        }))
    }

    async fn reset(
        &self,
        _request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        self.agent.begin_stop();
        let me = &self.agent.name;
        let containers: BTreeSet<String> = self
            .agent
            .with_tables(|t| {
                t.endpoints
                    .values()
                    .filter(|ep| &ep.peer == me)
                    .map(|ep| ep.container_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let (mut released, mut release_error) = (Vec::new(), String::new());
        for id in &containers {
            match self.agent.detach_at_controller(id, Vec::new()).await {
                Ok(done) => released.extend(ips_of(&done.released)),
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => {
                    release_error = s.message().to_string();
                    break;
                }
            }
        }
        let removed = self.agent.datapath.reset().await.map_err(status_of);
        self.agent.finish_stop();
        Ok(Response::new(ResetResponse {
            removed: removed?,
            released,
            release_error,
        }))
    }

    async fn attach(
        &self,
        request: Request<LocalAttachRequest>,
    ) -> Result<Response<LocalAttachResponse>, Status> {
        let req = request.into_inner();
        check_addrs(&req.addrs)?;
        if !req.dns_name.is_empty() {
            dns_name::normalize(&req.dns_name).map_err(Status::invalid_argument)?;
        }
        let container = self
            .agent
            .containers
            .resolve(&req.container)
            .await
            .map_err(container_status)?;
        let name = dns_name_for(&req.dns_name, &container)?;
        let resolv_root = resolv_root(&container, req.rewrite_resolv)?;
        let _lock = self.agent.lock_container(&container.id).await;
        // The controller claims the addresses first, so no two hosts can plug the same one.
        let mut done = self
            .agent
            .attach_at_controller(&container.id, req.addrs, &name)
            .await?;
        let plugged = async {
            self.plug_attached(&container, &mut done).await?;
            self.agent.caught_up(done.revision).await;
            self.confirm_attached(&container, &done).await
        };
        if let Err(e) = plugged.await {
            // Give back what this attach took: a failed attach must leave nothing claimed.
            match self
                .agent
                .detach_at_controller(&container.id, done.added.clone())
                .await
            {
                Ok(undone) => {
                    if let Err(e) = self.agent.unplug_detached(&container, &undone).await {
                        warn!(container = %container.id, "undoing a failed attach: {e:#}");
                    }
                }
                Err(s) => warn!(container = %container.id,
                    "releasing the addresses of a failed attach failed: {}", s.message()),
            }
            return Err(e);
        }
        self.serve_dns(&container, resolv_root).await?;
        Ok(Response::new(LocalAttachResponse {
            ips: ips_of(&done.cidrs),
        }))
    }

    async fn detach(
        &self,
        request: Request<LocalDetachRequest>,
    ) -> Result<Response<LocalDetachResponse>, Status> {
        let req = request.into_inner();
        check_addrs(&req.addrs)?;
        let container = self
            .agent
            .containers
            .identify(&req.container)
            .await
            .map_err(container_status)?;
        let _lock = self.agent.lock_container(&container.id).await;
        let whole = req.addrs.is_empty();
        // Whether the container holds weft interfaces as the detach starts: the reconcile may
        // remove leftover ones (below) while the controller is asked.
        let had_interfaces = whole
            && !self
                .agent
                .datapath
                .container_interfaces(&container)
                .await
                .map_err(status_of)?
                .is_empty();
        let done = match self
            .agent
            .detach_at_controller(&container.id, req.addrs)
            .await
        {
            // Detaching everything, refused as not attached: an earlier detach the controller
            // recorded may never have been answered (it died), leaving the container's
            // interfaces here until the watch brings the change and a reconcile removes them.
            // Removing them (or finding them removed) finishes it.
            Err(s) if whole && s.code() == Code::NotFound => {
                let removed = self
                    .agent
                    .datapath
                    .unplug_container(&container)
                    .await
                    .map_err(status_of)?;
                if removed.is_empty() && !had_interfaces {
                    return Err(s);
                }
                warn!(container = %container.id, veths = ?removed,
                    "the controller had detached the container already; its interfaces are gone");
                self.agent.request_reconcile();
                return Ok(Response::new(LocalDetachResponse { ips: Vec::new() }));
            }
            done => done?,
        };
        self.agent
            .unplug_detached(&container, &done)
            .await
            .map_err(status_of)?;
        Ok(Response::new(LocalDetachResponse {
            ips: ips_of(&done.released),
        }))
    }

    async fn ps(&self, request: Request<PsRequest>) -> Result<Response<PsResponse>, Status> {
        let mut wanted = BTreeSet::new();
        for reference in request.into_inner().containers {
            let container = self
                .agent
                .containers
                .identify(&reference)
                .await
                .map_err(container_status)?;
            wanted.insert(container.id);
        }
        let mut entries = self.read_tables(|t| views::ps_entries(t, &self.agent.name))?;
        if !wanted.is_empty() {
            entries.retain(|e| wanted.contains(&e.container_id));
        }
        Ok(Response::new(PsResponse { entries }))
    }

    async fn create_network(
        &self,
        request: Request<CreateNetworkRequest>,
    ) -> Result<Response<CreateNetworkResponse>, Status> {
        let created = self
            .agent
            .ask(request.into_inner(), |mut c, r| async move {
                c.create_network(r).await
            })
            .await?;
        self.agent.caught_up(created.revision).await;
        Ok(Response::new(created))
    }

    async fn delete_network(
        &self,
        request: Request<DeleteNetworkRequest>,
    ) -> Result<Response<DeleteNetworkResponse>, Status> {
        let deleted = self
            .agent
            .ask(request.into_inner(), |mut c, r| async move {
                c.delete_network(r).await
            })
            .await?;
        self.agent.caught_up(deleted.revision).await;
        Ok(Response::new(deleted))
    }

    async fn list_networks(
        &self,
        _request: Request<NetworkListRequest>,
    ) -> Result<Response<NetworkListResponse>, Status> {
        let networks = self.read_tables(views::network_infos)?;
        Ok(Response::new(NetworkListResponse { networks }))
    }

    async fn ipam_status(
        &self,
        _request: Request<IpamStatusRequest>,
    ) -> Result<Response<IpamStatusResponse>, Status> {
        Ok(Response::new(self.read_tables(views::ipam_status)?))
    }

    async fn list_peers(
        &self,
        request: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        let peers = self
            .agent
            .ask(request.into_inner(), |mut c, r| async move {
                c.list_peers(r).await
            })
            .await?;
        Ok(Response::new(peers))
    }

    async fn remove_peer(
        &self,
        request: Request<RemovePeerRequest>,
    ) -> Result<Response<RemovePeerResponse>, Status> {
        let removed = self
            .agent
            .ask(request.into_inner(), |mut c, r| async move {
                c.remove_peer(r).await
            })
            .await?;
        self.agent.caught_up(removed.revision).await;
        Ok(Response::new(removed))
    }

    async fn dns_lookup(
        &self,
        request: Request<DnsLookupRequest>,
    ) -> Result<Response<DnsLookupResponse>, Status> {
        let asked = request.into_inner().name;
        let state = self.agent.dns.state();
        let name = dns_name::normalize(&asked)
            .ok()
            .and_then(|n| name_in_domain(&n, &state.domain))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{asked} is not a name in the DNS domain {}",
                    state.domain
                ))
            })?;
        let ips: Vec<String> = state
            .records()
            .addresses
            .get(&name)
            .map(|ips| ips.iter().map(|ip| ip.to_string()).collect())
            .unwrap_or_default();
        if ips.is_empty() {
            return Err(Status::not_found(format!(
                "no container has the name {name}"
            )));
        }
        Ok(Response::new(DnsLookupResponse { name, ips }))
    }

    async fn dns_update(
        &self,
        request: Request<LocalDnsUpdateRequest>,
    ) -> Result<Response<LocalDnsUpdateResponse>, Status> {
        let req = request.into_inner();
        let container = match req.container.as_str() {
            "" => None,
            reference => Some(
                self.agent
                    .containers
                    .identify(reference)
                    .await
                    .map_err(container_status)?,
            ),
        };
        let me = &self.agent.name;
        // What the container has: its addresses and its name, the defaults of IPs and -h.
        let (held, name): (Vec<String>, String) = match &container {
            Some(c) => self.read_tables(|t| {
                let eps: Vec<&Endpoint> = t
                    .endpoints
                    .values()
                    .filter(|ep| &ep.peer == me && ep.container_id == c.id)
                    .collect();
                let ips = eps.iter().flat_map(|ep| ips_of(&ep.cidrs)).collect();
                let name = eps
                    .first()
                    .map(|ep| ep.dns_name.clone())
                    .unwrap_or_default();
                (ips, name)
            })?,
            None => (Vec::new(), String::new()),
        };
        let name = match (req.name.as_str(), name.as_str()) {
            ("", "") => {
                return Err(Status::invalid_argument(
                    "no name: give -h FQDN (the container has no DNS name)",
                ));
            }
            ("", name) => name.to_string(),
            (given, _) => given.to_string(),
        };
        // One form per name, so that what dns-remove names is what dns-add added.
        let domain = &self.agent.dns.state().domain;
        let name = dns_name::normalize(&name).map_err(Status::invalid_argument)?;
        let name = name_in_domain(&name, domain).ok_or_else(|| {
            Status::invalid_argument(format!("{name} is not a name in the DNS domain {domain}"))
        })?;
        if let Some(c) = &container
            && held.is_empty()
            && req.ips.is_empty()
        {
            return Err(Status::failed_precondition(format!(
                "{} is not attached on this host: give its IPs",
                short_container_id(&c.id)
            )));
        }
        let ips = if req.ips.is_empty() { held } else { req.ips };
        let records: Vec<DnsRecord> = ips
            .iter()
            .map(|ip| DnsRecord {
                name: name.clone(),
                ip: ip.clone(),
                peer: me.clone(),
                container_id: container.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
            })
            .collect();
        let done = self
            .agent
            .ask(
                UpdateDnsRequest {
                    peer: me.clone(),
                    remove: req.remove,
                    records: records.clone(),
                },
                |mut c, r| async move { c.update_dns(r).await },
            )
            .await?;
        self.agent.caught_up(done.revision).await;
        Ok(Response::new(LocalDnsUpdateResponse { records }))
    }

    async fn accept_controller(
        &self,
        _request: Request<AcceptControllerRequest>,
    ) -> Result<Response<AcceptControllerResponse>, Status> {
        let following = &self.agent.following;
        if following.accept_next() {
            // The watch reconnects within a second and takes what the controller offers.
            let deadline = tokio::time::Instant::now() + ACCEPT_WAIT;
            while following.refused().is_some() || following.accept_pending() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Status::unavailable(format!(
                        "the controller at {} has offered no tables in {}s; the agent follows \
                         the next ones it offers",
                        self.agent.controller_url,
                        ACCEPT_WAIT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let followed = following.position().unwrap_or_default();
        Ok(Response::new(AcceptControllerResponse {
            store_id: followed.store_id,
            revision: followed.revision,
        }))
    }

    async fn dns_status(
        &self,
        _request: Request<DnsStatusRequest>,
    ) -> Result<Response<DnsStatusResponse>, Status> {
        let state = self.agent.dns.state();
        let entries = state
            .records()
            .addresses
            .iter()
            .map(|(name, ips)| DnsEntry {
                name: name.clone(),
                ips: ips.iter().map(|ip| ip.to_string()).collect(),
            })
            .collect();
        Ok(Response::new(DnsStatusResponse {
            domain: state.domain.clone(),
            ttl: state.ttl,
            upstreams: state.upstreams.iter().map(|u| u.to_string()).collect(),
            entries,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_addresses_are_named() {
        assert!(check_addrs(&["192.168.0.2/24".into(), "net:default".into()]).is_ok());
        let bad = check_addrs(&["192.168.0.300/24".into()]).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert_eq!(
            bad.message(),
            "invalid address \"192.168.0.300/24\": \"192.168.0.300\" is not an IPv4 address"
        );
    }

    #[test]
    fn a_failed_step_is_coded_by_its_root_cause() {
        let exists = anyhow::Error::new(InterfaceExists("ethwe".into())).context("plugging c1");
        let status = status_of(exists);
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(
            status.message(),
            "plugging c1: the container already has an interface ethwe"
        );
        let gone = anyhow::Error::new(NamespaceError::Missing("/run/netns/c1".into()));
        assert_eq!(status_of(gone).code(), Code::NotFound);
        assert_eq!(status_of(anyhow::anyhow!("boom")).code(), Code::Internal);
    }

    #[test]
    fn ips_drop_the_prefix() {
        assert_eq!(
            ips_of(&["192.168.0.2/24".into(), "10.0.0.1/8".into()]),
            vec!["192.168.0.2", "10.0.0.1"]
        );
    }
}
