//! Summaries of measured durations.

use std::fmt;
use std::time::Duration;

/// Percentiles of a set of durations, nearest rank.
pub struct Spread {
    sorted: Vec<Duration>,
}

impl Spread {
    pub fn new(mut samples: Vec<Duration>) -> Spread {
        samples.sort();
        Spread { sorted: samples }
    }

    /// The smallest sample at least `p` percent of all are not above; zero when empty.
    pub fn percentile(&self, p: f64) -> Duration {
        let n = self.sorted.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.sorted[rank.clamp(1, n) - 1]
    }

    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
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
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.max()),
            self.sorted.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let spread = Spread::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(spread.percentile(50.0), Duration::from_millis(50));
        assert_eq!(spread.percentile(99.0), Duration::from_millis(99));
        assert_eq!(spread.max(), Duration::from_millis(100));
        let five = Spread::new((1..=5).map(Duration::from_millis).collect());
        assert_eq!(five.percentile(50.0), Duration::from_millis(3));
        assert_eq!(Spread::new(vec![]).percentile(99.0), Duration::ZERO);
    }
}
