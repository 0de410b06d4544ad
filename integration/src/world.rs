//! The world: an underlay namespace holding a bridge, a controller namespace and N host
//! namespaces wired to it by veths, the weft processes running in them, and the container
//! namespaces a test asks for. Everything is undone on drop, also while a test panics.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{self, Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::bins::{Bins, locate_bin};
use crate::cmd::{self, Output};
use crate::daemon::Daemon;
use crate::etcd::{self, Etcd};
use crate::netns;
use crate::outsider::Outsider;

/// Where agents reach the controller, as passed to `weft-agent --controller` (TLS, the
/// default); [`Security::Insecure`] worlds use [`CONTROLLER_URL_INSECURE`].
pub const CONTROLLER_URL: &str = "https://198.18.0.100:6786";
/// The same in plaintext, for `--insecure` worlds.
pub const CONTROLLER_URL_INSECURE: &str = "http://198.18.0.100:6786";
/// The agent's bridge for the default network.
pub const BRIDGE: &str = "weave";
/// The agent's VXLAN device for the default network.
pub const VXLAN_DEV: &str = "vxlan-6784";

/// The controller's underlay address, the host part of [`CONTROLLER_URL`].
pub const CONTROLLER_IP: &str = "198.18.0.100";
const CONTROLLER_PORT: u16 = 6786;
/// Name of the underlay-facing veth in every namespace plugged into the underlay.
pub const UNDERLAY_IF: &str = "ul0";
const UNDERLAY_BRIDGE: &str = "br0";
/// The most hosts a world has: the underlay's /23 holds them (see [`host_addr`]).
pub const MAX_HOSTS: usize = 250;
/// The most agents a world starts at once; a larger one starts them one by one.
const JOIN_TOGETHER: usize = 20;
/// How long a started process gets to become usable.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: usize = 40;

/// How the world's agents and controller talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Mutual TLS: the controller makes its own CA; each agent joins with a token from
    /// `weftctl token create` and keeps its certificate in its state dir.
    Join,
    /// `--insecure` on both sides: plaintext, no authentication.
    Insecure,
}

/// Distinguishes the worlds of one test process; the pid distinguishes test processes.
static WORLDS: AtomicUsize = AtomicUsize::new(0);

/// Worlds of one test process share it: each holds it shared while it lives, and a heavy test
/// (hundreds of namespaces, a thousand operations) holds it alone, so the tight time bounds of
/// other tests never meet its load.
static LOAD: RwLock<()> = RwLock::new(());

thread_local! {
    /// This thread holds LOAD alone: its worlds need no share of it.
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Held by a heavy test while it runs: no other world of the process runs meanwhile.
pub struct Alone {
    _guard: RwLockWriteGuard<'static, ()>,
}

impl Alone {
    /// Waits until no other world of this process runs, and keeps new ones waiting.
    pub fn take() -> Alone {
        let guard = LOAD
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ALONE.with(|a| a.set(true));
        Alone { _guard: guard }
    }
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|a| a.set(false));
    }
}

/// `name` for the first controller, `name` and `k` for controller `k` of several.
fn numbered(name: &str, k: usize) -> String {
    if k == 1 {
        name.to_owned()
    } else {
        format!("{name}{k}")
    }
}

fn controller_ns(prefix: &str, k: usize) -> String {
    numbered(&format!("{prefix}-ctl"), k)
}

/// The family of a world's underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    /// 198.18.0.0/23: hosts at [`host_addr`], controllers at [`CONTROLLER_IP`] and after.
    V4,
    /// 2001:db8::/64, nothing of IPv4 on it: host N at 2001:db8::N (hex), controller K at
    /// 2001:db8::c:K.
    V6,
}

impl Underlay {
    fn host(self, host: usize) -> String {
        match self {
            Underlay::V4 => host_addr(host),
            Underlay::V6 => format!("2001:db8::{host:x}"),
        }
    }

    /// Controller `k`'s underlay address: [`CONTROLLER_IP`] for the first, the next ones after.
    fn controller(self, k: usize) -> String {
        match self {
            Underlay::V4 => format!("198.18.0.{}", 99 + k),
            Underlay::V6 => format!("2001:db8::c:{k:x}"),
        }
    }

    fn prefix_len(self) -> u8 {
        match self {
            Underlay::V4 => 23,
            Underlay::V6 => 64,
        }
    }

    /// `addr` as the host of a URL or a socket address.
    fn bracketed(self, addr: &str) -> String {
        match self {
            Underlay::V4 => addr.to_owned(),
            Underlay::V6 => format!("[{addr}]"),
        }
    }
}

fn admin_socket(dir: &Path, k: usize) -> PathBuf {
    dir.join(format!("{}.sock", numbered("admin", k)))
}

/// The MAC of the underlay interface holding `addr`: made from the address (its last four
/// bytes), so that a large world can pin every neighbour before its interface exists.
fn underlay_mac(addr: &str) -> String {
    let ip: std::net::IpAddr = addr.parse().expect("an underlay address");
    let [a, b, c, d] = match ip {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Underlay address of host `host` (1-based), which its agent advertises: 198.18.0.N up to 99
/// (the controllers and etcd members have the addresses above), then 198.18.1.1, ....
pub fn host_addr(host: usize) -> String {
    match host {
        ..100 => format!("198.18.0.{host}"),
        _ => format!("198.18.1.{}", host - 99),
    }
}

/// A running test world. Hosts are numbered from 1, as their names (`host1`, ...) are.
pub struct World {
    prefix: String,
    dir: TempDir,
    bins: Bins,
    /// Every namespace made, in creation order, so drop can delete them all.
    namespaces: Vec<String>,
    /// The controllers, the first the one of [`CONTROLLER_URL`]; each behind a lock so a test
    /// can crash and restart it through `&World` while other threads run weftctl against the
    /// same world. Several only on etcd, where they share the tables.
    controllers: Vec<Mutex<Daemon>>,
    /// Each behind a lock for the same reason: a test crashes one while others use the world.
    agents: Vec<Mutex<Daemon>>,
    /// Flags every agent gets after the harness's own, e.g. `--mtu 1400`.
    agent_args: Vec<String>,
    /// Container namespaces and the host each was made for, for failure reports.
    containers: Vec<(String, usize)>,
    security: Security,
    underlay: Underlay,
    /// The join token each host's agent was started with (Security::Join).
    join_tokens: Vec<String>,
    /// The etcd cluster the controller keeps its tables in (`--store etcd`), if any.
    etcd: Option<Etcd>,
    /// Its share of LOAD (none in a heavy test, which holds it alone); dropped last.
    _load: Option<RwLockReadGuard<'static, ()>>,
}

impl World {
    /// Builds the underlay, starts the controller and `hosts` agents (none: a controller alone),
    /// and returns once every agent answers `weftctl ps`. Panics with the reason (and the
    /// processes' logs) otherwise.
    pub fn new(hosts: usize) -> World {
        World::with_agent_args(hosts, &[])
    }

    /// [`World::new`] with `agent_args` added to every agent's command line.
    pub fn with_agent_args(hosts: usize, agent_args: &[&str]) -> World {
        World::with_options(hosts, agent_args, Security::Join)
    }

    /// [`World::with_agent_args`] with the given security.
    pub fn with_options(hosts: usize, agent_args: &[&str], security: Security) -> World {
        World::build(hosts, agent_args, security, 0, 1, Underlay::V4, &[])
    }

    /// [`World::new`] with `controller_args` added to the controller's command line from its
    /// first start, e.g. `--ipalloc-range6 fd00:77::/64` (fixed when its store is made).
    pub fn with_controller_args(hosts: usize, controller_args: &[&str]) -> World {
        World::build(
            hosts,
            &[],
            Security::Join,
            0,
            1,
            Underlay::V4,
            controller_args,
        )
    }

    /// [`World::with_agent_args`] on an IPv6-only underlay ([`Underlay::V6`]): the agents find
    /// their IPv6 advertise address from the controller's URL, `https://[2001:db8::c:1]:6786`.
    pub fn on_ipv6_underlay(hosts: usize, agent_args: &[&str]) -> World {
        World::build(hosts, agent_args, Security::Join, 0, 1, Underlay::V6, &[])
    }

    /// [`World::new`], its controller keeping its tables in an etcd cluster of `members`.
    pub fn on_etcd(hosts: usize, members: usize) -> World {
        World::build(hosts, &[], Security::Join, members, 1, Underlay::V4, &[])
    }

    /// [`World::on_etcd`] with `controllers` controllers on the one etcd prefix, each in its own
    /// namespace; host `h` joins controller `(h - 1) % controllers + 1` (with a token of the
    /// first), and is given the others' URLs after its own, to fail over to.
    pub fn on_etcd_controllers(hosts: usize, members: usize, controllers: usize) -> World {
        assert!(
            (1..=9).contains(&controllers),
            "a world has 1 to 9 controllers, not {controllers}"
        );
        World::build(
            hosts,
            &[],
            Security::Join,
            members,
            controllers,
            Underlay::V4,
            &[],
        )
    }

    fn build(
        hosts: usize,
        agent_args: &[&str],
        security: Security,
        etcd_members: usize,
        controllers: usize,
        underlay: Underlay,
        controller_args: &[&str],
    ) -> World {
        netns::require_privileges_and_tools();
        assert!(
            hosts <= MAX_HOSTS,
            "a world has at most {MAX_HOSTS} hosts, not {hosts}"
        );
        let bins = Bins::locate();
        let prefix = format!(
            "wft{}x{}",
            process::id(),
            WORLDS.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .expect("creating the world's temp dir");
        let etcd = (etcd_members > 0).then(|| Etcd::new(&prefix, dir.path(), etcd_members));
        let controllers = (1..=controllers)
            .map(|k| {
                let mut args = vec![
                    "--listen".into(),
                    format!(
                        "{}:{CONTROLLER_PORT}",
                        underlay.bracketed(&underlay.controller(k))
                    ),
                    "--data-dir".into(),
                    dir.path()
                        .join(numbered("controller", k))
                        .display()
                        .to_string(),
                ];
                if let Some(etcd) = &etcd {
                    args.extend(["--store".into(), "etcd".into()]);
                    args.extend(["--etcd-endpoints".into(), etcd.endpoints()]);
                }
                args.extend(controller_args.iter().map(|a| a.to_string()));
                match security {
                    Security::Join => args.extend([
                        "--admin-socket".into(),
                        admin_socket(dir.path(), k).display().to_string(),
                    ]),
                    Security::Insecure => args.push("--insecure".into()),
                }
                let log = dir
                    .path()
                    .join(format!("{}.log", numbered("controller", k)));
                let daemon = Daemon::new(
                    &controller_ns(&prefix, k),
                    bins.controller.clone(),
                    args,
                    log,
                );
                Mutex::new(daemon)
            })
            .collect();
        // From here on a panic drops `world`, which undoes whatever was built so far.
        let mut world = World {
            prefix,
            dir,
            bins,
            namespaces: Vec::new(),
            controllers,
            agents: Vec::new(),
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            containers: Vec::new(),
            security,
            underlay,
            join_tokens: Vec::new(),
            etcd,
            _load: (!ALONE.with(|a| a.get()))
                .then(|| LOAD.read().unwrap_or_else(|poisoned| poisoned.into_inner())),
        };
        let underlay = format!("{}-ul", world.prefix);
        world.add_ns(&underlay);
        netns::ip(
            &underlay,
            &["link", "add", UNDERLAY_BRIDGE, "type", "bridge"],
        );
        netns::ip(&underlay, &["link", "set", UNDERLAY_BRIDGE, "up"]);
        let members = world.etcd.as_ref().map_or(0, Etcd::members);
        for n in 1..=members {
            let ns = etcd::member_ns(&world.prefix, n);
            world.add_ns(&ns);
            world.plug(&ns, &format!("e{n}"), &etcd::member_addr(n));
        }
        if let Some(etcd) = &world.etcd {
            etcd.start();
        }
        for k in 1..=world.controllers.len() {
            let ns = controller_ns(&world.prefix, k);
            world.add_ns(&ns);
            world.plug(&ns, &numbered("ctl", k), &world.underlay.controller(k));
            world.start_controller_at(k, &[]);
        }
        let large = hosts > JOIN_TOGETHER;
        if large {
            for k in 1..=world.controllers.len() {
                world.pin_neighbours(&controller_ns(&world.prefix, k), hosts);
            }
        }
        for host in 1..=hosts {
            world.add_host(host, large.then_some(hosts));
            // In a large world each agent joins once the one before is in: every join wakes
            // every agent already in, and a hundred joining at once starve two cores for longer
            // than a join waits.
            if large {
                world.wait_agent_ready(host);
            }
        }
        for host in 1..=hosts {
            world.wait_agent_ready(host);
        }
        world
    }

    /// The underlay address of host `host`, which its agent advertises.
    pub fn vtep(&self, host: usize) -> String {
        self.underlay.host(host)
    }

    /// The etcd cluster of a world made by [`World::on_etcd`].
    pub fn etcd(&self) -> &Etcd {
        self.etcd
            .as_ref()
            .expect("this world has no etcd (World::on_etcd makes one)")
    }

    /// How many hosts the world has.
    pub fn hosts(&self) -> usize {
        self.agents.len()
    }

    /// The controller's admin socket (`weftctl token create --admin-socket`).
    pub fn admin_socket(&self) -> PathBuf {
        admin_socket(self.dir.path(), 1)
    }

    /// Which controller host `host`'s agent joined and talks to first (1-based).
    pub fn controller_of(&self, host: usize) -> usize {
        (host - 1) % self.controllers.len() + 1
    }

    /// The controller's data dir (its CA is there).
    pub fn controller_dir(&self) -> PathBuf {
        self.dir.path().join("controller")
    }

    /// Host `host`'s agent state dir, where its joined certificate is kept.
    pub fn state_dir(&self, host: usize) -> PathBuf {
        self.dir.path().join(format!("host{host}-state"))
    }

    /// A fresh join token from the (first) controller's admin API, valid for `ttl` (e.g. "1h").
    /// Controllers on etcd share their tokens: it joins at any of them.
    pub fn token(&self, ttl: &str) -> String {
        let admin = self.admin_socket();
        let admin = admin.to_str().expect("socket path is UTF-8");
        let mut cmd = Command::new(&self.bins.ctl);
        cmd.args(["token", "create", "--ttl", ttl, "--admin-socket", admin]);
        let out = cmd::run(cmd);
        assert!(
            out.success(),
            "weftctl token create failed ({:?}): {}",
            out.code,
            out.stderr.trim()
        );
        out.stdout.trim().to_string()
    }

    /// The join token host `host`'s agent used (used up by now).
    pub fn join_token(&self, host: usize) -> &str {
        self.check_host(host);
        &self.join_tokens[host - 1]
    }

    /// weft-load's flags to reach the controller as host `host`'s agent does (its URL and, over
    /// TLS, its certificate).
    pub fn load_args(&self, host: usize) -> Vec<String> {
        let mut args = vec![
            "--controller".to_string(),
            self.url_of(self.controller_of(host)),
        ];
        if self.security == Security::Join {
            let dir = self.state_dir(host);
            for (flag, file) in [
                ("--tls-ca", "ca.pem"),
                ("--tls-cert", "cert.pem"),
                ("--tls-key", "key.pem"),
            ] {
                args.extend([flag.to_string(), dir.join(file).display().to_string()]);
            }
        }
        args
    }

    /// `weftctl status --json` on host `host`.
    pub fn status(&self, host: usize) -> serde_json::Value {
        let out = self.ctl(host, &["status", "--json"]);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("status --json on host{host}: {e}: {out}"))
    }

    /// The controller's tables as the controller itself holds them, from `weft-load dump` run
    /// in host1's namespace with host1's identity.
    pub fn controller_tables(&self) -> serde_json::Value {
        self.tables_via(1)
    }

    /// The tables as host `host`'s controller holds them, dumped with that host's identity.
    pub fn tables_via(&self, host: usize) -> serde_json::Value {
        let out = self.dump_via(host);
        assert!(out.success(), "weft-load dump: {}", out.stderr.trim());
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("weft-load dump printed no JSON ({e}):\n{}", out.stdout))
    }

    /// `weft-load dump` of host `host`'s controller's tables, as it ended.
    pub fn dump_via(&self, host: usize) -> Output {
        let load = locate_bin("weft-load");
        let mut argv = vec![load.display().to_string()];
        argv.extend(self.load_args(host));
        argv.extend(["dump".into(), "--peer".into(), format!("host{host}")]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        netns::exec_for(&self.host_ns(host), &argv, Duration::from_secs(10))
    }

    /// The prefix of every namespace name in this world, e.g. `wft1234x0`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The controller's namespace, where [`CONTROLLER_URL`] is a local address.
    pub fn controller_ns(&self) -> String {
        controller_ns(&self.prefix, 1)
    }

    /// The controller's process id while it runs.
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller().pid()
    }

    /// Host `host`'s agent's process id while it runs.
    pub fn agent_pid(&self, host: usize) -> Option<u32> {
        self.agent(host).pid()
    }

    /// The namespace of host `host`.
    pub fn host_ns(&self, host: usize) -> String {
        format!("{}-h{host}", self.prefix)
    }

    /// The directory host `host`'s agent serves Docker's driver in (as `weft.sock`): a dockerd
    /// of that host sees it as its `/run/docker/plugins`.
    pub fn docker_plugin_dir(&self, host: usize) -> PathBuf {
        self.dir.path().join(format!("host{host}-plugins"))
    }

    /// The agent socket of host `host`.
    pub fn socket(&self, host: usize) -> PathBuf {
        self.dir.path().join(format!("host{host}.sock"))
    }

    /// Makes a namespace `<prefix>-<name>` on the underlay at `addr` that is no weft host (a
    /// machine beyond the overlay), counting what it gets from host `host` (see [`Outsider`]).
    pub fn counting_outsider(&mut self, name: &str, addr: &str, host: usize) -> Outsider {
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&ns);
        self.plug(&ns, &format!("o-{name}"), addr);
        Outsider::counting(ns, &self.vtep(host))
    }

    /// Makes an empty container namespace `<prefix>-<name>` (loopback up) to be attached on
    /// host `host`, and returns its name; weftctl refers to it as `netns:<name>`.
    pub fn container(&mut self, host: usize, name: &str) -> String {
        self.check_host(host);
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&ns);
        self.containers.push((ns.clone(), host));
        ns
    }

    /// Runs `weftctl --socket <host's socket> ARGS...` in host `host`'s namespace.
    pub fn weftctl(&self, host: usize, args: &[&str]) -> Output {
        self.weftctl_at(host, &self.socket(host), args)
    }

    /// Runs weftctl on `host`, requires success, and returns what it printed.
    pub fn ctl(&self, host: usize, args: &[&str]) -> String {
        let out = self.weftctl(host, args);
        assert!(
            out.success(),
            "weftctl {} on host{host} failed ({:?}): {}",
            args.join(" "),
            out.code,
            out.stderr.trim()
        );
        out.stdout
    }

    /// `weftctl attach ADDRS... netns:CONTAINER` on `host` (no ADDR: the default network), which
    /// must succeed; returns the IPs it printed, unterminated.
    pub fn attach(&self, host: usize, addrs: &[&str], container: &str) -> String {
        let target = format!("netns:{container}");
        let mut args = vec!["attach"];
        args.extend_from_slice(addrs);
        args.push(&target);
        self.ctl(host, &args).trim_end().to_owned()
    }

    /// Runs weftctl in host `host`'s namespace against an arbitrary agent socket.
    pub fn weftctl_at(&self, host: usize, socket: &Path, args: &[&str]) -> Output {
        cmd::run(self.weftctl_command_at(host, socket, args))
    }

    /// The command [`World::weftctl`] runs, for a caller that times it itself.
    pub fn weftctl_command(&self, host: usize, args: &[&str]) -> Command {
        self.weftctl_command_at(host, &self.socket(host), args)
    }

    fn weftctl_command_at(&self, host: usize, socket: &Path, args: &[&str]) -> Command {
        let socket = socket.to_str().expect("socket path is UTF-8");
        let mut argv = vec!["--socket", socket];
        argv.extend_from_slice(args);
        let mut cmd = netns::in_netns(&self.host_ns(host), &self.bins.ctl, &argv);
        // weftctl's stderr is asserted on: keep the caller's log filter from adding lines to it.
        cmd.env_remove("RUST_LOG");
        cmd
    }

    /// SIGKILLs the controller, as a crash would.
    pub fn kill_controller(&self) {
        self.kill_controller_at(1);
    }

    /// SIGKILLs controller `k`.
    pub fn kill_controller_at(&self, k: usize) {
        self.controller_at(k).kill();
    }

    /// Cuts controller `k` off from every etcd member, both ways, or (`cut` false) heals that:
    /// a partition its agents are not part of. Each side's packets to the other are dropped by
    /// a blackhole route.
    pub fn cut_from_etcd(&self, k: usize, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        let controller = format!("{}/32", self.underlay.controller(k));
        for n in 1..=self.etcd().members() {
            let member = format!("{}/32", etcd::member_addr(n));
            let ns = etcd::member_ns(&self.prefix, n);
            netns::ip(&ns, &["route", verb, "blackhole", &controller]);
            let ns = controller_ns(&self.prefix, k);
            netns::ip(&ns, &["route", verb, "blackhole", &member]);
        }
    }

    /// (Re)starts the controller and waits until it listens.
    pub fn start_controller(&self) {
        self.start_controller_with(&[]);
    }

    /// [`World::start_controller`] with `extra` flags, for this run only.
    pub fn start_controller_with(&self, extra: &[&str]) {
        self.start_controller_at(1, extra);
    }

    /// (Re)starts controller `k` with `extra` flags and waits until it listens.
    pub fn start_controller_at(&self, k: usize, extra: &[&str]) {
        self.controller_at(k).start_with(extra);
        let ctl_ns = controller_ns(&self.prefix, k);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.controller_at(k).exited() {
                panic!("weft-controller {k} exited ({status}) before listening");
            }
            if netns::listening(&ctl_ns, CONTROLLER_PORT) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weft-controller not listening on {}:{CONTROLLER_PORT} after {READY_TIMEOUT:?}",
                self.underlay.controller(k)
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// Runs the (stopped) controller with `extra` flags to its end, as for a start it must refuse;
    /// fails if it is still running after [`READY_TIMEOUT`].
    pub fn run_controller(&self, extra: &[&str]) -> Output {
        let cmd = self.controller().command(extra);
        cmd::run_for(cmd, READY_TIMEOUT)
    }

    /// Sends the controller SIGTERM; returns how it ended if it did within `limit` (it is
    /// SIGKILLed when the world ends otherwise).
    pub fn terminate_controller(&self, limit: Duration) -> Option<ExitStatus> {
        self.controller().terminate(limit)
    }

    /// How the controller ended, if it has (say, at a failpoint).
    pub fn controller_exited(&self) -> Option<ExitStatus> {
        self.controller().exited()
    }

    /// Stops host `host`'s agent with SIGTERM (SIGKILL if it lingers).
    pub fn stop_agent(&self, host: usize) {
        self.agent(host).stop();
    }

    /// SIGKILLs host `host`'s agent, as a crash would.
    pub fn kill_agent(&self, host: usize) {
        self.agent(host).kill();
    }

    /// How host `host`'s agent ended, if it has (say, after `weftctl reset`).
    pub fn agent_exited(&self, host: usize) -> Option<ExitStatus> {
        self.agent(host).exited()
    }

    /// (Re)starts host `host`'s agent and waits until it is ready.
    pub fn start_agent(&self, host: usize) {
        self.agent(host).start();
        self.wait_agent_ready(host);
    }

    /// Restarts host `host`'s agent with `extra` flags after its own, for this run only, and
    /// waits until it is ready.
    pub fn restart_agent_with(&self, host: usize, extra: &[&str]) {
        {
            let mut agent = self.agent(host);
            agent.stop();
            agent.start_with(extra);
        }
        self.wait_agent_ready(host);
    }

    /// Starts host `host`'s agent and returns at once, for a caller that watches the kernel
    /// for what it does.
    pub fn spawn_agent(&self, host: usize) {
        self.agent(host).start();
    }

    /// (Re)starts host `host`'s agent without waiting for it to have the controller's tables
    /// (an agent that refuses them never has); returns once it answers `weftctl status`.
    pub fn launch_agent(&self, host: usize) {
        self.agent(host).start();
        let answers =
            crate::wait_until(READY_TIMEOUT, || self.weftctl(host, &["status"]).success());
        assert!(
            answers,
            "weft-agent on host{host} does not answer after {READY_TIMEOUT:?}"
        );
    }

    /// The log file of host `host`'s agent; restarts append to it.
    pub fn agent_log(&self, host: usize) -> PathBuf {
        self.agent(host).log().to_path_buf()
    }

    /// Runs `weft-controller ARGS...` to its end in the controller's namespace (beside the
    /// controller, which it does not touch), e.g. `backup FILE --data-dir DIR`.
    pub fn weft_controller(&self, args: &[&str]) -> Output {
        let program = self.bins.controller.to_str().expect("UTF-8 path");
        let mut argv = vec![program];
        argv.extend_from_slice(args);
        netns::exec_for(&self.controller_ns(), &argv, READY_TIMEOUT)
    }

    /// How many snapshots host `host`'s agent has taken from a controller, as its log says; a
    /// resume takes none.
    pub fn agent_snapshots(&self, host: usize) -> usize {
        let log = std::fs::read_to_string(self.agent_log(host)).expect("the agent's log");
        log.matches("snapshot received").count()
    }

    /// The controller's log file; restarts append to it.
    pub fn controller_log(&self) -> PathBuf {
        self.controller().log().to_path_buf()
    }

    /// The controller's daemon. A panic while the lock was held (a failed start) does not make
    /// it unusable: drop must still stop the process and report its log.
    fn controller(&self) -> MutexGuard<'_, Daemon> {
        self.controller_at(1)
    }

    fn controller_at(&self, k: usize) -> MutexGuard<'_, Daemon> {
        let count = self.controllers.len();
        assert!(
            (1..=count).contains(&k),
            "no controller {k}: this world has {count}"
        );
        self.controllers[k - 1]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last line of a third agent, in host1's namespace, that tries to join controller `k`
    /// as `host3` with `token`: it must fail before it touches anything and write nothing in
    /// its state dir.
    pub fn join_failure(&self, k: usize, token: &str) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let (state, socket) = (dir.path().join("state"), dir.path().join("agent.sock"));
        let url = self.url_of(k);
        let addr = self.vtep(1);
        let agent = self.bins.agent.to_str().expect("UTF-8 path");
        let argv = [
            agent,
            "--controller",
            &url,
            "--name",
            "host3",
            "--advertise-addr",
            &addr,
            "--socket",
            socket.to_str().expect("UTF-8 path"),
            "--state-dir",
            state.to_str().expect("UTF-8 path"),
            "--join",
            token,
        ];
        let out = netns::exec_for(&self.host_ns(1), &argv, READY_TIMEOUT);
        assert_eq!(
            out.code,
            Some(1),
            "weft-agent joined with {token}: {}",
            out.stderr
        );
        let written: Vec<_> = std::fs::read_dir(&state)
            .map(|dir| {
                dir.map(|e| e.expect("state dir entry").file_name())
                    .collect()
            })
            .unwrap_or_default();
        assert!(written.is_empty(), "a refused join wrote {written:?}");
        out.stderr.lines().last().unwrap_or_default().to_string()
    }

    /// The URL agents reach controller `k` at.
    pub fn url_of(&self, k: usize) -> String {
        let scheme = match self.security {
            Security::Join => "https",
            Security::Insecure => "http",
        };
        let host = self.underlay.bracketed(&self.underlay.controller(k));
        format!("{scheme}://{host}:{CONTROLLER_PORT}")
    }

    /// Host `host`'s agent daemon; like [`World::controller`], usable after a panic under it.
    fn agent(&self, host: usize) -> MutexGuard<'_, Daemon> {
        self.check_host(host);
        self.agents[host - 1]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_host(&self, host: usize) {
        let count = self.agents.len();
        assert!(
            (1..=count).contains(&host),
            "no host{host}: this world has {count} hosts"
        );
    }

    fn add_ns(&mut self, ns: &str) {
        netns::add(ns);
        self.namespaces.push(ns.to_owned());
    }

    /// Links namespace `ns` to the underlay bridge through a veth (`port` on the bridge side,
    /// `ul0` inside `ns`) and gives it `addr` on the underlay's prefix. The veth is created
    /// inside the underlay namespace, so the root namespace never holds any of it.
    fn plug(&self, ns: &str, port: &str, addr: &str) {
        let underlay = format!("{}-ul", self.prefix);
        netns::ip(
            &underlay,
            &[
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_IF,
                "netns",
                ns,
            ],
        );
        netns::ip(
            &underlay,
            &["link", "set", port, "master", UNDERLAY_BRIDGE, "up"],
        );
        let mac = underlay_mac(addr);
        netns::ip(
            ns,
            &[
                "link",
                "set",
                UNDERLAY_IF,
                "address",
                &mac,
                "mtu",
                "1500",
                "up",
            ],
        );
        // No duplicate address detection: an IPv6 address is usable at once.
        let cidr = format!("{addr}/{}", self.underlay.prefix_len());
        netns::ip(ns, &["addr", "add", &cidr, "dev", UNDERLAY_IF, "nodad"]);
    }

    /// Gives namespace `ns` permanent ARP entries for every underlay address of a world of
    /// `hosts` hosts. All the test hosts share one kernel, whose ARP table holds 1,024 learned
    /// entries in all namespaces together (gc_thresh3): a hundred hosts that each reach the
    /// other ninety-nine would overflow it, where real hosts each have a table of their own.
    /// Permanent entries do not count.
    fn pin_neighbours(&self, ns: &str, hosts: usize) {
        let addrs = (1..=hosts)
            .map(|h| self.underlay.host(h))
            .chain((1..=self.controllers.len()).map(|k| self.underlay.controller(k)))
            .chain((1..=self.etcd.as_ref().map_or(0, Etcd::members)).map(etcd::member_addr));
        let batch: String = addrs
            .map(|addr| {
                let mac = underlay_mac(&addr);
                format!("neigh replace {addr} lladdr {mac} dev {UNDERLAY_IF} nud permanent\n")
            })
            .collect();
        let file = self.dir.path().join(format!("{ns}.neigh"));
        std::fs::write(&file, batch).expect("writing the neighbour batch");
        netns::ip(ns, &["-batch", &file.display().to_string()]);
    }

    /// `large`: the world's size, when its hosts get their neighbours pinned.
    fn add_host(&mut self, host: usize, large: Option<usize>) {
        let ns = self.host_ns(host);
        self.add_ns(&ns);
        self.plug(&ns, &format!("h{host}"), &self.vtep(host));
        if let Some(hosts) = large {
            self.pin_neighbours(&ns, hosts);
        }
        // Its own controller first, then the others, to fail over to.
        let (controller, n) = (self.controller_of(host), self.controllers.len());
        let urls: Vec<String> = (0..n)
            .map(|i| self.url_of((controller - 1 + i) % n + 1))
            .collect();
        let mut args = vec![
            "--controller".into(),
            urls.join(","),
            "--name".into(),
            format!("host{host}"),
            "--socket".into(),
            self.socket(host).display().to_string(),
            "--state-dir".into(),
            self.state_dir(host).display().to_string(),
            "--docker-plugin-socket".into(),
            self.docker_plugin_dir(host)
                .join("weft.sock")
                .display()
                .to_string(),
        ];
        match self.security {
            // Used on the first start; a restarted agent finds its certificate stored.
            Security::Join => {
                let token = self.token("10m");
                args.extend(["--join".into(), token.clone()]);
                self.join_tokens.push(token);
            }
            Security::Insecure => args.push("--insecure".into()),
        }
        args.extend(self.agent_args.iter().cloned());
        let mut agent = Daemon::new(
            &ns,
            self.bins.agent.clone(),
            args,
            self.dir.path().join(format!("host{host}.log")),
        );
        agent.start();
        self.agents.push(Mutex::new(agent));
    }

    /// An agent is ready once `weftctl ps` succeeds: it fails until the agent has applied the
    /// controller's first snapshot.
    fn wait_agent_ready(&self, host: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.agent(host).exited() {
                panic!("weft-agent on host{host} exited ({status}) before it was ready");
            }
            let out = self.weftctl(host, &["ps"]);
            if out.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weft-agent on host{host} not ready after {READY_TIMEOUT:?}; `weftctl ps`: {}",
                out.stderr.trim()
            );
            sleep(Duration::from_millis(200));
        }
    }

    /// What a failed test needs to see: each process's last log lines and each host's and
    /// container's interfaces, plus the hosts' VXLAN FDB. Write errors are ignored: a closed
    /// stderr must not turn this into a second panic, which would abort before the cleanup.
    fn report(&self) {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "==== weft world {} failed; its state:", self.prefix);
        for k in 1..=self.controllers.len() {
            let _ = writeln!(err, "{}", self.controller_at(k).log_tail(LOG_TAIL_LINES));
        }
        if let Some(etcd) = &self.etcd {
            let _ = writeln!(err, "{}", etcd.log_tails(LOG_TAIL_LINES / 2));
        }
        for host in 1..=self.agents.len() {
            let _ = writeln!(err, "{}", self.agent(host).log_tail(LOG_TAIL_LINES));
        }
        let hosts = (1..=self.agents.len()).map(|h| (format!("host{h}"), self.host_ns(h)));
        for (label, ns) in hosts {
            show(&mut err, &label, &ns, &["ip", "-br", "addr"]);
            show(
                &mut err,
                &label,
                &ns,
                &["bridge", "fdb", "show", "dev", VXLAN_DEV],
            );
        }
        for (ns, host) in &self.containers {
            let label = format!("{ns} (container on host{host})");
            show(&mut err, &label, ns, &["ip", "-br", "addr"]);
        }
    }
}

fn show(err: &mut impl Write, label: &str, ns: &str, argv: &[&str]) {
    let out = netns::exec(ns, argv);
    let _ = writeln!(
        err,
        "--- {label}$ {}\n{}{}",
        argv.join(" "),
        out.stdout,
        out.stderr
    );
}

impl Drop for World {
    fn drop(&mut self) {
        if thread::panicking() {
            self.report();
        }
        for host in 1..=self.agents.len() {
            self.agent(host).stop();
        }
        for k in 1..=self.controllers.len() {
            self.controller_at(k).stop();
        }
        if let Some(etcd) = &self.etcd {
            etcd.stop();
        }
        for ns in self.namespaces.iter().rev() {
            netns::del(ns);
        }
    }
}
