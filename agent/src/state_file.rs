//! Files in the agent's state dir, each replaced whole: written to a temporary file, made
//! durable, then renamed over the old one, so a crash or power loss leaves the old record or
//! the new one, never half of either.

use std::io::Write;
use std::path::Path;

/// Replaces the file at `path` with `text`.
pub fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
