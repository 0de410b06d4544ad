//! Test-only fault injection (the hidden `--failpoint` flag): `crash-after-commit:attach` (or
//! `:detach`) ends the process, as a crash would, once that request's change is durable and
//! before it is answered. This is the window the README's "recorded but never answered" rows
//! are about; tests hit it on purpose instead of hoping a kill lands in it.

use std::sync::OnceLock;

use tracing::error;

/// The exit status of a process ended by a failpoint.
pub const EXIT_FAILPOINT: i32 = 86;

static CRASH_AFTER_COMMIT: OnceLock<String> = OnceLock::new();

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

/// Called once `rpc`'s change is durable, before its answer is sent.
pub fn after_commit(rpc: &str) {
    if CRASH_AFTER_COMMIT.get().is_some_and(|armed| armed == rpc) {
        error!(
            rpc,
            "failpoint: crashing after the commit, before the answer"
        );
        std::process::exit(EXIT_FAILPOINT);
    }
}
