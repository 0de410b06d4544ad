//! IPv6: an IPv6-only underlay (2001:db8::/64) carrying weft's VXLAN, with the kernel holding
//! IPv6 VTEPs; IPv6 and dual-stack containers, their neighbour discovery answered on their own
//! host.

use std::collections::BTreeMap;
use std::time::Duration;

use weft_integration::capture::{Capture, frames_from, icmpv6_type, udp_datagrams};
use weft_integration::cni::{pod_env, weft_conf};
use weft_integration::{
    VXLAN_DEV, World, assert_reaches, exec, fdb, link, neighbours, ping, wait_until,
};

/// The UDP port of weft's VXLAN devices.
const VXLAN_PORT: u16 = 6784;
/// ICMPv6 router and neighbour solicitations.
const ROUTER_SOLICITATION: u8 = 133;
const NEIGHBOUR_SOLICITATION: u8 = 135;

const CONVERGE: Duration = Duration::from_secs(5);

#[test]
fn containers_talk_across_hosts_over_an_ipv6_underlay() {
    let mut world = World::on_ipv6_underlay(2, &[]);
    let (a, b) = (world.container(1, "a"), world.container(2, "b"));
    let ip_a = world.attach(1, &[], &a);
    let ip_b = world.attach(2, &[], &b);
    assert_reaches(&a, &ip_b);
    assert_reaches(&b, &ip_a);

    // The kernel does the encapsulation: IPv6 local address, IPv6 FDB destinations.
    let details = exec(&world.host_ns(1), &["ip", "-d", "link", "show", VXLAN_DEV]).stdout;
    assert!(
        details.contains("local 2001:db8::1 "),
        "{VXLAN_DEV} on host1 is not local to its IPv6 VTEP:\n{details}"
    );
    let mac_b = link(&b, "ethwe").expect("ethwe in b").mac;
    let entries = fdb(&world.host_ns(1), VXLAN_DEV);
    assert!(
        entries.contains(&(mac_b, world.vtep(2))),
        "host1's FDB has no entry for b at 2001:db8::2: {entries:?}"
    );

    // --mtu auto: the underlay's 1500 less VXLAN over IPv6 (70).
    let eth = link(&a, "ethwe").expect("ethwe in a");
    assert_eq!(eth.mtu, 1430, "ethwe of a");

    // The probe crosses the IPv6 underlay too; the VTEP reads as in a URL.
    let ok = wait_until(CONVERGE, || {
        world
            .ctl(1, &["status", "connections"])
            .starts_with("-> [2001:db8::2]:6784 ok rtt=")
    });
    assert!(
        ok,
        "status connections on host1: {}",
        world.ctl(1, &["status", "connections"])
    );
}

/// The addresses of `container`'s ethwe of `family` (`-4`, `-6`), global scope, as `IP/LEN`.
fn addrs_of(container: &str, family: &str) -> Vec<String> {
    let out = exec(
        container,
        &[
            "ip", "-o", family, "addr", "show", "dev", "ethwe", "scope", "global",
        ],
    );
    out.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(String::from))
        .collect()
}

/// The VXLAN packets that cross `ns`'s underlay while `work` runs: how many, and how many of
/// them carry each ICMPv6 type.
fn icmpv6_on_the_underlay(
    world: &World,
    ns: &str,
    work: impl FnOnce(),
) -> (usize, BTreeMap<u8, usize>) {
    let file = std::env::temp_dir().join(format!("{}-nd.pcap", world.prefix()));
    let capture = Capture::start(ns, weft_integration::UNDERLAY_IF, file.clone());
    work();
    let pcap = capture.stop();
    let _ = std::fs::remove_file(&file);
    let vxlan: Vec<_> = udp_datagrams(&pcap)
        .into_iter()
        .filter(|d| d.dst_port == VXLAN_PORT)
        .collect();
    // The VXLAN header (8 bytes), then the container's frame.
    let mut types = BTreeMap::new();
    for icmp in vxlan
        .iter()
        .filter_map(|d| d.payload.get(8..).and_then(icmpv6_type))
    {
        *types.entry(icmp).or_default() += 1;
    }
    (vxlan.len(), types)
}

#[test]
fn ipv6_containers_ping_across_hosts_and_neighbour_discovery_stays_home() {
    let mut world = World::on_ipv6_underlay(2, &[]);
    let (a, b) = (world.container(1, "a"), world.container(2, "b"));
    assert_eq!(world.attach(1, &["fd00:7::5/64"], &a), "fd00:7::5");
    assert_eq!(world.attach(2, &["fd00:7::6/64"], &b), "fd00:7::6");
    // Usable at once: no duplicate address detection holds the address back.
    assert!(
        ping(&a, "fd00:7::6"),
        "the first ping right after attach is lost"
    );
    assert_reaches(&b, "fd00:7::5");
    assert_eq!(addrs_of(&a, "-6"), ["fd00:7::5/64"]);

    // The remote container's MAC at its host, and its address at its MAC, which the VXLAN
    // device's proxy answers neighbour solicitations from.
    let mac_b = link(&b, "ethwe").expect("ethwe in b").mac;
    let host1 = world.host_ns(1);
    assert!(fdb(&host1, "vx-2").contains(&(mac_b.clone(), world.vtep(2))));
    let held = neighbours(&host1, "vx-2");
    assert!(
        held.contains(&("fd00:7::6".to_string(), mac_b)),
        "host1's vx-2 has no neighbour entry for b: {held:?}"
    );

    // Solicitations for a remote container are answered on the asking host: none crosses,
    // while the ping they resolve for does.
    for c in [&a, &b] {
        exec(c, &["ip", "-6", "neigh", "flush", "dev", "ethwe"]);
    }
    let (vxlan, types) = icmpv6_on_the_underlay(&world, &host1, || {
        assert!(ping(&a, "fd00:7::6"));
    });
    assert!(
        vxlan >= 2,
        "the ping did not cross host1's underlay ({vxlan} VXLAN packets)"
    );
    assert_eq!(
        types.get(&NEIGHBOUR_SOLICITATION),
        None,
        "neighbour solicitations crossed the underlay"
    );
    // A container coming up sends no router solicitation and no duplicate address detection
    // across (what it does send, MLD reports, floods as IPv4's IGMP does).
    let e = world.container(1, "e");
    let (_, types) = icmpv6_on_the_underlay(&world, &host1, || {
        world.attach(1, &["fd00:7::7/64"], &e);
        // Long enough for a kernel left to itself: a second of DAD on the link-local address,
        // then a router solicitation within a second.
        std::thread::sleep(Duration::from_secs(3));
    });
    for (icmp, what) in [
        (ROUTER_SOLICITATION, "router"),
        (NEIGHBOUR_SOLICITATION, "neighbour"),
    ] {
        assert_eq!(
            types.get(&icmp),
            None,
            "{what} solicitations of a new container crossed"
        );
    }
    assert_reaches(&e, "fd00:7::6");
    let resolved = exec(
        &a,
        &["ip", "-6", "neigh", "show", "fd00:7::6", "dev", "ethwe"],
    );
    assert!(
        resolved.stdout.contains(&link(&b, "ethwe").unwrap().mac),
        "a resolved fd00:7::6 to another MAC: {}",
        resolved.stdout
    );
}

#[test]
fn dual_stack_containers_reach_each_other_on_both_families() {
    let mut world = World::on_ipv6_underlay(2, &[]);
    assert_eq!(
        world.ctl(
            1,
            &[
                "network",
                "create",
                "blue",
                "--subnet",
                "fd00:9::/64",
                "--subnet",
                "10.9.0.0/24",
            ]
        ),
        "blue 10.9.0.0/24,fd00:9::/64 vni=2\n"
    );
    let (c, d) = (world.container(1, "c"), world.container(2, "d"));
    assert_eq!(world.attach(1, &["net:blue"], &c), "10.9.0.2 fd00:9::2");
    assert_eq!(world.attach(2, &["net:blue"], &d), "10.9.0.3 fd00:9::3");
    assert_eq!(addrs_of(&d, "-4"), ["10.9.0.3/24"]);
    assert_eq!(addrs_of(&d, "-6"), ["fd00:9::3/64"]);
    assert_reaches(&c, "10.9.0.3");
    assert_reaches(&c, "fd00:9::3");
    assert_reaches(&d, "fd00:9::2");
    let ps = world.ctl(1, &["ps"]);
    assert!(
        ps.contains(" 10.9.0.2/24 fd00:9::2/64"),
        "ps on host1 does not show c's two addresses: {ps}"
    );
    let row = |out: &str, first: &str, second: &str| -> Vec<String> {
        out.lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .find(|f| f.len() > 1 && f[0] == first && f[1].starts_with(second))
            .unwrap_or_else(|| panic!("no row {first} {second} in:\n{out}"))
    };
    let ls = world.ctl(1, &["network", "ls"]);
    assert_eq!(
        row(&ls, "blue", "10.9"),
        ["blue", "10.9.0.0/24,fd00:9::/64", "2", "2", "no"]
    );
    // The IPv6 pool counted, not walked: 2^64 less the network and gateway addresses.
    let ipam = world.ctl(1, &["status", "ipam"]);
    assert_eq!(
        row(&ipam, "blue", "fd00"),
        ["blue", "fd00:9::/64", "2^64-2", "2", "2^64-4"]
    );
    assert_eq!(
        row(&ipam, "blue", "10.9"),
        ["blue", "10.9.0.0/24", "253", "2", "251"]
    );
    // The host on the network: the gateway of each subnet on its bridge, reachable from a
    // container across hosts on both families.
    assert_eq!(
        world.ctl(1, &["expose", "net:blue"]),
        "10.9.0.1 fd00:9::1\n"
    );
    assert_reaches(&d, "fd00:9::1");
    assert_reaches(&d, "10.9.0.1");
}

#[test]
fn two_ipv6_networks_are_separate_segments_on_one_host_and_across() {
    let mut world = World::on_ipv6_underlay(2, &[]);
    let (a1, b1) = (world.container(1, "a1"), world.container(1, "b1"));
    let (a2, b2) = (world.container(2, "a2"), world.container(2, "b2"));
    world.attach(1, &["fd00:a::2/64"], &a1);
    world.attach(1, &["fd00:b::2/64"], &b1);
    world.attach(2, &["fd00:a::3/64"], &a2);
    world.attach(2, &["fd00:b::3/64"], &b2);
    assert_reaches(&a1, "fd00:a::3");
    assert_reaches(&b1, "fd00:b::3");

    // a1 is made to believe B's containers are its neighbours: an address of B's subnet on
    // ethwe, and their MACs pinned. Frames addressed to them go out; only the separation of
    // the networks stops them.
    let mac = |ns: &str| link(ns, "ethwe").expect("ethwe").mac;
    let (mac_a1, mac_b1, mac_b2) = (mac(&a1), mac(&b1), mac(&b2));
    exec(
        &a1,
        &[
            "ip",
            "addr",
            "add",
            "fd00:b::99/64",
            "dev",
            "ethwe",
            "nodad",
        ],
    );
    for (ip, mac) in [("fd00:b::2", &mac_b1), ("fd00:b::3", &mac_b2)] {
        let pinned = exec(
            &a1,
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
        assert!(pinned.success(), "{}", pinned.stderr);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let watch = |ns: &str| Capture::start(ns, "ethwe", dir.path().join(format!("{ns}.pcap")));
    let (on_b1, on_b2, on_a2) = (watch(&b1), watch(&b2), watch(&a2));
    for target in ["fd00:b::2", "fd00:b::3"] {
        assert!(
            !ping(&a1, target),
            "a1 (network A) reaches {target} of network B"
        );
    }
    // The control: a1's frames do reach its own network, multicast included.
    assert!(ping(&a1, "fd00:a::3"));
    exec(
        &a1,
        &[
            "ping",
            "-n",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "ff02::1%ethwe",
        ],
    );
    let (b1_saw, b2_saw) = (
        frames_from(&on_b1.stop(), &mac_a1),
        frames_from(&on_b2.stop(), &mac_a1),
    );
    let a2_saw = frames_from(&on_a2.stop(), &mac_a1);
    assert!(
        a2_saw >= 3,
        "a2 saw {a2_saw} frames of a1: the capture proves nothing"
    );
    assert_eq!(
        (b1_saw, b2_saw),
        (0, 0),
        "frames of a1 (network A) reached B's containers on its host and across"
    );
}

#[test]
fn a_cni_pod_on_a_dual_stack_network_gets_both_families_and_checks_healthy() {
    let mut world = World::on_ipv6_underlay(1, &[]);
    world.ctl(
        1,
        &[
            "network",
            "create",
            "dual",
            "--subnet",
            "10.9.0.0/24",
            "--subnet",
            "fd00:9::/64",
        ],
    );
    let ns = world.container(1, "pod");
    let path = format!("/run/netns/{ns}");
    let id = "0123456789abcdef".repeat(4);
    let env = |command| pod_env(command, &id, &path, "");
    let conf = weft_conf("1.0.0", serde_json::json!({"network": "dual"}));
    let add = world.cni(1, &env("ADD"), &conf);
    assert!(add.success(), "ADD: {:?}", add.output);
    assert_eq!(
        add.json["ips"],
        serde_json::json!([
            {"address": "10.9.0.2/24", "interface": 1},
            {"address": "fd00:9::2/64", "interface": 1}
        ])
    );
    assert_eq!(
        add.json["routes"],
        serde_json::json!([{"dst": "10.9.0.0/24"}, {"dst": "fd00:9::/64"}])
    );
    // CHECK finds both addresses and both routes in the pod, the IPv6 ones too.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = add.json.clone();
    let check = world.cni(1, &env("CHECK"), &check_conf);
    assert!(check.success(), "CHECK: {:?}", check.output);
    assert!(
        exec(
            &ns,
            &["ip", "-6", "route", "del", "fd00:9::/64", "dev", "eth0"]
        )
        .success()
    );
    let broken = world.cni(1, &env("CHECK"), &check_conf);
    assert!(
        broken.msg().contains("no route to fd00:9::/64 on eth0"),
        "{}",
        broken.msg()
    );
}
