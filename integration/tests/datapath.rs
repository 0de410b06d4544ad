//! The kernel datapath as the agent keeps it: restarts that change nothing that is right and
//! drop no packet, stale entries removed once the agent is back, devices deleted by hand made
//! again, FDB and neighbour entries changed by hand put right, a network that cannot be fixed
//! leaving the others fixed, broadcast and multicast to every host once, ARP answered on the
//! asking host, the MTU of the VXLAN overhead, exposing the host on a network, reset, and a
//! stopped agent that leaves containers talking.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_integration::{
    BRIDGE, Background, FLOOD_MAC, Output, VXLAN_DEV, World, arp_in, assert_reaches,
    assert_rejected, count_arp_in, disable_ipv6, exec, fdb, host_addr, link, links, locate_bin,
    neighbours, ping, ping_n, rx_packets, wait_until,
};

const CONVERGE: Duration = Duration::from_secs(5);
/// How soon a device deleted behind the agent's back must be back: it reacts to the kernel's
/// link notifications, not to its periodic pass.
const REPAIR: Duration = Duration::from_secs(2);
/// How long what expose or hide did is watched for being undone.
const STAY: Duration = Duration::from_secs(1);
/// The broadcast address of the default network, 10.32.0.0/12.
const DEFAULT_BROADCAST: &str = "10.47.255.255";
/// ICMP echo request overhead inside an IP packet: IPv4 header (20) + ICMP header (8).
const ICMP_OVERHEAD: u64 = 28;
/// What the agent logs whenever a reconcile changed the kernel's tables.
const RECONCILED: &str = "datapath reconciled";

/// Runs a command inside `ns` that must succeed: the test's own setup.
fn run_in(ns: &str, argv: &[&str]) {
    let out = exec(ns, argv);
    assert!(
        out.success(),
        "{} in {ns}: {}",
        argv.join(" "),
        out.stderr.trim()
    );
}

fn mac_of(container: &str) -> String {
    link(container, "ethwe")
        .unwrap_or_else(|| panic!("no ethwe in {container}"))
        .mac
}

/// The IPv4 address (without prefix) of `container`'s ethwe.
fn ip_of(container: &str) -> String {
    let eth = link(container, "ethwe").unwrap_or_else(|| panic!("no ethwe in {container}"));
    let cidr = eth.addrs.first().expect("ethwe has an address");
    cidr.split('/').next().expect("IP/LEN").to_owned()
}

/// The names weft gives its links: the bridges, the VXLAN devices (the probe device too), the
/// host ends of veths.
fn is_weft_link(name: &str) -> bool {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    name == BRIDGE
        || name == VXLAN_DEV
        || name == "weft-probe"
        || numbered("weave-")
        || numbered("vx-")
        || name.starts_with("vethwepl")
}

fn weft_links(ns: &str) -> Vec<String> {
    links(ns)
        .into_iter()
        .map(|l| l.name)
        .filter(|n| is_weft_link(n))
        .collect()
}

/// FDB entries pointing at `peer` for each MAC in `macs`, plus the peer's flood entry.
fn remote(peer: usize, macs: &[&str]) -> BTreeSet<(String, String)> {
    macs.iter()
        .chain([&FLOOD_MAC])
        .map(|m| (m.to_string(), host_addr(peer)))
        .collect()
}

/// A host's default-network datapath down to the devices' numbers: two equal snapshots mean
/// nothing was deleted and made anew, re-plugged or reprogrammed in between.
#[derive(Debug, PartialEq, Eq)]
struct Datapath {
    /// weft's links, name → (ifindex, bridge it is on).
    links: BTreeMap<String, (u64, Option<String>)>,
    fdb: BTreeSet<(String, String)>,
    neighbours: BTreeSet<(String, String)>,
}

impl Datapath {
    fn of(ns: &str) -> Datapath {
        Datapath {
            links: links(ns)
                .into_iter()
                .filter(|l| is_weft_link(&l.name))
                .map(|l| (l.name, (l.index, l.master)))
                .collect(),
            fdb: fdb(ns, VXLAN_DEV),
            neighbours: neighbours(ns, VXLAN_DEV),
        }
    }
}

/// Waits until host `ns`'s VXLAN device holds exactly `fdb` and `neighbours`.
fn assert_tables(
    ns: &str,
    fdb_want: &BTreeSet<(String, String)>,
    neigh_want: &BTreeSet<(String, String)>,
) {
    let right = || fdb(ns, VXLAN_DEV) == *fdb_want && neighbours(ns, VXLAN_DEV) == *neigh_want;
    wait_until(CONVERGE, right);
    assert_eq!(fdb(ns, VXLAN_DEV), *fdb_want, "FDB of {VXLAN_DEV} in {ns}");
    assert_eq!(
        neighbours(ns, VXLAN_DEV),
        *neigh_want,
        "permanent neighbours of {VXLAN_DEV} in {ns}"
    );
}

/// The agent's `datapath reconciled` lines so far, restarts included.
fn reconciles(world: &World, host: usize) -> Vec<String> {
    fs::read_to_string(world.agent_log(host))
        .expect("reading the agent's log")
        .lines()
        .filter(|l| l.contains(RECONCILED))
        .map(str::to_owned)
        .collect()
}

/// The kernel's own account of changes to weft's devices in a host namespace: `ip monitor`
/// (links, addresses, routes, neighbours) and `bridge monitor fdb`, running in it.
struct Monitor {
    ns: String,
    _dir: tempfile::TempDir,
    logs: Vec<std::path::PathBuf>,
    _monitors: Vec<Background>,
}

/// A veth pair made and removed to see that the monitors are listening (its ends are
/// `wftprobe0` and `wftprobe1`; this kernel has no dummy links).
const PROBE_LINK: &str = "wftprobe";

impl Monitor {
    /// Starts the monitors; returns once both have reported a probe link's coming and going.
    fn start(ns: &str) -> Monitor {
        let dir = tempfile::tempdir().expect("a temp dir for the monitors' output");
        // Line-buffered: their output goes to a file, and is read while they run.
        let commands: [&[&str]; 2] = [
            &[
                "-oL", "ip", "-o", "monitor", "link", "address", "route", "neigh",
            ],
            &["-oL", "bridge", "monitor", "fdb", "link"],
        ];
        let (mut logs, mut monitors) = (Vec::new(), Vec::new());
        for (i, args) in commands.iter().enumerate() {
            let log = dir.path().join(format!("monitor{i}.log"));
            monitors.push(Background::start(ns, "stdbuf", args, log.clone()));
            logs.push(log);
        }
        let monitor = Monitor {
            ns: ns.to_owned(),
            _dir: dir,
            logs,
            _monitors: monitors,
        };
        let listening = wait_until(Duration::from_secs(5), || {
            let (end, peer) = (format!("{PROBE_LINK}0"), format!("{PROBE_LINK}1"));
            exec(
                ns,
                &[
                    "ip", "link", "add", &end, "type", "veth", "peer", "name", &peer,
                ],
            );
            exec(ns, &["ip", "link", "del", &end]);
            monitor
                .logs
                .iter()
                .all(|log| fs::read_to_string(log).is_ok_and(|text| text.contains(PROBE_LINK)))
        });
        assert!(listening, "the monitors in {ns} never saw the probe link");
        monitor
    }

    /// What the monitors saw about weft's devices (the bridge, VXLAN devices and veths), but
    /// for the bridge's own learning: it learns the source MAC of every frame that arrives on a
    /// port (frames from the other host's bridge, with its MAC, arrive now and then), an entry
    /// that is not permanent (`MAC dev vxlan-6784 master weave`, and as a neighbour of the
    /// bridge family `dev vxlan-6784 lladdr MAC REACHABLE`). Every entry weft writes is.
    fn weft_events(&self) -> Vec<String> {
        let learned = |l: &str| {
            let entry = l.strip_prefix("Deleted ").unwrap_or(l);
            let first = entry.split_whitespace().next().unwrap_or_default();
            let fdb_line = first.len() == 17 && first.matches(':').count() == 5;
            let neighbour_line = first == "dev" && entry.contains(" lladdr ");
            (fdb_line || neighbour_line) && !entry.to_ascii_lowercase().contains("permanent")
        };
        let ours = |l: &str| {
            !l.contains(PROBE_LINK)
                && !learned(l)
                && [BRIDGE, VXLAN_DEV, "vethwepl"]
                    .iter()
                    .any(|name| l.contains(name))
        };
        self.logs
            .iter()
            .flat_map(|log| {
                fs::read_to_string(log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| ours(l))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .map(|l| format!("{}: {l}", self.ns))
            .collect()
    }
}

/// Starts `count` pings from `ns` to `ip`, 50 ms apart, in a thread; join it for the summary.
fn ping_in_background(ns: &str, ip: &str, count: u64) -> JoinHandle<Output> {
    let (ns, ip, count) = (ns.to_owned(), ip.to_owned(), count.to_string());
    thread::spawn(move || {
        exec(
            &ns,
            &[
                "ping", "-n", "-q", "-i", "0.05", "-W", "1", "-c", &count, &ip,
            ],
        )
    })
}

/// (transmitted, received) from ping's summary line.
fn ping_counts(out: &Output) -> (u64, u64) {
    let summary = out
        .stdout
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in:\n{}{}", out.stdout, out.stderr));
    let mut numbers = summary
        .split([' ', ','])
        .filter_map(|w| w.parse::<u64>().ok());
    match (numbers.next(), numbers.next()) {
        (Some(sent), Some(received)) => (sent, received),
        _ => panic!("cannot read ping summary {summary:?}"),
    }
}

#[test]
fn a_restarted_agent_changes_nothing_and_no_packet_is_lost() {
    const PINGS: u64 = 120;
    let mut world = World::new(2);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    // IPv6's own chatter (duplicate address detection, neighbour discovery) would show in the
    // kernel monitors below; weft uses IPv4 only.
    for ns in [world.host_ns(1), world.host_ns(2), c1.clone(), c2.clone()] {
        disable_ipv6(&ns);
    }
    let ip1 = world.attach(1, &[], &c1);
    let ip2 = world.attach(2, &[], &c2);
    assert_reaches(&c1, &ip2);
    let (mac1, h2) = (mac_of(&c1), world.host_ns(2));
    assert_tables(
        &h2,
        &remote(1, &[&mac1]),
        &[(ip1, mac1.clone())].into_iter().collect(),
    );
    let before = Datapath::of(&h2);
    let monitor = Monitor::start(&h2);

    let received_before = rx_packets(&c2, "ethwe");
    let pinger = ping_in_background(&c1, &ip2, PINGS);
    // The restart must fall amid the pings: wait until they arrive.
    assert!(
        wait_until(Duration::from_secs(5), || rx_packets(&c2, "ethwe")
            > received_before),
        "the pings never reached c2"
    );
    world.kill_agent(2);
    world.start_agent(2);
    assert!(
        !pinger.is_finished(),
        "the ping ended before the restarted agent was ready: it proves nothing about the restart"
    );
    let (sent, received) = ping_counts(&pinger.join().expect("the ping thread"));
    println!(
        "c1 -> c2 across a SIGKILL and restart of host2's agent: {sent} sent, {received} received"
    );
    assert_eq!(
        (sent, received),
        (PINGS, PINGS),
        "(sent, received) across the restart"
    );

    // The ping lasted seconds after the agent was ready: it has applied the controller's tables.
    assert_eq!(
        Datapath::of(&h2),
        before,
        "host2's datapath after the restart (links as name -> (ifindex, master))"
    );
    let changes = monitor.weft_events();
    assert!(
        changes.is_empty(),
        "the kernel saw weft's devices change across the restart: {changes:#?}"
    );
}

#[test]
fn a_restarted_agent_removes_what_left_while_it_was_down() {
    let mut world = World::new(3);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    let c3 = world.container(3, "c3");
    let ip1 = world.attach(1, &[], &c1);
    let ip2 = world.attach(2, &[], &c2);
    world.attach(3, &[], &c3);
    let (mac1, mac2) = (mac_of(&c1), mac_of(&c2));
    let (h2, h3) = (world.host_ns(2), world.host_ns(3));
    let with_c1: BTreeSet<_> = remote(1, &[&mac1])
        .into_iter()
        .chain(remote(2, &[&mac2]))
        .collect();
    let neigh_with_c1: BTreeSet<_> = [(ip1.clone(), mac1.clone()), (ip2.clone(), mac2.clone())]
        .into_iter()
        .collect();
    assert_tables(&h3, &with_c1, &neigh_with_c1);

    world.kill_agent(3);
    world.ctl(1, &["detach", &format!("netns:{c1}")]);
    // host2 follows the detach: once it has, host3 would have too, had its agent been running.
    assert_tables(
        &h2,
        &remote(3, &[&mac_of(&c3)]),
        &[(ip_of(&c3), mac_of(&c3))].into_iter().collect(),
    );
    assert_eq!(
        fdb(&h3, VXLAN_DEV),
        with_c1,
        "host3's FDB changed while its agent was down"
    );
    assert_eq!(
        neighbours(&h3, VXLAN_DEV),
        neigh_with_c1,
        "host3's neighbours changed while its agent was down"
    );

    let logged = reconciles(&world, 3).len();
    world.start_agent(3);
    assert_tables(
        &h3,
        &remote(2, &[&mac2]),
        &[(ip2, mac2.clone())].into_iter().collect(),
    );
    let new = &reconciles(&world, 3)[logged..];
    assert!(
        new.len() == 1
            && new[0].contains("fdb_added=0 fdb_removed=2 neigh_added=0 neigh_removed=1"),
        "the restarted agent must remove c1's MAC, host1's flood entry and c1's neighbour in one \
         pass, and nothing else; it logged {new:#?}"
    );
}

/// Two hosts with a container attached on each, once host1's VXLAN device holds host2's.
struct Pair {
    world: World,
    c1: String,
    ip2: String,
    mac2: String,
    h1: String,
    fdb_want: BTreeSet<(String, String)>,
    neigh_want: BTreeSet<(String, String)>,
}

impl Pair {
    fn new() -> Pair {
        let mut world = World::new(2);
        let c1 = world.container(1, "c1");
        let c2 = world.container(2, "c2");
        world.attach(1, &[], &c1);
        let ip2 = world.attach(2, &[], &c2);
        let mac2 = mac_of(&c2);
        let h1 = world.host_ns(1);
        let fdb_want = remote(2, &[&mac2]);
        let neigh_want = [(ip2.clone(), mac2.clone())].into_iter().collect();
        assert_tables(&h1, &fdb_want, &neigh_want);
        Pair {
            world,
            c1,
            ip2,
            mac2,
            h1,
            fdb_want,
            neigh_want,
        }
    }
}

#[test]
fn devices_deleted_by_hand_come_back() {
    let Pair {
        world: _world,
        c1,
        ip2,
        h1,
        fdb_want,
        neigh_want,
        ..
    } = Pair::new();
    assert_reaches(&c1, &ip2);

    let old = link(&h1, VXLAN_DEV).expect("the VXLAN device").index;
    run_in(&h1, &["ip", "link", "del", VXLAN_DEV]);
    let deleted = Instant::now();
    let repaired = wait_until(REPAIR, || {
        link(&h1, VXLAN_DEV).is_some_and(|l| l.index != old && l.master.as_deref() == Some(BRIDGE))
            && fdb(&h1, VXLAN_DEV) == fdb_want
            && neighbours(&h1, VXLAN_DEV) == neigh_want
    });
    println!(
        "{VXLAN_DEV} and its tables back after {:?}",
        deleted.elapsed()
    );
    assert!(
        repaired,
        "{VXLAN_DEV} not back on {BRIDGE} with its tables within {REPAIR:?}: {:?}",
        Datapath::of(&h1)
    );
    assert_reaches(&c1, &ip2);

    let old = link(&h1, BRIDGE).expect("the bridge").index;
    run_in(&h1, &["ip", "link", "del", BRIDGE]);
    let deleted = Instant::now();
    // Deleting the bridge knocks every port off it; the agent must put them all back.
    let repaired = wait_until(REPAIR, || {
        let now = links(&h1);
        let bridge = now.iter().find(|l| l.name == BRIDGE);
        let ports: Vec<_> = now
            .iter()
            .filter(|l| l.name == VXLAN_DEV || l.name.starts_with("vethwepl"))
            .collect();
        bridge.is_some_and(|b| b.index != old)
            && ports.len() == 2
            && ports.iter().all(|p| p.master.as_deref() == Some(BRIDGE))
    });
    println!("{BRIDGE} and its ports back after {:?}", deleted.elapsed());
    assert!(
        repaired,
        "{BRIDGE} not back with {VXLAN_DEV} and c1's veth on it within {REPAIR:?}: {:?}",
        Datapath::of(&h1)
    );
    assert_reaches(&c1, &ip2);
}

/// Entries changed by hand on one of weft's VXLAN devices: the agent learns of it from the
/// kernel's notifications and puts them right within [`REPAIR`], not at its periodic pass.
#[test]
fn entries_changed_by_hand_are_put_right() {
    const STRAY_MAC: &str = "02:00:00:00:00:98";
    let Pair {
        world: _world,
        c1,
        ip2,
        mac2,
        h1,
        fdb_want,
        neigh_want,
    } = Pair::new();

    let dst2 = host_addr(2);
    let changes: [&[&str]; 5] = [
        &[
            "bridge", "fdb", "del", &mac2, "dev", VXLAN_DEV, "dst", &dst2, "self",
        ],
        &["ip", "neigh", "del", &ip2, "dev", VXLAN_DEV],
        &[
            "bridge",
            "fdb",
            "replace",
            &mac2,
            "dev",
            VXLAN_DEV,
            "dst",
            "192.0.2.99",
            "self",
            "permanent",
        ],
        &[
            "ip",
            "neigh",
            "replace",
            &ip2,
            "lladdr",
            STRAY_MAC,
            "dev",
            VXLAN_DEV,
            "nud",
            "permanent",
        ],
        &[
            "bridge",
            "fdb",
            "append",
            STRAY_MAC,
            "dev",
            VXLAN_DEV,
            "dst",
            "192.0.2.98",
            "self",
            "permanent",
        ],
    ];
    for change in changes {
        run_in(&h1, change);
        let changed = Instant::now();
        let repaired = wait_until(REPAIR, || {
            fdb(&h1, VXLAN_DEV) == fdb_want && neighbours(&h1, VXLAN_DEV) == neigh_want
        });
        println!(
            "after `{}`: put right in {:?}",
            change.join(" "),
            changed.elapsed()
        );
        assert!(
            repaired,
            "`{}` not put right within {REPAIR:?}: {:?}",
            change.join(" "),
            Datapath::of(&h1)
        );
    }
    assert_reaches(&c1, &ip2);
}

#[test]
fn a_network_that_cannot_be_fixed_leaves_the_others_fixed() {
    let mut world = World::new(2);
    // Two networks besides the default, a container of each on each host: the one a pass
    // reaches first (lower VNI) is broken, the other must be fixed all the same.
    let mut nets = Vec::new();
    for (subnet, ip1, ip2) in [
        ("192.168.0.0/24", "192.168.0.2/24", "192.168.0.3"),
        ("192.168.1.0/24", "192.168.1.2/24", "192.168.1.3"),
    ] {
        let here = world.container(1, &format!("n{}", nets.len()));
        let there = world.container(2, &format!("m{}", nets.len()));
        world.attach(1, &[ip1], &here);
        world.attach(2, &[&format!("{ip2}/24")], &there);
        let bridge = bridge_of(&world, subnet);
        let vni: u32 = bridge["weave-".len()..].parse().expect("weave-VNI");
        nets.push((vni, bridge, here, ip2));
    }
    nets.sort();
    let [
        (broken_vni, broken_bridge, broken_c, broken_ip),
        (vni, bridge, c, ip),
    ] = <[_; 2]>::try_from(nets).expect("two networks");
    let vxlan = format!("vx-{vni}");
    let h1 = world.host_ns(1);

    // While the agent is stopped: the first network's bridge name goes to a veth, which the
    // agent must not take; the second loses its VXLAN device, which the agent can make again.
    world.stop_agent(1);
    run_in(&h1, &["ip", "link", "del", &broken_bridge]);
    // (A veth: this kernel has no dummy links.)
    run_in(
        &h1,
        &[
            "ip",
            "link",
            "add",
            &broken_bridge,
            "type",
            "veth",
            "peer",
            "name",
            "notweft0",
        ],
    );
    run_in(&h1, &["ip", "link", "del", &vxlan]);
    world.start_agent(1);

    let why =
        format!("network with VNI {broken_vni}: link {broken_bridge} exists and is not a bridge");
    let logged = wait_until(CONVERGE, || {
        fs::read_to_string(world.agent_log(1)).is_ok_and(|log| log.contains(&why))
    });
    assert!(logged, "host1's agent log does not say {why:?}");
    let back = wait_until(CONVERGE, || {
        link(&h1, &vxlan).is_some_and(|l| l.master.as_ref() == Some(&bridge))
    });
    assert!(back, "{vxlan} not back on {bridge} within {CONVERGE:?}");
    assert_reaches(&c, ip);
    assert!(
        link(&h1, &broken_bridge).is_some_and(|l| l.master.is_none()),
        "the veth {broken_bridge} is left as it is"
    );
    assert!(
        !ping(&broken_c, broken_ip),
        "{broken_c} reaches {broken_ip} without a bridge"
    );

    // Once the name is free again, the retried reconcile makes that network too.
    run_in(&h1, &["ip", "link", "del", &broken_bridge]);
    let fixed = wait_until(CONVERGE, || {
        link(&h1, &broken_bridge).is_some() && ping(&broken_c, broken_ip)
    });
    assert!(
        fixed,
        "{broken_bridge} not back with {broken_c} reaching {broken_ip} within {CONVERGE:?}"
    );
    assert_reaches(&c, ip);
}

/// Lets `container` answer pings sent to a broadcast or multicast address, as Linux does not by
/// default. The shell writes the container's own /proc/sys, as `disable_ipv6` does.
fn answer_broadcast_pings(container: &str) {
    run_in(
        container,
        &[
            "sh",
            "-c",
            "echo 0 > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts",
        ],
    );
}

/// Every (responder, icmp_seq) of ping's reply lines, duplicates kept.
fn replies(out: &Output) -> Vec<(String, u64)> {
    out.stdout
        .lines()
        .filter_map(|l| {
            let from = l.split(" from ").nth(1)?.split(':').next()?;
            let seq = l
                .split("icmp_seq=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((from.to_owned(), seq))
        })
        .collect()
}

/// Pings `target` from `from` three times and checks each of `responders` answered, and none
/// answered any request twice: one copy of each frame per host, whatever the number of hosts.
fn assert_each_answers_once(from: &str, target: &str, extra: &[&str], responders: &[&str]) {
    let mut argv = vec!["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1"];
    argv.extend_from_slice(extra);
    argv.push(target);
    let out = exec(from, &argv);
    let got = replies(&out);
    println!("ping {target} from {from}: replies {got:?}");
    for ip in responders {
        let seqs: Vec<u64> = got.iter().filter(|(f, _)| f == ip).map(|r| r.1).collect();
        let unique: BTreeSet<u64> = seqs.iter().copied().collect();
        // ping stops once three requests have an answer: later replies to the last are lost.
        assert!(
            unique.is_superset(&[1, 2].into()) && unique.len() == seqs.len(),
            "{ip} must answer requests 1 and 2 to {target}, each once; it answered {seqs:?}\n{}{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn broadcast_and_multicast_reach_every_host_once() {
    let mut world = World::new(3);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    let c3 = world.container(3, "c3");
    world.attach(1, &[], &c1);
    let ip2 = world.attach(2, &[], &c2);
    let ip3 = world.attach(3, &[], &c3);
    for c in [&c2, &c3] {
        answer_broadcast_pings(c);
    }
    // Unicast both ways first: the answers to broadcasts are unicast, so they need it.
    assert_reaches(&c1, &ip2);
    assert_reaches(&c1, &ip3);
    assert_each_answers_once(&c1, DEFAULT_BROADCAST, &["-b"], &[&ip2, &ip3]);
    // Multicast leaves the container only through weft's 224.0.0.0/4 route on ethwe.
    assert_each_answers_once(&c1, "224.0.0.1", &[], &[&ip2, &ip3]);
}

#[test]
fn arp_is_answered_on_the_asking_host() {
    let mut world = World::new(3);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    let c3 = world.container(3, "c3");
    world.attach(1, &[], &c1);
    let ip2 = world.attach(2, &[], &c2);
    let ip3 = world.attach(3, &[], &c3);
    let h1 = world.host_ns(1);
    let h3 = world.host_ns(3);
    assert_tables(
        &h1,
        &remote(2, &[&mac_of(&c2)])
            .into_iter()
            .chain(remote(3, &[&mac_of(&c3)]))
            .collect(),
        &[(ip2.clone(), mac_of(&c2)), (ip3, mac_of(&c3))]
            .into_iter()
            .collect(),
    );
    assert_reaches(&c1, &ip2);

    // Forgotten neighbours make c1 (and c2, answering) ask ARP again; deleted rather than left
    // stale, they send no probes of their own.
    for c in [&c1, &c2, &c3] {
        run_in(c, &["ip", "neigh", "flush", "dev", "ethwe"]);
    }
    count_arp_in(&c3, "ethwe");
    count_arp_in(&h3, VXLAN_DEV);
    let arp_at_host3 = || (arp_in(&c3, "ethwe"), arp_in(&h3, VXLAN_DEV));
    assert!(
        ping(&c1, &ip2),
        "c1 cannot reach c2 after forgetting its MAC"
    );
    assert_eq!(
        arp_at_host3(),
        (0, 0),
        "ARP frames reached c3's ethwe and host3's {VXLAN_DEV}: an ARP request between c1 and \
         c2 left its host"
    );
    // The counters count: c3 asking for c2 gets one answer, made by host3's vxlan device (it
    // enters the bridge through the device, as a remote frame would).
    assert!(ping(&c3, &ip2), "c3 cannot reach c2");
    assert_eq!(
        arp_at_host3(),
        (1, 1),
        "ARP at c3 and at host3's {VXLAN_DEV}"
    );
}

/// A world's two containers, attached and talking, with every weft link and `ethwe` at `mtu`;
/// the largest ping that fits crosses, one byte more is refused.
fn assert_mtu(world: &mut World, mtu: u64) {
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    world.attach(1, &[], &c1);
    let ip2 = world.attach(2, &[], &c2);
    assert_reaches(&c1, &ip2);
    for host in 1..=2 {
        let ns = world.host_ns(host);
        let ours: BTreeMap<String, u64> = links(&ns)
            .into_iter()
            .filter(|l| is_weft_link(&l.name))
            .map(|l| (l.name, l.mtu))
            .collect();
        assert_eq!(
            ours.len(),
            4,
            "bridge, VXLAN device, probe device, veth on host{host}"
        );
        assert!(
            ours.values().all(|m| *m == mtu),
            "MTUs on host{host}: {ours:?}"
        );
    }
    for c in [&c1, &c2] {
        let eth = link(c, "ethwe").expect("ethwe");
        assert_eq!(eth.mtu, mtu, "MTU of ethwe in {c}");
    }
    let ping_df = |size: u64| {
        let size = size.to_string();
        exec(
            &c1,
            &[
                "ping", "-n", "-M", "do", "-s", &size, "-c", "1", "-W", "1", &ip2,
            ],
        )
    };
    let fits = ping_df(mtu - ICMP_OVERHEAD);
    assert!(
        fits.success(),
        "a {mtu}-byte packet does not cross:\n{}{}",
        fits.stdout,
        fits.stderr
    );
    let too_big = ping_df(mtu - ICMP_OVERHEAD + 1);
    assert!(
        !too_big.success() && too_big.stderr.contains("message too long"),
        "a {}-byte packet with DF must be refused:\n{}{}",
        mtu + 1,
        too_big.stdout,
        too_big.stderr
    );
}

#[test]
fn mtu_is_the_underlay_minus_the_vxlan_overhead() {
    // The harness gives the underlay veths 1500.
    assert_mtu(&mut World::new(2), 1450);
}

#[test]
fn mtu_given_to_the_agent() {
    assert_mtu(&mut World::with_agent_args(2, &["--mtu", "1400"]), 1400);
}

/// The bridge of the network with `subnet`, by its VNI as `weftctl network ls --json` says.
fn bridge_of(world: &World, subnet: &str) -> String {
    let nets: Value = serde_json::from_str(&world.ctl(1, &["network", "ls", "--json"]))
        .expect("network ls --json prints JSON");
    let vni = nets
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["subnet"] == subnet)
        .and_then(|n| n["vni"].as_u64())
        .unwrap_or_else(|| panic!("no network {subnet} in {nets}"));
    format!("weave-{vni}")
}

/// Checks `bridge` in `ns` holds exactly `want` from the moment weftctl `command` returned and
/// for a while after: the agent's own reconcile must not undo what the command just did.
fn assert_addrs_stay(ns: &str, bridge: &str, want: &[&str], command: &str) {
    let start = Instant::now();
    while start.elapsed() < STAY {
        let addrs = link(ns, bridge).map(|l| l.addrs).unwrap_or_default();
        assert_eq!(
            addrs,
            want,
            "addresses of {bridge} {:?} after `weftctl {command}` returned",
            start.elapsed()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn expose_and_hide_put_the_host_on_a_network_and_take_it_off() {
    let mut world = World::new(2);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    world.attach(1, &["192.168.0.2/24"], &c1);
    world.attach(2, &["192.168.0.3/24"], &c2);
    assert_reaches(&c1, "192.168.0.3");
    let h1 = world.host_ns(1);
    let bridge = bridge_of(&world, "192.168.0.0/24");

    assert_eq!(world.ctl(1, &["expose", "192.168.0.1/24"]), "192.168.0.1\n");
    assert_addrs_stay(&h1, &bridge, &["192.168.0.1/24"], "expose");
    let on_bridge = link(&h1, &bridge).expect("the network's bridge");
    assert_reaches(&h1, "192.168.0.2");
    assert_reaches(&h1, "192.168.0.3");
    let ps = world.ctl(1, &["ps"]);
    assert_eq!(
        ps.lines().next(),
        Some(format!("weft:expose {} 192.168.0.1/24", on_bridge.mac).as_str()),
        "first line of ps on host1:\n{ps}"
    );
    assert_rejected(
        &world.weftctl(2, &["expose", "192.168.0.1/24"]),
        "already in use by weft:expose on host1",
    );

    assert_eq!(world.ctl(1, &["hide"]), "192.168.0.1\n");
    assert_addrs_stay(&h1, &bridge, &[], "hide");
    assert!(
        !ping(&h1, "192.168.0.3"),
        "host1 still reaches c2 after hide"
    );
    let ps = world.ctl(1, &["ps"]);
    assert!(!ps.contains("weft:expose"), "ps after hide:\n{ps}");
}

#[test]
fn expose_without_an_address_takes_the_default_gateway() {
    let mut world = World::new(2);
    let c2 = world.container(2, "c2");
    let ip2 = world.attach(2, &[], &c2);
    assert_eq!(world.ctl(1, &["expose"]), "10.32.0.1\n");
    let h1 = world.host_ns(1);
    let addrs = link(&h1, BRIDGE).expect("the default bridge").addrs;
    assert_eq!(addrs, ["10.32.0.1/12"], "addresses of {BRIDGE} on host1");
    assert_reaches(&h1, &ip2);
}

/// Links whose names come close to weft's but are not weft's: a reset must leave them.
const LOOKALIKES: [&str; 4] = ["keepme0", "keepme1", "weaver", "weave-x"];

fn add_lookalikes(ns: &str) {
    let veth = [
        "ip", "link", "add", "keepme0", "type", "veth", "peer", "name", "keepme1",
    ];
    run_in(ns, &veth);
    for bridge in ["weaver", "weave-x"] {
        run_in(ns, &["ip", "link", "add", bridge, "type", "bridge"]);
    }
}

/// Checks host `ns` holds no link of weft's, still holds the lookalikes, and `container` lost
/// its interface.
fn assert_reset(ns: &str, container: &str) {
    assert_eq!(weft_links(ns), Vec::<String>::new(), "weft's links in {ns}");
    let names: BTreeSet<String> = links(ns).into_iter().map(|l| l.name).collect();
    for name in LOOKALIKES {
        assert!(names.contains(name), "{name} is gone from {ns}: {names:?}");
    }
    assert_eq!(link(container, "ethwe"), None, "ethwe left in {container}");
}

/// `weftctl status ipam`'s PEER table: (peer, network) → USED.
fn used_by_peer(world: &World, host: usize) -> BTreeMap<(String, String), u64> {
    let text = world.ctl(host, &["status", "ipam"]);
    let mut lines = text.lines();
    assert!(
        lines.any(|l| l.starts_with("PEER ")),
        "no PEER table in:\n{text}"
    );
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [peer, network, used] => (
                (peer.to_owned(), network.to_owned()),
                used.parse().expect("USED is a number"),
            ),
            _ => panic!("peer row {l:?} in:\n{text}"),
        })
        .collect()
}

#[test]
fn reset_removes_what_weft_made_and_nothing_else() {
    let mut world = World::new(2);
    let (h1, h2) = (world.host_ns(1), world.host_ns(2));
    add_lookalikes(&h1);
    add_lookalikes(&h2);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    world.attach(1, &[], &c1);
    world.attach(2, &[], &c2);
    assert_eq!(world.ctl(1, &["expose"]), "10.32.0.1\n");
    let host1_macs = [mac_of(&c1), link(&h1, BRIDGE).expect("bridge").mac];
    let macs: Vec<&str> = host1_macs.iter().map(String::as_str).collect();
    assert_tables(&h2, &remote(1, &macs), &neighbours_of_host1(&c1, &h1));

    // weave, vxlan-6784, weft-probe and c1's veth; c1's address and the exposed one.
    assert_eq!(
        world.ctl(1, &["reset"]),
        "removed 4 links, released 2 addresses; the agent has stopped\n"
    );
    assert!(
        wait_until(CONVERGE, || world.agent_exited(1).is_some()),
        "host1's agent still runs after reset"
    );
    let status = world.agent_exited(1).expect("exited");
    assert!(status.success(), "host1's agent after reset: {status}");
    assert_reset(&h1, &c1);
    let used = used_by_peer(&world, 2);
    assert!(
        used.iter().all(|((peer, _), n)| peer != "host1" || *n == 0),
        "addresses still held by host1 after its reset: {used:?}"
    );
    // host2 learns of the detach like of any other: nothing of host1 is left in its tables.
    assert_tables(&h2, &BTreeSet::new(), &BTreeSet::new());

    world.stop_agent(2);
    let agent = locate_bin("weft-agent");
    let agent = agent.to_str().expect("UTF-8 path");
    let out = exec(&h2, &[agent, "--reset"]);
    assert!(out.success(), "weft-agent --reset: {}", out.stderr.trim());
    assert_reset(&h2, &c2);
}

/// What another host must hold as permanent neighbours for host1: c1 and the exposed address.
fn neighbours_of_host1(c1: &str, h1: &str) -> BTreeSet<(String, String)> {
    let bridge = link(h1, BRIDGE).expect("bridge");
    [
        (ip_of(c1), mac_of(c1)),
        ("10.32.0.1".to_owned(), bridge.mac),
    ]
    .into_iter()
    .collect()
}

#[test]
fn a_stopped_agent_leaves_the_datapath_in_place() {
    let mut world = World::new(2);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    let ip1 = world.attach(1, &[], &c1);
    let ip2 = world.attach(2, &[], &c2);
    assert_reaches(&c1, &ip2);
    let h1 = world.host_ns(1);
    let mac2 = mac_of(&c2);
    assert_tables(
        &h1,
        &remote(2, &[&mac2]),
        &[(ip2.clone(), mac2)].into_iter().collect(),
    );
    let before = Datapath::of(&h1);

    world.stop_agent(1);
    let log = fs::read_to_string(world.agent_log(1)).expect("reading host1's agent log");
    assert!(
        log.contains("the datapath stays in place"),
        "host1's agent did not stop cleanly on SIGTERM:\n{log}"
    );
    for (from, to) in [(&c1, &ip2), (&c2, &ip1)] {
        let run = ping_n(from, to, 15);
        assert!(
            run.success() && run.stdout.contains(" 0% packet loss"),
            "{from} -> {to} with host1's agent stopped:\n{}",
            run.stdout
        );
    }
    assert_eq!(
        Datapath::of(&h1),
        before,
        "host1's datapath after its agent stopped"
    );
}
