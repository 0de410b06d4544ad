//! Docker and Podman containers that stop or are removed give their addresses back: the agent
//! follows the Docker API's events, and on every (re)connection releases the endpoints of
//! containers that stopped while it was not listening. Containers that start on a network of
//! weft's Docker driver give their endpoints their name (for every host's DNS) and get weft's
//! DNS inside (at [`DOCKER_FORWARD_ADDR`]): the driver's calls never say which container an
//! endpoint is for.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::path::PathBuf;

use futures::StreamExt;
use tracing::{debug, info, warn};
use weft_proto::dns_name;
use weft_proto::names::{
    docker_endpoint_key, is_docker_id, is_docker_plugin_key, short_container_id,
};

use crate::agent::Agent;
use crate::container::{Container, Containers};
use crate::dns::DOCKER_FORWARD_ADDR;
use crate::dns::listeners::Listeners;
use crate::docker::{ContainerEvent, DockerError};
use crate::endpoints::Endpoints;
use crate::tables::TablesCopy;

/// How long to wait before trying the Docker API again, at most.
const RETRY_MAX: Duration = Duration::from_secs(10);
const RETRY_FIRST: Duration = Duration::from_millis(500);

pub struct DockerFollower {
    containers: Arc<Containers>,
    tables: Arc<TablesCopy>,
    endpoints: Arc<Endpoints>,
    dns: Arc<Listeners>,
}

impl DockerFollower {
    pub fn new(agent: &Agent) -> DockerFollower {
        DockerFollower {
            containers: agent.containers().clone(),
            tables: agent.tables().clone(),
            endpoints: agent.endpoints().clone(),
            dns: agent.dns().clone(),
        }
    }

    /// Follows the Docker API for as long as the agent runs; without one (a host that uses
    /// namespaces only) it keeps trying, quietly.
    pub async fn run(self) {
        let mut retry = RETRY_FIRST;
        let mut reported = false;
        loop {
            match self.follow_once().await {
                Err(e) if !reported => {
                    info!("{e}; containers are followed once it answers");
                    reported = true;
                }
                Err(e) => debug!("{e}"),
                Ok(()) => {
                    debug!("Docker events ended; reconnecting");
                    retry = RETRY_FIRST;
                }
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    async fn follow_once(&self) -> Result<(), DockerError> {
        let docker = &self.containers.docker;
        // Events from a second before the catch-up on: a container that stops during it is
        // still heard of.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().saturating_sub(1));
        let mut events = std::pin::pin!(docker.events(since).await?);
        self.tables.wait_for_tables().await;
        let running = docker.running().await?;
        info!(url = docker.url(), "following Docker containers");
        let gone = self.tables.fresh_local_endpoints(|ep| {
            is_docker_id(&ep.id.container) && !running.contains(&ep.id.container)
        });
        self.endpoints.release_stopped(&gone).await;
        for id in &running {
            self.name_driver_endpoints(id).await;
        }
        while let Some(event) = events.next().await {
            match event? {
                ContainerEvent::Stopped(id) => {
                    let endpoints = self
                        .tables
                        .fresh_local_endpoints(|ep| ep.id.container == id);
                    self.endpoints.release_stopped(&endpoints).await;
                }
                ContainerEvent::Started(id) => self.name_driver_endpoints(&id).await,
            }
        }
        Ok(())
    }

    /// Names the endpoints weft's Docker driver made for the running container `id` after it,
    /// and serves DNS inside it; nothing to do for a container on none of its networks.
    async fn name_driver_endpoints(&self, id: &str) {
        let me = self.tables.me();
        let any = self.tables.read(|t| {
            t.endpoints_on(me)
                .any(|ep| is_docker_plugin_key(&ep.id.container))
        });
        if any != Some(true) {
            return;
        }
        let (container, endpoint_ids) = match self.containers.docker.inspect(id, id).await {
            Ok(found) => found,
            Err(e) => return debug!(container = %short_container_id(id), "{e}"),
        };
        let Some(pid) = container.pid else {
            return;
        };
        let name = dns_name::normalize(&container.name)
            .inspect_err(|why| warn!(container = %container.name, "no DNS name: {why}"))
            .ok();
        // One listener per container, whichever of its endpoints keys it.
        let mut keys: Vec<String> = endpoint_ids
            .iter()
            .map(|e| docker_endpoint_key(e))
            .collect();
        keys.sort();
        let mut dns_served = keys.iter().any(|key| self.dns.serves(key));
        for key in keys {
            if !matches!(self.endpoints.local_endpoint(&key), Ok(Some(_))) {
                continue;
            }
            let found = self
                .endpoints
                .found_container(&key, &container.id, name.as_deref());
            if let Err(e) = found.await {
                warn!(container = %container.name, "naming its endpoint failed: {e}");
            }
            if !dns_served {
                let inside = Container {
                    id: key.clone(),
                    netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
                    hostname: container.name.clone(),
                    root: None,
                };
                dns_served = true;
                if let Err(e) = self.dns.ensure_at(&inside, DOCKER_FORWARD_ADDR).await {
                    warn!(container = %container.name, "no DNS inside: {e:#}");
                }
            }
        }
    }
}
