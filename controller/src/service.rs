//! The Controller gRPC service: checks each request against the tables, persists the changes,
//! applies them, and fans them out to every watching agent as revisioned deltas.

use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};
use weft_proto::v1::controller_server::Controller;
use weft_proto::v1::{
    CreateEndpointRequest, CreateEndpointResponse, DeleteEndpointsRequest, DeleteEndpointsResponse,
    Delta, RegisterRequest, RegisterResponse, WatchEvent, WatchRequest, delta::Change,
    watch_event::Event,
};

use crate::rules::{TableError, TableRules};
use crate::store::Store;
use weft_proto::tables::Tables;

/// Deltas kept for watchers that fall behind; one that falls further gets a new snapshot.
const EVENT_BUFFER: usize = 4096;
/// Events queued per watcher before its stream applies back-pressure.
const WATCHER_QUEUE: usize = 64;

struct State {
    tables: Tables,
    store: Store,
}

struct Inner {
    state: Mutex<State>,
    events: broadcast::Sender<WatchEvent>,
}

#[derive(Clone)]
pub struct ControllerService {
    inner: Arc<Inner>,
}

fn status_of(err: TableError) -> Status {
    let msg = err.to_string();
    match err {
        TableError::Invalid(_) => Status::invalid_argument(msg),
        TableError::UnknownPeer(_) => Status::failed_precondition(msg),
        TableError::UnknownNetwork(_) | TableError::NotAttached { .. } => Status::not_found(msg),
        TableError::AddressInUse { .. }
        | TableError::MacInUse { .. }
        | TableError::AlreadyAttached { .. } => Status::already_exists(msg),
    }
}

impl ControllerService {
    pub fn new(store: Store, tables: Tables) -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        ControllerService {
            inner: Arc::new(Inner {
                state: Mutex::new(State { tables, store }),
                events,
            }),
        }
    }

    /// Runs `plan` against the tables; persists and publishes the changes it returns.
    /// Blocking (the store fsyncs): call it from `spawn_blocking`.
    pub fn mutate<T>(
        &self,
        plan: impl FnOnce(&Tables) -> Result<(T, Vec<Change>), TableError>,
    ) -> Result<T, Status> {
        let mut state = self
            .inner
            .state
            .lock()
            .expect("controller state lock poisoned");
        let (out, changes) = plan(&state.tables).map_err(status_of)?;
        if changes.is_empty() {
            return Ok(out);
        }
        let revision = state.tables.revision + changes.len() as u64;
        state.store.commit(&changes, revision).map_err(|e| {
            warn!("persisting failed: {e}");
            Status::internal(e.to_string())
        })?;
        for change in changes {
            state.tables.apply(&change);
            // No receivers is fine: nobody is watching yet.
            let _ = self.inner.events.send(WatchEvent {
                revision: state.tables.revision,
                event: Some(Event::Delta(Delta {
                    change: Some(change),
                })),
            });
        }
        Ok(out)
    }

    async fn mutate_async<T: Send + 'static>(
        &self,
        plan: impl FnOnce(&Tables) -> Result<(T, Vec<Change>), TableError> + Send + 'static,
    ) -> Result<T, Status> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.mutate(plan))
            .await
            .map_err(|e| Status::internal(format!("controller task failed: {e}")))?
    }

    /// The current snapshot and a subscription that starts right after it.
    fn subscribe(&self) -> (WatchEvent, broadcast::Receiver<WatchEvent>) {
        let state = self
            .inner
            .state
            .lock()
            .expect("controller state lock poisoned");
        let snapshot = WatchEvent {
            revision: state.tables.revision,
            event: Some(Event::Snapshot(state.tables.snapshot())),
        };
        (snapshot, self.inner.events.subscribe())
    }

    async fn feed_watcher(self, peer: String, tx: mpsc::Sender<Result<WatchEvent, Status>>) {
        let (snapshot, mut events) = self.subscribe();
        let mut sent = snapshot.revision;
        if tx.send(Ok(snapshot)).await.is_err() {
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
                    // Too far behind to catch up with deltas: start it over from a snapshot.
                    warn!(%peer, missed, "watcher fell behind; sending a new snapshot");
                    let (snapshot, fresh) = self.subscribe();
                    events = fresh;
                    sent = snapshot.revision;
                    if tx.send(Ok(snapshot)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        info!(%peer, "watch ended");
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let peer = request
            .into_inner()
            .peer
            .ok_or_else(|| Status::invalid_argument("register: no peer given"))?;
        info!(name = %peer.name, addr = %peer.advertise_addr, "peer registers");
        self.mutate_async(move |t| Ok(((), t.register_peer(peer)?)))
            .await?;
        Ok(Response::new(RegisterResponse {}))
    }

    type WatchStream = ReceiverStream<Result<WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request.into_inner().peer;
        info!(%peer, "watch starts");
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        tokio::spawn(self.clone().feed_watcher(peer, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn create_endpoint(
        &self,
        request: Request<CreateEndpointRequest>,
    ) -> Result<Response<CreateEndpointResponse>, Status> {
        let ep = request
            .into_inner()
            .endpoint
            .ok_or_else(|| Status::invalid_argument("create endpoint: no endpoint given"))?;
        let created = self
            .mutate_async(move |t| Ok((ep.clone(), t.create_endpoint(ep)?)))
            .await?;
        info!(container = %created.container_id, peer = %created.peer, cidrs = ?created.cidrs, "endpoint created");
        Ok(Response::new(CreateEndpointResponse {
            endpoint: Some(created),
        }))
    }

    async fn delete_endpoints(
        &self,
        request: Request<DeleteEndpointsRequest>,
    ) -> Result<Response<DeleteEndpointsResponse>, Status> {
        let DeleteEndpointsRequest { peer, container_id } = request.into_inner();
        let removed = self
            .mutate_async(move |t| t.delete_endpoints(&peer, &container_id))
            .await?;
        for ep in &removed {
            info!(container = %ep.container_id, peer = %ep.peer, "endpoint deleted");
        }
        Ok(Response::new(DeleteEndpointsResponse { removed }))
    }
}
