//! Prometheus metrics as a scraper sees them: the agent's and the controller's `/metrics` pass
//! `promtool check metrics`, and their counters and gauges move as containers are attached and
//! detached, through the agent and on another host's kernel; the Prometheus files in `deploy/`
//! pass promtool.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use weft_integration::scrape::{
    AGENT_METRICS, CONTROLLER_METRICS, curl, scrape, scrape_as, series_value,
};
use weft_integration::{Background, World, exec, host_addr, wait_until};

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0";
const PROMETHEUS: &str = "127.0.0.1:9090";

/// The value of `series` (name and labels as written) in `body`; 0 if absent.
fn value(body: &str, series: &str) -> f64 {
    series_value(body, series).unwrap_or(0.0)
}

/// What `promtool check metrics` says of `body`: its exit code and output.
fn promtool(body: &str) -> (Option<i32>, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.code(), said.into_owned())
}

#[test]
fn metrics_pass_promtool_and_move_as_containers_come_and_go() {
    let mut world = World::new(2);
    let (h1, h2, ctl) = (world.host_ns(1), world.host_ns(2), world.controller_ns());
    let c = world.container(1, "c");
    let ok = r#"weft_agent_operations_total{operation="attach",result="ok"}"#;
    let gone = r#"weft_agent_operations_total{operation="attach",result="container"}"#;
    let detached = r#"weft_agent_operations_total{operation="detach",result="ok"}"#;
    let fdb_added = r#"weft_agent_kernel_entries_changed_total{table="fdb",change="added"}"#;
    let used = r#"weft_controller_ipam_used_addresses{network="default",subnet="10.32.0.0/12"}"#;
    let commits = r#"weft_controller_commits_total{result="ok"}"#;
    let (agent1, agent2, controller) = (
        scrape(&h1, AGENT_METRICS),
        scrape(&h2, AGENT_METRICS),
        scrape(&ctl, CONTROLLER_METRICS),
    );

    let out = world.weftctl(1, &["attach", &format!("netns:{c}-gone")]);
    assert!(!out.success(), "a container that is not there is refused");
    let out = world.weftctl(1, &["attach", "10.99.0.1/24", &format!("netns:{c}")]);
    assert!(!out.success(), "an address in no network is refused");
    world.ctl(1, &["attach", &format!("netns:{c}")]);
    // One DNS query from the container, so the queries' family has a series to show.
    let dig = exec(
        &c,
        &[
            "dig",
            "+time=2",
            "+tries=1",
            "@127.0.0.11",
            "nosuch.weave.local",
        ],
    );
    assert!(dig.success(), "dig in {c}: {}", dig.stderr);
    let after = scrape(&h1, AGENT_METRICS);
    assert_eq!(value(&after, ok) - value(&agent1, ok), 1.0, "{after}");
    assert_eq!(value(&after, gone) - value(&agent1, gone), 1.0, "{after}");
    assert_eq!(
        value(&after, "weft_agent_controller_connected"),
        1.0,
        "{after}"
    );
    let served = scrape(&ctl, CONTROLLER_METRICS);
    assert_eq!(
        value(&served, used) - value(&controller, used),
        1.0,
        "{served}"
    );
    assert!(
        value(&served, commits) > value(&controller, commits),
        "{served}"
    );
    assert_eq!(
        value(&served, "weft_controller_connected_agents"),
        2.0,
        "{served}"
    );
    assert_eq!(
        value(&served, r#"weft_controller_joins_total{result="ok"}"#),
        2.0
    );
    for (code, more) in [("OK", 1.0), ("InvalidArgument", 1.0)] {
        let rpcs = format!(
            r#"weft_controller_rpcs_total{{method="/weft.v1.Controller/Attach",code="{code}"}}"#
        );
        assert_eq!(
            value(&served, &rpcs) - value(&controller, &rpcs),
            more,
            "{served}"
        );
    }
    assert_eq!(
        value(&served, "weft_controller_revision"),
        value(&after, "weft_agent_revision"),
        "agent and controller at one revision:\n{served}\n{after}"
    );
    // The other host learns of the container and programs its kernel.
    assert!(
        wait_until(Duration::from_secs(5), || {
            value(&scrape(&h2, AGENT_METRICS), fdb_added) > value(&agent2, fdb_added)
        }),
        "host2 reported no FDB entry added: {}",
        scrape(&h2, AGENT_METRICS)
    );

    world.ctl(1, &["detach", &format!("netns:{c}")]);
    let after_detach = scrape(&h1, AGENT_METRICS);
    assert_eq!(
        value(&after_detach, detached) - value(&agent1, detached),
        1.0
    );
    let served = scrape(&ctl, CONTROLLER_METRICS);
    assert_eq!(value(&served, used), value(&controller, used), "{served}");

    for (ns, url) in [
        (&h1, AGENT_METRICS),
        (&h2, AGENT_METRICS),
        (&ctl, CONTROLLER_METRICS),
    ] {
        let (kind, body) = scrape_as(ns, url, "*/*");
        assert!(
            kind.starts_with("text/plain; version=0.0.4"),
            "{url}: {kind}"
        );
        assert_eq!(promtool(&body), (Some(0), String::new()), "{url}:\n{body}");
        let (kind, body) = scrape_as(ns, url, OPENMETRICS);
        assert!(
            kind.starts_with("application/openmetrics-text"),
            "{url}: {kind}"
        );
        assert!(body.ends_with("# EOF\n"), "{url}:\n{body}");
    }
    // Once the probes' first round to the other host is over, every family the dashboard
    // reads is served.
    assert!(
        wait_until(Duration::from_secs(10), || scrape(&h1, AGENT_METRICS)
            .contains("weft_agent_peer_path_mtu_bytes{")),
        "no path MTU to host2 on host1"
    );
    let bodies = [scrape(&h1, AGENT_METRICS), scrape(&ctl, CONTROLLER_METRICS)];
    assert_dashboard_reads(&bodies);
}

/// Every query of `deploy/grafana/weft-dashboard.json` is PromQL that promtool accepts, and every
/// metric it names is one of `bodies` (scraped `/metrics`) serves.
fn assert_dashboard_reads(bodies: &[String]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/weft-dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard"))
            .expect("the dashboard is JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets"))
        .map(|t| t["expr"].as_str().expect("expr"))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let served = |name: &str| {
        bodies.iter().any(|body| {
            body.lines().any(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
                    || l.strip_prefix("# TYPE ")
                        .and_then(|rest| rest.strip_prefix(name))
                        .is_some_and(|rest| rest.starts_with(' '))
            })
        })
    };
    for expr in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("weft_"))
        {
            assert!(
                served(name),
                "the dashboard's {name} is served by nobody ({expr})"
            );
        }
    }
    // PromQL that promtool accepts: each query as a recording rule (JSON is YAML too).
    let rules = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({ "record": format!("dashboard:query{i}"), "expr": expr }))
        .collect::<Vec<_>>() }] });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules.to_string()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "the dashboard's queries: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool ARGS` in `deploy/prometheus/`: it must pass.
fn promtool_in_deploy(args: &[&str]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool runs (Debian's prometheus package)");
    assert!(
        out.status.success(),
        "promtool {} in {}: {}{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The scrape config and alert rules in `deploy/prometheus/`, and the rules' unit tests (each
/// alert fires on the series it is for, and a lag that heals does not fire).
#[test]
fn the_deployed_scrape_config_and_alert_rules_pass_promtool() {
    promtool_in_deploy(&["check", "config", "prometheus.yml"]);
    promtool_in_deploy(&["check", "rules", "weft-rules.yml"]);
    promtool_in_deploy(&["test", "rules", "weft-rules.test.yml"]);
}

/// What the Prometheus server at PROMETHEUS in `ns` answers to the instant query `promql`: the
/// value of each series, by its labels.
fn query(ns: &str, promql: &str) -> Vec<(Value, f64)> {
    let url = format!("http://{PROMETHEUS}/api/v1/query");
    let query = format!("query={promql}");
    // --fail: while it starts, Prometheus answers 503 "Service Unavailable".
    let out = curl(ns, &["--fail", "--get", "--data-urlencode", &query, &url]);
    if !out.success() {
        return Vec::new(); // not ready yet
    }
    let answer: Value = serde_json::from_str(&out.stdout).expect("Prometheus answers JSON");
    answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?)))
        .collect()
}

/// A real Prometheus server (Debian's, in the controller's namespace) scraping the controller
/// and both agents every second gets their series, as OpenMetrics, through its HTTP API.
#[test]
fn a_prometheus_server_scrapes_the_agents_and_the_controller() {
    // The agents' metrics where Prometheus, in another namespace, reaches them.
    let mut world = World::with_agent_args(2, &["--health-listen", "0.0.0.0:6785"]);
    let ctl = world.controller_ns();
    for host in 1..=2 {
        let c = world.container(host, &format!("c{host}"));
        world.ctl(host, &["attach", &format!("netns:{c}")]);
    }
    let dir = tempfile::tempdir().unwrap();
    let agents = format!(r#"["{}:6785", "{}:6785"]"#, host_addr(1), host_addr(2));
    let config = format!(
        "global: {{scrape_interval: 1s}}\n\
         scrape_configs:\n\
         - {{job_name: weft-controller, static_configs: [{{targets: [\"127.0.0.1:6788\"]}}]}}\n\
         - {{job_name: weft-agent, static_configs: [{{targets: {agents}}}]}}\n"
    );
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, config).unwrap();
    let (config_flag, tsdb_flag) = (
        format!("--config.file={}", config_file.display()),
        format!("--storage.tsdb.path={}", dir.path().join("data").display()),
    );
    let mut prometheus = Background::start(
        &ctl,
        "/usr/bin/prometheus",
        &[
            &config_flag,
            &tsdb_flag,
            &format!("--web.listen-address={PROMETHEUS}"),
            "--web.console.templates=/etc/prometheus/consoles",
            "--web.console.libraries=/etc/prometheus/console_libraries",
        ],
        dir.path().join("prometheus.log"),
    );
    let attached = r#"sum(weft_agent_operations_total{operation="attach",result="ok"})"#;
    // Each target's first scrape comes at its own offset within the interval.
    let up = || -> Vec<f64> { query(&ctl, "up").into_iter().map(|(_, v)| v).collect() };
    let got = wait_until(Duration::from_secs(30), || {
        query(&ctl, attached).first().map(|(_, v)| *v) == Some(2.0) && up().len() == 3
    });
    assert!(
        got,
        "Prometheus has no attaches: {:?}; exited {:?}\n{}",
        query(&ctl, attached),
        prometheus.exited(),
        prometheus.log_tail(20)
    );
    assert_eq!(up(), [1.0, 1.0, 1.0], "every target scraped");
    let connected = query(&ctl, "weft_controller_connected_agents");
    assert_eq!(connected.len(), 1, "{connected:?}");
    assert_eq!(connected[0].1, 2.0, "{connected:?}");
    let used = query(
        &ctl,
        r#"weft_controller_ipam_used_addresses{network="default"}"#,
    );
    assert!(used.first().is_some_and(|(_, v)| *v >= 2.0), "{used:?}");
}
