//! Docker and Podman containers that stop or are removed give their addresses back: the agent
//! follows the Docker API's events, and on every (re)connection releases the endpoints of
//! containers that stopped while it was not listening.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tracing::{debug, info, warn};
use weft_proto::names::is_docker_id;
use weft_proto::v1::Endpoint;

use crate::agent::Agent;
use crate::docker::DockerError;

/// How long to wait before trying the Docker API again, at most.
const RETRY_MAX: Duration = Duration::from_secs(10);
const RETRY_FIRST: Duration = Duration::from_millis(500);

impl Agent {
    /// Follows the Docker API for as long as the agent runs; without one (a host that uses
    /// namespaces only) it keeps trying, quietly.
    pub async fn follow_docker(&self) {
        let mut retry = RETRY_FIRST;
        let mut reported = false;
        loop {
            match self.follow_docker_once().await {
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

    async fn follow_docker_once(&self) -> Result<(), DockerError> {
        let docker = &self.containers.docker;
        // Events from a second before the catch-up on: a container that stops during it is
        // still heard of.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().saturating_sub(1));
        let mut stops = std::pin::pin!(docker.stops(since).await?);
        self.wait_for_tables().await;
        let running = docker.running().await?;
        info!(url = docker.url(), "following Docker containers");
        let gone = self.fresh_local_endpoints(|ep| {
            is_docker_id(&ep.container_id) && !running.contains(&ep.container_id)
        });
        self.release_container_endpoints(&gone).await;
        while let Some(id) = stops.next().await {
            let id = id?;
            let endpoints = self.fresh_local_endpoints(|ep| ep.container_id == id);
            self.release_container_endpoints(&endpoints).await;
        }
        Ok(())
    }

    /// Unplugs and releases endpoints of containers that are not running, but none with an
    /// attach or detach under way (a container that is started again and attached keeps its
    /// new endpoint).
    async fn release_container_endpoints(&self, endpoints: &[Endpoint]) {
        for seen in endpoints {
            let Some(_lock) = self.try_lock_container(&seen.container_id) else {
                continue;
            };
            // As the tables hold it now: an attach or detach may have finished meanwhile.
            let Some(ep) = self.current(seen) else {
                continue;
            };
            info!(container = %ep.container_id, network = %ep.network,
                "container is not running; releasing its addresses");
            if let Err(e) = self.datapath.unplug(&ep.host_ifname).await {
                warn!(container = %ep.container_id, veth = %ep.host_ifname, "unplug failed: {e:#}");
            }
            self.release(&ep).await;
        }
    }
}
