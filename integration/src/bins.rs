//! Finding the weft binaries the tests run. They are built by `cargo build --workspace --bins`
//! (cargo test does not build other packages' binaries), next to the test executable's target dir.
//! One older than the sources it is built from is refused: a bare `cargo test` after an edit
//! would otherwise test the code as it was.

use std::env;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

/// The workspace directories each program is built from (its package and what it links).
fn sources_of(name: &str) -> &'static [&'static str] {
    match name {
        "weft-controller" => &[
            "controller/src",
            "proto/src",
            "proto/proto",
            "process/src",
            "tls/src",
        ],
        "weft-agent" => &[
            "agent/src",
            "proto/src",
            "proto/proto",
            "process/src",
            "tls/src",
        ],
        "weftctl" => &["ctl/src", "proto/src", "proto/proto", "process/src"],
        "weft-cni" => &["cni/src", "proto/src", "proto/proto", "process/src"],
        "weft-load" => &[
            "bench/src",
            "integration/src",
            "proto/src",
            "proto/proto",
            "process/src",
        ],
        _ => &[],
    }
}

/// The newest modification time of the files under `dir`, and which file has it. The harness's
/// own programs (integration/src/bin) and the benchmarks (bench/src/bin) are left out: weft-load
/// links their libraries only.
fn newest(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut found: Option<(SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let candidate = if path.ends_with("integration/src/bin") || path.ends_with("bench/src/bin")
        {
            None
        } else if path.is_dir() {
            newest(&path)
        } else {
            let modified = entry.metadata().ok()?.modified().ok()?;
            Some((modified, path))
        };
        if let Some(c) = candidate
            && found.as_ref().is_none_or(|f| c.0 > f.0)
        {
            found = Some(c);
        }
    }
    found
}

fn find(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (or set WEFT_BIN_DIR)",
        path.display()
    );
    let built = path.metadata().and_then(|m| m.modified()).ok();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the integration crate is in the workspace");
    for source in sources_of(name) {
        if let (Some(built), Some((changed, file))) = (built, newest(&workspace.join(source)))
            && changed > built
        {
            panic!(
                "{} is older than {}: run `cargo build --workspace --bins` first (make test does)",
                path.display(),
                file.display()
            );
        }
    }
    path
}
