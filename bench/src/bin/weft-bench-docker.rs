//! `make bench-docker`: how long `docker run` takes to give a container a working network, with
//! weft's driver (the first ping reply from another host) and with Docker's own `bridge` driver
//! (the first ping reply from the container's host), alternating in one run on a real dockerd
//! 20.10 per host.
//!
//! Each round starts a pinger first (`ping -c 1 -w 30 -i 0.005` at the address the container is
//! about to get with `--ip`: it exits at its first reply), then `docker run -d`; the time is from
//! starting `docker run` to the pinger's exit, so it holds Docker's own work (creating the
//! container on vfs, its namespace, the driver's calls) and the network's. `docker run`'s own
//! return is timed too. Each container is removed, untimed.

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use weft_bench::harness::{self, check_interrupted, median};
use weft_integration::{DockerEngine, World, exit_code_of};

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
        "each round: a pinger (host2's namespace for weft, host1's for the bridge, which is its gateway there) at the address given with --ip, then `docker run -d --network NET --ip IP` on host1; timed from starting docker run to the pinger's first reply; the container removed, untimed"
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
    let mut pinger = ping_until_reply(&world.host_ns(pinger_host), &ip);
    let name = format!("r{i}-{network}");
    let started = Instant::now();
    let (run, out) = harness::timed(docker_run(engine, &name, network, &ip));
    assert!(out.success(), "docker run {name}: {}", out.stderr.trim());
    let status = pinger.wait().expect("waiting for the pinger");
    let reply = started.elapsed();
    assert!(
        status.success(),
        "no reply from {ip} ({network}) within {PING_DEADLINE} s"
    );
    engine.docker_ok(&["rm", "-f", &name]);
    Sample {
        driver,
        reply: ms(reply),
        run: ms(run),
    }
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
