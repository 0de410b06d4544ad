//! `make bench-controller`: weft-controller under a fleet of simulated agents. A world with a
//! controller and no hosts; `weft-load scale` runs in the controller's namespace against the
//! real controller process with its own store in the world's temp dir (see [`load::scale`]).
//! Mutual TLS, as deployed: each simulated agent has a client certificate naming it, from the
//! controller's CA. Arguments are passed on to `weft-load scale`, e.g. `--agents 100` for a
//! quicker run; the defaults are 1,000 agents with 100 endpoints each.

use std::process::ExitCode;

use weft_bench::harness::{self, check_interrupted};
use weft_bench::load;
use weft_integration::{Security, World, exit_code_of};

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-controller", run)
}

fn run() {
    println!(
        "weft-bench-controller: weft-controller under many simulated agents (weft-load scale)"
    );
    harness::print_machine();
    let world = World::with_options(0, &[], Security::Join);
    let args: Vec<String> = std::env::args().skip(1).collect();
    load::scale(&world, &[], &args, None);
    check_interrupted();
    harness::print_load("at the end");
}
