//! What every benchmark binary shares: stopping cleanly on Ctrl-C, saying what machine and load
//! it ran on, timing a command exactly, and summarising samples.

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

use weft_integration::{Output, bin_dir};

/// Set by SIGINT or SIGTERM: the run stops at the next [`check_interrupted`] by panicking, so
/// that unwinding deletes every namespace it made, which dying of the signal would leave behind.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that [`check_interrupted`] acts on.
pub fn stop_on_interrupt() {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe. Children
        // get the default disposition back at exec, so Ctrl-C still stops them.
        unsafe { signal::sigaction(sig, &action) }.expect("installing a signal handler");
    }
}

/// Prints the verdict on one goal, with the figure it was judged on.
pub fn goal(what: &str, met: bool, figure: String) {
    println!(
        "  {what}: {} ({figure})",
        if met { "met" } else { "MISSED" }
    );
}

/// Panics (and so cleans up) once SIGINT or SIGTERM has arrived.
pub fn check_interrupted() {
    assert!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
}

/// Prints the CPUs, memory, kernel, iproute2 and which build of the weft binaries is measured.
pub fn print_machine() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = field(&cpuinfo, "model name").unwrap_or("unknown CPU");
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = field_kib(&meminfo, "MemTotal").unwrap_or(0) as f64;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "machine: {cpus} CPUs ({model}), {:.1} GiB memory, Linux {}",
        mem_kib / (1024.0 * 1024.0),
        kernel.trim()
    );
    println!("iproute2: {}", tool_version(&["ip", "-V"]));
    println!(
        "binaries: {} ({} build of this benchmark)",
        bin_dir().display(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    print_load("at start");
}

/// Prints the 1, 5 and 15 minute load averages: the machine is shared, and a figure taken
/// under load must say so.
pub fn print_load(when: &str) {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let averages: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("load average {when}: {}", averages.join(" "));
}

/// What a tool prints about its version, e.g. `ip -V`: its first line that says "version"
/// (dnsperf's help names the tool first), else its first line; or why there is none.
pub fn tool_version(argv: &[&str]) -> String {
    match Command::new(argv[0]).args(&argv[1..]).output() {
        Ok(out) => {
            let text = [out.stdout, out.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            let line = text
                .lines()
                .find(|l| l.to_ascii_lowercase().contains("version"))
                .or_else(|| text.lines().next());
            line.unwrap_or("").trim().to_owned()
        }
        Err(e) => format!("cannot run {}: {e}", argv[0]),
    }
}

/// The value of the first `key: value` line of a /proc file.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == key))
        .map(|(_, v)| v.trim())
}

/// The value of the first `key: N kB` line of a /proc file, in KiB (e.g. VmRSS, MemTotal).
pub fn field_kib(text: &str, key: &str) -> Option<u64> {
    field(text, key)?.trim_end_matches("kB").trim().parse().ok()
}

/// Runs `cmd` to completion (no stdin) and returns its wall time with what it left. Not the
/// harness's runner: that one polls every 10 ms, too coarse for what is measured with this.
pub fn timed(cmd: Command) -> (Duration, Output) {
    timed_with_stdin(cmd, "")
}

/// [`timed`] for a command that reads `input` on its stdin (a CNI plugin, its configuration).
pub fn timed_with_stdin(mut cmd: Command, input: &str) -> (Duration, Output) {
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("writing to {shown}'s stdin: {e}"));
    // Closing stdin is the end of the input.
    drop(stdin);
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {shown}: {e}"));
    (started.elapsed(), Output::from(out))
}

/// The median; the mean of the middle two for an even count.
pub fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "median of no samples");
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The `p`th percentile (0 < p <= 100) by nearest rank: the smallest sample with at least p% of
/// the samples at or below it, so p99 of 100 samples is the second largest.
pub fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    assert!(!values.is_empty(), "percentile of no samples");
    values.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Where the true median lies, from samples alone: two of them, and how sure that is.
pub struct Interval {
    pub low: f64,
    pub high: f64,
    /// The chance that `low..=high` holds the true median.
    pub confidence: f64,
}

/// The narrowest interval of the sorted samples `[x(k), x(n+1-k)]` that holds the true median
/// with at least 95 % confidence, or, with too few samples for that, their whole range. How
/// many samples fall below the median is Binomial(n, 1/2) whatever the distribution (the sign
/// test), so the interval needs no model of the machine's noise.
pub fn median_interval(mut values: Vec<f64>) -> Interval {
    assert!(!values.is_empty(), "interval of no samples");
    values.sort_by(f64::total_cmp);
    let n = values.len();
    // below[j]: the chance that at most j samples fall below the median.
    let mut below = Vec::with_capacity(n + 1);
    let (mut ways, mut sum, all) = (1.0, 0.0, 2f64.powi(n as i32));
    for j in 0..=n {
        sum += ways;
        below.push(sum / all);
        ways = ways * (n - j) as f64 / (j + 1) as f64;
    }
    let mut k = 1;
    while k < n.div_ceil(2) && 1.0 - 2.0 * below[k] >= 0.95 {
        k += 1;
    }
    Interval {
        low: values[k - 1],
        high: values[n - k],
        confidence: 1.0 - 2.0 * below[k - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let status = "Name:\tweft-agent\nVmHWM:\t   26312 kB\nVmRSS:\t   26300 kB\n";
        assert_eq!(field(status, "Name"), Some("weft-agent"));
        assert_eq!(field_kib(status, "VmRSS"), Some(26300));
        assert_eq!(field_kib(status, "VmHWM"), Some(26312));
        assert_eq!(field_kib(status, "VmSwap"), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn median_interval_by_the_sign_test() {
        // Nine samples: the 2nd and 8th, which hold the median with 1 - 2 * 10/512.
        let nine = median_interval((1..=9).rev().map(f64::from).collect());
        assert_eq!((nine.low, nine.high), (2.0, 8.0));
        assert!((nine.confidence - (1.0 - 20.0 / 512.0)).abs() < 1e-12);
        // Five are too few for 95 %: the whole range, at 1 - 2/32.
        let five = median_interval(vec![5.0, 1.0, 4.0, 2.0, 3.0]);
        assert_eq!((five.low, five.high), (1.0, 5.0));
        assert!((five.confidence - 0.9375).abs() < 1e-12);
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(hundred.clone(), 50.0), 50.0);
        assert_eq!(percentile(hundred.clone(), 99.0), 99.0);
        assert_eq!(percentile(hundred, 100.0), 100.0);
        assert_eq!(percentile(vec![7.0], 99.0), 7.0);
    }
}
