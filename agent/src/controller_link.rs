//! The agent's link to its controller: the controllers it may talk to (each with a client for
//! requests and one for the watch), which of them it talks to now, the state of the watch for
//! `weftctl status`, and the one way a request is made.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use tonic::transport::{self, Channel};
use tonic::{Code, Request, Response, Status};
use weft_proto::v1::controller_client::ControllerClient;

use weft_proto::error::describe;

use crate::following::Following;
use crate::tables::WatchStart;

/// How long to wait for a TCP connection to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long one unary request to the controller may take: an attach while the controller is
/// unreachable fails within this.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// HTTP/2 pings: a partition or a dead controller is noticed within interval + timeout, not
/// after TCP's retransmissions give up.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest message the agent accepts: room for a whole snapshot of about a million
/// endpoints.
const MAX_SNAPSHOT_BYTES: usize = 256 << 20;

pub struct ControllerLink {
    /// In the order given (`--controller URL[,URL...]`): controllers of one control plane,
    /// which serve the same tables.
    targets: Vec<Target>,
    /// The one requests and the watch go to; the watch loop moves on when it cannot follow it.
    current: AtomicUsize,
    state: Mutex<LinkState>,
    /// Nothing is asked of a store the agent refuses.
    following: Arc<Following>,
}

/// The state of the agent's watch on the controller, for `weftctl status`.
#[derive(Debug, Clone)]
pub struct LinkState {
    pub connected: bool,
    /// When it connected or, if it is not connected, when it was last connected (or when the
    /// agent started).
    pub since: Instant,
    /// Why the last attempt failed, when not connected.
    pub last_error: String,
    /// How the latest watch started.
    pub start: WatchStart,
}

/// One controller the agent may talk to.
struct Target {
    url: String,
    /// For unary requests, each made through [`ControllerLink::ask`].
    client: ControllerClient<Channel>,
    /// For the long-lived watch stream, which must not time out.
    watch_client: ControllerClient<Channel>,
}

impl Target {
    /// Clients of the controller at `url`; `tls` None is plaintext. Connects lazily.
    fn new(url: String, tls: Option<transport::ClientTlsConfig>) -> anyhow::Result<Target> {
        // Keepalives on both channels: a connection that died in a partition is replaced as
        // soon as it is noticed, not reused after the network heals.
        let mut endpoint = transport::Endpoint::from_shared(url.clone())
            .map_err(|e| anyhow!("invalid controller URL {url}: {e}"))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| anyhow!("invalid TLS settings: {e}"))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        Ok(Target {
            client: ControllerClient::new(endpoint.clone().timeout(REQUEST_TIMEOUT).connect_lazy()),
            // A snapshot comes in parts, but its first holds every peer and network, and a
            // controller of an earlier version sends it whole.
            watch_client: ControllerClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MAX_SNAPSHOT_BYTES),
            url,
        })
    }
}

impl ControllerLink {
    /// A link to the controllers at `urls`, talking to the first; `tls` None is plaintext
    /// (--insecure). Connects lazily.
    pub fn new(
        urls: Vec<String>,
        tls: Option<transport::ClientTlsConfig>,
        following: Arc<Following>,
    ) -> anyhow::Result<ControllerLink> {
        if urls.is_empty() {
            bail!("no controller URL given");
        }
        let targets = urls
            .into_iter()
            .map(|url| Target::new(url, tls.clone()))
            .collect::<anyhow::Result<_>>()?;
        Ok(ControllerLink {
            targets,
            current: AtomicUsize::new(0),
            state: Mutex::new(LinkState {
                connected: false,
                since: Instant::now(),
                last_error: String::new(),
                start: WatchStart::None,
            }),
            following,
        })
    }

    fn target(&self) -> &Target {
        &self.targets[self.current.load(Ordering::Relaxed)]
    }

    /// The URL of the controller the agent talks to now.
    pub fn url(&self) -> &str {
        &self.target().url
    }

    /// Moves on to the next controller given, if there is another; returns its URL.
    pub fn fail_over(&self) -> Option<&str> {
        if self.targets.len() < 2 {
            return None;
        }
        let next = (self.current.load(Ordering::Relaxed) + 1) % self.targets.len();
        self.current.store(next, Ordering::Relaxed);
        Some(&self.targets[next].url)
    }

    /// The client of the watch stream, whose calls have no deadline.
    pub fn watch_client(&self) -> ControllerClient<Channel> {
        self.target().watch_client.clone()
    }

    pub fn state(&self) -> LinkState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().expect("link lock poisoned")
    }

    pub fn up(&self) {
        let mut state = self.lock();
        state.connected = true;
        state.since = Instant::now();
        state.last_error.clear();
    }

    pub fn lost(&self, why: String) {
        let mut state = self.lock();
        if state.connected {
            state.connected = false;
            state.since = Instant::now();
        }
        state.last_error = why;
    }

    pub fn started(&self, start: WatchStart) {
        self.lock().start = start;
    }

    /// One request to the controller, bounded by REQUEST_TIMEOUT whatever the connection does:
    /// a hung controller (SIGSTOP, a full listen backlog) accepts connections and never
    /// answers, and the channel's own timeout does not cover a reconnect. The deadline goes
    /// along (`grpc-timeout`), so the controller drops a request that arrives after the agent
    /// gave up on it.
    pub async fn ask<Req, T, Call, Answer>(&self, message: Req, call: Call) -> Result<T, Status>
    where
        Call: FnOnce(ControllerClient<Channel>, Request<Req>) -> Answer,
        Answer: Future<Output = Result<Response<T>, Status>>,
    {
        // Nothing is changed in, or taken from, a store the agent refuses: its addresses may be
        // held by this host's running containers.
        if let Some(why) = self.following.refused() {
            return Err(Status::failed_precondition(format!(
                "the agent refuses the controller at {}: {why}; weftctl accept-controller \
                 follows it",
                self.url()
            )));
        }
        let mut request = Request::new(message);
        request.set_timeout(REQUEST_TIMEOUT);
        let target = self.target();
        match tokio::time::timeout(REQUEST_TIMEOUT, call(target.client.clone(), request)).await {
            Ok(answer) => answer
                .map(Response::into_inner)
                .map_err(|s| controller_status(&target.url, s)),
            Err(_) => Err(Status::unavailable(format!(
                "controller {} is unreachable: no answer within {}s",
                target.url,
                REQUEST_TIMEOUT.as_secs_f64()
            ))),
        }
    }
}

/// Passes the answer of the controller at `url` on, saying so when it could not be reached.
fn controller_status(url: &str, status: Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            Status::unavailable(format!(
                "controller {url} is unreachable: {}",
                describe(&status)
            ))
        }
        _ => status,
    }
}
