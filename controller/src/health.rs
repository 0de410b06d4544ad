//! `GET /healthz` for supervisors and load balancers: 200 while the controller can serve
//! changes, 503 naming why not (it cannot reach etcd); and `GET /metrics` for Prometheus.

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::METRICS;
use crate::service::ControllerService;

async fn healthz(State(service): State<ControllerService>) -> (StatusCode, String) {
    match service.unreachable() {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        None => (
            StatusCode::OK,
            format!("ok, revision {}\n", service.held().revision),
        ),
    }
}

async fn metrics(
    State(service): State<ControllerService>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let (kind, body) = METRICS.scrape(&service, accept);
    ([(header::CONTENT_TYPE, kind)], body)
}

/// Serves `/healthz` and `/metrics` on `listener`.
pub async fn serve(service: ControllerService, listener: TcpListener) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(service);
    axum::serve(listener, app)
        .await
        .context("health endpoint failed")
}
