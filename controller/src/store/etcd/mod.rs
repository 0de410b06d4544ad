//! The tables in etcd (`--store etcd`). Under the prefix (`--etcd-prefix`, default `/weft/`):
//! - `meta/format`, `meta/store_id`: as in the redb store;
//! - `meta/revision`: the revision of the last commit;
//! - `meta/turn`: while a controller that lost a race commits (its id, with a short lease);
//! - `log/<first>`: one commit, a `Commit` of the changes of revisions `first` on;
//! - `meta/base` and `snapshot/<base>/<part>`: the tables as of revision `base`, in the parts
//!   a watch's snapshot comes in. The tables are those with the log after `base` applied.
//!
//! Numbers in keys are zero-padded to 20 digits, so keys sort as revisions do. A commit is one
//! transaction whatever its size (etcd allows 128 operations in one): its log entry and the new
//! revision, on condition that `meta/revision` is still what this controller last wrote or read.
//! That fences every controller on the prefix: one whose store moved on (another controller
//! committed, or a commit of its own timed out and landed after all) commits nothing, reads the
//! log entries it lacks ([`EtcdStore::catch_up`]) and plans again, holding the turn
//! ([`EtcdStore::take_turn`]): no commit but the turn holder's lands while it is held, so a
//! controller that loses once wins next, however busy the others. Each controller also follows
//! `meta/revision` ([`RevisionWatch`]) to apply the others' commits as they come. Once the log
//! after the base is longer than the changes kept, a new snapshot is written and the older log
//! goes.

mod ca;
mod kv;
mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use prost::Message;
use tracing::{info, warn};
use weft_proto::rows::RowChange;
use weft_proto::snapshot;
use weft_proto::tables::Tables;
use weft_proto::v1::{Commit, Delta, Snapshot, WatchEvent, watch_event::Event};

pub use ca::shared_ca;
pub use kv::{EtcdConfig, EtcdKv, EtcdTls};
pub use watch::RevisionWatch;

use super::{DELTAS_KEPT, STORE_FORMAT, StoreError};
use crate::tokens::random_hex;

/// How long the turn outlives a controller that dies holding it, at most.
const TURN_TTL: Duration = Duration::from_secs(2);
/// How long one lease serves for the turns a controller takes: so a turn it takes lives at
/// least TURN_TTL less this, far longer than the one commit it is for.
const TURN_LEASE_REUSED: Duration = Duration::from_millis(500);
/// How long a controller waits for another's turn: past its lease, it is a fault.
const TURN_WAIT: Duration = Duration::from_secs(3);
/// How often a controller that waits for the turn looks (a read; a turn lasts one commit).
const TURN_POLL: Duration = Duration::from_millis(1);

pub struct EtcdStore {
    kv: EtcdKv,
    /// This process's id in `meta/turn`.
    me: String,
    /// Whether this controller holds the turn.
    turn: bool,
    /// The lease of the turns it takes, and when it was granted.
    lease: Option<(i64, Instant)>,
    /// The log entries after revision `.0`, read as the turn was taken: what catching up reads.
    read_ahead: Option<(u64, Vec<Vec<u8>>)>,
    kept: u64,
    /// The revision of the last commit that succeeded (or of the tables loaded).
    committed: u64,
    /// The revision of the snapshot the log starts after.
    base: u64,
    /// The revision before which no snapshot is tried again (one failed).
    settle_from: u64,
    /// Each log entry after the base: (first, last) revision.
    log: VecDeque<(u64, u64)>,
    /// The changes the log held when loaded, for [`EtcdStore::history`].
    loaded: VecDeque<WatchEvent>,
}

/// What a store in etcd holds, as read at one etcd revision.
struct Held {
    tables: Tables,
    base: u64,
    log: VecDeque<(u64, u64)>,
    /// Every change after the base, as deltas.
    changes: VecDeque<WatchEvent>,
}

fn num(n: u64) -> String {
    format!("{n:020}")
}

impl EtcdStore {
    /// Connects, and loads the tables of the store under the prefix; makes a store there if
    /// there is none.
    pub fn open(config: &EtcdConfig) -> Result<(EtcdStore, Tables), StoreError> {
        let mut store = EtcdStore::connect(config)?;
        let held = match store.load()? {
            Some(held) => held,
            None => {
                store.create()?;
                store
                    .load()?
                    .ok_or_else(|| store.kv.err_msg("made, yet not there"))?
            }
        };
        info!(store = %config, revision = held.tables.revision, base = held.base, "store loaded from etcd");
        store.committed = held.tables.revision;
        store.base = held.base;
        store.log = held.log;
        store.loaded = held.changes;
        Ok((store, held.tables))
    }

    /// The tables of the store under the prefix, all read at one etcd revision.
    pub fn read(config: &EtcdConfig) -> Result<Tables, StoreError> {
        let store = EtcdStore::connect(config)?;
        match store.load()? {
            Some(held) => Ok(held.tables),
            None => Err(StoreError::NoStore {
                path: store.kv.at(),
                how: "holds no store",
            }),
        }
    }

    /// Puts `tables` (a backup's) under the prefix, which must hold no store: as a snapshot at
    /// their revision, with no log after it.
    pub fn restore(config: &EtcdConfig, tables: &Tables) -> Result<(), StoreError> {
        let store = EtcdStore::connect(config)?;
        if let Some(held) = store.load()? {
            return Err(StoreError::NotEmpty {
                path: store.kv.at(),
                held: held.tables.store_id,
                revision: held.tables.revision,
                way_out: "give another --etcd-prefix, or remove this one's keys first",
            });
        }
        let revision = tables.revision;
        store.put_snapshot(tables)?;
        if !store.put_meta(&tables.store_id, revision)? {
            // Unless it is this restore's own, answered late and asked again.
            let ours = store.load()?.is_some_and(|held| {
                held.tables.store_id == tables.store_id && held.tables.revision == revision
            });
            if !ours {
                store
                    .kv
                    .delete_prefix(&format!("snapshot/{}/", num(revision)))?;
                return Err(store.kv.err_msg("another store was put there meanwhile"));
            }
        }
        Ok(())
    }

    fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        Ok(EtcdStore {
            kv: EtcdKv::connect(config)?,
            me: random_hex(8),
            turn: false,
            lease: None,
            read_ahead: None,
            kept: DELTAS_KEPT,
            committed: 0,
            base: 0,
            settle_from: 0,
            log: VecDeque::new(),
            loaded: VecDeque::new(),
        })
    }

    /// What the store holds, read at one etcd revision; None if there is no store.
    fn load(&self) -> Result<Option<Held>, StoreError> {
        let (meta, at) = self.kv.get_prefix("meta/", 0)?;
        let meta: BTreeMap<String, String> = meta
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let Some(store_id) = meta.get("meta/store_id").cloned() else {
            return Ok(None);
        };
        let number = |name: &str| -> Result<u64, StoreError> {
            let value = meta.get(name).map_or("0", String::as_str);
            value.parse().map_err(|_| {
                self.kv
                    .err_msg(&format!("{name} is {value:?}, not a number"))
            })
        };
        let format = number("meta/format")?;
        if format > STORE_FORMAT {
            return Err(StoreError::Newer {
                path: self.kv.at(),
                held: format,
            });
        }
        let (revision, base) = (number("meta/revision")?, number("meta/base")?);
        let bad = |row| StoreError::BadRow {
            path: self.kv.at(),
            row,
        };
        let decode_err = |cause| StoreError::Decode {
            path: self.kv.at(),
            cause,
        };
        let mut whole = Snapshot::default();
        let (parts, _) = self
            .kv
            .get_prefix(&format!("snapshot/{}/", num(base)), at)?;
        for (_, part) in parts {
            let part = Snapshot::decode(part.as_slice()).map_err(decode_err)?;
            whole.peers.extend(part.peers);
            whole.networks.extend(part.networks);
            whole.endpoints.extend(part.endpoints);
            whole.dns_records.extend(part.dns_records);
        }
        let (mut tables, refused) = Tables::from_snapshot(base, store_id, whole);
        if let Some(row) = refused.into_iter().next() {
            return Err(bad(row));
        }
        let mut log = VecDeque::new();
        let mut changes = VecDeque::new();
        let (entries, _) = self.kv.get_prefix("log/", at)?;
        for (_, entry) in entries {
            let commit = Commit::decode(entry.as_slice()).map_err(decode_err)?;
            let last = commit.first + commit.changes.len() as u64 - 1;
            if last <= base {
                continue; // older than the snapshot, not yet deleted
            }
            if commit.first != tables.revision + 1 {
                return Err(self.kv.err_msg(&format!(
                    "the log goes from revision {} to {}",
                    tables.revision, commit.first
                )));
            }
            log.push_back((commit.first, last));
            for (at, delta) in (commit.first..).zip(commit.changes) {
                let change = delta
                    .change
                    .clone()
                    .ok_or_else(|| self.kv.err_msg("an empty change"))?;
                tables.apply(RowChange::read(change).map_err(bad)?);
                tables.revision = at;
                changes.push_back(WatchEvent {
                    revision: at,
                    event: Some(Event::Delta(delta)),
                    store_id: String::new(),
                });
            }
        }
        if tables.revision != revision {
            return Err(self.kv.err_msg(&format!(
                "meta/revision is {revision}, yet the log ends at {}",
                tables.revision
            )));
        }
        Ok(Some(Held {
            tables,
            base,
            log,
            changes,
        }))
    }

    /// Makes an empty store under the prefix, unless another controller just did.
    fn create(&self) -> Result<(), StoreError> {
        let id = random_hex(16);
        if self.put_meta(&id, 0)? {
            info!(store_id = %id, store = %self.kv.config(), "made a new store in etcd");
        }
        Ok(())
    }

    /// Makes the store `id`, at `revision` with its base there, unless a store is there
    /// already; whether it did.
    fn put_meta(&self, id: &str, revision: u64) -> Result<bool, StoreError> {
        let meta = [
            ("format", STORE_FORMAT.to_string()),
            ("store_id", id.to_string()),
            ("revision", revision.to_string()),
            ("base", revision.to_string()),
        ];
        let puts: Vec<TxnOp> = meta
            .iter()
            .map(|(k, v)| TxnOp::put(self.kv.key(&format!("meta/{k}")), v.as_str(), None))
            .collect();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.kv.key("meta/store_id"),
                CompareOp::Equal,
                0,
            )])
            .and_then(puts);
        Ok(self.kv.txn(txn)?.succeeded())
    }

    /// Writes the parts of a snapshot of `tables` at their revision (each part one put: a
    /// transaction of them all could pass etcd's request limit).
    fn put_snapshot(&self, tables: &Tables) -> Result<(), StoreError> {
        let dir = format!("snapshot/{}/", num(tables.revision));
        for (i, part) in snapshot::parts(tables).into_iter().enumerate() {
            let Some(Event::Snapshot(part)) = part.event else {
                continue;
            };
            self.kv
                .put(self.kv.key(&format!("{dir}{i:06}")), part.encode_to_vec())?;
        }
        Ok(())
    }

    pub fn keep_changes(&mut self, n: u64) {
        self.kept = n.max(1);
    }

    pub fn kept(&self) -> u64 {
        self.kept
    }

    /// The changes kept that lead up to `revision`: those of the log as loaded.
    pub fn history(&mut self, revision: u64) -> Result<VecDeque<WatchEvent>, StoreError> {
        let mut history = std::mem::take(&mut self.loaded);
        if history.back().is_some_and(|e| e.revision != revision) {
            return Ok(VecDeque::new());
        }
        let excess = history.len().saturating_sub(self.kept as usize);
        history.drain(..excess);
        Ok(history)
    }

    /// Writes `changes` (revisions up to `revision`) as one log entry with the new revision, if
    /// the store is still at the revision of this controller's last commit.
    pub fn commit(
        &mut self,
        changes: &[weft_proto::v1::delta::Change],
        revision: u64,
    ) -> Result<(), StoreError> {
        let first = revision + 1 - changes.len() as u64;
        let entry = Commit {
            first,
            changes: changes
                .iter()
                .map(|c| Delta {
                    change: Some(c.clone()),
                })
                .collect(),
        };
        let entry = entry.encode_to_vec();
        self.read_ahead = None;
        let turn = self.kv.key("meta/turn");
        let mut when = vec![Compare::value(
            self.kv.key("meta/revision"),
            CompareOp::Equal,
            self.committed.to_string(),
        )];
        let mut ops = vec![
            TxnOp::put(self.log_key(first), entry.clone(), None),
            TxnOp::put(self.kv.key("meta/revision"), revision.to_string(), None),
        ];
        if self.turn {
            when.push(Compare::value(
                turn.clone(),
                CompareOp::Equal,
                self.me.clone(),
            ));
            ops.push(TxnOp::delete(turn.clone(), None));
        } else {
            // A controller that lost a race goes first.
            when.push(Compare::create_revision(turn.clone(), CompareOp::Equal, 0));
        }
        // Lost: in the same request, what the store holds now and who holds the turn; and the
        // turn, if free and a lease is at hand (a commit grants none: under contention one is,
        // and a lost race costs one write more than a win, not four).
        let holder = TxnOp::get(turn.clone(), None);
        let take_turn = match self.lease_at_hand() {
            Some(lease) => TxnOp::txn(
                Txn::new()
                    .when([Compare::create_revision(turn.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        turn,
                        self.me.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([holder]),
            ),
            None => holder,
        };
        let lost = [
            TxnOp::get(self.kv.key("meta/revision"), None),
            TxnOp::get(self.log_key(self.committed + 1), Some(self.rest_of_log())),
            take_turn,
        ];
        let answer = self
            .kv
            .txn(Txn::new().when(when).and_then(ops).or_else(lost))?;
        if !answer.succeeded() {
            let [TxnOpResponse::Get(held), TxnOpResponse::Get(log), turn] =
                &answer.op_responses()[..]
            else {
                return Err(self.kv.err_msg("a transaction answered out of shape"));
            };
            let held: u64 = held
                .kvs()
                .first()
                .and_then(|kv| String::from_utf8_lossy(kv.value()).parse().ok())
                .unwrap_or(0);
            let mine = |holder: &TxnOpResponse| {
                matches!(holder, TxnOpResponse::Get(got)
                    if got.kvs().first().is_some_and(|kv| kv.value() == self.me.as_bytes()))
            };
            self.turn = match turn {
                TxnOpResponse::Txn(taken) => {
                    taken.succeeded() || taken.op_responses().iter().any(mine)
                }
                holder => mine(holder),
            };
            let log: Vec<Vec<u8>> = log.kvs().iter().map(|kv| kv.value().to_vec()).collect();
            // Landed unanswered the first time, and asked again: it is there as written.
            let ours = held == revision && log.first() == Some(&entry);
            if ours {
                self.end_turn();
            } else {
                if self.turn {
                    // Nothing can land while this controller holds the turn.
                    self.read_ahead = Some((self.committed, log));
                }
                return Err(if held == self.committed {
                    StoreError::Turn {
                        path: self.kv.at(),
                        waited: false,
                    }
                } else {
                    StoreError::Moved {
                        path: self.kv.at(),
                        held,
                        expected: self.committed,
                    }
                });
            }
        }
        // A turn held went with the commit.
        self.turn = false;
        self.committed = revision;
        self.log.push_back((first, revision));
        Ok(())
    }

    fn log_key(&self, first: u64) -> String {
        self.kv.key(&format!("log/{}", num(first)))
    }

    /// Every key from a log key to the end of `log/` ('0' follows '/').
    fn rest_of_log(&self) -> GetOptions {
        GetOptions::new().with_range(self.kv.key("log0"))
    }

    /// The lease the turn is taken with: one for all turns taken within TURN_LEASE_REUSED, so
    /// a lost race costs no grant of its own.
    fn turn_lease(&mut self) -> Result<i64, StoreError> {
        if let Some(lease) = self.lease_at_hand() {
            return Ok(lease);
        }
        let granted = Instant::now();
        let lease = self.kv.grant_lease(TURN_TTL)?;
        self.lease = Some((lease, granted));
        Ok(lease)
    }

    /// A lease granted within TURN_LEASE_REUSED.
    fn lease_at_hand(&self) -> Option<i64> {
        self.lease
            .filter(|(_, granted)| granted.elapsed() < TURN_LEASE_REUSED)
            .map(|(lease, _)| lease)
    }

    /// Takes the turn to commit next (`meta/turn`) once no other controller holds it: after
    /// losing a race, so that this controller's next commit cannot be beaten by that of one that
    /// did not lose (else the quickest controller wins every race and the others' requests fail
    /// after all their replans). It goes with that commit, or [`EtcdStore::end_turn`]; with its
    /// lease, TURN_TTL after a controller that died holding it.
    pub fn take_turn(&mut self) -> Result<(), StoreError> {
        if self.turn {
            return Ok(());
        }
        let key = self.kv.key("meta/turn");
        let lease = self.turn_lease()?;
        let deadline = Instant::now() + TURN_WAIT;
        loop {
            let take = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    self.me.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if self.kv.txn(take)?.succeeded() {
                self.turn = true;
                return Ok(());
            }
            while self.kv.get_one(&key)?.is_some() {
                if Instant::now() >= deadline {
                    return Err(StoreError::Turn {
                        path: self.kv.at(),
                        waited: true,
                    });
                }
                std::thread::sleep(TURN_POLL);
            }
        }
    }

    /// Gives up the turn if this controller still holds it (its batch changed nothing, or its
    /// commit failed).
    pub fn end_turn(&mut self) {
        self.read_ahead = None;
        if !std::mem::take(&mut self.turn) {
            return;
        }
        let key = self.kv.key("meta/turn");
        let give_up = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.me.clone(),
            )])
            .and_then([TxnOp::delete(key, None)]);
        if let Err(e) = self.kv.txn(give_up) {
            warn!(
                "cannot give up the turn to commit, it ends with its lease within {TURN_TTL:?}: {e}"
            );
        }
    }

    /// The changes other controllers committed after this one's last commit (or catch-up), in
    /// order, each read into a typed row: they lead on from revision `committed` + 1.
    pub fn catch_up(&mut self) -> Result<Vec<RowChange>, StoreError> {
        let log = match self.read_ahead.take() {
            Some((after, log)) if after == self.committed && self.turn => log,
            _ => {
                let (from, options) = (self.log_key(self.committed + 1), self.rest_of_log());
                let got = self.kv.request(|mut kv| {
                    let (from, options) = (from.clone(), options.clone());
                    async move { kv.get(from, Some(options)).await }
                })?;
                got.kvs().iter().map(|kv| kv.value().to_vec()).collect()
            }
        };
        let (mut committed, mut entries) = (self.committed, Vec::new());
        let mut rows = Vec::new();
        for entry in log {
            let commit = Commit::decode(entry.as_slice()).map_err(|cause| StoreError::Decode {
                path: self.kv.at(),
                cause,
            })?;
            if commit.first != committed + 1 {
                return Err(StoreError::Outrun {
                    path: self.kv.at(),
                    at: committed,
                    starts: commit.first,
                });
            }
            let last = commit.first + commit.changes.len() as u64 - 1;
            for delta in commit.changes {
                let change = delta
                    .change
                    .ok_or_else(|| self.kv.err_msg("an empty change"))?;
                rows.push(RowChange::read(change).map_err(|row| StoreError::BadRow {
                    path: self.kv.at(),
                    row,
                })?);
            }
            entries.push((commit.first, last));
            committed = last;
        }
        self.committed = committed;
        self.log.extend(entries);
        Ok(rows)
    }

    /// The store's connection, for the CA and join tokens kept beside it.
    pub fn kv(&self) -> &EtcdKv {
        &self.kv
    }

    /// A watch of the store's revision, for following other controllers' commits.
    pub fn revision_watch(&self) -> RevisionWatch {
        RevisionWatch::new(&self.kv)
    }

    /// Writes a snapshot of `tables` once the log after the base holds more changes than are
    /// kept, then deletes the old snapshot and the log before the changes kept. A failure
    /// leaves the store as it was (a longer log), logged; no snapshot is tried again for a
    /// tenth of the changes kept (each try writes all the tables into etcd's history).
    pub fn settle(&mut self, tables: &Tables) {
        if tables.revision != self.committed
            || self.committed - self.base <= self.kept
            || self.committed < self.settle_from
        {
            return;
        }
        let base = tables.revision;
        let key = self.kv.key("meta/base");
        let number = |got: Option<&[u8]>| got.and_then(|v| String::from_utf8_lossy(v).parse().ok());
        // Another controller's snapshot may be newer than the one this controller knows.
        if let Ok(got) = self.kv.get_one(&key)
            && let Some(held) = number(got.as_ref().map(|(v, ..)| v.as_slice()))
            && held > self.base
        {
            self.base = held;
            if self.committed - held <= self.kept {
                return;
            }
        }
        let written = (|| -> Result<u64, StoreError> {
            self.put_snapshot(tables)?;
            // Another controller's snapshot may have come meanwhile (at a revision of its
            // own); the base only moves on from the one this controller knows.
            let txn = Txn::new()
                .when([Compare::value(
                    key.clone(),
                    CompareOp::Equal,
                    self.base.to_string(),
                )])
                .and_then([TxnOp::put(key.clone(), base.to_string(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let answer = self.kv.txn(txn)?;
            if answer.succeeded() {
                return Ok(base);
            }
            let held = answer.op_responses().into_iter().find_map(|got| match got {
                TxnOpResponse::Get(got) => number(got.kvs().first().map(|kv| kv.value())),
                _ => None,
            });
            // Landed unanswered the first time, and asked again: ours.
            held.ok_or_else(|| self.kv.err_msg("meta/base is gone"))
        })();
        match written {
            Ok(held) if held == base => {}
            failed => {
                match failed {
                    Ok(held) => {
                        info!(base = held, "another controller wrote a snapshot first");
                        self.base = self.base.max(held);
                    }
                    Err(e) => {
                        warn!("cannot write a snapshot of the tables at revision {base}: {e}")
                    }
                }
                self.settle_from = self.committed + self.kept.div_ceil(10);
                let _ = self.kv.delete_prefix(&format!("snapshot/{}/", num(base)));
                return;
            }
        }
        self.base = base;
        let cutoff = (base + 1).saturating_sub(self.kept);
        while self.log.front().is_some_and(|&(_, last)| last < cutoff) {
            self.log.pop_front();
        }
        let keep_from = self.log.front().map_or(base + 1, |&(first, _)| first);
        let (from, to) = (self.kv.key("log/"), self.log_key(keep_from));
        // Every older snapshot, also one another controller wrote.
        let (older, ours) = (
            self.kv.key("snapshot/"),
            self.kv.key(&format!("snapshot/{}/", num(base))),
        );
        let pruned = self
            .kv
            .delete(from, DeleteOptions::new().with_range(to))
            .and_then(|()| self.kv.delete(older, DeleteOptions::new().with_range(ours)));
        match pruned {
            Ok(()) => info!(base, "wrote a snapshot of the tables to etcd"),
            Err(e) => warn!(
                base,
                "wrote a snapshot, but the old one or the log stays: {e}"
            ),
        }
    }
}
