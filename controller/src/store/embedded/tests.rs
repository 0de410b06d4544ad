//! The store against real files: reopening, identities, emptied and replaced stores, a full disk.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use weft_proto::rows::RowChange;
use weft_proto::v1::EndpointKey;

fn ep(container: &str) -> Endpoint {
    Endpoint {
        network: "default".into(),
        container_id: container.into(),
        mac: "02:00:00:00:00:01".into(),
        cidrs: vec!["192.168.0.2/24".into()],
        peer: "host1".into(),
        host_ifname: "vethwepl1".into(),
        container_ifname: "ethwe".into(),
        dns_name: String::new(),
    }
}

fn peer(n: u32) -> Change {
    Change::PeerPut(Peer {
        name: format!("host{n}"),
        advertise_addr: format!("198.18.0.{n}"),
        ..Default::default()
    })
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn marker(dir: &Path) -> String {
    fs::read_to_string(dir.join(MARKER_FILE)).unwrap()
}

/// A data dir whose store holds one peer, at revision 1; and the store's id.
fn held_store() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, tables) = RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
    store.commit(&[peer(1)], 1).unwrap();
    (dir, tables.store_id)
}

#[test]
fn tables_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Tables::default();
    {
        let (mut store, tables) = RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
        expected.store_id = tables.store_id.clone();
        assert_eq!(tables, expected);
        let changes = vec![
            peer(1),
            Change::NetworkPut(Network {
                name: "default".into(),
                subnet: "10.32.0.0/12".into(),
                vni: 1,
                ..Default::default()
            }),
            Change::EndpointPut(ep("netns:a/b")),
            Change::EndpointPut(ep("netns:c")),
            Change::EndpointDeleted(EndpointKey {
                peer: "host1".into(),
                container_id: "netns:c".into(),
                network: "default".into(),
            }),
        ];
        for c in &changes {
            expected.apply(RowChange::read(c.clone()).unwrap());
        }
        store.commit(&changes, expected.revision).unwrap();
    }
    let (store, reloaded) = RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
    assert_eq!(reloaded, expected);
    assert_eq!(reloaded.revision, 5);
    assert_eq!(reloaded.endpoints.len(), 1);
    // The changes too, numbered by their revisions, for resuming agents after a restart.
    let history = store.history(5).unwrap();
    let revisions: Vec<u64> = history.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, [1, 2, 3, 4, 5]);
    let Some(Event::Delta(Delta {
        change: Some(first),
    })) = &history[0].event
    else {
        panic!("not a delta: {:?}", history[0]);
    };
    assert_eq!(first, &peer(1));
    // Only an unbroken run up to the revision asked for.
    assert_eq!(store.history(3).unwrap().len(), 3);
}

#[test]
fn a_store_of_a_newer_format_or_that_does_not_read_is_refused_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    drop(RedbStore::open(dir.path(), Emptied::Refuse).unwrap());
    let path = dir.path().join(STORE_FILE);
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        assert_eq!(
            txn.open_table(META)
                .unwrap()
                .get(FORMAT)
                .unwrap()
                .map(|f| f.value()),
            Some(STORE_FORMAT),
            "a store is marked with its format"
        );
        txn.open_table(META).unwrap().insert(FORMAT, 2).unwrap();
        txn.commit().unwrap();
    }
    let e = RedbStore::open(dir.path(), Emptied::Refuse).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "store {} has format 2, newer than this weft-controller reads (1): run the version that wrote it",
            path.display()
        )
    );

    fs::write(
        &path,
        b"not a database, and long enough to be read as a header".repeat(100),
    )
    .unwrap();
    let before = fs::read(&path).unwrap();
    let e = RedbStore::open(dir.path(), Emptied::Refuse).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "store {} cannot be read (I/O error: Not a redb database: magic number mismatch): it is damaged or not a weft store; restore weft.redb from a backup",
            path.display()
        )
    );
    assert_eq!(fs::read(&path).unwrap(), before, "left as it was");
}

#[test]
fn a_failed_commit_that_reached_the_disk_is_found_on_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
    store.commit(&[peer(1)], 1).unwrap();
    store.commit(&[peer(2)], 2).unwrap();
    // As if the second had been reported failed: the store holds more than the tables.
    store.committed = 1;
    store.poisoned = true;
    let e = store.commit(&[peer(3)], 2).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "store {} holds revision 2 after a failed commit, not 1: the commit reached the disk after all; the controller stops, to serve what the store holds once started again",
            dir.path().join(STORE_FILE).display()
        )
    );
}

#[test]
fn only_the_latest_changes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
    let batch: Vec<Change> = (0..1000).map(|n| peer(n % 7)).collect();
    let batches = DELTAS_KEPT / 1000 + 2;
    for b in 1..=batches {
        store.commit(&batch, b * 1000).unwrap();
    }
    let history = store.history(batches * 1000).unwrap();
    assert_eq!(history.len() as u64, DELTAS_KEPT);
    assert_eq!(history[0].revision, batches * 1000 - DELTAS_KEPT + 1);
}

#[test]
fn a_new_store_gets_an_identity_kept_in_the_file_and_the_marker_all_root_only() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("controller");
    let (_, tables) = RedbStore::open(&dir, Emptied::Refuse).unwrap();
    let id = &tables.store_id;
    assert_eq!(id.len(), 32, "{id}");
    assert!(
        id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{id}"
    );
    assert_eq!(marker(&dir), format!("{id}\n"));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(STORE_FILE)), 0o600);
    assert_eq!(mode(&dir.join(MARKER_FILE)), 0o600);
    // Another store, in another dir, is another identity.
    let (_, other) = RedbStore::open(&parent.path().join("other"), Emptied::Refuse).unwrap();
    assert_ne!(&other.store_id, id);
}

#[test]
fn a_store_keeps_its_identity_and_a_lost_marker_is_written_again() {
    let (dir, id) = held_store();
    fs::remove_file(dir.path().join(MARKER_FILE)).unwrap();
    let (_, tables) = RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
    assert_eq!(tables.store_id, id);
    assert_eq!(tables.peers.len(), 1);
    assert_eq!(marker(dir.path()), format!("{id}\n"));
}

#[test]
fn modes_of_an_older_data_dir_are_restricted_on_open() {
    let (dir, _) = held_store();
    let file = dir.path().join(STORE_FILE);
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
    assert_eq!(mode(dir.path()), 0o700);
    assert_eq!(mode(&file), 0o600);
}

#[test]
fn an_emptied_or_removed_store_is_refused_and_left_as_it_is() {
    let (dir, id) = held_store();
    let file = dir.path().join(STORE_FILE);
    fs::File::create(&file).unwrap();
    let Err(e) = RedbStore::open(dir.path(), Emptied::Refuse) else {
        panic!("an emptied store is served");
    };
    assert_eq!(
        e.to_string(),
        format!(
            "{} is empty (0 bytes), but this data dir held a store (store-id names store {id}): restore weft.redb from a backup, or start with --accept-empty-store to begin again with empty tables (agents keep their datapath and refuse the new store until told to follow it)",
            file.display()
        )
    );
    assert_eq!(fs::metadata(&file).unwrap().len(), 0);
    assert_eq!(marker(dir.path()), format!("{id}\n"));

    // The CA key alone shows it too.
    fs::remove_file(&file).unwrap();
    fs::remove_file(dir.path().join(MARKER_FILE)).unwrap();
    fs::write(dir.path().join("ca.key"), "key").unwrap();
    let Err(e) = RedbStore::open(dir.path(), Emptied::Refuse) else {
        panic!("a removed store is served");
    };
    assert_eq!(
        e.to_string(),
        format!(
            "{} is missing, but this data dir held a store (ca.key is there): restore weft.redb from a backup, or start with --accept-empty-store to begin again with empty tables (agents keep their datapath and refuse the new store until told to follow it)",
            file.display()
        )
    );
    assert!(!file.exists());
}

#[test]
fn accepting_an_emptied_store_begins_again_as_a_new_store() {
    let (dir, id) = held_store();
    fs::File::create(dir.path().join(STORE_FILE)).unwrap();
    let (_, tables) = RedbStore::open(dir.path(), Emptied::BeginAgain).unwrap();
    assert_ne!(tables.store_id, id);
    assert_eq!(
        tables,
        Tables {
            store_id: tables.store_id.clone(),
            ..Tables::default()
        }
    );
    assert_eq!(marker(dir.path()), format!("{}\n", tables.store_id));
    // And it is that store from then on, flag or not.
    let (_, again) = RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
    assert_eq!(again.store_id, tables.store_id);
}

#[test]
fn a_store_of_another_data_dir_is_refused() {
    let (dir, id) = held_store();
    let (other, other_id) = held_store();
    let file = dir.path().join(STORE_FILE);
    fs::copy(other.path().join(STORE_FILE), &file).unwrap();
    let Err(e) = RedbStore::open(dir.path(), Emptied::Refuse) else {
        panic!("a replaced store is served");
    };
    let marker = dir.path().join(MARKER_FILE);
    assert_eq!(
        e.to_string(),
        format!(
            "{} holds store {other_id}, but {} names store {id}: weft.redb was replaced by another store's; put this data dir's own back, or remove {} to serve the store it holds",
            file.display(),
            marker.display(),
            marker.display()
        )
    );
}

#[test]
fn a_store_from_before_identities_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What an older controller left: tables, no identity, no marker.
        let db = Database::create(dir.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(PEERS).unwrap();
        txn.open_table(NETWORKS).unwrap();
        txn.open_table(ENDPOINTS).unwrap();
        txn.open_table(META).unwrap().insert(REVISION, 7).unwrap();
        txn.commit().unwrap();
    }
    let (_, tables) = RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
    assert_eq!(tables.revision, 7);
    assert_eq!(tables.store_id.len(), 32);
    assert_eq!(marker(dir.path()), format!("{}\n", tables.store_id));
    let (_, again) = RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
    assert_eq!(again.store_id, tables.store_id);
}

/// A file whose writes fail with ENOSPC while `full` is set, as on a full disk.
#[derive(Debug)]
struct FullDisk {
    file: redb::backends::FileBackend,
    full: Arc<AtomicBool>,
}

impl FullDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
        }
        Ok(())
    }
}

impl redb::StorageBackend for FullDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }
}

#[test]
fn a_full_disk_fails_commits_with_its_cause_until_there_is_room_again() {
    let (dir, _) = held_store();
    let full = Arc::new(AtomicBool::new(false));
    let open_db: OpenDb = Box::new({
        let full = full.clone();
        move |path| {
            let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
            let file = redb::backends::FileBackend::new(file)?;
            redb::Builder::new().create_with_backend(FullDisk {
                file,
                full: full.clone(),
            })
        }
    });
    let (mut store, _) = RedbStore::open_with(dir.path(), Emptied::Refuse, open_db).unwrap();
    full.store(true, Ordering::SeqCst);
    // The failed commit, and the next ones while the disk is still full (each opening the
    // database again first): the real cause each time, never redb's "Previous I/O error".
    let path = dir.path().join(STORE_FILE);
    for revision in [2, 2, 2] {
        let e = store.commit(&[peer(2)], revision).unwrap_err();
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            shown,
            format!(
                "store {}: I/O error: No space left on device (os error 28)",
                path.display()
            )
        );
    }
    full.store(false, Ordering::SeqCst);
    store.commit(&[peer(2)], 2).unwrap();
    store.commit(&[peer(3)], 3).unwrap();
    drop(store);
    let (_, tables) = RedbStore::open(dir.path(), Emptied::Refuse).unwrap();
    assert_eq!(tables.revision, 3);
    assert_eq!(tables.peers.len(), 3);
}
