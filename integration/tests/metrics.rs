//! Prometheus metrics as a scraper sees them: the agent's and the controller's `/metrics` pass
//! `promtool check metrics`, and their counters and gauges move as containers are attached and
//! detached, through the agent and on another host's kernel.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_integration::{World, exec, wait_until};

const AGENT: &str = "http://127.0.0.1:6785/metrics";
const CONTROLLER: &str = "http://127.0.0.1:6788/metrics";
const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0";

/// `curl` of `url` inside `ns`, asking for `accept`: the content type and body.
fn scrape_as(ns: &str, url: &str, accept: &str) -> (String, String) {
    let header = format!("Accept: {accept}");
    let out = exec(
        ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-H",
            &header,
            "-w",
            "\n%{content_type}",
            url,
        ],
    );
    assert!(out.success(), "curl {url} in {ns}: {}", out.stderr.trim());
    let (body, kind) = out
        .stdout
        .rsplit_once('\n')
        .expect("curl wrote the content type");
    (kind.to_string(), format!("{body}\n").replace("\n\n", "\n"))
}

fn scrape(ns: &str, url: &str) -> String {
    scrape_as(ns, url, "*/*").1
}

/// The value of `series` (name and labels as written) in `body`; 0 if absent.
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
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
    let used = r#"weft_controller_ipam_used_addresses{network="default"}"#;
    let commits = r#"weft_controller_commits_total{result="ok"}"#;
    let (agent1, agent2, controller) = (
        scrape(&h1, AGENT),
        scrape(&h2, AGENT),
        scrape(&ctl, CONTROLLER),
    );

    let out = world.weftctl(1, &["attach", &format!("netns:{c}-gone")]);
    assert!(!out.success(), "a container that is not there is refused");
    world.ctl(1, &["attach", &format!("netns:{c}")]);
    let after = scrape(&h1, AGENT);
    assert_eq!(value(&after, ok) - value(&agent1, ok), 1.0, "{after}");
    assert_eq!(value(&after, gone) - value(&agent1, gone), 1.0, "{after}");
    assert_eq!(
        value(&after, "weft_agent_controller_connected"),
        1.0,
        "{after}"
    );
    let served = scrape(&ctl, CONTROLLER);
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
        value(&served, "weft_controller_revision"),
        value(&after, "weft_agent_revision"),
        "agent and controller at one revision:\n{served}\n{after}"
    );
    // The other host learns of the container and programs its kernel.
    assert!(
        wait_until(Duration::from_secs(5), || {
            value(&scrape(&h2, AGENT), fdb_added) > value(&agent2, fdb_added)
        }),
        "host2 reported no FDB entry added: {}",
        scrape(&h2, AGENT)
    );

    world.ctl(1, &["detach", &format!("netns:{c}")]);
    let after_detach = scrape(&h1, AGENT);
    assert_eq!(
        value(&after_detach, detached) - value(&agent1, detached),
        1.0
    );
    let served = scrape(&ctl, CONTROLLER);
    assert_eq!(value(&served, used), value(&controller, used), "{served}");

    for (ns, url) in [(&h1, AGENT), (&h2, AGENT), (&ctl, CONTROLLER)] {
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
}
