//! The controller's metrics, served as `GET /metrics` beside `/healthz` on `--health-listen`.
//! Commits are counted as they are made (`state.rs`); what the controller holds (its revision,
//! the changes it keeps, the agents watching, each network's addresses) is read at each scrape.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tonic::Code;
use tonic::codegen::http;
use tower::{Layer, Service};
use weft_process::metrics::seconds_histogram as seconds;

use crate::service::ControllerService;

/// A network's subnet: a dual-stack network has two.
type Subnet = [(&'static str, String); 2];
type Rpc = [(&'static str, String); 2];
type Method = [(&'static str, String); 1];

pub struct Metrics {
    registry: Registry,
    rpcs: Family<Rpc, Counter>,
    rpc_seconds: Family<Method, Histogram, fn() -> Histogram>,
    joins: Family<[(&'static str, &'static str); 1], Counter>,
    tls_refused: Counter,
    commits: Family<[(&'static str, &'static str); 1], Counter>,
    commit_seconds: Histogram,
    batch_requests: Histogram,
    revision: Gauge,
    history: Gauge,
    agents: Gauge,
    watch_backlog: Gauge,
    fell_behind: Counter,
    addresses_used: Family<Subnet, Gauge>,
    /// A float: an IPv6 pool holds 2^64 and more.
    addresses_free: Family<Subnet, Gauge<f64, AtomicU64>>,
}

/// What the controller holds, as a scrape shows it.
pub struct Held {
    pub revision: u64,
    /// The changes the slowest watcher has yet to take.
    pub watch_backlog: usize,
    pub history: usize,
    /// Peers with a watch stream open.
    pub agents: usize,
    /// Per network and subnet: addresses held, addresses left.
    pub pools: Vec<(String, String, u64, u128)>,
}

/// One controller per process: its metrics are the process's.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft_controller");
        let metrics = Metrics {
            registry: Registry::default(),
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(seconds),
            joins: Family::default(),
            tls_refused: Counter::default(),
            commits: Family::default(),
            commit_seconds: seconds(),
            // 1 to 1,024 requests.
            batch_requests: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            revision: Gauge::default(),
            history: Gauge::default(),
            agents: Gauge::default(),
            watch_backlog: Gauge::default(),
            fell_behind: Counter::default(),
            addresses_used: Family::default(),
            addresses_free: Family::default(),
        };
        registry.register(
            "rpcs",
            "gRPC calls answered, by method and status code (a watch: once its stream starts)",
            metrics.rpcs.clone(),
        );
        registry.register_with_unit(
            "rpc_duration",
            "How long a gRPC call took to its answer's headers, by method",
            Unit::Seconds,
            metrics.rpc_seconds.clone(),
        );
        registry.register(
            "joins",
            "Agents' joins with a token, by result (ok: certificate issued, refused)",
            metrics.joins.clone(),
        );
        registry.register(
            "tls_handshakes_refused",
            "TLS handshakes the controller refused (a client certificate of another CA, or expired; a client that is no TLS client)",
            metrics.tls_refused.clone(),
        );
        registry.register(
            "commits",
            "Batches of changes written to the store, by result (ok, beaten: another controller committed first, failed)",
            metrics.commits.clone(),
        );
        registry.register_with_unit(
            "commit_duration",
            "How long writing one batch to the store took (an fsync on redb, a transaction on etcd)",
            Unit::Seconds,
            metrics.commit_seconds.clone(),
        );
        registry.register(
            "commit_batch_requests",
            "Requests committed together in one batch",
            metrics.batch_requests.clone(),
        );
        registry.register(
            "revision",
            "The revision of the tables this controller serves",
            metrics.revision.clone(),
        );
        registry.register(
            "history_changes",
            "Changes kept for agents that resume a watch",
            metrics.history.clone(),
        );
        registry.register(
            "connected_agents",
            "Agents with a watch stream open to this controller",
            metrics.agents.clone(),
        );
        registry.register(
            "watch_backlog_changes",
            "Changes published that the slowest watching agent has yet to take (a watcher more than 4,096 behind is resumed from the history)",
            metrics.watch_backlog.clone(),
        );
        registry.register(
            "watchers_fell_behind",
            "Times a watching agent fell too far behind the live stream and was resumed from the history",
            metrics.fell_behind.clone(),
        );
        registry.register(
            "ipam_used_addresses",
            "Addresses held in each subnet of each network",
            metrics.addresses_used.clone(),
        );
        registry.register(
            "ipam_free_addresses",
            "Addresses left to give in each subnet of each network",
            metrics.addresses_free.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn joined(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.joins.get_or_create(&[("result", result)]).inc();
    }

    fn answered(&self, method: String, code: Code, took: Duration) {
        // Methods nobody serves would add a series each.
        let method = if code == Code::Unimplemented {
            "other".to_string()
        } else {
            method
        };
        let code = match code {
            Code::Ok => "OK".to_string(),
            code => format!("{code:?}"),
        };
        self.rpc_seconds
            .get_or_create(&[("method", method.clone())])
            .observe(took.as_secs_f64());
        self.rpcs
            .get_or_create(&[("method", method), ("code", code)])
            .inc();
    }

    pub fn watcher_fell_behind(&self) {
        self.fell_behind.inc();
    }

    /// A batch of `requests` written (`result` ok), beaten or failed after `took`.
    pub fn committed(&self, result: &'static str, requests: usize, took: Duration) {
        self.commits.get_or_create(&[("result", result)]).inc();
        self.commit_seconds.observe(took.as_secs_f64());
        if result == "ok" {
            self.batch_requests.observe(requests as f64);
        }
    }

    /// The content type and body of a scrape with `accept`, with what `service` holds now.
    pub fn scrape(
        &self,
        service: &ControllerService,
        accept: Option<&str>,
    ) -> (&'static str, String) {
        let held = service.held();
        self.revision.set(held.revision as i64);
        self.history.set(held.history as i64);
        self.agents.set(held.agents as i64);
        self.watch_backlog.set(held.watch_backlog as i64);
        // A network removed has no addresses left to show.
        self.addresses_used.clear();
        self.addresses_free.clear();
        for (network, subnet, used, free) in held.pools {
            let labels = [("network", network), ("subnet", subnet)];
            self.addresses_used.get_or_create(&labels).set(used as i64);
            self.addresses_free.get_or_create(&labels).set(free as f64);
        }
        weft_process::metrics::exposition(&self.registry, accept)
    }
}

/// Where tonic says it refused a TLS handshake, at debug level: the log filter lets it through.
pub const TLS_REFUSALS_DIRECTIVE: &str = "tonic::transport::server::io_stream=debug";

/// Counts the TLS handshakes tonic refuses, from its `tls accept error` event (a log layer:
/// tonic's TLS acceptor reports them nowhere else).
pub struct TlsRefusals;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for TlsRefusals {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "tonic::transport::server::io_stream" {
            return;
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            METRICS.tls_refused.inc();
        }
    }
}

/// Whether an event's message is tonic's `tls accept error`.
struct Message(bool);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}") == "tls accept error";
        }
    }
}

/// Counts every gRPC call the controller answers (a tower layer on its server).
#[derive(Clone, Copy, Default)]
pub struct RpcMetrics;

impl<S> Layer<S> for RpcMetrics {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            if let Ok(response) = &answer {
                // An error comes in the headers (trailers-only); a success in the trailers.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from);
                METRICS.answered(method, code, started.elapsed());
            }
            answer
        })
    }
}
