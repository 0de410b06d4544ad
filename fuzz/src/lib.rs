//! Runs a property for a bounded time: `make fuzz` sets `WEFT_FUZZ_SECS` and each target runs
//! batches of random cases until that much time has passed; without it (as in `make test`) a
//! target runs one batch, a quick regression check. cargo-fuzz needs a nightly toolchain and a
//! second build of every dependency with sanitizers; proptest runs on the stable build the
//! tests already have, and shrinks a failure to a small input.

use std::time::{Duration, Instant};

use proptest::prelude::{Just, any, prop_oneof};
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per batch.
const BATCH: u32 = 256;

/// Runs `test` on values of `strategy`: one batch, or batches until `WEFT_FUZZ_SECS` seconds
/// have passed. Panics with the smallest failing input found.
pub fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let budget = std::env::var("WEFT_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let started = Instant::now();
    let mut cases = 0u64;
    loop {
        // A fresh runner draws a fresh random seed: batches explore different inputs.
        let mut runner = TestRunner::new(Config {
            cases: BATCH,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{name}: {e}");
        }
        cases += u64::from(BATCH);
        if budget.is_none_or(|b| started.elapsed() >= b) {
            break;
        }
    }
    eprintln!(
        "{name}: {cases} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Anything, and strings shaped like ADDRs (which reach deeper into the parser).
pub fn addr_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(ip:|net:)?[0-9]{1,4}(\\.[0-9]{1,4}){0,4}(/[0-9]{0,3})?",
        "net:[a-z0-9./_-]{0,20}",
        Just("net:default".to_string()),
    ]
}
