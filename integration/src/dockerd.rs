//! A real Docker Engine (dockerd 20.10, Debian's docker.io) in one test host's network
//! namespace, so a test can use weft as Docker's network plugin as an operator would.
//!
//! Each [`DockerEngine`] has a temp dir of its own that holds everything the engine writes: its
//! data root (vfs, so no overlay mounts are needed), its exec root, its socket, its trust key
//! (`deprecated-key-path`; /etc/docker is left alone) and its plugin directory. dockerd runs in
//! a mount namespace of its own (`unshare -m`, slave propagation, so the world's later
//! /run/netns mounts reach it and nothing it mounts leaks out), where two bind mounts give it
//! private copies of the machine-wide directories it cannot be told to move:
//!
//! * `/run/docker/plugins`, where dockerd looks for plugin sockets, is the directory the world's
//!   agent of that host serves weft's driver in ([`World::docker_plugin_dir`]): weft is a
//!   plugin of this engine alone, as the agent of a real host is of that host's Docker.
//! * `/run/containerd` is `<dir>/containerd`: the containerd shims put their sockets under
//!   `/run/containerd/s` whatever containerd's own address, and a running system containerd's
//!   socket there would make dockerd use it instead of starting one of its own.
//!
//! It enters the host's network namespace with `nsenter --net` (not `ip netns exec`, which
//! remounts /sys), so the containers' namespaces are made, and the plugin called, from the host.
//! The Docker CLI talks to the engine's socket from the root namespace.
//!
//! Each engine is its own Docker: container and network names need no prefix to be unique.
//! Dropping the guard removes every container and network (the plugin gets its Leave,
//! DeleteEndpoint and DeleteNetwork calls), stops dockerd, kills whatever of the engine's is
//! still running, and deletes the temp dir, also while a test panics. Make it after the
//! [`World`] whose agent serves as its plugin, so that it is dropped before it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::json;
use tempfile::TempDir;

use crate::cmd::Output;
use crate::daemon::Daemon;
use crate::docker_cli::DockerCli;
use crate::netns;
use crate::podman::{busybox_rootfs_tar, guard_dir};
use crate::world::World;

/// The engine the tests were made with: Debian's docker.io 20.10.
pub const DOCKERD: &str = "/usr/sbin/dockerd";

/// The image every engine imports: busybox, with `sh`, `sleep`, `ping`, `ip`, ... on its PATH.
pub const DOCKER_IMAGE: &str = "weft-busybox:1";

/// Machine-wide directories dockerd's own mount namespace gets private copies of: the world's
/// plugin dir of the host, and `<dir>/containerd` (see the module's doc).
const PRIVATE_DIRS: [&str; 2] = ["/run/docker/plugins", "/run/containerd"];

/// How long dockerd gets to answer after it starts (it takes about half a second).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long dockerd gets to exit after SIGTERM (1-3 s without running containers) before it is
/// killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
const LOG_TAIL_LINES: usize = 40;

/// A dockerd in a test host's namespace, and everything it made.
pub struct DockerEngine {
    prefix: String,
    host_ns: String,
    dir: TempDir,
    daemon: Daemon,
    plugins: PathBuf,
}

impl DockerEngine {
    /// Starts a dockerd in host `host` of `world` and imports [`DOCKER_IMAGE`] into it; returns
    /// once both are done. Panics with the reason (and dockerd's log) otherwise.
    pub fn on(world: &World, host: usize) -> DockerEngine {
        let (prefix, dir) = guard_dir("wftd");
        require_dockerd();
        let host_ns = world.host_ns(host);
        let ns_path = Path::new("/run/netns").join(&host_ns);
        assert!(
            ns_path.exists(),
            "host {host} has no namespace ({} is missing)",
            ns_path.display()
        );
        let plugins = world.docker_plugin_dir(host);
        let daemon = dockerd(dir.path(), &ns_path, &plugins);
        // From here on a panic drops `engine`, which stops dockerd and removes the dir.
        let mut engine = DockerEngine {
            prefix,
            host_ns,
            dir,
            daemon,
            plugins,
        };
        engine.start();
        engine.import_image();
        engine
    }

    /// What this engine sees as `/run/docker/plugins/weft.sock`: where its host's agent serves
    /// weft's driver.
    pub fn plugin_socket(&self) -> PathBuf {
        self.plugins.join("weft.sock")
    }

    /// The image [`DockerEngine::run`] runs.
    pub fn image(&self) -> &str {
        DOCKER_IMAGE
    }

    /// The guard's temp dir, which holds all the engine has; gone once the guard is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The name of the namespace dockerd runs in.
    pub fn host_ns(&self) -> &str {
        &self.host_ns
    }

    /// dockerd's process id while it runs.
    pub fn daemon_pid(&mut self) -> Option<u32> {
        self.daemon.pid()
    }

    /// `docker run -d --name NAME EXTRA... IMAGE COMMAND...` (`--network` goes in `extra`);
    /// returns the container's full ID.
    pub fn run(&self, name: &str, extra: &[&str], command: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.push(DOCKER_IMAGE);
        args.extend_from_slice(command);
        self.docker_ok(&args).trim().to_owned()
    }

    /// Stops dockerd, as a Docker that goes down would. Without live-restore it first stops its
    /// containers (the plugin gets their Leave calls), each getting its stop timeout, 10 s unless
    /// `docker run --stop-timeout` said otherwise, to exit on SIGTERM, which busybox `sleep` as
    /// a container's first process ignores: about 2 s with `--stop-timeout 1`, 11 s without.
    pub fn stop(&mut self) {
        self.daemon.terminate(STOP_GRACE);
        self.daemon.kill();
        self.kill_leftovers();
    }

    /// Starts dockerd (again, on the same data root); returns once it answers.
    pub fn start(&mut self) {
        for shared in PRIVATE_DIRS {
            // The bind mounts need their targets, which the machine may lack.
            fs::create_dir_all(shared).unwrap_or_else(|e| panic!("cannot create {shared}: {e}"));
        }
        self.daemon.start();
        self.wait_ready();
    }

    /// The last `n` lines of dockerd's log, headed by its command line.
    pub fn log_tail(&self, n: usize) -> String {
        self.daemon.log_tail(n)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.daemon.exited() {
                panic!(
                    "dockerd exited ({status}) before answering\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            let out = self.docker(&["version", "--format", "{{.Server.Version}}"]);
            if out.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd not answering at {} after {READY_TIMEOUT:?}: {}\n{}",
                self.url(),
                out.stderr.trim(),
                self.log_tail(LOG_TAIL_LINES)
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Imports [`DOCKER_IMAGE`] from busybox-static: each engine has a data root of its own,
    /// and no registry is needed.
    fn import_image(&self) {
        let build = self.dir.path().join("image");
        let tarball = busybox_rootfs_tar(&build);
        let tarball = tarball.to_str().expect("temp path is UTF-8");
        self.docker_ok(&["import", tarball, DOCKER_IMAGE]);
        // The image is in the data root now; the copy need not take space until drop.
        let _ = fs::remove_dir_all(&build);
    }

    /// Removes every container and every network but Docker's own, so the plugin gets its
    /// Leave, DeleteEndpoint and DeleteNetwork calls while it may still be up. Best effort: it
    /// runs during cleanup, and failures go to stderr.
    fn remove_all(&self) {
        let listed = self.docker(&["ps", "-a", "-q", "--no-trunc"]);
        let ids: Vec<&str> = listed.stdout.split_whitespace().collect();
        if !listed.success() {
            complain("cannot list the containers", &listed);
        } else if !ids.is_empty() {
            let mut args = vec!["rm", "--force"];
            args.extend_from_slice(&ids);
            let out = self.docker(&args);
            if !out.success() {
                complain(&format!("cannot remove containers {ids:?}"), &out);
            }
        }
        let out = self.docker(&["network", "prune", "--force"]);
        if !out.success() {
            complain("cannot remove the networks", &out);
        }
    }

    /// Kills what may outlive a dockerd that was killed rather than stopped: the containerd
    /// shims (whose command lines name the guard's dir) and the containers' first processes,
    /// their children. A dead dockerd's containerd dies with it (its parent-death signal).
    fn kill_leftovers(&self) {
        let ours = processes_naming(self.dir.path());
        for pid in children_of(&ours).into_iter().chain(ours) {
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
    }

    fn report(&self) {
        let ps = self.docker(&["ps", "-a"]);
        let _ = writeln!(
            io::stderr(),
            "==== docker engine {} in {} failed; its containers:\n{}{}\n{}",
            self.prefix,
            self.host_ns,
            ps.stdout,
            ps.stderr,
            self.log_tail(LOG_TAIL_LINES)
        );
    }
}

impl DockerCli for DockerEngine {
    fn url(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        if thread::panicking() {
            self.report();
        }
        if self.daemon.pid().is_some() {
            self.remove_all();
        }
        self.stop();
    }
}

/// dockerd in `ns` (a /run/netns path) with everything it writes in `dir`, in a mount namespace
/// of its own; the shell makes the bind mounts and execs (through `nsenter`, which execs too)
/// dockerd, so the daemon's pid is dockerd's own.
fn dockerd(dir: &Path, ns: &Path, plugins: &Path) -> Daemon {
    fs::create_dir_all(plugins).expect("creating the plugin dir");
    for sub in ["containerd", "docker", "exec"] {
        fs::create_dir_all(dir.join(sub)).expect("creating dockerd's dirs");
    }
    let d = |name: &str| dir.join(name).display().to_string();
    let config = json!({ "deprecated-key-path": d("key.json") });
    fs::write(dir.join("daemon.json"), config.to_string()).expect("writing daemon.json");
    // "$1" and "$2" are the bind mounts' sources, as PRIVATE_DIRS orders them.
    let script = format!(
        "mount --bind \"$1\" {} && mount --bind \"$2\" {} && shift 2 && exec \"$@\"",
        PRIVATE_DIRS[0], PRIVATE_DIRS[1]
    );
    let mut args = vec![
        "-m",
        "--propagation",
        "slave",
        "--",
        "sh",
        "-c",
        &script,
        "sh",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend([plugins.display().to_string(), d("containerd")]);
    args.extend([
        "nsenter".into(),
        format!("--net={}", ns.display()),
        "--".into(),
        DOCKERD.into(),
        "--config-file".into(),
        d("daemon.json"),
        // The host's namespace is weft's: dockerd must neither add rules nor a bridge there.
        "--iptables=false".into(),
        "--ip6tables=false".into(),
        "--ip-masq=false".into(),
        "--ip-forward=false".into(),
        "--bridge=none".into(),
        "--userland-proxy=false".into(),
        "--storage-driver=vfs".into(),
        "--data-root".into(),
        d("docker"),
        "--exec-root".into(),
        d("exec"),
        "--host".into(),
        format!("unix://{}", d("docker.sock")),
        "--pidfile".into(),
        d("docker.pid"),
        // Neither systemd nor its cgroup manager need be running.
        "--exec-opt".into(),
        "native.cgroupdriver=cgroupfs".into(),
    ]);
    Daemon::in_root_ns("unshare".into(), args, dir.join("dockerd.log"))
}

/// Fails loudly, naming the fix, when the machine cannot run a Docker Engine.
fn require_dockerd() {
    assert!(
        Path::new(DOCKERD).is_file(),
        "{DOCKERD} is missing; install docker.io (`make deps` does)"
    );
    for tool in ["unshare", "nsenter", "mount"] {
        assert!(
            netns::in_path(tool),
            "`{tool}` is not in PATH; install util-linux and mount"
        );
    }
}

/// The processes whose command line names something inside `dir`.
pub fn processes_naming(dir: &Path) -> Vec<Pid> {
    let needle = format!("{}/", dir.display());
    processes()
        .into_iter()
        .filter(|(pid, _)| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
            })
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// The children of the processes `parents`.
fn children_of(parents: &[Pid]) -> Vec<Pid> {
    processes()
        .into_iter()
        .filter(|(_, ppid)| parents.contains(ppid))
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process's pid and parent's pid.
fn processes() -> Vec<(Pid, Pid)> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((Pid::from_raw(pid), Pid::from_raw(ppid)))
        })
        .collect()
}

/// Reports a failed cleanup step on stderr, silent on a closed one.
fn complain(what: &str, out: &Output) {
    let _ = writeln!(
        io::stderr(),
        "weft-integration: {what}: {}",
        out.stderr.trim()
    );
}
