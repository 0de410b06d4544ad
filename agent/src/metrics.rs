//! The agent's metrics, served as `GET /metrics` beside `/healthz`. What happens is counted
//! where it happens (a reconcile pass, the endpoint core, a DNS query); what the agent holds
//! (its revision, its link to the controller, endpoints by network) is read at each scrape.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use weft_process::metrics::seconds_histogram as seconds;

use crate::agent::Agent;
use crate::datapath::Report;
use crate::endpoints::EndpointError;
use crate::probe::Connection;
use crate::probe::path::State;

type Labels<const N: usize> = [(&'static str, &'static str); N];

pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels<1>, Counter>,
    reconcile_seconds: Histogram,
    kernel_changes: Family<Labels<2>, Counter>,
    operations: Family<Labels<2>, Counter>,
    dns_queries: Family<Labels<1>, Counter>,
    dns_seconds: Histogram,
    revision: Gauge,
    connected: Gauge,
    endpoints: Family<Named, Gauge>,
    peer_up: Family<Named, Gauge>,
    peer_rtt: Family<Named, Gauge<f64, AtomicU64>>,
    peer_mtu: Family<Named, Gauge>,
    peer_encrypted: Family<Named, Gauge>,
    peer_handshake: Family<Named, Gauge<f64, AtomicU64>>,
    network_mtu: Gauge,
    entries_held: Family<Labels<1>, Gauge>,
    snapshot_at: Gauge<f64, AtomicU64>,
}

/// One label whose value is a name only known at run time: a network's, a peer's.
type Named = [(&'static str, String); 1];

/// One agent per process: its metrics are the process's.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft_agent");
        let metrics = Metrics {
            reconciles: Family::default(),
            reconcile_seconds: seconds(),
            kernel_changes: Family::default(),
            operations: Family::default(),
            dns_queries: Family::default(),
            dns_seconds: seconds(),
            revision: Gauge::default(),
            connected: Gauge::default(),
            endpoints: Family::default(),
            peer_up: Family::default(),
            peer_rtt: Family::default(),
            peer_mtu: Family::default(),
            peer_encrypted: Family::default(),
            peer_handshake: Family::default(),
            network_mtu: Gauge::default(),
            entries_held: Family::default(),
            snapshot_at: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "Reconcile passes of the kernel against the tables, by result (ok, error)",
            metrics.reconciles.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "How long a reconcile pass took, its dumps included",
            Unit::Seconds,
            metrics.reconcile_seconds.clone(),
        );
        registry.register(
            "kernel_entries_changed",
            "Entries a reconcile added to or removed from the kernel, by table (fdb, neighbour) and change (added, removed)",
            metrics.kernel_changes.clone(),
        );
        registry.register(
            "operations",
            "Attaches and detaches asked of this agent (weftctl and every front end), by operation and result (ok, or why it failed)",
            metrics.operations.clone(),
        );
        registry.register(
            "dns_queries",
            "DNS queries from containers, by answer (local, no_such_name, forwarded, failed, malformed)",
            metrics.dns_queries.clone(),
        );
        registry.register_with_unit(
            "dns_query_duration",
            "How long a DNS query took to answer, forwarding included",
            Unit::Seconds,
            metrics.dns_seconds.clone(),
        );
        registry.register(
            "revision",
            "The revision of the controller's tables this agent holds (0: none yet)",
            metrics.revision.clone(),
        );
        registry.register(
            "controller_connected",
            "Whether the watch stream to the controller is up (1) or not (0)",
            metrics.connected.clone(),
        );
        registry.register(
            "endpoints",
            "Endpoints in the tables, on every host, by network",
            metrics.endpoints.clone(),
        );
        registry.register(
            "peer_data_path_up",
            "Whether probes through the VXLAN path to the peer come back (1) or not (0), by peer; absent until probing can tell",
            metrics.peer_up.clone(),
        );
        registry.register_with_unit(
            "peer_round_trip",
            "Round trip of the latest small probe the peer answered, by peer",
            Unit::Seconds,
            metrics.peer_rtt.clone(),
        );
        registry.register_with_unit(
            "peer_path_mtu",
            "The largest IPv6 packet known to cross to the peer and back through the VXLAN path, by peer",
            Unit::Bytes,
            metrics.peer_mtu.clone(),
        );
        registry.register(
            "peer_encrypted",
            "Whether this host's encrypted networks reach the peer inside WireGuard (1) or it shares none with it (0), by peer",
            metrics.peer_encrypted.clone(),
        );
        registry.register_with_unit(
            "peer_wireguard_handshake_timestamp",
            "When this host's WireGuard last shook hands with the peer (Unix time), by peer; absent before the first",
            Unit::Seconds,
            metrics.peer_handshake.clone(),
        );
        registry.register_with_unit(
            "network_mtu",
            "The MTU of this host's networks: the size a path to a peer should carry",
            Unit::Bytes,
            metrics.network_mtu.clone(),
        );
        registry.register(
            "kernel_entries",
            "Entries weft's VXLAN devices hold after the latest reconcile pass that succeeded, by table (fdb, neighbour)",
            metrics.entries_held.clone(),
        );
        registry.register_with_unit(
            "snapshot_applied_timestamp",
            "When the agent last took a snapshot of the controller's tables (Unix time; a resumed watch takes none)",
            Unit::Seconds,
            metrics.snapshot_at.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn reconciled(&self, report: Option<&Report>, took: Duration) {
        let result = if report.is_some() { "ok" } else { "error" };
        self.reconciles.get_or_create(&[("result", result)]).inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
        let Some(report) = report else { return };
        for (table, n) in [("fdb", report.fdb_held), ("neighbour", report.neigh_held)] {
            self.entries_held
                .get_or_create(&[("table", table)])
                .set(n as i64);
        }
        for (table, change, n) in [
            ("fdb", "added", report.fdb_added),
            ("fdb", "removed", report.fdb_removed),
            ("neighbour", "added", report.neigh_added),
            ("neighbour", "removed", report.neigh_removed),
        ] {
            self.kernel_changes
                .get_or_create(&[("table", table), ("change", change)])
                .inc_by(n as u64);
        }
    }

    pub fn operation<T>(&self, operation: &'static str, outcome: &Result<T, EndpointError>) {
        let result = match outcome {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.operations
            .get_or_create(&[("operation", operation), ("result", result)])
            .inc();
    }

    pub fn dns_query(&self, answer: &'static str, took: Duration) {
        self.dns_queries.get_or_create(&[("answer", answer)]).inc();
        self.dns_seconds.observe(took.as_secs_f64());
    }

    pub fn snapshot_applied(&self) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        self.snapshot_at
            .set(now.map_or(0.0, |since| since.as_secs_f64()));
    }

    /// The probes' view of each peer's path, and whether it is encrypted (`encrypted`: the
    /// peers reached inside WireGuard, with their latest handshake); a peer gone from the tables
    /// has none to show.
    fn peer_paths(
        &self,
        connections: &[Connection],
        encrypted: &BTreeMap<String, Option<SystemTime>>,
    ) {
        self.peer_up.clear();
        self.peer_rtt.clear();
        self.peer_mtu.clear();
        self.peer_encrypted.clear();
        self.peer_handshake.clear();
        for c in connections {
            let label = [("peer", c.peer.clone())];
            let handshake = encrypted.get(&c.peer);
            self.peer_encrypted
                .get_or_create(&label)
                .set(handshake.is_some().into());
            if let Some(at) = handshake.copied().flatten() {
                let unix = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                self.peer_handshake
                    .get_or_create(&label)
                    .set(unix.as_secs_f64());
            }
            match c.state {
                State::Pending => {}
                State::Ok => drop(self.peer_up.get_or_create(&label).set(1)),
                State::Failed => drop(self.peer_up.get_or_create(&label).set(0)),
            }
            if let Some(rtt) = c.rtt {
                self.peer_rtt.get_or_create(&label).set(rtt.as_secs_f64());
            }
            if let Some(mtu) = c.mtu {
                self.peer_mtu.get_or_create(&label).set(mtu.into());
            }
        }
    }

    /// The content type and body of a scrape with `accept`, with what `agent` holds now
    /// (`encrypted`: [`Agent::encrypted_links`]).
    pub fn scrape(
        &self,
        agent: &Agent,
        encrypted: &BTreeMap<String, Option<SystemTime>>,
        accept: Option<&str>,
    ) -> (&'static str, String) {
        self.revision.set(agent.tables().revision() as i64);
        self.connected.set(agent.link().state().connected.into());
        self.network_mtu.set(agent.datapath().mtu().into());
        self.peer_paths(&agent.connections().list(), encrypted);
        let by_network = agent.tables().read(|t| {
            let mut counts = std::collections::BTreeMap::<String, i64>::new();
            for ep in t.endpoints.values() {
                *counts.entry(ep.id.network.clone()).or_default() += 1;
            }
            counts
        });
        // A network gone has no endpoints left to show.
        self.endpoints.clear();
        for (network, n) in by_network.unwrap_or_default() {
            self.endpoints.get_or_create(&[("network", network)]).set(n);
        }
        weft_process::metrics::exposition(&self.registry, accept)
    }
}
