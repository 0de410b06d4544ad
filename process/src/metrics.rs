//! `GET /metrics` bodies: OpenMetrics for a scraper that asks for it (Prometheus does), the
//! Prometheus text format (0.0.4) otherwise, which is what `promtool check metrics` and `curl`
//! readers get. prometheus-client writes only OpenMetrics; the two differ in counters alone:
//! OpenMetrics names the family `x` and its sample `x_total`, the text format names both
//! `x_total` (and has no `# UNIT` or `# EOF` lines). It ends each help text with a full stop.

use std::collections::HashSet;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A histogram of durations from 100 µs to about 13 s: a DNS answer or an fsync up to a
/// reconcile of 10,000 entries or an etcd election.
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The content type and body of `registry`'s metrics for a request with `accept`.
pub fn exposition(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    let mut body = String::new();
    encode(&mut body, registry).expect("writing to a String does not fail");
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (OPENMETRICS, body)
    } else {
        (PROMETHEUS_TEXT, prometheus_text(&body))
    }
}

/// The Prometheus text format of an OpenMetrics exposition.
fn prometheus_text(open_metrics: &str) -> String {
    let counters: HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match described {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                text.push_str(&format!("{p}{name}{total} {tail}\n"));
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    fn registry() -> Registry {
        let mut registry = Registry::with_prefix("weft_test");
        let counter = Counter::<u64>::default();
        counter.inc();
        registry.register("things", "Things done", counter);
        let gauge = Gauge::<i64>::default();
        gauge.set(7);
        registry.register("held", "Things held", gauge);
        registry
    }

    #[test]
    fn the_text_format_names_counter_families_with_their_total() {
        let (kind, body) = exposition(&registry(), None);
        assert_eq!(kind, PROMETHEUS_TEXT);
        assert_eq!(
            body,
            "# HELP weft_test_things_total Things done.\n\
             # TYPE weft_test_things_total counter\n\
             weft_test_things_total 1\n\
             # HELP weft_test_held Things held.\n\
             # TYPE weft_test_held gauge\n\
             weft_test_held 7\n"
        );
    }

    #[test]
    fn a_scraper_asking_for_openmetrics_gets_it_as_written() {
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        let (kind, body) = exposition(&registry(), Some(accept));
        assert_eq!(kind, OPENMETRICS);
        assert!(body.contains("# TYPE weft_test_things counter\nweft_test_things_total 1\n"));
        assert!(body.ends_with("# EOF\n"));
    }
}
