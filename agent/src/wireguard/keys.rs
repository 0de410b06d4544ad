//! The agent's WireGuard key pair: made once, the private key kept root-only in the state dir
//! (base64, as `wg genkey` writes it) and never sent anywhere; the public key goes into the
//! agent's peer record.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use weft_proto::wireguard::WgKey;
use x25519_dalek::{PublicKey, StaticSecret};

/// The file in the state dir that holds the private key.
const FILE: &str = "wireguard.key";

pub struct KeyPair {
    pub private: WgKey,
    pub public: WgKey,
}

impl KeyPair {
    /// The key pair kept in `state_dir`, made (and kept) if there is none.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<KeyPair> {
        let path = state_dir.join(FILE);
        let private = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<WgKey>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path)?,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let public = PublicKey::from(&StaticSecret::from(private.0));
        Ok(KeyPair {
            private,
            public: WgKey(public.to_bytes()),
        })
    }
}

/// Makes a private key and writes it, readable by root alone, before anything uses it.
fn create(path: &Path) -> anyhow::Result<WgKey> {
    // Clamped as Curve25519 wants it, as `wg genkey` writes it.
    let mut bytes: [u8; 32] = rand::random();
    bytes[0] &= 248;
    bytes[31] = (bytes[31] & 127) | 64;
    let key = WgKey(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{key}").with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all()?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_key_pair_is_made_once_and_kept_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let made = KeyPair::load_or_create(dir.path()).unwrap();
        let again = KeyPair::load_or_create(dir.path()).unwrap();
        assert_eq!((made.private, made.public), (again.private, again.public));
        assert_ne!(made.private, made.public);
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The public key of a known private one (from `wg pubkey`).
        std::fs::write(
            dir.path().join(FILE),
            "YLxl4MEsyN9/8dcEKcIwu6gzHcAW0g0z+LpAjJ1E1VY=\n",
        )
        .unwrap();
        let known = KeyPair::load_or_create(dir.path()).unwrap();
        assert_eq!(
            known.public.to_string(),
            "CwEv/22CW8b4H/Qd9gyrkiGKS2J9EMPSCpy7HxeuRG0="
        );
        std::fs::write(dir.path().join(FILE), "garbage\n").unwrap();
        let e = KeyPair::load_or_create(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.ends_with("wireguard.key: \"garbage\" is not a WireGuard key (base64)"),
            "{e}"
        );
    }
}
