//! `make bench`: how long weft-agent takes to program 10,000 remote endpoints on one host, next to
//! iproute2 writing the same entries from batch files, measured alternately in one run.
//!
//! The controller is filled once, by weft-load, with 10,000 endpoints of a peer no agent runs
//! for. Then, each round: weft, host2's agent starts on a host without weft's devices and the
//! figure is the `elapsed_ms` of its `datapath reconciled` log line; baseline, a fresh namespace
//! gets the same bridge and VXLAN device by hand, and `bridge -batch` and `ip -batch` write the
//! same FDB and neighbour entries. Both sides are checked against the kernel afterwards.
//! Last, the agent programs them once more and is left idle while weft-load reads its memory
//! and CPU use from /proc.

use std::collections::BTreeSet;
use std::fs;

use std::path::Path;
use std::process::{Command, ExitCode};
use std::thread::sleep;
use std::time::Duration;

use weft_integration::bench::{self, check_interrupted, median};
use weft_integration::{
    BRIDGE, CONTROLLER_URL_INSECURE, Netns, Security, VXLAN_DEV, World, exec, exec_for,
    exit_code_of, fdb, host_addr, ip, locate_bin, neighbours, wait_until,
};

const ENDPOINTS: usize = 10_000;
const ROUNDS: usize = 5;
/// The target for weft's time over the baseline's.
const TARGET: f64 = 1.5;
const LOAD_PEER: &str = "load";
/// The fake peer's VTEP: on the underlay /24, held by no namespace, so what the hosts flood there
/// ends on the world's own underlay bridge.
const LOAD_ADDR: &str = "198.18.0.50";
const FLOOD_MAC: &str = "00:00:00:00:00:00";
/// The host whose agent is measured; host1 only lends its namespace to weft-load.
const HOST: usize = 2;
/// Generous: 10,000 attaches took 1.5 to 2 minutes on two cores before the controller grouped
/// its commits and found free addresses without walking the held ones; now a few seconds.
const POPULATE_TIMEOUT: Duration = Duration::from_secs(240);
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before each timed step: the kernel frees the previous round's 20,000 entries (and, for
/// a deleted namespace, its devices) in the background, which would otherwise eat into the next
/// measurement on a two-core machine.
const SETTLE: Duration = Duration::from_secs(1);
/// How long the idle agent is measured: its periodic reconcile (every 30 s) falls in twice.
const IDLE: Duration = Duration::from_secs(60);
/// The goal for an idle agent with the endpoints programmed, in MB (10^6 bytes).
const GOAL_AGENT_RSS_MB: f64 = 30.0;

fn main() -> ExitCode {
    bench::stop_on_interrupt();
    exit_code_of("weft-bench-fdb", run)
}

/// What weft's agent reported for one reconcile.
struct Reconciled {
    fdb_added: usize,
    neigh_added: usize,
    elapsed_ms: f64,
}

/// One baseline round: `bridge -batch`, and `ip -batch` when weft programs neighbours too.
struct Baseline {
    fdb_ms: f64,
    neigh_ms: Option<f64>,
}

impl Baseline {
    fn total_ms(&self) -> f64 {
        self.fdb_ms + self.neigh_ms.unwrap_or(0.0)
    }
}

/// The entries both sides must leave in the kernel, from the endpoints weft-load made.
struct Entries {
    /// `(mac, dst)`: one per endpoint and the flood entry.
    fdb: BTreeSet<(String, String)>,
    /// `(ip, mac)`: one per endpoint.
    neighbours: BTreeSet<(String, String)>,
}

fn run() {
    println!(
        "weft-bench-fdb: time to program {ENDPOINTS} remote endpoints on one host, weft-agent vs iproute2 batch files"
    );
    bench::print_machine();
    let scratch = tempfile::tempdir().expect("creating a temp dir");
    // Plaintext: weft-load fills the tables as a peer ("load") that no agent's certificate
    // names, which a TLS controller would refuse.
    let mut world = World::with_options(2, &[], Security::Insecure);
    // Both agents stay down while the controller fills, and host1's for good: on two cores, an
    // idle agent's periodic resync would compete with the one being measured.
    world.stop_agent(1);
    world.stop_agent(HOST);
    let entries = populate(&world, &scratch.path().join("endpoints.txt"));
    let fdb_batch = scratch.path().join("fdb.batch");
    let neigh_batch = scratch.path().join("neigh.batch");
    write_batches(&entries, &fdb_batch, &neigh_batch);
    println!(
        "each round: weft-agent = the elapsed_ms host{HOST}'s agent logs for programming them on a host without weft's devices; iproute2 = bridge -batch + ip -batch of the same entries into the same devices, made by hand in a fresh namespace"
    );

    let mut weft = Vec::new();
    let mut baseline = Vec::new();
    for round in 1..=ROUNDS {
        check_interrupted();
        let reconciled = weft_round(&mut world, &entries);
        let with_neigh = reconciled.neigh_added > 0;
        println!(
            "round {round}/{ROUNDS}  weft-agent  {:7.1} ms  (fdb_added={} neigh_added={}; kernel checked{})",
            reconciled.elapsed_ms,
            reconciled.fdb_added,
            reconciled.neigh_added,
            if with_neigh {
                ""
            } else {
                "; NO neighbour entries: FDB only"
            }
        );
        weft.push(reconciled.elapsed_ms);
        check_interrupted();
        let base = baseline_round(
            world.prefix(),
            round,
            &entries,
            &fdb_batch,
            &neigh_batch,
            with_neigh,
        );
        println!(
            "round {round}/{ROUNDS}  iproute2    {:7.1} ms  (bridge -batch {:.1} ms{}; kernel checked)",
            base.total_ms(),
            base.fdb_ms,
            base.neigh_ms
                .map(|ms| format!(" + ip -batch {ms:.1} ms"))
                .unwrap_or_default()
        );
        baseline.push(base);
    }
    report(&weft, &baseline);
    idle_footprint(&mut world, &entries);
    bench::print_load("at end");
}

/// Fills the controller through weft-load, run in host1's namespace, and returns the entries
/// the endpoints it made call for.
fn populate(world: &World, list: &Path) -> Entries {
    let load = locate_bin("weft-load");
    let count = ENDPOINTS.to_string();
    let list_arg = list.display().to_string();
    let argv = [
        load.to_str().expect("path is UTF-8"),
        "--controller",
        CONTROLLER_URL_INSECURE,
        "populate",
        "--peer",
        LOAD_PEER,
        "--advertise-addr",
        LOAD_ADDR,
        "--endpoints",
        &count,
        "--list",
        &list_arg,
    ];
    println!(
        "filling the controller with weft-load (once; each round restarts only host{HOST}'s agent):"
    );
    let out = exec_for(&world.host_ns(1), &argv, POPULATE_TIMEOUT);
    // Ctrl-C reaches weft-load too; say so rather than report its silent death.
    check_interrupted();
    assert!(out.success(), "weft-load failed: {}", out.stderr.trim());
    print!("  {}", out.stdout);
    let text = fs::read_to_string(list).expect("reading weft-load's list");
    let mut entries = Entries {
        fdb: BTreeSet::from([(FLOOD_MAC.to_owned(), LOAD_ADDR.to_owned())]),
        neighbours: BTreeSet::new(),
    };
    for line in text.lines() {
        let (mac, cidr) = line
            .split_once(' ')
            .expect("weft-load lines are `MAC IP/LEN`");
        let ip = cidr.split_once('/').map_or(cidr, |(ip, _)| ip);
        entries.fdb.insert((mac.to_owned(), LOAD_ADDR.to_owned()));
        entries.neighbours.insert((ip.to_owned(), mac.to_owned()));
    }
    assert_eq!(
        entries.neighbours.len(),
        ENDPOINTS,
        "weft-load made a different number of endpoints"
    );
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
fn weft_round(world: &mut World, entries: &Entries) -> Reconciled {
    let reconciled = program(world, entries);
    world.stop_agent(HOST);
    reconciled
}

/// Starts host2's agent on a host without weft's devices and returns what it reported for the
/// reconcile that programmed the endpoints, once the kernel is checked to hold them.
fn program(world: &mut World, entries: &Entries) -> Reconciled {
    let ns = world.host_ns(HOST);
    // Deleting the VXLAN device drops its FDB and neighbour entries with it.
    for dev in [VXLAN_DEV, BRIDGE] {
        exec(&ns, &["ip", "link", "del", dev]);
        assert!(
            weft_integration::link(&ns, dev).is_none(),
            "{dev} is still in host{HOST}"
        );
    }
    let log = world.agent_log(HOST);
    let from = fs::metadata(&log).map_or(0, |m| m.len() as usize);
    sleep(SETTLE);
    world.start_agent(HOST);
    let mut reconciled = None;
    let reported = wait_until(RECONCILE_TIMEOUT, || {
        check_interrupted();
        let text = fs::read(&log).unwrap_or_default();
        reconciled = String::from_utf8_lossy(&text[from.min(text.len())..])
            .lines()
            .filter_map(parse_reconciled)
            .find(|r| r.fdb_added >= ENDPOINTS);
        reconciled.is_some()
    });
    assert!(
        reported,
        "host{HOST}'s agent logged no `datapath reconciled` line with fdb_added >= {ENDPOINTS} within {RECONCILE_TIMEOUT:?}; its log follows"
    );
    let reconciled = reconciled.expect("found above");
    check_kernel(&ns, entries, reconciled.neigh_added > 0, "weft-agent");
    reconciled
}

/// The agent that has programmed the endpoints, left alone: its memory and CPU as weft-load
/// reads them from /proc while nothing changes.
fn idle_footprint(world: &mut World, entries: &Entries) {
    println!(
        "idle footprint: host{HOST}'s agent programs the {ENDPOINTS} endpoints as in a round, waits {SETTLE:?}, then nothing changes for {} s (its periodic reconcile runs every 30 s):",
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
    let goal = GOAL_AGENT_RSS_MB.to_string();
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
    world.stop_agent(HOST);
}

/// Reads `... datapath reconciled fdb_added=N fdb_removed=N neigh_added=N neigh_removed=N
/// elapsed_ms=T`, the agent's tracing line; other lines give `None`.
fn parse_reconciled(line: &str) -> Option<Reconciled> {
    let (_, fields) = line.split_once("datapath reconciled")?;
    let value = |key: &str| {
        fields
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    Some(Reconciled {
        fdb_added: value("fdb_added")?.parse().ok()?,
        neigh_added: value("neigh_added")?.parse().ok()?,
        elapsed_ms: value("elapsed_ms")?.parse().ok()?,
    })
}

/// Builds weft's two devices by hand in a fresh namespace and times iproute2 filling them.
fn baseline_round(
    prefix: &str,
    round: usize,
    entries: &Entries,
    fdb_batch: &Path,
    neigh_batch: &Path,
    with_neigh: bool,
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
    let neigh_ms = with_neigh.then(|| timed(&["ip", "-n", ns, "-batch", path_str(neigh_batch)]));
    check_kernel(ns, entries, with_neigh, "iproute2");
    Baseline { fdb_ms, neigh_ms }
}

/// Runs `argv` to completion and returns its wall time in ms.
fn timed(argv: &[&str]) -> f64 {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    let (elapsed, out) = bench::timed(cmd);
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

/// Checks that `ns`'s VXLAN device holds exactly the expected FDB entries (and neighbour
/// entries, if they were programmed), so neither side is timed for work it did not finish.
fn check_kernel(ns: &str, entries: &Entries, with_neigh: bool, who: &str) {
    let held = fdb(ns, VXLAN_DEV);
    assert!(
        held == entries.fdb,
        "{who}: the kernel holds {} FDB entries with a dst, not the {} expected ({} missing, {} extra)",
        held.len(),
        entries.fdb.len(),
        entries.fdb.difference(&held).count(),
        held.difference(&entries.fdb).count()
    );
    if with_neigh {
        let held = neighbours(ns, VXLAN_DEV);
        assert!(
            held == entries.neighbours,
            "{who}: the kernel holds {} permanent neighbour entries, not the {} expected ({} missing, {} extra)",
            held.len(),
            entries.neighbours.len(),
            entries.neighbours.difference(&held).count(),
            held.difference(&entries.neighbours).count()
        );
    }
}

fn report(weft: &[f64], baseline: &[Baseline]) {
    let weft_ms = median(weft.to_vec());
    let base_ms = median(baseline.iter().map(Baseline::total_ms).collect());
    let fdb_ms = median(baseline.iter().map(|b| b.fdb_ms).collect());
    let neigh: Vec<f64> = baseline.iter().filter_map(|b| b.neigh_ms).collect();
    let ratio = weft_ms / base_ms;
    println!("median of {ROUNDS} rounds:");
    println!("  weft-agent (elapsed_ms it reports)     {weft_ms:7.1} ms");
    println!("  iproute2 (bridge -batch + ip -batch)   {base_ms:7.1} ms");
    println!("    bridge -batch                        {fdb_ms:7.1} ms");
    if neigh.is_empty() {
        println!(
            "    ip -batch                            not run: the agent programmed no neighbour entries"
        );
    } else {
        println!(
            "    ip -batch                            {:7.1} ms",
            median(neigh)
        );
    }
    println!("  ratio weft/iproute2                    {ratio:7.2}");
    println!(
        "target <= {TARGET}: {}",
        if ratio <= TARGET { "met" } else { "missed" }
    );
}
