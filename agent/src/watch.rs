//! Following the controller: register, watch (a snapshot, then deltas), and on any failure
//! reconnect with jittered exponential backoff. The datapath is left alone meanwhile.

use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};
use weft_proto::v1::{RegisterRequest, WatchRequest};

use crate::agent::Agent;

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub async fn follow_controller(agent: &Agent) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut healthy = false;
        match session(agent, &mut healthy).await {
            Ok(()) => info!(controller = %agent.controller_url, "watch stream closed"),
            Err(e) => warn!(controller = %agent.controller_url, "{e:#}"),
        }
        if healthy {
            backoff = MIN_BACKOFF;
        }
        // Jitter spreads the reconnects of many agents after a controller restart.
        tokio::time::sleep(backoff.mul_f64(rand::random_range(0.5..1.5))).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: returns when the stream ends or fails; `healthy` once an event arrived.
async fn session(agent: &Agent, healthy: &mut bool) -> anyhow::Result<()> {
    let mut client = agent.watch_client.clone();
    client
        .register(RegisterRequest {
            peer: Some(agent.peer()),
        })
        .await
        .context("register failed")?;
    let mut stream = client
        .watch(WatchRequest {
            peer: agent.name.clone(),
        })
        .await
        .context("watch failed")?
        .into_inner();
    info!(controller = %agent.controller_url, "registered; watching");
    while let Some(event) = stream.message().await.context("watch stream broke")? {
        agent.apply(event)?;
        *healthy = true;
    }
    Ok(())
}
