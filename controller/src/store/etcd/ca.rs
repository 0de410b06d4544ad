//! The control plane's CA in etcd (`ca/cert.pem`, `ca/key.pem` under the prefix): put once, by
//! the first controller to start, and used by every controller, so that an agent joined at one
//! is trusted by all. Whoever reads the prefix holds the CA's key: hence etcd's roles and TLS.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::EtcdKv;
use crate::store::StoreError;

const CERT: &str = "ca/cert.pem";
const KEY: &str = "ca/key.pem";

/// The CA's certificate and key (PEM) in etcd, `seed` put there first if it holds none; and
/// whether it was.
pub fn shared_ca(
    kv: &EtcdKv,
    seed: (String, String),
) -> Result<((String, String), bool), StoreError> {
    let (cert, key) = seed;
    let txn = Txn::new()
        .when([Compare::create_revision(kv.key(KEY), CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(kv.key(CERT), cert, None),
            TxnOp::put(kv.key(KEY), key, None),
        ]);
    let seeded = kv.txn(txn)?.succeeded();
    let (held, _) = kv.get_prefix("ca/", 0)?;
    let pem = |name: &str| {
        held.iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
            .ok_or_else(|| kv.err_msg(&format!("{name} is missing or not text")))
    };
    Ok(((pem(CERT)?, pem(KEY)?), seeded))
}
