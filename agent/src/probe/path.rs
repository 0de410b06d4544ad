//! What the probes have shown of the data path to one peer, and which probes to send next: pure
//! functions of the probes' fates, so every rule is tested without a kernel.
//!
//! Each round sends a small probe (reachability and round trip), and every tenth round, or every
//! round while it does not cross, a full-size one (the network MTU). When the full-size one is
//! lost while smaller ones cross, the largest size that crosses is searched for: each round
//! probes sizes spread between the largest known to cross and the smallest known not to, so the
//! interval shrinks about sevenfold a round.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The small probe's size: an IPv6 packet of 64 bytes (40 of header, 24 of ICMPv6).
pub const SMALL: u32 = 64;

/// Sizes a searching round probes strictly between the bounds.
const SEARCH_POINTS: u32 = 6;

/// A path that carries full-size frames is checked for them every this many rounds: each costs
/// a full frame there and back.
const FULL_EVERY: u64 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Probing began too recently to say.
    Pending,
    Ok,
    /// No probe came back for this long, when the state was last judged.
    Failed,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Ok => "ok",
            State::Failed => "failed",
        }
    }
}

/// A change worth a log line and a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Up,
    Down,
    /// The largest frame that crosses changed (from, to).
    Mtu(Option<u32>, u32),
}

/// The data path to one peer.
#[derive(Debug, Clone)]
pub struct Path {
    pub vtep: IpAddr,
    pub state: State,
    /// When `state` began.
    pub since: Instant,
    /// The round trip of the latest small probe answered.
    pub rtt: Option<Duration>,
    /// The largest probe known to cross there and back.
    pub mtu: Option<u32>,
    /// The latest reply of any size (or, before the first, when probing began).
    last_heard: Instant,
    /// The sizes of the round under way, and whether each was answered.
    round: BTreeMap<u32, bool>,
    /// While the full-size probe is lost: the largest size that crossed in the last round and
    /// the smallest that did not.
    search: Option<(u32, u32)>,
    /// Rounds closed so far.
    rounds: u64,
}

impl Path {
    pub fn new(vtep: IpAddr, now: Instant) -> Path {
        Path {
            vtep,
            state: State::Pending,
            since: now,
            rtt: None,
            mtu: None,
            last_heard: now,
            round: BTreeMap::new(),
            search: None,
            rounds: 0,
        }
    }

    /// How long no probe has come back.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }

    /// The sizes the next round sends (each once), for a network of MTU `full`.
    pub fn sizes(&self, full: u32) -> Vec<u32> {
        let carries_full = self.mtu == Some(full) && self.search.is_none();
        if carries_full && !self.rounds.is_multiple_of(FULL_EVERY) {
            return vec![SMALL];
        }
        let mut sizes = vec![SMALL, full];
        if let Some((lo, hi)) = self.search {
            sizes.extend([lo, hi]);
            let step = (hi - lo) as f64 / (SEARCH_POINTS + 1) as f64;
            sizes.extend((1..=SEARCH_POINTS).map(|k| lo + (step * k as f64) as u32));
        }
        sizes.retain(|s| (SMALL..=full).contains(s));
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// A probe of `size` was sent in this round.
    pub fn sent(&mut self, size: u32) {
        self.round.insert(size, false);
    }

    /// The probe of `size` came back after `rtt`: the path works, whatever it did before.
    pub fn answered(&mut self, size: u32, rtt: Duration, now: Instant) -> Option<Change> {
        if let Some(answered) = self.round.get_mut(&size) {
            *answered = true;
        }
        self.last_heard = now;
        if size == SMALL {
            self.rtt = Some(rtt);
        }
        (self.state != State::Ok).then(|| {
            self.state = State::Ok;
            self.since = now;
            Change::Up
        })
    }

    /// Ends the round under way: what its answers say of the largest frame that crosses, and
    /// whether the path has been silent for `fail_after`. Returns what changed.
    ///
    /// The MTU shown changes only once the search has settled on one size (or the full-size
    /// probe crossed): a single lost probe, or a search half-way, changes nothing.
    pub fn close_round(&mut self, full: u32, fail_after: Duration, now: Instant) -> Vec<Change> {
        let round = std::mem::take(&mut self.round);
        self.rounds += 1;
        let mut changes = Vec::new();
        let crossed = round.iter().filter(|(_, a)| **a).map(|(s, _)| *s).max();
        // Only a round that sent the full-size probe says anything of the MTU.
        if let Some(lo) = crossed.filter(|_| round.contains_key(&full)) {
            let settled = if lo >= full {
                self.search = None;
                Some(full)
            } else {
                // The smallest lost above what crossed: the full-size probe at least.
                let hi = round
                    .iter()
                    .filter(|(s, a)| !**a && **s > lo)
                    .map(|(s, _)| *s)
                    .min()
                    .unwrap_or(full);
                self.search = Some((lo, hi));
                (hi - lo <= 1).then_some(lo)
            };
            if let Some(mtu) = settled.filter(|m| self.mtu != Some(*m)) {
                changes.push(Change::Mtu(self.mtu, mtu));
                self.mtu = Some(mtu);
            }
        }
        if self.state != State::Failed && self.silent_for(now) >= fail_after {
            self.state = State::Failed;
            self.since = now;
            changes.push(Change::Down);
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: u32 = 1450;
    const FAIL_AFTER: Duration = Duration::from_secs(3);
    const RTT: Duration = Duration::from_micros(100);

    /// Runs rounds on `path` over a link that carries packets up to `carries` bytes (none if
    /// 0), one second apart from `start`; returns the changes of each round.
    fn rounds(path: &mut Path, carries: u32, n: u64, start: Instant) -> Vec<Vec<Change>> {
        (0..n)
            .map(|i| {
                let now = start + Duration::from_secs(i + 1);
                for size in path.sizes(FULL) {
                    path.sent(size);
                    if size <= carries {
                        path.answered(size, RTT, now);
                    }
                }
                path.close_round(FULL, FAIL_AFTER, now + Duration::from_millis(999))
            })
            .collect()
    }

    #[test]
    fn a_path_that_carries_full_frames_is_ok_at_the_network_mtu() {
        let start = Instant::now();
        let mut path = Path::new("198.18.0.2".parse().unwrap(), start);
        assert_eq!(path.state, State::Pending);
        assert_eq!(
            path.sizes(FULL),
            [SMALL, FULL],
            "the first round tries both"
        );
        let changes = rounds(&mut path, FULL, 3, start);
        assert_eq!(changes[0], [Change::Mtu(None, FULL)]);
        assert!(changes[1].is_empty() && changes[2].is_empty());
        assert_eq!(path.sizes(FULL), [SMALL], "then a small one a round");
        rounds(&mut path, FULL, 7, start + Duration::from_secs(3));
        assert_eq!(
            path.sizes(FULL),
            [SMALL, FULL],
            "and a full one every tenth"
        );
        assert_eq!(
            (path.state.clone(), path.mtu, path.rtt),
            (State::Ok, Some(FULL), Some(RTT))
        );
    }

    #[test]
    fn a_silent_path_fails_after_the_limit_and_comes_back_with_the_first_reply() {
        let start = Instant::now();
        let mut path = Path::new("198.18.0.2".parse().unwrap(), start);
        rounds(&mut path, FULL, 1, start);
        let later = start + Duration::from_secs(1);
        let silent = rounds(&mut path, 0, 4, later);
        assert_eq!(silent[..2], [[], []], "up to 3 s without a reply");
        assert_eq!(silent[2], [Change::Down], "4 s without a reply");
        assert!(silent[3].is_empty(), "failed once, not each round");
        assert_eq!(path.state, State::Failed);
        assert_eq!(path.mtu, Some(FULL), "the last size known to cross stays");
        let back = start + Duration::from_secs(6);
        assert_eq!(path.answered(SMALL, RTT, back), Some(Change::Up));
        assert_eq!(path.state, State::Ok);
    }

    #[test]
    fn a_path_that_drops_full_frames_finds_the_largest_that_crosses_and_recovers() {
        let start = Instant::now();
        let mut path = Path::new("198.18.0.2".parse().unwrap(), start);
        rounds(&mut path, FULL, 1, start);
        let changes = rounds(&mut path, 1350, 18, start + Duration::from_secs(1));
        let all: Vec<Change> = changes.into_iter().flatten().collect();
        assert_eq!(
            all,
            [Change::Mtu(Some(FULL), 1350)],
            "one change, once the search has settled"
        );
        assert_eq!(path.state, State::Ok, "small probes kept crossing");
        assert!(
            path.sizes(FULL).len() <= 4,
            "once found, a round checks the bounds only: {:?}",
            path.sizes(FULL)
        );
        let healed = rounds(&mut path, FULL, 1, start + Duration::from_secs(19));
        assert_eq!(healed[0], [Change::Mtu(Some(1350), FULL)]);
        assert_eq!(path.sizes(FULL), [SMALL, FULL]);
    }

    #[test]
    fn a_path_that_never_carried_full_frames_shows_what_crosses_once_found() {
        let start = Instant::now();
        let mut path = Path::new("198.18.0.2".parse().unwrap(), start);
        let changes = rounds(&mut path, 1000, 8, start);
        let all: Vec<Change> = changes.into_iter().flatten().collect();
        assert_eq!(all, [Change::Mtu(None, 1000)]);
        assert_eq!(path.state, State::Ok);
    }
}
