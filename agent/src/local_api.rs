//! The API weftctl speaks to on the agent's unix socket: each call decodes its request, calls
//! the endpoint core (`endpoints/`) or reads a view of the tables (`views.rs`), and encodes the
//! answer. Error messages are the "why" of weftctl's `weftctl: <what failed>: <why>` line, so
//! each names the culprit; [`status_of`] gives each kind of error its gRPC code.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Code, Request, Response, Status};
use weft_proto::dns_name;
use weft_proto::tables::Tables;
use weft_proto::v1::agent_server::Agent as AgentApi;
use weft_proto::v1::{
    AcceptControllerRequest, AcceptControllerResponse, CreateNetworkRequest, CreateNetworkResponse,
    DeleteNetworkRequest, DeleteNetworkResponse, DnsEntry, DnsLookupRequest, DnsLookupResponse,
    DnsStatusRequest, DnsStatusResponse, ExposeRequest, ExposeResponse, HideRequest, HideResponse,
    IpamStatusRequest, IpamStatusResponse, ListControllersRequest, ListControllersResponse,
    ListPeersRequest, ListPeersResponse, LocalAttachRequest, LocalAttachResponse,
    LocalDetachRequest, LocalDetachResponse, LocalDnsUpdateRequest, LocalDnsUpdateResponse,
    NetworkListRequest, NetworkListResponse, PsRequest, PsResponse, ReconcileReport,
    RemovePeerRequest, RemovePeerResponse, ResetRequest, ResetResponse, StatusRequest,
    StatusResponse,
};
use weft_proto::v1::{
    CniAddRequest, CniAddResponse, CniCheckRequest, CniCheckResponse, CniDelRequest,
    CniDelResponse, CniGcRequest, CniGcResponse, Connection, ConnectionsRequest,
    ConnectionsResponse,
};

use crate::agent::Agent;
use crate::container::ContainerError;
use crate::dns::records::name_in_domain;
use crate::docker::DockerError;
use crate::endpoints::EndpointError;
use crate::endpoints::attach::AttachOrder;
use crate::endpoints::names::NameOrder;
use crate::firewall::rules::TABLE;
use crate::netlink::InterfaceExists;
use crate::netns::NamespaceError;
use crate::probe::path::State;
use crate::reconcile::LastReconcile;
use crate::tables::WatchStart;
use crate::views;

/// How long `weftctl accept-controller` waits for the controller's tables.
const ACCEPT_WAIT: Duration = Duration::from_secs(5);

pub struct LocalApi {
    agent: Arc<Agent>,
}

/// The gRPC status of a failed change, by its kind: a container that is not as the attach
/// needs it is the caller's problem, not the agent's.
fn status_of(e: EndpointError) -> Status {
    let message = e.to_string();
    match e {
        EndpointError::Invalid(_) => Status::invalid_argument(message),
        EndpointError::Container(e) => container_status(e),
        EndpointError::Precondition(_) => Status::failed_precondition(message),
        EndpointError::Controller(status) => status,
        EndpointError::Kernel(e) => kernel_status(e),
        EndpointError::Lost(_) => Status::aborted(message),
        EndpointError::NoTables(_) => Status::unavailable(message),
        EndpointError::Internal(_) => Status::internal(message),
    }
}

/// A failed kernel step, by the error at its root.
fn kernel_status(e: anyhow::Error) -> Status {
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
        ContainerError::NotRunning { .. }
        | ContainerError::Cni(_)
        | ContainerError::DockerPlugin(_) => Status::failed_precondition(message),
        ContainerError::Docker(DockerError::Unreachable { .. }) => Status::unavailable(message),
    }
}

fn reconcile_report(last: &LastReconcile) -> ReconcileReport {
    let mut wire = ReconcileReport {
        ago_secs: last.at.elapsed().as_secs(),
        duration_us: last.took.as_micros() as u64,
        ..ReconcileReport::default()
    };
    match &last.outcome {
        Ok(report) => {
            wire.fdb_added = report.fdb_added as u64;
            wire.fdb_removed = report.fdb_removed as u64;
            wire.neigh_added = report.neigh_added as u64;
            wire.neigh_removed = report.neigh_removed as u64;
            wire.fdb_held = report.fdb_held as u64;
            wire.neigh_held = report.neigh_held as u64;
        }
        Err(e) => wire.error = e.clone(),
    }
    wire
}

impl LocalApi {
    pub fn new(agent: Arc<Agent>) -> Self {
        LocalApi { agent }
    }

    fn read_tables<T>(&self, read: impl FnOnce(&Tables) -> T) -> Result<T, Status> {
        self.agent
            .tables()
            .read(read)
            .ok_or_else(|| status_of(self.agent.endpoints().no_tables()))
    }
}

/// Asks the controller through the agent's link, and waits for the change to arrive: the
/// commands that change the tables but no endpoint.
macro_rules! change {
    ($self:ident, $request:expr, $call:ident) => {{
        let done = $self
            .agent
            .link()
            .ask(
                $request.into_inner(),
                |mut c, r| async move { c.$call(r).await },
            )
            .await?;
        $self.agent.endpoints().caught_up(done.revision).await;
        Ok(Response::new(done))
    }};
}

#[tonic::async_trait]
impl AgentApi for LocalApi {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let agent = &self.agent;
        let link = agent.link().state();
        let mut status = StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            name: agent.name().to_string(),
            advertise_addr: agent.advertise_addr().to_string(),
            controller_url: agent.link().url().to_string(),
            connected: link.connected,
            for_secs: link.since.elapsed().as_secs(),
            last_error: link.last_error,
            refused: agent.tables().following().refused().unwrap_or_default(),
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
        for c in agent.connections().list() {
            match c.state {
                State::Ok => status.connections_ok += 1,
                State::Failed => status.connections_failed += 1,
                State::Pending => status.connections_pending += 1,
            }
        }
        let last = agent
            .last_reconcile()
            .lock()
            .expect("reconcile log poisoned");
        status.last_reconcile = last.as_ref().map(reconcile_report);
        drop(last);
        // Before the first snapshot there is nothing more to tell.
        agent.tables().read(|t| {
            views::tables_status(t, agent.name(), &mut status);
            let dns = agent.dns().state();
            status.dns_domain = dns.domain.clone();
            status.dns_entries = dns.records().len() as u32;
        });
        Ok(Response::new(status))
    }

    async fn expose(
        &self,
        request: Request<ExposeRequest>,
    ) -> Result<Response<ExposeResponse>, Status> {
        let addrs = request.into_inner().addrs;
        let ips = self.agent.endpoints().expose(addrs).await;
        Ok(Response::new(ExposeResponse {
            ips: ips.map_err(status_of)?,
        }))
    }

    async fn hide(&self, request: Request<HideRequest>) -> Result<Response<HideResponse>, Status> {
        let addrs = request.into_inner().addrs;
        let ips = self.agent.endpoints().hide(addrs).await;
        Ok(Response::new(HideResponse {
            ips: ips.map_err(status_of)?,
        }))
    }

    async fn reset(
        &self,
        _request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        let lifecycle = self.agent.lifecycle();
        lifecycle.begin_stop();
        let (released, release_error) = self.agent.endpoints().release_all().await;
        let removed = async {
            let links = self.agent.datapath().reset().await?;
            let table = self.agent.firewall().reset().await?;
            anyhow::Ok((links, table))
        }
        .await;
        lifecycle.finish_stop();
        let (removed, table) = removed.map_err(|e| status_of(e.into()))?;
        Ok(Response::new(ResetResponse {
            removed,
            tables: table.then(|| TABLE.to_string()).into_iter().collect(),
            released,
            release_error: release_error.map(|e| e.to_string()).unwrap_or_default(),
        }))
    }

    async fn attach(
        &self,
        request: Request<LocalAttachRequest>,
    ) -> Result<Response<LocalAttachResponse>, Status> {
        let req = request.into_inner();
        let order = AttachOrder {
            container: req.container,
            addrs: req.addrs,
            dns_name: req.dns_name,
            rewrite_resolv: req.rewrite_resolv,
            ..AttachOrder::default()
        };
        let ips = self.agent.endpoints().attach(order).await;
        Ok(Response::new(LocalAttachResponse {
            ips: ips.map_err(status_of)?,
        }))
    }

    async fn detach(
        &self,
        request: Request<LocalDetachRequest>,
    ) -> Result<Response<LocalDetachResponse>, Status> {
        let req = request.into_inner();
        let ips = self
            .agent
            .endpoints()
            .detach(&req.container, None, req.addrs)
            .await;
        Ok(Response::new(LocalDetachResponse {
            ips: ips.map_err(status_of)?,
        }))
    }

    async fn ps(&self, request: Request<PsRequest>) -> Result<Response<PsResponse>, Status> {
        let mut wanted = BTreeSet::new();
        for reference in request.into_inner().containers {
            let container = self
                .agent
                .containers()
                .identify(&reference)
                .await
                .map_err(container_status)?;
            wanted.insert(container.id);
        }
        let mut entries = self.read_tables(|t| views::ps_entries(t, self.agent.name()))?;
        // An endpoint of Docker's driver shows as its container, once that has been seen.
        for e in &mut entries {
            if let Some(id) = self.agent.endpoints().driver_container(&e.container_id) {
                e.container_id = id;
            }
        }
        if !wanted.is_empty() {
            entries.retain(|e| wanted.contains(&e.container_id));
        }
        Ok(Response::new(PsResponse { entries }))
    }

    async fn create_network(
        &self,
        request: Request<CreateNetworkRequest>,
    ) -> Result<Response<CreateNetworkResponse>, Status> {
        change!(self, request, create_network)
    }

    async fn delete_network(
        &self,
        request: Request<DeleteNetworkRequest>,
    ) -> Result<Response<DeleteNetworkResponse>, Status> {
        change!(self, request, delete_network)
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
            .link()
            .ask(request.into_inner(), |mut c, r| async move {
                c.list_peers(r).await
            })
            .await?;
        Ok(Response::new(peers))
    }

    async fn list_controllers(
        &self,
        request: Request<ListControllersRequest>,
    ) -> Result<Response<ListControllersResponse>, Status> {
        let controllers = self
            .agent
            .link()
            .ask(request.into_inner(), |mut c, r| async move {
                c.list_controllers(r).await
            })
            .await?;
        Ok(Response::new(controllers))
    }

    async fn remove_peer(
        &self,
        request: Request<RemovePeerRequest>,
    ) -> Result<Response<RemovePeerResponse>, Status> {
        change!(self, request, remove_peer)
    }

    async fn dns_lookup(
        &self,
        request: Request<DnsLookupRequest>,
    ) -> Result<Response<DnsLookupResponse>, Status> {
        let asked = request.into_inner().name;
        let state = self.agent.dns().state();
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
        let order = NameOrder {
            container: req.container,
            name: req.name,
            ips: req.ips,
            remove: req.remove,
        };
        let records = self.agent.endpoints().update_dns(order).await;
        Ok(Response::new(LocalDnsUpdateResponse {
            records: records.map_err(status_of)?,
        }))
    }

    async fn accept_controller(
        &self,
        _request: Request<AcceptControllerRequest>,
    ) -> Result<Response<AcceptControllerResponse>, Status> {
        let following = self.agent.tables().following();
        if following.accept_next() {
            // The watch reconnects within a second and takes what the controller offers.
            let deadline = tokio::time::Instant::now() + ACCEPT_WAIT;
            while following.refused().is_some() || following.accept_pending() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Status::unavailable(format!(
                        "the controller at {} has offered no tables in {}s; the agent follows \
                         the next ones it offers",
                        self.agent.link().url(),
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

    async fn connections(
        &self,
        _request: Request<ConnectionsRequest>,
    ) -> Result<Response<ConnectionsResponse>, Status> {
        let datapath = self.agent.datapath();
        let encrypted = self.agent.encrypted_links().await;
        let now = SystemTime::now();
        let connections = self
            .agent
            .connections()
            .list()
            .into_iter()
            .map(|c| {
                let handshake = encrypted.get(&c.peer);
                let ago = |at: SystemTime| now.duration_since(at).unwrap_or_default().as_secs();
                Connection {
                    encrypted: handshake.is_some(),
                    handshake_secs: handshake.copied().flatten().map(ago),
                    peer: c.peer,
                    vtep: c.vtep.to_string(),
                    port: datapath.port().into(),
                    state: c.state.name().to_string(),
                    why: c.why,
                    rtt_us: c.rtt.map_or(0, |rtt| rtt.as_micros().max(1) as u64),
                    mtu: c.mtu.unwrap_or_default(),
                    network_mtu: datapath.mtu(),
                    for_secs: c.for_.as_secs(),
                }
            })
            .collect();
        Ok(Response::new(ConnectionsResponse { connections }))
    }

    async fn cni_add(
        &self,
        request: Request<CniAddRequest>,
    ) -> Result<Response<CniAddResponse>, Status> {
        let done = self.agent.cni_add(request.into_inner()).await;
        Ok(Response::new(done.map_err(status_of)?))
    }

    async fn cni_del(
        &self,
        request: Request<CniDelRequest>,
    ) -> Result<Response<CniDelResponse>, Status> {
        let released = self.agent.cni_del(request.into_inner()).await;
        Ok(Response::new(CniDelResponse {
            released: released.map_err(status_of)?,
        }))
    }

    async fn cni_check(
        &self,
        request: Request<CniCheckRequest>,
    ) -> Result<Response<CniCheckResponse>, Status> {
        self.agent
            .cni_check(request.into_inner())
            .await
            .map_err(status_of)?;
        Ok(Response::new(CniCheckResponse {}))
    }

    async fn cni_gc(
        &self,
        request: Request<CniGcRequest>,
    ) -> Result<Response<CniGcResponse>, Status> {
        let released = self.agent.cni_gc(request.into_inner()).await;
        Ok(Response::new(CniGcResponse {
            released: released.map_err(status_of)?,
        }))
    }

    async fn dns_status(
        &self,
        _request: Request<DnsStatusRequest>,
    ) -> Result<Response<DnsStatusResponse>, Status> {
        let state = self.agent.dns().state();
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
    fn a_failed_step_is_coded_by_its_root_cause() {
        let exists = anyhow::Error::new(InterfaceExists("ethwe".into())).context("plugging c1");
        let status = status_of(exists.into());
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(
            status.message(),
            "plugging c1: the container already has an interface ethwe"
        );
        let gone = anyhow::Error::new(NamespaceError::Missing("/run/netns/c1".into()));
        assert_eq!(status_of(gone.into()).code(), Code::NotFound);
        assert_eq!(
            status_of(anyhow::anyhow!("boom").into()).code(),
            Code::Internal
        );
    }

    #[test]
    fn each_kind_has_its_code_and_the_controller_keeps_its_own() {
        let invalid = EndpointError::Invalid("invalid address \"x\"".into());
        assert_eq!(status_of(invalid).code(), Code::InvalidArgument);
        let refused = EndpointError::Controller(Status::not_found("c1 is not attached"));
        let status = status_of(refused);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "c1 is not attached");
        let lost = EndpointError::Lost("c1 lost its interface".into());
        assert_eq!(status_of(lost).code(), Code::Aborted);
    }
}
