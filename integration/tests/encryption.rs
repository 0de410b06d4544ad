//! Encrypted networks: their frames cross between hosts only inside WireGuard, while a plaintext
//! network beside them works as before. What the tests look at is what a user would: pings
//! that cross, a capture of the underlay, what the kernel holds, and packets made by hand.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use weft_integration::capture::{Capture, contains, udp_datagrams};
use weft_integration::scrape::{AGENT_METRICS, scrape, series_value};
use weft_integration::{
    UNDERLAY_IF, VXLAN_DEV, World, assert_reaches, exec, fdb, link, ping_counts,
    ping_in_background, udp_socket, wait_until,
};

const SECRET_NET: &str = "10.7.0.0/24";
/// The encrypted network's VNI (the first network after the default one) and its devices.
const SECRET_VNI: u32 = 2;
const SECRET_VXLAN: &str = "vx-2";
const WG_DEV: &str = "weftwg";
const WG_PORT: u16 = 6787;
const VXLAN_PORT: u16 = 6784;

/// `ping -p` patterns, one per network, to look for on the underlay.
const SECRET_PATTERN: &str = "5ec2e75ec2e75ec2";
const PLAIN_PATTERN: &str = "0b5e7ab1e0b5e7ab";

fn attach(world: &World, host: usize, addr: &str, container: &str) {
    let out = world.weftctl(host, &["attach", addr, &format!("netns:{container}")]);
    assert!(out.success(), "attach {addr} {container}: {}", out.stderr);
}

fn hex(pattern: &str) -> Vec<u8> {
    (0..pattern.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&pattern[i..i + 2], 16).unwrap())
        .collect()
}

/// A host's tunnel address: `fe80::7765:6674:` and its underlay address.
fn tunnel(host: usize) -> Ipv6Addr {
    format!("fe80::7765:6674:c612:{host:x}").parse().unwrap()
}

/// A VXLAN packet for `vni` carrying an ARP request from a made-up sender `sender` (a host
/// that answers it learns that neighbour) for `target`.
fn vxlan_arp(vni: u32, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mac = [0x02, 0, 0, 0, 0, 0x99];
    let mut p = vec![0x08, 0, 0, 0];
    p.extend((vni << 8).to_be_bytes());
    p.extend([0xff; 6]);
    p.extend(mac);
    p.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    p.extend(mac);
    p.extend(sender);
    p.extend([0; 6]);
    p.extend(target);
    p
}

/// Whether `container` has a neighbour entry for `ip`: it took an ARP request from it.
fn heard_from(container: &str, ip: &str) -> bool {
    !exec(container, &["ip", "neigh", "show", ip])
        .stdout
        .trim()
        .is_empty()
}

fn ifindex(ns: &str, dev: &str) -> u64 {
    link(ns, dev)
        .unwrap_or_else(|| panic!("no {dev} in {ns}"))
        .index
}

#[test]
fn an_encrypted_network_crosses_hosts_only_inside_wireguard() {
    let mut world = World::new(3);
    let created = world.ctl(
        1,
        &[
            "network",
            "create",
            "secret",
            "--subnet",
            SECRET_NET,
            "--encrypt",
        ],
    );
    assert_eq!(created, "secret 10.7.0.0/24 vni=2\n");
    let listed = world.ctl(1, &["network", "ls"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("secret") && l.ends_with("yes")),
        "network ls shows secret encrypted:\n{listed}"
    );

    // s1, s2, s3 on the encrypted network, one per host; p1 and p2 on the plaintext default.
    let s: Vec<String> = (1..=3)
        .map(|h| {
            let ns = world.container(h, &format!("s{h}"));
            attach(&world, h, &format!("10.7.0.{}/24", h + 1), &ns);
            ns
        })
        .collect();
    let p1 = world.container(1, "p1");
    attach(&world, 1, "10.32.0.11/12", &p1);
    let p2 = world.container(2, "p2");
    attach(&world, 2, "10.32.0.12/12", &p2);
    assert_reaches(&s[0], "10.7.0.3");
    assert_reaches(&s[0], "10.7.0.4");
    assert_reaches(&p1, "10.32.0.12");

    // The kernel still does the VXLAN work: host1's device of the network sends from its tunnel
    // address through the WireGuard interface, to the other hosts' tunnel addresses.
    let h1 = world.host_ns(1);
    let details = exec(&h1, &["ip", "-d", "link", "show", SECRET_VXLAN]).stdout;
    assert!(
        details.contains(&format!("local {} dev {WG_DEV}", tunnel(1))),
        "{SECRET_VXLAN} on host1:\n{details}"
    );
    let plain = exec(&h1, &["ip", "-d", "link", "show", VXLAN_DEV]).stdout;
    assert!(
        plain.contains("local 198.18.0.1 ") && !plain.contains(WG_DEV),
        "the plaintext network's device is as before:\n{plain}"
    );
    let entries = fdb(&h1, SECRET_VXLAN);
    for host in [2, 3] {
        let flood = ("00:00:00:00:00:00".to_string(), tunnel(host).to_string());
        assert!(entries.contains(&flood), "{flood:?} in {entries:?}");
    }
    let mtu = |ns: &str, dev: &str| link(ns, dev).unwrap().mtu;
    assert_eq!(
        (
            mtu(&h1, WG_DEV),
            mtu(&h1, SECRET_VXLAN),
            mtu(&s[0], "ethwe")
        ),
        (1420, 1350, 1350),
        "MTUs of the WireGuard interface, the network and its container (underlay 1500)"
    );
    assert_eq!(
        mtu(&p1, "ethwe"),
        1450,
        "the plaintext network keeps its MTU"
    );

    // A capture on host1's underlay: the plaintext pattern is there (the capture works), the
    // encrypted one is not, and the encrypted network's frames left as WireGuard packets.
    let file = tempfile::NamedTempFile::new().unwrap();
    let capture = Capture::start(&h1, UNDERLAY_IF, file.path().to_path_buf());
    let ping = |from: &str, pattern: &str, ip: &str| {
        let out = exec(
            from,
            &["ping", "-n", "-c", "3", "-i", "0.2", "-p", pattern, ip],
        );
        assert!(out.success(), "ping {ip} from {from}: {}", out.stdout);
    };
    ping(&s[0], SECRET_PATTERN, "10.7.0.3");
    ping(&p1, PLAIN_PATTERN, "10.32.0.12");
    let pcap = capture.stop();
    assert!(
        contains(&pcap, &hex(PLAIN_PATTERN)),
        "the plaintext ping is in the capture (else it proves nothing)"
    );
    assert!(
        !contains(&pcap, &hex(SECRET_PATTERN)),
        "the encrypted network's ping payload is readable on the underlay"
    );
    let datagrams = udp_datagrams(&pcap);
    assert!(
        datagrams.iter().filter(|d| d.dst_port == WG_PORT).count() >= 6,
        "the encrypted pings and their answers crossed as WireGuard packets"
    );
    let secret_vxlan = datagrams.iter().filter(|d| {
        d.dst_port == VXLAN_PORT && d.payload.get(4..7) == Some(&SECRET_VNI.to_be_bytes()[1..])
    });
    assert_eq!(
        secret_vxlan.count(),
        0,
        "VXLAN of the encrypted network in the clear"
    );

    // VXLAN packets made by hand on the underlay (from host2's namespace): for the encrypted
    // network they reach no container, whether sent to host1's address or its tunnel address;
    // the same packet for the plaintext network does (the control).
    let socket = udp_socket(&world.host_ns(2));
    let to_host1 = "[::ffff:198.18.0.1]:6784";
    socket
        .send_to(&vxlan_arp(1, [10, 32, 0, 99], [10, 32, 0, 11]), to_host1)
        .unwrap();
    socket
        .send_to(
            &vxlan_arp(SECRET_VNI, [10, 7, 0, 99], [10, 7, 0, 2]),
            to_host1,
        )
        .unwrap();
    let underlay = ifindex(&world.host_ns(2), UNDERLAY_IF) as u32;
    let to_tunnel = SocketAddrV6::new(tunnel(1), VXLAN_PORT, 0, underlay);
    socket
        .send_to(
            &vxlan_arp(SECRET_VNI, [10, 7, 0, 98], [10, 7, 0, 2]),
            to_tunnel,
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || heard_from(&p1, "10.32.0.99")),
        "the plaintext network's hand-made packet did not reach p1"
    );
    assert!(!heard_from(&s[0], "10.7.0.99"), "sent to host1's address");
    assert!(
        !heard_from(&s[0], "10.7.0.98"),
        "sent to its tunnel address"
    );

    // Every host's connections say which are encrypted, with a recent handshake.
    let connections = world.ctl(1, &["status", "connections"]);
    for host in [2, 3] {
        let line = connections
            .lines()
            .find(|l| l.starts_with(&format!("-> 198.18.0.{host}:")))
            .unwrap_or_else(|| panic!("no line for host{host}:\n{connections}"));
        assert!(line.contains(" encrypted handshake="), "{line}");
        assert!(!line.contains("handshake=none"), "{line}");
    }

    // So do the agent's metrics.
    let metrics = scrape(&h1, AGENT_METRICS);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for host in [2, 3] {
        let peer = format!("{{peer=\"host{host}\"}}");
        let series = |name: &str| series_value(&metrics, &format!("weft_agent_{name}{peer}"));
        assert_eq!(series("peer_encrypted"), Some(1.0), "{metrics}");
        let at = series("peer_wireguard_handshake_timestamp_seconds").expect("a handshake");
        assert!(
            now - at < 120.0,
            "handshake with host{host} {}s ago",
            now - at
        );
    }

    // A restarted agent changes nothing and loses no packet.
    let before = (ifindex(&h1, WG_DEV), ifindex(&h1, SECRET_VXLAN));
    let pings = ping_in_background(&s[0], "10.7.0.3", 80, Duration::from_millis(50));
    world.restart_agent_with(1, &[]);
    let (sent, received) = ping_counts(&pings.join().unwrap());
    assert_eq!(received, sent, "pings lost while host1's agent restarted");
    assert_eq!(
        (ifindex(&h1, WG_DEV), ifindex(&h1, SECRET_VXLAN)),
        before,
        "the restart made the WireGuard interface or the VXLAN device anew"
    );

    // Deleted by hand, the WireGuard interface comes back with its peers (and its VXLAN
    // devices, which the kernel removes with it).
    let h2 = world.host_ns(2);
    let old = ifindex(&h2, WG_DEV);
    exec(&h2, &["ip", "link", "del", WG_DEV]);
    assert!(
        wait_until(Duration::from_secs(10), || link(&h2, WG_DEV)
            .is_some_and(|l| l.index != old)
            && exec(&s[0], &["ping", "-n", "-c", "1", "-W", "1", "10.7.0.3"])
                .success()),
        "host2's {WG_DEV}, deleted by hand, did not come back"
    );

    // host3 re-joins with a new key pair (its state lost): the others take its new key and
    // reach it again within seconds.
    let h3 = world.host_ns(3);
    world.stop_agent(3);
    exec(&h3, &["ip", "link", "del", WG_DEV]);
    std::fs::remove_file(world.state_dir(3).join("wireguard.key")).unwrap();
    world.start_agent(3);
    assert!(
        wait_until(Duration::from_secs(10), || exec(
            &s[0],
            &["ping", "-n", "-c", "1", "-W", "1", "10.7.0.4"]
        )
        .success()),
        "host3 with its new key is not reachable from host1"
    );

    // Reset removes the interface, and its wireguard-go with it.
    assert!(
        runs_wireguard_go(&h1),
        "no wireguard-go in host1 before the reset"
    );
    world.ctl(1, &["reset"]);
    assert!(link(&h1, WG_DEV).is_none(), "{WG_DEV} outlived the reset");
    assert!(
        wait_until(Duration::from_secs(2), || !runs_wireguard_go(&h1)),
        "wireguard-go outlived the reset"
    );
}

/// Whether a wireguard-go process runs in namespace `ns`.
fn runs_wireguard_go(ns: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "wireguard-go")
        })
}

#[test]
fn a_controller_refuses_to_change_the_default_networks_encryption() {
    let world = World::new(0);
    world.kill_controller();
    let out = world.run_controller(&["--encrypt-default"]);
    assert_eq!(out.code, Some(1), "exit status; stderr:\n{}", out.stderr);
    assert_eq!(
        out.stderr.lines().last().unwrap_or_default(),
        "weft-controller: the stored default network is not encrypted but --encrypt-default is given",
        "stderr:\n{}",
        out.stderr
    );
    // Started as the store was made, it serves as before.
    world.start_controller();
}
