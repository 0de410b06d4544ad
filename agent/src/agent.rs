//! The agent's shared state: who it is, its controller clients, its datapath, and its copy of
//! the controller's tables, which the watch feeds and the reconciler (`reconcile.rs`) turns into
//! kernel state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio::sync::{Notify, watch};
use tonic::transport::{self, Channel};
use tracing::{debug, info, warn};
use weft_proto::tables::Tables;
use weft_proto::v1::controller_client::ControllerClient;
use weft_proto::v1::{Peer, WatchEvent, watch_event::Event};

use crate::datapath::Datapath;

/// How long to wait for a TCP connection to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one unary request to the controller may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest snapshot the agent accepts: room for about a million endpoints.
const MAX_SNAPSHOT_BYTES: usize = 256 << 20;
/// How long a local command waits for its own change to come back through the watch.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Agent {
    pub name: String,
    pub advertise_addr: std::net::Ipv4Addr,
    pub controller_url: String,
    /// For unary requests, each bounded by REQUEST_TIMEOUT.
    pub client: ControllerClient<Channel>,
    /// For the long-lived watch stream, which must not time out.
    pub watch_client: ControllerClient<Channel>,
    pub datapath: Datapath,
    /// The controller's tables as last received; `None` until the first snapshot.
    tables: RwLock<Option<Tables>>,
    /// The revision of `tables`, for those waiting for a change of theirs to arrive.
    revision: watch::Sender<u64>,
    pub(crate) changed: Notify,
    /// Containers with an attach or detach under way, and how many.
    pub(crate) busy: Mutex<HashMap<String, usize>>,
    /// Set by a reset: the agent changes nothing more and stops.
    pub(crate) stopping: AtomicBool,
    stopped: Notify,
}

/// Marks a container busy while it lives: the reconciler leaves its endpoints alone.
pub struct Busy<'a> {
    agent: &'a Agent,
    container_id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut busy = self.agent.busy.lock().expect("busy lock poisoned");
        if let Some(n) = busy.get_mut(&self.container_id) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.container_id);
            }
        }
    }
}

impl Agent {
    pub fn new(
        name: String,
        advertise_addr: std::net::Ipv4Addr,
        controller_url: String,
        datapath: Datapath,
    ) -> anyhow::Result<Agent> {
        let endpoint = transport::Endpoint::from_shared(controller_url.clone())
            .map_err(|e| anyhow!("invalid controller URL {controller_url}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT);
        Ok(Agent {
            name,
            advertise_addr,
            client: ControllerClient::new(endpoint.clone().timeout(REQUEST_TIMEOUT).connect_lazy()),
            // A snapshot is one message: 10,000 endpoints are about 1 MB, far past tonic's 4 MB
            // default at the scale weft is for.
            watch_client: ControllerClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MAX_SNAPSHOT_BYTES),
            controller_url,
            datapath,
            tables: RwLock::new(None),
            revision: watch::Sender::new(0),
            changed: Notify::new(),
            busy: Mutex::new(HashMap::new()),
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

    /// Marks a container busy until the returned guard is dropped.
    pub fn busy(&self, container_id: &str) -> Busy<'_> {
        *self
            .busy
            .lock()
            .expect("busy lock poisoned")
            .entry(container_id.to_string())
            .or_default() += 1;
        Busy {
            agent: self,
            container_id: container_id.to_string(),
        }
    }

    pub(crate) fn is_busy(&self, container_id: &str) -> bool {
        self.busy
            .lock()
            .expect("busy lock poisoned")
            .contains_key(container_id)
    }

    /// Reads the tables; `None` until the first snapshot has arrived.
    pub fn with_tables<T>(&self, read: impl FnOnce(&Tables) -> T) -> Option<T> {
        self.tables
            .read()
            .expect("tables lock poisoned")
            .as_ref()
            .map(read)
    }

    /// Takes one event of the watch into the tables and wakes the reconciler.
    pub fn apply(&self, event: WatchEvent) -> anyhow::Result<()> {
        let mut tables = self.tables.write().expect("tables lock poisoned");
        match event.event {
            Some(Event::Snapshot(snapshot)) => {
                info!(revision = event.revision, "snapshot received");
                *tables = Some(Tables::from_snapshot(event.revision, snapshot));
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
    /// asked for: what the agent does and shows next then includes that change, and no
    /// reconcile from older tables undoes it. Gives up (with a warning) after CATCH_UP_TIMEOUT.
    pub async fn caught_up(&self, revision: u64) {
        let mut seen = self.revision.subscribe();
        let wait = seen.wait_for(|have| *have >= revision);
        if tokio::time::timeout(CATCH_UP_TIMEOUT, wait).await.is_err() {
            warn!(
                revision,
                "the controller's change has not arrived through the watch yet"
            );
        }
    }
}
