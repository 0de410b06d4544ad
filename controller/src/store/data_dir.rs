//! The data dir around the store file: root-only modes, the marker naming the store it holds,
//! and the signs that it held one (so an emptied store file is noticed).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use redb::{Database, DatabaseError};
use tracing::info;

use super::error::file_err;
use super::{MARKER_FILE, STORE_FILE, StoreError};

/// Only the controller (root) may read the data dir and its stores.
const PRIVATE_DIR: u32 = 0o700;
const PRIVATE_FILE: u32 = 0o600;

/// What to do with a store file found empty (or missing) in a data dir that held a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emptied {
    /// Refuse to start, naming the file and the way out.
    Refuse,
    /// Begin again with it empty (`--accept-empty-store`).
    BeginAgain,
}

/// Sets `path`'s mode to `mode` unless it is that already (made by a controller from before
/// modes were restricted).
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    let had = fs::metadata(path)?.permissions().mode() & 0o777;
    if had != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        info!(path = %path.display(), from = format!("{had:o}"), to = format!("{mode:o}"), "restricted the mode");
    }
    Ok(())
}

/// Opens the redb database at `path`, made root-only: created so, or restricted.
pub fn open_private_db(path: &Path) -> Result<Database, DatabaseError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE)
        .open(path)?;
    restrict(path, PRIVATE_FILE)?;
    shared().create_with_backend(redb::backends::FileBackend::new(file)?)
}

/// How every handle opens a store: one writer (a second is refused) and any number of
/// read-only handles that see its commits, such as `weft-controller backup`'s.
pub(super) fn shared() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    builder
}

/// The store id the marker in `dir` names, if there is one.
pub(super) fn read_marker(marker: &Path) -> Result<Option<String>, StoreError> {
    match fs::read_to_string(marker) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|id| !id.is_empty())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err("read", marker)(e)),
    }
}

/// What in `dir` shows it held a store (its marker, the CA key, join tokens); empty for a fresh
/// data dir.
fn signs_of_a_store(dir: &Path, marked: Option<&str>) -> Vec<String> {
    let mut signs = Vec::new();
    if let Some(id) = marked {
        signs.push(format!("{MARKER_FILE} names store {id}"));
    }
    if dir.join("ca.key").exists() {
        signs.push("ca.key is there".to_string());
    }
    let tokens = dir.join(crate::tokens::TOKENS_FILE);
    if fs::metadata(&tokens).is_ok_and(|m| m.len() > 0) {
        signs.push(format!("{} is not empty", crate::tokens::TOKENS_FILE));
    }
    signs
}

/// Whether to go on with the store file of `dir`, found as `how` says: with no signs of a store
/// in `dir`, as a fresh store (None); with some, as `emptied` says: refused, or begun again
/// (the signs, for the log).
pub(super) fn check_emptied(
    dir: &Path,
    how: &'static str,
    marked: Option<&str>,
    emptied: Emptied,
) -> Result<Option<Vec<String>>, StoreError> {
    let evidence = signs_of_a_store(dir, marked);
    match emptied {
        _ if evidence.is_empty() => Ok(None),
        Emptied::Refuse => Err(StoreError::Emptied {
            path: dir.join(STORE_FILE),
            how,
            evidence,
        }),
        Emptied::BeginAgain => Ok(Some(evidence)),
    }
}

/// Creates the data dir root-only, or restricts one made before modes were.
pub(super) fn create(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .and_then(|()| restrict(dir, PRIVATE_DIR))
        .map_err(file_err("create the data directory", dir))
}
