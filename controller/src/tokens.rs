//! Join tokens: made by the operator (`weftctl token create`), each good once until it expires.
//! Only a hash of each secret is kept: in their own redb file in the data dir, or, for
//! controllers on etcd, under the store's prefix (`tokens/<id>`), so that a token made on one
//! controller joins on any.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use tracing::warn;
use weft_tls::{JoinToken, pin_of};

use crate::store::{Emptied, EtcdKv, StoreError, open_private_db};

/// The token store's file in the data dir.
pub const TOKENS_FILE: &str = "tokens.redb";

/// id → (SHA-256 of the secret, expiry in seconds since the epoch, peer that used it or "").
const TOKENS: TableDefinition<&str, (&[u8], u64, &str)> = TableDefinition::new("join_tokens");

/// How long etcd keeps a token after it expired: a late join is told "expired", not "unknown".
const ETCD_GRACE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("join token {0} is not known to this controller")]
    Unknown(String),
    #[error("join token {id} was made for another controller's CA")]
    OtherCa { id: String },
    #[error("join token {id} expired {ago}s ago")]
    Expired { id: String, ago: u64 },
    #[error("join token {id} was already used (by {peer})")]
    Used { id: String, peer: String },
    #[error("token store {path}: {why}")]
    Store { path: PathBuf, why: String },
    #[error(
        "{path} is empty (0 bytes): the join tokens made before are lost; remove it, or start with --accept-empty-store, to begin again with no join tokens"
    )]
    Emptied { path: PathBuf },
    #[error("join tokens: {0}")]
    Etcd(#[from] StoreError),
}

pub enum Tokens {
    Redb {
        db: Database,
        path: PathBuf,
    },
    /// Boxed: the client is large.
    Etcd(Box<EtcdKv>),
}

/// What is kept of one token.
struct Row {
    /// SHA-256 of the secret, hex.
    hash: String,
    /// Seconds since the epoch.
    expires: u64,
    /// The peer that used it, or "".
    used_by: String,
}

impl Row {
    /// Whether `token` may be used now, by what this row says of it.
    fn check(&self, token: &JoinToken, now: u64) -> Result<(), TokenError> {
        let id = token.id.clone();
        // A wrong secret tells the caller no more than an unknown id does.
        if self.hash != pin_of(token.secret.as_bytes()) {
            return Err(TokenError::Unknown(id));
        }
        if !self.used_by.is_empty() {
            return Err(TokenError::Used {
                id,
                peer: self.used_by.clone(),
            });
        }
        if now >= self.expires {
            return Err(TokenError::Expired {
                id,
                ago: now - self.expires,
            });
        }
        Ok(())
    }

    /// Its value in etcd: `HASH EXPIRES USED_BY` (peer names hold no spaces).
    fn etcd_value(&self) -> String {
        format!("{} {} {}", self.hash, self.expires, self.used_by)
    }

    fn from_etcd(value: &[u8]) -> Option<Row> {
        let value = std::str::from_utf8(value).ok()?;
        let mut parts = value.splitn(3, ' ');
        Some(Row {
            hash: parts.next()?.to_string(),
            expires: parts.next()?.parse().ok()?,
            used_by: parts.next()?.to_string(),
        })
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `bytes` random bytes as lower-case hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl Tokens {
    /// Opens (or creates) the token store in `dir`. An empty (0-byte) file, which redb would
    /// silently make a new store of, is refused unless `emptied` says to begin again.
    pub fn open(dir: &Path, emptied: Emptied) -> Result<Tokens, TokenError> {
        let path = dir.join(TOKENS_FILE);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            match emptied {
                Emptied::Refuse => return Err(TokenError::Emptied { path }),
                Emptied::BeginAgain => warn!(
                    path = %path.display(),
                    "--accept-empty-store: the token store is empty; beginning again with no join tokens"
                ),
            }
        }
        let db = open_private_db(&path).map_err(|e| TokenError::Store {
            path: path.clone(),
            why: e.to_string(),
        })?;
        Ok(Tokens::Redb { db, path })
    }

    /// The tokens of the control plane on etcd, under its prefix.
    pub fn on_etcd(kv: EtcdKv) -> Tokens {
        Tokens::Etcd(Box::new(kv))
    }

    /// A new token valid for `ttl` from `now`, durable before it is returned; and its expiry.
    pub fn create(
        &self,
        ttl: Duration,
        ca_pin: &str,
        now: SystemTime,
    ) -> Result<(JoinToken, u64), TokenError> {
        let token = JoinToken {
            id: random_hex(8),
            secret: random_hex(16),
            ca_pin: ca_pin.to_string(),
        };
        let row = Row {
            hash: pin_of(token.secret.as_bytes()),
            expires: unix_secs(now + ttl),
            used_by: String::new(),
        };
        match self {
            Tokens::Redb { db, path } => {
                let err = |e: &dyn std::fmt::Display| redb_err(path, e);
                let txn = db.begin_write().map_err(|e| err(&e))?;
                {
                    let mut table = txn.open_table(TOKENS).map_err(|e| err(&e))?;
                    table
                        .insert(token.id.as_str(), (row.hash.as_bytes(), row.expires, ""))
                        .map_err(|e| err(&e))?;
                }
                txn.commit().map_err(|e| err(&e))?;
            }
            Tokens::Etcd(kv) => {
                // A new random id: the put is the same if made twice.
                let lease = kv.grant_lease(ttl + ETCD_GRACE)?;
                kv.put_leased(kv.key(&token_key(&token.id)), row.etcd_value(), lease)?;
            }
        }
        Ok((token, row.expires))
    }

    /// Uses `token` up for `peer`, durably: a second use, however close, is refused (also on
    /// another controller of the control plane).
    pub fn redeem(
        &self,
        token: &JoinToken,
        own_pin: &str,
        peer: &str,
        now: SystemTime,
    ) -> Result<(), TokenError> {
        let id = token.id.clone();
        if token.ca_pin != own_pin {
            return Err(TokenError::OtherCa { id });
        }
        let now = unix_secs(now);
        match self {
            Tokens::Redb { db, path } => {
                let err = |e: &dyn std::fmt::Display| redb_err(path, e);
                let txn = db.begin_write().map_err(|e| err(&e))?;
                {
                    let mut table = txn.open_table(TOKENS).map_err(|e| err(&e))?;
                    let row = match table.get(id.as_str()).map_err(|e| err(&e))? {
                        Some(row) => {
                            let (hash, expires, used_by) = row.value();
                            Row {
                                hash: String::from_utf8_lossy(hash).into_owned(),
                                expires,
                                used_by: used_by.to_string(),
                            }
                        }
                        None => return Err(TokenError::Unknown(id)),
                    };
                    row.check(token, now)?;
                    table
                        .insert(id.as_str(), (row.hash.as_bytes(), row.expires, peer))
                        .map_err(|e| err(&e))?;
                }
                txn.commit().map_err(|e| err(&e))
            }
            Tokens::Etcd(kv) => {
                let key = kv.key(&token_key(&id));
                let Some((value, version, lease)) = kv.get_one(&key)? else {
                    return Err(TokenError::Unknown(id));
                };
                let row = Row::from_etcd(&value).ok_or_else(|| TokenError::Store {
                    path: PathBuf::from(kv.config().to_string()),
                    why: format!("{key} does not read as a token"),
                })?;
                row.check(token, now)?;
                let used = Row {
                    used_by: peer.to_string(),
                    ..row
                };
                // Only if no other controller used it since it was read.
                if kv.put_if_version(key.clone(), used.etcd_value(), version, lease)? {
                    return Ok(());
                }
                // Even if it was this request's own put, answered late and made again: one
                // peer name used twice would look the same.
                match kv.get_one(&key)?.and_then(|(v, ..)| Row::from_etcd(&v)) {
                    Some(row) => Err(TokenError::Used {
                        id,
                        peer: row.used_by,
                    }),
                    None => Err(TokenError::Unknown(id)),
                }
            }
        }
    }
}

fn token_key(id: &str) -> String {
    format!("tokens/{id}")
}

fn redb_err(path: &Path, e: &dyn std::fmt::Display) -> TokenError {
    TokenError::Store {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "00";

    #[test]
    fn a_token_is_good_once_and_only_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path(), Emptied::Refuse).unwrap();
        let now = SystemTime::now();
        let (token, _) = tokens.create(Duration::from_secs(60), PIN, now).unwrap();
        let (late, _) = tokens.create(Duration::from_secs(60), PIN, now).unwrap();

        let mut wrong = token.clone();
        wrong.secret = "f".repeat(32);
        assert!(matches!(
            tokens.redeem(&wrong, PIN, "host1", now),
            Err(TokenError::Unknown(_))
        ));
        assert!(matches!(
            tokens.redeem(&token, "11", "host1", now),
            Err(TokenError::OtherCa { .. })
        ));
        tokens.redeem(&token, PIN, "host1", now).unwrap();
        let again = tokens.redeem(&token, PIN, "host2", now).unwrap_err();
        assert_eq!(
            again.to_string(),
            format!("join token {} was already used (by host1)", token.id)
        );
        let expired = tokens
            .redeem(&late, PIN, "host2", now + Duration::from_secs(61))
            .unwrap_err();
        assert!(matches!(expired, TokenError::Expired { .. }), "{expired}");
    }

    #[test]
    fn an_empty_token_store_is_refused_unless_told_to_begin_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKENS_FILE);
        std::fs::File::create(&path).unwrap();
        let Err(e) = Tokens::open(dir.path(), Emptied::Refuse) else {
            panic!("an empty token store is opened");
        };
        assert_eq!(
            e.to_string(),
            format!(
                "{} is empty (0 bytes): the join tokens made before are lost; remove it, or start with --accept-empty-store, to begin again with no join tokens",
                path.display()
            )
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let tokens = Tokens::open(dir.path(), Emptied::BeginAgain).unwrap();
        let now = SystemTime::now();
        let (token, _) = tokens.create(Duration::from_secs(60), PIN, now).unwrap();
        tokens.redeem(&token, PIN, "host1", now).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
