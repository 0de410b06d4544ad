//! Creating, entering and deleting network namespaces through the `ip` command.

use std::env;
use std::io::{self, Write};
use std::path::Path;
use std::process::Command;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::cmd::{self, Output};

/// Tools the harness shells out to; `ss` (iproute2) tells when the controller listens.
const TOOLS: [&str; 4] = ["ip", "bridge", "ping", "ss"];

/// Fails loudly, rather than letting tests pass vacuously, when the machine cannot host a world.
pub fn require_privileges_and_tools() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "weft integration tests need root (network namespaces, veth, bridge, vxlan); run them as root"
    );
    for tool in TOOLS {
        assert!(
            in_path(tool),
            "`{tool}` is not in PATH; install iproute2 and iputils-ping (`make test` does)"
        );
    }
}

/// Whether a program named `tool` is in `$PATH`.
pub fn in_path(tool: &str) -> bool {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path).any(|dir| dir.join(tool).is_file())
}

/// Creates namespace `name` with its loopback up.
pub fn add(name: &str) {
    cmd::check(command(&["ip", "netns", "add", name]));
    ip(name, &["link", "set", "lo", "up"]);
}

/// Deletes namespace `name`, which also destroys every interface inside it, once every process
/// left in it is killed: one that outlives its starter on purpose (the agent's wireguard-go)
/// would keep the namespace alive. Best effort, and silent on a closed stderr: it runs during
/// cleanup, where it must neither mask the test's own result nor panic a second time.
pub fn del(name: &str) {
    let pids = cmd::run(command(&["ip", "netns", "pids", name])).stdout;
    for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let out = cmd::run(command(&["ip", "netns", "del", name]));
    if !out.success() {
        let _ = writeln!(
            io::stderr(),
            "weft-integration: cannot delete netns {name}: {}",
            out.stderr.trim()
        );
    }
}

/// Turns IPv6 off in namespace `ns`, for the interfaces there and those created later. Without
/// it every new interface sends router solicitations and MLD reports for a while, frames a test
/// counting what reaches an interface would mistake for leaks. `/proc/sys/net` shows the
/// namespace of the process that opens it, so the machine's own settings are untouched; the
/// shell writes it because `sysctl` (procps) is not among the tools a world needs.
pub fn disable_ipv6(ns: &str) {
    let script = "for s in all default; do echo 1 > /proc/sys/net/ipv6/conf/$s/disable_ipv6; done";
    cmd::check(in_netns(ns, "sh", &["-c", script]));
}

/// Runs `ip -n NS ARGS...` and panics unless it succeeds.
pub fn ip(ns: &str, args: &[&str]) -> Output {
    let mut cmd = command(&["ip", "-n", ns]);
    cmd.args(args);
    cmd::check(cmd)
}

/// Runs `bridge -n NS ARGS...` and panics unless it succeeds.
pub fn bridge(ns: &str, args: &[&str]) -> Output {
    let mut cmd = command(&["bridge", "-n", ns]);
    cmd.args(args);
    cmd::check(cmd)
}

/// Runs `args` inside namespace `ns` and reports how it ended.
pub fn exec(ns: &str, args: &[&str]) -> Output {
    cmd::run(in_netns(ns, args[0], &args[1..]))
}

/// [`exec`] with the environment variables `env` set.
pub fn exec_env(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = in_netns(ns, args[0], &args[1..]);
    cmd.envs(env.iter().copied());
    cmd::run(cmd)
}

/// Whether a process in `ns` listens on TCP `port`.
pub fn listening(ns: &str, port: u16) -> bool {
    let filter = format!("sport = :{port}");
    !exec(ns, &["ss", "-Hltn", &filter]).stdout.trim().is_empty()
}

/// [`exec`] for a command that may need longer than the harness's usual limit, e.g. a load
/// generator; it is killed after `timeout`.
pub fn exec_for(ns: &str, args: &[&str], timeout: Duration) -> Output {
    cmd::run_for(in_netns(ns, args[0], &args[1..]), timeout)
}

/// Runs `args` inside namespace `ns` with its output shown as it comes (see
/// [`cmd::run_shown`]); returns whether it succeeded.
pub fn exec_shown(ns: &str, args: &[&str], timeout: Duration) -> bool {
    cmd::run_shown(in_netns(ns, args[0], &args[1..]), timeout)
}

/// A namespace outside any world (loopback up), deleted when dropped, also while panicking:
/// for a reference measurement that must start from an empty kernel each time.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        add(name);
        Netns {
            name: name.to_owned(),
        }
    }

    /// Names the network namespace of process `pid` `name` (`ip netns attach`), which keeps it
    /// alive after the process is gone, as a runtime that holds a pod's namespace does.
    pub fn of_process(name: &str, pid: u32) -> Netns {
        cmd::check(command(&["ip", "netns", "attach", name, &pid.to_string()]));
        Netns {
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        del(&self.name);
    }
}

/// A command that runs `program` inside `ns`. `ip netns exec` execs it in place, so the spawned
/// pid is the program's own and signals reach it directly.
pub fn in_netns(ns: &str, program: impl AsRef<Path>, args: &[&str]) -> Command {
    let mut cmd = command(&["ip", "netns", "exec", ns]);
    cmd.arg(program.as_ref()).args(args);
    cmd
}

/// A UDP socket bound to an ephemeral port in namespace `ns` (IPv6, which also sends to IPv4
/// as mapped addresses): a test sends hand-made packets from it.
pub fn udp_socket(ns: &str) -> std::net::UdpSocket {
    let path = format!("/run/netns/{ns}");
    thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering {ns}: {e}"));
            // A socket stays in the namespace it was made in.
            std::net::UdpSocket::bind("[::]:0").expect("a UDP socket")
        })
        .join()
        .expect("the thread that makes the socket")
    })
}

/// Whether one ping from `ns` to `ip` gets an answer within a second.
pub fn ping(ns: &str, ip: &str) -> bool {
    ping_n(ns, ip, 1).success()
}

/// Sends `count` pings from `ns` to `ip`, each waiting at most a second for its answer.
pub fn ping_n(ns: &str, ip: &str, count: u32) -> Output {
    let count = count.to_string();
    exec(
        ns,
        &["ping", "-n", "-c", &count, "-i", "0.2", "-W", "1", ip],
    )
}

/// Starts `count` pings from `ns` to `ip`, `interval` apart, in a thread, each waiting at most a
/// second for its answer: traffic that runs while a test breaks something. Join the thread and
/// read the outcome with [`ping_counts`].
pub fn ping_in_background(
    ns: &str,
    ip: &str,
    count: u64,
    interval: Duration,
) -> JoinHandle<Output> {
    let (ns, ip, count) = (ns.to_owned(), ip.to_owned(), count.to_string());
    let interval = format!("{:.3}", interval.as_secs_f64());
    thread::spawn(move || {
        exec(
            &ns,
            &[
                "ping", "-n", "-q", "-c", &count, "-i", &interval, "-W", "1", &ip,
            ],
        )
    })
}

/// (transmitted, received) from the summary ping prints last. Panics, showing the output, when
/// there is none: a ping that never ran must not pass as one that lost nothing.
pub fn ping_counts(out: &Output) -> (u64, u64) {
    let summary = out
        .stdout
        .lines()
        .find(|l| l.contains(" packets transmitted, "))
        .unwrap_or_else(|| panic!("no ping summary in:\n{}{}", out.stdout, out.stderr));
    // `200 packets transmitted, 198 received, +2 errors, 1% packet loss, time 19900ms`
    let count = |i: usize| {
        summary
            .split(", ")
            .nth(i)
            .and_then(|part| part.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cannot read ping summary {summary:?}"))
    };
    (count(0), count(1))
}

fn command(argv: &[&str]) -> Command {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    cmd
}
