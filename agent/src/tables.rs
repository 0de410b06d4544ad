//! The agent's copy of the controller's tables: what the watch feeds in, the revision those
//! waiting for a change of theirs watch, and the one rule on when the copy may be trusted to
//! say what is stale (it holds every change this agent made).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use anyhow::bail;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};
use weft_proto::names::EXPOSE_ID;
use weft_proto::rows::{EndpointRow, RowChange};
use weft_proto::tables::Tables;
use weft_proto::v1::{WatchEvent, watch_event::Event};

use crate::following::{Following, Position};

/// How long a local command waits for its own change to come back through the watch.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Endpoint changes the journal keeps one by one; past that, deriving everything again is as
/// quick.
const JOURNAL_LIMIT: usize = 1000;

/// What changed in the tables since the reconciler last took it: enough to update what it
/// derived from them one endpoint change at a time.
#[derive(Debug, Default)]
pub struct Journal {
    /// Each endpoint change in order: the row before it and after it.
    pub endpoints: Vec<(Option<EndpointRow>, Option<EndpointRow>)>,
    /// Something else changed that the datapath depends on (a snapshot, a peer, a network), or
    /// too many endpoints did: everything is to be derived again.
    pub everything: bool,
}

/// Whether `change`, about to be applied to `tables`, may change the names DNS serves.
fn changes_names(tables: &Tables, change: &RowChange) -> bool {
    let named = |id| {
        tables
            .endpoints
            .get(id)
            .is_some_and(|ep: &EndpointRow| !ep.dns_name.is_empty())
    };
    match change {
        RowChange::RecordPut(_) | RowChange::RecordDeleted(_) => true,
        RowChange::EndpointPut(ep) => !ep.dns_name.is_empty() || named(&ep.id),
        RowChange::EndpointDeleted(id) => named(id),
        RowChange::PeerPut(_)
        | RowChange::PeerDeleted(_)
        | RowChange::NetworkPut(_)
        | RowChange::NetworkDeleted(_) => false,
    }
}

impl Journal {
    /// Notes `change`, about to be applied to `tables`.
    fn note(&mut self, tables: &Tables, change: &RowChange) {
        let (id, after) = match change {
            RowChange::EndpointPut(ep) => (&ep.id, Some(ep.clone())),
            RowChange::EndpointDeleted(id) => (id, None),
            // DNS records are not in the datapath.
            RowChange::RecordPut(_) | RowChange::RecordDeleted(_) => return,
            RowChange::PeerPut(_)
            | RowChange::PeerDeleted(_)
            | RowChange::NetworkPut(_)
            | RowChange::NetworkDeleted(_) => return self.everything(),
        };
        if self.everything {
            return;
        }
        if self.endpoints.len() >= JOURNAL_LIMIT {
            return self.everything();
        }
        self.endpoints
            .push((tables.endpoints.get(id).cloned(), after));
    }

    fn everything(&mut self) {
        self.everything = true;
        self.endpoints.clear();
    }
}

pub struct TablesCopy {
    /// This host's peer name: "local" endpoints are those of this peer.
    me: String,
    /// `None` until the first snapshot.
    tables: RwLock<Option<Tables>>,
    /// The revision of `tables`, for those waiting for a change of theirs to arrive.
    revision: watch::Sender<u64>,
    /// Wakes the reconciler: the tables changed, or a pass was asked for.
    changed: Notify,
    /// The latest revision the controller gave for a change this agent asked for.
    own_revision: AtomicU64,
    /// The controller store the tables come from, and the rule against following another.
    following: Arc<Following>,
    /// Changed with `tables`, under its write lock.
    journal: Mutex<Journal>,
    /// The names DNS serves may have changed since [`TablesCopy::take_names_changed`].
    names_changed: AtomicBool,
}

/// How a watch started: with the whole tables, or from the agent's own revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WatchStart {
    #[default]
    None,
    Snapshot,
    Resume {
        /// The deltas that followed to catch up.
        missed: u64,
    },
}

impl TablesCopy {
    pub fn new(me: String, following: Arc<Following>) -> TablesCopy {
        TablesCopy {
            me,
            tables: RwLock::new(None),
            revision: watch::Sender::new(0),
            changed: Notify::new(),
            own_revision: AtomicU64::new(0),
            following,
            journal: Mutex::new(Journal {
                everything: true,
                ..Journal::default()
            }),
            names_changed: AtomicBool::new(true),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn following(&self) -> &Following {
        &self.following
    }

    /// The revision the tables are at; 0 before the first snapshot.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Resolves once the first snapshot has arrived.
    pub async fn wait_for_tables(&self) {
        let mut seen = self.revision.subscribe();
        let _ = seen.wait_for(|have| *have > 0).await;
    }

    /// Reads the tables; `None` until the first snapshot has arrived.
    pub fn read<T>(&self, read: impl FnOnce(&Tables) -> T) -> Option<T> {
        self.tables
            .read()
            .expect("tables lock poisoned")
            .as_ref()
            .map(read)
    }

    /// Reads the tables with what changed in them since the last call (the first: everything);
    /// `None` until the first snapshot has arrived.
    pub fn read_changes<T>(&self, read: impl FnOnce(&Tables, Journal) -> T) -> Option<T> {
        let tables = self.tables.read().expect("tables lock poisoned");
        let tables = tables.as_ref()?;
        let journal = std::mem::take(&mut *self.journal.lock().expect("journal lock poisoned"));
        Some(read(tables, journal))
    }

    /// Whether the names DNS serves may have changed since the last call (the first: yes).
    pub fn take_names_changed(&self) -> bool {
        self.names_changed.swap(false, Ordering::SeqCst)
    }

    /// Whether `tables` (read from this copy) hold every change this agent made: only then can
    /// they say that a veth or an endpoint is stale, since older ones may not yet show one that
    /// a detach and a new attach have replaced.
    pub fn is_fresh(&self, tables: &Tables) -> bool {
        tables.revision >= self.own_revision.load(Ordering::SeqCst)
    }

    /// This host's container endpoints that `keep` selects, from tables that are fresh (none
    /// from older ones).
    pub fn fresh_local_endpoints(&self, keep: impl Fn(&EndpointRow) -> bool) -> Vec<EndpointRow> {
        self.read(|t| {
            if !self.is_fresh(t) {
                return Vec::new();
            }
            t.endpoints_on(&self.me)
                .filter(|ep| ep.id.container != EXPOSE_ID)
                .filter(|ep| keep(ep))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
    }

    /// The endpoint as the tables hold it now, if they are fresh and it still has the MAC it
    /// had.
    pub fn current(&self, ep: &EndpointRow) -> Option<EndpointRow> {
        self.read(|t| {
            t.endpoints
                .get(&ep.id)
                .filter(|now| self.is_fresh(t) && now.mac == ep.mac)
                .cloned()
        })
        .flatten()
    }

    /// Notes `revision` as the controller's answer to a change this agent asked for.
    pub fn made(&self, revision: u64) {
        self.own_revision.fetch_max(revision, Ordering::SeqCst);
    }

    /// Waits until the tables hold `revision`, the controller's answer to a change this agent
    /// asked for: what the agent does, shows and resolves next then includes that change, and no
    /// reconcile from older tables undoes it. Gives up (with a warning) after CATCH_UP_TIMEOUT.
    pub async fn caught_up(&self, revision: u64) {
        self.made(revision);
        let mut seen = self.revision.subscribe();
        let wait = seen.wait_for(|have| *have >= revision);
        if tokio::time::timeout(CATCH_UP_TIMEOUT, wait).await.is_err() {
            warn!(
                revision,
                "the controller's change has not arrived through the watch yet"
            );
        }
    }

    /// Asks the reconciler for a pass, e.g. after a detach emptied a network on this host.
    pub fn request_reconcile(&self) {
        self.changed.notify_one();
    }

    /// Resolves at the next [`TablesCopy::request_reconcile`] or change of the tables (or at
    /// once if one came since the last wait).
    pub async fn reconcile_requested(&self) {
        self.changed.notified().await
    }

    /// Takes the controller's word on its store and revision, or refuses its tables, keeping
    /// the refusal in the state dir at once.
    fn admit(&self, store_id: String, revision: u64) -> anyhow::Result<Position> {
        let offered = Position { store_id, revision };
        if let Err(why) = self.following.admit(&offered) {
            if let Err(e) = self.following.save() {
                warn!("cannot record the refusal in the state dir: {e}");
            }
            bail!("refusing the controller's tables: {why}; the datapath stays as it is");
        }
        Ok(offered)
    }

    /// Takes one event of the watch into the tables and wakes the reconciler. Returns how the
    /// watch started when the event starts one (a snapshot or a resume).
    pub fn apply(&self, event: WatchEvent) -> anyhow::Result<Option<WatchStart>> {
        let mut tables = self.tables.write().expect("tables lock poisoned");
        let start = match event.event {
            Some(Event::Snapshot(snapshot)) => {
                let offered = self.admit(event.store_id, event.revision)?;
                info!(revision = event.revision, store = %offered.store_id, "snapshot received");
                let (read, refused) =
                    Tables::from_snapshot(event.revision, offered.store_id, snapshot);
                for bad in refused {
                    warn!(
                        revision = event.revision,
                        "refused a row of the snapshot: {bad}"
                    );
                }
                *tables = Some(read);
                self.journal
                    .lock()
                    .expect("journal lock poisoned")
                    .everything();
                crate::metrics::METRICS.snapshot_applied();
                Some(WatchStart::Snapshot)
            }
            Some(Event::Delta(delta)) => {
                let Some(current) = tables.as_mut() else {
                    bail!("controller sent a delta before any snapshot");
                };
                if event.revision != current.revision + 1 {
                    bail!(
                        "controller skipped from revision {} to {}",
                        current.revision,
                        event.revision
                    );
                }
                let Some(change) = delta.change else {
                    bail!(
                        "controller sent an empty delta at revision {}",
                        event.revision
                    );
                };
                debug!(revision = event.revision, ?change, "delta");
                match RowChange::read(change) {
                    Ok(change) => {
                        let mut journal = self.journal.lock().expect("journal lock poisoned");
                        journal.note(current, &change);
                        if changes_names(current, &change) {
                            self.names_changed.store(true, Ordering::SeqCst);
                        }
                        current.apply(change);
                    }
                    // The tables keep what they had; the revision counts all the same.
                    Err(bad) => {
                        warn!(revision = event.revision, "refused a row of a delta: {bad}");
                        current.revision += 1;
                    }
                }
                self.following.advance(current.revision);
                None
            }
            Some(Event::Resumed(resumed)) => {
                let at = tables.as_ref().map(|t| t.revision);
                self.admit(event.store_id, event.revision)?;
                if at != Some(event.revision) {
                    bail!(
                        "controller resumed at revision {} but the tables are at {at:?}",
                        event.revision
                    );
                }
                info!(
                    revision = event.revision,
                    missed = resumed.missed,
                    "resumed"
                );
                Some(WatchStart::Resume {
                    missed: resumed.missed,
                })
            }
            None => bail!(
                "controller sent an empty event at revision {}",
                event.revision
            ),
        };
        if let Some(current) = tables.as_ref() {
            self.revision.send_replace(current.revision);
        }
        self.changed.notify_one();
        Ok(start)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use weft_proto::v1::{Delta, Endpoint, Snapshot, delta::Change};

    use super::*;

    fn ep(container: &str, mac: &str) -> Endpoint {
        Endpoint {
            peer: "host2".into(),
            network: "default".into(),
            container_id: container.into(),
            mac: mac.into(),
            cidrs: vec!["10.32.0.5/12".into()],
            ..Endpoint::default()
        }
    }

    fn delta(revision: u64, change: Change) -> WatchEvent {
        WatchEvent {
            revision,
            event: Some(Event::Delta(Delta {
                change: Some(change),
            })),
            store_id: String::new(),
        }
    }

    fn containers(copy: &TablesCopy) -> Vec<String> {
        let held = copy.read(|t| {
            t.endpoints
                .values()
                .map(|e| e.id.container.clone())
                .collect()
        });
        held.unwrap_or_default()
    }

    #[test]
    fn rows_that_do_not_read_are_refused_as_they_arrive() {
        let following = Arc::new(Following::load(Path::new("/nonexistent")));
        let copy = TablesCopy::new("host1".into(), following);
        let snapshot = Snapshot {
            endpoints: vec![ep("good", "02:00:0a:20:00:05"), ep("bad", "02:00")],
            ..Snapshot::default()
        };
        let event = WatchEvent {
            revision: 7,
            event: Some(Event::Snapshot(snapshot)),
            store_id: "s1".into(),
        };
        copy.apply(event).unwrap();
        assert_eq!(containers(&copy), ["good"]);

        // A delta whose row does not read changes nothing but still counts its revision, so
        // the next one follows on.
        copy.apply(delta(8, Change::EndpointPut(ep("good", "zz"))))
            .unwrap();
        copy.apply(delta(
            9,
            Change::EndpointPut(ep("new", "02:00:0a:20:00:06")),
        ))
        .unwrap();
        assert_eq!(containers(&copy), ["good", "new"]);
        let good_mac = copy.read(|t| {
            let good = t.endpoints.values().find(|e| e.id.container == "good");
            good.map(|e| e.mac.to_string())
        });
        assert_eq!(good_mac.flatten().as_deref(), Some("02:00:0a:20:00:05"));
        assert_eq!(copy.read(|t| t.revision), Some(9));
    }
}
