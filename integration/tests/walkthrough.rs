//! The seeds' walkthrough on two hosts: attach a container on each, ping across, check the
//! kernel datapath weft programmed, list, detach, and check everything it made is gone again.
//! 192.168.0.0/24 is no network yet, so the first attach creates one with its own VNI, and its
//! own bridge and VXLAN device on both hosts.

use std::collections::BTreeSet;
use std::time::Duration;

use weft_integration::{
    BRIDGE, FLOOD_MAC, Link, VXLAN_DEV, World, assert_reaches, fdb, host_addr, link, links, ping,
    wait_until,
};

/// The bridge and VXLAN device of a network other than the default one.
struct Devices {
    bridge: String,
    vxlan: String,
}

/// The devices of the network with `subnet`, by its VNI as `weftctl network ls --json` says.
fn devices_of(world: &World, subnet: &str) -> Devices {
    let out = world.weftctl(1, &["network", "ls", "--json"]);
    assert!(out.success(), "network ls: {}", out.stderr);
    let nets: serde_json::Value = serde_json::from_str(&out.stdout).expect("network ls --json");
    let net = nets
        .as_array()
        .expect("a JSON array")
        .iter()
        .find(|n| n["subnet"] == subnet)
        .unwrap_or_else(|| panic!("no network {subnet} in {}", out.stdout));
    assert_eq!(
        net["name"], subnet,
        "a network made by an attach is named by its subnet"
    );
    let vni = net["vni"].as_u64().expect("vni");
    assert_ne!(vni, 1, "{subnet} must not share the default network's VNI");
    Devices {
        bridge: format!("weave-{vni}"),
        vxlan: format!("vx-{vni}"),
    }
}

const CONVERGE: Duration = Duration::from_secs(5);

fn ethwe(ns: &str) -> Link {
    link(ns, "ethwe").unwrap_or_else(|| panic!("no ethwe in {ns}"))
}

fn veths_on_bridge(host_ns: &str, bridge: &str) -> Vec<Link> {
    links(host_ns)
        .into_iter()
        .filter(|l| l.name.starts_with("vethwepl") && l.master.as_deref() == Some(bridge))
        .collect()
}

/// What a host's VXLAN FDB must hold for exactly one remote endpoint `mac` on host `peer`.
fn one_remote(mac: &str, peer: usize) -> BTreeSet<(String, String)> {
    [mac, FLOOD_MAC]
        .iter()
        .map(|m| (m.to_string(), host_addr(peer)))
        .collect()
}

/// Checks the container's interface as an attach must leave it: the address, the bridge's MTU,
/// its veth on the network's bridge and not on the default one.
fn assert_attached(world: &World, host: usize, container: &str, cidr: &str, dev: &Devices) -> Link {
    let eth = ethwe(container);
    assert_eq!(eth.addrs, [cidr], "addresses of ethwe in {container}");
    let ns = world.host_ns(host);
    let bridge = link(&ns, &dev.bridge).expect("the network's bridge on the host");
    assert_eq!(
        eth.mtu, bridge.mtu,
        "ethwe MTU in {container} vs host{host}'s {}",
        dev.bridge
    );
    let vxlan = link(&ns, &dev.vxlan).expect("the network's VXLAN device on the host");
    assert_eq!(vxlan.master.as_deref(), Some(dev.bridge.as_str()));
    assert_eq!(
        veths_on_bridge(&ns, &dev.bridge).len(),
        1,
        "vethwepl* on host{host}'s {}",
        dev.bridge
    );
    assert_eq!(
        veths_on_bridge(&ns, BRIDGE),
        [],
        "vethwepl* on host{host}'s {BRIDGE}"
    );
    eth
}

#[test]
fn attach_ping_list_detach_on_two_hosts() {
    let mut world = World::new(2);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    let (h1, h2) = (world.host_ns(1), world.host_ns(2));

    let out = world.weftctl(1, &["attach", "192.168.0.2/24", &format!("netns:{c1}")]);
    assert!(out.success(), "attach c1: {}", out.stderr);
    assert_eq!(out.stdout, "192.168.0.2\n");
    let out = world.weftctl(2, &["attach", "192.168.0.3/24", &format!("netns:{c2}")]);
    assert!(out.success(), "attach c2: {}", out.stderr);
    assert_eq!(out.stdout, "192.168.0.3\n");

    let dev = devices_of(&world, "192.168.0.0/24");
    let mac1 = assert_attached(&world, 1, &c1, "192.168.0.2/24", &dev).mac;
    let mac2 = assert_attached(&world, 2, &c2, "192.168.0.3/24", &dev).mac;

    assert_reaches(&c1, "192.168.0.3");
    assert_reaches(&c2, "192.168.0.2");

    let (want1, want2) = (one_remote(&mac2, 2), one_remote(&mac1, 1));
    let vx = dev.vxlan.as_str();
    wait_until(CONVERGE, || fdb(&h1, vx) == want1 && fdb(&h2, vx) == want2);
    assert_eq!(fdb(&h1, vx), want1, "host1's {vx} FDB");
    assert_eq!(fdb(&h2, vx), want2, "host2's {vx} FDB");
    // The default network has no endpoint: nothing in its FDB.
    assert_eq!(
        fdb(&h1, VXLAN_DEV),
        BTreeSet::new(),
        "host1's {VXLAN_DEV} FDB"
    );

    let out = world.weftctl(1, &["ps"]);
    assert!(out.success(), "ps: {}", out.stderr);
    assert_eq!(out.stdout, format!("netns:{c1} {mac1} 192.168.0.2/24\n"));

    let out = world.weftctl(1, &["detach", &format!("netns:{c1}")]);
    assert!(out.success(), "detach c1: {}", out.stderr);
    assert_eq!(out.stdout.trim_end(), "192.168.0.2");

    // host1 has no endpoint left, so host2 must drop both c1's MAC and its flood entry to host1.
    let host1_gone = |entries: BTreeSet<(String, String)>| {
        entries
            .iter()
            .all(|(mac, dst)| *mac != mac1 && !(mac == FLOOD_MAC && *dst == host_addr(1)))
    };
    wait_until(CONVERGE, || host1_gone(fdb(&h2, vx)));
    assert!(
        host1_gone(fdb(&h2, vx)),
        "host2's FDB still points at c1/host1: {:?}",
        fdb(&h2, vx)
    );
    assert_eq!(
        veths_on_bridge(&h1, &dev.bridge),
        [],
        "vethwepl* left on host1"
    );
    // host1 has no container left in the network, so its devices go too; host2 keeps them.
    assert!(
        wait_until(CONVERGE, || link(&h1, &dev.bridge).is_none()
            && link(&h1, vx).is_none()),
        "host1 still has {} or {vx}",
        dev.bridge
    );
    assert!(
        link(&h2, vx).is_some(),
        "host2 lost {vx} while c2 is attached"
    );
    assert_eq!(link(&c1, "ethwe"), None, "ethwe left in c1");
    assert!(
        !ping(&c2, "192.168.0.2"),
        "c2 still reaches 192.168.0.2 after detach"
    );
}
