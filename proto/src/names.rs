//! Names and addresses weft gives kernel objects. The controller picks them when it creates an
//! endpoint, and the agent creates the objects, so both must agree.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use crate::tables::DEFAULT_VNI;

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

/// The MAC an endpoint gets for its first address, unless another endpoint has it already:
/// locally administered, unicast, `0a:77` and the four bytes of an IPv4 address, or `0a:7b`
/// and the [`host_tag`] hash of an IPv6 one (all its bits: every IPv6 network hands out `::2`
/// first, and the families never propose the same MAC).
pub fn mac_for_address(ip: IpAddr) -> Mac {
    let [a, b, c, d] = host_tag(ip);
    let family = if ip.is_ipv4() { 0x77 } else { 0x7b };
    Mac([0x0a, family, a, b, c, d])
}

/// A container id as people read it: Docker's 64-hex-digit ids cut to 12, as `docker ps` and
/// `weave ps` show them, also in a CNI attachment's id (`cni:3f2a9c1d7e55/eth0`) and a Docker
/// plugin endpoint's (`docker-ep:1d529d030170`); namespace references (`netns:NAME`, ...)
/// whole.
pub fn short_container_id(id: &str) -> Cow<'_, str> {
    if is_docker_id(id) {
        return Cow::Borrowed(&id[..12]);
    }
    if let Some(endpoint) = id
        .strip_prefix(DOCKER_ENDPOINT_PREFIX)
        .filter(|e| is_docker_id(e))
    {
        return Cow::Owned(format!("{DOCKER_ENDPOINT_PREFIX}{}", &endpoint[..12]));
    }
    match cni_attachment(id) {
        Some((container, ifname)) if is_docker_id(container) => {
            Cow::Owned(format!("{CNI_PREFIX}{}/{ifname}", &container[..12]))
        }
        _ => Cow::Borrowed(id),
    }
}

/// The container id of an endpoint attached through the CNI plugin: one per CNI attachment
/// (CNI_CONTAINERID and CNI_IFNAME), marked apart from Docker IDs (a pod sandbox's ID looks
/// like one, but the Docker API does not know it).
pub fn cni_container_id(container_id: &str, ifname: &str) -> String {
    format!("{CNI_PREFIX}{container_id}/{ifname}")
}

/// The CNI attachment (container id, interface) of a container id, if it is one.
pub fn cni_attachment(id: &str) -> Option<(&str, &str)> {
    id.strip_prefix(CNI_PREFIX)?.rsplit_once('/')
}

const CNI_PREFIX: &str = "cni:";

/// The container id of an endpoint Docker's network plugin made: its Docker `EndpointID`,
/// marked apart from container ids (it looks like one, but the Docker API knows no such
/// container, and Docker, not the agent, says when it goes).
pub fn docker_endpoint_key(endpoint_id: &str) -> String {
    format!("{DOCKER_ENDPOINT_PREFIX}{endpoint_id}")
}

/// The container id of an address Docker's IPAM plugin reserved (RequestAddress) before the
/// endpoint that takes it over exists; `token` tells reservations apart.
pub fn docker_reservation_key(token: &str) -> String {
    format!("{DOCKER_RESERVATION_PREFIX}{token}")
}

pub fn is_docker_reservation(id: &str) -> bool {
    id.starts_with(DOCKER_RESERVATION_PREFIX)
}

/// Whether Docker's network or IPAM plugin made the endpoint, whose life Docker governs.
pub fn is_docker_plugin_key(id: &str) -> bool {
    id.starts_with(DOCKER_ENDPOINT_PREFIX) || is_docker_reservation(id)
}

const DOCKER_ENDPOINT_PREFIX: &str = "docker-ep:";
const DOCKER_RESERVATION_PREFIX: &str = "docker-ipam:";

/// Whether a container id is a Docker (or Podman) ID, 64 hex digits, not a namespace reference.
pub fn is_docker_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The longest container reference anyone takes: a 64-digit ID, or a namespace path.
pub const MAX_CONTAINER_ID: usize = 4096;

/// How much of an over-long input an error message quotes.
const EXCERPT_CHARS: usize = 64;

/// `s` as an error message quotes it: whole if short, else its first characters and "...", so
/// that a message stays one readable line whatever was typed.
pub fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// The container id of a host's own endpoints (`weftctl expose`): its place on a network's
/// bridge. As `weave ps` shows it.
pub const EXPOSE_ID: &str = "weft:expose";

/// What every host-side veth name starts with.
pub const HOST_IFNAME_PREFIX: &str = "vethwepl";

/// The host-side veth name of an endpoint: derived from its MAC so that it is known from the
/// tables alone; 8 + 7 characters fits the kernel's 15.
pub fn host_ifname(mac: Mac) -> String {
    let b = mac.0;
    let low = u32::from_be_bytes([b[2], b[3], b[4], b[5]]) & 0x0fff_ffff;
    format!("{HOST_IFNAME_PREFIX}{low:07x}")
}

/// Name the container end is created with in the container, until its plug renames it (so a
/// plug cut short leaves no interface that looks finished).
pub fn guest_tmp_ifname(host_ifname: &str) -> String {
    host_ifname.replacen("vethwepl", "vethwepg", 1)
}

/// The container-side interface of a container's `index`-th network: ethwe, ethwe1, ethwe2, ...
pub fn container_ifname(index: usize) -> String {
    match index {
        0 => "ethwe".to_string(),
        n => format!("ethwe{n}"),
    }
}

/// Checks an interface name a caller chose for a container (CNI_IFNAME): what the kernel takes
/// (1 to 15 bytes; no '/', ':' or white space; not "." or "..").
pub fn check_ifname(name: &str) -> Result<(), String> {
    let fits = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
    if fits {
        Ok(())
    } else {
        Err(format!(
            "invalid interface name \"{}\": 1 to 15 bytes, without '/', ':' or white space",
            excerpt(name)
        ))
    }
}

/// The bridge of the network with `vni`: `weave` for the default network, as Weave named it.
pub fn bridge_name(vni: u32) -> String {
    if vni == DEFAULT_VNI {
        "weave".to_string()
    } else {
        format!("weave-{vni}")
    }
}

/// The VXLAN device of the network with `vni`: `vxlan-<port>` for the default network, `vx-<vni>`
/// for others (all share the UDP port; at most 11 characters, within the kernel's 15).
pub fn vxlan_name(vni: u32, port: u16) -> String {
    if vni == DEFAULT_VNI {
        format!("vxlan-{port}")
    } else {
        format!("vx-{vni}")
    }
}

/// The VNI of a device weft named with [`bridge_name`] or [`vxlan_name`]; `None` for any other.
pub fn vni_of_device(name: &str, port: u16) -> Option<u32> {
    if name == "weave" || name == format!("vxlan-{port}") {
        return Some(DEFAULT_VNI);
    }
    let vni: u32 = name
        .strip_prefix("weave-")
        .or_else(|| name.strip_prefix("vx-"))?
        .parse()
        .ok()?;
    // Only the names weft gives: "weave-01" or "vx-1" are someone else's.
    ((vni != DEFAULT_VNI && bridge_name(vni) == name) || vxlan_name(vni, port) == name)
        .then_some(vni)
}

/// The VNI of the probe device, never a network's: the largest VXLAN has (24 bits).
pub const PROBE_VNI: u32 = (1 << 24) - 1;

/// Each host's VXLAN device of [`PROBE_VNI`], through which its agent checks the data path to
/// every peer with ICMPv6 echoes between probe addresses; no container is on it.
pub const PROBE_DEVICE: &str = "weft-probe";

/// The length of the prefix the probe addresses share on the probe device.
pub const PROBE_PREFIX_LEN: u8 = 96;

/// The four bytes that stand for an address in weft's derived names: a host's VTEP in its
/// probe address, probe MAC and tunnel address, an endpoint's address in its MAC. The address
/// itself when it is IPv4; a 32-bit FNV-1a hash of an IPv6 one, which two VTEPs share with odds
/// of about n²/2³³ (the controller refuses the second of two that do, naming both).
pub fn host_tag(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let hash = v6.octets().iter().fold(0x811c_9dc5_u32, |h, b| {
                (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
            });
            hash.to_be_bytes()
        }
    }
}

/// A host's address on the probe device: a unique local IPv6 prefix of weft's
/// (`fd77:6566:7400::/96`, "weft" in ASCII) and the host's tag ([`host_tag`]) in the last 32
/// bits, so every agent knows every peer's from the tables.
pub fn probe_addr(vtep: IpAddr) -> Ipv6Addr {
    let [a, b, c, d] = host_tag(vtep);
    let [w, e, f, t] = *b"weft";
    Ipv6Addr::from([0xfd, w, e, f, t, 0, 0, 0, 0, 0, 0, 0, a, b, c, d])
}

/// A host's MAC on the probe device: locally administered, unicast, `0e:77` and its tag.
pub fn probe_mac(vtep: IpAddr) -> Mac {
    let [a, b, c, d] = host_tag(vtep);
    Mac([0x0e, 0x77, a, b, c, d])
}

/// Each host's WireGuard interface: encrypted networks' VXLAN devices send through it.
pub const WIREGUARD_DEVICE: &str = "weftwg";

/// The UDP port WireGuard listens on unless `--wireguard-port` says otherwise.
pub const DEFAULT_WIREGUARD_PORT: u16 = 6787;

/// The length of the prefix of the tunnel addresses on the WireGuard interface.
pub const TUNNEL_PREFIX_LEN: u8 = 64;

/// A host's tunnel address: the VTEP of its encrypted networks, on its WireGuard interface.
/// Link-local (`fe80::7765:6674:` and the host's tag), so every agent knows every peer's from
/// the tables, and so the kernel takes a packet for it only from that interface: a VXLAN packet
/// sent to it over the underlay is not for this host, and only WireGuard's peers get in.
pub fn tunnel_addr(vtep: IpAddr) -> Ipv6Addr {
    let [a, b, c, d] = host_tag(vtep);
    let [w, e, f, t] = *b"weft";
    Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, w, e, f, t, a, b, c, d])
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn device_names_fit_the_kernel() {
        assert_eq!(bridge_name(DEFAULT_VNI), "weave");
        assert_eq!(vxlan_name(DEFAULT_VNI, 6784), "vxlan-6784");
        assert_eq!(bridge_name(2), "weave-2");
        assert_eq!(vxlan_name(2, 6784), "vx-2");
        assert!(bridge_name(16_777_215).len() <= 15);
        assert!(vxlan_name(16_777_215, 6784).len() <= 15);
        assert_eq!(vni_of_device("weave", 6784), Some(DEFAULT_VNI));
        assert_eq!(vni_of_device("vxlan-6784", 6784), Some(DEFAULT_VNI));
        assert_eq!(vni_of_device("weave-7", 6784), Some(7));
        assert_eq!(vni_of_device("vx-7", 6784), Some(7));
        for other in [
            "vxlan-6785",
            "weave-01",
            "vx-1",
            "weave-x",
            "eth0",
            "vethwepl0000001",
        ] {
            assert_eq!(vni_of_device(other, 6784), None, "{other}");
        }
        assert_eq!(container_ifname(0), "ethwe");
        let sandbox = "3f2a9c1d7e55".repeat(5) + "abcd";
        let id = cni_container_id(&sandbox, "eth0");
        assert_eq!(cni_attachment(&id), Some((sandbox.as_str(), "eth0")));
        assert_eq!(short_container_id(&id), "cni:3f2a9c1d7e55/eth0");
        assert_eq!(short_container_id("cni:pod-1/net1"), "cni:pod-1/net1");
        let ep = docker_endpoint_key(&"1d529d03".repeat(8));
        assert_eq!(short_container_id(&ep), "docker-ep:1d529d031d52");
        assert!(is_docker_plugin_key(&ep) && !is_docker_reservation(&ep));
        let reserved = docker_reservation_key("7f3e");
        assert!(is_docker_plugin_key(&reserved) && is_docker_reservation(&reserved));
        assert!(!is_docker_plugin_key(&cni_container_id("abc", "eth0")));
        assert_eq!(cni_attachment("netns:x"), None);
        for good in ["eth0", "net1", "a", "abcdefghijklmno"] {
            assert_eq!(check_ifname(good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", "eth/0", "eth:0", "eth 0", "abcdefghijklmnop"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
        assert_eq!(container_ifname(2), "ethwe2");
    }

    #[test]
    fn an_address_has_its_own_mac() {
        let mac = mac_for_address("192.168.0.2".parse().unwrap());
        assert_eq!(mac.to_string(), "0a:77:c0:a8:00:02");
        let mac6 = mac_for_address("fd00:9::2".parse().unwrap());
        assert_eq!(mac6.0[..2], [0x0a, 0x7b]);
        assert_ne!(mac6, mac_for_address("fd00:8::2".parse().unwrap()));
        assert_eq!(mac.0[0] & 0x03, 0x02, "unicast and locally administered");
    }

    #[test]
    fn a_vtep_has_its_own_probe_address_and_mac() {
        let vtep = "198.18.0.2".parse().unwrap();
        assert_eq!(probe_addr(vtep).to_string(), "fd77:6566:7400::c612:2");
        assert_eq!(probe_mac(vtep).to_string(), "0e:77:c6:12:00:02");
        assert_eq!(
            probe_mac(vtep).0[0] & 0x03,
            0x02,
            "unicast and locally administered"
        );
        assert_ne!(probe_addr("198.18.0.3".parse().unwrap()), probe_addr(vtep));
    }

    #[test]
    fn ipv6_vteps_on_one_subnet_get_tags_of_their_own() {
        let tags: std::collections::BTreeSet<[u8; 4]> = (1..=4096u32)
            .map(|h| host_tag(format!("2001:db8::{h:x}").parse().unwrap()))
            .collect();
        assert_eq!(tags.len(), 4096);
        let vtep: IpAddr = "2001:db8::2".parse().unwrap();
        let [a, b, c, d] = host_tag(vtep);
        assert_eq!(
            tunnel_addr(vtep).segments()[..6],
            [0xfe80, 0, 0, 0, 0x7765, 0x6674]
        );
        assert_eq!(tunnel_addr(vtep).octets()[12..], [a, b, c, d]);
        assert_eq!(probe_mac(vtep).0[2..], [a, b, c, d]);
    }

    #[test]
    fn docker_ids_read_short() {
        let id = "06d700491410".to_string() + &"ab".repeat(26);
        assert_eq!(short_container_id(&id), "06d700491410");
        assert_eq!(short_container_id("netns:c1"), "netns:c1");
        assert_eq!(short_container_id(&"x".repeat(64)), "x".repeat(64));
        for other in [
            "netns:c1",
            "pid:42",
            "/tmp/ns",
            "weft:expose",
            "06d700491410",
        ] {
            assert!(!is_docker_id(other), "{other}");
        }
    }
}
