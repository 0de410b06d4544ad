//! Where the controller keeps its tables (`--store`): the embedded redb store in `--data-dir`
//! ([`RedbStore`]), or etcd ([`EtcdStore`]). Either writes every batch of changes in one durable
//! transaction before the caller reports success, keeps the latest changes for agents that
//! resume, refuses a store of a newer format, and reads and restores consistent copies.

mod data_dir;
mod embedded;
mod error;
mod etcd;

use std::collections::VecDeque;
use std::path::PathBuf;

use weft_proto::tables::Tables;
use weft_proto::v1::{WatchEvent, delta::Change};

pub use data_dir::{Emptied, open_private_db};
pub use embedded::{MARKER_FILE, RedbStore, STORE_FILE};
pub use error::StoreError;
pub use etcd::{EtcdConfig, EtcdKv, EtcdStore, EtcdTls, RevisionWatch, shared_ca};

/// How many of the latest changes are kept unless told otherwise (`--history`): an agent
/// further behind gets a snapshot.
pub const DELTAS_KEPT: u64 = 50_000;
/// The format this controller writes: 1 is the tables since the first release.
pub const STORE_FORMAT: u64 = 1;

/// Where the tables are.
#[derive(Debug, Clone)]
pub enum Location {
    /// `weft.redb` in this data dir.
    Redb(PathBuf),
    Etcd(EtcdConfig),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Redb(dir) => write!(f, "{}", dir.join(STORE_FILE).display()),
            Location::Etcd(config) => write!(f, "{config}"),
        }
    }
}

pub enum Store {
    Redb(RedbStore),
    // Boxed: the etcd client is several hundred bytes, the redb handle a few words.
    Etcd(Box<EtcdStore>),
}

impl Store {
    /// Opens the redb store in `dir` and loads its tables (see [`RedbStore::open`]).
    pub fn open(dir: &std::path::Path, emptied: Emptied) -> Result<(Store, Tables), StoreError> {
        RedbStore::open(dir, emptied).map(|(store, tables)| (Store::Redb(store), tables))
    }

    /// Opens the store at `location` (made if there is none) and loads its tables.
    pub fn open_at(location: &Location, emptied: Emptied) -> Result<(Store, Tables), StoreError> {
        match location {
            Location::Redb(dir) => Store::open(dir, emptied),
            Location::Etcd(config) => EtcdStore::open(config)
                .map(|(store, tables)| (Store::Etcd(Box::new(store)), tables)),
        }
    }

    /// The tables of the store at `location`, read in one transaction, changing nothing.
    pub fn read(location: &Location) -> Result<Tables, StoreError> {
        match location {
            Location::Redb(dir) => RedbStore::read(dir),
            Location::Etcd(config) => EtcdStore::read(config),
        }
    }

    /// Puts `tables` (a backup's), with their identity and revision, into the empty store at
    /// `location`.
    pub fn restore(location: &Location, tables: &Tables) -> Result<(), StoreError> {
        match location {
            Location::Redb(dir) => RedbStore::restore(dir, tables),
            Location::Etcd(config) => EtcdStore::restore(config, tables),
        }
    }

    /// Keeps the latest `n` changes (at least one) from the next commit on.
    pub fn keep_changes(&mut self, n: u64) {
        match self {
            Store::Redb(s) => s.keep_changes(n),
            Store::Etcd(s) => s.keep_changes(n),
        }
    }

    /// How many of the latest changes are kept.
    pub fn kept(&self) -> u64 {
        match self {
            Store::Redb(s) => s.kept(),
            Store::Etcd(s) => s.kept(),
        }
    }

    /// The changes kept that lead up to `revision`, oldest first, as the deltas a watch sends.
    pub fn history(&mut self, revision: u64) -> Result<VecDeque<WatchEvent>, StoreError> {
        match self {
            Store::Redb(s) => s.history(revision),
            Store::Etcd(s) => s.history(revision),
        }
    }

    /// Writes `changes` and the revision they lead to in one durable transaction.
    pub fn commit(&mut self, changes: &[Change], revision: u64) -> Result<(), StoreError> {
        match self {
            Store::Redb(s) => s.commit(changes, revision),
            Store::Etcd(s) => s.commit(changes, revision),
        }
    }

    /// The changes other controllers committed since this one's last commit or catch-up, in
    /// order (none for redb, which has one writer).
    pub fn catch_up(&mut self) -> Result<Vec<weft_proto::rows::RowChange>, StoreError> {
        match self {
            Store::Redb(_) => Ok(Vec::new()),
            Store::Etcd(s) => s.catch_up(),
        }
    }

    /// After losing a race on etcd, waits for the turn to commit next (nothing on redb, which
    /// has one writer).
    pub fn take_turn(&mut self) -> Result<(), StoreError> {
        match self {
            Store::Redb(_) => Ok(()),
            Store::Etcd(s) => s.take_turn(),
        }
    }

    /// Gives up a turn that no commit used.
    pub fn end_turn(&mut self) {
        if let Store::Etcd(s) = self {
            s.end_turn()
        }
    }

    /// The connection to etcd, for a store there: the CA and join tokens are kept beside it.
    pub fn etcd(&self) -> Option<EtcdKv> {
        match self {
            Store::Redb(_) => None,
            Store::Etcd(s) => Some(s.kv().clone()),
        }
    }

    /// A watch of the revision other controllers commit at, if the store can have others.
    pub fn revision_watch(&self) -> Option<RevisionWatch> {
        match self {
            Store::Redb(_) => None,
            Store::Etcd(s) => Some(s.revision_watch()),
        }
    }

    /// After a commit, with the tables it led to: etcd's store writes a new snapshot once the
    /// log after the last one is longer than the changes kept.
    pub fn settle(&mut self, tables: &Tables) {
        if let Store::Etcd(s) = self {
            s.settle(tables)
        }
    }
}
