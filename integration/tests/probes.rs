//! Data-path probes as an operator sees them: `weftctl status connections` says per peer whether
//! frames cross through the VXLAN path, at which round trip and up to which size; it turns
//! `failed` on both sides when an nftables rule drops the VXLAN port between two hosts, and
//! back to `ok` once it is gone; a smaller MTU on a host's underlay link shows as a smaller
//! largest frame. The probe device holds each peer's entries in the kernel, and comes back when
//! deleted by hand; a host without IPv6 loses its probes (said once) and nothing else.
//! `weftctl report` is one JSON document of every part.

use std::time::{Duration, Instant};

use serde_json::Value;
use weft_integration::scrape::{AGENT_METRICS, scrape, series_value};
use weft_integration::{
    World, assert_reaches, disable_ipv6, exec, fdb, host_addr, link, neighbours, wait_until,
};

const PROBE_DEVICE: &str = "weft-probe";
/// The world's underlay links are 1500 bytes: 1450 is left inside VXLAN.
const NETWORK_MTU: u64 = 1450;
/// How long a change of the path may take to show: the operator contract's ~5 s, with room for
/// a loaded test machine.
const NOTICE: Duration = Duration::from_secs(10);
/// A path that carries full-size frames is checked for them every 10 s, and the search for a
/// smaller MTU takes about five rounds of a second.
const MTU_FOUND: Duration = Duration::from_secs(30);

/// Host `host`'s line about `peer` in `weftctl status connections` (empty if it has none).
fn connection(world: &World, host: usize, peer: usize) -> String {
    let prefix = format!("-> {}:6784 ", host_addr(peer));
    let out = world.ctl(host, &["status", "connections"]);
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_default()
        .to_owned()
}

/// Waits until host `host` shows its connection to `peer` as `is` says; returns how long it
/// took, panicking with the last line seen after `limit`.
fn await_connection(
    world: &World,
    (host, peer): (usize, usize),
    limit: Duration,
    what: &str,
    is: impl Fn(&str) -> bool,
) -> Duration {
    let start = Instant::now();
    let shown = wait_until(limit, || is(&connection(world, host, peer)));
    assert!(
        shown,
        "host{host} -> host{peer} not {what} within {limit:?}: {}",
        connection(world, host, peer)
    );
    start.elapsed()
}

fn ok_at(mtu: u64) -> impl Fn(&str) -> bool {
    move |line: &str| {
        line.split_once(" ok rtt=")
            .is_some_and(|(_, rest)| rest.ends_with(&format!("ms mtu={mtu}")))
    }
}

fn failed(line: &str) -> bool {
    line.contains(" failed: no reply for ")
}

/// The path MTU host `host` shows towards `peer`, once ok.
fn shown_mtu(world: &World, host: usize, peer: usize) -> u64 {
    let line = connection(world, host, peer);
    line.rsplit_once("mtu=")
        .and_then(|(_, mtu)| mtu.parse().ok())
        .unwrap_or_else(|| panic!("no MTU in {line:?}"))
}

/// One series of the agent's metrics on `host`.
fn metric(world: &World, host: usize, series: &str) -> Option<f64> {
    series_value(&scrape(&world.host_ns(host), AGENT_METRICS), series)
}

#[test]
fn a_dropped_vxlan_port_fails_the_connection_on_both_sides_until_it_is_lifted() {
    let world = World::new(2);
    for (host, peer) in [(1, 2), (2, 1)] {
        await_connection(&world, (host, peer), NOTICE, "ok", ok_at(NETWORK_MTU));
        let ns = world.host_ns(host);
        // The probe device holds the peer's probe MAC at its VTEP, its probe address at that MAC.
        let [_, _, c, d] = host_addr(peer)
            .parse::<std::net::Ipv4Addr>()
            .unwrap()
            .octets();
        let mac = format!("0e:77:c6:12:{c:02x}:{d:02x}");
        assert_eq!(
            fdb(&ns, PROBE_DEVICE),
            [(mac.clone(), host_addr(peer))].into_iter().collect(),
            "FDB of {PROBE_DEVICE} on host{host}"
        );
        let addr = format!("fd77:6566:7400::c612:{d:x}");
        assert_eq!(
            neighbours(&ns, PROBE_DEVICE),
            [(addr, mac)].into_iter().collect(),
            "neighbours of {PROBE_DEVICE} on host{host}"
        );
    }
    let up = r#"weft_agent_peer_data_path_up{peer="host2"}"#;
    assert_eq!(metric(&world, 1, up), Some(1.0));
    assert!(
        world
            .ctl(1, &["status"])
            .contains("Data path: 1 ok, 0 failed")
    );

    let h1 = world.host_ns(1);
    let drop = "add table inet weft_test; add chain inet weft_test input { type filter hook \
                input priority 0; }; add rule inet weft_test input udp dport 6784 drop";
    assert!(exec(&h1, &["nft", drop]).success());
    for (host, peer) in [(1, 2), (2, 1)] {
        let took = await_connection(&world, (host, peer), NOTICE, "failed", failed);
        println!("host{host} -> host{peer} shown failed {took:?} after the drop rule");
    }
    assert_eq!(metric(&world, 1, up), Some(0.0));
    let summary = world.ctl(1, &["status"]);
    assert!(summary.contains("Data path: 0 ok, 1 failed"), "{summary}");
    let log = std::fs::read_to_string(world.agent_log(1)).unwrap();
    assert!(
        log.contains("the data path to this peer failed: no reply for"),
        "no log line of the failure on host1"
    );
    let json: Value =
        serde_json::from_str(&world.ctl(2, &["status", "connections", "--json"])).expect("JSON");
    assert_eq!(json[0]["peer"], "host1");
    assert_eq!(json[0]["state"], "failed");
    assert!(
        json[0]["why"]
            .as_str()
            .unwrap()
            .starts_with("no reply for ")
    );

    assert!(exec(&h1, &["nft", "delete table inet weft_test"]).success());
    for (host, peer) in [(1, 2), (2, 1)] {
        let took = await_connection(&world, (host, peer), NOTICE, "ok", ok_at(NETWORK_MTU));
        println!("host{host} -> host{peer} shown ok {took:?} after the rule went");
    }
    assert_eq!(metric(&world, 1, up), Some(1.0));
}

#[test]
fn a_smaller_underlay_mtu_shows_as_the_largest_frame_that_crosses() {
    let world = World::new(2);
    for (host, peer) in [(1, 2), (2, 1)] {
        await_connection(&world, (host, peer), NOTICE, "ok", ok_at(NETWORK_MTU));
    }
    let h2 = world.host_ns(2);
    assert!(exec(&h2, &["ip", "link", "set", "ul0", "mtu", "1400"]).success());
    // host2 sends nothing larger than its link with DF set: 1400 - 50 of VXLAN.
    await_connection(&world, (2, 1), MTU_FOUND, "at mtu=1350", ok_at(1350));
    // What host1 sends arrives through a veth, which takes 4 bytes over its MTU (room for a VLAN
    // tag): up to 1354 bytes cross towards host2.
    let shrunk = wait_until(MTU_FOUND, || {
        (1350..=1354).contains(&shown_mtu(&world, 1, 2))
    });
    assert!(shrunk, "host1 -> host2: {}", connection(&world, 1, 2));
    let mtu = r#"weft_agent_peer_path_mtu_bytes{peer="host1"}"#;
    assert_eq!(metric(&world, 2, mtu), Some(1350.0));
    let log = std::fs::read_to_string(world.agent_log(2)).unwrap();
    assert!(
        log.contains("drops full-size frames: the largest that crosses is 1350 bytes"),
        "no log line of the smaller MTU on host2"
    );

    assert!(exec(&h2, &["ip", "link", "set", "ul0", "mtu", "1500"]).success());
    for (host, peer) in [(1, 2), (2, 1)] {
        await_connection(
            &world,
            (host, peer),
            MTU_FOUND,
            "back at 1450",
            ok_at(NETWORK_MTU),
        );
    }
}

#[test]
fn the_probe_device_comes_back_when_deleted_and_reset_removes_it() {
    let world = World::new(2);
    await_connection(&world, (1, 2), NOTICE, "ok", ok_at(NETWORK_MTU));
    let h1 = world.host_ns(1);
    let old = link(&h1, PROBE_DEVICE).expect("the probe device").index;
    assert!(exec(&h1, &["ip", "link", "del", PROBE_DEVICE]).success());
    let back = wait_until(NOTICE, || {
        link(&h1, PROBE_DEVICE).is_some_and(|l| l.index != old && l.mtu == NETWORK_MTU)
            && fdb(&h1, PROBE_DEVICE).len() == 1
    });
    assert!(
        back,
        "{PROBE_DEVICE} not back with its entry: {:?}",
        link(&h1, PROBE_DEVICE)
    );
    // The agent opens its probe socket on the new device.
    await_connection(&world, (1, 2), NOTICE, "ok again", ok_at(NETWORK_MTU));

    let report: Value =
        serde_json::from_str(&world.ctl(1, &["report"])).expect("one JSON document");
    for part in [
        "status",
        "connections",
        "peers",
        "controllers",
        "networks",
        "ipam",
        "endpoints",
        "dns",
        "last_reconcile",
    ] {
        assert!(
            report.get(part).is_some(),
            "the report lacks {part}: {report:#}"
        );
    }
    assert_eq!(report["status"]["name"], "host1");
    assert_eq!(report["connections"][0]["state"], "ok");
    assert_eq!(report["last_reconcile"]["ok"], true);
    assert_eq!(report["networks"][0]["name"], "default");

    world.ctl(1, &["reset"]);
    assert_eq!(link(&h1, PROBE_DEVICE), None, "reset left {PROBE_DEVICE}");
}

#[test]
fn a_host_without_ipv6_loses_its_probes_and_nothing_else() {
    let mut world = World::new(2);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    world.ctl(1, &["attach", "10.32.0.11/12", &format!("netns:{c1}")]);
    world.ctl(2, &["attach", "10.32.0.12/12", &format!("netns:{c2}")]);
    let h1 = world.host_ns(1);
    disable_ipv6(&h1);
    // Made anew, the probe device gets no IPv6 address on this host.
    assert!(exec(&h1, &["ip", "link", "del", PROBE_DEVICE]).success());
    await_connection(&world, (1, 2), NOTICE, "failed", |line| {
        line.contains(" failed: no reply for ") && line.contains("cannot open a probe socket")
    });
    let log = std::fs::read_to_string(world.agent_log(1)).unwrap();
    let said = log
        .lines()
        .filter(|l| l.contains("no data-path probes: probe device weft-probe: cannot add address"))
        .count();
    assert_eq!(said, 1, "the reason, logged once:\n{log}");
    assert!(
        !log.contains("reconcile failed"),
        "the networks' reconcile must not fail for the probes:\n{log}"
    );
    assert_reaches(&c1, "10.32.0.12");
    assert!(
        world
            .ctl(1, &["status"])
            .contains("Data path: 0 ok, 1 failed")
    );
}
