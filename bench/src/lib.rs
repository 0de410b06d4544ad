//! What the benchmark programs (`src/bin/weft-bench-*.rs`, and weft-load in `src/main.rs`)
//! share: the harness of a run ([`harness`]: Ctrl-C, machine and load, timing, summaries), the
//! hand-built VXLAN baseline ([`HandBuilt`]) and a fast count of neighbour entries.

mod handbuilt;
pub mod harness;
mod neighcount;

pub use handbuilt::{HB_IF, HandBuilt};
pub use neighcount::permanent_neighbours;
