//! Why the store cannot go on, each naming the file.

use std::path::{Path, PathBuf};

use super::{STORE_FILE, STORE_FORMAT};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {doing} {path}: {cause}")]
    File {
        doing: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("store {path}: {cause}")]
    Redb { path: PathBuf, cause: redb::Error },
    #[error(
        "store {path} cannot be read ({cause}): it is damaged or not a weft store; restore {STORE_FILE} from a backup"
    )]
    Unreadable { path: PathBuf, cause: redb::Error },
    #[error(
        "store {path} is in use by another process (is a weft-controller running on this data dir?)"
    )]
    InUse { path: PathBuf },
    #[error("{path} {how}: there is no store to read there")]
    NoStore { path: PathBuf, how: &'static str },
    #[error(
        "store {path} is not empty (it holds store {held} at revision {revision}): a backup is restored into an empty store; {way_out}"
    )]
    NotEmpty {
        path: PathBuf,
        held: String,
        revision: u64,
        /// What to do instead, in the store's terms.
        way_out: &'static str,
    },
    #[error(
        "{marker} names store {marked}, but the backup is of store {restored}: a data dir takes back only its own store; give another --data-dir, or remove {marker} to put store {restored} here"
    )]
    MarkedOther {
        marker: PathBuf,
        marked: String,
        restored: String,
    },
    #[error(
        "store {path} has format {held}, newer than this weft-controller reads ({STORE_FORMAT}): run the version that wrote it"
    )]
    Newer { path: PathBuf, held: u64 },
    #[error("store {at}: {}", reason(.cause))]
    Etcd {
        at: String,
        cause: etcd_client::Error,
    },
    #[error("cannot reach {at} (is etcd running, and are --etcd-endpoints right?)")]
    EtcdUnreachable { at: String },
    #[error("store {at} is not as a weft-controller writes it: {why}")]
    EtcdLayout { at: String, why: String },
    #[error("store {path}: corrupt record: {cause}")]
    Decode {
        path: PathBuf,
        cause: prost::DecodeError,
    },
    #[error("store {path}: {row}")]
    BadRow {
        path: PathBuf,
        row: weft_proto::rows::BadRow,
    },
    #[error(
        "{path} {how}, but this data dir held a store ({}): restore {STORE_FILE} from a backup, or start with --accept-empty-store to begin again with empty tables (agents keep their datapath and refuse the new store until told to follow it)",
        .evidence.join("; ")
    )]
    Emptied {
        path: PathBuf,
        how: &'static str,
        evidence: Vec<String>,
    },
    #[error(
        "{path} holds store {held}, but {marker} names store {marked}: {STORE_FILE} was replaced by another store's; put this data dir's own back, or remove {marker} to serve the store it holds"
    )]
    Replaced {
        path: PathBuf,
        held: String,
        marker: PathBuf,
        marked: String,
    },
    #[error(
        "store {path} holds revision {held} after a failed commit, not {expected}: the commit reached the disk after all; the controller stops, to serve what the store holds once started again"
    )]
    Diverged {
        path: PathBuf,
        held: u64,
        expected: u64,
    },
    /// Another controller on the store committed first: catch up and plan again.
    #[error(
        "store {path} moved on to revision {held} while this controller was at {expected}: another controller committed first"
    )]
    Moved {
        path: PathBuf,
        held: u64,
        expected: u64,
    },
    /// A controller that lost a race commits next: wait for it, catch up and plan again.
    #[error(
        "store {path} is another controller's to commit to first (it lost a race and holds meta/turn{})",
        if *.waited { ", for longer than its lease" } else { "" }
    )]
    Turn { path: PathBuf, waited: bool },
    #[error(
        "store {path} no longer holds the changes after revision {at} (its log starts at {starts}): this controller fell too far behind the others; it stops, to load the tables afresh once started again"
    )]
    Outrun { path: PathBuf, at: u64, starts: u64 },
}

pub(super) fn file_err(
    doing: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |cause| StoreError::File { doing, path, cause }
}

/// What went wrong in a request to etcd, in a line: gRPC's message and the innermost cause
/// (say, "tcp connect error: Connection refused (os error 111)") rather than the nested debug
/// forms of tonic's errors.
fn reason(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return e.to_string();
    };
    let mut innermost: Option<&dyn std::error::Error> = None;
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        innermost = Some(cause);
        source = cause.source();
    }
    match innermost {
        Some(cause) => format!("{}: {cause}", status.message()),
        None => status.message().to_string(),
    }
}
