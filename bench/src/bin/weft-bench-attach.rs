//! `make bench`: how long `weftctl attach` (a static address, and `net:default`) and weft's CNI
//! plugin's ADD take next to the CNI reference `bridge` plugin's ADD with `host-local` IPAM, each
//! on fresh namespaces, measured alternately in one run; and the two plugins' DEL.
//!
//! All run through `ip netns exec` in a host namespace (weftctl and weft-cni in the world's host,
//! the bridge plugin in a host namespace of its own), and all start from a host that already has
//! a container attached, so their bridge exists. Each attach is undone (detach) untimed; each
//! ADD by a DEL, timed.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::Value;
use weft_bench::harness::{self, check_interrupted, percentile};
use weft_integration::{Netns, Output, World, exit_code_of};

const ATTACHES: usize = 100;
const BRIDGE_PLUGIN: &str = "/usr/lib/cni/bridge";
const CNI_PATH: &str = "/usr/lib/cni";
const CNI_IF: &str = "eth0";
/// host-local's subnet; the plugin hands out addresses from it in its own host namespace.
const CNI_SUBNET: &str = "10.88.0.0/16";
/// The issues' goal: weft's median at most the bridge plugin's.
const GOAL: &str = "weft p50 <= bridge plugin p50 (each of weft's three)";

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-attach", run)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    WeftStatic,
    WeftDefault,
    WeftCni,
    Bridge,
    /// The two plugins' DEL, timed after each ADD.
    WeftCniDel,
    BridgeDel,
}

impl Kind {
    /// What each iteration does, in rotating order.
    const ROTATION: [Kind; 4] = [
        Kind::WeftStatic,
        Kind::WeftDefault,
        Kind::WeftCni,
        Kind::Bridge,
    ];
    const WEFT: [Kind; 3] = [Kind::WeftStatic, Kind::WeftDefault, Kind::WeftCni];

    fn label(self) -> &'static str {
        match self {
            Kind::WeftStatic => "weftctl attach IP/LEN",
            Kind::WeftDefault => "weftctl attach net:default",
            Kind::WeftCni => "weft-cni ADD (net:default)",
            Kind::Bridge => "CNI bridge ADD (host-local)",
            Kind::WeftCniDel => "weft-cni DEL",
            Kind::BridgeDel => "CNI bridge DEL (host-local)",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::WeftStatic => "s",
            Kind::WeftDefault => "d",
            Kind::WeftCni | Kind::WeftCniDel => "w",
            Kind::Bridge | Kind::BridgeDel => "c",
        }
    }
}

/// A CNI plugin as a runtime runs it: its binary, the host namespace it runs in, its network
/// configuration.
struct Plugin {
    path: PathBuf,
    host_ns: String,
    config: String,
}

/// The bridge plugin's configuration; host-local keeps its allocations in `ipam_dir`.
fn bridge_config(prefix: &str, ipam_dir: &Path) -> String {
    serde_json::json!({
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
    })
    .to_string()
}

impl Plugin {
    /// The plugin with `CNI_COMMAND` for container namespace `ns`, run in its host namespace,
    /// stdin not yet given.
    fn command(&self, verb: &str, ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host_ns])
            .arg(&self.path)
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
            "{} ADD for {ns}: {:?} {}{}",
            self.path.display(),
            out.code,
            out.stdout,
            out.stderr.trim()
        );
        ms(took)
    }

    /// DEL for `ns`, timed.
    fn del(&self, ns: &str) -> f64 {
        let (took, out) = harness::timed_with_stdin(self.command("DEL", ns), &self.config);
        checked(out, &format!("{} DEL for {ns}", self.path.display()));
        ms(took)
    }
}

fn run() {
    println!(
        "weft-bench-attach: weftctl attach and weft-cni ADD vs the CNI bridge plugin's ADD (host-local IPAM), and both plugins' DEL, each on {ATTACHES} fresh namespaces, alternating"
    );
    harness::print_machine();
    println!("CNI plugins: {}", cni_version());
    let scratch = tempfile::tempdir().expect("creating a temp dir");
    let mut world = World::new(1);
    let bridge_host = Netns::new(&format!("{}-cnihost", world.prefix()));
    let bridge = Plugin {
        path: BRIDGE_PLUGIN.into(),
        host_ns: bridge_host.name().to_string(),
        config: bridge_config(world.prefix(), &scratch.path().join("cni-ipam")),
    };
    let weft = Plugin {
        path: weft_integration::locate_bin("weft-cni"),
        host_ns: world.host_ns(1),
        config: serde_json::json!({
            "cniVersion": "1.0.0", "name": "weft", "type": "weft",
            "socket": world.socket(1),
        })
        .to_string(),
    };
    println!("CNI configs: {} and {}", bridge.config, weft.config);
    // A container already on each side, so none is timed creating its bridge.
    let base = world.container(1, "base");
    world.ctl(1, &["attach", &format!("netns:{base}")]);
    let bridge_base = Netns::new(&format!("{}-cnibase", world.prefix()));
    bridge.add(bridge_base.name());
    println!(
        "each attach: a fresh namespace; weftctl and weft-cni through `ip netns exec` in host1, the bridge plugin through `ip netns exec` in its host namespace; weftctl's undone by a detach, untimed, the plugins' by a DEL, timed; the namespace deleted, untimed; the order of the four rotates each iteration; `ip netns exec HOST true` is timed too, the cost all share"
    );

    let mut samples: Vec<(Kind, f64)> = Vec::new();
    let mut floor = Vec::new();
    for i in 0..ATTACHES {
        for k in 0..Kind::ROTATION.len() {
            check_interrupted();
            let kind = Kind::ROTATION[(i + k) % Kind::ROTATION.len()];
            let ns = Netns::new(&format!("{}-{}{i}", world.prefix(), kind.tag()));
            match kind {
                Kind::WeftStatic | Kind::WeftDefault => {
                    let ip = (kind == Kind::WeftStatic).then(|| static_ip(i));
                    samples.push((kind, weft_attach(&world, ns.name(), ip)));
                    world.ctl(1, &["detach", &format!("netns:{}", ns.name())]);
                }
                Kind::WeftCni => {
                    samples.push((kind, weft.add(ns.name())));
                    samples.push((Kind::WeftCniDel, weft.del(ns.name())));
                }
                _ => {
                    samples.push((kind, bridge.add(ns.name())));
                    samples.push((Kind::BridgeDel, bridge.del(ns.name())));
                }
            }
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &world.host_ns(1), "true"]);
        floor.push(ms(harness::timed(cmd).0));
        if (i + 1) % 10 == 0 {
            println!("  {}/{ATTACHES} iterations done", i + 1);
        }
    }
    bridge.del(bridge_base.name());
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
    for kind in Kind::ROTATION
        .into_iter()
        .chain([Kind::WeftCniDel, Kind::BridgeDel])
    {
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
    let bridge = percentile(of(Kind::Bridge), 50.0);
    let mut met = true;
    for kind in Kind::WEFT {
        let weft = percentile(of(kind), 50.0);
        met &= weft <= bridge;
        println!(
            "  ratio p50 {} / bridge ADD: {:.2}",
            kind.label(),
            weft / bridge
        );
    }
    println!(
        "  ratio p50 weft-cni DEL / bridge DEL: {:.2}",
        percentile(of(Kind::WeftCniDel), 50.0) / percentile(of(Kind::BridgeDel), 50.0)
    );
    println!("goal: {GOAL}: {}", if met { "met" } else { "missed" });
}

/// The plugins' version, as the plugin reports it to `CNI_COMMAND=VERSION`.
fn cni_version() -> String {
    let deb = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "containernetworking-plugins"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let probe = fs::metadata(BRIDGE_PLUGIN).map_or("missing", |_| "present");
    format!("{BRIDGE_PLUGIN} {probe}, Debian containernetworking-plugins {deb}")
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
