//! Running a short-lived command to completion with a time limit, so that a hung tool fails the
//! test instead of hanging the whole CI run.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle, sleep};
use std::time::{Duration, Instant};

/// Longest any single command may take before the harness gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status; `None` when the process was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Output {
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `cmd` with no stdin, capturing its output. Panics if it cannot start or overruns
/// [`COMMAND_TIMEOUT`]; a non-zero exit is reported, not treated as an error.
pub fn run(cmd: Command) -> Output {
    run_for(cmd, COMMAND_TIMEOUT)
}

/// [`run`] with a time limit of the caller's, for the rare command known to take longer.
pub fn run_for(cmd: Command, timeout: Duration) -> Output {
    run_fed(cmd, None, timeout)
}

/// [`run`] with `input` on the command's stdin (a CNI plugin reads its configuration there).
pub fn run_with_input(cmd: Command, input: &[u8]) -> Output {
    run_fed(cmd, Some(input), COMMAND_TIMEOUT)
}

fn run_fed(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    // Drain both pipes concurrently so a chatty child cannot block on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
        // A command that exits without reading all of it is not an error here.
        let _ = pipe.write_all(input);
    }
    let status = wait_within(&mut child, &shown, timeout);
    Output {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Runs `cmd` with its output going where the caller's goes, for a long step whose progress
/// a person watches (a benchmark's load generator). Panics if it cannot start or overruns
/// `timeout`; returns whether it succeeded.
pub fn run_shown(mut cmd: Command, timeout: Duration) -> bool {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    wait_within(&mut child, &shown, timeout).success()
}

/// Waits for `child`; kills it and panics once `timeout` has passed. Looks often at first, so a
/// command of a few ms (most `ip` calls, the steps a benchmark times) is not charged a 10 ms poll.
fn wait_within(child: &mut Child, shown: &str, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {timeout:?}");
        }
        sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Runs `cmd` and panics, showing its stderr, unless it succeeds. For the harness's own setup
/// steps, whose failure means the world is broken rather than the product.
pub fn check(cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.success(),
        "{shown} failed ({:?}): {}",
        out.code,
        out.stderr.trim()
    );
    out
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
