//! Running a binary built on the harness (the demo, a benchmark) so that a failed step still
//! cleans up: every step panics with its reason, unwinding drops the world (which prints the
//! processes' logs and deletes its namespaces), and the program exits 1.

use std::any::Any;
use std::io::{self, Write};
use std::panic::{self, UnwindSafe};
use std::process::ExitCode;

/// Runs `body`; a panic in it is reported as `NAME: failed: REASON` and gives exit status 1.
pub fn exit_code_of(name: &'static str, body: impl FnOnce() + UnwindSafe) -> ExitCode {
    panic::set_hook(Box::new(move |info| {
        // Not eprintln: a panic inside the hook would abort before the world is cleaned up.
        let _ = writeln!(io::stderr(), "{name}: failed: {}", reason(info.payload()));
    }));
    match panic::catch_unwind(body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn reason(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}
