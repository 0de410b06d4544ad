//! `make bench-docker`: how long `docker run` takes to give a container a working network, with
//! weft's driver (the first ping reply from another host) and with Docker's own `bridge` driver
//! (the first ping reply from the container's host), alternating in one run on a real dockerd
//! 20.10 per host.
//!
//! Each round starts a pinger first (`ping -c 1 -w 30 -i 0.005` at the address the container is
//! about to get with `--ip`: it exits at its first reply), then `docker run -d`; the time is from
//! starting `docker run` to the pinger's exit, so it holds Docker's own work (creating the
//! container on vfs, its namespace, the driver's calls) and the network's. `docker run`'s own
//! return is timed too. Each container is removed, untimed. The pinger's host is given the
//! container's MAC beforehand (a permanent neighbour entry: weft's MAC of an address and
//! Docker's bridge's are both made from the address): an ARP asked before the container
//! existed would hold the first reply back until the host asks again, a second later.

use std::net::Ipv4Addr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use weft_bench::harness::{self, check_interrupted, median};
use weft_integration::{DockerCli, DockerEngine, World, exit_code_of};
use weft_proto::names::mac_for_address;

const ROUNDS: usize = 20;
/// weft's network, made with the same subnet on both hosts.
const WEFT_SUBNET: &str = "10.9.0.0/24";
/// Docker's bridge network on host1.
const BRIDGE_SUBNET: &str = "10.20.0.0/24";
/// How long a pinger waits for its first reply.
const PING_DEADLINE: &str = "30";
/// The goal: weft's driver adds at most a tenth to what `docker run` takes to a working network
/// with Docker's own driver, though its first reply crosses to another host.
const GOAL_RATIO: f64 = 1.1;

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-docker", run)
}

#[derive(Clone, Copy, PartialEq)]
enum Driver {
    Weft,
    Bridge,
}

impl Driver {
    fn label(self) -> &'static str {
        match self {
            Driver::Weft => "weft driver, reply from another host",
            Driver::Bridge => "Docker's bridge, reply from its host",
        }
    }
}

/// One round's figures, in ms: to the first ping reply, and to `docker run`'s return.
struct Sample {
    driver: Driver,
    reply: f64,
    run: f64,
}

fn run() {
    println!(
        "weft-bench-docker: docker run to a working network, weft's driver vs Docker's bridge driver, {ROUNDS} rounds each, alternating"
    );
    harness::print_machine();
    println!(
        "dockerd: {}",
        harness::tool_version(&["dockerd", "--version"])
    );
    let world = World::new(2);
    let engines: Vec<DockerEngine> = (1..=2)
        .map(|host| {
            let engine = DockerEngine::on(&world, host);
            world.restart_agent_with(host, &["--docker-host", &engine.url()]);
            engine
        })
        .collect();
    for engine in &engines {
        engine.docker_ok(&[
            "network",
            "create",
            "-d",
            "weft",
            "--ipam-driver",
            "weft",
            "--subnet",
            WEFT_SUBNET,
            "blue",
        ]);
    }
    engines[0].docker_ok(&[
        "network",
        "create",
        "-d",
        "bridge",
        "--subnet",
        BRIDGE_SUBNET,
        "br",
    ]);
    // A container on each network first, so that no round is timed making a bridge.
    for (network, ip) in [("blue", "10.9.0.99"), ("br", "10.20.0.99")] {
        let name = format!("base-{network}");
        engines[0].run(
            &name,
            &["--network", network, "--ip", ip],
            &["sleep", "3600"],
        );
    }
    println!(
        "each round: a pinger (host2's namespace for weft, host1's for the bridge, which is its gateway there; the container's MAC given to it beforehand) at the address given with --ip, then `docker run -d --network NET --ip IP` on host1; timed from starting docker run to the pinger's first reply; the container removed, untimed"
    );
    let mut samples = Vec::new();
    for i in 0..ROUNDS {
        for k in 0..2 {
            check_interrupted();
            let driver = [Driver::Weft, Driver::Bridge][(i + k) % 2];
            samples.push(round(&world, &engines[0], driver, i));
        }
        if (i + 1) % 5 == 0 {
            println!("  {}/{ROUNDS} rounds done", i + 1);
        }
    }
    report(&samples);
    harness::print_load("at end");
    drop(engines);
}

fn round(world: &World, engine: &DockerEngine, driver: Driver, i: usize) -> Sample {
    let (network, ip, pinger_host) = match driver {
        Driver::Weft => ("blue", format!("10.9.0.{}", 100 + i), 2),
        Driver::Bridge => ("br", format!("10.20.0.{}", 100 + i), 1),
    };
    let pinger_ns = world.host_ns(pinger_host);
    let mac = match driver {
        Driver::Weft => mac_for_address(ip.parse().expect("an IPv4 address")).to_string(),
        Driver::Bridge => docker_bridge_mac(&ip),
    };
    let dev = route_dev(&pinger_ns, &ip);
    let neighbour = [
        "neigh",
        "replace",
        &ip,
        "lladdr",
        &mac,
        "dev",
        &dev,
        "nud",
        "permanent",
    ];
    weft_integration::ip(&pinger_ns, &neighbour);
    // Its exit is the first reply, timed where it happens (it may come before docker run
    // returns).
    let mut pinger = ping_until_reply(&pinger_ns, &ip);
    let replied = std::thread::spawn(move || (pinger.wait(), Instant::now()));
    let name = format!("r{i}-{network}");
    let started = Instant::now();
    let (run, out) = harness::timed(docker_run(engine, &name, network, &ip));
    assert!(out.success(), "docker run {name}: {}", out.stderr.trim());
    let (status, at) = replied.join().expect("the pinger's waiter");
    let status = status.expect("waiting for the pinger");
    let reply = at.duration_since(started);
    assert!(
        status.success(),
        "no reply from {ip} ({network}) within {PING_DEADLINE} s"
    );
    engine.docker_ok(&["rm", "-f", &name]);
    weft_integration::ip(&pinger_ns, &["neigh", "del", &ip, "dev", &dev]);
    Sample {
        driver,
        reply: ms(reply),
        run: ms(run),
    }
}

/// The MAC Docker's bridge driver gives a container: 02:42 and the four bytes of its address.
fn docker_bridge_mac(ip: &str) -> String {
    let ip: Ipv4Addr = ip.parse().expect("an IPv4 address");
    let [a, b, c, d] = ip.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The interface `ns` reaches `ip` through.
fn route_dev(ns: &str, ip: &str) -> String {
    let out = weft_integration::ip(ns, &["route", "get", ip]);
    let dev = out
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1);
    dev.unwrap_or_else(|| panic!("no route to {ip} in {ns}: {}", out.stderr))
        .to_string()
}

/// `ping` in `ns` that exits at its first reply from `ip`.
fn ping_until_reply(ns: &str, ip: &str) -> Child {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-i", "0.005",
        ])
        .args(["-w", PING_DEADLINE, ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting ping")
}

fn docker_run(engine: &DockerEngine, name: &str, network: &str, ip: &str) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args([
        "-H",
        &engine.url(),
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
    ])
    .args([
        "--ip",
        ip,
        "--stop-timeout",
        "1",
        engine.image(),
        "sleep",
        "3600",
    ]);
    cmd
}

fn report(samples: &[Sample]) {
    let of = |driver: Driver, pick: fn(&Sample) -> f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.driver == driver)
            .map(pick)
            .collect()
    };
    println!("medians over {ROUNDS} rounds each:");
    for driver in [Driver::Weft, Driver::Bridge] {
        println!(
            "  {:<38} first reply {:7.1} ms   docker run returned {:7.1} ms",
            driver.label(),
            median(of(driver, |s| s.reply)),
            median(of(driver, |s| s.run))
        );
    }
    let ratio = median(of(Driver::Weft, |s| s.reply)) / median(of(Driver::Bridge, |s| s.reply));
    println!("  ratio weft / bridge, to the first reply: {ratio:.2}");
    harness::goal(
        &format!("weft's driver to a working network <= {GOAL_RATIO}x Docker's bridge"),
        ratio <= GOAL_RATIO,
        format!("{ratio:.2}"),
    );
}

fn ms(took: Duration) -> f64 {
    took.as_secs_f64() * 1000.0
}
