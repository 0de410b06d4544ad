//! What weft's VXLAN devices hold in the kernel (FDB and neighbour entries), as the agent last
//! read or wrote it, kept true by the kernel's neighbour notifications: a reconcile pass diffs
//! against it, and reads the kernel again only when it cannot be trusted. Reading is what costs:
//! the kernel dumps a VXLAN device's FDB in time quadratic in its size (each 32 KiB part walks
//! the table again from its start), about a second at 100,000 entries, so a dump on every pass
//! made one endpoint's change cost a second of CPU.
//!
//! Trust is lost when a notification disagrees with what is held (someone else changed an
//! entry, or one of weft's own changes was undone by a later one before its notification was
//! read), when notifications were lost (the socket overflowed), when a write failed, and after
//! ten minutes (`DUMP_EVERY`) in any case.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft_proto::names::Mac;

use crate::desired::{FdbEntry, Neighbour, NetworkState, Touched, diff, diff_among};
use crate::netlink::EntryEvent;

/// Even when every notification agreed, the kernel is read again this often, in case one was
/// lost without the kernel saying so.
const DUMP_EVERY: Duration = Duration::from_secs(600);

/// One device's entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Entries {
    pub fdb: BTreeSet<FdbEntry>,
    pub neighbours: BTreeSet<Neighbour>,
}

/// The writes that make a device hold what it should.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub fdb_add: Vec<FdbEntry>,
    pub fdb_remove: Vec<FdbEntry>,
    pub neigh_add: Vec<Neighbour>,
    /// Addresses that keep an entry under another MAC are not here: the add replaces it, and a
    /// removal first would be seen as an entry lost.
    pub neigh_remove: Vec<Neighbour>,
}

#[derive(Default)]
struct Inner {
    /// The devices weft settled, by index: the notifications are checked against these.
    devices: HashMap<u32, Entries>,
    /// The last dump's entries of devices not yet settled since.
    unclaimed: HashMap<u32, Entries>,
    /// When the kernel was last read, if what is held can be trusted since.
    trusted_since: Option<Instant>,
    /// The notifications are being read: without them nothing held can be trusted.
    following: bool,
    /// A dump is under way; a notification about a settled device during it makes the dump's
    /// result untrusted, since it may or may not include the change.
    dumping: bool,
    tainted: bool,
}

#[derive(Default)]
pub struct Held(Mutex<Inner>);

/// Adds `add` (in order, without repeats, as a diff gives them) to `set` and takes `remove`
/// away. An empty set is built in one go: its nodes are then full, where inserting in order
/// would leave them half full.
fn apply<T: Ord + Copy>(set: &mut BTreeSet<T>, add: &[T], remove: &[T]) {
    if set.is_empty() {
        *set = add.iter().copied().collect();
        return;
    }
    for entry in remove {
        set.remove(entry);
    }
    set.extend(add);
}

impl Held {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().expect("held entries poisoned")
    }

    /// Whether the kernel must be read before a device is settled.
    pub fn must_dump(&self) -> bool {
        self.inner()
            .trusted_since
            .is_none_or(|at| at.elapsed() >= DUMP_EVERY)
    }

    /// Notifications are read from now on.
    pub fn following(&self) {
        self.inner().following = true;
    }

    /// A dump starts: notifications from now on to [`Held::load`] taint it.
    pub fn dumping(&self) {
        let mut inner = self.inner();
        inner.dumping = true;
        inner.tainted = false;
    }

    /// What a dump read, by device index. Devices it does not name hold nothing.
    pub fn load(&self, mut dumped: HashMap<u32, Entries>) {
        let mut inner = self.inner();
        let inner = &mut *inner;
        inner.dumping = false;
        // Devices settled before stay watched; the rest wait for their first settle.
        for (index, held) in &mut inner.devices {
            *held = dumped.remove(index).unwrap_or_default();
        }
        inner.unclaimed = dumped;
        inner.trusted_since = (inner.following && !inner.tainted).then(Instant::now);
    }

    /// Forgets what is held (a write failed, or a pass ended early): the next pass reads the
    /// kernel.
    pub fn forget(&self) {
        let mut inner = self.inner();
        inner.trusted_since = None;
        inner.dumping = false;
    }

    /// A device weft removed: its entries went with it.
    pub fn removed(&self, index: u32) {
        let mut inner = self.inner();
        inner.devices.remove(&index);
        inner.unclaimed.remove(&index);
    }

    /// The writes that make device `index` hold what `state` says, which it holds from now on:
    /// the notifications of the writes then agree. Only the `touched` entries are looked at, if
    /// given and the device was settled before. A failed write must [`Held::forget`].
    pub fn settle(&self, index: u32, state: &NetworkState, touched: Option<&Touched>) -> Changes {
        let mut inner = self.inner();
        let inner = &mut *inner;
        let settled_before = inner.devices.contains_key(&index);
        let held = inner
            .devices
            .entry(index)
            .or_insert_with(|| inner.unclaimed.remove(&index).unwrap_or_default());
        let ((fdb_add, fdb_remove), (neigh_add, neigh_remove)) =
            match touched.filter(|_| settled_before) {
                Some(touched) => (
                    diff_among(&held.fdb, &state.fdb, &touched.fdb),
                    diff_among(&held.neighbours, &state.neighbours, &touched.neighbours),
                ),
                None => (
                    diff(&held.fdb, &state.fdb),
                    diff(&held.neighbours, &state.neighbours),
                ),
            };
        apply(&mut held.fdb, &fdb_add, &fdb_remove);
        apply(&mut held.neighbours, &neigh_add, &neigh_remove);
        let replaced: BTreeSet<IpAddr> = neigh_add.iter().map(|n| n.ip).collect();
        let neigh_remove = neigh_remove
            .into_iter()
            .filter(|n| !replaced.contains(&n.ip))
            .collect();
        Changes {
            fdb_add,
            fdb_remove,
            neigh_add,
            neigh_remove,
        }
    }

    /// Checks a notification against what is held; false: it disagrees (or notifications were
    /// lost), so nothing held is trusted any more and the kernel is to be read again.
    pub fn observe(&self, event: &EntryEvent) -> bool {
        let mut inner = self.inner();
        let agrees = match event {
            // A dump under way may miss what was lost, too.
            EntryEvent::Overrun => {
                inner.tainted = true;
                false
            }
            EntryEvent::Fdb { index, .. } | EntryEvent::Neighbour { index, .. }
                if !inner.devices.contains_key(index) =>
            {
                true
            }
            _ if inner.dumping => {
                inner.tainted = true;
                true
            }
            _ if inner.trusted_since.is_none() => true,
            EntryEvent::Fdb {
                index,
                entry,
                present,
            } => inner.devices[index].fdb.contains(entry) == *present,
            EntryEvent::Neighbour { index, ip, mac } => {
                let held = &inner.devices[index].neighbours;
                let lowest = Neighbour {
                    ip: *ip,
                    mac: Mac([0; 6]),
                };
                let highest = Neighbour {
                    ip: *ip,
                    mac: Mac([0xff; 6]),
                };
                let mut at_ip = held.range(lowest..=highest).map(|n| n.mac);
                at_ip.next() == *mac
            }
        };
        if !agrees {
            inner.trusted_since = None;
        }
        agrees
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: u32 = 7;

    fn mac(last: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, last])
    }

    fn fdb(last: u8) -> FdbEntry {
        FdbEntry {
            mac: mac(last),
            dst: "192.0.2.1".parse().unwrap(),
        }
    }

    fn neigh(ip: &str, last: u8) -> Neighbour {
        Neighbour {
            ip: ip.parse().unwrap(),
            mac: mac(last),
        }
    }

    fn entries(fdb: &[FdbEntry], neighbours: &[Neighbour]) -> Entries {
        Entries {
            fdb: fdb.iter().copied().collect(),
            neighbours: neighbours.iter().copied().collect(),
        }
    }

    fn settle(held: &Held, index: u32, wanted: &Entries) -> Changes {
        let state = NetworkState {
            fdb: wanted.fdb.clone(),
            neighbours: wanted.neighbours.clone(),
            ..NetworkState::default()
        };
        held.settle(index, &state, None)
    }

    /// Held, following and trusted, with `dumped` read from the kernel.
    fn trusted(dumped: Entries) -> Held {
        let held = Held::default();
        held.following();
        held.dumping();
        held.load(HashMap::from([(DEV, dumped)]));
        held
    }

    fn fdb_event(entry: FdbEntry, present: bool) -> EntryEvent {
        EntryEvent::Fdb {
            index: DEV,
            entry,
            present,
        }
    }

    fn neigh_event(ip: &str, mac: Option<Mac>) -> EntryEvent {
        EntryEvent::Neighbour {
            index: DEV,
            ip: ip.parse().unwrap(),
            mac,
        }
    }

    #[test]
    fn nothing_is_trusted_before_a_dump_made_while_following() {
        let held = Held::default();
        assert!(held.must_dump());
        held.dumping();
        held.load(HashMap::new());
        assert!(held.must_dump(), "not following yet");
        held.following();
        held.dumping();
        held.load(HashMap::new());
        assert!(!held.must_dump());
    }

    #[test]
    fn settling_diffs_against_the_dump_and_then_against_what_it_wrote() {
        let held = trusted(entries(&[fdb(1), fdb(2)], &[neigh("10.0.0.1", 1)]));
        let wanted = entries(&[fdb(2), fdb(3)], &[neigh("10.0.0.3", 3)]);
        let changes = settle(&held, DEV, &wanted);
        assert_eq!(changes.fdb_add, vec![fdb(3)]);
        assert_eq!(changes.fdb_remove, vec![fdb(1)]);
        assert_eq!(changes.neigh_add, vec![neigh("10.0.0.3", 3)]);
        assert_eq!(changes.neigh_remove, vec![neigh("10.0.0.1", 1)]);
        assert_eq!(settle(&held, DEV, &wanted), Changes::default());
        // A device the dump did not name held nothing.
        assert_eq!(settle(&held, DEV + 1, &wanted).fdb_add.len(), 2);
    }

    #[test]
    fn only_touched_entries_are_looked_at_once_a_device_was_settled() {
        let held = trusted(entries(&[fdb(1)], &[]));
        let state = |fdb: &[FdbEntry]| NetworkState {
            fdb: fdb.iter().copied().collect(),
            ..NetworkState::default()
        };
        let touched = |fdb: &[FdbEntry]| Touched {
            fdb: fdb.iter().copied().collect(),
            ..Touched::default()
        };
        // Never settled: every entry is looked at, whatever is said touched.
        let changes = held.settle(DEV, &state(&[fdb(2)]), Some(&touched(&[])));
        assert_eq!(
            (changes.fdb_add, changes.fdb_remove),
            (vec![fdb(2)], vec![fdb(1)])
        );
        let changes = held.settle(DEV, &state(&[fdb(3), fdb(4)]), Some(&touched(&[fdb(3)])));
        assert_eq!(
            (changes.fdb_add, changes.fdb_remove),
            (vec![fdb(3)], vec![])
        );
        let changes = held.settle(DEV, &state(&[fdb(3)]), None);
        assert_eq!(
            (changes.fdb_add, changes.fdb_remove),
            (vec![], vec![fdb(2)])
        );
    }

    #[test]
    fn an_address_under_a_new_mac_is_replaced_not_removed() {
        let held = trusted(entries(&[], &[neigh("10.0.0.1", 1)]));
        let changes = settle(&held, DEV, &entries(&[], &[neigh("10.0.0.1", 2)]));
        assert_eq!(changes.neigh_add, vec![neigh("10.0.0.1", 2)]);
        assert_eq!(changes.neigh_remove, vec![]);
        // The replacement's notification agrees; the old entry's would not.
        assert!(held.observe(&neigh_event("10.0.0.1", Some(mac(2)))));
        assert!(!held.observe(&neigh_event("10.0.0.1", Some(mac(1)))));
        assert!(held.must_dump());
    }

    #[test]
    fn notifications_of_its_own_writes_agree() {
        let held = trusted(entries(&[fdb(1)], &[neigh("10.0.0.1", 1)]));
        settle(&held, DEV, &entries(&[fdb(2)], &[neigh("10.0.0.2", 2)]));
        for event in [
            fdb_event(fdb(1), false),
            fdb_event(fdb(2), true),
            neigh_event("10.0.0.1", None),
            neigh_event("10.0.0.2", Some(mac(2))),
        ] {
            assert!(held.observe(&event), "{event:?}");
        }
        assert!(!held.must_dump());
    }

    #[test]
    fn a_change_made_by_someone_else_loses_the_trust() {
        for event in [
            fdb_event(fdb(1), false),
            fdb_event(fdb(9), true),
            neigh_event("10.0.0.1", None),
            neigh_event("10.0.0.9", Some(mac(9))),
            EntryEvent::Overrun,
        ] {
            let held = trusted(entries(&[fdb(1)], &[neigh("10.0.0.1", 1)]));
            settle(&held, DEV, &entries(&[fdb(1)], &[neigh("10.0.0.1", 1)]));
            assert!(!held.observe(&event), "{event:?}");
            assert!(held.must_dump(), "{event:?}");
        }
    }

    #[test]
    fn devices_not_settled_are_not_watched() {
        let held = trusted(Entries::default());
        assert!(held.observe(&fdb_event(fdb(1), true)));
        settle(&held, DEV, &Entries::default());
        held.removed(DEV);
        assert!(held.observe(&fdb_event(fdb(1), true)));
        assert!(!held.must_dump());
    }

    #[test]
    fn a_notification_during_a_dump_taints_it() {
        let held = trusted(Entries::default());
        settle(&held, DEV, &Entries::default());
        held.dumping();
        assert!(held.observe(&fdb_event(fdb(1), true)));
        held.load(HashMap::from([(DEV, entries(&[fdb(1)], &[]))]));
        assert!(held.must_dump());
    }

    #[test]
    fn notifications_lost_during_a_dump_taint_it() {
        let held = trusted(Entries::default());
        held.dumping();
        assert!(!held.observe(&EntryEvent::Overrun));
        held.load(HashMap::new());
        assert!(held.must_dump());
    }
}
