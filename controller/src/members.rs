//! The control plane's members, and where each peer's agent is connected, for controllers on
//! etcd. Every [`BEAT`], and at once when a watch opens or ends, each controller puts what it
//! knows under `controllers/<address>`: its name, when it started, the time of this beat, and
//! every peer it has seen with whether its watch is open and since when. A member whose last
//! beat is older than [`GONE_AFTER`] is gone, and its peers' watches count as ended then.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tracing::warn;

use crate::liveness::{Liveness, PeerPresence};
use crate::store::{EtcdKv, StoreError};

const BEAT: Duration = Duration::from_secs(2);
/// Three beats missed.
const GONE_AFTER: Duration = Duration::from_secs(3 * BEAT.as_secs());
const PREFIX: &str = "controllers/";

/// What one controller said in its last beat; times in seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Where agents reach it (its listen address, or host name and port); its key.
    pub address: String,
    /// Its host name.
    pub name: String,
    pub started: u64,
    pub beat: u64,
    /// Each peer it has seen: name, whether its watch is open, since when.
    pub peers: Vec<(String, bool, u64)>,
}

impl Member {
    /// Whether it beat recently, as of `now`.
    pub fn serving(&self, now: u64) -> bool {
        now.saturating_sub(self.beat) <= GONE_AFTER.as_secs()
    }

    /// One line each: `name N`, `started T`, `beat T`, `peer NAME 0|1 SINCE`.
    fn text(&self) -> String {
        let mut text = format!(
            "name {}\nstarted {}\nbeat {}\n",
            self.name, self.started, self.beat
        );
        for (peer, watching, since) in &self.peers {
            text.push_str(&format!("peer {peer} {} {since}\n", u8::from(*watching)));
        }
        text
    }

    fn read(address: &str, text: &str) -> Option<Member> {
        let mut member = Member {
            address: address.to_string(),
            name: String::new(),
            started: 0,
            beat: 0,
            peers: Vec::new(),
        };
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            match words[..] {
                ["name", name] => member.name = name.to_string(),
                ["started", t] => member.started = t.parse().ok()?,
                ["beat", t] => member.beat = t.parse().ok()?,
                ["peer", peer, watching, since] => {
                    member
                        .peers
                        .push((peer.to_string(), watching == "1", since.parse().ok()?))
                }
                _ => return None,
            }
        }
        Some(member)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This controller as a member of the control plane.
pub struct Members {
    /// None: the store is this controller's alone (redb), and so is the control plane.
    kv: Option<EtcdKv>,
    address: String,
    name: String,
    started: u64,
    changed: Notify,
}

impl Members {
    /// Announces this controller at `address` and, on etcd, beats from now on.
    pub fn start(
        kv: Option<EtcdKv>,
        address: String,
        name: String,
        liveness: Arc<Mutex<Liveness>>,
    ) -> Arc<Members> {
        let on_etcd = kv.is_some();
        let members = Arc::new(Members {
            kv,
            address,
            name,
            started: unix_now(),
            changed: Notify::new(),
        });
        if on_etcd {
            tokio::spawn(beat(members.clone(), liveness));
        }
        members
    }

    /// A peer's watch opened or ended: beat now.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// This controller as of now.
    fn me(&self, liveness: &Mutex<Liveness>) -> Member {
        let (now, at) = (unix_now(), Instant::now());
        let peers = liveness
            .lock()
            .expect("liveness lock poisoned")
            .peers()
            .map(|(peer, watching, since)| {
                let ago = at.saturating_duration_since(since).as_secs();
                (peer.to_string(), watching, now.saturating_sub(ago))
            })
            .collect();
        Member {
            address: self.address.clone(),
            name: self.name.clone(),
            started: self.started,
            beat: now,
            peers,
        }
    }

    /// Every member, this one as of now and the others as of their last beat (blocking: etcd
    /// is asked).
    pub fn all(&self, liveness: &Mutex<Liveness>) -> Result<Vec<Member>, StoreError> {
        let mut all = vec![self.me(liveness)];
        all.extend(self.others()?);
        Ok(all)
    }

    /// The other members, as of their last beat (blocking).
    pub fn others(&self) -> Result<Vec<Member>, StoreError> {
        let Some(kv) = &self.kv else {
            return Ok(Vec::new());
        };
        let (held, _) = kv.get_prefix(PREFIX, 0)?;
        let mut others = Vec::new();
        for (key, value) in held {
            let address = &key[PREFIX.len()..];
            if address == self.address {
                continue;
            }
            let text = String::from_utf8_lossy(&value);
            match Member::read(address, &text) {
                Some(member) => others.push(member),
                None => warn!(%key, "a member's entry does not read; left out"),
            }
        }
        Ok(others)
    }
}

/// Puts this controller's entry every BEAT, and when a peer's watch opens or ends.
async fn beat(members: Arc<Members>, liveness: Arc<Mutex<Liveness>>) {
    loop {
        let me = members.me(&liveness);
        let put = {
            let members = members.clone();
            tokio::task::spawn_blocking(move || {
                let kv = members.kv.as_ref().expect("beats only on etcd");
                kv.put(
                    kv.key(&format!("{PREFIX}{}", me.address)),
                    me.text().into_bytes(),
                )
            })
        };
        if let Ok(Err(e)) = put.await {
            warn!("cannot tell the other controllers of this one: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(BEAT) => {}
            _ = members.changed.notified() => {}
        }
    }
}

/// `peer`'s presence across the control plane, from this controller's (`local`) and what the
/// `others` said: connected if its watch is open here or on a member that is not gone (for as
/// long as the longest); otherwise gone since its latest watch ended anywhere.
pub fn merged(
    local: PeerPresence,
    peer: &str,
    others: &[Member],
    now: u64,
    lease: Duration,
) -> PeerPresence {
    let mut best = local;
    for member in others {
        let serving = member.serving(now);
        for (_, watching, since) in member.peers.iter().filter(|(p, ..)| p == peer) {
            let (connected, since) = match (*watching, serving) {
                (true, true) => (true, *since),
                // Its controller went away with the watch open: ended then, as far as known.
                (true, false) => (false, member.beat),
                (false, _) => (false, *since),
            };
            let for_ = Duration::from_secs(now.saturating_sub(since));
            let better = match (best.connected, connected) {
                (false, true) => true,
                (true, true) => for_ > best.for_,
                (false, false) => for_ < best.for_,
                (true, false) => false,
            };
            if better {
                best = PeerPresence {
                    connected,
                    reachable: false,
                    for_,
                };
            }
        }
    }
    best.reachable = best.connected || best.for_ < lease;
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(beat: u64, peers: &[(&str, bool, u64)]) -> Member {
        Member {
            address: "198.18.0.101:6786".into(),
            name: "ctl2".into(),
            started: 1,
            beat,
            peers: peers.iter().map(|&(p, w, s)| (p.into(), w, s)).collect(),
        }
    }

    fn presence(connected: bool, for_secs: u64) -> PeerPresence {
        PeerPresence {
            connected,
            reachable: connected || for_secs < 60,
            for_: Duration::from_secs(for_secs),
        }
    }

    #[test]
    fn a_member_reads_back_as_written() {
        let m = member(7, &[("host1", true, 3), ("host2", false, 5)]);
        assert_eq!(Member::read(&m.address, &m.text()), Some(m));
        assert_eq!(Member::read("x", "beat soon\n"), None);
    }

    #[test]
    fn a_peer_is_connected_if_its_watch_is_open_on_any_serving_member() {
        let lease = Duration::from_secs(60);
        let never = presence(false, 500);
        let now = 1000;
        // Watching another controller, for 100 s.
        let others = [member(now - 1, &[("host1", true, now - 100)])];
        assert_eq!(
            merged(never, "host1", &others, now, lease),
            presence(true, 100)
        );
        assert_eq!(merged(never, "host2", &others, now, lease), never);
        // Connected here for 10 s and there for 100 s: for 100 s.
        assert_eq!(
            merged(presence(true, 10), "host1", &others, now, lease),
            presence(true, 100)
        );
        // Its watch ended there 30 s ago: gone for 30 s, still reachable.
        let ended = [member(now - 1, &[("host1", false, now - 30)])];
        assert_eq!(
            merged(never, "host1", &ended, now, lease),
            presence(false, 30)
        );
        // That controller stopped beating 200 s ago with the watch open: gone since then.
        let dead = [member(now - 200, &[("host1", true, now - 300)])];
        let gone = merged(never, "host1", &dead, now, lease);
        assert_eq!(gone, presence(false, 200));
        assert!(!gone.reachable);
    }
}
