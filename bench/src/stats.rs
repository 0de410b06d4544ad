//! Summaries of measured durations, in milliseconds.

use std::fmt;
use std::time::Duration;

use weft_bench::harness::percentile;

/// Durations measured (at least one), for their percentiles.
pub struct Spread {
    ms: Vec<f64>,
}

impl Spread {
    pub fn new(samples: Vec<Duration>) -> Spread {
        Spread {
            ms: samples.into_iter().map(ms).collect(),
        }
    }

    /// The `p`th percentile in milliseconds, by nearest rank (see [`percentile`]).
    pub fn percentile(&self, p: f64) -> f64 {
        percentile(self.ms.clone(), p)
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
            self.percentile(50.0),
            self.percentile(99.0),
            self.percentile(100.0),
            self.ms.len()
        )
    }
}
