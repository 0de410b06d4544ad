//! `make bench-stores`: the control plane at scale on each store, side by side in one run. First
//! one controller on its embedded store (redb), then two controllers on a three-member etcd, each
//! under the same `weft-load scale` (see [`load::scale`]): on etcd the simulated agents, and the
//! new agents whose full sync is timed, use the two controllers in turn, so both commit to etcd at
//! once and each one's watchers learn of the other's changes through etcd. Prints both runs'
//! figures in one table, the ratios etcd / redb, and the verdict on the goals: on etcd >= 1,000
//! attaches/s, fan-out p99 < 100 ms, a full sync < 1 s from every controller. Arguments are
//! passed on to both runs (e.g. `--agents 100`); the defaults are 1,000 agents with 100
//! endpoints each.

use std::fs;
use std::process::ExitCode;

use serde_json::Value;
use weft_bench::harness::{self, check_interrupted};
use weft_bench::load::{self, GOAL_FANOUT_P99_MS, GOAL_SYNC_MS};
use weft_integration::{Security, World, exit_code_of};

const GOAL_ATTACHES_PER_S: f64 = 1000.0;

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-stores", run)
}

/// The figures of one `weft-load scale` run, from its `--summary`.
struct Figures {
    attaches_per_s: f64,
    fanout_p50_ms: f64,
    fanout_p99_ms: f64,
    /// The median full sync from each controller.
    syncs_ms: Vec<f64>,
    rss_mb: f64,
}

impl Figures {
    fn read(text: &str) -> Figures {
        let json: Value = serde_json::from_str(text).expect("weft-load's summary is JSON");
        let number = |key: &str| {
            json[key]
                .as_f64()
                .unwrap_or_else(|| panic!("weft-load's summary has no {key}: {json}"))
        };
        Figures {
            attaches_per_s: number("attaches_per_s"),
            fanout_p50_ms: number("fanout_p50_ms"),
            fanout_p99_ms: number("fanout_p99_ms"),
            syncs_ms: json["full_sync_median_ms"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default(),
            rss_mb: number("controller_rss_mb"),
        }
    }

    fn slowest_sync(&self) -> f64 {
        self.syncs_ms.iter().copied().fold(0.0, f64::max)
    }
}

/// `weft-load scale` on `world`, its agents also using `spread_over`.
fn measure(store: &str, world: &World, spread_over: &[String], args: &[String]) -> Figures {
    println!("\n== {store} ==");
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = dir.path().join("summary.json");
    load::scale(world, spread_over, args, Some(&summary));
    check_interrupted();
    Figures::read(&fs::read_to_string(&summary).expect("weft-load wrote its summary"))
}

fn run() {
    println!(
        "weft-bench-stores: the control plane at scale on redb (1 controller) and on etcd (2 controllers, 3 members), one after the other"
    );
    harness::print_machine();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let redb = {
        let world = World::with_options(0, &[], Security::Join);
        measure("redb: one controller", &world, &[], &args)
    };
    let etcd = {
        let world = World::on_etcd_controllers(0, 3, 2);
        let second = world.url_of(2);
        measure(
            "etcd: two controllers on three members",
            &world,
            &[second],
            &args,
        )
    };
    println!("\nside by side:");
    println!(
        "  {:<32} {:>10} {:>10} {:>10}",
        "", "redb", "etcd", "etcd/redb"
    );
    let row = |what: &str, r: f64, e: f64| {
        println!("  {what:<32} {r:>10.1} {e:>10.1} {:>10.2}", e / r);
    };
    row("attaches/s", redb.attaches_per_s, etcd.attaches_per_s);
    row("fan-out p50 (ms)", redb.fanout_p50_ms, etcd.fanout_p50_ms);
    row("fan-out p99 (ms)", redb.fanout_p99_ms, etcd.fanout_p99_ms);
    row(
        "full sync, slowest median (ms)",
        redb.slowest_sync(),
        etcd.slowest_sync(),
    );
    row("first controller's RSS (MB)", redb.rss_mb, etcd.rss_mb);
    let syncs: Vec<String> = etcd
        .syncs_ms
        .iter()
        .enumerate()
        .map(|(k, ms)| format!("controller {}: {ms:.1} ms", k + 1))
        .collect();
    println!(
        "  full sync on etcd, median by controller: {}",
        syncs.join(", ")
    );
    println!("goals (on etcd):");
    harness::goal(
        "attaches >= 1,000/s",
        etcd.attaches_per_s >= GOAL_ATTACHES_PER_S,
        format!("{:.0}/s", etcd.attaches_per_s),
    );
    harness::goal(
        "fan-out to every watcher, p99 < 100 ms",
        etcd.fanout_p99_ms < GOAL_FANOUT_P99_MS,
        format!("{:.1} ms", etcd.fanout_p99_ms),
    );
    harness::goal(
        "full sync of a new agent < 1 s from every controller (median)",
        !etcd.syncs_ms.is_empty() && etcd.slowest_sync() < GOAL_SYNC_MS,
        format!("{:.1} ms", etcd.slowest_sync()),
    );
    harness::print_load("at the end");
}
