//! A long-running process (a weft controller or agent inside a namespace, or a service a test
//! needs in the root namespace), with its output kept in a log file so a failed test can show
//! what the process said.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::prctl;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::netns;

/// How long a process gets to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(3);

/// One process, started and restarted on demand. Its owner stops it explicitly (the world does
/// so before deleting the namespaces it runs in), so there is no stop-on-drop here.
pub struct Daemon {
    /// The namespace it runs in; `None` for the root namespace.
    ns: Option<String>,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Describes the process, to run in namespace `ns`; nothing runs until [`Daemon::start`].
    pub fn new(ns: &str, program: PathBuf, args: Vec<String>, log: PathBuf) -> Daemon {
        Daemon {
            ns: Some(ns.to_owned()),
            program,
            args,
            log,
            child: None,
        }
    }

    /// [`Daemon::new`] for a process of the machine's own, in the root namespace.
    pub fn in_root_ns(program: PathBuf, args: Vec<String>, log: PathBuf) -> Daemon {
        Daemon {
            ns: None,
            program,
            args,
            log,
            child: None,
        }
    }

    /// Starts the process; its stdout and stderr are appended to the log, so a restart keeps the
    /// earlier run's lines.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// [`Daemon::start`] with `extra` flags after its own, for this run only.
    pub fn start_with(&mut self, extra: &[&str]) {
        assert!(
            self.child.is_none(),
            "{} is already running",
            self.program.display()
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let mut cmd = self.command(extra);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log file"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            // The kernel kills the process if the spawning thread dies, e.g. when the test
            // process is killed before any Drop runs.
            cmd.pre_exec(|| prctl::set_pdeathsig(Signal::SIGKILL).map_err(Into::into));
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// The command that runs the process (in its namespace, with its flags and `extra`), for a
    /// caller that runs it itself, e.g. to see it refuse to start.
    pub fn command(&self, extra: &[&str]) -> Command {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let mut cmd = match &self.ns {
            Some(ns) => netns::in_netns(ns, &self.program, &args),
            None => {
                let mut cmd = Command::new(&self.program);
                cmd.args(&args);
                cmd
            }
        };
        // The binaries' own default filter, as deployed, whatever the caller's RUST_LOG says.
        cmd.env_remove("RUST_LOG");
        cmd
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`GRACE`]. No-op when not running.
    pub fn stop(&mut self) {
        self.terminate(GRACE);
        self.kill();
    }

    /// SIGTERM; returns how the process ended if it did within `limit` (None: it still runs,
    /// or was not running).
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.running()
            && let Some(child) = &self.child
        {
            // Only a child not yet reaped is signalled: after reaping, its pid may be reused.
            let _ = signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + limit;
            while self.running() && Instant::now() < deadline {
                sleep(Duration::from_millis(10));
            }
            let status = self.exited()?;
            self.child = None;
            return Some(status);
        }
        None
    }

    /// SIGKILL, as a crash would. No-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// How the process ended, if it has; `None` while it runs or when it was never started.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The process id while it runs (for reading its /proc entries).
    pub fn pid(&mut self) -> Option<u32> {
        if self.running() {
            self.child.as_ref().map(Child::id)
        } else {
            None
        }
    }

    /// The file the process's stdout and stderr go to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the process's log, headed by its command line.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!(
            "--- {} {} (in {}), last {n} lines of {}:\n{tail}",
            self.program.display(),
            self.args.join(" "),
            self.ns.as_deref().unwrap_or("the root namespace"),
            self.log.display()
        )
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// A helper process outside any world (a traffic server, say) in namespace `ns`, stopped when
/// dropped, also while panicking, so a failed benchmark leaves no process behind.
pub struct Background {
    daemon: Daemon,
}

impl Background {
    /// Starts `program ARGS...` in `ns`, its output appended to `log`.
    pub fn start(ns: &str, program: &str, args: &[&str], log: PathBuf) -> Background {
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut daemon = Daemon::new(ns, PathBuf::from(program), args, log);
        daemon.start();
        Background { daemon }
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.daemon.exited()
    }

    /// The process id while it runs (for reading its /proc entries).
    pub fn pid(&mut self) -> Option<u32> {
        self.daemon.pid()
    }

    /// The last `n` lines of its output, headed by its command line.
    pub fn log_tail(&self, n: usize) -> String {
        self.daemon.log_tail(n)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.daemon.stop();
    }
}

/// A process held stopped (SIGSTOP), as a hung one would be, until dropped (SIGCONT), also
/// while panicking, so a failed test leaves nothing frozen.
pub struct Paused {
    pid: Pid,
}

impl Paused {
    pub fn new(pid: u32) -> Paused {
        let pid = Pid::from_raw(pid as i32);
        signal::kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        Paused { pid }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = signal::kill(self.pid, Signal::SIGCONT);
    }
}
