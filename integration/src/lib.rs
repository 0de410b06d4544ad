//! Test harness for weft: builds a throwaway world of network namespaces (an underlay bridge, a
//! controller, N hosts), runs the real weft binaries inside it, and tears it all down on drop.
//!
//! Nothing is configured in the machine's root network namespace, and every namespace name carries
//! a per-process, per-world prefix so tests can run in parallel.

mod bins;
mod cmd;
mod daemon;
mod kernel;
mod netns;
mod world;

use std::thread::sleep;
use std::time::{Duration, Instant};

pub use cmd::Output;
pub use kernel::{Link, fdb, link, links};
pub use netns::{exec, ping, ping_n};
pub use world::{BRIDGE, CONTROLLER_URL, VXLAN_DEV, World, host_addr};

/// Polls `check` every 100 ms until it returns true or `timeout` has passed; returns whether it
/// did. Convergence across hosts is asynchronous, so assertions about it must poll.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(100));
    }
}
