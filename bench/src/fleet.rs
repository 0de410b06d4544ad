//! Simulated agents: each speaks to the controller as weft-agent does, over two HTTP/2
//! connections of its own (one for Register and Watch, one for unary requests such as Attach),
//! with the agent's keepalives, and holds its Watch open. No datapath: a simulated agent only
//! decodes what the controller sends and notes when each delta arrives. Under mutual TLS each
//! has a client certificate naming its peer, as a joined agent has.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;
use weft_proto::v1::controller_client::ControllerClient;
use weft_proto::v1::{Peer, RegisterRequest, WatchEvent, WatchRequest, watch_event::Event};

use crate::certs::AgentCa;
use crate::client;
use crate::dump::receive_snapshot;

/// weft-agent's keepalives and message limit (agent/src/controller_link.rs), so the controller
/// sees the same pings and keeps the same state per connection. Not its connect and request
/// timeouts (1.5 s each): the simulated agents have weft-load's ([`client`], 5 s and 60 s), since
/// while 2,000 connections open and 64 attaches queue behind each other's fsyncs a request can
/// take longer, and the benchmark measures how long rather than failing it as weft-agent would.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_SNAPSHOT_BYTES: usize = 256 << 20;

/// One simulated agent.
pub struct SimAgent {
    pub peer: Peer,
    /// Register and Watch, as the agent's watch channel.
    pub watch_client: ControllerClient<Channel>,
    /// Attach and the other unary requests, as the agent's request channel.
    pub client: ControllerClient<Channel>,
}

/// Agent `i`'s VTEP: an address in 198.19.0.0/16 (benchmark space) nothing ever sends to.
fn vtep(i: usize) -> Ipv4Addr {
    let n = u32::try_from(i + 1).expect("fewer than 2^32 agents");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n)
}

impl SimAgent {
    /// Opens both connections of agent `name`, with the client certificate naming it that `ca`
    /// gives (none: plaintext).
    pub async fn connect(
        url: &str,
        name: String,
        i: usize,
        ca: Option<&AgentCa>,
    ) -> anyhow::Result<SimAgent> {
        let mut endpoint = client::endpoint(url)?
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(ca) = ca {
            endpoint = endpoint
                .tls_config(ca.tls_for(&name)?)
                .context("invalid TLS settings")?;
        }
        let watch = client::open(endpoint.clone(), url).await?;
        let unary = client::open(endpoint.timeout(client::REQUEST_TIMEOUT), url).await?;
        Ok(SimAgent {
            peer: Peer {
                name,
                advertise_addr: vtep(i).to_string(),
                ..Default::default()
            },
            watch_client: ControllerClient::new(watch)
                .max_decoding_message_size(MAX_SNAPSHOT_BYTES),
            client: ControllerClient::new(unary),
        })
    }

    pub async fn register(&self) -> anyhow::Result<()> {
        self.watch_client
            .clone()
            .register(RegisterRequest {
                peer: Some(self.peer.clone()),
            })
            .await
            .with_context(|| format!("cannot register peer {}", self.peer.name))?;
        Ok(())
    }

    /// Watches from revision 0, as a starting agent does, and reads the whole snapshot; returns
    /// what it held with the time from the request to its last part decoded, and the stream,
    /// which goes on with the deltas.
    pub async fn sync(&self) -> anyhow::Result<(Synced, Streaming<WatchEvent>)> {
        let name = &self.peer.name;
        let started = Instant::now();
        let mut stream = self
            .watch_client
            .clone()
            .watch(WatchRequest {
                peer: name.clone(),
                from_revision: 0,
                snapshot_in_parts: true,
                store_id: String::new(),
            })
            .await
            .with_context(|| format!("{name}: watch failed"))?
            .into_inner();
        let (revision, _, snapshot) = receive_snapshot(&mut stream)
            .await
            .with_context(|| format!("{name}: no snapshot"))?;
        let synced = Synced {
            took: started.elapsed(),
            revision,
            endpoints: snapshot.endpoints.len(),
            bytes: snapshot.encoded_len(),
        };
        Ok((synced, stream))
    }
}

/// What a full sync received.
#[derive(Debug, Clone, Copy)]
pub struct Synced {
    /// From the Watch request to the snapshot decoded.
    pub took: Duration,
    pub revision: u64,
    pub endpoints: usize,
    /// The snapshot's encoded size.
    pub bytes: usize,
}

/// What a watching agent reports.
#[derive(Debug)]
pub enum Report {
    /// Agent `agent` decoded the delta of `revision` at `at`.
    Delta {
        agent: usize,
        revision: u64,
        at: Instant,
    },
    /// Agent `agent`'s watch ended.
    Ended { agent: usize, why: String },
}

/// Reads `stream` until it ends, reporting each delta's arrival.
pub async fn follow(
    agent: usize,
    mut stream: Streaming<WatchEvent>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let why = loop {
        match stream.message().await {
            Ok(Some(event)) => {
                if let Some(Event::Delta(_)) = event.event {
                    let at = Instant::now();
                    let report = Report::Delta {
                        agent,
                        revision: event.revision,
                        at,
                    };
                    if reports.send(report).is_err() {
                        return;
                    }
                }
            }
            Ok(None) => break "the controller ended it".to_string(),
            Err(status) => break format!("it broke: {status}"),
        }
    };
    let _ = reports.send(Report::Ended { agent, why });
}

/// Raises this process's open-file limit as far as allowed: `agents` simulated agents hold two
/// sockets each, more than the usual soft limit of 1024.
pub fn allow_connections(agents: usize) -> anyhow::Result<()> {
    // Room beside the sockets for the runtime and /proc reads.
    let needed = 2 * agents as u64 + 64;
    let (_, limit) =
        weft_process::raise_open_file_limit().context("cannot raise the open-file limit")?;
    if limit < needed {
        bail!(
            "{agents} agents need {needed} open files but the hard limit is {limit}: raise it (ulimit -Hn) or simulate fewer agents"
        );
    }
    Ok(())
}
