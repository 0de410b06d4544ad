//! Finding the weft binaries the tests run. They are built by `cargo build --workspace --bins`
//! (cargo test does not build other packages' binaries), next to the test executable's target dir.

use std::env;
use std::path::{Path, PathBuf};

/// Paths of the three weft programs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub controller: PathBuf,
    pub agent: PathBuf,
    pub ctl: PathBuf,
}

impl Bins {
    /// From `$WEFT_BIN_DIR`, else the profile dir of the running executable (target/debug for
    /// both target/debug/deps/<test> and target/debug/weft-demo). Panics naming the fix if absent.
    pub fn locate() -> Bins {
        let dir = bin_dir();
        Bins {
            controller: find(&dir, "weft-controller"),
            agent: find(&dir, "weft-agent"),
            ctl: find(&dir, "weftctl"),
        }
    }
}

/// Where the weft programs are: `$WEFT_BIN_DIR`, else the profile dir of the running executable.
pub fn bin_dir() -> PathBuf {
    match env::var_os("WEFT_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => profile_dir(),
    }
}

/// Another program built alongside them, e.g. `weft-load`. Panics naming the fix if absent.
pub fn locate_bin(name: &str) -> PathBuf {
    find(&bin_dir(), name)
}

fn profile_dir() -> PathBuf {
    let exe = env::current_exe().expect("path of the running executable");
    let dir = exe.parent().expect("executable has a parent dir");
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn find(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (or set WEFT_BIN_DIR)",
        path.display()
    );
    path
}
