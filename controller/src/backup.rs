//! `weft-controller backup FILE` and `restore FILE`: a consistent copy of a store's tables in
//! one file, and their restoration into an empty store. A backup keeps the store's identity and
//! revision, so agents that are not ahead of it follow the restored store as they did the old.
//!
//! The file is a line saying what it is, the `Backup` message and the SHA-256 of that message:
//! a truncated or altered copy is refused, not restored with rows missing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use prost::Message;
use ring::digest::{SHA256, SHA256_OUTPUT_LEN, digest};
use weft_proto::rows::BadRow;
use weft_proto::snapshot;
use weft_proto::tables::Tables;
use weft_proto::v1::{Backup, watch_event::Event};

use crate::store::{Location, STORE_FORMAT, Store, StoreError};

/// What a backup file begins with.
const MAGIC: &[u8] = b"weft-controller backup\n";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot {doing} {path}: {cause}")]
    File {
        doing: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is not a weft-controller backup")]
    NotBackup { path: PathBuf },
    #[error("{path} is damaged ({why}): restore another copy")]
    Damaged { path: PathBuf, why: String },
    #[error(
        "{path} is a backup of store format {held}, newer than this weft-controller reads ({STORE_FORMAT}): restore it with the version that made it"
    )]
    Newer { path: PathBuf, held: u64 },
    #[error("{path} holds a row that does not read: {row}")]
    BadRow { path: PathBuf, row: BadRow },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn file_err(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |cause| BackupError::File { doing, path, cause }
}

/// Copies the tables of the store at `location` to `file` (root-only, replaced whole or not at
/// all); returns them.
pub fn backup(location: &Location, file: &Path) -> Result<Tables, BackupError> {
    let tables = Store::read(location)?;
    write(file, &encode(&tables))?;
    Ok(tables)
}

/// Puts the tables of backup `file` into the empty store at `location`; returns them.
pub fn restore(file: &Path, location: &Location) -> Result<Tables, BackupError> {
    let bytes = fs::read(file).map_err(file_err("read", file))?;
    let tables = decode(file, &bytes)?;
    Store::restore(location, &tables)?;
    Ok(tables)
}

fn encode(tables: &Tables) -> Vec<u8> {
    let Some(Event::Snapshot(whole)) = snapshot::whole(&snapshot::parts(tables)).event else {
        unreachable!("a snapshot's parts make a snapshot");
    };
    let message = Backup {
        format: STORE_FORMAT,
        store_id: tables.store_id.clone(),
        revision: tables.revision,
        tables: Some(whole),
    }
    .encode_to_vec();
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&message);
    bytes.extend_from_slice(digest(&SHA256, &message).as_ref());
    bytes
}

fn decode(file: &Path, bytes: &[u8]) -> Result<Tables, BackupError> {
    let damaged = |why: String| BackupError::Damaged {
        path: file.to_path_buf(),
        why,
    };
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| BackupError::NotBackup {
            path: file.to_path_buf(),
        })?;
    let Some(split) = body.len().checked_sub(SHA256_OUTPUT_LEN) else {
        return Err(damaged("cut short".into()));
    };
    let (message, sum) = body.split_at(split);
    if digest(&SHA256, message).as_ref() != sum {
        return Err(damaged(
            "its checksum does not match: cut short or altered".into(),
        ));
    }
    let backup = Backup::decode(message).map_err(|e| damaged(e.to_string()))?;
    if backup.format > STORE_FORMAT {
        return Err(BackupError::Newer {
            path: file.to_path_buf(),
            held: backup.format,
        });
    }
    let (tables, bad) = Tables::from_snapshot(
        backup.revision,
        backup.store_id,
        backup.tables.unwrap_or_default(),
    );
    match bad.into_iter().next() {
        Some(row) => Err(BackupError::BadRow {
            path: file.to_path_buf(),
            row,
        }),
        None => Ok(tables),
    }
}

/// Writes `bytes` to `file` through a root-only temporary file beside it, synced and renamed
/// over it: a failed write leaves `file` as it was and no temporary file.
fn write(file: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    let partial = PathBuf::from(name);
    let written = (|| {
        let _ = fs::remove_file(&partial);
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        out.write_all(bytes)?;
        out.sync_all()?;
        fs::rename(&partial, file)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&partial);
    }
    written.map_err(file_err("write", file))?;
    // The rename is durable once the directory is.
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_err("sync the directory of", file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Emptied;

    fn at(dir: &Path) -> Location {
        Location::Redb(dir.to_path_buf())
    }

    /// A store in a temporary data dir holding a peer, a network and an endpoint.
    fn held() -> (tempfile::TempDir, Tables) {
        use weft_proto::v1::{Endpoint, Network, Peer, delta::Change};
        let dir = tempfile::tempdir().unwrap();
        let (mut store, tables) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        let changes = [
            Change::PeerPut(Peer {
                name: "host1".into(),
                advertise_addr: "198.18.0.1".into(),
                ..Default::default()
            }),
            Change::NetworkPut(Network {
                name: "default".into(),
                vni: 1,
                subnet: "10.32.0.0/12".into(),
                ..Default::default()
            }),
            Change::EndpointPut(Endpoint {
                network: "default".into(),
                container_id: "c1".into(),
                mac: "02:00:00:00:00:01".into(),
                cidrs: vec!["10.32.0.2/12".into()],
                peer: "host1".into(),
                host_ifname: "vethwepl1".into(),
                container_ifname: "ethwe".into(),
                dns_name: String::new(),
            }),
        ];
        store.commit(&changes, 3).unwrap();
        drop(store);
        let read = Store::read(&at(dir.path())).unwrap();
        assert_eq!(read.store_id, tables.store_id);
        (dir, read)
    }

    #[test]
    fn a_backup_restores_the_same_tables_into_an_empty_data_dir() {
        let (dir, tables) = held();
        assert_eq!((tables.revision, tables.endpoints.len()), (3, 1));
        let file = dir.path().join("copy");
        assert_eq!(backup(&at(dir.path()), &file).unwrap(), tables);
        let other = tempfile::tempdir().unwrap();
        let into = other.path().join("new");
        assert_eq!(restore(&file, &at(&into)).unwrap(), tables);
        let (_, reopened) = Store::open(&into, Emptied::Refuse).unwrap();
        assert_eq!(reopened, tables, "the store id and revision come back too");
    }

    #[test]
    fn a_backup_that_is_cut_altered_or_not_one_is_refused_and_nothing_is_made() {
        let (dir, tables) = held();
        let good = encode(&tables);
        let file = dir.path().join("copy");
        let cut = &good[..good.len() - 40];
        let mut altered = good.clone();
        altered[MAGIC.len() + 5] ^= 1;
        let cases: [(&[u8], String); 4] = [
            (
                cut,
                format!(
                    "{} is damaged (its checksum does not match: cut short or altered): restore another copy",
                    file.display()
                ),
            ),
            (
                &altered,
                format!(
                    "{} is damaged (its checksum does not match: cut short or altered): restore another copy",
                    file.display()
                ),
            ),
            (
                &good[..MAGIC.len() + 3],
                format!(
                    "{} is damaged (cut short): restore another copy",
                    file.display()
                ),
            ),
            (
                b"SQLite format 3\0",
                format!("{} is not a weft-controller backup", file.display()),
            ),
        ];
        let into = dir.path().join("new");
        for (bytes, message) in cases {
            fs::write(&file, bytes).unwrap();
            let e = restore(&file, &at(&into)).unwrap_err();
            assert_eq!(e.to_string(), message);
            assert!(!into.exists(), "nothing made for {message}");
        }
    }

    #[test]
    fn a_backup_of_a_newer_format_is_refused() {
        let (dir, tables) = held();
        let message = Backup {
            format: STORE_FORMAT + 1,
            store_id: tables.store_id.clone(),
            revision: 1,
            tables: None,
        }
        .encode_to_vec();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&message);
        bytes.extend_from_slice(digest(&SHA256, &message).as_ref());
        let file = dir.path().join("copy");
        fs::write(&file, bytes).unwrap();
        assert_eq!(
            restore(&file, &at(&dir.path().join("new")))
                .unwrap_err()
                .to_string(),
            format!(
                "{} is a backup of store format 2, newer than this weft-controller reads (1): restore it with the version that made it",
                file.display()
            )
        );
    }

    #[test]
    fn a_restore_into_a_store_that_holds_tables_or_is_marked_for_another_changes_nothing() {
        let (dir, tables) = held();
        let file = dir.path().join("copy");
        backup(&at(dir.path()), &file).unwrap();
        let store = dir.path().join(crate::store::STORE_FILE);
        let before = fs::read(&store).unwrap();
        assert_eq!(
            restore(&file, &at(dir.path())).unwrap_err().to_string(),
            format!(
                "store {} is not empty (it holds store {} at revision 3): a backup is restored into an empty store; give another --data-dir, or move this one aside",
                store.display(),
                tables.store_id
            )
        );
        assert!(
            fs::read(&store).unwrap() == before,
            "the store is left as it was"
        );

        let other = tempfile::tempdir().unwrap();
        let marker = other.path().join(crate::store::MARKER_FILE);
        fs::write(&marker, "5e3f\n").unwrap();
        assert_eq!(
            restore(&file, &at(other.path())).unwrap_err().to_string(),
            format!(
                "{} names store 5e3f, but the backup is of store {id}: a data dir takes back only its own store; give another --data-dir, or remove {} to put store {id} here",
                marker.display(),
                marker.display(),
                id = tables.store_id
            )
        );
        assert!(!other.path().join(crate::store::STORE_FILE).exists());
    }

    #[test]
    fn a_failed_write_leaves_the_old_backup_as_it_was() {
        let (dir, tables) = held();
        let file = dir.path().join("copy");
        fs::write(&file, b"the old backup").unwrap();
        // A directory where the partial file would go makes the write fail.
        fs::create_dir(dir.path().join("copy.partial")).unwrap();
        fs::write(dir.path().join("copy.partial").join("x"), b"").unwrap();
        let e = write(&file, &encode(&tables)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot write {}: ", file.display())),
            "{e}"
        );
        assert!(
            fs::read(&file).unwrap() == b"the old backup",
            "the old backup is left"
        );
    }
}
