//! `make bench-dns`: weft's DNS answering 10,000 container names next to dnsmasq serving the
//! same names from a hosts file, both queried by dnsperf from the same container namespace,
//! rounds alternating.
//!
//! The controller is filled once, by weft-load with host2's certificate, with 10,000 containers
//! named `load-N` on host2 (whose agent stays down); host1's agent serves their names inside a
//! container it attached, at 127.0.0.11, and dnsmasq (`--no-resolv --no-hosts --addn-hosts`)
//! listens on 127.0.0.1 in that same namespace. Each round, for each server: a throughput run
//! (dnsperf as fast as the server answers, one client, 100 queries outstanding) whose figures
//! are queries/s, lost queries and the server's CPU per query (from /proc), then a latency run
//! at a fixed rate both servers sustain, every answer's latency reported (`dnsperf -v`), whose
//! 99th percentile is judged.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use weft_bench::harness::{self, check_interrupted, median, percentile};
use weft_bench::load;
use weft_bench::usage::Meter;
use weft_integration::{Background, World, exec, exec_for, exit_code_of, wait_until};

const NAMES: usize = 10_000;
const ROUNDS: usize = 5;
/// The host whose agent serves the names, and the container there that dnsperf runs in.
const HOST: usize = 1;
/// The host whose certificate weft-load fills the controller with; its agent stays down.
const LOAD_HOST: usize = 2;
/// The named containers' VTEP: on the underlay /24, held by no namespace.
const LOAD_ADDR: &str = "198.18.0.50";
const DOMAIN: &str = "weave.local";
const WEFT_ADDR: &str = "127.0.0.11";
const DNSMASQ_ADDR: &str = "127.0.0.1";
/// How long dnsperf sends as fast as it can.
const LOAD_SECS: u64 = 10;
/// The fixed rate of the latency run, queries a second: well within both servers' reach, so
/// the latency is answering, not queueing.
const RATE: u32 = 2_000;
const LATENCY_SECS: u64 = 5;
/// Until the agent serves the last name.
const SERVED_TIMEOUT: Duration = Duration::from_secs(60);
const DNSPERF_TIMEOUT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-dns", run)
}

/// One server as dnsperf sees it.
#[derive(Clone, Copy, PartialEq)]
enum Server {
    Weft,
    Dnsmasq,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Weft => "weft",
            Server::Dnsmasq => "dnsmasq",
        }
    }

    fn addr(self) -> &'static str {
        match self {
            Server::Weft => WEFT_ADDR,
            Server::Dnsmasq => DNSMASQ_ADDR,
        }
    }
}

/// What one throughput run gave.
struct Throughput {
    qps: f64,
    completed: u64,
    lost: u64,
    /// Answers other than NOERROR.
    failed: u64,
    /// The server's CPU time per query answered.
    cpu_us: f64,
}

/// What one server gave over every round.
#[derive(Default)]
struct Figures {
    runs: Vec<Throughput>,
    /// Every answer's latency of every latency run, in ms.
    latencies: Vec<f64>,
    /// Queries of the latency runs without an answer, or with another than NOERROR.
    latency_unanswered: u64,
}

fn run() {
    println!(
        "weft-bench-dns: {NAMES} names, weft's DNS vs dnsmasq (hosts file), dnsperf from one container namespace"
    );
    harness::print_machine();
    println!("dnsperf: {}", harness::tool_version(&["dnsperf", "-h"]));
    println!(
        "dnsmasq: {}",
        harness::tool_version(&["dnsmasq", "--version"])
    );
    let scratch = tempfile::tempdir().expect("creating a temp dir");
    let mut world = World::new(2);
    world.stop_agent(LOAD_HOST);
    let addresses = populate(&world);
    let hosts = scratch.path().join("hosts");
    let queries = scratch.path().join("queries");
    write_files(&addresses, &hosts, &queries);

    let container = world.container(HOST, "dnsperf");
    world.attach(HOST, &[], &container);
    let hosts_arg = format!("--addn-hosts={}", hosts.display());
    let listen_arg = format!("--listen-address={DNSMASQ_ADDR}");
    let mut dnsmasq = Background::start(
        &container,
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            &hosts_arg,
            &listen_arg,
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
        ],
        scratch.path().join("dnsmasq.log"),
    );
    // Both serve every name, with the address the controller gave it, before anything is timed.
    let last = NAMES - 1;
    let name = format!("load-{last}.{DOMAIN}");
    for server in [Server::Weft, Server::Dnsmasq] {
        let served = wait_until(SERVED_TIMEOUT, || {
            dig(&container, server, &name).as_deref() == Some(addresses[last].as_str())
        });
        assert!(
            served,
            "{} does not answer {name} with {} within {SERVED_TIMEOUT:?}{}",
            server.name(),
            addresses[last],
            match server {
                Server::Weft => String::new(),
                Server::Dnsmasq => format!(": {}", dnsmasq.log_tail(10)),
            }
        );
    }
    let weft_pid = world.agent_pid(HOST).expect("host1's agent runs");
    let dnsmasq_pid = dnsmasq.pid().expect("dnsmasq runs");
    println!(
        "each round, each server: {LOAD_SECS} s of dnsperf -c 1 (100 queries outstanding) over the {NAMES} names, then {LATENCY_SECS} s at {RATE} queries/s with every answer's latency"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the meter");
    let (mut weft, mut dnsmasq_figures) = (Figures::default(), Figures::default());
    for round in 1..=ROUNDS {
        for server in [Server::Weft, Server::Dnsmasq] {
            check_interrupted();
            let (figures, pid) = match server {
                Server::Weft => (&mut weft, weft_pid),
                Server::Dnsmasq => (&mut dnsmasq_figures, dnsmasq_pid),
            };
            let t = throughput(&runtime, &container, server, &queries, pid);
            println!(
                "round {round}/{ROUNDS}  {:7}  {:8.0} queries/s, {} answered, {} lost, {} not NOERROR, {:.1} µs of server CPU a query",
                server.name(),
                t.qps,
                t.completed,
                t.lost,
                t.failed,
                t.cpu_us
            );
            figures.runs.push(t);
            check_interrupted();
            let (latencies, unanswered) = latency(&container, server, &queries);
            println!(
                "round {round}/{ROUNDS}  {:7}  at {RATE}/s: p50 {:.3} ms, p99 {:.3} ms over {} answers, {unanswered} unanswered",
                server.name(),
                percentile(latencies.clone(), 50.0),
                percentile(latencies.clone(), 99.0),
                latencies.len()
            );
            figures.latencies.extend(latencies);
            figures.latency_unanswered += unanswered;
        }
    }
    report(&weft, &dnsmasq_figures);
    harness::print_load("at end");
}

/// Fills the controller with the named containers; returns their addresses, in name order.
fn populate(world: &World) -> Vec<String> {
    println!("filling the controller with weft-load:");
    let made = load::populate(world, LOAD_HOST, LOAD_ADDR, NAMES, &["--dns-names".into()]);
    made.into_iter().map(|(_, ip)| ip).collect()
}

/// dnsmasq's hosts file and dnsperf's query file: every name, once.
fn write_files(addresses: &[String], hosts: &Path, queries: &Path) {
    let (mut h, mut q) = (String::new(), String::new());
    for (i, ip) in addresses.iter().enumerate() {
        writeln!(h, "{ip} load-{i}.{DOMAIN}").expect("writing to a string");
        writeln!(q, "load-{i}.{DOMAIN} A").expect("writing to a string");
    }
    fs::write(hosts, h).expect("writing the hosts file");
    fs::write(queries, q).expect("writing the query file");
}

/// The one address `server` answers for `name`, if it answers.
fn dig(container: &str, server: Server, name: &str) -> Option<String> {
    let at = format!("@{}", server.addr());
    let out = exec(
        container,
        &["dig", &at, "+tries=1", "+time=2", "+short", name],
    );
    out.success().then(|| out.stdout.trim().to_owned())
}

fn dnsperf(container: &str, server: Server, queries: &Path, extra: &[&str]) -> String {
    let file = queries.display().to_string();
    let mut argv = vec![
        "dnsperf",
        "-s",
        server.addr(),
        "-d",
        &file,
        "-c",
        "1",
        "-t",
        "2",
    ];
    argv.extend_from_slice(extra);
    let out = exec_for(container, &argv, DNSPERF_TIMEOUT);
    assert!(
        out.success(),
        "dnsperf against {} failed: {}",
        server.name(),
        out.stderr.trim()
    );
    out.stdout
}

fn throughput(
    runtime: &tokio::runtime::Runtime,
    container: &str,
    server: Server,
    queries: &Path,
    pid: u32,
) -> Throughput {
    let secs = LOAD_SECS.to_string();
    // The meter's CPU figure is its first and last reading; dnsperf runs in between.
    let meter = runtime
        .block_on(async { Meter::start(pid) })
        .expect("reading the server's /proc entries");
    let out = dnsperf(container, server, queries, &["-l", &secs]);
    let usage = runtime
        .block_on(meter.stop())
        .expect("reading the server's /proc entries");
    let completed = summary_count(&out, "Queries completed:");
    let noerror = response_count(&out, "NOERROR");
    Throughput {
        qps: summary_value(&out, "Queries per second:"),
        completed,
        lost: summary_count(&out, "Queries lost:"),
        failed: completed - noerror,
        cpu_us: usage.cpu.as_secs_f64() * 1e6 / completed.max(1) as f64,
    }
}

/// Every answer's latency in ms at [`RATE`], and how many queries got none or a failure.
fn latency(container: &str, server: Server, queries: &Path) -> (Vec<f64>, u64) {
    let (rate, secs) = (RATE.to_string(), LATENCY_SECS.to_string());
    let out = dnsperf(
        container,
        server,
        queries,
        &["-Q", &rate, "-l", &secs, "-v"],
    );
    // `-v` reports each answer as `> NOERROR load-7.weave.local A 0.000123` (seconds).
    let latencies: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> NOERROR "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    let unanswered = summary_count(&out, "Queries sent:") - latencies.len() as u64;
    (latencies, unanswered)
}

/// The number after `label` in dnsperf's statistics (`  Queries sent:         123`).
fn summary_count(out: &str, label: &str) -> u64 {
    summary_value(out, label) as u64
}

fn summary_value(out: &str, label: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("dnsperf printed no {label:?}: {out}"))
}

/// How many answers had response code `code` (`Response codes: NOERROR 100 (100.00%)`).
fn response_count(out: &str, code: &str) -> u64 {
    let Some(line) = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Response codes:"))
    else {
        return 0;
    };
    line.split(',')
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            (words.next()? == code).then(|| words.next()?.parse::<u64>().ok())?
        })
        .sum()
}

fn report(weft: &Figures, dnsmasq: &Figures) {
    let qps = |f: &Figures| median(f.runs.iter().map(|t| t.qps).collect());
    let cpu = |f: &Figures| median(f.runs.iter().map(|t| t.cpu_us).collect());
    let unanswered =
        |f: &Figures| f.runs.iter().map(|t| t.lost + t.failed).sum::<u64>() + f.latency_unanswered;
    let p = |f: &Figures, q: f64| percentile(f.latencies.clone(), q);
    println!("dns at {NAMES} names, {ROUNDS} rounds:");
    for (name, f) in [("weft", weft), ("dnsmasq", dnsmasq)] {
        println!(
            "  {name:7}  median {:8.0} queries/s, {:.1} µs of CPU a query; at {RATE}/s p50 {:.3} ms, p99 {:.3} ms ({} answers); {} lost or failed",
            qps(f),
            cpu(f),
            p(f, 50.0),
            p(f, 99.0),
            f.latencies.len(),
            unanswered(f)
        );
    }
    let ratio = qps(weft) / qps(dnsmasq);
    println!(
        "  weft / dnsmasq: queries/s {ratio:.2}, CPU a query {:.2}, p99 {:.2}",
        cpu(weft) / cpu(dnsmasq),
        p(weft, 99.0) / p(dnsmasq, 99.0)
    );
    println!("goals:");
    harness::goal(
        "queries/s ≥ dnsmasq's",
        ratio >= 1.0,
        format!("{:.0} vs {:.0}, {ratio:.2}", qps(weft), qps(dnsmasq)),
    );
    harness::goal(
        "p99 latency ≤ dnsmasq's",
        p(weft, 99.0) <= p(dnsmasq, 99.0),
        format!("{:.3} vs {:.3} ms", p(weft, 99.0), p(dnsmasq, 99.0)),
    );
    harness::goal(
        "no lost answers",
        unanswered(weft) == 0,
        format!("weft {}, dnsmasq {}", unanswered(weft), unanswered(dnsmasq)),
    );
}
