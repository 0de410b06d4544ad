//! `make bench`: how long weft-agent takes to program 10,000 remote endpoints on one host
//! (`--endpoints N`; from 100,000 on, issue 21's goals), next to iproute2 writing the same entries
//! from batch files, measured alternately in one run.
//!
//! Mutual TLS, as deployed. The controller is filled once, by weft-load with host1's
//! certificate, with the endpoints of host1, whose agent stays down. Then, each round: weft,
//! host2's agent is started on a host without weft's devices and the figure is the wall time
//! from its spawn until the kernel holds every entry (seen from outside, by netlink requests);
//! baseline, a fresh namespace gets the same bridge and VXLAN device by hand, and
//! `bridge -batch` and `ip -batch` write the same FDB and neighbour entries, timed by their wall
//! time. With `--ipv6` the endpoints have IPv6 addresses (one /64), so the neighbour entries are
//! IPv6 ones. Both sides are checked against the kernel afterwards. Then the agent programs them
//! once more and is left idle while weft-load reads its memory and CPU use from /proc; last,
//! single endpoints are attached one at a time and timed until the agent's kernel holds them.

use std::collections::BTreeSet;

use clap::Parser;
use std::fs;
use std::net::IpAddr;

use std::path::Path;
use std::process::{Command, ExitCode};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use weft_bench::harness::{self, check_interrupted, median};
use weft_bench::{has_permanent_neighbour, load, permanent_neighbours};
use weft_integration::{
    BRIDGE, Background, FLOOD_MAC, Netns, VXLAN_DEV, World, exec, exec_for, exit_code_of, fdb,
    host_addr, ip, locate_bin, neighbours, wait_until,
};

const ROUNDS: usize = 5;
/// The host whose certificate weft-load fills the controller with; its agent stays down, and
/// its peer is registered anew at [`LOAD_ADDR`].
const LOAD_HOST: usize = 1;
/// The endpoints' VTEP: on the underlay /24, held by no namespace, so what the hosts flood there
/// ends on the world's own underlay bridge.
const LOAD_ADDR: &str = "198.18.0.50";
/// The host whose agent is measured.
const HOST: usize = 2;
/// With `--ipv6`: the default network's IPv6 subnet, where each endpoint takes its address.
const IPV6_RANGE: &str = "fd00:77::/64";
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before each timed step: the kernel frees the previous round's 20,000 entries (and, for
/// a deleted namespace, its devices) in the background, which would otherwise eat into the next
/// measurement on a two-core machine.
const SETTLE: Duration = Duration::from_secs(1);
/// How long the idle agent is measured: its periodic reconcile (every 30 s) falls in twice.
const IDLE: Duration = Duration::from_secs(60);

/// `make bench-fdb ARGS=...`.
#[derive(Parser)]
struct Args {
    /// The endpoints get IPv6 addresses (one /64), so the neighbour entries are IPv6 ones.
    #[arg(long)]
    ipv6: bool,
    /// How many remote endpoints are programmed.
    #[arg(long, default_value_t = 10_000)]
    endpoints: usize,
}

/// The goals a run is judged by, by its size: the first round's at 10,000 endpoints, issue
/// 21's from 100,000.
struct Goals {
    /// weft's time over the baseline's, at most.
    ratio: f64,
    /// An idle agent with the endpoints programmed, in MB (10^6 bytes).
    agent_rss_mb: f64,
    /// One endpoint's change from the controller's answer to the kernel, p99.
    change_ms: f64,
    endpoints: usize,
}

impl Goals {
    fn at(endpoints: usize) -> Goals {
        match endpoints >= 100_000 {
            true => Goals {
                ratio: 1.0,
                agent_rss_mb: 100.0,
                change_ms: 5.0,
                endpoints,
            },
            false => Goals {
                ratio: 1.5,
                agent_rss_mb: 30.0,
                change_ms: 5.0,
                endpoints,
            },
        }
    }
}

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-fdb", run)
}

/// How long polling the kernel for the last entries may wait between looks.
const POLL: Duration = Duration::from_millis(1);

/// One baseline round: `bridge -batch`, then `ip -batch`.
struct Baseline {
    fdb_ms: f64,
    neigh_ms: f64,
}

impl Baseline {
    fn total_ms(&self) -> f64 {
        self.fdb_ms + self.neigh_ms
    }
}

/// The entries both sides must leave in the kernel, from the endpoints weft-load made.
struct Entries {
    /// `(mac, dst)`: one per endpoint and the flood entry.
    fdb: BTreeSet<(String, String)>,
    /// `(ip, mac)`: one per endpoint.
    neighbours: BTreeSet<(String, String)>,
    /// The highest address among them.
    last_neighbour: IpAddr,
}

fn run() {
    let Args { ipv6, endpoints } = Args::parse();
    let goals = Goals::at(endpoints);
    println!(
        "weft-bench-fdb: time to program {endpoints} remote endpoints on one host, weft-agent vs iproute2 batch files"
    );
    harness::print_machine();
    let scratch = tempfile::tempdir().expect("creating a temp dir");
    // The endpoints are in the default network, which every host programs: with --ipv6 it is
    // dual stack, and each endpoint takes an address of its IPv6 subnet only.
    let mut world = match ipv6 {
        false => World::new(2),
        true => World::with_controller_args(2, &["--ipalloc-range6", IPV6_RANGE]),
    };
    // Both agents stay down while the controller fills, and host1's for good: on two cores, an
    // idle agent's periodic resync would compete with the one being measured.
    world.stop_agent(LOAD_HOST);
    world.stop_agent(HOST);
    if ipv6 {
        println!(
            "endpoints: IPv6 (net:{IPV6_RANGE}, the default network's IPv6 subnet), so {endpoints} IPv6 neighbour entries"
        );
    }
    let entries = populate(&world, endpoints, ipv6);
    let fdb_batch = scratch.path().join("fdb.batch");
    let neigh_batch = scratch.path().join("neigh.batch");
    write_batches(&entries, &fdb_batch, &neigh_batch);
    println!(
        "each round: weft-agent = wall time from spawning host{HOST}'s agent (mutual TLS) on a host without weft's devices until its kernel holds every entry (polled from outside: a netlink request for the last neighbour entry the agent writes, then dumps of both tables to see every entry there); iproute2 = wall time of bridge -batch + ip -batch of the same entries into the same devices, made by hand in a fresh namespace"
    );

    let mut weft = Vec::new();
    let mut baseline = Vec::new();
    for round in 1..=ROUNDS {
        check_interrupted();
        let weft_ms = weft_round(&mut world, &entries);
        println!(
            "round {round}/{ROUNDS}  weft-agent  {weft_ms:7.1} ms  ({} FDB + {} neighbour entries; kernel checked)",
            entries.fdb.len(),
            entries.neighbours.len()
        );
        weft.push(weft_ms);
        check_interrupted();
        let base = baseline_round(world.prefix(), round, &entries, &fdb_batch, &neigh_batch);
        println!(
            "round {round}/{ROUNDS}  iproute2    {:7.1} ms  (bridge -batch {:.1} ms + ip -batch {:.1} ms; kernel checked)",
            base.total_ms(),
            base.fdb_ms,
            base.neigh_ms
        );
        baseline.push(base);
    }
    report(&weft, &baseline, &goals);
    idle_footprint(&mut world, &entries, &goals);
    single_changes(&world, &goals);
    world.stop_agent(HOST);
    harness::print_load("at end");
}

/// Fills the controller through weft-load, run in host1's namespace with host1's certificate,
/// and returns the entries the endpoints it made call for.
fn populate(world: &World, endpoints: usize, ipv6: bool) -> Entries {
    let extra = match ipv6 {
        true => vec!["--addr".to_string(), format!("net:{IPV6_RANGE}")],
        false => Vec::new(),
    };
    println!(
        "filling the controller with weft-load (once; each round restarts only host{HOST}'s agent):"
    );
    let made = load::populate(world, LOAD_HOST, LOAD_ADDR, endpoints, &extra);
    let last_neighbour = made
        .iter()
        .map(|(_, ip)| ip.parse::<IpAddr>().expect("weft-load lists addresses"))
        .max()
        .expect("weft-load made endpoints");
    let mut entries = Entries {
        fdb: BTreeSet::from([(FLOOD_MAC.to_owned(), LOAD_ADDR.to_owned())]),
        neighbours: BTreeSet::new(),
        last_neighbour,
    };
    for (mac, ip) in made {
        entries.fdb.insert((mac.clone(), LOAD_ADDR.to_owned()));
        entries.neighbours.insert((ip, mac));
    }
    entries
}

/// The baseline's input: what an operator would feed iproute2 to build the same tables.
fn write_batches(entries: &Entries, fdb_batch: &Path, neigh_batch: &Path) {
    let mut fdb = String::new();
    for (mac, dst) in &entries.fdb {
        // The flood entry is appended, as weft does: there is one per remote peer.
        let verb = if mac == FLOOD_MAC { "append" } else { "add" };
        fdb += &format!("fdb {verb} {mac} dev {VXLAN_DEV} dst {dst} self permanent\n");
    }
    let mut neigh = String::new();
    for (ip, mac) in &entries.neighbours {
        neigh += &format!("neigh add {ip} lladdr {mac} dev {VXLAN_DEV} nud permanent\n");
    }
    fs::write(fdb_batch, fdb).expect("writing the FDB batch file");
    fs::write(neigh_batch, neigh).expect("writing the neighbour batch file");
}

/// One timed round of weft: [`program`], then stops host2's agent, so that the next round starts
/// again from a host without weft's devices.
fn weft_round(world: &mut World, entries: &Entries) -> f64 {
    let ms = program(world, entries);
    world.stop_agent(HOST);
    ms
}

/// Starts host2's agent on a host without weft's devices and returns the ms from its spawn
/// until the kernel held every entry, once the kernel is checked to hold exactly those.
fn program(world: &mut World, entries: &Entries) -> f64 {
    let ns = world.host_ns(HOST);
    // Deleting the VXLAN device drops its FDB and neighbour entries with it.
    for dev in [VXLAN_DEV, BRIDGE] {
        exec(&ns, &["ip", "link", "del", dev]);
        assert!(
            weft_integration::link(&ns, dev).is_none(),
            "{dev} is still in host{HOST}"
        );
    }
    sleep(SETTLE);
    let spawned = Instant::now();
    world.spawn_agent(HOST);
    // The agent writes the FDB entries, then the neighbours in address order, all on one
    // socket: the entry of the highest address comes last. The kernel is asked for that entry
    // alone (a dump of 100,000 would take the kernel tens of milliseconds from the agent at
    // each look); once it is there, one look at the whole tables (dumps) must find them all,
    // or the looks go on until one does. The time is taken when the look that found them
    // returns, so it errs against weft.
    let last = entries.last_neighbour;
    let (mut found, mut looked_after, mut held) = (None, false, None);
    let programmed = wait_until(RECONCILE_TIMEOUT, || {
        check_interrupted();
        if found.is_none() {
            if has_permanent_neighbour(&ns, VXLAN_DEV, last) != Some(true) {
                sleep(POLL);
                return false;
            }
            found = Some(Instant::now());
        }
        let complete = permanent_neighbours(&ns, VXLAN_DEV).unwrap_or(0)
            >= entries.neighbours.len()
            && fdb(&ns, VXLAN_DEV).len() >= entries.fdb.len();
        if complete {
            held = if looked_after {
                Some(Instant::now())
            } else {
                found
            };
        }
        looked_after = true;
        complete
    });
    assert!(
        programmed,
        "host{HOST}'s agent had not programmed the {} endpoints within {RECONCILE_TIMEOUT:?}; its log: {}",
        entries.neighbours.len(),
        world.agent_log(HOST).display()
    );
    check_kernel(&ns, entries, "weft-agent");
    (held.expect("found above") - spawned).as_secs_f64() * 1000.0
}

/// The agent that has programmed the endpoints, left alone: its memory and CPU as weft-load
/// reads them from /proc while nothing changes.
fn idle_footprint(world: &mut World, entries: &Entries, goals: &Goals) {
    println!(
        "idle footprint: host{HOST}'s agent programs the {} endpoints as in a round, waits {SETTLE:?}, then nothing changes for {} s (its periodic reconcile runs every 30 s):",
        entries.neighbours.len(),
        IDLE.as_secs()
    );
    check_interrupted();
    program(world, entries);
    sleep(SETTLE);
    let pid = world
        .agent_pid(HOST)
        .unwrap_or_else(|| panic!("host{HOST}'s agent exited after programming"))
        .to_string();
    let load = locate_bin("weft-load");
    let seconds = IDLE.as_secs().to_string();
    let goal = goals.agent_rss_mb.to_string();
    let argv = [
        path_str(&load),
        "footprint",
        "--pid",
        &pid,
        "--seconds",
        &seconds,
        "--rss-goal-mb",
        &goal,
    ];
    let out = exec_for(&world.host_ns(HOST), &argv, IDLE + RECONCILE_TIMEOUT);
    check_interrupted();
    assert!(
        out.success(),
        "weft-load footprint failed: {}",
        out.stderr.trim()
    );
    for line in out.stdout.lines() {
        println!("  weft-agent {line}");
    }
}

/// Single attaches measured on the agent that holds the endpoints.
const CHANGES: usize = 100;
/// How long one attach may take to reach host2's kernel.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// With host2's agent holding the endpoints: one endpoint attached at a time on the load host
/// (by weft-load, as an agent asks), and the time from the controller's answer reaching
/// weft-load to host2's kernel holding the endpoint's neighbour entry (the last entry the agent
/// writes), as `ip -ts monitor neigh` in host2 stamps the kernel's notification. The answer
/// comes once the change is durable, when the controller also sends it to its watchers, so a
/// change may be in the kernel before its answer arrives: that counts as 0.
fn single_changes(world: &World, goals: &Goals) {
    let ns = world.host_ns(HOST);
    let dir = tempfile::tempdir().expect("a temp dir for the monitor's output");
    let log = dir.path().join("monitor.log");
    // Line-buffered, in UTC: its stamps are read while it runs and compared with this clock.
    let _monitor = Background::start(
        &ns,
        "env",
        &["TZ=UTC", "stdbuf", "-oL", "ip", "-ts", "monitor", "neigh"],
        log.clone(),
    );
    println!(
        "single changes: {CHANGES} endpoints attached one at a time on host{LOAD_HOST} by weft-load while host{HOST}'s agent holds the {} endpoints; time from the controller's answer to host{HOST}'s kernel notification of the endpoint's neighbour entry (ip -ts monitor neigh):",
        goals.endpoints
    );
    // The first shows the monitor listening; it is not counted.
    let mut after_answer = Vec::new();
    for i in 0..=CHANGES {
        check_interrupted();
        let (applied, answered) = attach_one(world, &log, &format!("change-{i}"));
        if i > 0 {
            after_answer.push(ms_between(answered, applied).max(0.0));
        }
    }
    let p50 = harness::percentile(after_answer.clone(), 50.0);
    let p99 = harness::percentile(after_answer.clone(), 99.0);
    let max = harness::percentile(after_answer, 100.0);
    println!(
        "  answer to kernel  p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.2} ms  (n={CHANGES})"
    );
    println!(
        "target p99 < {} ms: {}",
        goals.change_ms,
        if p99 < goals.change_ms {
            "met"
        } else {
            "missed"
        }
    );
}

/// Attaches `container` on the load host; returns when host2's kernel notified its neighbour
/// entry and when the controller's answer came, as times of day.
fn attach_one(world: &World, log: &Path, container: &str) -> (f64, f64) {
    let mut argv = load::as_host(world, LOAD_HOST);
    argv.extend(
        [
            "attach",
            "--peer",
            &format!("host{LOAD_HOST}"),
            "--container",
            container,
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = exec_for(&world.host_ns(LOAD_HOST), &argv, CHANGE_TIMEOUT);
    let answered = time_of_day(SystemTime::now());
    assert!(
        out.success(),
        "weft-load attach failed: {}",
        out.stderr.trim()
    );
    let cidr = out
        .stdout
        .split_whitespace()
        .next()
        .expect("weft-load prints the address");
    let ip = cidr.split_once('/').map_or(cidr, |(ip, _)| ip);
    let entry = format!("] {ip} dev {VXLAN_DEV} lladdr ");
    let mut applied = None;
    let seen = wait_until(CHANGE_TIMEOUT, || {
        let text = fs::read_to_string(log).unwrap_or_default();
        applied = text
            .lines()
            .find(|l| l.contains(&entry) && l.trim_end().ends_with("PERMANENT"))
            .map(monitor_stamp);
        applied.is_some()
    });
    assert!(
        seen,
        "host{HOST}'s kernel had no neighbour entry for {container} ({ip}) within {CHANGE_TIMEOUT:?}; its agent's log: {}",
        world.agent_log(HOST).display()
    );
    (applied.expect("found above"), answered)
}

/// Seconds into the UTC day: how `ip -ts` stamps are compared with this clock.
const DAY: f64 = 86_400.0;

/// The time of day `ip -ts monitor` (in UTC) put at the head of `line`
/// (`[YYYY-MM-DDTHH:MM:SS.uuuuuu]`), in seconds.
fn monitor_stamp(line: &str) -> f64 {
    let time = line
        .strip_prefix('[')
        .and_then(|l| l.split_once(']'))
        .and_then(|(stamp, _)| stamp.split_once('T'))
        .map(|(_, time)| time)
        .unwrap_or_else(|| panic!("no timestamp on the monitor's line {line:?}"));
    let parts: Vec<f64> = time
        .split(':')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|e| panic!("the monitor's time {time:?}: {e}"))
        })
        .collect();
    let [h, m, s] = parts[..] else {
        panic!("the monitor's time {time:?} is not HH:MM:SS.uuuuuu");
    };
    h * 3600.0 + m * 60.0 + s
}

/// The time of day of `at` in UTC, in seconds.
fn time_of_day(at: SystemTime) -> f64 {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the clock is past 1970");
    since_epoch.as_secs_f64() % DAY
}

/// `later - earlier` in ms, for times of day less than half a day apart (midnight between
/// them included).
fn ms_between(earlier: f64, later: f64) -> f64 {
    let diff = (later - earlier).rem_euclid(DAY);
    let diff = if diff >= DAY / 2.0 { diff - DAY } else { diff };
    diff * 1000.0
}

/// Builds weft's two devices by hand in a fresh namespace and times iproute2 filling them.
fn baseline_round(
    prefix: &str,
    round: usize,
    entries: &Entries,
    fdb_batch: &Path,
    neigh_batch: &Path,
) -> Baseline {
    let netns = Netns::new(&format!("{prefix}-base{round}"));
    let ns = netns.name();
    // The VXLAN device's local address must exist in its namespace; host2's underlay address
    // on lo gives it one without a route anywhere, so nothing flooded leaves the namespace.
    let local = host_addr(HOST);
    ip(ns, &["addr", "add", &format!("{local}/32"), "dev", "lo"]);
    ip(ns, &["link", "add", BRIDGE, "type", "bridge"]);
    ip(
        ns,
        &[
            "link",
            "add",
            VXLAN_DEV,
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "6784",
            "local",
            &local,
            "nolearning",
            "proxy",
        ],
    );
    ip(ns, &["link", "set", VXLAN_DEV, "master", BRIDGE]);
    ip(ns, &["link", "set", BRIDGE, "up"]);
    ip(ns, &["link", "set", VXLAN_DEV, "up"]);
    sleep(SETTLE);
    let fdb_ms = timed(&["bridge", "-n", ns, "-batch", path_str(fdb_batch)]);
    let neigh_ms = timed(&["ip", "-n", ns, "-batch", path_str(neigh_batch)]);
    check_kernel(ns, entries, "iproute2");
    Baseline { fdb_ms, neigh_ms }
}

/// Runs `argv` to completion and returns its wall time in ms.
fn timed(argv: &[&str]) -> f64 {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    let (elapsed, out) = harness::timed(cmd);
    assert!(
        out.success(),
        "{} failed: {}",
        argv.join(" "),
        out.stderr.trim()
    );
    elapsed.as_secs_f64() * 1000.0
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("path is UTF-8")
}

/// Checks that `ns`'s VXLAN device holds exactly the expected FDB and neighbour entries, so
/// neither side is timed for work it did not finish.
fn check_kernel(ns: &str, entries: &Entries, who: &str) {
    let fdb_held = fdb(ns, VXLAN_DEV);
    check_entries(who, "FDB entries with a dst", &fdb_held, &entries.fdb);
    let neigh_held = neighbours(ns, VXLAN_DEV);
    check_entries(
        who,
        "permanent neighbour entries",
        &neigh_held,
        &entries.neighbours,
    );
}

fn check_entries<T: Ord>(who: &str, what: &str, held: &BTreeSet<T>, expected: &BTreeSet<T>) {
    assert!(
        held == expected,
        "{who}: the kernel holds {} {what}, not the {} expected ({} missing, {} extra)",
        held.len(),
        expected.len(),
        expected.difference(held).count(),
        held.difference(expected).count()
    );
}

fn report(weft: &[f64], baseline: &[Baseline], goals: &Goals) {
    let weft_ms = median(weft.to_vec());
    let base_ms = median(baseline.iter().map(Baseline::total_ms).collect());
    let fdb_ms = median(baseline.iter().map(|b| b.fdb_ms).collect());
    let neigh_ms = median(baseline.iter().map(|b| b.neigh_ms).collect());
    let ratio = weft_ms / base_ms;
    println!("median of {ROUNDS} rounds:");
    println!("  weft-agent (spawn to kernel complete)  {weft_ms:7.1} ms");
    println!("  iproute2 (bridge -batch + ip -batch)   {base_ms:7.1} ms");
    println!("    bridge -batch                        {fdb_ms:7.1} ms");
    println!("    ip -batch                            {neigh_ms:7.1} ms");
    println!("  ratio weft/iproute2                    {ratio:7.2}");
    println!(
        "target <= {}: {}",
        goals.ratio,
        if ratio <= goals.ratio {
            "met"
        } else {
            "missed"
        }
    );
}
