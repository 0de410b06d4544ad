//! `make bench-failover`: how long attaches fail on a host whose controller dies, with two
//! controllers on a three-member etcd. Each round SIGKILLs the controller host1's agent follows
//! and times, on the wall clock, from the kill to the end of the first `weftctl attach` on host1
//! that succeeds (tried again 50 ms after each failure, each bounded by the agent's 1.5 s); then
//! it starts the dead controller again, so the next round kills the other one. Prints each
//! round, p50 and p99, and the verdict against the goal (p99 <= 3 s). `--rounds N` (default 12).

use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

use weft_bench::harness::{self, check_interrupted, percentile};
use weft_integration::{World, exit_code_of, wait_until};

const GOAL_P99: Duration = Duration::from_secs(3);
/// A round that has not attached by then is a failure of the benchmark, not a figure.
const GIVE_UP: Duration = Duration::from_secs(60);
const PAUSE: Duration = Duration::from_millis(50);
/// How long a restarted controller and the agents get to settle before the next kill.
const SETTLE: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-failover", run)
}

fn rounds() -> usize {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => 12,
        [flag, n] if flag == "--rounds" => n
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| panic!("--rounds takes a count of at least 1, not {n:?}")),
        _ => panic!("usage: weft-bench-failover [--rounds N]"),
    }
}

/// Which controller host `host`'s agent follows now, once it is connected.
fn followed(world: &World, host: usize) -> usize {
    let mut url = String::new();
    let connected = wait_until(SETTLE, || {
        let link = &world.status(host)["controller"];
        url = link["url"].as_str().unwrap_or_default().to_string();
        link["connected"] == true
    });
    assert!(connected, "host{host}'s agent is not connected: {url}");
    (1..=2)
        .find(|&k| world.url_of(k) == url)
        .unwrap_or_else(|| panic!("host{host} follows {url}, none of the world's controllers"))
}

fn run() {
    let rounds = rounds();
    println!(
        "weft-bench-failover: a controller SIGKILLed -> the first successful attach on a host that followed it ({rounds} rounds; 2 controllers, 3 etcd members)"
    );
    harness::print_machine();
    let mut world = World::on_etcd_controllers(2, 3, 2);
    let containers: Vec<String> = (0..rounds)
        .map(|i| world.container(1, &format!("f{i}")))
        .collect();
    let mut times = Vec::new();
    for (round, container) in containers.iter().enumerate() {
        let dead = followed(&world, 1);
        let target = format!("netns:{container}");
        let killed = Instant::now();
        world.kill_controller_at(dead);
        let mut failures = 0;
        let took = loop {
            let out = world.weftctl(1, &["attach", &target]);
            if out.success() {
                break killed.elapsed();
            }
            failures += 1;
            assert!(
                killed.elapsed() < GIVE_UP,
                "round {round}: no attach succeeded {GIVE_UP:?} after the kill: {}",
                out.stderr.trim()
            );
            sleep(PAUSE);
        };
        check_interrupted();
        let now = followed(&world, 1);
        println!(
            "round {:2}: controller {dead} killed, attach through controller {now} after {:.0} ms ({failures} attaches failed before)",
            round + 1,
            took.as_secs_f64() * 1000.0
        );
        times.push(took.as_secs_f64() * 1000.0);
        world.start_controller_at(dead, &[]);
        // Both agents connected again before the next kill.
        followed(&world, 2);
        sleep(Duration::from_secs(1));
    }
    let (p50, p99) = (percentile(times.clone(), 50.0), percentile(times, 99.0));
    let verdict = if p99 <= GOAL_P99.as_secs_f64() * 1000.0 {
        "met"
    } else {
        "missed"
    };
    println!(
        "failover: p50 {p50:.0} ms, p99 {p99:.0} ms over {rounds} rounds; goal p99 <= {} ms: {verdict}",
        GOAL_P99.as_millis()
    );
    harness::print_load("at the end");
}
