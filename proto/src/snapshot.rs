//! A snapshot travels in parts of a few hundred endpoints. One message of all the tables (about
//! 10 MB at 100,000 endpoints) would be built, buffered and decoded whole on both ends, and
//! gRPC's per-stream buffers keep the capacity a message needed for as long as the watch stays
//! open: a controller would hold one such buffer per watching agent. A watcher gets parts only
//! if it asks for them (`WatchRequest.snapshot_in_parts`): an agent from before parts would take
//! the first for the whole tables.

use crate::rows::{NetworkRow, PeerRow, RecordRow};
use crate::tables::Tables;
use crate::v1::{Snapshot, WatchEvent, watch_event::Event};

/// Endpoints per part: a part encodes to about 12 KB, below the 32 KB at which gRPC hands its
/// buffer to the connection.
pub const ENDPOINTS_PER_PART: usize = 128;

/// The tables as the events a watch from scratch starts with: peers, networks and DNS records
/// in the first part, endpoints spread over all of them, `more` set on all but the last.
pub fn parts(tables: &Tables) -> Vec<WatchEvent> {
    let endpoints: Vec<_> = tables.endpoints.values().collect();
    let chunks: Vec<_> = endpoints.chunks(ENDPOINTS_PER_PART).collect();
    let count = chunks.len().max(1);
    (0..count)
        .map(|i| {
            let first = i == 0;
            let snapshot = Snapshot {
                peers: if first {
                    tables.peers.values().map(PeerRow::wire).collect()
                } else {
                    Vec::new()
                },
                networks: if first {
                    tables.networks.values().map(NetworkRow::wire).collect()
                } else {
                    Vec::new()
                },
                dns_records: if first {
                    tables.dns_records.values().map(RecordRow::wire).collect()
                } else {
                    Vec::new()
                },
                endpoints: chunks
                    .get(i)
                    .map_or_else(Vec::new, |c| c.iter().map(|ep| ep.wire()).collect()),
                more: i + 1 < count,
            };
            WatchEvent {
                revision: tables.revision,
                event: Some(Event::Snapshot(snapshot)),
                store_id: tables.store_id.clone(),
            }
        })
        .collect()
}

/// The snapshot that [`parts`] split, as one event: for a watcher that reads a snapshot as one
/// message.
pub fn whole(parts: &[WatchEvent]) -> WatchEvent {
    let mut whole = Snapshot::default();
    for part in parts {
        if let Some(Event::Snapshot(part)) = &part.event {
            whole.peers.extend_from_slice(&part.peers);
            whole.networks.extend_from_slice(&part.networks);
            whole.dns_records.extend_from_slice(&part.dns_records);
            whole.endpoints.extend_from_slice(&part.endpoints);
        }
    }
    WatchEvent {
        revision: parts.first().map_or(0, |p| p.revision),
        event: Some(Event::Snapshot(whole)),
        store_id: parts
            .first()
            .map(|p| p.store_id.clone())
            .unwrap_or_default(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartsError {
    #[error("controller sent a part of the snapshot at revision {got} amid one at revision {at}")]
    MixedRevisions { at: u64, got: u64 },
    #[error("controller sent another event at revision {got} amid the snapshot at revision {at}")]
    Interrupted { at: u64, got: u64 },
}

/// Joins the parts of a snapshot as a watch delivers them.
#[derive(Debug, Default)]
pub struct Joiner {
    /// The parts so far: their revision, their store and the tables they hold.
    partial: Option<(u64, String, Snapshot)>,
}

impl Joiner {
    /// Takes the next event of the watch. Returns it when it is whole: a snapshot once its last
    /// part is in (as one snapshot without `more`), any other event as it is; `None` while a
    /// snapshot is incomplete.
    pub fn take(&mut self, event: WatchEvent) -> Result<Option<WatchEvent>, PartsError> {
        let WatchEvent {
            revision,
            event,
            store_id,
        } = event;
        let (revision, store_id, snapshot) = match (event, self.partial.take()) {
            (Some(Event::Snapshot(part)), None) => (revision, store_id, part),
            (Some(Event::Snapshot(part)), Some((at, store_id, mut so_far))) => {
                if at != revision {
                    return Err(PartsError::MixedRevisions { at, got: revision });
                }
                so_far.peers.extend(part.peers);
                so_far.networks.extend(part.networks);
                so_far.dns_records.extend(part.dns_records);
                so_far.endpoints.extend(part.endpoints);
                so_far.more = part.more;
                (at, store_id, so_far)
            }
            (_, Some((at, ..))) => return Err(PartsError::Interrupted { at, got: revision }),
            (other, None) => {
                return Ok(Some(WatchEvent {
                    revision,
                    event: other,
                    store_id,
                }));
            }
        };
        if snapshot.more {
            self.partial = Some((revision, store_id, snapshot));
            return Ok(None);
        }
        Ok(Some(WatchEvent {
            revision,
            event: Some(Event::Snapshot(snapshot)),
            store_id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::RowChange;
    use crate::v1::{Delta, Endpoint, Network, Peer, Resumed, delta::Change};

    fn tables(endpoints: usize) -> Tables {
        let mut t = Tables::default();
        let mut apply = |change: Change| t.apply(RowChange::read(change).unwrap());
        apply(Change::PeerPut(Peer {
            name: "host1".into(),
            advertise_addr: "198.18.0.1".into(),
            ..Default::default()
        }));
        apply(Change::NetworkPut(Network {
            name: "default".into(),
            subnet: "10.32.0.0/12".into(),
            vni: 1,
            ..Default::default()
        }));
        for i in 0..endpoints {
            apply(Change::EndpointPut(Endpoint {
                network: "default".into(),
                container_id: format!("c{i}"),
                peer: "host1".into(),
                mac: format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256),
                cidrs: vec![format!("10.32.{}.{}/12", i / 256, i % 256)],
                ..Default::default()
            }));
        }
        t
    }

    fn join_all(events: Vec<WatchEvent>) -> Vec<WatchEvent> {
        let mut joiner = Joiner::default();
        events
            .into_iter()
            .filter_map(|e| joiner.take(e).unwrap())
            .collect()
    }

    #[test]
    fn parts_join_into_the_tables() {
        for n in [0, 1, ENDPOINTS_PER_PART, ENDPOINTS_PER_PART + 1, 1000] {
            let t = tables(n);
            let parts = parts(&t);
            assert_eq!(parts.len(), n.div_ceil(ENDPOINTS_PER_PART).max(1), "{n}");
            let whole = join_all(parts);
            assert_eq!(
                whole.len(),
                1,
                "one snapshot from the parts of {n} endpoints"
            );
            let Some(Event::Snapshot(snapshot)) = whole[0].event.clone() else {
                panic!("not a snapshot: {:?}", whole[0]);
            };
            assert!(!snapshot.more);
            let (joined, refused) =
                Tables::from_snapshot(whole[0].revision, whole[0].store_id.clone(), snapshot);
            assert_eq!((joined, refused), (t, vec![]), "{n}");
        }
    }

    #[test]
    fn whole_is_the_tables_in_one_event() {
        for n in [0, ENDPOINTS_PER_PART + 1, 1000] {
            let t = tables(n);
            let whole = whole(&parts(&t));
            assert_eq!(whole.revision, t.revision);
            let Some(Event::Snapshot(snapshot)) = whole.event else {
                panic!("not a snapshot: {whole:?}");
            };
            assert!(!snapshot.more, "{n}");
            let (joined, refused) = Tables::from_snapshot(t.revision, t.store_id.clone(), snapshot);
            assert_eq!((joined, refused), (t.clone(), vec![]), "{n}");
        }
    }

    #[test]
    fn other_events_pass_and_may_not_interrupt_a_snapshot() {
        let delta = WatchEvent {
            revision: 9,
            event: Some(Event::Delta(Delta { change: None })),
            store_id: String::new(),
        };
        let mut joiner = Joiner::default();
        assert_eq!(joiner.take(delta.clone()), Ok(Some(delta.clone())));
        let resumed = WatchEvent {
            revision: 3,
            event: Some(Event::Resumed(Resumed { missed: 0 })),
            store_id: "s1".into(),
        };
        assert_eq!(joiner.take(resumed.clone()), Ok(Some(resumed)));

        let t = tables(2 * ENDPOINTS_PER_PART);
        let mut events = parts(&t).into_iter();
        assert_eq!(joiner.take(events.next().unwrap()), Ok(None));
        assert_eq!(
            joiner.take(delta),
            Err(PartsError::Interrupted {
                at: t.revision,
                got: 9
            })
        );
        // A part of a snapshot at another revision.
        let mut stray = events.next().unwrap();
        stray.revision += 1;
        let mut joiner = Joiner::default();
        assert_eq!(joiner.take(parts(&t).remove(0)), Ok(None));
        assert_eq!(
            joiner.take(stray),
            Err(PartsError::MixedRevisions {
                at: t.revision,
                got: t.revision + 1
            })
        );
    }
}
