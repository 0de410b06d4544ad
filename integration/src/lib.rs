//! Test harness for weft: builds a throwaway world of network namespaces (an underlay bridge, a
//! controller, N hosts), runs the real weft binaries inside it, and tears it all down on drop.
//!
//! Nothing is configured in the machine's root network namespace, and every namespace name carries
//! a per-process, per-world prefix so tests can run in parallel. Real Docker-style containers come
//! from [`Podman`], named with a prefix of the same kind.

mod bins;
pub mod capture;
mod cmd;
pub mod cni;
mod daemon;
mod docker_cli;
pub mod dockerd;
mod etcd;
mod kernel;
mod netns;
mod outsider;
mod podman;
pub mod podman_cni;
mod run;
pub mod scrape;
pub mod views;
mod world;

use std::thread::sleep;
use std::time::{Duration, Instant};

pub use bins::{bin_dir, locate_bin};
pub use cmd::Output;
pub use daemon::{Background, Paused};
pub use docker_cli::DockerCli;
pub use dockerd::DockerEngine;
pub use etcd::Etcd;
pub use kernel::{
    Link, arp_in, count_arp_in, fdb, link, links, neighbours, rx_packets, tx_dropped, tx_packets,
};
pub use netns::{
    Netns, bridge, disable_ipv6, exec, exec_for, exec_shown, ip, listening, ping, ping_counts,
    ping_in_background, ping_n, udp_socket,
};
pub use outsider::Outsider;
pub use podman::{CONTAINER_IMAGE, Podman};
pub use run::exit_code_of;
pub use world::{
    Alone, BRIDGE, CONTROLLER_IP, CONTROLLER_URL, CONTROLLER_URL_INSECURE, MAX_HOSTS, Security,
    UNDERLAY_IF, VXLAN_DEV, World, host_addr,
};

/// The all-zero MAC of the FDB entries that flood broadcast, multicast and unknown unicast.
pub const FLOOD_MAC: &str = "00:00:00:00:00:00";

/// Checks the shape every weftctl error shares (exit status 1, one stderr line starting
/// `weftctl: `) and that the line contains `needle`, the culprit the message must name.
pub fn assert_rejected(out: &Output, needle: &str) {
    assert_eq!(
        out.code,
        Some(1),
        "exit status; stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("weftctl: ") && lines[0].contains(needle),
        "stderr must be one `weftctl: ` line containing {needle:?}, not {:?}",
        out.stderr
    );
}

/// How long a path across hosts may take to work after the change that makes it.
const CONVERGE: Duration = Duration::from_secs(5);

/// Pings until the path converges, then requires a clean run of three.
pub fn assert_reaches(from: &str, ip: &str) {
    assert_pings(from, ip, |count| ping_n(from, ip, count));
}

/// [`assert_reaches`] with `ping(count)` sending the pings, wherever `from` is.
fn assert_pings(from: &str, ip: &str, ping: impl Fn(u32) -> Output) {
    assert!(
        wait_until(CONVERGE, || ping(1).success()),
        "{from} cannot reach {ip}"
    );
    let run = ping(3);
    assert!(
        run.success() && run.stdout.contains(" 0% packet loss"),
        "{from} -> {ip} lost packets:\n{}",
        run.stdout
    );
}

/// Polls `check` every 100 ms until it returns true or `timeout` has passed; returns whether it
/// did. Convergence across hosts is asynchronous, so assertions about it must poll.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(100));
    }
}
