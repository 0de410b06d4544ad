//! IPv6: an IPv6-only underlay (2001:db8::/64) carrying weft's VXLAN, with the kernel holding
//! IPv6 VTEPs.

use std::time::Duration;

use weft_integration::{VXLAN_DEV, World, assert_reaches, exec, fdb, link, wait_until};

const CONVERGE: Duration = Duration::from_secs(5);

/// `weftctl attach ADDRS... netns:CONTAINER` on `host`; returns what it printed (the IPs).
fn attach(world: &World, host: usize, addrs: &[&str], container: &str) -> String {
    let target = format!("netns:{container}");
    let mut args = vec!["attach"];
    args.extend_from_slice(addrs);
    args.push(&target);
    world.ctl(host, &args).trim_end().to_owned()
}

#[test]
fn containers_talk_across_hosts_over_an_ipv6_underlay() {
    let mut world = World::on_ipv6_underlay(2, &[]);
    let (a, b) = (world.container(1, "a"), world.container(2, "b"));
    let ip_a = attach(&world, 1, &[], &a);
    let ip_b = attach(&world, 2, &[], &b);
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
