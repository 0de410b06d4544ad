//! The controller's client of etcd: one connection, the store's prefix, and requests made from
//! synchronous code (the committing thread, a start, the token and CA calls), retried while
//! etcd cannot answer. The store, the CA and the join tokens on etcd all go through it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KvClient, PutOptions, TlsOptions, Txn, TxnOp, TxnResponse,
};
use tokio::runtime::{Handle, Runtime};

use crate::store::StoreError;

/// A key below the store's prefix and its value.
pub type Pair = (String, Vec<u8>);

/// How long one request to etcd may take: an etcd without a leader answers nothing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one try of a request may take, and the pause before the next.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(50);
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

/// A connection to etcd, for the keys under one prefix.
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
    kv: KvClient,
    handle: Handle,
    _runtime: Arc<EtcdRuntime>,
    config: EtcdConfig,
}

/// The runtime that drives the connection's I/O and timers. It is not the controller's: threads
/// wait for etcd holding the state lock, and handlers waiting for that lock hold the
/// controller's runtime threads, which then drive nothing; etcd's requests must still end
/// (their timeouts fire) for the lock to be let go.
struct EtcdRuntime(Option<Runtime>);

impl Drop for EtcdRuntime {
    fn drop(&mut self) {
        // Dropped on any thread, maybe a runtime's: shutting down waits for nothing.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl EtcdKv {
    pub fn connect(config: &EtcdConfig) -> Result<EtcdKv, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weft-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd {
                at: config.to_string(),
                cause: etcd_client::Error::IoError(e),
            })?;
        let handle = runtime.handle().clone();
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
        Ok(EtcdKv {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            client,
            handle,
            _runtime: Arc::new(EtcdRuntime(Some(runtime))),
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The client, for what the KV API does not cover (watches, leases).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The store's name in messages, as a path is the redb store's.
    pub fn at(&self) -> PathBuf {
        PathBuf::from(self.config.to_string())
    }

    pub fn err_msg(&self, why: &str) -> StoreError {
        StoreError::EtcdLayout {
            at: self.config.to_string(),
            why: why.to_string(),
        }
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.config.prefix)
    }

    /// Runs a request to etcd from synchronous code (the committing thread, or a start), again
    /// while etcd cannot answer (a member down, an election under way) for up to
    /// [`REQUEST_TIMEOUT`]. Every write is conditioned on what the store holds, or the same
    /// when made twice, so a request that landed unanswered is not made twice.
    pub fn request<T, F>(&self, attempt: impl FnMut(KvClient) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.retried(&self.kv, attempt)
    }

    /// [`EtcdKv::request`] through any of etcd's clients.
    fn retried<C: Clone, T, F>(
        &self,
        client: &C,
        mut attempt: impl FnMut(C) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            match block(&self.handle, attempt(client.clone())) {
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

    /// A lease of `ttl` (whole seconds, at least one): keys put with it go when it ends.
    pub fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let lease = self.retried(&self.client.lease_client(), |mut leases| async move {
            leases.grant(secs, None).await
        })?;
        Ok(lease.id())
    }

    /// Puts `value` at `key` (a whole key), to go with `lease`.
    pub fn put_leased(&self, key: String, value: String, lease: i64) -> Result<(), StoreError> {
        let options = PutOptions::new().with_lease(lease);
        self.request(|mut kv| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { kv.put(key, value, Some(options)).await }
        })?;
        Ok(())
    }

    /// The value at `key` (a whole key), its version (how often it was put) and lease.
    pub fn get_one(&self, key: &str) -> Result<Option<(Vec<u8>, i64, i64)>, StoreError> {
        let got = self.request(|mut kv| {
            let key = key.to_string();
            async move { kv.get(key, None).await }
        })?;
        Ok(got
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.version(), kv.lease())))
    }

    /// Whether etcd answers a linearizable read (one its leader serves, with a quorum behind
    /// it) within one attempt, asynchronously; an error etcd sends is an answer.
    pub async fn answers(&self) -> Result<(), String> {
        let mut kv = self.kv.clone();
        let read = kv.get(self.key("meta/revision"), None);
        match tokio::time::timeout(ATTEMPT_TIMEOUT, read).await {
            Err(_) => Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
            Ok(Err(e)) if unavailable(&e) => Err(e.to_string()),
            Ok(_) => Ok(()),
        }
    }

    /// Puts `value` at `key` with `lease`, only if the key is still at `version`; whether it
    /// did.
    pub fn put_if_version(
        &self,
        key: String,
        value: String,
        version: i64,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, version)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        Ok(self.txn(txn)?.succeeded())
    }

    pub fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.request(|mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
    }

    pub fn put(&self, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        self.request(|mut kv| {
            let (key, value) = (key.clone(), value.clone());
            async move { kv.put(key, value, None).await }
        })?;
        Ok(())
    }

    pub fn delete(&self, key: String, options: DeleteOptions) -> Result<(), StoreError> {
        self.request(|mut kv| {
            let (key, options) = (key.clone(), options.clone());
            async move { kv.delete(key, Some(options)).await }
        })?;
        Ok(())
    }

    /// Every key and value under `name` (a prefix below the store's), read at etcd revision
    /// `at` (0: the latest); and the etcd revision read at.
    pub fn get_prefix(&self, name: &str, at: i64) -> Result<(Vec<Pair>, i64), StoreError> {
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

    pub fn delete_prefix(&self, name: &str) -> Result<(), StoreError> {
        self.delete(self.key(name), DeleteOptions::new().with_prefix())
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
pub(super) fn block<F: Future>(handle: &Handle, future: F) -> F::Output {
    match Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(|| handle.block_on(future)),
        Err(_) => handle.block_on(future),
    }
}
