//! Connections to the controller, as weft-load opens them.

use std::time::Duration;

use anyhow::{Context, anyhow};
use tonic::transport::{Channel, Endpoint};

/// How long to wait for a TCP connection to the controller.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take; generous, since the controller queues attaches behind fsyncs.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The controller at `url`, with [`CONNECT_TIMEOUT`].
pub fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow!("invalid controller URL {url}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT))
}

/// Opens one HTTP/2 connection to `endpoint`, made from `url` by [`endpoint`].
pub async fn open(endpoint: Endpoint, url: &str) -> anyhow::Result<Channel> {
    endpoint
        .connect()
        .await
        .with_context(|| format!("controller {url} is unreachable"))
}

/// A refusal as `refused: CODE: message[: root cause]`, the code as tonic names it (e.g.
/// PermissionDenied).
pub fn refused<T>(reply: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<T> {
    reply.map(tonic::Response::into_inner).map_err(|s| {
        anyhow!(
            "refused: {:?}: {}",
            s.code(),
            weft_proto::error::describe(&s)
        )
    })
}
