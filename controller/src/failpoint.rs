//! Test-only fault injection (the hidden `--failpoint` flag): `crash-after-commit:attach` (or
//! `:detach`) ends the process, as a crash would, once that request's change is durable and
//! before it is published to watchers or answered. This is the window the README's "recorded
//! but never answered" rows are about; tests hit it on purpose instead of hoping a kill lands
//! in it, and no agent can learn of the change before the controller is back.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::error;

/// The exit status of a process ended by a failpoint.
pub const EXIT_FAILPOINT: i32 = 86;

static CRASH_AFTER_COMMIT: OnceLock<String> = OnceLock::new();
/// A request of the armed kind is being committed.
static PLANNED: AtomicBool = AtomicBool::new(false);

/// Parses and arms `spec`; refuses what it does not know.
pub fn arm(spec: &str) -> Result<(), String> {
    match spec.strip_prefix("crash-after-commit:") {
        Some(rpc @ ("attach" | "detach")) => {
            let _ = CRASH_AFTER_COMMIT.set(rpc.to_string());
            Ok(())
        }
        _ => Err(format!(
            "unknown failpoint {spec:?}: crash-after-commit:attach or crash-after-commit:detach"
        )),
    }
}

/// Called as a request of kind `rpc` is planned: if the failpoint is armed for that kind, the
/// commit that makes its change durable ends the process ([`after_persist`]).
pub fn planning(rpc: &str) {
    if CRASH_AFTER_COMMIT.get().is_some_and(|armed| armed == rpc) {
        PLANNED.store(true, Ordering::SeqCst);
    }
}

/// Called once a batch is durable, before it is published or answered.
pub fn after_persist() {
    if PLANNED.load(Ordering::SeqCst) {
        error!("failpoint: crashing after the commit, before publishing and answering it");
        std::process::exit(EXIT_FAILPOINT);
    }
}
