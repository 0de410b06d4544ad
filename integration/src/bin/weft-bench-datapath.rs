//! `make bench`: throughput and latency between containers on two hosts through weft, next to
//! the underlay between the two hosts and to the same kind of datapath built by hand (bridge,
//! VXLAN device without learning, static FDB), measured alternately in one run.
//!
//! One world of two hosts carries all three systems, so they share the underlay: weft's
//! containers are attached by the agents; the hosts' namespaces are the underlay's ends; the
//! hand-built overlay has its own bridge, VXLAN device (another VNI and UDP port) and container
//! namespaces in the same two hosts, with the MTU weft gave its containers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_integration::bench::{self, check_interrupted, median};
use weft_integration::{
    Background, VXLAN_DEV, World, assert_reaches, exec, exec_for, exit_code_of, host_addr, ip,
    link, listening, ping_n, rx_packets,
};

/// Rounds when no `--rounds N` is given. One system's throughput moves by up to a third from
/// round to round on a shared 2-core VM, so a ratio near the goal needs more rounds to settle.
const DEFAULT_ROUNDS: usize = 5;
/// Seconds each iperf3 run measures, after [`OMIT`] seconds it leaves out (TCP slow start).
const SECONDS: &str = "5";
const OMIT: &str = "1";
/// UDP's offered rate: well below what one iperf3 sender reaches on this machine through any of
/// the three (about 0.4 Gbit/s on a busy machine), so loss shows what the path drops rather than
/// what the sender cannot send.
const UDP_RATE: &str = "200M";
/// UDP payload: fits the overlay MTU (1450) with its IP and UDP headers, so nothing fragments.
const UDP_LEN: &str = "1400";
/// Ping RTT: per round, [`PING_BLOCKS`] blocks of [`PINGS`] pings for each system, the systems
/// alternating block by block, so that a change in the machine's load during the round falls on
/// all three alike (single 1 s runs one after the other differed by tens of µs).
const PINGS: usize = 20;
const PING_BLOCKS: usize = 20;
const PING_INTERVAL: &str = "0.002";
const IPERF_PORT: u16 = 5201;
/// The goals: weft's throughput at least this share of the hand-built datapath's, and its
/// round-trip time at most this many µs above it.
const THROUGHPUT_GOAL: f64 = 0.97;
const RTT_GOAL_US: f64 = 10.0;
/// Hand-built overlay: its own names, VNI and UDP port, so it never meets weft's devices.
const HB_BRIDGE: &str = "hbbr0";
const HB_VXLAN: &str = "hbvx0";
const HB_VETH: &str = "hbv0";
const HB_IF: &str = "eth0";
const HB_VNI: &str = "4242";
const HB_PORT: &str = "4789";
const FLOOD_MAC: &str = "00:00:00:00:00:00";
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    bench::stop_on_interrupt();
    exit_code_of("weft-bench-datapath", run)
}

/// One of the compared systems: two namespaces on two hosts, and the address the server side
/// answers on.
struct System {
    label: &'static str,
    client: String,
    server: String,
    server_ip: String,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Test {
    Tcp1,
    Tcp4,
    Udp,
    Ping,
}

impl Test {
    /// The tests run one system after the other; ping alternates finer, in [`ping_round`].
    const THROUGHPUT: [Test; 3] = [Test::Tcp1, Test::Tcp4, Test::Udp];

    fn label(self) -> String {
        match self {
            Test::Tcp1 => "TCP, 1 stream".into(),
            Test::Tcp4 => "TCP, 4 streams".into(),
            Test::Udp => format!("UDP at {UDP_RATE}bit/s"),
            Test::Ping => "ping RTT".into(),
        }
    }
}

/// One run's figure: throughput in Gbit/s (with UDP's loss in %) or the median RTT in µs.
#[derive(Clone, Copy)]
struct Sample {
    value: f64,
    loss: Option<f64>,
}

fn run() {
    println!(
        "weft-bench-datapath: container to container on two hosts, weft vs hand-built bridge + VXLAN (nolearning) + static FDB vs the underlay"
    );
    bench::print_machine();
    println!("iperf3: {}", bench::tool_version(&["iperf3", "--version"]));
    let scratch = tempfile::tempdir().expect("creating a temp dir");
    let mut world = World::new(2);
    let weft = weft_path(&mut world);
    let mtu = link(&weft.client, "ethwe").expect("ethwe after attach").mtu;
    let hand = hand_built_path(&mut world, mtu);
    let underlay = System {
        label: "underlay",
        client: world.host_ns(1),
        server: world.host_ns(2),
        server_ip: host_addr(2),
    };
    check_path(&world, &weft, Some(VXLAN_DEV));
    check_path(&world, &hand, Some(HB_VXLAN));
    check_path(&world, &underlay, None);
    println!(
        "MTU: weft's ethwe {mtu}, hand-built {HB_IF} {}, underlay 1500",
        link(&hand.client, HB_IF).expect("hand-built interface").mtu
    );
    println!(
        "each round runs every test on the three systems, in an order rotated each round; iperf3 -t {SECONDS} -O {OMIT}; UDP -b {UDP_RATE} -l {UDP_LEN}; ping: {PING_BLOCKS} blocks of ping -c {PINGS} -i {PING_INTERVAL} per system, alternating block by block (median RTT of the round's {} pings)",
        PINGS * PING_BLOCKS
    );
    let paths = [weft, hand, underlay];
    let _servers: Vec<Background> = paths
        .iter()
        .map(|p| iperf_server(p, &scratch.path().join(format!("iperf3-{}.log", p.label))))
        .collect();

    let mut samples: BTreeMap<(Test, &str), Vec<Sample>> = BTreeMap::new();
    let rounds = rounds();
    let mut record = |round: usize, test: Test, path: &System, sample: Sample| {
        println!(
            "round {round}/{rounds}  {:<28} {:<10} {}",
            test.label(),
            path.label,
            shown(test, sample)
        );
        samples.entry((test, path.label)).or_default().push(sample);
    };
    for round in 1..=rounds {
        for test in Test::THROUGHPUT {
            for i in 0..paths.len() {
                check_interrupted();
                let path = &paths[(round + i) % paths.len()];
                record(round, test, path, measure(test, path));
            }
        }
        for (path, sample) in paths.iter().zip(ping_round(&paths, round)) {
            record(round, Test::Ping, path, sample);
        }
    }
    report(&samples, rounds);
    bench::print_load("at end");
}

/// `--rounds N` (at least 5, the least a median is taken over), else [`DEFAULT_ROUNDS`].
fn rounds() -> usize {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => DEFAULT_ROUNDS,
        [flag, n] if flag == "--rounds" => match n.parse() {
            Ok(n) if n >= DEFAULT_ROUNDS => n,
            _ => panic!("--rounds takes a whole number of at least {DEFAULT_ROUNDS}, not {n:?}"),
        },
        _ => panic!("usage: weft-bench-datapath [--rounds N]"),
    }
}

/// Attaches a container on each host through weft (net:default) and waits until they reach
/// each other.
fn weft_path(world: &mut World) -> System {
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    world.ctl(1, &["attach", &format!("netns:{c1}")]);
    let ip2 = world.ctl(2, &["attach", &format!("netns:{c2}")]);
    let ip2 = ip2.trim().to_owned();
    assert_reaches(&c1, &ip2);
    System {
        label: "weft",
        client: c1,
        server: c2,
        server_ip: ip2,
    }
}

/// Builds, in both hosts, what weft builds for a network, by hand: a bridge, a VXLAN device
/// without learning on the host's underlay address, a container namespace plugged in with a
/// veth, all with `mtu`, and static FDB entries for the other container and for flooding (ARP).
fn hand_built_path(world: &mut World, mtu: u64) -> System {
    let mtu = mtu.to_string();
    let containers: Vec<String> = (1..=2)
        .map(|h| world.container(h, &format!("hb{h}")))
        .collect();
    let ip_of = |h: usize| format!("10.99.0.{h}");
    for h in 1..=2 {
        let host = world.host_ns(h);
        let local = host_addr(h);
        let c = &containers[h - 1];
        ip(
            &host,
            &["link", "add", HB_BRIDGE, "mtu", &mtu, "type", "bridge"],
        );
        ip(
            &host,
            &[
                "link",
                "add",
                HB_VXLAN,
                "mtu",
                &mtu,
                "type",
                "vxlan",
                "id",
                HB_VNI,
                "dstport",
                HB_PORT,
                "local",
                &local,
                "nolearning",
            ],
        );
        ip(
            &host,
            &[
                "link", "add", HB_VETH, "mtu", &mtu, "type", "veth", "peer", "name", HB_IF, "mtu",
                &mtu, "netns", c,
            ],
        );
        for dev in [HB_VXLAN, HB_VETH] {
            ip(&host, &["link", "set", dev, "master", HB_BRIDGE, "up"]);
        }
        ip(&host, &["link", "set", HB_BRIDGE, "up"]);
        ip(
            c,
            &["addr", "add", &format!("{}/24", ip_of(h)), "dev", HB_IF],
        );
        ip(c, &["link", "set", HB_IF, "up"]);
    }
    for h in 1..=2 {
        let other = 3 - h;
        let dst = host_addr(other);
        let mac = link(&containers[other - 1], HB_IF)
            .expect("hand-built interface")
            .mac;
        let host = world.host_ns(h);
        for (verb, mac) in [("add", mac.as_str()), ("append", FLOOD_MAC)] {
            bridge(
                &host,
                &[
                    "fdb",
                    verb,
                    mac,
                    "dev",
                    HB_VXLAN,
                    "dst",
                    &dst,
                    "self",
                    "permanent",
                ],
            );
        }
    }
    assert_reaches(&containers[0], &ip_of(2));
    let mut containers = containers.into_iter();
    System {
        label: "hand-built",
        client: containers.next().expect("two containers"),
        server: containers.next().expect("two containers"),
        server_ip: ip_of(2),
    }
}

/// Checks that pings get through and, for an overlay, that they cross `vxlan` on the server's
/// host, so no figure comes from a path other than the one it is labelled with.
fn check_path(world: &World, path: &System, vxlan: Option<&str>) {
    let host2 = world.host_ns(2);
    let before = vxlan.map(|dev| rx_packets(&host2, dev));
    let out = ping_n(&path.client, &path.server_ip, 20);
    assert!(
        out.success(),
        "{}: {} cannot reach {}:\n{}",
        path.label,
        path.client,
        path.server_ip,
        out.stdout
    );
    if let (Some(dev), Some(before)) = (vxlan, before) {
        let crossed = rx_packets(&host2, dev) - before;
        assert!(
            crossed >= 20,
            "{}: only {crossed} packets crossed {dev} on host2 for 20 pings",
            path.label
        );
    }
}

fn iperf_server(path: &System, log: &Path) -> Background {
    let port = IPERF_PORT.to_string();
    let mut server = Background::start(
        &path.server,
        "iperf3",
        &["-s", "-B", &path.server_ip, "-p", &port],
        log.to_path_buf(),
    );
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while !listening(&path.server, IPERF_PORT) {
        assert!(
            server.exited().is_none() && Instant::now() < deadline,
            "{}: iperf3 server not listening in {}:\n{}",
            path.label,
            path.server,
            server.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn measure(test: Test, path: &System) -> Sample {
    match test {
        Test::Tcp1 => iperf(path, &["-P", "1"]),
        Test::Tcp4 => iperf(path, &["-P", "4"]),
        Test::Udp => iperf(path, &["-u", "-b", UDP_RATE, "-l", UDP_LEN]),
        Test::Ping => unreachable!("ping runs in ping_round"),
    }
}

/// One iperf3 run from the client to the server: the throughput the receiver saw, in Gbit/s,
/// and for UDP the share of datagrams lost.
fn iperf(path: &System, extra: &[&str]) -> Sample {
    let port = IPERF_PORT.to_string();
    let mut argv = vec![
        "iperf3",
        "-c",
        &path.server_ip,
        "-p",
        &port,
        "-t",
        SECONDS,
        "-O",
        OMIT,
        "-J",
    ];
    argv.extend_from_slice(extra);
    let out = exec_for(&path.client, &argv, RUN_TIMEOUT);
    let json: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: iperf3 printed no JSON ({e}): {}{}",
            path.label, out.stdout, out.stderr
        )
    });
    assert!(
        out.success() && json["error"].is_null(),
        "{}: iperf3 {} failed: {}",
        path.label,
        extra.join(" "),
        json["error"]
    );
    let received = &json["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: no received throughput in iperf3's JSON", path.label));
    Sample {
        value: bps / 1e9,
        loss: received["lost_percent"].as_f64(),
    }
}

/// Each system's median round-trip time in one round, in µs, over [`PING_BLOCKS`] blocks of
/// [`PINGS`] pings, the systems taking turns block by block in an order rotated each round.
fn ping_round(paths: &[System], round: usize) -> Vec<Sample> {
    let mut rtts: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for block in 0..PING_BLOCKS {
        check_interrupted();
        for i in 0..paths.len() {
            let k = (round + block + i) % paths.len();
            rtts[k].extend(ping_rtts(&paths[k]));
        }
    }
    let sent = (PINGS * PING_BLOCKS) as f64;
    rtts.into_iter()
        .zip(paths)
        .map(|(rtts, path)| {
            assert!(!rtts.is_empty(), "{}: no ping replies", path.label);
            Sample {
                loss: Some(100.0 * (sent - rtts.len() as f64) / sent),
                value: median(rtts),
            }
        })
        .collect()
}

/// The round-trip times, in µs, of [`PINGS`] pings from the client to the server.
fn ping_rtts(path: &System) -> Vec<f64> {
    let count = PINGS.to_string();
    let out = exec(
        &path.client,
        &[
            "ping",
            "-n",
            "-c",
            &count,
            "-i",
            PING_INTERVAL,
            "-W",
            "1",
            &path.server_ip,
        ],
    );
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(" time=")?.1.strip_suffix(" ms")?.parse().ok())
        .map(|ms: f64| ms * 1000.0)
        .collect()
}

fn shown(test: Test, sample: Sample) -> String {
    match (test, sample.loss) {
        (Test::Ping, _) => format!("{:7.1} µs", sample.value),
        (Test::Udp, Some(loss)) => format!("{:7.3} Gbit/s received, {loss:.2}% lost", sample.value),
        _ => format!("{:7.3} Gbit/s", sample.value),
    }
}

fn report(samples: &BTreeMap<(Test, &str), Vec<Sample>>, rounds: usize) {
    let med =
        |test: Test, label: &str| median(samples[&(test, label)].iter().map(|s| s.value).collect());
    let loss = |label: &str| {
        median(
            samples[&(Test::Udp, label)]
                .iter()
                .filter_map(|s| s.loss)
                .collect(),
        )
    };
    println!("median of {rounds} rounds:");
    println!(
        "  {:<28} {:>10} {:>11} {:>10} {:>16} {:>14}",
        "", "weft", "hand-built", "underlay", "weft/hand-built", "weft/underlay"
    );
    let mut met = true;
    for test in [Test::Tcp1, Test::Tcp4, Test::Udp] {
        let (w, h, u) = (
            med(test, "weft"),
            med(test, "hand-built"),
            med(test, "underlay"),
        );
        println!(
            "  {:<28} {w:>10.3} {h:>11.3} {u:>10.3} {:>16.3} {:>14.3}",
            format!("{} (Gbit/s)", test.label()),
            w / h,
            w / u
        );
        met &= w / h >= THROUGHPUT_GOAL;
    }
    // The same round's samples were taken minutes apart at most: their ratio shows how far
    // the machine's noise alone moves the figure.
    for test in [Test::Tcp1, Test::Tcp4] {
        let ratios: Vec<f64> = samples[&(test, "weft")]
            .iter()
            .zip(&samples[&(test, "hand-built")])
            .map(|(w, h)| w.value / h.value)
            .collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        println!(
            "  {:<28} weft/hand-built per round: median {:.3}, from {low:.3} to {high:.3}",
            test.label(),
            median(ratios)
        );
    }
    println!(
        "  {:<28} {:>10.2} {:>11.2} {:>10.2}",
        "UDP lost (%)",
        loss("weft"),
        loss("hand-built"),
        loss("underlay")
    );
    let (w, h, u) = (
        med(Test::Ping, "weft"),
        med(Test::Ping, "hand-built"),
        med(Test::Ping, "underlay"),
    );
    println!(
        "  {:<28} {w:>10.1} {h:>11.1} {u:>10.1} {:>+13.1} µs {:>+11.1} µs",
        "ping RTT (µs)",
        w - h,
        w - u
    );
    println!(
        "goal: weft/hand-built >= {THROUGHPUT_GOAL} on throughput: {}",
        if met { "met" } else { "missed" }
    );
    println!(
        "goal: weft's RTT within {RTT_GOAL_US} µs of hand-built: {}",
        if w - h <= RTT_GOAL_US {
            "met"
        } else {
            "missed"
        }
    );
}

/// Runs `bridge ARGS...` in `ns` and panics unless it succeeds.
fn bridge(ns: &str, args: &[&str]) {
    let argv: Vec<&str> = ["bridge"].iter().chain(args).copied().collect();
    let out = exec(ns, &argv);
    assert!(
        out.success(),
        "{} in {ns}: {}",
        argv.join(" "),
        out.stderr.trim()
    );
}
