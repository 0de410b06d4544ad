//! The networks this host needs and what their VXLAN devices must hold, derived from the tables
//! in full ([`HostNetworks::of`]) or one remote endpoint's change at a time
//! ([`HostNetworks::update`]): among 100,000 remote endpoints, deriving them all again for each
//! change cost tens of milliseconds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use weft_proto::names::{EXPOSE_ID, Mac};
use weft_proto::rows::EndpointRow;
use weft_proto::tables::{DEFAULT_NETWORK, Tables};

use super::{Exposed, FdbEntry, Neighbour, NetworkState, vtep};

/// The entries of one network whose presence changed: those a pass must look at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    pub fdb: BTreeSet<FdbEntry>,
    pub neighbours: BTreeSet<Neighbour>,
}

/// Entries more than one remote endpoint calls for, with how many more (a network's sets hold
/// each once): the flood entry of a peer with many endpoints, a MAC given twice.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Shared {
    fdb: HashMap<FdbEntry, u32>,
    neighbours: HashMap<Neighbour, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetworks {
    /// VNI → what the network's devices must be and hold: the default network always, others
    /// while something local is in them.
    pub networks: BTreeMap<u32, NetworkState>,
    /// The VNI of each network in `networks`, by name.
    vnis: HashMap<String, u32>,
    shared: HashMap<u32, Shared>,
}

/// Whether an endpoint's entries are being added or taken away.
#[derive(Clone, Copy)]
enum Op {
    Add,
    Remove,
}

impl Op {
    /// Adds one call for `entry` to a set and its shared counts, or takes one away; true if
    /// the entry came into the set or left it.
    fn apply<T: Ord + Hash + Copy>(
        self,
        set: &mut BTreeSet<T>,
        shared: &mut HashMap<T, u32>,
        entry: T,
    ) -> bool {
        match self {
            Op::Add => {
                if set.insert(entry) {
                    return true;
                }
                *shared.entry(entry).or_default() += 1;
                false
            }
            Op::Remove => match shared.get_mut(&entry) {
                Some(more) => {
                    *more -= 1;
                    if *more == 0 {
                        shared.remove(&entry);
                    }
                    false
                }
                None => set.remove(&entry),
            },
        }
    }
}

impl HostNetworks {
    /// Everything derived from `tables` for host `me`.
    pub fn of(tables: &Tables, me: &str) -> HostNetworks {
        let mut needed: BTreeMap<&str, NetworkState> = BTreeMap::new();
        needed.insert(DEFAULT_NETWORK, NetworkState::default());
        for ep in tables.endpoints_on(me) {
            let state = needed.entry(&ep.id.network).or_default();
            if ep.id.container == EXPOSE_ID {
                state.exposed = Some(Exposed::of(ep));
            } else {
                state.ports.insert(ep.host_ifname.clone());
            }
        }
        let mut derived = HostNetworks {
            networks: BTreeMap::new(),
            vnis: HashMap::new(),
            shared: HashMap::new(),
        };
        for net in tables.networks.values() {
            if let Some(mut state) = needed.remove(net.name.as_str()) {
                state.encrypted = net.encrypted;
                derived.networks.insert(net.vni, state);
                derived.vnis.insert(net.name.clone(), net.vni);
            }
        }
        for ep in tables.endpoints_off(me) {
            derived.change(tables, ep, Op::Add, None);
        }
        // Built again in one go, in order, the sets' nodes are full: inserted in the order of
        // the endpoints they are a third empty.
        for state in derived.networks.values_mut() {
            state.fdb = std::mem::take(&mut state.fdb).into_iter().collect();
            state.neighbours = std::mem::take(&mut state.neighbours).into_iter().collect();
        }
        derived
    }

    /// Takes in that a remote endpoint came, changed or went (`before` and `after` as the
    /// tables held it), adding to `touched` the entries whose presence changed, by VNI. The
    /// peers and networks of `tables` must be those this was derived from. False if the change
    /// cannot be taken in on its own (a local endpoint's, which may change the networks this
    /// host needs): derive everything again.
    pub fn update(
        &mut self,
        tables: &Tables,
        me: &str,
        before: Option<&EndpointRow>,
        after: Option<&EndpointRow>,
        touched: &mut BTreeMap<u32, Touched>,
    ) -> bool {
        if before.or(after).is_some_and(|ep| ep.id.peer == me) {
            return false;
        }
        if let Some(ep) = before {
            self.change(tables, ep, Op::Remove, Some(&mut *touched));
        }
        if let Some(ep) = after {
            self.change(tables, ep, Op::Add, Some(touched));
        }
        true
    }

    /// Adds or takes away what remote endpoint `ep` calls for on its network's VXLAN device:
    /// its MAC at its peer's VTEP, its peer's flood entry, its addresses at its MAC.
    fn change(
        &mut self,
        tables: &Tables,
        ep: &EndpointRow,
        op: Op,
        touched: Option<&mut BTreeMap<u32, Touched>>,
    ) {
        let Some(&vni) = self.vnis.get(&ep.id.network) else {
            return;
        };
        let state = self
            .networks
            .get_mut(&vni)
            .expect("every network named has its state");
        // An endpoint of a peer the tables do not hold (yet) cannot be reached; nor can one on
        // an encrypted network of a peer without WireGuard.
        let peer = tables.peers.get(&ep.id.peer);
        let Some(dst) = peer.and_then(|p| vtep(p, state.encrypted)) else {
            return;
        };
        let shared = self.shared.entry(vni).or_default();
        let mut touched = touched.map(|t| t.entry(vni).or_default());
        for entry in [
            FdbEntry { mac: ep.mac, dst },
            FdbEntry {
                mac: Mac::ZERO,
                dst,
            },
        ] {
            if op.apply(&mut state.fdb, &mut shared.fdb, entry) {
                touched.as_mut().map(|t| t.fdb.insert(entry));
            }
        }
        // Answered on this host by the VXLAN device's proxy: ARP and neighbour discovery.
        for net in &ep.cidrs {
            let n = Neighbour {
                ip: net.ip(),
                mac: ep.mac,
            };
            if op.apply(&mut state.neighbours, &mut shared.neighbours, n) {
                touched.as_mut().map(|t| t.neighbours.insert(n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::rows::{NetworkRow, PeerRow};
    use weft_proto::tables::EndpointId;

    use super::*;

    const ME: &str = "host0";

    fn tables() -> Tables {
        let mut t = Tables::default();
        for i in 0..4 {
            let name = format!("host{i}");
            let addr = format!("198.18.0.{}", i + 1).parse().unwrap();
            let peer = PeerRow {
                name: name.clone(),
                addr,
                wireguard: None,
            };
            t.peers.insert(name, peer);
        }
        for (name, vni) in [(DEFAULT_NETWORK, 1), ("other", 2)] {
            let net = NetworkRow {
                name: name.into(),
                subnets: vec!["10.32.0.0/12".parse().unwrap()],
                vni,
                encrypted: false,
            };
            t.networks.insert(name.into(), net);
        }
        t
    }

    /// An endpoint of host `peer` whose MAC and address come from `n`: few enough values that
    /// MACs and addresses are given twice, and endpoints change them.
    fn endpoint(peer: u64, container: u64, n: u64) -> EndpointRow {
        EndpointRow {
            id: EndpointId::new(
                &format!("host{peer}"),
                DEFAULT_NETWORK,
                &format!("c{container}"),
            ),
            mac: Mac([2, 0, 0, 0, 0, (n % 7) as u8]),
            cidrs: vec![format!("10.32.0.{}/12", n % 5).parse().unwrap()],
            host_ifname: format!("vethwepl{container}"),
            container_ifname: "ethwe".into(),
            dns_name: String::new(),
        }
    }

    fn came_or_went<T: Ord + Copy>(was: &BTreeSet<T>, now: &BTreeSet<T>) -> BTreeSet<T> {
        was.symmetric_difference(now).copied().collect()
    }

    fn entries(state: &NetworkState) -> (BTreeSet<FdbEntry>, BTreeSet<Neighbour>) {
        (state.fdb.clone(), state.neighbours.clone())
    }

    /// Random remote endpoints come, change and go: taken in one by one, the networks are
    /// those derived in full each time, and every entry that came or went is among the few
    /// touched.
    #[test]
    fn changes_taken_in_one_by_one_lead_where_deriving_in_full_does() {
        let mut t = tables();
        let mut derived = HostNetworks::of(&t, ME);
        let mut seed: u64 = 0x5eed;
        let mut next = |bound: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % bound
        };
        for _ in 0..2000 {
            let ep = endpoint(1 + next(3), next(12), next(1000));
            let before = t.endpoints.get(&ep.id).cloned();
            let after = (next(3) > 0).then_some(ep.clone());
            match &after {
                Some(row) => t.endpoints.insert(row.id.clone(), row.clone()),
                None => t.endpoints.remove(&ep.id),
            };
            let was = entries(&derived.networks[&1]);
            let mut touched = BTreeMap::new();
            assert!(derived.update(&t, ME, before.as_ref(), after.as_ref(), &mut touched));
            let full = HostNetworks::of(&t, ME);
            assert_eq!(derived.networks, full.networks);
            let now = entries(&derived.networks[&1]);
            let touched = touched.remove(&1).unwrap_or_default();
            assert!(came_or_went(&was.0, &now.0).is_subset(&touched.fdb));
            assert!(came_or_went(&was.1, &now.1).is_subset(&touched.neighbours));
            assert!(touched.fdb.len() <= 4 && touched.neighbours.len() <= 2);
        }
    }

    #[test]
    fn a_local_endpoint_change_asks_for_everything_again() {
        let t = tables();
        let mut derived = HostNetworks::of(&t, ME);
        let local = endpoint(0, 1, 1);
        let mut touched = BTreeMap::new();
        assert!(!derived.update(&t, ME, None, Some(&local), &mut touched));
    }
}
