//! Following the controller: register, watch (a snapshot, or a resume from the revision the
//! tables are at, then deltas), and on any failure reconnect, to the next controller if several
//! were given, with jittered exponential backoff.
//! The datapath is left alone meanwhile.

use std::time::Duration;

use anyhow::anyhow;
use tracing::{info, warn};
use weft_proto::error::describe;
use weft_proto::snapshot::Joiner;
use weft_proto::v1::{RegisterRequest, WatchRequest};

use crate::agent::Agent;

const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Kept short: a host cut off from the controller must be back in sync within moments of the
/// network healing, and a failed attempt costs one TCP connect.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long registering and opening the watch may take: a hung controller accepts the
/// connection and never answers, and `weftctl status` must say so.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn follow_controller(agent: &Agent) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut healthy = false;
        let why = match session(agent, &mut healthy).await {
            Ok(()) => "the watch stream closed".to_string(),
            Err(e) => format!("{e:#}"),
        };
        warn!(controller = %agent.link().url(), "{why}");
        agent.link().lost(why);
        if healthy {
            backoff = MIN_BACKOFF;
        }
        // The controllers given serve the same tables: the next may be up while this is not.
        if let Some(next) = agent.link().fail_over() {
            info!(controller = %next, "trying the next controller");
        }
        // Jitter spreads the reconnects of many agents after a controller restart.
        tokio::time::sleep(backoff.mul_f64(rand::random_range(0.5..1.5))).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: returns when the stream ends or fails; `healthy` once an event arrived.
async fn session(agent: &Agent, healthy: &mut bool) -> anyhow::Result<()> {
    let mut client = agent.link().watch_client();
    let register = client.register(RegisterRequest {
        peer: Some(agent.peer()),
    });
    tokio::time::timeout(OPEN_TIMEOUT, register)
        .await
        .map_err(|_| anyhow!("register failed: no answer within {OPEN_TIMEOUT:?}"))?
        .map_err(|s| {
            // Under TLS 1.3 a controller that refuses the client certificate does so after the
            // client's side of the handshake: the call only looks cancelled.
            let hint = if s.code() == tonic::Code::Cancelled
                && agent.link().url().starts_with("https://")
            {
                " (did the controller refuse this agent's certificate? its log says why)"
            } else {
                ""
            };
            anyhow!("register failed: {}{hint}", describe(&s))
        })?;
    let watch = client.watch(WatchRequest {
        peer: agent.name().to_string(),
        from_revision: agent.tables().revision(),
        snapshot_in_parts: true,
        store_id: agent.tables().following().store_id(),
    });
    let mut stream = tokio::time::timeout(OPEN_TIMEOUT, watch)
        .await
        .map_err(|_| anyhow!("watch failed: no answer within {OPEN_TIMEOUT:?}"))?
        .map_err(|s| anyhow!("watch failed: {}", describe(&s)))?
        .into_inner();
    info!(controller = %agent.link().url(), "registered; watching");
    // The tables change only once a snapshot's last part is in.
    let mut joiner = Joiner::default();
    while let Some(event) = stream
        .message()
        .await
        .map_err(|s| anyhow!("watch stream broke: {}", describe(&s)))?
    {
        let Some(event) = joiner.take(event)? else {
            continue;
        };
        if let Some(start) = agent.tables().apply(event)? {
            agent.link().started(start);
        }
        if !*healthy {
            *healthy = true;
            agent.link().up();
        }
    }
    Ok(())
}
