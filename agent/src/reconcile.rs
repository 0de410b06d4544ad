//! The reconcile loop: whenever the tables change, a kernel notification says one of weft's
//! devices changed, or a while has passed, bring the kernel in line with the tables (diff, fix:
//! see `Datapath::reconcile`), and give back addresses of endpoints that lost their veth.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use tracing::{debug, info, warn};
use weft_proto::names::{EXPOSE_ID, HOST_IFNAME_PREFIX, is_docker_plugin_key};
use weft_proto::tables::Tables;

use crate::agent::{Agent, Lifecycle};
use crate::container::Containers;
use crate::datapath::{Datapath, Desired, Report, is_ours};
use crate::desired::{HostNetworks, Touched, probe_state, wireguard_peers};
use crate::dns::listeners::Listeners;
use crate::endpoints::Endpoints;
use crate::firewall::Firewall;
use crate::heap;
use crate::held::Held;
use crate::metrics::METRICS;
use crate::netlink::{self, LinkEvent};
use crate::tables::{Journal, TablesCopy};

/// A full reconcile runs this often even when nothing changed, to repair what was missed.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// What the latest reconcile pass did, as `weftctl report` shows it.
pub struct LastReconcile {
    pub at: Instant,
    pub took: Duration,
    /// The entries it changed, or why it failed.
    pub outcome: Result<Report, String>,
}

pub type ReconcileLog = std::sync::Mutex<Option<LastReconcile>>;

pub struct Reconciler {
    tables: Arc<TablesCopy>,
    datapath: Arc<Datapath>,
    endpoints: Arc<Endpoints>,
    dns: Arc<Listeners>,
    containers: Arc<Containers>,
    firewall: Arc<Firewall>,
    lifecycle: Arc<Lifecycle>,
    last: Arc<ReconcileLog>,
    /// Whether a pass has looked into the containers yet (the first after start does).
    checked_containers: bool,
    /// Whether DNS has been opened in the containers attached before the agent started.
    dns_caught_up: bool,
    /// Why the probe device could not be made in the last pass, so it is logged once.
    probe_error: Option<String>,
    /// Why the nftables table could not be set in the last pass, so it is logged once.
    firewall_error: Option<String>,
    /// The networks as the last pass derived them, brought up to date change by change.
    derived: Option<HostNetworks>,
    /// The next pass derives everything again and looks at every entry: it is the periodic
    /// one, or the last pass failed (and may have left touched entries unwritten).
    full_next: bool,
}

impl Reconciler {
    pub fn new(agent: &Agent) -> Reconciler {
        Reconciler {
            tables: agent.tables().clone(),
            datapath: agent.datapath().clone(),
            endpoints: agent.endpoints().clone(),
            dns: agent.dns().clone(),
            containers: agent.containers().clone(),
            firewall: agent.firewall().clone(),
            lifecycle: agent.lifecycle().clone(),
            last: agent.last_reconcile().clone(),
            checked_containers: false,
            dns_caught_up: false,
            probe_error: None,
            firewall_error: None,
            derived: None,
            full_next: true,
        }
    }

    /// Brings the kernel in line with the tables whenever they change, and every RESYNC_EVERY.
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                _ = self.tables.reconcile_requested() => {}
                _ = tokio::time::sleep(RESYNC_EVERY) => self.full_next = true,
            }
            if let Err(e) = self.reconcile().await {
                self.full_next = true;
                warn!("reconcile failed, retrying: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.tables.request_reconcile();
            }
        }
    }

    async fn reconcile(&mut self) -> anyhow::Result<()> {
        if self.lifecycle.is_stopping() {
            return Ok(());
        }
        // Stray veths (no endpoint calls for them) are removed only when the tables hold every
        // change this agent made and no attach, detach or release is under way: otherwise a veth
        // may be newer than the tables.
        let full = std::mem::take(&mut self.full_next);
        let (tables, endpoints, derived) = (&self.tables, &self.endpoints, &mut self.derived);
        let mut derived_in_full = false;
        let in_full = &mut derived_in_full;
        let desired = move || {
            tables.read_changes(move |t, journal| {
                let touched = derive(derived, t, tables.me(), journal, full);
                *in_full = touched.is_none();
                let derived: &Option<HostNetworks> = derived;
                let networks = &derived.as_ref().expect("derived above").networks;
                Desired {
                    wireguard: wireguard_peers(t, networks),
                    networks,
                    touched,
                    probe: probe_state(t, tables.me()),
                    remove_stray_veths: endpoints.is_idle() && tables.is_fresh(t),
                }
            })
        };
        let started = Instant::now();
        let reconciled = self.datapath.reconcile(desired).await;
        let took = started.elapsed();
        let outcome = match &reconciled {
            Ok(None) => None,
            Ok(Some(report)) => Some(Ok(report.clone())),
            Err(e) => Some(Err(format!("{e:#}"))),
        };
        if let Some(outcome) = outcome {
            METRICS.reconciled(outcome.as_ref().ok(), took);
            let at = Instant::now();
            *self.last.lock().expect("reconcile log poisoned") =
                Some(LastReconcile { at, took, outcome });
        }
        if derived_in_full {
            heap::give_back_freed();
        }
        let Some(report) = reconciled? else {
            return Ok(());
        };
        if report.probe_error != self.probe_error {
            match &report.probe_error {
                Some(e) => warn!("no data-path probes: {e}"),
                None => info!("the probe device is as wanted again"),
            }
            self.probe_error = report.probe_error.clone();
        }
        if report.changed() {
            info!(
                fdb_added = report.fdb_added,
                fdb_removed = report.fdb_removed,
                neigh_added = report.neigh_added,
                neigh_removed = report.neigh_removed,
                wireguard_peers_changed = report.wireguard_changed,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "datapath reconciled"
            );
        }
        // A table that cannot be set (no nft, say) leaves the rest of the pass to be done: the
        // networks work, only the way out through the host does not.
        let firewall_error = self.firewall.settle(&self.tables).await.err();
        let firewall_error = firewall_error.map(|e| format!("{e:#}"));
        if firewall_error != self.firewall_error {
            match &firewall_error {
                Some(e) => warn!("no masquerading: {e}"),
                None => info!("the nftables table is as wanted again"),
            }
            self.firewall_error = firewall_error;
        }
        // Only fresh tables can say which endpoint lost its veth.
        let local = self.tables.fresh_local_endpoints(|_| true);
        if !local.is_empty() {
            let first_pass = !std::mem::replace(&mut self.checked_containers, true);
            self.endpoints.release_unplugged(&local, first_pass).await?;
        }
        self.refresh_dns().await;
        // Once a pass made the kernel follow the tables: a restarted agent then refuses a store
        // behind them.
        if let Err(e) = self.tables.following().save() {
            warn!("cannot record the controller store followed in the state dir: {e}");
        }
        Ok(())
    }

    /// Serves the names the tables hold, and DNS inside each local container: containers gone
    /// from this host lose their listener; after a start, those attached before get theirs
    /// (attach opens it for new ones).
    async fn refresh_dns(&mut self) {
        self.dns.serve_names(&self.tables);
        let me = self.tables.me();
        let Some(local) = self.tables.read(|t| {
            t.endpoints_on(me)
                .filter(|ep| ep.id.container != EXPOSE_ID)
                .map(|ep| ep.id.container.clone())
                .collect::<BTreeSet<String>>()
        }) else {
            return;
        };
        self.dns.retain(|id| local.contains(id));
        // The Docker follower serves those of Docker's driver as their containers start.
        let local: BTreeSet<String> = local
            .into_iter()
            .filter(|id| !is_docker_plugin_key(id))
            .collect();
        if std::mem::replace(&mut self.dns_caught_up, true) {
            return;
        }
        for id in local.iter().filter(|id| !self.dns.serves(id)) {
            let served = match self.containers.identify(id).await {
                Ok(container) => self.dns.ensure(&container).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = served {
                warn!(container = %id, "no DNS for this container: {e:#}");
            }
        }
    }
}

/// Brings `derived` up to date with `tables`, one endpoint change of `journal` at a time where
/// it can; returns the entries that changed, by VNI, or none when everything was derived again
/// (then every entry is to be looked at). A `full` pass derives everything again in any case,
/// and says so if the changes taken one by one led somewhere else.
fn derive(
    derived: &mut Option<HostNetworks>,
    tables: &Tables,
    me: &str,
    journal: Journal,
    full: bool,
) -> Option<BTreeMap<u32, Touched>> {
    let updated = derived
        .as_mut()
        .filter(|_| !journal.everything)
        .and_then(|networks| {
            let mut touched = BTreeMap::new();
            let taken_in = journal.endpoints.iter().all(|(before, after)| {
                networks.update(tables, me, before.as_ref(), after.as_ref(), &mut touched)
            });
            taken_in.then_some(touched)
        });
    if updated.is_some() && !full {
        return updated;
    }
    let again = HostNetworks::of(tables, me);
    if updated.is_some()
        && derived
            .as_ref()
            .is_some_and(|d| d.networks != again.networks)
    {
        warn!("the networks derived change by change differ from the tables': derived again");
    }
    *derived = Some(again);
    None
}

/// Checks the kernel's FDB and neighbour notifications against what weft's devices hold, and
/// asks for a reconcile (which reads the kernel again) as soon as one disagrees: an entry
/// changed behind weft's back (say, `bridge fdb del`) or notifications were lost.
pub async fn follow_entry_events(tables: &TablesCopy, held: &Held) -> anyhow::Result<()> {
    let mut events = std::pin::pin!(netlink::entry_events()?);
    held.following();
    while let Some(event) = events.next().await {
        if !held.observe(&event) {
            debug!(
                ?event,
                "the kernel's entries changed: they are to be read again"
            );
            tables.request_reconcile();
        }
    }
    bail!("neighbour notifications ended")
}

/// Asks for a reconcile as soon as one of weft's devices changes or goes away behind its back
/// (say, `ip link del vxlan-6784`), rather than at the next periodic pass.
pub async fn follow_link_events(tables: &TablesCopy, port: u16) -> anyhow::Result<()> {
    let mut events = std::pin::pin!(netlink::link_events()?);
    while let Some(event) = events.next().await {
        let (LinkEvent::Changed(link) | LinkEvent::Removed(link)) = &event;
        // A veth that changes is an attach or detach under way; one that goes may be a loss.
        let veth = link.name.starts_with(HOST_IFNAME_PREFIX);
        let ours = is_ours(&link.name, port) && (!veth || matches!(event, LinkEvent::Removed(_)));
        if ours {
            debug!(link = %link.name, "link event");
            tables.request_reconcile();
        }
    }
    bail!("link notifications ended")
}
