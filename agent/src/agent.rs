//! The agent, put together from its parts, each owning its state: the link to the controller
//! ([`ControllerLink`]), the copy of its tables ([`TablesCopy`]), the datapath, the containers,
//! DNS, the endpoint core every front end changes endpoints through ([`Endpoints`]), the data
//! paths the probes see ([`Connections`]), the nftables table ([`Firewall`]), and its lifecycle. The loops (`watch.rs`, `reconcile.rs`, `docker_watch.rs`) each take the parts they
//! use.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use tokio::sync::Notify;
use tonic::transport;
use weft_proto::rows::PeerRow;
use weft_proto::v1::Peer;

use crate::cni_namespaces::CniNamespaces;
use crate::container::Containers;
use crate::controller_link::ControllerLink;
use crate::datapath::Datapath;
use crate::dns::handler::DnsState;
use crate::dns::listeners::Listeners;
use crate::docker::DockerApi;
use crate::endpoints::Endpoints;
use crate::endpoints::seam::KernelHost;
use crate::firewall::Firewall;
use crate::following::Following;
use crate::probe::Connections;
use crate::reconcile::ReconcileLog;
use crate::tables::TablesCopy;

pub struct Agent {
    advertise_addr: IpAddr,
    link: Arc<ControllerLink>,
    tables: Arc<TablesCopy>,
    datapath: Arc<Datapath>,
    containers: Arc<Containers>,
    dns: Arc<Listeners>,
    endpoints: Arc<Endpoints>,
    lifecycle: Arc<Lifecycle>,
    connections: Arc<Connections>,
    last_reconcile: Arc<ReconcileLog>,
    firewall: Arc<Firewall>,
}

/// The controller an agent follows: where, how, and which of its stores.
pub struct ControllerConfig {
    /// Controllers of one control plane, tried in turn.
    pub urls: Vec<String>,
    /// None: plaintext (--insecure).
    pub tls: Option<transport::ClientTlsConfig>,
    pub following: Following,
}

/// Whether a reset has stopped the agent changing anything, and its end.
#[derive(Default)]
pub struct Lifecycle {
    stopping: AtomicBool,
    stopped: Notify,
}

impl Lifecycle {
    /// Stops reconciling; `stopped` resolves once `finish_stop` is called.
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn finish_stop(&self) {
        self.stopped.notify_one();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolves when a reset has finished and the agent should exit.
    pub async fn stopped(&self) {
        self.stopped.notified().await
    }
}

impl Agent {
    pub fn new(
        name: String,
        advertise_addr: IpAddr,
        controller: ControllerConfig,
        datapath: Datapath,
        docker_url: &str,
        dns: DnsState,
        state_dir: &Path,
    ) -> anyhow::Result<Agent> {
        let following = Arc::new(controller.following);
        let link = Arc::new(ControllerLink::new(
            controller.urls,
            controller.tls,
            following.clone(),
        )?);
        let tables = Arc::new(TablesCopy::new(name, following));
        let datapath = Arc::new(datapath);
        let containers = Arc::new(Containers {
            docker: DockerApi::new(docker_url),
            cni: CniNamespaces::load(state_dir),
        });
        let dns = Arc::new(Listeners::new(Arc::new(dns)));
        let host = KernelHost {
            datapath: datapath.clone(),
            containers: containers.clone(),
        };
        let endpoints = Arc::new(Endpoints::new(
            host,
            link.clone(),
            tables.clone(),
            dns.clone(),
        ));
        Ok(Agent {
            advertise_addr,
            link,
            tables,
            datapath,
            containers,
            dns,
            endpoints,
            lifecycle: Arc::default(),
            connections: Arc::default(),
            last_reconcile: Arc::default(),
            firewall: Arc::new(Firewall::load(state_dir)),
        })
    }

    pub fn name(&self) -> &str {
        self.tables.me()
    }

    pub fn advertise_addr(&self) -> IpAddr {
        self.advertise_addr
    }

    /// This host's peer record: its name, VTEP and WireGuard.
    pub fn peer(&self) -> Peer {
        PeerRow {
            name: self.name().to_string(),
            addr: self.advertise_addr,
            wireguard: Some(self.datapath.wireguard().peer()),
        }
        .wire()
    }

    pub fn link(&self) -> &Arc<ControllerLink> {
        &self.link
    }

    pub fn tables(&self) -> &Arc<TablesCopy> {
        &self.tables
    }

    pub fn datapath(&self) -> &Arc<Datapath> {
        &self.datapath
    }

    pub fn containers(&self) -> &Arc<Containers> {
        &self.containers
    }

    pub fn dns(&self) -> &Arc<Listeners> {
        &self.dns
    }

    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.endpoints
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The data paths to remote peers, as the probes see them.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// The peers this host's encrypted networks reach inside WireGuard, by name, with their
    /// latest handshake (none before the first): the peers whose key this host's WireGuard has.
    pub async fn encrypted_links(&self) -> BTreeMap<String, Option<SystemTime>> {
        let handshakes = self.datapath.wireguard_handshakes().await;
        self.tables
            .read(|t| {
                t.peers
                    .values()
                    .filter_map(|p| Some((p.name.clone(), *handshakes.get(&p.wireguard?.key)?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The nftables table `weft`.
    pub fn firewall(&self) -> &Arc<Firewall> {
        &self.firewall
    }

    /// The latest reconcile pass.
    pub fn last_reconcile(&self) -> &Arc<ReconcileLog> {
        &self.last_reconcile
    }
}
