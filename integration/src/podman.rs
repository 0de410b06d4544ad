//! Real containers for tests: Podman's Docker-compatible API, driven by the Docker CLI as an
//! operator drives Docker, and queried by weft-agent as it would query Docker.
//!
//! Each [`Podman`] runs its own `podman system service` on a socket in its own temp dir, with a
//! containers.conf of its own (the machine's /etc/containers is left as it is), and names every
//! container `<prefix>-<name>`. Dropping it removes those containers and stops the service, also
//! while a test panics. The image is busybox-static's binary with a link per applet, imported
//! once per machine: no registry is needed.

use std::env;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{self, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::cmd::{self, Output};
use crate::daemon::Daemon;
use crate::docker_cli::DockerCli;
use crate::netns;

/// The image every container runs: busybox, with `sh`, `sleep`, `ping`, `ip`, ... on its PATH.
pub const CONTAINER_IMAGE: &str = "localhost/busybox:weft";

/// Where busybox-static puts its binary; a dynamically linked busybox would not run in an image
/// that holds nothing else.
const BUSYBOX: &str = "/bin/busybox";

/// Podman's settings for the service and every `podman` command of a guard.
pub(crate) const CONTAINERS_CONF: &str = r#"[containers]
# Without this runc starts no container here: "error setting rlimit type 7: operation not
# permitted" (Podman's default nofile limit for root).
default_ulimits = []
# Docker's default capabilities: Podman's lack NET_RAW, without which busybox's ping cannot run.
default_capabilities = [
  "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
  "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
]

[engine]
# crun may be installed too; runc is what the tests were made with.
runtime = "runc"
# Neither systemd nor journald need be running.
cgroup_manager = "cgroupfs"
events_logger = "file"
"#;

/// How long the service gets to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: usize = 40;

/// Distinguishes the guards of one test process (of both kinds); the pid distinguishes test
/// processes.
static GUARDS: AtomicUsize = AtomicUsize::new(0);

/// A running Podman API service and the containers a test made through it. Make it before the
/// [`crate::World`] whose agents use it, so that it is dropped after them.
pub struct Podman {
    prefix: String,
    dir: TempDir,
    service: Daemon,
}

impl Podman {
    /// Makes sure the image exists, starts the service and returns once it answers. Panics with
    /// the reason (and the service's log) otherwise.
    pub fn start() -> Podman {
        let (prefix, dir) = guard_dir("wftc");
        let conf = dir.path().join("containers.conf");
        fs::write(&conf, CONTAINERS_CONF)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        ensure_image(&conf);
        let url = format!("unix://{}", dir.path().join("podman.sock").display());
        // `env` execs podman in place, so the daemon's pid is podman's own.
        let service = Daemon::in_root_ns(
            "env".into(),
            vec![
                format!("CONTAINERS_CONF={}", conf.display()),
                "podman".into(),
                "system".into(),
                "service".into(),
                "--time=0".into(),
                url,
            ],
            dir.path().join("podman.log"),
        );
        // From here on a panic drops `podman`, which stops the service.
        let mut podman = Podman {
            prefix,
            dir,
            service,
        };
        podman.service.start();
        podman.wait_ready();
        podman
    }

    /// The full name of this guard's container `name`: `<prefix>-<name>`. Drop removes every
    /// container named so, however it was made.
    pub fn name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Stops the API service, as a Docker daemon that goes down would: its containers run on.
    pub fn stop_service(&mut self) {
        self.service.stop();
    }

    /// Starts the API service again; returns once it answers.
    pub fn start_service(&mut self) {
        self.service.start();
        self.wait_ready();
    }

    /// `podman ARGS...` with this guard's settings, for a step that must succeed while the API
    /// service is down; returns what it printed.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        succeeded("podman", args, self.podman(args))
    }

    /// `docker run -d --network none --name <prefix>-<name> EXTRA... IMAGE sleep 1d`: a running
    /// container with only a loopback interface. Returns its full name.
    pub fn run_detached(&self, name: &str, extra_args: &[&str]) -> String {
        let name = self.name(name);
        let mut args = vec!["run", "-d", "--network", "none", "--name", &name];
        args.extend_from_slice(extra_args);
        args.extend_from_slice(&[CONTAINER_IMAGE, "sleep", "1d"]);
        self.docker_ok(&args);
        name
    }

    /// The container's full ID (64 hex digits).
    pub fn id(&self, container: &str) -> String {
        self.inspect(container, "{{.Id}}")
    }

    /// Sends `count` pings from inside the container to `ip`, each waiting at most a second.
    pub fn ping(&self, container: &str, ip: &str, count: u32) -> Output {
        let count = count.to_string();
        self.exec(
            container,
            &["ping", "-c", &count, "-i", "0.2", "-W", "1", ip],
        )
    }

    /// [`crate::assert_reaches`] from inside a container.
    pub fn assert_reaches(&self, container: &str, ip: &str) {
        crate::assert_pings(container, ip, |count| self.ping(container, ip, count));
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.service.exited() {
                panic!(
                    "podman system service exited ({status}) before answering\n{}",
                    self.service.log_tail(LOG_TAIL_LINES)
                );
            }
            let out = self.docker(&["version", "--format", "{{.Server.Version}}"]);
            if out.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "podman system service not answering at {} after {READY_TIMEOUT:?}: {}\n{}",
                self.url(),
                out.stderr.trim(),
                self.service.log_tail(LOG_TAIL_LINES)
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// `podman ARGS...` with this guard's settings; needs no service, so cleanup works without.
    fn podman(&self, args: &[&str]) -> Output {
        cmd::run(podman_cmd(&self.dir.path().join("containers.conf"), args))
    }

    /// Removes every container named with this guard's prefix. Best effort and silent on a
    /// closed stderr, as it runs during cleanup.
    fn remove_containers(&self) {
        let filter = format!("name=^{}-", self.prefix);
        let listed = self.podman(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &filter,
            "--format",
            "{{.ID}}",
        ]);
        let ids: Vec<&str> = listed.stdout.split_whitespace().collect();
        if ids.is_empty() {
            return;
        }
        let mut args = vec!["rm", "--force", "--time", "0"];
        args.extend_from_slice(&ids);
        let out = self.podman(&args);
        if !out.success() {
            let _ = writeln!(
                io::stderr(),
                "weft-integration: cannot remove containers {ids:?}: {}",
                out.stderr.trim()
            );
        }
    }

    /// Kills the conmon processes left for this guard's containers. Every `docker exec` leaves
    /// one behind that waits five minutes (engine.exit_command_delay) for the API to collect the
    /// exit code, also after its container is gone; shortening the delay makes `docker exec`
    /// report wrong exit codes.
    fn kill_leftover_monitors(&self) {
        let ours = format!("{}-", self.prefix);
        for pid in conmons_of(&ours) {
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
    }

    fn report(&mut self) {
        let filter = format!("name=^{}-", self.prefix);
        let ps = self.podman(&["ps", "-a", "--filter", &filter]);
        let _ = writeln!(
            io::stderr(),
            "==== podman {} failed; its containers:\n{}{}\n{}",
            self.prefix,
            ps.stdout,
            ps.stderr,
            self.service.log_tail(LOG_TAIL_LINES)
        );
    }
}

/// A new guard's name prefix (`<tag><pid>x<n>`) and temp dir, once the machine is seen to be
/// able to run containers.
pub(crate) fn guard_dir(tag: &str) -> (String, TempDir) {
    require_root_and_tools();
    let prefix = format!(
        "{tag}{}x{}",
        process::id(),
        GUARDS.fetch_add(1, Ordering::Relaxed)
    );
    let dir = tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir()
        .expect("creating the Podman guard's temp dir");
    (prefix, dir)
}

/// What `tool ARGS...` printed, once it is seen to have succeeded.
pub(crate) fn succeeded(tool: &str, args: &[&str], out: Output) -> String {
    assert!(
        out.success(),
        "{tool} {} failed ({:?}): {}",
        args.join(" "),
        out.code,
        out.stderr.trim()
    );
    out.stdout
}

impl DockerCli for Podman {
    fn url(&self) -> String {
        format!("unix://{}", self.dir.path().join("podman.sock").display())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if thread::panicking() {
            self.report();
        }
        self.remove_containers();
        self.kill_leftover_monitors();
        self.service.stop();
    }
}

/// Fails loudly, naming the fix, when the machine cannot run containers.
fn require_root_and_tools() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "tests with containers need root (Podman's API runs as root); run them as root"
    );
    for tool in ["podman", "runc", "docker", "tar"] {
        assert!(
            netns::in_path(tool),
            "`{tool}` is not in PATH; install podman, runc and busybox-static (`make deps` does)"
        );
    }
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing; install busybox-static (`make deps` does)"
    );
}

pub(crate) fn podman_cmd(conf: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", conf).args(args);
    cmd
}

/// Imports [`CONTAINER_IMAGE`] unless it exists. Tests run in parallel, in threads and in
/// processes: a lock file lets one of them import while the others wait and then find it.
pub(crate) fn ensure_image(conf: &Path) {
    let lock_path = env::temp_dir().join("weft-busybox-image.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    let _held = Flock::lock(lock, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", lock_path.display()));
    if cmd::run(podman_cmd(conf, &["image", "exists", CONTAINER_IMAGE])).success() {
        return;
    }
    let build = tempfile::tempdir().expect("creating a temp dir for the image");
    let tarball = busybox_rootfs_tar(build.path());
    let tarball = tarball.to_str().expect("temp path is UTF-8");
    cmd::check(podman_cmd(conf, &["import", tarball, CONTAINER_IMAGE]));
}

/// Writes `<dir>/rootfs.tar`: `/bin/busybox` and a link to it for each of its applets.
pub(crate) fn busybox_rootfs_tar(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).expect("creating the image's /bin");
    fs::copy(BUSYBOX, bin.join("busybox")).unwrap_or_else(|e| panic!("cannot copy {BUSYBOX}: {e}"));
    let mut list = Command::new(BUSYBOX);
    list.arg("--list");
    let applets = cmd::check(list).stdout;
    // The list names busybox itself, which must stay the binary.
    for applet in applets.lines().filter(|a| *a != "busybox") {
        symlink("busybox", bin.join(applet))
            .unwrap_or_else(|e| panic!("cannot link applet {applet}: {e}"));
    }
    let tarball = dir.join("rootfs.tar");
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(&rootfs).arg("-cf").arg(&tarball).arg(".");
    cmd::check(tar);
    tarball
}

/// The conmon processes monitoring a container whose name starts with `prefix` (conmon gets the
/// name as `-n NAME`).
pub(crate) fn conmons_of(prefix: &str) -> Vec<Pid> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_conmon = argv.first()?.ends_with(b"conmon");
            let named_ours = argv
                .windows(2)
                .any(|w| w[0] == b"-n" && w[1].starts_with(prefix.as_bytes()));
            (is_conmon && named_ours).then_some(Pid::from_raw(pid))
        })
        .collect()
}
