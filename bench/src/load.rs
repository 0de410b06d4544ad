//! weft-load in a harness world: `populate`, run in a host's namespace with that host's
//! certificate; and `scale`, run in the first controller's namespace (its thousands of
//! connections go over the underlay to real controller processes), reading that controller's
//! /proc entries, each simulated agent with a client certificate from the control plane's CA.

use std::fs;
use std::path::Path;
use std::time::Duration;

use weft_integration::{World, exec_for, exec_shown, locate_bin};

use crate::harness::check_interrupted;

/// Generous: 10,000 attaches take a few seconds; 1.5 to 2 minutes before the controller grouped
/// its commits and found free addresses without walking the held ones.
const POPULATE_TIMEOUT: Duration = Duration::from_secs(240);

/// The start of a weft-load command line as host `host`: its controller, its certificate.
pub fn as_host(world: &World, host: usize) -> Vec<String> {
    let mut argv = vec![locate_bin("weft-load").display().to_string()];
    argv.extend(world.load_args(host));
    argv
}

/// `weft-load populate` as host `host` (its certificate, in its namespace): registers the peer
/// `host<host>` anew at `advertise_addr` and attaches `endpoints` containers `load-0`, ...,
/// with `extra` flags (e.g. `--dns-names`). Prints what weft-load printed; returns each
/// endpoint's `(MAC, IP)`, in container order. Panics, naming weft-load's error, if it fails.
pub fn populate(
    world: &World,
    host: usize,
    advertise_addr: &str,
    endpoints: usize,
    extra: &[String],
) -> Vec<(String, String)> {
    let scratch = tempfile::tempdir().expect("creating a temp dir");
    let list = scratch.path().join("endpoints.txt");
    let mut argv = as_host(world, host);
    argv.extend(
        [
            "populate",
            "--peer",
            &format!("host{host}"),
            "--advertise-addr",
            advertise_addr,
            "--endpoints",
            &endpoints.to_string(),
            "--list",
            &list.display().to_string(),
        ]
        .map(String::from),
    );
    argv.extend(extra.iter().cloned());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = exec_for(&world.host_ns(host), &argv, POPULATE_TIMEOUT);
    // Ctrl-C reaches weft-load too; say so rather than report its silent death.
    check_interrupted();
    assert!(out.success(), "weft-load failed: {}", out.stderr.trim());
    print!("  {}", out.stdout);
    let text = fs::read_to_string(&list).expect("reading weft-load's list");
    let made: Vec<(String, String)> = text
        .lines()
        .map(|line| {
            let (mac, cidr) = line
                .split_once(' ')
                .expect("weft-load lines are `MAC IP/LEN`");
            let ip = cidr.split_once('/').map_or(cidr, |(ip, _)| ip);
            (mac.to_owned(), ip.to_owned())
        })
        .collect();
    assert_eq!(
        made.len(),
        endpoints,
        "weft-load made a different number of endpoints"
    );
    made
}

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
