//! Durable copy of the tables in redb (one file under `--data-dir`). Every batch of changes is
//! written in one transaction, fsynced before the caller reports success.

use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use weft_proto::v1::{DnsRecord, Endpoint, Network, Peer, delta::Change};

use weft_proto::tables::{Tables, dns_record_id, endpoint_id};

const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
/// Keyed by (peer, network, container id).
const ENDPOINTS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("endpoints");
/// Keyed by (name, ip). Stores from before it have none.
const DNS_RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("dns_records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path}: {source}")]
    Redb { path: PathBuf, source: redb::Error },
    #[error("store {path}: corrupt record: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store in `dir` and loads the tables it holds.
    pub fn open(dir: &Path) -> Result<(Store, Tables), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("weft.redb");
        let db = Database::create(&path).map_err(|e| StoreError::Redb {
            path: path.clone(),
            source: e.into(),
        })?;
        let store = Store { db, path };
        let tables = store.load()?;
        Ok((store, tables))
    }

    fn redb_err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Redb {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    fn decode<M: Message + Default>(&self, bytes: &[u8]) -> Result<M, StoreError> {
        M::decode(bytes).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            source,
        })
    }

    fn load(&self) -> Result<Tables, StoreError> {
        let mut tables = Tables::default();
        let txn = self.db.begin_read().map_err(|e| self.redb_err(e))?;
        // Tables that were never written do not exist yet: an empty store.
        let Ok(meta) = txn.open_table(META) else {
            return Ok(tables);
        };
        if let Some(rev) = meta.get(REVISION).map_err(|e| self.redb_err(e))? {
            tables.revision = rev.value();
        }
        for row in txn
            .open_table(PEERS)
            .map_err(|e| self.redb_err(e))?
            .iter()
            .map_err(|e| self.redb_err(e))?
        {
            let (_, v) = row.map_err(|e| self.redb_err(e))?;
            let peer: Peer = self.decode(v.value())?;
            tables.peers.insert(peer.name.clone(), peer);
        }
        for row in txn
            .open_table(NETWORKS)
            .map_err(|e| self.redb_err(e))?
            .iter()
            .map_err(|e| self.redb_err(e))?
        {
            let (_, v) = row.map_err(|e| self.redb_err(e))?;
            let net: Network = self.decode(v.value())?;
            tables.networks.insert(net.name.clone(), net);
        }
        for row in txn
            .open_table(ENDPOINTS)
            .map_err(|e| self.redb_err(e))?
            .iter()
            .map_err(|e| self.redb_err(e))?
        {
            let (_, v) = row.map_err(|e| self.redb_err(e))?;
            let ep: Endpoint = self.decode(v.value())?;
            tables.endpoints.insert(endpoint_id(&ep), ep);
        }
        match txn.open_table(DNS_RECORDS) {
            Ok(records) => {
                for row in records.iter().map_err(|e| self.redb_err(e))? {
                    let (_, v) = row.map_err(|e| self.redb_err(e))?;
                    let record: DnsRecord = self.decode(v.value())?;
                    tables.dns_records.insert(dns_record_id(&record), record);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.redb_err(e)),
        }
        Ok(tables)
    }

    /// Writes `changes` and the revision they lead to in one durable transaction.
    pub fn commit(&self, changes: &[Change], revision: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.redb_err(e))?;
        {
            let mut peers = txn.open_table(PEERS).map_err(|e| self.redb_err(e))?;
            let mut networks = txn.open_table(NETWORKS).map_err(|e| self.redb_err(e))?;
            let mut endpoints = txn.open_table(ENDPOINTS).map_err(|e| self.redb_err(e))?;
            let mut dns_records = txn.open_table(DNS_RECORDS).map_err(|e| self.redb_err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.redb_err(e))?;
            for change in changes {
                let written = match change {
                    Change::PeerPut(p) => {
                        peers.insert(p.name.as_str(), p.encode_to_vec().as_slice())
                    }
                    Change::PeerDeleted(name) => peers.remove(name.as_str()),
                    Change::NetworkPut(n) => {
                        networks.insert(n.name.as_str(), n.encode_to_vec().as_slice())
                    }
                    Change::NetworkDeleted(name) => networks.remove(name.as_str()),
                    Change::EndpointPut(ep) => endpoints.insert(
                        (
                            ep.peer.as_str(),
                            ep.network.as_str(),
                            ep.container_id.as_str(),
                        ),
                        ep.encode_to_vec().as_slice(),
                    ),
                    Change::EndpointDeleted(k) => endpoints.remove((
                        k.peer.as_str(),
                        k.network.as_str(),
                        k.container_id.as_str(),
                    )),
                    Change::DnsRecordPut(r) => dns_records.insert(
                        (r.name.as_str(), r.ip.as_str()),
                        r.encode_to_vec().as_slice(),
                    ),
                    Change::DnsRecordDeleted(r) => {
                        dns_records.remove((r.name.as_str(), r.ip.as_str()))
                    }
                };
                written.map_err(|e| self.redb_err(e))?;
            }
            meta.insert(REVISION, revision)
                .map_err(|e| self.redb_err(e))?;
        }
        txn.commit().map_err(|e| self.redb_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn tables_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Tables::default();
        {
            let (store, tables) = Store::open(dir.path()).unwrap();
            assert_eq!(tables, Tables::default());
            let changes = vec![
                Change::PeerPut(Peer {
                    name: "host1".into(),
                    advertise_addr: "198.18.0.1".into(),
                }),
                Change::NetworkPut(Network {
                    name: "default".into(),
                    subnet: "10.32.0.0/12".into(),
                    vni: 1,
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
                expected.apply(c);
            }
            store.commit(&changes, expected.revision).unwrap();
        }
        let (_, reloaded) = Store::open(dir.path()).unwrap();
        assert_eq!(reloaded, expected);
        assert_eq!(reloaded.revision, 5);
        assert_eq!(reloaded.endpoints.len(), 1);
    }
}
