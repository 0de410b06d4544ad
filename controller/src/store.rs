//! Durable copy of the tables in redb (one file under `--data-dir`). Every batch of changes is
//! written in one transaction, fsynced before the caller reports success.
//!
//! A store has an identity, made when it is created and kept both in the file and in a marker
//! beside it (`store-id`), so that an emptied, removed or replaced `weft.redb` is noticed at the
//! next start instead of being served as a new, empty cluster.

use std::collections::VecDeque;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use tracing::{info, warn};
use weft_proto::tls::write_private;
use weft_proto::v1::{
    Delta, DnsRecord, Endpoint, Network, Peer, WatchEvent, delta::Change, watch_event::Event,
};

use weft_proto::tables::{Tables, dns_record_id, endpoint_id};

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
/// How many of the latest changes are kept unless told otherwise (`--history`): an agent
/// further behind gets a snapshot.
pub const DELTAS_KEPT: u64 = 50_000;
const REVISION: &str = "revision";
/// Stores from before identities have none (they get one on open).
const IDENTITY: TableDefinition<&str, &str> = TableDefinition::new("identity");
const STORE_ID: &str = "store_id";

/// The store's file in the data dir.
pub const STORE_FILE: &str = "weft.redb";
/// The marker of the store the data dir holds: its id and a newline.
pub const MARKER_FILE: &str = "store-id";
/// Only the controller (root) may read the data dir and its stores.
const PRIVATE_DIR: u32 = 0o700;
const PRIVATE_FILE: u32 = 0o600;

/// What to do with a store file found empty (or missing) in a data dir that held a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emptied {
    /// Refuse to start, naming the file and the way out.
    Refuse,
    /// Begin again with it empty (`--accept-empty-store`).
    BeginAgain,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {doing} {path}: {cause}")]
    File {
        doing: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("store {path}: {cause}")]
    Redb { path: PathBuf, cause: redb::Error },
    #[error("store {path}: corrupt record: {cause}")]
    Decode {
        path: PathBuf,
        cause: prost::DecodeError,
    },
    #[error(
        "{path} {how}, but this data dir held a store ({}): restore {STORE_FILE} from a backup, or start with --accept-empty-store to begin again with empty tables (agents keep their datapath and refuse the new store until told to follow it)",
        .evidence.join("; ")
    )]
    Emptied {
        path: PathBuf,
        how: &'static str,
        evidence: Vec<String>,
    },
    #[error(
        "{path} holds store {held}, but {marker} names store {marked}: {STORE_FILE} was replaced by another store's; put this data dir's own back, or remove {marker} to serve the store it holds"
    )]
    Replaced {
        path: PathBuf,
        held: String,
        marker: PathBuf,
        marked: String,
    },
    #[error(
        "store {path} holds revision {held} after a failed commit, not {expected}: the commit reached the disk after all; the controller stops, to serve what the store holds once started again"
    )]
    Diverged {
        path: PathBuf,
        held: u64,
        expected: u64,
    },
}

/// Opens the redb database at a path: [`open_private_db`], but for tests.
type OpenDb = Box<dyn Fn(&Path) -> Result<Database, DatabaseError> + Send>;

pub struct Store {
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

/// Sets `path`'s mode to `mode` unless it is that already (made by a controller from before
/// modes were restricted).
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    let had = fs::metadata(path)?.permissions().mode() & 0o777;
    if had != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        info!(path = %path.display(), from = format!("{had:o}"), to = format!("{mode:o}"), "restricted the mode");
    }
    Ok(())
}

/// Opens the redb database at `path`, made root-only: created so, or restricted.
pub(crate) fn open_private_db(path: &Path) -> Result<Database, DatabaseError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE)
        .open(path)?;
    restrict(path, PRIVATE_FILE)?;
    redb::Builder::new().create_with_backend(redb::backends::FileBackend::new(file)?)
}

fn file_err(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |cause| StoreError::File { doing, path, cause }
}

/// The store id the marker in `dir` names, if there is one.
fn read_marker(marker: &Path) -> Result<Option<String>, StoreError> {
    match fs::read_to_string(marker) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|id| !id.is_empty())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err("read", marker)(e)),
    }
}

/// What in `dir` shows it held a store (its marker, the CA key, join tokens); empty for a fresh
/// data dir.
fn signs_of_a_store(dir: &Path, marked: Option<&str>) -> Vec<String> {
    let mut signs = Vec::new();
    if let Some(id) = marked {
        signs.push(format!("{MARKER_FILE} names store {id}"));
    }
    if dir.join("ca.key").exists() {
        signs.push("ca.key is there".to_string());
    }
    let tokens = dir.join(crate::tokens::TOKENS_FILE);
    if fs::metadata(&tokens).is_ok_and(|m| m.len() > 0) {
        signs.push(format!("{} is not empty", crate::tokens::TOKENS_FILE));
    }
    signs
}

/// Whether to go on with the store file of `dir`, found as `how` says: with no signs of a store
/// in `dir`, as a fresh store (None); with some, as `emptied` says: refused, or begun again
/// (the signs, for the log).
fn check_emptied(
    dir: &Path,
    how: &'static str,
    marked: Option<&str>,
    emptied: Emptied,
) -> Result<Option<Vec<String>>, StoreError> {
    let evidence = signs_of_a_store(dir, marked);
    match emptied {
        _ if evidence.is_empty() => Ok(None),
        Emptied::Refuse => Err(StoreError::Emptied {
            path: dir.join(STORE_FILE),
            how,
            evidence,
        }),
        Emptied::BeginAgain => Ok(Some(evidence)),
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` and loads the tables it holds, with their store id.
    /// A store file that is missing, empty or holds nothing where the data dir shows a store was
    /// is refused unless `emptied` says to begin again; so is one that is not the store the
    /// marker names.
    pub fn open(dir: &Path, emptied: Emptied) -> Result<(Store, Tables), StoreError> {
        Store::open_with(dir, emptied, Box::new(open_private_db))
    }

    fn open_with(
        dir: &Path,
        emptied: Emptied,
        open_db: OpenDb,
    ) -> Result<(Store, Tables), StoreError> {
        {
            use std::os::unix::fs::DirBuilderExt;
            let mut create = fs::DirBuilder::new();
            create.recursive(true).mode(PRIVATE_DIR).create(dir)
        }
        .and_then(|()| restrict(dir, PRIVATE_DIR))
        .map_err(file_err("create the data directory", dir))?;
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
        let db = open_db(&path).map_err(|e| StoreError::Redb {
            path: path.clone(),
            cause: e.into(),
        })?;
        let mut store = Store {
            db: Some(db),
            path,
            open_db,
            poisoned: false,
            kept: DELTAS_KEPT,
            committed: 0,
        };
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

    fn redb_err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Redb {
            path: self.path.clone(),
            cause: e.into(),
        }
    }

    fn decode<M: Message + Default>(&self, bytes: &[u8]) -> Result<M, StoreError> {
        M::decode(bytes).map_err(|cause| StoreError::Decode {
            path: self.path.clone(),
            cause,
        })
    }

    /// The database, opened again first if a commit failed since it was last opened.
    fn db(&mut self) -> Result<&Database, StoreError> {
        if self.poisoned {
            // redb holds a lock on the file: the old handle must go before a new one opens.
            self.db = None;
            let db = (self.open_db)(&self.path).map_err(|e| self.redb_err(e))?;
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
            .map_err(|e| self.redb_err(e))?;
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

    fn write_identity(&mut self, id: &str) -> Result<(), StoreError> {
        let db = self.db()?;
        let written = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(IDENTITY)?.insert(STORE_ID, id)?;
            Ok(txn.commit()?)
        })();
        written.map_err(|e| self.redb_err(e))
    }

    fn load(&self) -> Result<Tables, StoreError> {
        let mut tables = Tables::default();
        let db = self.db.as_ref().expect("the store's database is open");
        let txn = db.begin_read().map_err(|e| self.redb_err(e))?;
        match txn.open_table(IDENTITY) {
            Ok(identity) => {
                if let Some(id) = identity.get(STORE_ID).map_err(|e| self.redb_err(e))? {
                    tables.store_id = id.value().to_string();
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.redb_err(e)),
        }
        // Tables that were never written do not exist yet: an empty store.
        let Ok(meta) = txn.open_table(META) else {
            return Ok(tables);
        };
        if let Some(rev) = meta.get(REVISION).map_err(|e| self.redb_err(e))? {
            tables.revision = rev.value();
        }
        for row in txn
            .open_table(PEERS)
            .map_err(|e| self.redb_err(e))?
            .iter()
            .map_err(|e| self.redb_err(e))?
        {
            let (_, v) = row.map_err(|e| self.redb_err(e))?;
            let peer: Peer = self.decode(v.value())?;
            tables.peers.insert(peer.name.clone(), peer);
        }
        for row in txn
            .open_table(NETWORKS)
            .map_err(|e| self.redb_err(e))?
            .iter()
            .map_err(|e| self.redb_err(e))?
        {
            let (_, v) = row.map_err(|e| self.redb_err(e))?;
            let net: Network = self.decode(v.value())?;
            tables.networks.insert(net.name.clone(), net);
        }
        for row in txn
            .open_table(ENDPOINTS)
            .map_err(|e| self.redb_err(e))?
            .iter()
            .map_err(|e| self.redb_err(e))?
        {
            let (_, v) = row.map_err(|e| self.redb_err(e))?;
            let ep: Endpoint = self.decode(v.value())?;
            tables.endpoints.insert(endpoint_id(&ep), ep);
        }
        match txn.open_table(DNS_RECORDS) {
            Ok(records) => {
                for row in records.iter().map_err(|e| self.redb_err(e))? {
                    let (_, v) = row.map_err(|e| self.redb_err(e))?;
                    let record: DnsRecord = self.decode(v.value())?;
                    tables.dns_records.insert(dns_record_id(&record), record);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.redb_err(e)),
        }
        Ok(tables)
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
        let txn = db.begin_read().map_err(|e| self.redb_err(e))?;
        let deltas = match txn.open_table(DELTAS) {
            Ok(deltas) => deltas,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(VecDeque::new()),
            Err(e) => return Err(self.redb_err(e)),
        };
        let mut history = VecDeque::new();
        for row in deltas
            .range(..=revision)
            .map_err(|e| self.redb_err(e))?
            .rev()
        {
            let (at, bytes) = row.map_err(|e| self.redb_err(e))?;
            let at = at.value();
            if at + history.len() as u64 != revision {
                break;
            }
            let delta: Delta = self.decode(bytes.value())?;
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
                let mut peers = txn.open_table(PEERS)?;
                let mut networks = txn.open_table(NETWORKS)?;
                let mut endpoints = txn.open_table(ENDPOINTS)?;
                let mut dns_records = txn.open_table(DNS_RECORDS)?;
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
                    match change {
                        Change::PeerPut(p) => {
                            peers.insert(p.name.as_str(), p.encode_to_vec().as_slice())?
                        }
                        Change::PeerDeleted(name) => peers.remove(name.as_str())?,
                        Change::NetworkPut(n) => {
                            networks.insert(n.name.as_str(), n.encode_to_vec().as_slice())?
                        }
                        Change::NetworkDeleted(name) => networks.remove(name.as_str())?,
                        Change::EndpointPut(ep) => endpoints.insert(
                            (
                                ep.peer.as_str(),
                                ep.network.as_str(),
                                ep.container_id.as_str(),
                            ),
                            ep.encode_to_vec().as_slice(),
                        )?,
                        Change::EndpointDeleted(k) => endpoints.remove((
                            k.peer.as_str(),
                            k.network.as_str(),
                            k.container_id.as_str(),
                        ))?,
                        Change::DnsRecordPut(r) => dns_records.insert(
                            (r.name.as_str(), r.ip.as_str()),
                            r.encode_to_vec().as_slice(),
                        )?,
                        Change::DnsRecordDeleted(r) => {
                            dns_records.remove((r.name.as_str(), r.ip.as_str()))?
                        }
                    };
                }
                meta.insert(REVISION, revision)?;
            }
            Ok(txn.commit()?)
        })();
        written.map_err(|e| self.redb_err(e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use weft_proto::v1::EndpointKey;

    fn ep(container: &str) -> Endpoint {
        Endpoint {
            network: "default".into(),
            container_id: container.into(),
            mac: "02:00:00:00:00:01".into(),
            cidrs: vec!["192.168.0.2/24".into()],
            peer: "host1".into(),
            host_ifname: "vethwepl1".into(),
            container_ifname: "ethwe".into(),
            dns_name: String::new(),
        }
    }

    fn peer(n: u32) -> Change {
        Change::PeerPut(Peer {
            name: format!("host{n}"),
            advertise_addr: format!("198.18.0.{n}"),
        })
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn marker(dir: &Path) -> String {
        fs::read_to_string(dir.join(MARKER_FILE)).unwrap()
    }

    /// A data dir whose store holds one peer, at revision 1; and the store's id.
    fn held_store() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, tables) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        store.commit(&[peer(1)], 1).unwrap();
        (dir, tables.store_id)
    }

    #[test]
    fn tables_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Tables::default();
        {
            let (mut store, tables) = Store::open(dir.path(), Emptied::Refuse).unwrap();
            expected.store_id = tables.store_id.clone();
            assert_eq!(tables, expected);
            let changes = vec![
                peer(1),
                Change::NetworkPut(Network {
                    name: "default".into(),
                    subnet: "10.32.0.0/12".into(),
                    vni: 1,
                }),
                Change::EndpointPut(ep("netns:a/b")),
                Change::EndpointPut(ep("netns:c")),
                Change::EndpointDeleted(EndpointKey {
                    peer: "host1".into(),
                    container_id: "netns:c".into(),
                    network: "default".into(),
                }),
            ];
            for c in &changes {
                expected.apply(c);
            }
            store.commit(&changes, expected.revision).unwrap();
        }
        let (store, reloaded) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        assert_eq!(reloaded, expected);
        assert_eq!(reloaded.revision, 5);
        assert_eq!(reloaded.endpoints.len(), 1);
        // The changes too, numbered by their revisions, for resuming agents after a restart.
        let history = store.history(5).unwrap();
        let revisions: Vec<u64> = history.iter().map(|e| e.revision).collect();
        assert_eq!(revisions, [1, 2, 3, 4, 5]);
        let Some(Event::Delta(Delta {
            change: Some(first),
        })) = &history[0].event
        else {
            panic!("not a delta: {:?}", history[0]);
        };
        assert_eq!(first, &peer(1));
        // Only an unbroken run up to the revision asked for.
        assert_eq!(store.history(3).unwrap().len(), 3);
    }

    #[test]
    fn a_failed_commit_that_reached_the_disk_is_found_on_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        store.commit(&[peer(1)], 1).unwrap();
        store.commit(&[peer(2)], 2).unwrap();
        // As if the second had been reported failed: the store holds more than the tables.
        store.committed = 1;
        store.poisoned = true;
        let e = store.commit(&[peer(3)], 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "store {} holds revision 2 after a failed commit, not 1: the commit reached the disk after all; the controller stops, to serve what the store holds once started again",
                dir.path().join(STORE_FILE).display()
            )
        );
    }

    #[test]
    fn only_the_latest_changes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        let batch: Vec<Change> = (0..1000).map(|n| peer(n % 7)).collect();
        let batches = DELTAS_KEPT / 1000 + 2;
        for b in 1..=batches {
            store.commit(&batch, b * 1000).unwrap();
        }
        let history = store.history(batches * 1000).unwrap();
        assert_eq!(history.len() as u64, DELTAS_KEPT);
        assert_eq!(history[0].revision, batches * 1000 - DELTAS_KEPT + 1);
    }

    #[test]
    fn a_new_store_gets_an_identity_kept_in_the_file_and_the_marker_all_root_only() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("controller");
        let (_, tables) = Store::open(&dir, Emptied::Refuse).unwrap();
        let id = &tables.store_id;
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{id}"
        );
        assert_eq!(marker(&dir), format!("{id}\n"));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(STORE_FILE)), 0o600);
        assert_eq!(mode(&dir.join(MARKER_FILE)), 0o600);
        // Another store, in another dir, is another identity.
        let (_, other) = Store::open(&parent.path().join("other"), Emptied::Refuse).unwrap();
        assert_ne!(&other.store_id, id);
    }

    #[test]
    fn a_store_keeps_its_identity_and_a_lost_marker_is_written_again() {
        let (dir, id) = held_store();
        fs::remove_file(dir.path().join(MARKER_FILE)).unwrap();
        let (_, tables) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        assert_eq!(tables.store_id, id);
        assert_eq!(tables.peers.len(), 1);
        assert_eq!(marker(dir.path()), format!("{id}\n"));
    }

    #[test]
    fn modes_of_an_older_data_dir_are_restricted_on_open() {
        let (dir, _) = held_store();
        let file = dir.path().join(STORE_FILE);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        Store::open(dir.path(), Emptied::Refuse).unwrap();
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn an_emptied_or_removed_store_is_refused_and_left_as_it_is() {
        let (dir, id) = held_store();
        let file = dir.path().join(STORE_FILE);
        fs::File::create(&file).unwrap();
        let Err(e) = Store::open(dir.path(), Emptied::Refuse) else {
            panic!("an emptied store is served");
        };
        assert_eq!(
            e.to_string(),
            format!(
                "{} is empty (0 bytes), but this data dir held a store (store-id names store {id}): restore weft.redb from a backup, or start with --accept-empty-store to begin again with empty tables (agents keep their datapath and refuse the new store until told to follow it)",
                file.display()
            )
        );
        assert_eq!(fs::metadata(&file).unwrap().len(), 0);
        assert_eq!(marker(dir.path()), format!("{id}\n"));

        // The CA key alone shows it too.
        fs::remove_file(&file).unwrap();
        fs::remove_file(dir.path().join(MARKER_FILE)).unwrap();
        fs::write(dir.path().join("ca.key"), "key").unwrap();
        let Err(e) = Store::open(dir.path(), Emptied::Refuse) else {
            panic!("a removed store is served");
        };
        assert_eq!(
            e.to_string(),
            format!(
                "{} is missing, but this data dir held a store (ca.key is there): restore weft.redb from a backup, or start with --accept-empty-store to begin again with empty tables (agents keep their datapath and refuse the new store until told to follow it)",
                file.display()
            )
        );
        assert!(!file.exists());
    }

    #[test]
    fn accepting_an_emptied_store_begins_again_as_a_new_store() {
        let (dir, id) = held_store();
        fs::File::create(dir.path().join(STORE_FILE)).unwrap();
        let (_, tables) = Store::open(dir.path(), Emptied::BeginAgain).unwrap();
        assert_ne!(tables.store_id, id);
        assert_eq!(
            tables,
            Tables {
                store_id: tables.store_id.clone(),
                ..Tables::default()
            }
        );
        assert_eq!(marker(dir.path()), format!("{}\n", tables.store_id));
        // And it is that store from then on, flag or not.
        let (_, again) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        assert_eq!(again.store_id, tables.store_id);
    }

    #[test]
    fn a_store_of_another_data_dir_is_refused() {
        let (dir, id) = held_store();
        let (other, other_id) = held_store();
        let file = dir.path().join(STORE_FILE);
        fs::copy(other.path().join(STORE_FILE), &file).unwrap();
        let Err(e) = Store::open(dir.path(), Emptied::Refuse) else {
            panic!("a replaced store is served");
        };
        let marker = dir.path().join(MARKER_FILE);
        assert_eq!(
            e.to_string(),
            format!(
                "{} holds store {other_id}, but {} names store {id}: weft.redb was replaced by another store's; put this data dir's own back, or remove {} to serve the store it holds",
                file.display(),
                marker.display(),
                marker.display()
            )
        );
    }

    #[test]
    fn a_store_from_before_identities_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an older controller left: tables, no identity, no marker.
            let db = Database::create(dir.path().join(STORE_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(PEERS).unwrap();
            txn.open_table(NETWORKS).unwrap();
            txn.open_table(ENDPOINTS).unwrap();
            txn.open_table(META).unwrap().insert(REVISION, 7).unwrap();
            txn.commit().unwrap();
        }
        let (_, tables) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        assert_eq!(tables.revision, 7);
        assert_eq!(tables.store_id.len(), 32);
        assert_eq!(marker(dir.path()), format!("{}\n", tables.store_id));
        let (_, again) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        assert_eq!(again.store_id, tables.store_id);
    }

    /// A file whose writes fail with ENOSPC while `full` is set, as on a full disk.
    #[derive(Debug)]
    struct FullDisk {
        file: redb::backends::FileBackend,
        full: Arc<AtomicBool>,
    }

    impl FullDisk {
        fn check(&self) -> std::io::Result<()> {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for FullDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.file.close()
        }
    }

    #[test]
    fn a_full_disk_fails_commits_with_its_cause_until_there_is_room_again() {
        let (dir, _) = held_store();
        let full = Arc::new(AtomicBool::new(false));
        let open_db: OpenDb = Box::new({
            let full = full.clone();
            move |path| {
                let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
                let file = redb::backends::FileBackend::new(file)?;
                redb::Builder::new().create_with_backend(FullDisk {
                    file,
                    full: full.clone(),
                })
            }
        });
        let (mut store, _) = Store::open_with(dir.path(), Emptied::Refuse, open_db).unwrap();
        full.store(true, Ordering::SeqCst);
        // The failed commit, and the next ones while the disk is still full (each opening the
        // database again first): the real cause each time, never redb's "Previous I/O error".
        let path = dir.path().join(STORE_FILE);
        for revision in [2, 2, 2] {
            let e = store.commit(&[peer(2)], revision).unwrap_err();
            let shown = format!("{:#}", anyhow::Error::from(e));
            assert_eq!(
                shown,
                format!(
                    "store {}: I/O error: No space left on device (os error 28)",
                    path.display()
                )
            );
        }
        full.store(false, Ordering::SeqCst);
        store.commit(&[peer(2)], 2).unwrap();
        store.commit(&[peer(3)], 3).unwrap();
        drop(store);
        let (_, tables) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        assert_eq!(tables.revision, 3);
        assert_eq!(tables.peers.len(), 3);
    }
}
