//! From the controller's tables to the kernel state this host must hold, and the difference
//! between that and what the kernel holds now. Pure functions: no kernel needed.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use weft_proto::tables::Tables;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The all-zero MAC: an FDB entry under it floods broadcast, multicast and unknown unicast.
    pub const ZERO: Mac = Mac([0; 6]);

    pub fn from_slice(bytes: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(bytes).ok().map(Mac)
    }

    pub fn is_zero(&self) -> bool {
        *self == Mac::ZERO
    }

    /// A random unicast, locally administered MAC, as the kernel gives a veth.
    pub fn random() -> Mac {
        let mut bytes: [u8; 6] = rand::random();
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        Mac(bytes)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: Vec<u8> = s
            .split(':')
            .map(|part| u8::from_str_radix(part, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| format!("\"{s}\" is not a MAC address"))?;
        Mac::from_slice(&bytes).ok_or_else(|| format!("\"{s}\" is not a MAC address"))
    }
}

/// A permanent entry in a VXLAN device's FDB: frames for `mac` go to the VTEP `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dst {}", self.mac, self.dst)
    }
}

/// The FDB of `network`'s VXLAN device on peer `me`: one entry per remote endpoint's MAC and one
/// flood entry per remote peer that has endpoints in the network.
pub fn vxlan_fdb(tables: &Tables, me: &str, network: &str) -> BTreeSet<FdbEntry> {
    let mut fdb = BTreeSet::new();
    for ep in tables.endpoints.values() {
        if ep.network != network || ep.peer == me {
            continue;
        }
        // An endpoint whose peer or MAC we cannot read cannot be reached; skip it, not the rest.
        let Some(dst) = tables
            .peers
            .get(&ep.peer)
            .and_then(|p| p.advertise_addr.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let Ok(mac) = ep.mac.parse::<Mac>() else {
            continue;
        };
        fdb.insert(FdbEntry { mac, dst });
        fdb.insert(FdbEntry {
            mac: Mac::ZERO,
            dst,
        });
    }
    fdb
}

/// What to add and what to remove to turn `current` into `desired`; entries in both are left
/// alone, so a kernel that is already right sees no request at all.
pub fn diff<T: Ord + Clone>(current: &BTreeSet<T>, desired: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    let add = desired.difference(current).cloned().collect();
    let remove = current.difference(desired).cloned().collect();
    (add, remove)
}

/// The host-side veth name of an endpoint: derived from its MAC so that it is known from the
/// tables alone; 8 + 7 characters fits the kernel's 15.
pub fn host_ifname(mac: Mac) -> String {
    let b = mac.0;
    let low = u32::from_be_bytes([b[2], b[3], b[4], b[5]]) & 0x0fff_ffff;
    format!("vethwepl{low:07x}")
}

/// Name the container end has in the host namespace, before it moves into the container.
pub fn guest_tmp_ifname(host_ifname: &str) -> String {
    host_ifname.replacen("vethwepl", "vethwepg", 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::tables::DEFAULT_NETWORK;
    use weft_proto::v1::{Endpoint, Peer};

    fn tables(endpoints: &[(&str, &str, &str)]) -> Tables {
        let mut t = Tables::default();
        for (name, addr) in [
            ("host1", "198.18.0.1"),
            ("host2", "198.18.0.2"),
            ("host3", "198.18.0.3"),
        ] {
            t.peers.insert(
                name.into(),
                Peer {
                    name: name.into(),
                    advertise_addr: addr.into(),
                },
            );
        }
        for (i, (peer, container, mac)) in endpoints.iter().enumerate() {
            let ep = Endpoint {
                network: DEFAULT_NETWORK.into(),
                container_id: container.to_string(),
                mac: mac.to_string(),
                cidrs: vec![format!("192.168.0.{}/24", i + 2)],
                peer: peer.to_string(),
                host_ifname: String::new(),
            };
            t.endpoints.insert(weft_proto::tables::endpoint_id(&ep), ep);
        }
        t
    }

    fn entry(mac: &str, dst: &str) -> FdbEntry {
        FdbEntry {
            mac: mac.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    #[test]
    fn remote_endpoints_get_an_entry_and_their_peers_one_flood_entry() {
        let t = tables(&[
            ("host1", "netns:a", "02:00:00:00:00:01"),
            ("host2", "netns:b", "02:00:00:00:00:02"),
            ("host2", "netns:c", "02:00:00:00:00:03"),
            ("host3", "netns:d", "02:00:00:00:00:04"),
        ]);
        let fdb = vxlan_fdb(&t, "host1", DEFAULT_NETWORK);
        let want: BTreeSet<_> = [
            entry("02:00:00:00:00:02", "198.18.0.2"),
            entry("02:00:00:00:00:03", "198.18.0.2"),
            entry("02:00:00:00:00:04", "198.18.0.3"),
            entry("00:00:00:00:00:00", "198.18.0.2"),
            entry("00:00:00:00:00:00", "198.18.0.3"),
        ]
        .into();
        assert_eq!(fdb, want);
        // The local endpoint never appears; a network with nothing remote needs nothing.
        assert!(vxlan_fdb(&t, "host1", "other").is_empty());
    }

    #[test]
    fn peers_without_endpoints_and_unknown_peers_get_nothing() {
        let t = tables(&[
            ("host1", "netns:a", "02:00:00:00:00:01"),
            ("host9", "netns:x", "02:00:00:00:00:09"),
        ]);
        assert!(vxlan_fdb(&t, "host1", DEFAULT_NETWORK).is_empty());
    }

    #[test]
    fn diff_touches_only_what_differs() {
        let current: BTreeSet<_> = [
            entry("02:00:00:00:00:02", "198.18.0.2"),
            entry("02:00:00:00:00:05", "198.18.0.3"),
        ]
        .into();
        let desired: BTreeSet<_> = [
            entry("02:00:00:00:00:02", "198.18.0.2"),
            entry("02:00:00:00:00:03", "198.18.0.2"),
        ]
        .into();
        let (add, remove) = diff(&current, &desired);
        assert_eq!(add, vec![entry("02:00:00:00:00:03", "198.18.0.2")]);
        assert_eq!(remove, vec![entry("02:00:00:00:00:05", "198.18.0.3")]);
        assert_eq!(diff(&desired, &desired), (vec![], vec![]));
    }

    #[test]
    fn macs_and_interface_names() {
        let mac: Mac = "8a:b0:dd:a2:58:c5".parse().unwrap();
        assert_eq!(mac.to_string(), "8a:b0:dd:a2:58:c5");
        assert!("8a:b0:dd".parse::<Mac>().is_err());
        assert_eq!(host_ifname(mac), "vethweplda258c5");
        assert!(host_ifname(mac).len() <= 15);
        assert_eq!(guest_tmp_ifname("vethweplda258c5"), "vethwepgda258c5");
        for _ in 0..100 {
            let m = Mac::random();
            assert_eq!(m.0[0] & 0x03, 0x02, "unicast and locally administered");
        }
    }
}
