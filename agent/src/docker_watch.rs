//! Docker and Podman containers that stop or are removed give their addresses back: the agent
//! follows the Docker API's events, and on every (re)connection releases the endpoints of
//! containers that stopped while it was not listening.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tracing::{debug, info};
use weft_proto::names::is_docker_id;

use crate::agent::Agent;
use crate::container::Containers;
use crate::docker::DockerError;
use crate::endpoints::Endpoints;
use crate::tables::TablesCopy;

/// How long to wait before trying the Docker API again, at most.
const RETRY_MAX: Duration = Duration::from_secs(10);
const RETRY_FIRST: Duration = Duration::from_millis(500);

pub struct DockerFollower {
    containers: Arc<Containers>,
    tables: Arc<TablesCopy>,
    endpoints: Arc<Endpoints>,
}

impl DockerFollower {
    pub fn new(agent: &Agent) -> DockerFollower {
        DockerFollower {
            containers: agent.containers().clone(),
            tables: agent.tables().clone(),
            endpoints: agent.endpoints().clone(),
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
        let mut stops = std::pin::pin!(docker.stops(since).await?);
        self.tables.wait_for_tables().await;
        let running = docker.running().await?;
        info!(url = docker.url(), "following Docker containers");
        let gone = self.tables.fresh_local_endpoints(|ep| {
            is_docker_id(&ep.id.container) && !running.contains(&ep.id.container)
        });
        self.endpoints.release_stopped(&gone).await;
        while let Some(id) = stops.next().await {
            let id = id?;
            let endpoints = self
                .tables
                .fresh_local_endpoints(|ep| ep.id.container == id);
            self.endpoints.release_stopped(&endpoints).await;
        }
        Ok(())
    }
}
