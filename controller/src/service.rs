//! The Controller gRPC service: hands each request that changes the tables to the committer
//! ([`crate::state`]), and fans the changes out to every watching agent as revisioned deltas.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use weft_proto::addr::{AddrError, AddrSpec};
use weft_proto::dns_name;
use weft_proto::names::{Mac, check_ifname};
use weft_proto::rows::{self, EndpointRow, NetworkRow, RowChange};
use weft_proto::snapshot;
use weft_proto::tables::Tables;
use weft_proto::v1::controller_server::Controller;
use weft_proto::v1::{
    AttachRequest, AttachResponse, ControllerMember, CreateNetworkRequest, CreateNetworkResponse,
    DeleteNetworkRequest, DeleteNetworkResponse, DetachRequest, DetachResponse,
    ListControllersRequest, ListControllersResponse, ListPeersRequest, ListPeersResponse,
    PeerStatus, RegisterRequest, RegisterResponse, RemovePeerRequest, RemovePeerResponse,
    UpdateDnsRequest, UpdateDnsResponse, WatchEvent, WatchRequest,
};

use crate::authority::act_for;
use crate::ipam::IpamError;
use crate::limits;
use crate::liveness::{Liveness, PeerPresence};
use crate::members::{self, Members};
use crate::reach::StoreReach;
use crate::rules::{AttachOptions, TableError, TableRules, View};
use crate::state::{Committer, MutateError, Shared, Start};
use crate::store::{EtcdKv, Store};

/// Deltas kept for watchers that fall behind; one that falls further gets a new snapshot.
const EVENT_BUFFER: usize = 4096;
/// Events (snapshot parts too) queued per watcher before its stream applies back-pressure:
/// few, since a thousand agents joining at once each hold this many parts in memory.
const WATCHER_QUEUE: usize = 16;

struct Inner {
    shared: Arc<Shared>,
    committer: Committer,
    /// Shared with the plans of rmpeer, which read it under the state lock: never take the state
    /// lock while holding this one.
    liveness: Arc<Mutex<Liveness>>,
    /// This controller as a member of the control plane, once it announced itself.
    members: OnceLock<Arc<Members>>,
    /// Set when the controller stops: every watch stream ends then, or the server's graceful
    /// shutdown would wait for them forever.
    stopping: watch::Sender<bool>,
    /// Whether etcd answers: a controller cut off from it hands its agents over to another.
    reach: StoreReach,
}

#[derive(Clone)]
pub struct ControllerService {
    inner: Arc<Inner>,
}

fn status_of(err: TableError) -> Status {
    let msg = err.to_string();
    match err {
        TableError::Invalid(_)
        | TableError::Overlap { .. }
        | TableError::Ipam(IpamError::Outside { .. } | IpamError::Reserved { .. }) => {
            Status::invalid_argument(msg)
        }
        TableError::UnknownPeer(_)
        | TableError::NetworkInUse { .. }
        | TableError::PeerConnected(_) => Status::failed_precondition(msg),
        TableError::OthersMac { .. } => Status::permission_denied(msg),
        TableError::UnknownNetwork(_)
        | TableError::NoDnsRecord { .. }
        | TableError::NotAttached { .. }
        | TableError::NotHeld { .. } => Status::not_found(msg),
        TableError::Ipam(IpamError::InUse { .. }) | TableError::NetworkExists { .. } => {
            Status::already_exists(msg)
        }
        TableError::Ipam(IpamError::Exhausted { .. }) | TableError::NoFreeMac => {
            Status::resource_exhausted(msg)
        }
    }
}

fn lock_liveness(liveness: &Mutex<Liveness>) -> MutexGuard<'_, Liveness> {
    liveness.lock().expect("liveness lock poisoned")
}

fn parse_addrs(addrs: &[String]) -> Result<Vec<AddrSpec>, Status> {
    addrs
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|e: AddrError| Status::invalid_argument(e.to_string()))
        })
        .collect()
}

impl ControllerService {
    /// `peer_lease`: how long a peer may be gone before it is shown as unreachable.
    pub fn new(store: Store, tables: Tables, peer_lease: Duration) -> std::io::Result<Self> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let watch = store.revision_watch();
        let reach = StoreReach::start(store.etcd());
        let shared = Arc::new(Shared::new(store, tables, events));
        if let Some(watch) = watch {
            crate::follow::start(shared.clone(), watch);
        }
        Ok(ControllerService {
            inner: Arc::new(Inner {
                committer: Committer::start(shared.clone())?,
                shared,
                liveness: Arc::new(Mutex::new(Liveness::new(peer_lease, Instant::now()))),
                members: OnceLock::new(),
                stopping: watch::Sender::new(false),
                reach,
            }),
        })
    }

    /// Makes this controller a member of the control plane, reached at `address`: on etcd
    /// (`kv`) the others learn of it and of the peers watching it, and it of them.
    pub fn announce(&self, kv: Option<EtcdKv>, address: String, name: String) {
        let members = Members::start(kv, address, name, self.inner.liveness.clone());
        let _ = self.inner.members.set(members);
    }

    /// The other members, as of their last beat (none before `announce`, or on redb).
    async fn other_members(&self) -> Result<Vec<members::Member>, Status> {
        let Some(members) = self.inner.members.get().cloned() else {
            return Ok(Vec::new());
        };
        tokio::task::spawn_blocking(move || members.others())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                Status::unavailable(format!("cannot read the control plane's members: {e}"))
            })
    }

    /// A peer's watch opened or ended: the other controllers are told.
    fn presence_changed(&self) {
        if let Some(members) = self.inner.members.get() {
            members.changed();
        }
    }

    /// Ends every watch stream, now and of watches that start later: agents see their stream
    /// close (the controller is stopping) rather than a stream that stays open on a server that
    /// no longer listens.
    pub fn stop(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// What it holds now, for its metrics.
    pub fn held(&self) -> crate::metrics::Held {
        let agents = lock_liveness(&self.inner.liveness)
            .peers()
            .filter(|(_, watching, _)| *watching)
            .count();
        let backlog = self.inner.shared.watch_backlog();
        let state = self.inner.shared.lock();
        crate::metrics::Held {
            revision: state.tables.revision,
            watch_backlog: backlog,
            history: state.history_len(),
            agents,
            pools: state
                .index
                .pools
                .values()
                .flatten()
                .map(|pool| {
                    let subnet = pool.subnet.to_string();
                    (
                        pool.network.clone(),
                        subnet,
                        pool.used() as u64,
                        pool.free(),
                    )
                })
                .collect(),
        }
    }

    /// Why this controller cannot serve changes now (it cannot reach etcd); None: it can.
    pub fn unreachable(&self) -> Option<String> {
        self.inner.reach.lost()
    }

    /// Runs `plan` against the tables; persists and publishes the changes it returns (see
    /// [`Committer::mutate`]). Returns the plan's result and the revision after its changes.
    pub async fn mutate<T: Send + 'static>(
        &self,
        plan: impl FnMut(&View) -> Result<(T, Vec<RowChange>), TableError> + Send + 'static,
    ) -> Result<(T, u64), Status> {
        // It would fail once etcd's request timed out, and the caller has given up by then.
        if let Some(why) = self.unreachable() {
            return Err(Status::unavailable(why));
        }
        self.inner
            .committer
            .mutate(plan)
            .await
            .map_err(|e| match e {
                MutateError::Rejected(e) => status_of(e),
                MutateError::Persist(_) | MutateError::Stopped => Status::internal(e.to_string()),
            })
    }

    /// Sends where the watch starts, a snapshot in parts if the watcher joins them (else
    /// whole); false once the watcher is gone. `sent` follows the revision of what was sent.
    async fn send_start(
        start: Start,
        in_parts: bool,
        tx: &mpsc::Sender<Result<WatchEvent, Status>>,
        sent: &mut u64,
    ) -> bool {
        let events: Box<dyn Iterator<Item = WatchEvent> + Send> = match start {
            // One part cloned at a time, as the watcher takes them.
            Start::Snapshot(parts) if in_parts => {
                Box::new((0..parts.len()).map(move |i| parts[i].clone()))
            }
            Start::Snapshot(parts) => Box::new(std::iter::once(snapshot::whole(&parts))),
            Start::Resume(events) => Box::new(events.into_iter()),
        };
        for event in events {
            *sent = event.revision;
            if tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        true
    }

    fn liveness(&self) -> MutexGuard<'_, Liveness> {
        lock_liveness(&self.inner.liveness)
    }

    async fn feed_watcher(
        self,
        peer: String,
        from: u64,
        store_id: String,
        in_parts: bool,
        tx: mpsc::Sender<Result<WatchEvent, Status>>,
    ) {
        self.liveness().connect(&peer, Instant::now());
        self.presence_changed();
        let mut stopping = self.inner.stopping.subscribe();
        tokio::select! {
            _ = self.stream_events(&peer, from, &store_id, in_parts, &tx) => {}
            _ = stopping.wait_for(|stopping| *stopping) => {
                // Why the stream ends, if the watcher has room for it; it ends either way.
                let _ = tx.try_send(Err(Status::unavailable("the controller is stopping")));
            }
            why = self.inner.reach.wait_lost() => {
                let _ = tx.try_send(Err(Status::unavailable(why)));
            }
        }
        self.liveness().disconnect(&peer, Instant::now());
        self.presence_changed();
        info!(%peer, "watch ended");
    }

    async fn stream_events(
        &self,
        peer: &str,
        from: u64,
        store_id: &str,
        in_parts: bool,
        tx: &mpsc::Sender<Result<WatchEvent, Status>>,
    ) {
        let mut sent = from;
        let (start, mut events) = self.inner.shared.watch_from(from, store_id);
        if !Self::send_start(start, in_parts, tx, &mut sent).await {
            return;
        }
        loop {
            let event = tokio::select! {
                _ = tx.closed() => break,
                event = events.recv() => event,
            };
            match event {
                Ok(event) if event.revision <= sent => {}
                Ok(event) => {
                    sent = event.revision;
                    if tx.send(Ok(event)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Too far behind the live stream: catch up from the history (or a snapshot)
                    // as a reconnecting watcher would.
                    warn!(%peer, missed, "watcher fell behind; resuming it");
                    crate::metrics::METRICS.watcher_fell_behind();
                    // What it has is ours by now.
                    let (start, fresh) = self.inner.shared.watch_from(sent, "");
                    events = fresh;
                    if !Self::send_start(start, in_parts, tx, &mut sent).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let peer = request
            .get_ref()
            .peer
            .clone()
            .ok_or_else(|| Status::invalid_argument("register: no peer given"))?;
        limits::peer_name(&peer.name)?;
        act_for(&request, &peer.name)?;
        info!(name = %peer.name, addr = %peer.advertise_addr, "peer registers");
        self.mutate(move |t| Ok(((), t.register_peer(peer.clone())?)))
            .await?;
        Ok(Response::new(RegisterResponse {}))
    }

    type WatchStream = ReceiverStream<Result<WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        limits::peer_name(&request.get_ref().peer)?;
        act_for(&request, &request.get_ref().peer)?;
        let WatchRequest {
            peer,
            from_revision,
            snapshot_in_parts,
            store_id,
        } = request.into_inner();
        if let Some(why) = self.unreachable() {
            return Err(Status::unavailable(why));
        }
        info!(%peer, from_revision, %store_id, snapshot_in_parts, "watch starts");
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        tokio::spawn(self.clone().feed_watcher(
            peer,
            from_revision,
            store_id,
            snapshot_in_parts,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        act_for(&request, &request.get_ref().peer)?;
        let AttachRequest {
            peer,
            container_id,
            addrs,
            dns_name,
            container_ifname,
            take_from,
        } = request.into_inner();
        limits::container_id(&container_id)?;
        if !take_from.is_empty() {
            limits::container_id(&take_from)?;
        }
        limits::count("addrs", addrs.len(), limits::MAX_ADDRS)?;
        if !container_ifname.is_empty() {
            check_ifname(&container_ifname).map_err(Status::invalid_argument)?;
        }
        let specs = parse_addrs(&addrs)?;
        let dns_name = match dns_name.as_str() {
            "" => String::new(),
            name => dns_name::normalize(name).map_err(Status::invalid_argument)?,
        };
        let (done, revision) = self
            .mutate({
                let (peer, container_id) = (peer.clone(), container_id.clone());
                move |t| {
                    crate::failpoint::planning("attach");
                    let options = AttachOptions {
                        dns_name: &dns_name,
                        ifname: &container_ifname,
                        take_from: &take_from,
                    };
                    t.attach(&peer, &container_id, &specs, options, &mut Mac::random)
                }
            })
            .await?;
        info!(container = %container_id, %peer, cidrs = ?done.cidrs, revision, "attached");
        Ok(Response::new(AttachResponse {
            endpoints: done.endpoints.iter().map(EndpointRow::wire).collect(),
            cidrs: done.cidrs,
            added: done.added,
            networks: done.networks.iter().map(NetworkRow::wire).collect(),
            revision,
        }))
    }

    async fn detach(
        &self,
        request: Request<DetachRequest>,
    ) -> Result<Response<DetachResponse>, Status> {
        act_for(&request, &request.get_ref().peer)?;
        let DetachRequest {
            peer,
            container_id,
            addrs,
            only_mac,
        } = request.into_inner();
        limits::container_id(&container_id)?;
        limits::count("addrs", addrs.len(), limits::MAX_ADDRS)?;
        let specs = parse_addrs(&addrs)?;
        let (done, revision) = self
            .mutate({
                let (peer, container_id) = (peer.clone(), container_id.clone());
                move |t| {
                    crate::failpoint::planning("detach");
                    t.detach(&peer, &container_id, &specs, &only_mac)
                }
            })
            .await?;
        info!(container = %container_id, %peer, released = ?done.released, revision, "detached");
        Ok(Response::new(DetachResponse {
            updated: done.updated.iter().map(EndpointRow::wire).collect(),
            removed: done.removed.iter().map(EndpointRow::wire).collect(),
            released: rows::cidr_strings(&done.released),
            revision,
        }))
    }

    async fn create_network(
        &self,
        request: Request<CreateNetworkRequest>,
    ) -> Result<Response<CreateNetworkResponse>, Status> {
        let CreateNetworkRequest {
            name,
            subnets,
            encrypt,
        } = request.into_inner();
        let (network, revision) = self
            .mutate(move |t| t.create_network(&name, &subnets, encrypt))
            .await?;
        info!(name = %network.name, subnets = %network.subnets_text(), vni = network.vni,
            encrypted = network.encrypted, "network created");
        Ok(Response::new(CreateNetworkResponse {
            network: Some(network.wire()),
            revision,
        }))
    }

    async fn delete_network(
        &self,
        request: Request<DeleteNetworkRequest>,
    ) -> Result<Response<DeleteNetworkResponse>, Status> {
        let name = request.into_inner().name;
        let ((), revision) = self
            .mutate({
                let name = name.clone();
                move |t| Ok(((), t.delete_network(&name)?))
            })
            .await?;
        info!(%name, "network removed");
        Ok(Response::new(DeleteNetworkResponse { revision }))
    }

    async fn remove_peer(
        &self,
        request: Request<RemovePeerRequest>,
    ) -> Result<Response<RemovePeerResponse>, Status> {
        let name = request.into_inner().name;
        // Watching another controller of the control plane, as of its last beat.
        let others = self.other_members().await?;
        let (now, lease) = (members::unix_now(), self.liveness().lease());
        let elsewhere =
            members::merged(PeerPresence::never(), &name, &others, now, lease).connected;
        let (released, revision) = self
            .mutate({
                let (name, liveness) = (name.clone(), self.inner.liveness.clone());
                move |t| {
                    // Read when the request's turn comes, not before it queued behind a batch:
                    // the peer's agent may have connected meanwhile.
                    let connected = elsewhere || lock_liveness(&liveness).is_connected(&name);
                    t.remove_peer(&name, connected)
                }
            })
            .await?;
        info!(peer = %name, released = released.len(), "peer removed");
        Ok(Response::new(RemovePeerResponse {
            released: rows::cidr_strings(&released),
            revision,
        }))
    }

    async fn update_dns(
        &self,
        request: Request<UpdateDnsRequest>,
    ) -> Result<Response<UpdateDnsResponse>, Status> {
        act_for(&request, &request.get_ref().peer)?;
        let UpdateDnsRequest {
            peer,
            remove,
            records,
        } = request.into_inner();
        let count = records.len();
        limits::count("records", count, limits::MAX_RECORDS)?;
        let ((), revision) = self
            .mutate({
                let peer = peer.clone();
                move |t| Ok(((), t.update_dns(&peer, remove, &records)?))
            })
            .await?;
        info!(%peer, remove, records = count, revision, "DNS records updated");
        Ok(Response::new(UpdateDnsResponse { revision }))
    }

    async fn list_peers(
        &self,
        _request: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        let tables: Vec<_> = {
            let state = self.inner.shared.lock();
            state
                .tables
                .peers
                .values()
                .map(|p| {
                    // Each endpoint has a host veth of its own: its name is unique on the peer.
                    let endpoints = state.index.host_ifnames.get(&p.name).map_or(0, |n| n.len());
                    (p.wire(), endpoints as u32)
                })
                .collect()
        };
        let others = self.other_members().await?;
        let liveness = self.liveness();
        let (now, unix_now) = (Instant::now(), members::unix_now());
        let peers = tables
            .into_iter()
            .map(|(peer, endpoints)| {
                let here = liveness.presence(&peer.name, now);
                let presence =
                    members::merged(here, &peer.name, &others, unix_now, liveness.lease());
                PeerStatus {
                    peer: Some(peer),
                    connected: presence.connected,
                    reachable: presence.reachable,
                    for_secs: presence.for_.as_secs(),
                    endpoints,
                }
            })
            .collect();
        Ok(Response::new(ListPeersResponse { peers }))
    }

    async fn list_controllers(
        &self,
        _request: Request<ListControllersRequest>,
    ) -> Result<Response<ListControllersResponse>, Status> {
        let Some(members) = self.inner.members.get().cloned() else {
            return Ok(Response::new(ListControllersResponse::default()));
        };
        let liveness = self.inner.liveness.clone();
        let all = tokio::task::spawn_blocking(move || members.all(&liveness))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                Status::unavailable(format!("cannot read the control plane's members: {e}"))
            })?;
        let now = members::unix_now();
        let controllers = all
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let serving = m.serving(now);
                let since = if serving { m.started } else { m.beat };
                ControllerMember {
                    serving,
                    for_secs: now.saturating_sub(since),
                    // `all` puts this controller first.
                    answering: i == 0,
                    address: m.address,
                    name: m.name,
                }
            })
            .collect();
        Ok(Response::new(ListControllersResponse { controllers }))
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;
    use weft_proto::tables::EndpointId;
    use weft_proto::v1::{Peer, Snapshot, watch_event::Event};

    use super::*;

    /// A request as it reaches the service under --insecure.
    fn insecure<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(crate::authority::Insecure);
        request
    }

    /// A controller whose tables hold `endpoints` endpoints on host1.
    async fn controller_with(dir: &std::path::Path, endpoints: usize) -> ControllerService {
        let (store, tables) = Store::open(dir, crate::store::Emptied::Refuse).unwrap();
        let service = ControllerService::new(store, tables, Duration::from_secs(60)).unwrap();
        let changes: Vec<RowChange> = (0..endpoints)
            .map(|i| {
                RowChange::EndpointPut(EndpointRow {
                    id: EndpointId::new("host1", "default", &format!("c{i}")),
                    mac: Mac([2, 0, 0, 0, (i >> 8) as u8, i as u8]),
                    cidrs: Vec::new(),
                    host_ifname: String::new(),
                    container_ifname: String::new(),
                    dns_name: String::new(),
                })
            })
            .collect();
        service
            .mutate(move |_| Ok(((), changes.clone())))
            .await
            .unwrap();
        service
    }

    /// The snapshot a watch from revision 0 starts with, as the messages it came in.
    async fn first_snapshot(service: &ControllerService, in_parts: bool) -> Vec<Snapshot> {
        let mut stream = service
            .watch(insecure(WatchRequest {
                peer: "host1".into(),
                from_revision: 0,
                snapshot_in_parts: in_parts,
                store_id: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        let mut messages = Vec::new();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("the snapshot comes within 10 s")
                .expect("the watch goes on")
                .unwrap();
            let Some(Event::Snapshot(snapshot)) = event.event else {
                panic!("not a snapshot: {event:?}");
            };
            let more = snapshot.more;
            messages.push(snapshot);
            if !more {
                return messages;
            }
        }
    }

    #[tokio::test]
    async fn peers_are_listed_with_their_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let service = controller_with(dir.path(), 0).await;
        let range = "10.32.0.0/12".parse().unwrap();
        service
            .mutate(move |t| Ok(((), t.ensure_default_network(range, None, false)?)))
            .await
            .unwrap();
        service
            .create_network(Request::new(CreateNetworkRequest {
                name: "blue".into(),
                subnets: vec!["10.9.0.0/24".into()],
                encrypt: false,
            }))
            .await
            .unwrap();
        // host1: c0 in two networks (two endpoints), c1 and c2; host2: c0; host3: none.
        let attaches = [
            ("host1", "c0", "net:default"),
            ("host1", "c0", "net:blue"),
            ("host1", "c1", "net:default"),
            ("host1", "c2", "net:blue"),
            ("host2", "c0", "net:default"),
        ];
        for n in 1..=3 {
            let peer = Peer {
                name: format!("host{n}"),
                advertise_addr: format!("198.18.0.{n}"),
                ..Default::default()
            };
            let request = RegisterRequest { peer: Some(peer) };
            service.register(insecure(request)).await.unwrap();
        }
        for (peer, container, addr) in attaches {
            let request = AttachRequest {
                peer: peer.into(),
                container_id: container.into(),
                addrs: vec![addr.into()],
                dns_name: String::new(),
                ..Default::default()
            };
            service.attach(insecure(request)).await.unwrap();
        }
        let detach = DetachRequest {
            peer: "host1".into(),
            container_id: "c1".into(),
            ..Default::default()
        };
        service.detach(insecure(detach)).await.unwrap();
        let listed = service
            .list_peers(Request::new(ListPeersRequest {}))
            .await
            .unwrap()
            .into_inner()
            .peers;
        let counts: Vec<(String, u32)> = listed
            .into_iter()
            .map(|s| (s.peer.unwrap().name, s.endpoints))
            .collect();
        assert_eq!(
            counts,
            [
                ("host1".into(), 3),
                ("host2".into(), 1),
                ("host3".into(), 0)
            ]
        );
    }

    #[tokio::test]
    async fn a_watcher_that_does_not_ask_for_parts_gets_one_whole_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let endpoints = 3 * snapshot::ENDPOINTS_PER_PART;
        let service = controller_with(dir.path(), endpoints).await;
        // What an agent from before parts reads: the first event is all the tables.
        let whole = first_snapshot(&service, false).await;
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].endpoints.len(), endpoints);
        let parts = first_snapshot(&service, true).await;
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts.iter().map(|p| p.endpoints.len()).sum::<usize>(),
            endpoints
        );
    }
}
