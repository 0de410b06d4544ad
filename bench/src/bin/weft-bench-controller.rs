//! `make bench`: weft-controller under a fleet of simulated agents. A world with a controller and
//! no hosts; `weft-load scale` runs in the controller's namespace (so its 2,000 connections go
//! over loopback to a real controller process with its own store in the world's temp dir) and
//! reads the controller's /proc entries. Mutual TLS, as deployed: each simulated agent has a
//! client certificate naming it, from the controller's CA. Arguments are passed on to `weft-load scale`, e.g.
//! `--agents 100` for a quicker run; the defaults are 1,000 agents with 100 endpoints each.

use std::process::ExitCode;
use std::time::Duration;

use weft_bench::harness::{self, check_interrupted};
use weft_integration::{Security, World, exec_shown, exit_code_of, locate_bin};

/// The whole run: about 3 minutes at the defaults, most of it the 1,000 agents joining (2 minutes);
/// generous for larger sizes and busier machines.
const TIMEOUT: Duration = Duration::from_secs(1800);

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-controller", run)
}

fn run() {
    println!(
        "weft-bench-controller: weft-controller under many simulated agents (weft-load scale)"
    );
    harness::print_machine();
    // Mutual TLS, as deployed: weft-load gives each simulated agent a certificate from the
    // controller's CA.
    let world = World::with_options(0, &[], Security::Join);
    let pid = world
        .controller_pid()
        .expect("the controller runs")
        .to_string();
    let load = locate_bin("weft-load");
    let mut argv = vec![
        load.to_str().expect("path is UTF-8").to_owned(),
        "--controller".into(),
        world.controller_url().into(),
        "scale".into(),
        "--controller-pid".into(),
        pid,
        "--sign-with".into(),
        world.controller_dir().display().to_string(),
    ];
    argv.extend(std::env::args().skip(1));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let ok = exec_shown(&world.controller_ns(), &argv, TIMEOUT);
    check_interrupted();
    assert!(ok, "weft-load scale failed (its error is above)");
    harness::print_load("at the end");
}
