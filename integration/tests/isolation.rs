//! Two networks on the same two hosts must be two separate layer-2 segments: containers of one
//! network reach each other across hosts, and no frame of one network ever reaches a container
//! of the other, on the same host or across, even when addresses and routes invite it.

use serde_json::Value;
use weft_integration::{World, assert_reaches, disable_ipv6, exec, link, ping_n, rx_packets};

/// Network A's subnet with the addresses its containers get, and the same for B.
const NET_A: &str = "192.168.0.0/24";
const A1: &str = "192.168.0.2";
const A2: &str = "192.168.0.3";
const NET_B: &str = "192.168.10.0/24";
const B1: &str = "192.168.10.2";
const B2: &str = "192.168.10.3";

/// Runs a command inside `ns` that must succeed: the test's own setup of a container.
fn run_in(ns: &str, argv: &[&str]) {
    let out = exec(ns, argv);
    assert!(
        out.success(),
        "{} in {ns}: {}",
        argv.join(" "),
        out.stderr.trim()
    );
}

fn attach(world: &World, host: usize, cidr: &str, container: &str) {
    let out = world.weftctl(host, &["attach", cidr, &format!("netns:{container}")]);
    assert!(out.success(), "attach {cidr} {container}: {}", out.stderr);
}

/// The VNI weft gave the network of subnet `subnet`, from `weftctl network ls --json`.
fn vni(world: &World, subnet: &str) -> u64 {
    let out = world.weftctl(1, &["network", "ls", "--json"]);
    assert!(out.success(), "network ls: {}", out.stderr);
    let nets: Value = serde_json::from_str(&out.stdout).expect("network ls --json prints JSON");
    nets.as_array()
        .into_iter()
        .flatten()
        .find(|n| n["subnet"] == subnet)
        .and_then(|n| n["vni"].as_u64())
        .unwrap_or_else(|| panic!("no network {subnet} in {nets}"))
}

/// RX packet counts of the `ethwe` of each container in `containers`.
fn rx(containers: &[&str]) -> Vec<u64> {
    containers.iter().map(|c| rx_packets(c, "ethwe")).collect()
}

/// Empties the containers' neighbour (ARP) tables. An entry left pending by earlier traffic
/// goes on sending probes by itself for seconds; deleted, it sends nothing, so from here on
/// every frame a container sends or receives is caused by what the test does next.
fn hush(containers: &[&str]) {
    for c in containers {
        run_in(c, &["ip", "neigh", "flush", "dev", "ethwe"]);
    }
}

/// Broadcasts from `from` into its own network: an IP broadcast to `broadcast`, and ARP
/// requests for `unused`, an address nobody holds. Both flood to every port of the network.
fn flood(from: &str, broadcast: &str, unused: &str) {
    // Neither gets an answer (broadcast echoes are ignored by default; nobody holds `unused`),
    // so their exit status says nothing: the receivers' counters tell.
    exec(
        from,
        &[
            "ping", "-b", "-n", "-c", "3", "-i", "0.2", "-W", "1", broadcast,
        ],
    );
    exec(
        from,
        &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", unused],
    );
}

/// One direction of the isolation check: `prober` tries to reach each of `targets` (address,
/// who holds it) in the other network and floods its own (`broadcast`, `unused`). `control`,
/// in the prober's network, must see the floods, or the probe proved nothing; the `watched`
/// containers, in the other network, must receive not a single frame.
struct Probe<'a> {
    prober: &'a str,
    control: &'a str,
    watched: [&'a str; 2],
    targets: &'a [(&'a str, &'a str)],
    broadcast: &'a str,
    unused: &'a str,
}

impl Probe<'_> {
    fn assert_sealed(&self) {
        hush(&[self.prober, self.control, self.watched[0], self.watched[1]]);
        let before = rx(&self.watched);
        let control = rx_packets(self.control, "ethwe");
        for (ip, who) in self.targets {
            let run = ping_n(self.prober, ip, 2);
            assert!(
                !run.success(),
                "{} reaches {ip} ({who}):\n{}",
                self.prober,
                run.stdout
            );
        }
        flood(self.prober, self.broadcast, self.unused);
        assert!(
            rx_packets(self.control, "ethwe") > control,
            "{} received none of {}'s broadcasts: the probe proves nothing",
            self.control,
            self.prober
        );
        assert_eq!(
            rx(&self.watched),
            before,
            "RX packets of ethwe in {:?} moved while only {} (the other network) sent",
            self.watched,
            self.prober
        );
    }
}

#[test]
fn networks_are_separate_segments() {
    let mut world = World::new(2);
    // IPv6 stays off everywhere so no interface chatters on its own: B's counters must only
    // move if a frame of A leaks.
    for host in 1..=2 {
        disable_ipv6(&world.host_ns(host));
    }
    let a1 = world.container(1, "a1");
    let b1 = world.container(1, "b1");
    let a2 = world.container(2, "a2");
    let b2 = world.container(2, "b2");
    for c in [&a1, &b1, &a2, &b2] {
        disable_ipv6(c);
    }
    attach(&world, 1, &format!("{A1}/24"), &a1);
    attach(&world, 2, &format!("{A2}/24"), &a2);
    attach(&world, 1, &format!("{B1}/24"), &b1);
    attach(&world, 2, &format!("{B2}/24"), &b2);

    // Each network has its own VNI, hence its own bridge on each host.
    let (vni_a, vni_b) = (vni(&world, NET_A), vni(&world, NET_B));
    assert_ne!(vni_a, vni_b, "networks {NET_A} and {NET_B} share a VNI");
    for host in 1..=2 {
        let ns = world.host_ns(host);
        for vni in [vni_a, vni_b] {
            assert!(
                link(&ns, &format!("weave-{vni}")).is_some(),
                "no bridge weave-{vni} on host{host}"
            );
        }
    }

    assert_reaches(&a1, A2);
    assert_reaches(&a2, A1);
    assert_reaches(&b1, B2);
    assert_reaches(&b2, B1);

    // Every container now holds an address of the other network's subnet too, or a route onto
    // it through ethwe: IP would deliver across if frames crossed between the networks.
    run_in(&a1, &["ip", "route", "add", NET_B, "dev", "ethwe"]);
    run_in(
        &b1,
        &["ip", "addr", "add", "192.168.0.99/24", "dev", "ethwe"],
    );
    run_in(
        &b2,
        &["ip", "addr", "add", "192.168.0.98/24", "dev", "ethwe"],
    );
    run_in(
        &a2,
        &["ip", "addr", "add", "192.168.10.97/24", "dev", "ethwe"],
    );
    // weft answers ARP across hosts only for addresses it handed out (VXLAN proxy), so the
    // probers learn the MAC behind every target by hand: frames then go out addressed to the
    // right container, and only the separation of the networks can stop them.
    let mac = |ns: &str| link(ns, "ethwe").expect("ethwe").mac;
    let (mac_a1, mac_a2, mac_b1, mac_b2) = (mac(&a1), mac(&a2), mac(&b1), mac(&b2));
    for (prober, ip, mac) in [
        (&a1, "192.168.10.97", &mac_a2),
        (&a1, B1, &mac_b1),
        (&a1, B2, &mac_b2),
        (&a1, "192.168.0.99", &mac_b1),
        (&a1, "192.168.0.98", &mac_b2),
        (&b1, A1, &mac_a1),
        (&b1, A2, &mac_a2),
        (&b1, "192.168.10.97", &mac_a2),
    ] {
        run_in(
            prober,
            &[
                "ip",
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                "ethwe",
                "nud",
                "permanent",
            ],
        );
    }
    // The trick works where layer 2 connects: a1 reaches a2's extra address in B's subnet.
    assert_reaches(&a1, "192.168.10.97");

    Probe {
        prober: &a1,
        control: &a2,
        watched: [&b1, &b2],
        targets: &[
            (B1, "b1, on the same host, in network B"),
            (B2, "b2, on the other host, in network B"),
            ("192.168.0.99", "b1's extra address in A's subnet"),
            ("192.168.0.98", "b2's extra address in A's subnet"),
        ],
        broadcast: "192.168.0.255",
        unused: "192.168.0.77",
    }
    .assert_sealed();
    // b1's extra address routes A's subnet through its ethwe: it tries from network B.
    Probe {
        prober: &b1,
        control: &b2,
        watched: [&a1, &a2],
        targets: &[
            (A1, "a1, on the same host, in network A"),
            (A2, "a2, on the other host, in network A"),
            ("192.168.10.97", "a2's extra address in B's subnet"),
        ],
        broadcast: "192.168.10.255",
        unused: "192.168.10.77",
    }
    .assert_sealed();
}
