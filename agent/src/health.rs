//! `GET /healthz` for supervisors and orchestrators: 200 once the agent has applied a snapshot
//! of the controller's tables (it then keeps the datapath right, controller or not), 503 before;
//! and `GET /metrics` for Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::agent::Agent;
use crate::metrics::METRICS;

async fn healthz(State(agent): State<Arc<Agent>>) -> (StatusCode, String) {
    match agent.tables().revision() {
        0 => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no snapshot from controller {} yet\n", agent.link().url()),
        ),
        revision => (StatusCode::OK, format!("ok, revision {revision}\n")),
    }
}

async fn metrics(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let encrypted = agent.encrypted_links().await;
    let (kind, body) = METRICS.scrape(&agent, &encrypted, accept);
    ([(header::CONTENT_TYPE, kind)], body)
}

/// Serves `/healthz` and `/metrics` on `addr`.
pub async fn serve(agent: Arc<Agent>, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for health checks and metrics on {addr}"))?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(agent);
    axum::serve(listener, app)
        .await
        .context("health endpoint failed")
}
