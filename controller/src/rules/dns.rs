//! DNS records beside the containers' own names: added and removed by their peer, gone with
//! their container or peer.

use weft_proto::addr::parse_ip;
use weft_proto::dns_name;
use weft_proto::rows::{RecordRow, RowChange};
use weft_proto::tables::Tables;
use weft_proto::v1::DnsRecord;

use super::{TableError, View};

pub(super) fn update_dns(
    view: &View,
    peer: &str,
    remove: bool,
    records: &[DnsRecord],
) -> Result<Vec<RowChange>, TableError> {
    if !view.tables.peers.contains_key(peer) {
        return Err(TableError::UnknownPeer(peer.to_string()));
    }
    let mut changes = Vec::new();
    for record in records {
        let name = dns_name::normalize(&record.name).map_err(TableError::Invalid)?;
        let ip = parse_ip(&record.ip).map_err(TableError::Invalid)?;
        let record = RecordRow {
            name,
            ip,
            peer: peer.to_string(),
            container: record.container_id.clone(),
        };
        let existing = view.tables.dns_records.get(&record.id());
        match (remove, existing) {
            (false, Some(r)) if *r == record => {}
            (false, _) => changes.push(RowChange::RecordPut(record)),
            (true, Some(r)) => changes.push(RowChange::RecordDeleted(r.clone())),
            (true, None) => {
                return Err(TableError::NoDnsRecord {
                    name: record.name,
                    ip: record.ip.to_string(),
                });
            }
        }
    }
    Ok(changes)
}

/// The changes that delete the DNS records `which` selects.
pub(super) fn delete_dns_records(
    tables: &Tables,
    which: impl Fn(&RecordRow) -> bool,
) -> Vec<RowChange> {
    tables
        .dns_records
        .values()
        .filter(|r| which(r))
        .map(|r| RowChange::RecordDeleted(r.clone()))
        .collect()
}
