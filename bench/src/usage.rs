//! What a process costs while something happens, as the kernel accounts it: resident memory
//! (`/proc/PID/status` VmRSS and VmHWM) and CPU time (`/proc/PID/stat` utime + stime).

use std::fmt;
use std::fs;
use std::time::{Duration, Instant};

use crate::harness::field_kib;
use anyhow::{Context, anyhow};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often a meter reads the resident memory, for its peak over the span.
const RSS_EVERY: Duration = Duration::from_millis(100);

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    rss_kib: u64,
    /// The largest resident memory since the process started.
    hwm_kib: u64,
    /// User plus system CPU time since the process started.
    cpu: Duration,
}

fn sample(pid: u32) -> anyhow::Result<Sample> {
    let status_path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&status_path)
        .with_context(|| format!("cannot read {status_path}: has process {pid} exited?"))?;
    let kib =
        |key: &str| field_kib(&status, key).ok_or_else(|| anyhow!("no {key} in {status_path}"));
    let (rss_kib, hwm_kib) = (kib("VmRSS")?, kib("VmHWM")?);
    let stat_path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&stat_path)
        .with_context(|| format!("cannot read {stat_path}: has process {pid} exited?"))?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last
    // `)`, where field 3 (state) comes first, so utime (14) and stime (15) are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("cannot read the CPU times in {stat_path}"))
    };
    let ticks = ticks(11)? + ticks(12)?;
    Ok(Sample {
        at: Instant::now(),
        rss_kib,
        hwm_kib,
        cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks_per_sec() as f64),
    })
}

fn clock_ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        // Linux's USER_HZ on every architecture it runs on.
        .unwrap_or(100)
}

/// Measures one process from `start` to `stop`: CPU used, and resident memory at the end and at
/// its largest in between.
pub struct Meter {
    pid: u32,
    first: Sample,
    stop: oneshot::Sender<()>,
    peak: JoinHandle<u64>,
}

impl Meter {
    pub fn start(pid: u32) -> anyhow::Result<Meter> {
        let first = sample(pid)?;
        let (stop, mut stopped) = oneshot::channel();
        let peak = tokio::spawn(async move {
            let mut peak = first.rss_kib;
            let mut every = tokio::time::interval(RSS_EVERY);
            loop {
                tokio::select! {
                    _ = &mut stopped => return peak,
                    _ = every.tick() => {
                        if let Ok(s) = sample(pid) {
                            peak = peak.max(s.rss_kib);
                        }
                    }
                }
            }
        });
        Ok(Meter {
            pid,
            first,
            stop,
            peak,
        })
    }

    pub async fn stop(self) -> anyhow::Result<Usage> {
        let last = sample(self.pid)?;
        let _ = self.stop.send(());
        let peak = self.peak.await.context("the memory sampler failed")?;
        Ok(Usage {
            wall: last.at - self.first.at,
            cpu: last.cpu.saturating_sub(self.first.cpu),
            rss_kib: last.rss_kib,
            rss_peak_kib: peak.max(last.rss_kib),
            hwm_kib: last.hwm_kib,
        })
    }
}

/// What a process used over a span of time.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub wall: Duration,
    pub cpu: Duration,
    /// Resident memory at the end of the span.
    pub rss_kib: u64,
    /// The largest resident memory seen during the span (read every 100 ms).
    pub rss_peak_kib: u64,
    /// The largest resident memory since the process started (VmHWM).
    pub hwm_kib: u64,
}

impl Usage {
    /// CPU time over wall time, in percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// In MB (10^6 bytes), the unit the goals are stated in.
pub fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CPU {:.2} s in {:.1} s ({:.1} % of one core); RSS {:.1} MiB at the end, {:.1} MiB at most (VmHWM {:.1} MiB)",
            self.cpu.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.cpu_percent(),
            mib(self.rss_kib),
            mib(self.rss_peak_kib),
            mib(self.hwm_kib)
        )
    }
}
