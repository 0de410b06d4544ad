//! Join tokens: made by the operator (`weftctl token create`), each good once until it expires.
//! Kept in their own redb file in the data dir, with only a hash of each secret.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use tracing::warn;
use weft_tls::{JoinToken, pin_of};

use crate::store::{Emptied, open_private_db};

/// The token store's file in the data dir.
pub const TOKENS_FILE: &str = "tokens.redb";

/// id → (SHA-256 of the secret, expiry in seconds since the epoch, peer that used it or "").
const TOKENS: TableDefinition<&str, (&[u8], u64, &str)> = TableDefinition::new("join_tokens");

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
}

pub struct Tokens {
    db: Database,
    path: PathBuf,
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
        let store_err = |why: String| TokenError::Store {
            path: path.clone(),
            why,
        };
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            match emptied {
                Emptied::Refuse => return Err(TokenError::Emptied { path }),
                Emptied::BeginAgain => warn!(
                    path = %path.display(),
                    "--accept-empty-store: the token store is empty; beginning again with no join tokens"
                ),
            }
        }
        let db = open_private_db(&path).map_err(|e| store_err(e.to_string()))?;
        Ok(Tokens { db, path })
    }

    fn err(&self, e: impl std::fmt::Display) -> TokenError {
        TokenError::Store {
            path: self.path.clone(),
            why: e.to_string(),
        }
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
        let expires = unix_secs(now + ttl);
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TOKENS).map_err(|e| self.err(e))?;
            let hash = pin_of(token.secret.as_bytes());
            table
                .insert(token.id.as_str(), (hash.as_bytes(), expires, ""))
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok((token, expires))
    }

    /// Uses `token` up for `peer`, durably: a second use, however close, is refused.
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
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TOKENS).map_err(|e| self.err(e))?;
            let (hash, expires, used_by) = match table.get(id.as_str()).map_err(|e| self.err(e))? {
                Some(row) => {
                    let (hash, expires, used_by) = row.value();
                    (hash.to_vec(), expires, used_by.to_string())
                }
                None => return Err(TokenError::Unknown(id)),
            };
            // A wrong secret tells the caller no more than an unknown id does.
            if hash != pin_of(token.secret.as_bytes()).as_bytes() {
                return Err(TokenError::Unknown(id));
            }
            if !used_by.is_empty() {
                return Err(TokenError::Used { id, peer: used_by });
            }
            let now = unix_secs(now);
            if now >= expires {
                return Err(TokenError::Expired {
                    id,
                    ago: now - expires,
                });
            }
            table
                .insert(id.as_str(), (hash.as_slice(), expires, peer))
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
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
