//! The agent's shared state: who it is, its controller clients, its datapath, and its copy of
//! the controller's tables, which the watch feeds and the reconciler (`reconcile.rs`) turns into
//! kernel state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use std::future::Future;
use tokio::sync::{Notify, OwnedMutexGuard, watch};

use tonic::transport::{self, Channel};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};
use weft_proto::tables::Tables;
use weft_proto::v1::controller_client::ControllerClient;
use weft_proto::v1::{Peer, WatchEvent, watch_event::Event};

use crate::container::Containers;
use crate::datapath::Datapath;
use crate::dns::handler::DnsState;
use crate::dns::listeners::Listeners;
use crate::docker::DockerApi;
use crate::following::{Following, Position};

/// How long to wait for a TCP connection to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long one unary request to the controller may take: an attach while the controller is
/// unreachable fails within this.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// HTTP/2 pings: a partition or a dead controller is noticed within interval + timeout, not
/// after TCP's retransmissions give up.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest message the agent accepts: room for a whole snapshot of about a million
/// endpoints.
const MAX_SNAPSHOT_BYTES: usize = 256 << 20;
/// How long a local command waits for its own change to come back through the watch.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Agent {
    pub name: String,
    pub advertise_addr: std::net::Ipv4Addr,
    pub controller_url: String,
    /// For unary requests, each made through [`Agent::ask`].
    client: ControllerClient<Channel>,
    /// For the long-lived watch stream, which must not time out.
    pub watch_client: ControllerClient<Channel>,
    pub datapath: Datapath,
    /// Finds the containers weftctl names.
    pub containers: Containers,
    /// DNS inside each local container.
    pub dns: Listeners,
    /// The controller store the tables come from, and the rule against following another.
    pub following: Following,
    /// The controller's tables as last received; `None` until the first snapshot.
    tables: RwLock<Option<Tables>>,
    /// The revision of `tables`, for those waiting for a change of theirs to arrive.
    revision: watch::Sender<u64>,
    /// Wakes the reconciler: the tables changed, or a pass was asked for.
    changed: Notify,
    /// One lock per container with an attach, detach or release under way: they take turns, so
    /// none acts on what another is half-way through changing.
    container_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    link: Mutex<ControllerLink>,
    /// Whether the first reconcile after start has looked into the containers.
    checked_containers: AtomicBool,
    /// Whether DNS has been opened in the containers attached before the agent started.
    dns_caught_up: AtomicBool,
    /// The latest revision the controller gave for a change this agent asked for.
    own_revision: AtomicU64,
    /// Set by a reset: the agent changes nothing more and stops.
    stopping: AtomicBool,
    stopped: Notify,
}

pub use weft_proto::error::describe;

/// The state of the agent's watch on the controller, for `weftctl status`.
#[derive(Debug, Clone)]
pub struct ControllerLink {
    pub connected: bool,
    /// When it connected or, if it is not connected, when it was last connected (or when the
    /// agent started).
    pub since: Instant,
    /// Why the last attempt failed, when not connected.
    pub last_error: String,
    /// How the latest watch started.
    pub start: WatchStart,
}

/// How a watch started: with the whole tables, or from the agent's own revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WatchStart {
    #[default]
    None,
    Snapshot,
    Resume {
        /// The deltas that followed to catch up.
        missed: u64,
    },
}

/// Held while an attach, detach or release of one container is under way.
pub struct ContainerLock<'a> {
    agent: &'a Agent,
    container_id: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    /// `None` while still waiting: a wait that is cancelled cleans up too.
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for ContainerLock<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut containers = self
            .agent
            .container_locks
            .lock()
            .expect("container locks poisoned");
        // Only the map and this lock still know the mutex: nobody else holds or awaits it.
        if Arc::strong_count(&self.mutex) == 2 {
            containers.remove(&self.container_id);
        }
    }
}

/// The controller an agent follows: where, how, and which of its stores.
pub struct ControllerConfig {
    pub url: String,
    /// None: plaintext (--insecure).
    pub tls: Option<transport::ClientTlsConfig>,
    pub following: Following,
}

impl Agent {
    pub fn new(
        name: String,
        advertise_addr: std::net::Ipv4Addr,
        controller: ControllerConfig,
        datapath: Datapath,
        docker_url: &str,
        dns: DnsState,
    ) -> anyhow::Result<Agent> {
        let ControllerConfig {
            url: controller_url,
            tls,
            following,
        } = controller;
        // Keepalives on both channels: a connection that died in a partition is replaced as
        // soon as it is noticed, not reused after the network heals.
        let mut endpoint = transport::Endpoint::from_shared(controller_url.clone())
            .map_err(|e| anyhow!("invalid controller URL {controller_url}: {e}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| anyhow!("invalid TLS settings: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        Ok(Agent {
            name,
            advertise_addr,
            client: ControllerClient::new(endpoint.clone().timeout(REQUEST_TIMEOUT).connect_lazy()),
            // A snapshot comes in parts, but its first holds every peer and network, and a
            // controller of an earlier version sends it whole.
            watch_client: ControllerClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MAX_SNAPSHOT_BYTES),
            controller_url,
            datapath,
            containers: Containers {
                docker: DockerApi::new(docker_url),
            },
            dns: Listeners::new(std::sync::Arc::new(dns)),
            following,
            tables: RwLock::new(None),
            revision: watch::Sender::new(0),
            changed: Notify::new(),
            container_locks: Mutex::new(HashMap::new()),
            link: Mutex::new(ControllerLink {
                connected: false,
                since: Instant::now(),
                last_error: String::new(),
                start: WatchStart::None,
            }),
            checked_containers: AtomicBool::new(false),
            dns_caught_up: AtomicBool::new(false),
            own_revision: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
        })
    }

    pub fn peer(&self) -> Peer {
        Peer {
            name: self.name.clone(),
            advertise_addr: self.advertise_addr.to_string(),
        }
    }

    /// Stops reconciling; `stopped` resolves once `finish_stop` is called.
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn finish_stop(&self) {
        self.stopped.notify_one();
    }

    /// Resolves when a reset has finished and the agent should exit.
    pub async fn stopped(&self) {
        self.stopped.notified().await
    }

    /// Asks the reconciler for a pass, e.g. after a detach emptied a network on this host.
    pub fn request_reconcile(&self) {
        self.changed.notify_one();
    }

    /// Resolves at the next [`Agent::request_reconcile`] or change of the tables (or at once if
    /// one came since the last wait).
    pub(crate) async fn reconcile_requested(&self) {
        self.changed.notified().await
    }

    /// Whether a reset has stopped the agent changing anything.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// True the first time only: the first reconcile after start looks into the containers.
    pub(crate) fn first_container_check(&self) -> bool {
        !self.checked_containers.swap(true, Ordering::SeqCst)
    }

    /// True the first time only: DNS is then opened in the containers attached before the
    /// agent started.
    pub(crate) fn first_dns_catch_up(&self) -> bool {
        !self.dns_caught_up.swap(true, Ordering::SeqCst)
    }

    /// Waits until no attach, detach or release of `container_id` is under way, and keeps others
    /// waiting until the returned lock is dropped.
    pub async fn lock_container(&self, container_id: &str) -> ContainerLock<'_> {
        let mut lock = self.container_lock(container_id);
        lock.guard = Some(lock.mutex.clone().lock_owned().await);
        lock
    }

    /// The container's lock if nothing is under way for it.
    pub(crate) fn try_lock_container(&self, container_id: &str) -> Option<ContainerLock<'_>> {
        let mut lock = self.container_lock(container_id);
        lock.guard = Some(lock.mutex.clone().try_lock_owned().ok()?);
        Some(lock)
    }

    fn container_lock(&self, container_id: &str) -> ContainerLock<'_> {
        let mutex = self
            .container_locks
            .lock()
            .expect("container locks poisoned")
            .entry(container_id.to_string())
            .or_default()
            .clone();
        ContainerLock {
            agent: self,
            container_id: container_id.to_string(),
            mutex,
            guard: None,
        }
    }

    pub(crate) fn own_revision(&self) -> u64 {
        self.own_revision.load(Ordering::SeqCst)
    }

    /// Notes `revision` as the controller's answer to a change this agent asked for.
    pub(crate) fn made(&self, revision: u64) {
        self.own_revision.fetch_max(revision, Ordering::SeqCst);
    }

    /// No attach, detach or release is under way.
    pub(crate) fn is_idle(&self) -> bool {
        self.container_locks
            .lock()
            .expect("container locks poisoned")
            .is_empty()
    }

    pub fn link(&self) -> ControllerLink {
        self.link.lock().expect("link lock poisoned").clone()
    }

    pub(crate) fn link_up(&self) {
        let mut link = self.link.lock().expect("link lock poisoned");
        link.connected = true;
        link.since = Instant::now();
        link.last_error.clear();
    }

    pub(crate) fn link_lost(&self, why: String) {
        let mut link = self.link.lock().expect("link lock poisoned");
        if link.connected {
            link.connected = false;
            link.since = Instant::now();
        }
        link.last_error = why;
    }

    /// One request to the controller, bounded by REQUEST_TIMEOUT whatever the connection does:
    /// a hung controller (SIGSTOP, a full listen backlog) accepts connections and never
    /// answers, and the channel's own timeout does not cover a reconnect. The deadline goes
    /// along (`grpc-timeout`), so the controller drops a request that arrives after the agent
    /// gave up on it.
    pub async fn ask<Req, T, Call, Answer>(&self, message: Req, call: Call) -> Result<T, Status>
    where
        Call: FnOnce(ControllerClient<Channel>, Request<Req>) -> Answer,
        Answer: Future<Output = Result<Response<T>, Status>>,
    {
        // Nothing is changed in, or taken from, a store the agent refuses: its addresses may be
        // held by this host's running containers.
        if let Some(why) = self.following.refused() {
            return Err(Status::failed_precondition(format!(
                "the agent refuses the controller at {}: {why}; weftctl accept-controller \
                 follows it",
                self.controller_url
            )));
        }
        let mut request = Request::new(message);
        request.set_timeout(REQUEST_TIMEOUT);
        match tokio::time::timeout(REQUEST_TIMEOUT, call(self.client.clone(), request)).await {
            Ok(answer) => answer
                .map(Response::into_inner)
                .map_err(|s| self.controller_status(s)),
            Err(_) => Err(Status::unavailable(format!(
                "controller {} is unreachable: no answer within {}s",
                self.controller_url,
                REQUEST_TIMEOUT.as_secs_f64()
            ))),
        }
    }

    /// The revision the tables are at; 0 before the first snapshot.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Resolves once the first snapshot has arrived.
    pub async fn wait_for_tables(&self) {
        let mut seen = self.revision.subscribe();
        let _ = seen.wait_for(|have| *have > 0).await;
    }

    /// Reads the tables; `None` until the first snapshot has arrived.
    pub fn with_tables<T>(&self, read: impl FnOnce(&Tables) -> T) -> Option<T> {
        self.tables
            .read()
            .expect("tables lock poisoned")
            .as_ref()
            .map(read)
    }

    /// Takes the controller's word on its store and revision, or refuses its tables, keeping
    /// the refusal in the state dir at once.
    fn admit(&self, store_id: String, revision: u64) -> anyhow::Result<Position> {
        let offered = Position { store_id, revision };
        if let Err(why) = self.following.admit(&offered) {
            if let Err(e) = self.following.save() {
                warn!("cannot record the refusal in the state dir: {e}");
            }
            bail!("refusing the controller's tables: {why}; the datapath stays as it is");
        }
        Ok(offered)
    }

    /// Takes one event of the watch into the tables and wakes the reconciler.
    pub fn apply(&self, event: WatchEvent) -> anyhow::Result<()> {
        let mut tables = self.tables.write().expect("tables lock poisoned");
        match event.event {
            Some(Event::Snapshot(snapshot)) => {
                let offered = self.admit(event.store_id, event.revision)?;
                info!(revision = event.revision, store = %offered.store_id, "snapshot received");
                self.link.lock().expect("link lock poisoned").start = WatchStart::Snapshot;
                *tables = Some(Tables::from_snapshot(
                    event.revision,
                    offered.store_id,
                    snapshot,
                ));
            }
            Some(Event::Delta(delta)) => {
                let Some(current) = tables.as_mut() else {
                    bail!("controller sent a delta before any snapshot");
                };
                if event.revision != current.revision + 1 {
                    bail!(
                        "controller skipped from revision {} to {}",
                        current.revision,
                        event.revision
                    );
                }
                let Some(change) = delta.change else {
                    bail!(
                        "controller sent an empty delta at revision {}",
                        event.revision
                    );
                };
                debug!(revision = event.revision, ?change, "delta");
                current.apply(&change);
                self.following.advance(current.revision);
            }
            Some(Event::Resumed(resumed)) => {
                let at = tables.as_ref().map(|t| t.revision);
                self.admit(event.store_id, event.revision)?;
                if at != Some(event.revision) {
                    bail!(
                        "controller resumed at revision {} but the tables are at {at:?}",
                        event.revision
                    );
                }
                info!(
                    revision = event.revision,
                    missed = resumed.missed,
                    "resumed"
                );
                self.link.lock().expect("link lock poisoned").start = WatchStart::Resume {
                    missed: resumed.missed,
                };
            }
            None => bail!(
                "controller sent an empty event at revision {}",
                event.revision
            ),
        }
        if let Some(current) = tables.as_ref() {
            self.revision.send_replace(current.revision);
        }
        self.changed.notify_one();
        Ok(())
    }

    /// Waits until the tables hold `revision`, the controller's answer to a change this agent
    /// asked for: what the agent does, shows and resolves next then includes that change, and no
    /// reconcile from older tables undoes it. Gives up (with a warning) after CATCH_UP_TIMEOUT.
    pub async fn caught_up(&self, revision: u64) {
        self.made(revision);
        let mut seen = self.revision.subscribe();
        let wait = seen.wait_for(|have| *have >= revision);
        if tokio::time::timeout(CATCH_UP_TIMEOUT, wait).await.is_err() {
            warn!(
                revision,
                "the controller's change has not arrived through the watch yet"
            );
        }
        // The reconcile the change woke serves its names too, but later: a name just added
        // must resolve as soon as the command that added it returns.
        self.serve_names();
    }
}
