//! Traffic between two namespaces of a world, as the datapath benchmarks measure it: iperf3's
//! throughput and ping's round trips, on a path checked to cross the device it is named after.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::check_interrupted;
use weft_integration::{Background, World, exec, exec_for, listening, ping_n, rx_packets};

/// Seconds each iperf3 run measures, after [`OMIT`] seconds it leaves out (TCP slow start).
pub const SECONDS: &str = "3";
pub const OMIT: &str = "1";
const IPERF_PORT: u16 = 5201;
/// iperf3's client on CPU 0, its server on CPU 1 (`-A`), on every system alike. Left to the
/// scheduler, whether the two shared a CPU changed one run's throughput by up to a quarter.
pub const AFFINITY: &str = "0,1";
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// One of the compared systems: two namespaces on two hosts, and the address the server side
/// answers on.
pub struct System {
    pub label: &'static str,
    pub client: String,
    pub server: String,
    pub server_ip: String,
    /// The VXLAN device an overlay's packets cross, checked before any figure.
    pub vxlan: Option<String>,
}

/// What one iperf3 run measured at the receiver.
pub struct Received {
    pub gbit_per_s: f64,
    pub bytes: f64,
    /// UDP's share of datagrams lost, in %.
    pub lost_percent: Option<f64>,
}

/// Fails unless iperf3 runs with its client and server on CPUs of their own.
pub fn require_two_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "iperf3's client and server are pinned to CPUs {AFFINITY}: this benchmark needs 2 CPUs, the machine has {cpus}"
    );
}

/// Checks that pings get through and, for an overlay, that they cross its VXLAN device on the
/// server's host, so no figure comes from a path other than the one it is labelled with.
pub fn check_path(world: &World, path: &System) {
    let host2 = world.host_ns(2);
    let vxlan = path.vxlan.as_deref();
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

/// Starts iperf3's server on the path's server side and waits until it listens.
pub fn iperf_server(path: &System, log: &Path) -> Background {
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

/// One iperf3 run from the client to the server, with `extra` arguments: what the receiver saw.
pub fn iperf(path: &System, extra: &[&str]) -> Received {
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
        "-A",
        AFFINITY,
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
    Received {
        gbit_per_s: bps / 1e9,
        bytes: received["bytes"].as_f64().unwrap_or_default(),
        lost_percent: received["lost_percent"].as_f64(),
    }
}

/// The round-trip times, in µs, of `count` pings `interval` seconds apart from the client to
/// the server.
fn ping_rtts(path: &System, count: usize, interval: &str) -> Vec<f64> {
    let count = count.to_string();
    let out = exec(
        &path.client,
        &[
            "ping",
            "-n",
            "-c",
            &count,
            "-i",
            interval,
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

/// The round trips, in µs, of each system's pings in one round: `blocks` blocks of `count`
/// pings `interval` apart for each, the systems taking turns block by block in an order rotated
/// each round, so that a change in the machine's load during the round falls on all alike.
pub fn ping_round(
    systems: &[System],
    round: usize,
    blocks: usize,
    count: usize,
    interval: &str,
) -> Vec<Vec<f64>> {
    let mut rtts: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
    for block in 0..blocks {
        check_interrupted();
        for i in 0..systems.len() {
            let k = (round + block + i) % systems.len();
            rtts[k].extend(ping_rtts(&systems[k], count, interval));
        }
    }
    for (system, rtts) in systems.iter().zip(&rtts) {
        assert!(!rtts.is_empty(), "{}: no ping replies", system.label);
    }
    rtts
}

/// The machine's busy CPU time so far, in seconds (all CPUs, from /proc/stat): what a run cost
/// is the difference across it.
pub fn busy_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .expect("the cpu line of /proc/stat")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: all but idle and iowait is busy.
    let total: f64 = fields.iter().take(8).sum();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    (total - fields[3] - fields[4]) / ticks
}
