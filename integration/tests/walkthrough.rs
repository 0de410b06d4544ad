//! The seeds' walkthrough on two hosts: attach a container on each, ping across, check the
//! kernel datapath weft programmed, list, detach, and check everything it made is gone again.

use std::collections::BTreeSet;
use std::time::Duration;

use weft_integration::{
    BRIDGE, Link, VXLAN_DEV, World, fdb, host_addr, link, links, ping, ping_n, wait_until,
};

const FLOOD_MAC: &str = "00:00:00:00:00:00";
const CONVERGE: Duration = Duration::from_secs(5);

fn ethwe(ns: &str) -> Link {
    link(ns, "ethwe").unwrap_or_else(|| panic!("no ethwe in {ns}"))
}

fn veths_on_bridge(host_ns: &str) -> Vec<Link> {
    links(host_ns)
        .into_iter()
        .filter(|l| l.name.starts_with("vethwepl") && l.master.as_deref() == Some(BRIDGE))
        .collect()
}

/// What a host's VXLAN FDB must hold for exactly one remote endpoint `mac` on host `peer`.
fn one_remote(mac: &str, peer: usize) -> BTreeSet<(String, String)> {
    [mac, FLOOD_MAC]
        .iter()
        .map(|m| (m.to_string(), host_addr(peer)))
        .collect()
}

/// Checks the container's interface as an attach must leave it: the address, the bridge's MTU.
fn assert_attached(world: &World, host: usize, container: &str, cidr: &str) -> Link {
    let eth = ethwe(container);
    assert_eq!(eth.addrs, [cidr], "addresses of ethwe in {container}");
    let bridge = link(&world.host_ns(host), BRIDGE).expect("bridge weave on the host");
    assert_eq!(
        eth.mtu, bridge.mtu,
        "ethwe MTU in {container} vs host{host}'s {BRIDGE}"
    );
    assert_eq!(
        veths_on_bridge(&world.host_ns(host)).len(),
        1,
        "vethwepl* on host{host}'s {BRIDGE}"
    );
    eth
}

/// Pings until the path converges, then requires a clean run of three.
fn assert_reaches(from: &str, ip: &str) {
    assert!(
        wait_until(CONVERGE, || ping(from, ip)),
        "{from} cannot reach {ip}"
    );
    let run = ping_n(from, ip, 3);
    assert!(
        run.success() && run.stdout.contains(" 0% packet loss"),
        "{from} -> {ip} lost packets:\n{}",
        run.stdout
    );
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

    let mac1 = assert_attached(&world, 1, &c1, "192.168.0.2/24").mac;
    let mac2 = assert_attached(&world, 2, &c2, "192.168.0.3/24").mac;

    assert_reaches(&c1, "192.168.0.3");
    assert_reaches(&c2, "192.168.0.2");

    let (want1, want2) = (one_remote(&mac2, 2), one_remote(&mac1, 1));
    wait_until(CONVERGE, || {
        fdb(&h1, VXLAN_DEV) == want1 && fdb(&h2, VXLAN_DEV) == want2
    });
    assert_eq!(fdb(&h1, VXLAN_DEV), want1, "host1's {VXLAN_DEV} FDB");
    assert_eq!(fdb(&h2, VXLAN_DEV), want2, "host2's {VXLAN_DEV} FDB");

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
    wait_until(CONVERGE, || host1_gone(fdb(&h2, VXLAN_DEV)));
    assert!(
        host1_gone(fdb(&h2, VXLAN_DEV)),
        "host2's FDB still points at c1/host1: {:?}",
        fdb(&h2, VXLAN_DEV)
    );
    assert_eq!(veths_on_bridge(&h1), [], "vethwepl* left on host1");
    assert_eq!(link(&c1, "ethwe"), None, "ethwe left in c1");
    assert!(
        !ping(&c2, "192.168.0.2"),
        "c2 still reaches 192.168.0.2 after detach"
    );
}
