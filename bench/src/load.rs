//! `weft-load scale` in a harness world: run in the first controller's namespace (its thousands
//! of connections go over the underlay to real controller processes), reading that controller's
//! /proc entries, each simulated agent with a client certificate from the control plane's CA.

use std::path::Path;
use std::time::Duration;

use weft_integration::{World, exec_shown, locate_bin};

/// One run: about 3 minutes at the defaults (1,000 agents, 100 endpoints each), most of it the
/// agents joining; generous for larger sizes and busier machines.
const TIMEOUT: Duration = Duration::from_secs(1800);

/// The control plane's goals, judged by `weft-load scale` and by the benchmarks comparing its runs.
pub const GOAL_SYNC_MS: f64 = 1000.0;
pub const GOAL_FANOUT_P99_MS: f64 = 100.0;
pub const GOAL_RSS_MB: f64 = 500.0;

/// Runs `weft-load scale` against `world`'s first controller, its simulated agents also using
/// the controllers at `spread_over`, with `args` passed on (e.g. `--agents 100`), writing its
/// figures to `summary` if given. Panics, after weft-load has shown its error, if it fails.
pub fn scale(world: &World, spread_over: &[String], args: &[String], summary: Option<&Path>) {
    let pid = world
        .controller_pid()
        .expect("the controller runs")
        .to_string();
    let load = locate_bin("weft-load");
    let mut argv = vec![
        load.to_str().expect("path is UTF-8").to_owned(),
        "--controller".into(),
        world.url_of(1),
        "scale".into(),
        "--controller-pid".into(),
        pid,
        "--sign-with".into(),
        world.controller_dir().display().to_string(),
    ];
    for url in spread_over {
        argv.extend(["--spread-over".into(), url.clone()]);
    }
    if let Some(path) = summary {
        argv.extend(["--summary".into(), path.display().to_string()]);
    }
    argv.extend(args.iter().cloned());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    assert!(
        exec_shown(&world.controller_ns(), &argv, TIMEOUT),
        "weft-load scale failed (its error is above)"
    );
}
