//! What the benchmark programs (`src/bin/weft-bench-*.rs`, and weft-load in `src/main.rs`)
//! share: the harness of a run ([`harness`]: Ctrl-C, machine and load, timing, summaries), the
//! hand-built VXLAN baseline ([`HandBuilt`]), iperf3 and ping between namespaces ([`traffic`]), a fast count of neighbour entries, running
//! weft-load in a world ([`load`]), and what a process costs over a while ([`usage`]).

mod handbuilt;
pub mod harness;
pub mod load;
mod neighcount;
pub mod traffic;
pub mod usage;

pub use handbuilt::{HB_IF, HandBuilt};
pub use neighcount::{has_permanent_neighbour, permanent_neighbours};
