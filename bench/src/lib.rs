//! What the benchmark programs (`src/bin/weft-bench-*.rs`, and weft-load in `src/main.rs`)
//! share: the harness of a run ([`harness`]: Ctrl-C, machine and load, timing, summaries), the
//! hand-built VXLAN baseline ([`HandBuilt`]), a fast count of neighbour entries, and running
//! weft-load in a world ([`load`]).

mod handbuilt;
pub mod harness;
pub mod load;
mod neighcount;

pub use handbuilt::{HB_IF, HandBuilt};
pub use neighcount::permanent_neighbours;
