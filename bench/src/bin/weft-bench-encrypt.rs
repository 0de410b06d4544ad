//! `make bench-encrypt`: TCP throughput, round trips and CPU cost between containers on two
//! hosts on an encrypted weft network, next to a plaintext weft network and to a VXLAN device
//! built by hand over the same userspace WireGuard (weft's own `weftwg` on both hosts, with the
//! peers weft gave it), all in the same worlds and rounds.
//!
//! The hand-built system is what weft's encrypted network would be without weft: the question is
//! whether weft adds anything to what WireGuard costs. The plaintext network says what the
//! userspace encryption costs on this kernel (no goal: it has no WireGuard module).

use std::collections::BTreeMap;
use std::process::ExitCode;

use weft_bench::harness::{self, check_interrupted, median};
use weft_bench::traffic::{
    self, AFFINITY, OMIT, SECONDS, System, busy_cpu_secs, check_path, iperf, iperf_server,
};
use weft_bench::{HB_IF, HandBuilt};
use weft_integration::{VXLAN_DEV, World, assert_reaches, exit_code_of, link};

const DEFAULT_WORLDS: usize = 3;
const DEFAULT_ROUNDS: usize = 3;
const PINGS: usize = 20;
const PING_BLOCKS: usize = 10;
const PING_INTERVAL: &str = "0.002";
/// The goal: the encrypted network's throughput at least this share of the hand-built
/// VXLAN's over the same WireGuard.
const THROUGHPUT_GOAL: f64 = 0.9;

const ENCRYPTED: &str = "encrypted";
const PLAINTEXT: &str = "plaintext";
const HAND_BUILT: HandBuilt = HandBuilt {
    label: "hand-built/wg",
    prefix: "hw",
    vni: "4242",
    port: "4789",
    subnet: "10.99.0",
    weft_options: false,
    over_wireguard: true,
};

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-encrypt", run)
}

/// One TCP run's figures: throughput in Gbit/s, and the machine's busy CPU seconds per GB.
#[derive(Clone, Copy)]
struct Run {
    gbit_per_s: f64,
    cpu_per_gb: f64,
}

fn run() {
    let (worlds, rounds) = options();
    traffic::require_two_cpus();
    println!(
        "weft-bench-encrypt: containers on two hosts, weft's encrypted network vs its plaintext one vs hand-built VXLAN over the same WireGuard"
    );
    harness::print_machine();
    println!(
        "iperf3: {}; wireguard-go: {}",
        harness::tool_version(&["iperf3", "--version"]),
        harness::tool_version(&["wireguard-go", "--version"])
    );
    println!(
        "{worlds} worlds of two hosts, {rounds} rounds in each; a round runs iperf3 -t {SECONDS} -O {OMIT} -A {AFFINITY} (one TCP stream) on each system in an order rotated each round, then {PING_BLOCKS} blocks of ping -c {PINGS} -i {PING_INTERVAL} per system, alternating; CPU: the machine's busy time across each iperf3 run, per GB received"
    );
    let mut tcp: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    let mut rtt: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for w in 0..worlds {
        let scratch = tempfile::tempdir().expect("creating a temp dir");
        let mut world = World::new(2);
        let systems = build(&mut world);
        let _servers: Vec<_> = systems
            .iter()
            .map(|s| {
                let log = format!("iperf3-{}.log", s.label.replace('/', "-"));
                iperf_server(s, &scratch.path().join(log))
            })
            .collect();
        for round in w * rounds + 1..=(w + 1) * rounds {
            for i in 0..systems.len() {
                check_interrupted();
                let system = &systems[(round + i) % systems.len()];
                let before = busy_cpu_secs();
                let received = iperf(system, &["-P", "1"]);
                let cpu = busy_cpu_secs() - before;
                let run = Run {
                    gbit_per_s: received.gbit_per_s,
                    cpu_per_gb: cpu / (received.bytes / 1e9),
                };
                println!(
                    "world {}/{worlds}  round {round}/{}  {:<14} {:7.3} Gbit/s  {:6.2} CPU-s/GB",
                    w + 1,
                    worlds * rounds,
                    system.label,
                    run.gbit_per_s,
                    run.cpu_per_gb
                );
                tcp.entry(system.label).or_default().push(run);
            }
            let rtts = traffic::ping_round(&systems, round, PING_BLOCKS, PINGS, PING_INTERVAL);
            for (system, rtts) in systems.iter().zip(rtts) {
                rtt.entry(system.label).or_default().push(median(rtts));
            }
        }
    }
    report(&tcp, &rtt, rounds);
    harness::print_load("at end");
}

/// Builds the three systems in `world` and checks each crosses its VXLAN device.
fn build(world: &mut World) -> Vec<System> {
    world.ctl(
        1,
        &[
            "network",
            "create",
            "secret",
            "--subnet",
            "10.7.0.0/24",
            "--encrypt",
        ],
    );
    let attach = |world: &mut World, name: &str, addr: &str, host: usize| {
        let ns = world.container(host, name);
        world.ctl(host, &["attach", addr, &format!("netns:{ns}")]);
        ns
    };
    let s1 = attach(world, "s1", "10.7.0.11/24", 1);
    let s2 = attach(world, "s2", "10.7.0.12/24", 2);
    let p1 = attach(world, "p1", "10.32.0.11/12", 1);
    let p2 = attach(world, "p2", "10.32.0.12/12", 2);
    assert_reaches(&s1, "10.7.0.12");
    assert_reaches(&p1, "10.32.0.12");
    // The hand-built system rides on the WireGuard weft made, with the encrypted network's MTU.
    let mtu = link(&s1, "ethwe").expect("ethwe after attach").mtu;
    let [h1, h2] = HAND_BUILT.build(world, mtu);
    assert_reaches(&h1, &HAND_BUILT.addr(2));
    assert_eq!(link(&h1, HB_IF).map(|l| l.mtu), Some(mtu));
    let systems = vec![
        System {
            label: ENCRYPTED,
            client: s1,
            server: s2,
            server_ip: "10.7.0.12".into(),
            vxlan: Some("vx-2".into()),
        },
        System {
            label: PLAINTEXT,
            client: p1,
            server: p2,
            server_ip: "10.32.0.12".into(),
            vxlan: Some(VXLAN_DEV.into()),
        },
        System {
            label: HAND_BUILT.label,
            client: h1,
            server: h2,
            server_ip: HAND_BUILT.addr(2),
            vxlan: Some(HAND_BUILT.vxlan()),
        },
    ];
    for system in &systems {
        check_path(world, system);
    }
    println!("world ready: MTU {mtu} on the encrypted network and hand-built {HB_IF}");
    systems
}

/// `--worlds W` and `--rounds R`.
fn options() -> (usize, usize) {
    const USAGE: &str = "usage: weft-bench-encrypt [--worlds W] [--rounds R]";
    let (mut worlds, mut rounds) = (DEFAULT_WORLDS, DEFAULT_ROUNDS);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let n: usize = args
            .next()
            .and_then(|n| n.parse().ok())
            .filter(|n| *n >= 1)
            .unwrap_or_else(|| panic!("{USAGE}"));
        match arg.as_str() {
            "--worlds" => worlds = n,
            "--rounds" => rounds = n,
            _ => panic!("{USAGE}"),
        }
    }
    (worlds, rounds)
}

fn report(tcp: &BTreeMap<&str, Vec<Run>>, rtt: &BTreeMap<&str, Vec<f64>>, rounds: usize) {
    let labels = [ENCRYPTED, PLAINTEXT, HAND_BUILT.label];
    let gbit = |label: &str| -> Vec<f64> { tcp[label].iter().map(|r| r.gbit_per_s).collect() };
    let cpu = |label: &str| -> Vec<f64> { tcp[label].iter().map(|r| r.cpu_per_gb).collect() };
    println!("median of {} rounds:", tcp[ENCRYPTED].len());
    print!("  {:<26}", "");
    for label in labels {
        print!(" {label:>14}");
    }
    println!();
    let row = |what: &str, values: &dyn Fn(&str) -> f64, digits: usize| {
        print!("  {what:<26}");
        for label in labels {
            print!(" {:>14.digits$}", values(label));
        }
        println!();
    };
    row("TCP, 1 stream (Gbit/s)", &|l| median(gbit(l)), 3);
    row("ping RTT (µs)", &|l| median(rtt[l].clone()), 1);
    row("CPU (busy s per GB)", &|l| median(cpu(l)), 2);
    // Runs of the same round were taken seconds apart: the ratios are judged round by round.
    let ratio = |a: &str, b: &str| -> Vec<f64> {
        gbit(a).iter().zip(gbit(b)).map(|(x, y)| x / y).collect()
    };
    for (a, b) in [(ENCRYPTED, HAND_BUILT.label), (ENCRYPTED, PLAINTEXT)] {
        let ratios = ratio(a, b);
        let interval = harness::median_interval(ratios.clone());
        let per_world: Vec<String> = ratios
            .chunks(rounds)
            .map(|w| format!("{:.3}", median(w.to_vec())))
            .collect();
        println!(
            "{a}/{b} throughput round by round: median {:.3} [{:.3}, {:.3}] ({:.0} %); median in each world {}",
            median(ratios),
            interval.low,
            interval.high,
            interval.confidence * 100.0,
            per_world.join(", ")
        );
    }
    let met = median(ratio(ENCRYPTED, HAND_BUILT.label)) >= THROUGHPUT_GOAL;
    println!(
        "goal: encrypted/hand-built over the same WireGuard >= {THROUGHPUT_GOAL} on throughput: {}",
        if met { "met" } else { "missed" }
    );
    println!(
        "encrypted/plaintext: {:.3} of the throughput, {:+.1} µs RTT, {:.1}x the CPU per GB (userspace WireGuard; no goal)",
        median(ratio(ENCRYPTED, PLAINTEXT)),
        median(rtt[ENCRYPTED].clone()) - median(rtt[PLAINTEXT].clone()),
        median(cpu(ENCRYPTED)) / median(cpu(PLAINTEXT))
    );
}
