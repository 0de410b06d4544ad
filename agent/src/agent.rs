//! The agent's shared state: who it is, its controller clients, its datapath, and its copy of
//! the controller's tables, which the watch feeds and the reconciler turns into kernel state.

use std::sync::RwLock;
use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};
use weft_proto::tables::{DEFAULT_NETWORK, Tables};
use weft_proto::v1::controller_client::ControllerClient;
use weft_proto::v1::{Peer, WatchEvent, watch_event::Event};

use crate::datapath::Datapath;
use crate::desired::vxlan_fdb;

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
}

impl Agent {
    pub fn new(
        name: String,
        advertise_addr: std::net::Ipv4Addr,
        controller_url: String,
        datapath: Datapath,
    ) -> anyhow::Result<Agent> {
        let endpoint = Endpoint::from_shared(controller_url.clone())
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
        })
    }

    pub fn peer(&self) -> Peer {
        Peer {
            name: self.name.clone(),
            advertise_addr: self.advertise_addr.to_string(),
        }
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
            let Some(desired) = self.with_tables(|t| vxlan_fdb(t, &self.name, DEFAULT_NETWORK))
            else {
                continue;
            };
            match self.datapath.reconcile_fdb(&desired).await {
                Ok(changes) if changes.added + changes.removed > 0 => {
                    info!(
                        added = changes.added,
                        removed = changes.removed,
                        "FDB reconciled"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    warn!("reconcile failed, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.changed.notify_one();
                }
            }
        }
    }
}
