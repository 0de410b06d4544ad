//! `make bench`: how long `weftctl attach` takes (a static address, and `net:default`) next to the
//! CNI reference `bridge` plugin's ADD with `host-local` IPAM, each on fresh namespaces, measured
//! alternately in one run.
//!
//! Both run through `ip netns exec` in a host namespace (weftctl in the world's host, the plugin
//! in a host namespace of its own), and both start from a host that already has a container
//! attached, so their bridge exists. Each attach and ADD is undone (detach, DEL) before the
//! namespace is deleted, untimed.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, ExitCode};

use serde_json::Value;
use weft_bench::harness::{self, check_interrupted, percentile};
use weft_integration::{Netns, Output, World, exit_code_of};

const ATTACHES: usize = 100;
const CNI_PLUGIN: &str = "/usr/lib/cni/bridge";
const CNI_PATH: &str = "/usr/lib/cni";
const CNI_IF: &str = "eth0";
/// host-local's subnet; the plugin hands out addresses from it in its own host namespace.
const CNI_SUBNET: &str = "10.88.0.0/16";
/// The goal: weft's median at most the bridge plugin's.
const GOAL: &str = "weft p50 <= bridge plugin p50";

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-attach", run)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    WeftStatic,
    WeftDefault,
    Cni,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::WeftStatic, Kind::WeftDefault, Kind::Cni];

    fn label(self) -> &'static str {
        match self {
            Kind::WeftStatic => "weftctl attach IP/LEN",
            Kind::WeftDefault => "weftctl attach net:default",
            Kind::Cni => "CNI bridge ADD (host-local)",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::WeftStatic => "s",
            Kind::WeftDefault => "d",
            Kind::Cni => "c",
        }
    }
}

/// The CNI side: a host namespace of its own, the network configuration, where host-local keeps
/// its allocations.
struct Cni {
    host: Netns,
    config: String,
}

impl Cni {
    fn new(prefix: &str, ipam_dir: &Path) -> Cni {
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("{prefix}-cni"),
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": CNI_SUBNET }]],
                "dataDir": ipam_dir.display().to_string(),
            },
        });
        Cni {
            host: Netns::new(&format!("{prefix}-cnihost")),
            config: config.to_string(),
        }
    }

    /// `bridge` with `CNI_COMMAND` for container namespace `ns`, run in the plugin's host
    /// namespace, stdin not yet given.
    fn command(&self, verb: &str, ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name(), CNI_PLUGIN])
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", ns)
            .env("CNI_NETNS", format!("/var/run/netns/{ns}"))
            .env("CNI_IFNAME", CNI_IF)
            .env("CNI_PATH", CNI_PATH);
        cmd
    }

    /// ADD for `ns`, timed; panics unless it succeeded and gave an address.
    fn add(&self, ns: &str) -> f64 {
        let (took, out) = harness::timed_with_stdin(self.command("ADD", ns), &self.config);
        let result: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        assert!(
            out.success() && result["ips"][0]["address"].is_string(),
            "{CNI_PLUGIN} ADD for {ns}: {:?} {}{}",
            out.code,
            out.stdout,
            out.stderr.trim()
        );
        ms(took)
    }

    fn del(&self, ns: &str) {
        let (_, out) = harness::timed_with_stdin(self.command("DEL", ns), &self.config);
        checked(out, &format!("{CNI_PLUGIN} DEL for {ns}"));
    }
}

fn run() {
    println!(
        "weft-bench-attach: weftctl attach vs the CNI bridge plugin's ADD (host-local IPAM), each on {ATTACHES} fresh namespaces, alternating"
    );
    harness::print_machine();
    println!("CNI plugins: {}", cni_version());
    let scratch = tempfile::tempdir().expect("creating a temp dir");
    let mut world = World::new(1);
    let cni = Cni::new(world.prefix(), &scratch.path().join("cni-ipam"));
    println!("CNI config: {}", cni.config);
    // A container already on each side, so neither is timed creating its bridge.
    let base = world.container(1, "base");
    world.ctl(1, &["attach", &format!("netns:{base}")]);
    let cni_base = Netns::new(&format!("{}-cnibase", world.prefix()));
    cni.add(cni_base.name());
    println!(
        "each attach: a fresh namespace; weftctl through `ip netns exec` in host1, the plugin through `ip netns exec` in its host namespace; then detach / DEL and the namespace deleted, untimed; the order of the three rotates each iteration; `ip netns exec HOST true` is timed too, the cost both share"
    );

    let mut samples: Vec<(Kind, f64)> = Vec::new();
    let mut floor = Vec::new();
    for i in 0..ATTACHES {
        for k in 0..Kind::ALL.len() {
            check_interrupted();
            let kind = Kind::ALL[(i + k) % Kind::ALL.len()];
            let ns = Netns::new(&format!("{}-{}{i}", world.prefix(), kind.tag()));
            let took = match kind {
                Kind::WeftStatic => weft_attach(&world, ns.name(), Some(static_ip(i))),
                Kind::WeftDefault => weft_attach(&world, ns.name(), None),
                Kind::Cni => cni.add(ns.name()),
            };
            samples.push((kind, took));
            if kind == Kind::Cni {
                cni.del(ns.name());
            } else {
                world.ctl(1, &["detach", &format!("netns:{}", ns.name())]);
            }
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &world.host_ns(1), "true"]);
        floor.push(ms(harness::timed(cmd).0));
        if (i + 1) % 10 == 0 {
            println!("  {}/{ATTACHES} iterations done", i + 1);
        }
    }
    cni.del(cni_base.name());
    report(&samples, floor);
    harness::print_load("at end");
}

/// The static address of iteration `i`: in the default network, never used before in the run.
fn static_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 40, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// `weftctl attach [IP/12] netns:NS` on host1, timed; panics unless it printed the address.
fn weft_attach(world: &World, ns: &str, ip: Option<Ipv4Addr>) -> f64 {
    let container = format!("netns:{ns}");
    let addr = ip.map_or("net:default".to_owned(), |ip| format!("{ip}/12"));
    let (took, out) = harness::timed(world.weftctl_command(1, &["attach", &addr, &container]));
    let printed: Option<Ipv4Addr> = out.stdout.trim().parse().ok();
    assert!(
        out.success() && printed.is_some() && (ip.is_none() || printed == ip),
        "weftctl attach {addr} {container}: {:?} {}{}",
        out.code,
        out.stdout,
        out.stderr.trim()
    );
    ms(took)
}

fn report(samples: &[(Kind, f64)], floor: Vec<f64>) {
    let of = |kind: Kind| -> Vec<f64> {
        samples
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, ms)| *ms)
            .collect()
    };
    println!("over {ATTACHES} fresh namespaces each:");
    for kind in Kind::ALL {
        let values = of(kind);
        println!(
            "  {:<28} p50 {:6.1} ms  p99 {:6.1} ms",
            kind.label(),
            percentile(values.clone(), 50.0),
            percentile(values, 99.0)
        );
    }
    println!(
        "  {:<28} p50 {:6.1} ms  (included in each figure above)",
        "ip netns exec HOST true",
        percentile(floor, 50.0)
    );
    let cni = percentile(of(Kind::Cni), 50.0);
    let mut met = true;
    for kind in [Kind::WeftStatic, Kind::WeftDefault] {
        let weft = percentile(of(kind), 50.0);
        met &= weft <= cni;
        println!(
            "  ratio p50 {} / bridge ADD: {:.2}",
            kind.label(),
            weft / cni
        );
    }
    println!("goal: {GOAL}: {}", if met { "met" } else { "missed" });
}

/// The plugins' version, as the plugin reports it to `CNI_COMMAND=VERSION`.
fn cni_version() -> String {
    let deb = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "containernetworking-plugins"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let probe = fs::metadata(CNI_PLUGIN).map_or("missing", |_| "present");
    format!("{CNI_PLUGIN} {probe}, Debian containernetworking-plugins {deb}")
}

fn checked(out: Output, what: &str) {
    assert!(
        out.success(),
        "{what}: {:?} {}",
        out.code,
        out.stderr.trim()
    );
}

fn ms(took: std::time::Duration) -> f64 {
    took.as_secs_f64() * 1000.0
}
