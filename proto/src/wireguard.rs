//! WireGuard keys as the tables carry them (base64, as `wg` prints them) and as the userspace
//! API takes them (hex): read once, into 32 bytes.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A Curve25519 key: a peer's public key in the tables, or an agent's own private key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WgKey(pub [u8; 32]);

impl WgKey {
    /// The key in lower-case hex, as WireGuard's userspace API (UAPI) speaks it.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Result<WgKey, String> {
        let bad = || format!("\"{s}\" is not a WireGuard key in hex");
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(WgKey(key))
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

/// Shows the public form only: a private key never reaches a log through `{:?}`.
impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({})", &self.to_string()[..8])
    }
}

impl FromStr for WgKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| format!("\"{s}\" is not a WireGuard key (base64)"))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(WgKey)
            .map_err(|_| format!("\"{s}\" is not a WireGuard key: not 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_in_both_forms() {
        let key: WgKey = "s5B/H7N0dCcr2n3JvU1ZvdobckrLDAU7TkHvS2B09Ug="
            .parse()
            .unwrap();
        assert_eq!(
            key.to_string(),
            "s5B/H7N0dCcr2n3JvU1ZvdobckrLDAU7TkHvS2B09Ug="
        );
        assert_eq!(WgKey::from_hex(&key.hex()).unwrap(), key);
        assert_eq!(key.hex().len(), 64);
        assert_eq!(
            "c2hvcnQ=".parse::<WgKey>().unwrap_err(),
            "\"c2hvcnQ=\" is not a WireGuard key: not 32 bytes"
        );
        assert!(WgKey::from_hex("zz").is_err());
    }
}
