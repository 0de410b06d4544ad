//! The tables in etcd (`--store etcd`). Under the prefix (`--etcd-prefix`, default `/weft/`):
//! - `meta/format`, `meta/store_id`: as in the redb store;
//! - `meta/revision`: the revision of the last commit;
//! - `log/<first>`: one commit, a `Commit` of the changes of revisions `first` on;
//! - `meta/base` and `snapshot/<base>/<part>`: the tables as of revision `base`, in the parts
//!   a watch's snapshot comes in. The tables are those with the log after `base` applied.
//!
//! Numbers in keys are zero-padded to 20 digits, so keys sort as revisions do. A commit is one
//! transaction whatever its size (etcd allows 128 operations in one): its log entry and the new
//! revision, on condition that `meta/revision` is still what this controller last wrote or read.
//! That fences every controller on the prefix: one whose store moved on (another controller
//! committed, or a commit of its own timed out and landed after all) commits nothing, reads the
//! log entries it lacks ([`EtcdStore::catch_up`]) and plans again. Each controller also follows
//! `meta/revision` ([`RevisionWatch`]) to apply the others' commits as they come. Once the log
//! after the base is longer than the changes kept, a new snapshot is written and the older log
//! goes.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KvClient, TlsOptions, Txn, TxnOp, TxnResponse,
};
use prost::Message;
use tokio::runtime::Handle;
use tracing::{info, warn};
use weft_proto::rows::RowChange;
use weft_proto::snapshot;
use weft_proto::tables::Tables;
use weft_proto::v1::{Commit, Delta, Snapshot, WatchEvent, watch_event::Event};

use super::{DELTAS_KEPT, STORE_FORMAT, StoreError};
use crate::tokens::random_hex;

/// A key below the store's prefix and its value.
type Pair = (String, Vec<u8>);

/// How long one request to etcd may take: an etcd without a leader answers nothing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one try of a request may take, and the pause before the next.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Responses hold whole snapshots (about 10 MB at 100,000 endpoints).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Which etcd, and where in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://198.18.0.21:2379`.
    pub endpoints: Vec<String>,
    /// Every key of the store begins with it (`/weft/`).
    pub prefix: String,
    /// For an etcd that wants TLS (`https://` endpoints).
    pub tls: Option<EtcdTls>,
}

/// What the controller trusts etcd by, and shows it (PEM, as read from the files named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificates (`--etcd-ca`).
    pub ca: Vec<u8>,
    /// The controller's client certificate and key (`--etcd-cert`, `--etcd-key`), for an etcd
    /// that asks for one (`--client-cert-auth`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Display for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "etcd {} {}", self.endpoints.join(","), self.prefix)
    }
}

pub struct EtcdStore {
    client: Client,
    kv: KvClient,
    handle: Handle,
    config: EtcdConfig,
    kept: u64,
    /// The revision of the last commit that succeeded (or of the tables loaded).
    committed: u64,
    /// The revision of the snapshot the log starts after.
    base: u64,
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
                    .ok_or_else(|| store.err_msg("made, yet not there"))?
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
                path: store.at(),
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
                path: store.at(),
                held: held.tables.store_id,
                revision: held.tables.revision,
                way_out: "give another --etcd-prefix, or remove this one's keys first",
            });
        }
        let revision = tables.revision;
        store.put_snapshot(tables)?;
        let meta = [
            ("format", STORE_FORMAT.to_string()),
            ("store_id", tables.store_id.clone()),
            ("revision", revision.to_string()),
            ("base", revision.to_string()),
        ];
        let puts: Vec<TxnOp> = meta
            .iter()
            .map(|(k, v)| TxnOp::put(store.key(&format!("meta/{k}")), v.as_str(), None))
            .collect();
        let txn = Txn::new()
            .when([Compare::create_revision(
                store.key("meta/store_id"),
                CompareOp::Equal,
                0,
            )])
            .and_then(puts);
        if !store.txn(txn)?.succeeded() {
            // Unless it is this restore's own, answered late and asked again.
            let ours = store.load()?.is_some_and(|held| {
                held.tables.store_id == tables.store_id && held.tables.revision == revision
            });
            if !ours {
                store.delete_prefix(&format!("snapshot/{}/", num(revision)))?;
                return Err(store.err_msg("another store was put there meanwhile"));
            }
        }
        Ok(())
    }

    fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let handle = Handle::current();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(ATTEMPT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        if let Some(tls) = &config.tls {
            let mut trust = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                trust = trust.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(trust);
        }
        let endpoints = config.endpoints.clone();
        let connected = block(&handle, async move {
            tokio::time::timeout(
                CONNECT_TIMEOUT * 2,
                Client::connect(endpoints, Some(options)),
            )
            .await
        });
        let client = match connected {
            Ok(client) => client.map_err(|cause| StoreError::Etcd {
                at: config.to_string(),
                cause,
            })?,
            Err(_) => {
                return Err(StoreError::EtcdUnreachable {
                    at: config.to_string(),
                });
            }
        };
        Ok(EtcdStore {
            client: client.clone(),
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            handle,
            config: config.clone(),
            kept: DELTAS_KEPT,
            committed: 0,
            base: 0,
            log: VecDeque::new(),
            loaded: VecDeque::new(),
        })
    }

    /// The store's name in messages, as a path is the redb store's.
    fn at(&self) -> PathBuf {
        PathBuf::from(self.config.to_string())
    }

    fn err_msg(&self, why: &str) -> StoreError {
        StoreError::EtcdLayout {
            at: self.config.to_string(),
            why: why.to_string(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.config.prefix)
    }

    /// Runs a request to etcd from synchronous code (the committing thread, or a start), again
    /// while etcd cannot answer (a member down, an election under way) for up to
    /// [`REQUEST_TIMEOUT`]. Every write is conditioned on what the store holds, or the same
    /// when made twice, so a request that landed unanswered is not made twice.
    fn request<T, F>(&self, mut attempt: impl FnMut(KvClient) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            match block(&self.handle, attempt(self.kv.clone())) {
                Err(e) if unavailable(&e) && Instant::now() + RETRY_PAUSE < deadline => {
                    std::thread::sleep(RETRY_PAUSE)
                }
                done => {
                    return done.map_err(|cause| StoreError::Etcd {
                        at: self.config.to_string(),
                        cause,
                    });
                }
            }
        }
    }

    fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.request(|mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
    }

    fn put(&self, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        self.request(|mut kv| {
            let (key, value) = (key.clone(), value.clone());
            async move { kv.put(key, value, None).await }
        })?;
        Ok(())
    }

    fn delete(&self, key: String, options: DeleteOptions) -> Result<(), StoreError> {
        self.request(|mut kv| {
            let (key, options) = (key.clone(), options.clone());
            async move { kv.delete(key, Some(options)).await }
        })?;
        Ok(())
    }

    /// Every key and value under `name` (a prefix below the store's), read at etcd revision
    /// `at` (0: the latest); and the etcd revision read at.
    fn get_prefix(&self, name: &str, at: i64) -> Result<(Vec<Pair>, i64), StoreError> {
        let key = self.key(name);
        let mut options = GetOptions::new().with_prefix();
        if at > 0 {
            options = options.with_revision(at);
        }
        let mut got = self.request(|mut kv| {
            let (key, options) = (key.clone(), options.clone());
            async move { kv.get(key, Some(options)).await }
        })?;
        let revision = got.header().map_or(0, |h| h.revision());
        let prefix_len = self.config.prefix.len();
        let kvs = got
            .take_kvs()
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key())[prefix_len..].to_string();
                (key, kv.value().to_vec())
            })
            .collect();
        Ok((kvs, revision))
    }

    fn delete_prefix(&self, name: &str) -> Result<(), StoreError> {
        self.delete(self.key(name), DeleteOptions::new().with_prefix())
    }

    /// What the store holds, read at one etcd revision; None if there is no store.
    fn load(&self) -> Result<Option<Held>, StoreError> {
        let (meta, at) = self.get_prefix("meta/", 0)?;
        let meta: BTreeMap<String, String> = meta
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let Some(store_id) = meta.get("meta/store_id").cloned() else {
            return Ok(None);
        };
        let number = |name: &str| -> Result<u64, StoreError> {
            let value = meta.get(name).map_or("0", String::as_str);
            value
                .parse()
                .map_err(|_| self.err_msg(&format!("{name} is {value:?}, not a number")))
        };
        let format = number("meta/format")?;
        if format > STORE_FORMAT {
            return Err(StoreError::Newer {
                path: self.at(),
                held: format,
            });
        }
        let (revision, base) = (number("meta/revision")?, number("meta/base")?);
        let bad = |row| StoreError::BadRow {
            path: self.at(),
            row,
        };
        let decode_err = |cause| StoreError::Decode {
            path: self.at(),
            cause,
        };
        let mut whole = Snapshot::default();
        let (parts, _) = self.get_prefix(&format!("snapshot/{}/", num(base)), at)?;
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
        let (entries, _) = self.get_prefix("log/", at)?;
        for (_, entry) in entries {
            let commit = Commit::decode(entry.as_slice()).map_err(decode_err)?;
            let last = commit.first + commit.changes.len() as u64 - 1;
            if last <= base {
                continue; // older than the snapshot, not yet deleted
            }
            if commit.first != tables.revision + 1 {
                return Err(self.err_msg(&format!(
                    "the log goes from revision {} to {}",
                    tables.revision, commit.first
                )));
            }
            log.push_back((commit.first, last));
            for (at, delta) in (commit.first..).zip(commit.changes) {
                let change = delta
                    .change
                    .clone()
                    .ok_or_else(|| self.err_msg("an empty change"))?;
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
            return Err(self.err_msg(&format!(
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
        let meta = [
            ("format", STORE_FORMAT.to_string()),
            ("store_id", id.clone()),
            ("revision", "0".to_string()),
            ("base", "0".to_string()),
        ];
        let puts: Vec<TxnOp> = meta
            .iter()
            .map(|(k, v)| TxnOp::put(self.key(&format!("meta/{k}")), v.as_str(), None))
            .collect();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key("meta/store_id"),
                CompareOp::Equal,
                0,
            )])
            .and_then(puts);
        if self.txn(txn)?.succeeded() {
            info!(store_id = %id, store = %self.config, "made a new store in etcd");
        }
        Ok(())
    }

    /// Writes the parts of a snapshot of `tables` at their revision (each part one put: a
    /// transaction of them all could pass etcd's request limit).
    fn put_snapshot(&self, tables: &Tables) -> Result<(), StoreError> {
        let dir = format!("snapshot/{}/", num(tables.revision));
        for (i, part) in snapshot::parts(tables).into_iter().enumerate() {
            let Some(Event::Snapshot(part)) = part.event else {
                continue;
            };
            self.put(self.key(&format!("{dir}{i:06}")), part.encode_to_vec())?;
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
        let txn = Txn::new()
            .when([Compare::value(
                self.key("meta/revision"),
                CompareOp::Equal,
                self.committed.to_string(),
            )])
            .and_then([
                TxnOp::put(
                    self.key(&format!("log/{}", num(first))),
                    entry.clone(),
                    None,
                ),
                TxnOp::put(self.key("meta/revision"), revision.to_string(), None),
            ]);
        if !self.txn(txn)?.succeeded() {
            let (meta, _) = self.get_prefix("meta/revision", 0)?;
            let held = meta
                .first()
                .and_then(|(_, v)| String::from_utf8_lossy(v).parse().ok())
                .unwrap_or(0);
            // Landed unanswered the first time, and asked again: it is there as written.
            let (landed, _) = self.get_prefix(&format!("log/{}", num(first)), 0)?;
            let ours = held == revision && landed.first().is_some_and(|(_, v)| *v == entry);
            if !ours {
                return Err(StoreError::Moved {
                    path: self.at(),
                    held,
                    expected: self.committed,
                });
            }
        }
        self.committed = revision;
        self.log.push_back((first, revision));
        Ok(())
    }

    /// The changes other controllers committed after this one's last commit (or catch-up), in
    /// order, each read into a typed row: they lead on from revision `committed` + 1.
    pub fn catch_up(&mut self) -> Result<Vec<RowChange>, StoreError> {
        let from = self.key(&format!("log/{}", num(self.committed + 1)));
        // Every key from there to the end of log/ ('0' follows '/').
        let options = GetOptions::new().with_range(self.key("log0"));
        let got = self.request(|mut kv| {
            let (from, options) = (from.clone(), options.clone());
            async move { kv.get(from, Some(options)).await }
        })?;
        let (mut committed, mut entries) = (self.committed, Vec::new());
        let mut rows = Vec::new();
        for kv in got.kvs() {
            let commit = Commit::decode(kv.value()).map_err(|cause| StoreError::Decode {
                path: self.at(),
                cause,
            })?;
            if commit.first != committed + 1 {
                return Err(StoreError::Outrun {
                    path: self.at(),
                    at: committed,
                    starts: commit.first,
                });
            }
            let last = commit.first + commit.changes.len() as u64 - 1;
            for delta in commit.changes {
                let change = delta
                    .change
                    .ok_or_else(|| self.err_msg("an empty change"))?;
                rows.push(RowChange::read(change).map_err(|row| StoreError::BadRow {
                    path: self.at(),
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

    /// A watch of the store's revision, for following other controllers' commits.
    pub fn revision_watch(&self) -> RevisionWatch {
        RevisionWatch {
            client: self.client.clone(),
            key: self.key("meta/revision"),
            at: self.config.to_string(),
        }
    }

    /// Writes a snapshot of `tables` once the log after the base holds more changes than are
    /// kept, then deletes the old snapshot and the log before the changes kept. A failure
    /// leaves the store as it was (a longer log), logged.
    pub fn settle(&mut self, tables: &Tables) {
        if tables.revision != self.committed || self.committed - self.base <= self.kept {
            return;
        }
        let base = tables.revision;
        let moved = (|| -> Result<bool, StoreError> {
            self.put_snapshot(tables)?;
            let txn = Txn::new()
                .when([Compare::value(
                    self.key("meta/revision"),
                    CompareOp::Equal,
                    base.to_string(),
                )])
                .and_then([TxnOp::put(self.key("meta/base"), base.to_string(), None)]);
            Ok(self.txn(txn)?.succeeded())
        })();
        match moved {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                if let Err(e) = &moved {
                    warn!("cannot write a snapshot of the tables at revision {base}: {e}");
                }
                let _ = self.delete_prefix(&format!("snapshot/{}/", num(base)));
                return;
            }
        }
        self.base = base;
        let cutoff = (base + 1).saturating_sub(self.kept);
        while self.log.front().is_some_and(|&(_, last)| last < cutoff) {
            self.log.pop_front();
        }
        let keep_from = self.log.front().map_or(base + 1, |&(first, _)| first);
        let (from, to) = (
            self.key("log/"),
            self.key(&format!("log/{}", num(keep_from))),
        );
        // Every older snapshot, also one another controller wrote.
        let (older, ours) = (
            self.key("snapshot/"),
            self.key(&format!("snapshot/{}/", num(base))),
        );
        let pruned = self
            .delete(from, DeleteOptions::new().with_range(to))
            .and_then(|()| self.delete(older, DeleteOptions::new().with_range(ours)));
        match pruned {
            Ok(()) => info!(base, "wrote a snapshot of the tables to etcd"),
            Err(e) => warn!(
                base,
                "wrote a snapshot, but the old one or the log stays: {e}"
            ),
        }
    }
}

/// etcd's watch of `meta/revision`.
pub struct RevisionWatch {
    client: Client,
    key: String,
    at: String,
}

impl RevisionWatch {
    /// Calls `moved` with each revision the store moves to, and with none each time the watch
    /// (re)starts, since it may have moved meanwhile. Returns only if `moved` says to stop.
    pub async fn run(self, mut moved: impl FnMut(Option<u64>) -> bool) {
        let mut watch = self.client.watch_client();
        loop {
            match watch.watch(self.key.clone(), None).await {
                Ok(mut stream) => {
                    if !moved(None) {
                        return;
                    }
                    loop {
                        match stream.message().await {
                            Ok(Some(response)) => {
                                for event in response.events() {
                                    let revision = event
                                        .kv()
                                        .and_then(|kv| std::str::from_utf8(kv.value()).ok())
                                        .and_then(|v| v.parse().ok());
                                    if revision.is_some() && !moved(revision) {
                                        return;
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                warn!(store = %self.at, "watch of the store's revision ended: {e}");
                                break;
                            }
                        }
                    }
                }
                Err(e) => warn!(store = %self.at, "cannot watch the store's revision: {e}"),
            }
            tokio::time::sleep(RETRY_PAUSE * 10).await;
        }
    }
}

/// Whether etcd did not take the request at all, or could not answer it for now.
fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Runs `future` to its end from synchronous code, also on a thread of the runtime.
fn block<F: Future>(handle: &Handle, future: F) -> F::Output {
    match Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(|| handle.block_on(future)),
        Err(_) => handle.block_on(future),
    }
}
