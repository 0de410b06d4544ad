//! Durable copy of the tables in redb (one file under `--data-dir`). Every batch of changes is
//! written in one transaction, fsynced before the caller reports success.
//!
//! A store has an identity, made when it is created and kept both in the file and in a marker
//! beside it (`store-id`), so that an emptied, removed or replaced `weft.redb` is noticed at the
//! next start instead of being served as a new, empty cluster.
//!
//! Every handle shares the file (one writer, any readers): `weft-controller backup` reads a
//! consistent copy ([`Store::read`]) while a controller serves it.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use prost::Message;
use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use tracing::{info, warn};
use weft_proto::v1::{
    Delta, DnsRecord, Endpoint, Network, Peer, WatchEvent, delta::Change, watch_event::Event,
};
use weft_tls::write_private;

use weft_proto::rows::{EndpointRow, NetworkRow, PeerRow, RecordRow};
use weft_proto::tables::Tables;

use super::data_dir::{self, Emptied, check_emptied, open_private_db, read_marker, shared};
use super::error::file_err;
use super::{DELTAS_KEPT, STORE_FORMAT, StoreError};
use crate::tokens::random_hex;

const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
/// Keyed by (peer, network, container id).
const ENDPOINTS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("endpoints");
/// Keyed by (name, ip). Stores from before it have none.
const DNS_RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("dns_records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The latest changes by revision, each a `Delta`: a restarted controller resumes agents from
/// them as a running one does. Stores from before it have none.
const DELTAS: TableDefinition<u64, &[u8]> = TableDefinition::new("deltas");
const REVISION: &str = "revision";
/// The key in META of the store's format: a controller refuses a store of a newer one, whose
/// rows it may misread or whose new tables it would ignore.
const FORMAT: &str = "format";
/// Stores from before identities have none (they get one on open).
const IDENTITY: TableDefinition<&str, &str> = TableDefinition::new("identity");
const STORE_ID: &str = "store_id";

/// The store's file in the data dir.
pub const STORE_FILE: &str = "weft.redb";
/// The marker of the store the data dir holds: its id and a newline.
pub const MARKER_FILE: &str = "store-id";

/// Opens the redb database at a path: [`open_private_db`], but for tests.
type OpenDb = Box<dyn Fn(&Path) -> Result<Database, DatabaseError> + Send>;

pub struct RedbStore {
    /// None only while it is being opened again.
    db: Option<Database>,
    path: PathBuf,
    open_db: OpenDb,
    /// A commit failed: redb fails every later one ("Previous I/O error") until the database is
    /// opened again, which the next commit does first.
    poisoned: bool,
    /// How many of the latest changes are kept.
    kept: u64,
    /// The revision of the last commit that succeeded (or of the tables loaded).
    committed: u64,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir` and loads the tables it holds, with their store id.
    /// A store file that is missing, empty or holds nothing where the data dir shows a store was
    /// is refused unless `emptied` says to begin again; so is one that is not the store the
    /// marker names.
    pub fn open(dir: &Path, emptied: Emptied) -> Result<(RedbStore, Tables), StoreError> {
        RedbStore::open_with(dir, emptied, Box::new(open_private_db))
    }

    fn open_with(
        dir: &Path,
        emptied: Emptied,
        open_db: OpenDb,
    ) -> Result<(RedbStore, Tables), StoreError> {
        data_dir::create(dir)?;
        let path = dir.join(STORE_FILE);
        let marker = dir.join(MARKER_FILE);
        let marked = read_marker(&marker)?;
        // Decided before opening: redb makes an empty store of a missing or empty file.
        let blank = match fs::metadata(&path) {
            Ok(m) if m.len() > 0 => None,
            Ok(_) => Some("is empty (0 bytes)"),
            Err(e) if e.kind() == ErrorKind::NotFound => Some("is missing"),
            Err(e) => return Err(file_err("read", &path)(e)),
        };
        let mut begun_again = match blank {
            Some(how) => check_emptied(dir, how, marked.as_deref(), emptied)?,
            None => None,
        };
        let db = open_db(&path).map_err(open_err(&path))?;
        let mut store = RedbStore {
            db: Some(db),
            path,
            open_db,
            poisoned: false,
            kept: DELTAS_KEPT,
            committed: 0,
        };
        store.check_format()?;
        let mut tables = store.load()?;
        if tables.store_id.is_empty() {
            let id = if tables.revision > 0 {
                // From before identities; a backup of this data dir's store keeps its id.
                let id = marked.clone().unwrap_or_else(|| random_hex(16));
                info!(store_id = %id, "the store had no identity: it has one now");
                id
            } else {
                if blank.is_none() {
                    begun_again =
                        check_emptied(dir, "holds no tables", marked.as_deref(), emptied)?;
                }
                random_hex(16)
            };
            store.write_identity(&id)?;
            tables.store_id = id;
        } else if let Some(marked) = marked.as_ref().filter(|m| **m != tables.store_id) {
            return Err(StoreError::Replaced {
                path: store.path.clone(),
                held: tables.store_id.clone(),
                marker,
                marked: marked.clone(),
            });
        }
        if let Some(evidence) = begun_again {
            warn!(
                store_id = %tables.store_id,
                "--accept-empty-store: {} was emptied while this data dir held a store ({}); beginning again with empty tables as a new store",
                store.path.display(),
                evidence.join("; ")
            );
        }
        if marked.as_deref() != Some(tables.store_id.as_str()) {
            // After the id is in the store: a crash in between leaves a marker to rewrite.
            write_private(&marker, &format!("{}\n", tables.store_id))
                .map_err(file_err("write", &marker))?;
        }
        store.committed = tables.revision;
        Ok((store, tables))
    }

    /// The database, opened again first if a commit failed since it was last opened.
    fn db(&mut self) -> Result<&Database, StoreError> {
        if self.poisoned {
            // redb holds a lock on the file: the old handle must go before a new one opens.
            self.db = None;
            let db = (self.open_db)(&self.path).map_err(|e| redb_err(&self.path, e))?;
            info!(path = %self.path.display(), "store opened again after a failed commit");
            // A commit can fail at its last step yet be on the disk: the tables in memory,
            // undone, would then lag the store's.
            let held = (|| -> Result<u64, redb::Error> {
                let txn = db.begin_read()?;
                let meta = match txn.open_table(META) {
                    Ok(meta) => meta,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                    Err(e) => return Err(e.into()),
                };
                Ok(meta.get(REVISION)?.map_or(0, |r| r.value()))
            })()
            .map_err(|e| redb_err(&self.path, e))?;
            self.db = Some(db);
            if held != self.committed {
                return Err(StoreError::Diverged {
                    path: self.path.clone(),
                    held,
                    expected: self.committed,
                });
            }
            self.poisoned = false;
        }
        Ok(self.db.as_ref().expect("the store's database is open"))
    }

    /// Refuses a store of a newer format; marks one of none (new, or from before formats) as
    /// this controller's.
    fn check_format(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| redb_err(&path, e))?;
        if refuse_newer(&path, &txn)?.is_some() {
            return Ok(());
        }
        drop(txn);
        let written = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(FORMAT, STORE_FORMAT)?;
            Ok(txn.commit()?)
        })();
        written.map_err(|e| redb_err(&path, e))
    }

    fn write_identity(&mut self, id: &str) -> Result<(), StoreError> {
        let db = self.db()?;
        let written = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(IDENTITY)?.insert(STORE_ID, id)?;
            Ok(txn.commit()?)
        })();
        written.map_err(|e| redb_err(&self.path, e))
    }

    fn load(&self) -> Result<Tables, StoreError> {
        let db = self.db.as_ref().expect("the store's database is open");
        let txn = db.begin_read().map_err(|e| redb_err(&self.path, e))?;
        load(&self.path, &txn)
    }

    /// The tables of the store in `dir`, read in one transaction and changing nothing: what
    /// `weft-controller backup` copies, also while a controller serves them.
    pub fn read(dir: &Path) -> Result<Tables, StoreError> {
        let path = dir.join(STORE_FILE);
        let how = match fs::metadata(&path) {
            Ok(m) if m.len() > 0 => None,
            Ok(_) => Some("is empty (0 bytes)"),
            Err(e) if e.kind() == ErrorKind::NotFound => Some("is missing"),
            Err(e) => return Err(file_err("read", &path)(e)),
        };
        if let Some(how) = how {
            return Err(StoreError::NoStore { path, how });
        }
        let db = shared().open_read_only(&path).map_err(open_err(&path))?;
        let txn = db.begin_read().map_err(|e| redb_err(&path, e))?;
        refuse_newer(&path, &txn)?;
        load(&path, &txn)
    }

    /// Puts `tables` (a backup's) with their identity and revision into the store in `dir`,
    /// which must hold none, in one transaction; then marks the data dir as holding that store.
    /// The data dir may have held it before (its marker names it): that is how a lost store
    /// comes back.
    pub fn restore(dir: &Path, tables: &Tables) -> Result<(), StoreError> {
        data_dir::create(dir)?;
        let path = dir.join(STORE_FILE);
        let marker = dir.join(MARKER_FILE);
        if let Some(marked) = read_marker(&marker)?.filter(|m| *m != tables.store_id) {
            return Err(StoreError::MarkedOther {
                marker,
                marked,
                restored: tables.store_id.clone(),
            });
        }
        // Looked at read-only first: opening it to write marks the file, even when refused.
        if fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
            refuse_held(&path, RedbStore::read(dir)?)?;
        }
        let db = open_private_db(&path).map_err(open_err(&path))?;
        // Again under the writer's lock, which no controller can take now.
        let txn = db.begin_read().map_err(|e| redb_err(&path, e))?;
        refuse_newer(&path, &txn)?;
        refuse_held(&path, load(&path, &txn)?)?;
        drop(txn);
        let puts = (tables.peers.values().map(|p| Change::PeerPut(p.wire())))
            .chain(
                tables
                    .networks
                    .values()
                    .map(|n| Change::NetworkPut(n.wire())),
            )
            .chain(
                tables
                    .endpoints
                    .values()
                    .map(|e| Change::EndpointPut(e.wire())),
            )
            .chain(
                tables
                    .dns_records
                    .values()
                    .map(|r| Change::DnsRecordPut(r.wire())),
            );
        let written = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut rows = Rows::open(&txn)?;
                for put in puts {
                    rows.apply(&put)?;
                }
                let mut meta = txn.open_table(META)?;
                meta.insert(REVISION, tables.revision)?;
                meta.insert(FORMAT, STORE_FORMAT)?;
                txn.open_table(IDENTITY)?
                    .insert(STORE_ID, tables.store_id.as_str())?;
            }
            Ok(txn.commit()?)
        })();
        written.map_err(|e| redb_err(&path, e))?;
        write_private(&marker, &format!("{}\n", tables.store_id))
            .map_err(file_err("write", &marker))
    }

    /// Keeps the latest `n` changes (at least one) from the next commit on.
    pub fn keep_changes(&mut self, n: u64) {
        self.kept = n.max(1);
    }

    /// How many of the latest changes are kept.
    pub fn kept(&self) -> u64 {
        self.kept
    }

    /// The changes kept that lead up to `revision`, oldest first, as the deltas a watch sends:
    /// only an unbroken run ending at `revision` (none from a store from before they were kept).
    pub fn history(&self, revision: u64) -> Result<VecDeque<WatchEvent>, StoreError> {
        let db = self.db.as_ref().expect("the store's database is open");
        let txn = db.begin_read().map_err(|e| redb_err(&self.path, e))?;
        let deltas = match txn.open_table(DELTAS) {
            Ok(deltas) => deltas,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(VecDeque::new()),
            Err(e) => return Err(redb_err(&self.path, e)),
        };
        let mut history = VecDeque::new();
        for row in deltas
            .range(..=revision)
            .map_err(|e| redb_err(&self.path, e))?
            .rev()
        {
            let (at, bytes) = row.map_err(|e| redb_err(&self.path, e))?;
            let at = at.value();
            if at + history.len() as u64 != revision {
                break;
            }
            let delta: Delta = decode(&self.path, bytes.value())?;
            history.push_front(WatchEvent {
                revision: at,
                event: Some(Event::Delta(delta)),
                store_id: String::new(),
            });
        }
        Ok(history)
    }

    /// Writes `changes` and the revision they lead to in one durable transaction. After a
    /// failed one the database is opened again first (redb repairs it then, if it must), so a
    /// full disk fails commits only while it is full, each naming its cause.
    pub fn commit(&mut self, changes: &[Change], revision: u64) -> Result<(), StoreError> {
        let written = self.write(changes, revision);
        self.poisoned = written.is_err();
        if written.is_ok() {
            self.committed = revision;
        }
        written
    }

    fn write(&mut self, changes: &[Change], revision: u64) -> Result<(), StoreError> {
        let kept = self.kept;
        let db = self.db()?;
        let written = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut rows = Rows::open(&txn)?;
                let mut meta = txn.open_table(META)?;
                let mut deltas = txn.open_table(DELTAS)?;
                let first = revision + 1 - changes.len() as u64;
                for (at, change) in (first..).zip(changes) {
                    let delta = Delta {
                        change: Some(change.clone()),
                    };
                    deltas.insert(at, delta.encode_to_vec().as_slice())?;
                    if at > kept {
                        // Those before it went as it came: one goes per one that comes.
                        deltas.remove(at - kept)?;
                    }
                }
                for change in changes {
                    rows.apply(change)?;
                }
                meta.insert(REVISION, revision)?;
            }
            Ok(txn.commit()?)
        })();
        written.map_err(|e| redb_err(&self.path, e))
    }
}

fn redb_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb {
        path: path.to_path_buf(),
        cause: e.into(),
    }
}

fn decode<M: Message + Default>(path: &Path, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|cause| StoreError::Decode {
        path: path.to_path_buf(),
        cause,
    })
}

/// Why the store file at `path` did not open: another process has it, or it is not a store.
fn open_err(path: &Path) -> impl FnOnce(DatabaseError) -> StoreError {
    let path = path.to_path_buf();
    move |e| match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path },
        e => StoreError::Unreadable {
            path,
            cause: e.into(),
        },
    }
}

/// Refuses to restore into the store at `path`, which holds `held`, unless it is empty.
fn refuse_held(path: &Path, held: Tables) -> Result<(), StoreError> {
    if held.revision > 0 || !held.store_id.is_empty() {
        return Err(StoreError::NotEmpty {
            path: path.to_path_buf(),
            held: held.store_id,
            revision: held.revision,
            way_out: "give another --data-dir, or move this one aside",
        });
    }
    Ok(())
}

/// The store's format (None: not marked with one), refused if newer than this controller's.
fn refuse_newer(path: &Path, txn: &ReadTransaction) -> Result<Option<u64>, StoreError> {
    let held = match txn.open_table(META) {
        Ok(meta) => meta
            .get(FORMAT)
            .map_err(|e| redb_err(path, e))?
            .map(|f| f.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(redb_err(path, e)),
    };
    match held {
        Some(held) if held > STORE_FORMAT => Err(StoreError::Newer {
            path: path.to_path_buf(),
            held,
        }),
        held => Ok(held),
    }
}

/// The tables the store at `path` holds, as `txn` sees them.
fn load(path: &Path, txn: &ReadTransaction) -> Result<Tables, StoreError> {
    let mut tables = Tables::default();
    match txn.open_table(IDENTITY) {
        Ok(identity) => {
            if let Some(id) = identity.get(STORE_ID).map_err(|e| redb_err(path, e))? {
                tables.store_id = id.value().to_string();
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(redb_err(path, e)),
    }
    // Tables that were never written do not exist yet: an empty store.
    let Ok(meta) = txn.open_table(META) else {
        return Ok(tables);
    };
    if let Some(rev) = meta.get(REVISION).map_err(|e| redb_err(path, e))? {
        tables.revision = rev.value();
    }
    // Every row was typed when it was made: one that does not read is a corrupt store.
    let bad = |row| StoreError::BadRow {
        path: path.to_path_buf(),
        row,
    };
    for peer in rows::<_, Peer>(path, txn, PEERS)? {
        let peer = PeerRow::read(peer).map_err(bad)?;
        tables.peers.insert(peer.name.clone(), peer);
    }
    for net in rows::<_, Network>(path, txn, NETWORKS)? {
        let net = NetworkRow::read(net).map_err(bad)?;
        tables.networks.insert(net.name.clone(), net);
    }
    for ep in rows::<_, Endpoint>(path, txn, ENDPOINTS)? {
        let ep = EndpointRow::read(ep).map_err(bad)?;
        tables.endpoints.insert(ep.id.clone(), ep);
    }
    for record in rows::<_, DnsRecord>(path, txn, DNS_RECORDS)? {
        let record = RecordRow::read(record).map_err(bad)?;
        tables.dns_records.insert(record.id(), record);
    }
    Ok(tables)
}

/// Every row of `table`, decoded, in key order; none if it was never written (a store from
/// before it).
fn rows<K: redb::Key + 'static, M: Message + Default>(
    path: &Path,
    txn: &ReadTransaction,
    table: TableDefinition<K, &[u8]>,
) -> Result<Vec<M>, StoreError> {
    let table = match txn.open_table(table) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(redb_err(path, e)),
    };
    let rows = table.iter().map_err(|e| redb_err(path, e))?;
    rows.map(|row| {
        let (_, v) = row.map_err(|e| redb_err(path, e))?;
        decode(path, v.value())
    })
    .collect()
}

/// The tables of rows, open in a write transaction.
struct Rows<'t> {
    peers: redb::Table<'t, &'static str, &'static [u8]>,
    networks: redb::Table<'t, &'static str, &'static [u8]>,
    endpoints: redb::Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>,
    dns_records: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
}

impl Rows<'_> {
    fn open(txn: &WriteTransaction) -> Result<Rows<'_>, redb::TableError> {
        Ok(Rows {
            peers: txn.open_table(PEERS)?,
            networks: txn.open_table(NETWORKS)?,
            endpoints: txn.open_table(ENDPOINTS)?,
            dns_records: txn.open_table(DNS_RECORDS)?,
        })
    }

    fn apply(&mut self, change: &Change) -> Result<(), redb::StorageError> {
        match change {
            Change::PeerPut(p) => self
                .peers
                .insert(p.name.as_str(), p.encode_to_vec().as_slice())?,
            Change::PeerDeleted(name) => self.peers.remove(name.as_str())?,
            Change::NetworkPut(n) => self
                .networks
                .insert(n.name.as_str(), n.encode_to_vec().as_slice())?,
            Change::NetworkDeleted(name) => self.networks.remove(name.as_str())?,
            Change::EndpointPut(ep) => self.endpoints.insert(
                (
                    ep.peer.as_str(),
                    ep.network.as_str(),
                    ep.container_id.as_str(),
                ),
                ep.encode_to_vec().as_slice(),
            )?,
            Change::EndpointDeleted(k) => self.endpoints.remove((
                k.peer.as_str(),
                k.network.as_str(),
                k.container_id.as_str(),
            ))?,
            Change::DnsRecordPut(r) => self.dns_records.insert(
                (r.name.as_str(), r.ip.as_str()),
                r.encode_to_vec().as_slice(),
            )?,
            Change::DnsRecordDeleted(r) => {
                self.dns_records.remove((r.name.as_str(), r.ip.as_str()))?
            }
        };
        Ok(())
    }
}
