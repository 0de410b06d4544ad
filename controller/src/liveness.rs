//! Which peers are alive: a peer whose agent holds a watch stream open is connected; one that
//! has been gone for longer than the lease is unreachable. Kept in memory: after a restart of
//! the controller every peer counts as last seen at that restart.

use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Presence {
    watchers: usize,
    /// When it connected, or when its last watch ended.
    since: Instant,
}

/// What is known of one peer's presence now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPresence {
    pub connected: bool,
    pub reachable: bool,
    /// How long it has been connected or, if not, gone.
    pub for_: Duration,
}

impl PeerPresence {
    /// Never seen: not even counted from a start.
    pub fn never() -> PeerPresence {
        PeerPresence {
            connected: false,
            reachable: false,
            for_: Duration::MAX,
        }
    }
}

pub struct Liveness {
    started: Instant,
    lease: Duration,
    peers: HashMap<String, Presence>,
}

impl Liveness {
    pub fn new(lease: Duration, now: Instant) -> Self {
        Liveness {
            started: now,
            lease,
            peers: HashMap::new(),
        }
    }

    pub fn connect(&mut self, peer: &str, now: Instant) {
        let p = self.peers.entry(peer.to_string()).or_insert(Presence {
            watchers: 0,
            since: now,
        });
        if p.watchers == 0 {
            p.since = now;
        }
        p.watchers += 1;
    }

    pub fn disconnect(&mut self, peer: &str, now: Instant) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.watchers = p.watchers.saturating_sub(1);
            if p.watchers == 0 {
                p.since = now;
            }
        }
    }

    /// Every peer seen since the start: its name, whether it is watching, and since when.
    pub fn peers(&self) -> impl Iterator<Item = (&str, bool, Instant)> {
        self.peers
            .iter()
            .map(|(name, p)| (name.as_str(), p.watchers > 0, p.since))
    }

    /// How long a peer may be gone before it counts as unreachable.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn is_connected(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.watchers > 0)
    }

    pub fn presence(&self, peer: &str, now: Instant) -> PeerPresence {
        let (connected, since) = match self.peers.get(peer) {
            Some(p) => (p.watchers > 0, p.since),
            None => (false, self.started),
        };
        let for_ = now.saturating_duration_since(since);
        PeerPresence {
            connected,
            reachable: connected || for_ < self.lease,
            for_,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_unreachable_only_after_the_lease() {
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        let mut l = Liveness::new(Duration::from_secs(60), t0);
        // Never seen since the controller started: counted from the start.
        assert_eq!(
            l.presence("host1", secs(30)),
            PeerPresence {
                connected: false,
                reachable: true,
                for_: Duration::from_secs(30)
            }
        );
        assert!(!l.presence("host1", secs(61)).reachable);
        l.connect("host1", secs(100));
        l.connect("host1", secs(101)); // a second stream, e.g. a reconnect racing the old one
        l.disconnect("host1", secs(102));
        assert!(l.is_connected("host1"));
        assert_eq!(
            l.presence("host1", secs(200)).for_,
            Duration::from_secs(100)
        );
        l.disconnect("host1", secs(300));
        assert!(!l.is_connected("host1"));
        assert!(l.presence("host1", secs(359)).reachable);
        assert_eq!(
            l.presence("host1", secs(360)),
            PeerPresence {
                connected: false,
                reachable: false,
                for_: Duration::from_secs(60)
            }
        );
    }
}
