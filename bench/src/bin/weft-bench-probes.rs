//! `make bench-probes`: what the data-path probes cost one agent in a world of 101 hosts (100
//! peers, every agent probing every other): its CPU and resident memory as the kernel accounts
//! them (`/proc`), and the packets its probe device sends and receives (the kernel's counters),
//! with probing on and, in the same run, off (`--probe-interval 0`: the device then only
//! answers the peers' probes), rounds alternating.

use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_bench::harness::{self, check_interrupted, median};
use weft_bench::usage::{Meter, Usage, mb, mib};
use weft_integration::{World, exit_code_of, rx_packets, tx_packets, wait_until};

const PEERS: usize = 100;
/// The host whose agent is measured.
const HOST: usize = 1;
const ROUNDS: usize = 5;
const WINDOW: Duration = Duration::from_secs(20);
/// After a restart, before measuring: the first rounds open the socket and fill the tables.
const SETTLE: Duration = Duration::from_secs(3);
/// How long every connection of the measured host may take to show ok.
const ALL_OK: Duration = Duration::from_secs(60);
const PROBE_DEVICE: &str = "weft-probe";
/// The idle agent's goals, as for every idle agent (BENCHMARKS.md): RSS < 30 MB and about no
/// CPU, here read as below 1 % of one core.
const GOAL_RSS_MB: f64 = 30.0;
const GOAL_CPU_PERCENT: f64 = 1.0;

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-probes", run)
}

/// One measured window.
struct Phase {
    usage: Usage,
    /// Packets per second the probe device sent and received.
    tx: f64,
    rx: f64,
}

impl Phase {
    fn line(&self) -> String {
        let per_peer = |pps: f64| pps / PEERS as f64;
        format!(
            "{}; {PROBE_DEVICE} sent {:.1}/s ({:.2} per peer), received {:.1}/s ({:.2} per peer)",
            self.usage,
            self.tx,
            per_peer(self.tx),
            self.rx,
            per_peer(self.rx)
        )
    }
}

fn run() {
    println!(
        "weft-bench-probes: one agent with {PEERS} peers, all probing each other every second; its CPU, memory and probe packets over {} s windows, probing on and off (--probe-interval 0), {ROUNDS} rounds alternating",
        WINDOW.as_secs()
    );
    harness::print_machine();
    let started = Instant::now();
    let world = World::new(PEERS + 1);
    println!(
        "world of {} hosts up in {:.1} s",
        PEERS + 1,
        started.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the meter");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        for probing in [true, false] {
            check_interrupted();
            let extra: &[&str] = if probing {
                &[]
            } else {
                &["--probe-interval", "0"]
            };
            world.restart_agent_with(HOST, extra);
            if probing {
                let shown = wait_until(ALL_OK, || all_ok(&world));
                assert!(
                    shown,
                    "host{HOST} does not show {PEERS} connections ok within {ALL_OK:?}"
                );
            }
            sleep(SETTLE);
            let phase = measure(&world, &runtime);
            let label = if probing { "on " } else { "off" };
            println!("round {round}/{ROUNDS}  probing {label}  {}", phase.line());
            if probing { &mut on } else { &mut off }.push(phase);
        }
    }
    report(&on, &off);
    harness::print_load("at end");
}

/// Whether the measured host shows every peer's connection ok.
fn all_ok(world: &World) -> bool {
    let out = world.weftctl(HOST, &["status", "connections", "--json"]);
    let Ok(Value::Array(connections)) = serde_json::from_str::<Value>(&out.stdout) else {
        return false;
    };
    connections.len() == PEERS && connections.iter().all(|c| c["state"] == "ok")
}

fn measure(world: &World, runtime: &tokio::runtime::Runtime) -> Phase {
    let pid = world
        .agent_pid(HOST)
        .unwrap_or_else(|| panic!("host{HOST}'s agent is not running"));
    let ns = world.host_ns(HOST);
    let counters = || (tx_packets(&ns, PROBE_DEVICE), rx_packets(&ns, PROBE_DEVICE));
    let before = counters();
    let usage = runtime
        .block_on(async {
            let meter = Meter::start(pid)?;
            tokio::time::sleep(WINDOW).await;
            meter.stop().await
        })
        .unwrap_or_else(|e| panic!("measuring host{HOST}'s agent: {e:#}"));
    let after = counters();
    let secs = usage.wall.as_secs_f64();
    Phase {
        usage,
        tx: (after.0 - before.0) as f64 / secs,
        rx: (after.1 - before.1) as f64 / secs,
    }
}

fn report(on: &[Phase], off: &[Phase]) {
    let cpu = |phases: &[Phase]| median(phases.iter().map(|p| p.usage.cpu_percent()).collect());
    let pps = |phases: &[Phase], f: fn(&Phase) -> f64| {
        median(phases.iter().map(f).collect()) / PEERS as f64
    };
    let (cpu_on, cpu_off) = (cpu(on), cpu(off));
    // CPU percent of one core over PEERS peers: microseconds of CPU per second per peer.
    let per_peer_us = (cpu_on - cpu_off) * 10_000.0 / PEERS as f64;
    let rss_peak = on.iter().map(|p| p.usage.rss_peak_kib).max().unwrap_or(0);
    println!("probes at {PEERS} peers, median of {ROUNDS} rounds:");
    println!("  agent CPU, probing on            {cpu_on:.2} % of one core");
    println!("  agent CPU, probing off           {cpu_off:.2} % of one core");
    println!("  the probes' CPU per peer         {per_peer_us:.1} µs a second");
    println!(
        "  packets per peer a second, on    sent {:.2}, received {:.2}",
        pps(on, |p| p.tx),
        pps(on, |p| p.rx)
    );
    println!(
        "  packets per peer a second, off   sent {:.2}, received {:.2} (answering the peers' probes)",
        pps(off, |p| p.tx),
        pps(off, |p| p.rx)
    );
    println!(
        "  RSS at most, probing on          {:.1} MiB ({:.1} MB)",
        mib(rss_peak),
        mb(rss_peak)
    );
    println!("goals (an idle agent with probes on, {PEERS} peers):");
    harness::goal(
        &format!("RSS < {GOAL_RSS_MB} MB"),
        mb(rss_peak) < GOAL_RSS_MB,
        format!("{:.1} MB at most", mb(rss_peak)),
    );
    harness::goal(
        &format!("CPU ~0 % (< {GOAL_CPU_PERCENT} % of one core)"),
        cpu_on < GOAL_CPU_PERCENT,
        format!(
            "{cpu_on:.2} %, median of {ROUNDS} windows of {} s",
            WINDOW.as_secs()
        ),
    );
}
