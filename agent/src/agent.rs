//! The agent's shared state: who it is, its controller clients, its datapath, and its copy of
//! the controller's tables, which the watch feeds and the reconciler turns into kernel state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures::StreamExt;
use tokio::sync::Notify;
use tonic::transport::{self, Channel};
use tracing::{debug, info, warn};
use weft_proto::names::{EXPOSE_ID, HOST_IFNAME_PREFIX, vni_of_device};
use weft_proto::tables::Tables;
use weft_proto::v1::controller_client::ControllerClient;
use weft_proto::v1::{DetachRequest, Endpoint, Peer, WatchEvent, watch_event::Event};

use crate::datapath::Datapath;
use crate::desired::host_networks;
use crate::netlink::{self, LinkEvent};

/// How long to wait for a TCP connection to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one unary request to the controller may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A full reconcile runs this often even when nothing changed, to repair what was missed.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

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
    changed: Notify,
    /// Containers with an attach or detach under way, and how many.
    busy: Mutex<HashMap<String, usize>>,
    /// Set by a reset: the agent changes nothing more and stops.
    stopping: AtomicBool,
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
            watch_client: ControllerClient::new(endpoint.connect_lazy()),
            controller_url,
            datapath,
            tables: RwLock::new(None),
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

    fn is_busy(&self, container_id: &str) -> bool {
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
        self.changed.notify_one();
        Ok(())
    }

    /// Brings the kernel in line with the tables whenever they change, and every RESYNC_EVERY.
    pub async fn reconcile_loop(&self) {
        loop {
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(RESYNC_EVERY) => {}
            }
            if let Err(e) = self.reconcile().await {
                warn!("reconcile failed, retrying: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.changed.notify_one();
            }
        }
    }

    async fn reconcile(&self) -> anyhow::Result<()> {
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some((networks, local)) = self.with_tables(|t| {
            let local: Vec<Endpoint> = t
                .endpoints
                .values()
                .filter(|ep| ep.peer == self.name && ep.container_id != EXPOSE_ID)
                .cloned()
                .collect();
            (host_networks(t, &self.name), local)
        }) else {
            return Ok(());
        };
        let started = Instant::now();
        let report = self.datapath.reconcile(&networks).await?;
        if report.changed() {
            info!(
                fdb_added = report.fdb_added,
                fdb_removed = report.fdb_removed,
                neigh_added = report.neigh_added,
                neigh_removed = report.neigh_removed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "datapath reconciled"
            );
        }
        self.release_unplugged(&local).await
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
    /// or an attach never finished (the controller or the agent died half-way). An attach or
    /// detach under way is left alone; checking that before the veth closes the race with it.
    async fn release_unplugged(&self, local: &[Endpoint]) -> anyhow::Result<()> {
        for ep in local {
            if self.is_busy(&ep.container_id) || self.datapath.link_exists(&ep.host_ifname).await? {
                continue;
            }
            warn!(container = %ep.container_id, network = %ep.network, veth = %ep.host_ifname,
                "endpoint has no veth on this host; releasing its addresses");
            let request = DetachRequest {
                peer: self.name.clone(),
                container_id: ep.container_id.clone(),
                addrs: vec![format!("net:{}", ep.network)],
            };
            if let Err(status) = self.client.clone().detach(request).await {
                warn!(container = %ep.container_id, "release failed: {}", status.message());
            }
        }
        Ok(())
    }
}
