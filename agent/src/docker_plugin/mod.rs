//! Docker's network and IPAM driver `weft` (libnetwork's remote driver protocol: JSON over HTTP
//! on a unix socket in `/run/docker/plugins`). Every call answers 200 with its result, or 500
//! with `{"Err": "<what failed>: <why>"}` (the pool, network, address or endpoint; Docker adds
//! the call's name); a call that fails leaves nothing behind.
//!
//! - [`wire`]: the requests, typed; [`ipam`]: pools and addresses, from the controller;
//!   [`driver`]: networks and endpoints, through the endpoint core.

pub mod driver;
pub mod ipam;
pub mod wire;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ipnetwork::IpNetwork;
use serde_json::{Value, json};
use tracing::{debug, info, warn};
use weft_proto::names::EXPOSE_ID;
use weft_proto::rows::NetworkRow;
use weft_proto::tables::EndpointId;

use crate::agent::Agent;

/// The media type of the plugin protocol.
const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// The driver: the agent it works through, and the gateways it is unsure of.
pub struct Plugin {
    agent: Arc<Agent>,
    /// Addresses a gateway request (RequestAddress) had the host take on a network that no
    /// CreateNetwork has confirmed yet: Docker gives them back when the create fails, and the
    /// host gives them up then. A confirmed one stays when the network goes (Docker's second
    /// network on the same pool would give it back too: the calls cannot be told apart).
    unconfirmed: Mutex<HashSet<IpNetwork>>,
}

impl Plugin {
    fn unconfirmed(&self) -> MutexGuard<'_, HashSet<IpNetwork>> {
        self.unconfirmed
            .lock()
            .expect("unconfirmed gateways lock poisoned")
    }
}

/// Serves the driver on `socket` until the agent stops.
pub async fn serve(agent: Arc<Agent>, socket: &Path) -> anyhow::Result<()> {
    let listener = weft_process::bind_private_socket(socket).await?;
    info!(socket = %socket.display(), "serving Docker's network and IPAM driver weft");
    let sweeping = agent.clone();
    tokio::spawn(async move {
        sweeping.tables().wait_for_tables().await;
        if let Err(e) = sweeping.endpoints().release_reservations().await {
            warn!("releasing addresses reserved for Docker before the restart: {e}");
        }
    });
    let plugin = Arc::new(Plugin {
        agent,
        unconfirmed: Mutex::default(),
    });
    let app = Router::new().fallback(move |uri: Uri, body: Bytes| {
        let plugin = plugin.clone();
        async move { answer(&plugin, uri.path(), &body).await }
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn answer(plugin: &Plugin, path: &str, body: &[u8]) -> Response {
    let method = path.trim_start_matches('/');
    let outcome = call(plugin, method, body).await;
    let (status, value) = match outcome {
        Ok(value) => {
            debug!(method, "Docker plugin call answered");
            (StatusCode::OK, value)
        }
        Err(why) => {
            warn!(method, "Docker plugin call failed: {why}");
            (StatusCode::INTERNAL_SERVER_ERROR, json!({ "Err": why }))
        }
    };
    (
        status,
        [(header::CONTENT_TYPE, MEDIA_TYPE)],
        value.to_string(),
    )
        .into_response()
}

async fn call(plugin: &Plugin, method: &str, body: &[u8]) -> Result<Value, String> {
    use wire::read;
    let agent = &plugin.agent;
    match method {
        "Plugin.Activate" => Ok(json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
        "NetworkDriver.GetCapabilities" => Ok(json!({ "Scope": "local" })),
        "IpamDriver.GetCapabilities" => Ok(json!({ "RequiresMACAddress": false })),
        "IpamDriver.GetDefaultAddressSpaces" => Ok(json!({
            "LocalDefaultAddressSpace": ipam::ADDRESS_SPACE,
            "GlobalDefaultAddressSpace": ipam::ADDRESS_SPACE,
        })),
        "IpamDriver.RequestPool" => ipam::request_pool(agent, read(body)?).await,
        "IpamDriver.ReleasePool" => read::<wire::ReleasePool>(body).map(|_| json!({})),
        "IpamDriver.RequestAddress" => {
            ipam::request_address(plugin, read(body)?).await
        }
        "IpamDriver.ReleaseAddress" => {
            ipam::release_address(plugin, read(body)?).await
        }
        "NetworkDriver.CreateNetwork" => {
            driver::create_network(plugin, read(body)?).await
        }
        "NetworkDriver.CreateEndpoint" => {
            driver::create_endpoint(agent, read(body)?).await
        }
        "NetworkDriver.Join" => driver::join(agent, read(body)?).await,
        "NetworkDriver.Leave" => driver::leave(agent, read(body)?).await,
        "NetworkDriver.DeleteEndpoint" => {
            driver::delete_endpoint(agent, read(body)?).await
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            driver::program_external_connectivity(read(body)?)
        }
        "NetworkDriver.EndpointOperInfo" => read::<wire::EndpointRequest>(body)
            .map(|_| json!({ "Value": {} }))
            ,
        // The network stays: it is weft's, and other hosts may use it.
        "NetworkDriver.DeleteNetwork"
        | "NetworkDriver.RevokeExternalConnectivity"
        | "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete" => Ok(json!({})),
        other => Err(format!("{other}: weft's plugin does not implement this call")),
    }
}

/// The first weft network that `pick` selects.
fn network_where(
    agent: &Agent,
    pick: impl Fn(&NetworkRow) -> bool,
) -> Result<Option<NetworkRow>, String> {
    agent
        .tables()
        .read(|t| t.networks.values().find(|n| pick(n)).cloned())
        .ok_or_else(|| agent.endpoints().no_tables().to_string())
}

/// This host's own address on network `network` (Docker's gateway there), if it has one.
fn host_address(agent: &Agent, network: &str) -> Result<Option<IpNetwork>, String> {
    let id = EndpointId::new(agent.name(), network, EXPOSE_ID);
    agent
        .tables()
        .read(|t| {
            t.endpoints
                .get(&id)
                .and_then(|ep| ep.cidrs.iter().copied().find(IpNetwork::is_ipv4))
        })
        .ok_or_else(|| agent.endpoints().no_tables().to_string())
}
