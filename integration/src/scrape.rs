//! Reading weft's `/metrics` as a scraper does: `curl` inside a test namespace, on the agent's or
//! the controller's default `--health-listen`.

use crate::cmd::Output;
use crate::netns::exec;

/// The agent's metrics, from inside its host's namespace.
pub const AGENT_METRICS: &str = "http://127.0.0.1:6785/metrics";
/// The controller's metrics, from inside its namespace.
pub const CONTROLLER_METRICS: &str = "http://127.0.0.1:6788/metrics";

/// `curl ARGS` inside `ns`, failing on errors and after 5 s.
pub fn curl(ns: &str, args: &[&str]) -> Output {
    let mut argv = vec!["curl", "-sS", "--max-time", "5"];
    argv.extend_from_slice(args);
    exec(ns, &argv)
}

/// `curl` of `url` inside `ns`, asking for `accept`: the content type and body.
pub fn scrape_as(ns: &str, url: &str, accept: &str) -> (String, String) {
    let header = format!("Accept: {accept}");
    let out = curl(ns, &["-H", &header, "-w", "\n%{content_type}", url]);
    assert!(out.success(), "curl {url} in {ns}: {}", out.stderr.trim());
    let (body, kind) = out
        .stdout
        .rsplit_once('\n')
        .expect("curl wrote the content type");
    (kind.to_string(), body.to_string())
}

/// The body of `url` inside `ns`, in the format a plain client gets.
pub fn scrape(ns: &str, url: &str) -> String {
    scrape_as(ns, url, "*/*").1
}

/// The value of `series` (name and labels as written) in a scraped `body`, if it is there.
pub fn series_value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}
