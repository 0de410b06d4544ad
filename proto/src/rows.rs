//! The typed values in the tables' rows, read from their wire strings by one set of parsers:
//! an agent checks each row as it arrives and refuses one that does not read, naming it, so
//! what it keeps always does; the controller reads addresses with the same parser.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::addr::{AddrError, parse_cidr};
use crate::names::Mac;
use crate::tables::EndpointId;
use crate::v1::{DnsRecord, Endpoint, Network, Peer, Snapshot, delta::Change};

/// A row that does not read: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{row}: {why}")]
pub struct BadRow {
    pub row: String,
    pub why: String,
}

/// An endpoint's address list (`IP/LEN` each): the one parser of it.
pub fn cidrs(list: &[String]) -> Result<Vec<Ipv4Network>, AddrError> {
    list.iter().map(|c| parse_cidr(c, c)).collect()
}

/// The addresses of CIDRs, without their prefix length: what the commands report.
pub fn ips_of(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|c| {
            c.split_once('/')
                .map_or(c.as_str(), |(ip, _)| ip)
                .to_string()
        })
        .collect()
}

/// What an endpoint row holds beyond names: its MAC and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAddrs {
    pub mac: Mac,
    pub cidrs: Vec<Ipv4Network>,
}

impl EndpointAddrs {
    pub fn of(ep: &Endpoint) -> Result<EndpointAddrs, BadRow> {
        let bad = |why: String| BadRow {
            row: EndpointId::of(ep).to_string(),
            why,
        };
        Ok(EndpointAddrs {
            mac: ep.mac.parse().map_err(bad)?,
            cidrs: cidrs(&ep.cidrs).map_err(|e| bad(e.to_string()))?,
        })
    }
}

/// A peer's VTEP address.
pub fn peer_addr(peer: &Peer) -> Result<Ipv4Addr, BadRow> {
    peer.advertise_addr.parse().map_err(|_| BadRow {
        row: format!("peer {}", peer.name),
        why: format!("\"{}\" is not an IPv4 address", peer.advertise_addr),
    })
}

/// A network's subnet.
pub fn network_subnet(network: &Network) -> Result<Ipv4Network, BadRow> {
    let subnet = &network.subnet;
    parse_cidr(subnet, subnet).map_err(|e| BadRow {
        row: format!("network {}", network.name),
        why: e.to_string(),
    })
}

/// A DNS record's address.
pub fn record_ip(record: &DnsRecord) -> Result<Ipv4Addr, BadRow> {
    record.ip.parse().map_err(|_| BadRow {
        row: format!("DNS record {}", record.name),
        why: format!("\"{}\" is not an IPv4 address", record.ip),
    })
}

/// Whether what `change` puts in the tables reads; deletions always do.
pub fn check(change: &Change) -> Result<(), BadRow> {
    match change {
        Change::PeerPut(peer) => peer_addr(peer).map(drop),
        Change::NetworkPut(network) => network_subnet(network).map(drop),
        Change::EndpointPut(ep) => EndpointAddrs::of(ep).map(drop),
        Change::DnsRecordPut(record) => record_ip(record).map(drop),
        Change::PeerDeleted(_)
        | Change::NetworkDeleted(_)
        | Change::EndpointDeleted(_)
        | Change::DnsRecordDeleted(_) => Ok(()),
    }
}

/// Takes the rows that do not read out of a snapshot; returns them, each with why.
pub fn refuse_bad_rows(snapshot: &mut Snapshot) -> Vec<BadRow> {
    let mut refused = Vec::new();
    let mut keep = |checked: Result<(), BadRow>| match checked {
        Ok(()) => true,
        Err(bad) => {
            refused.push(bad);
            false
        }
    };
    snapshot.peers.retain(|p| keep(peer_addr(p).map(drop)));
    snapshot
        .networks
        .retain(|n| keep(network_subnet(n).map(drop)));
    snapshot
        .endpoints
        .retain(|ep| keep(EndpointAddrs::of(ep).map(drop)));
    snapshot
        .dns_records
        .retain(|r| keep(record_ip(r).map(drop)));
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(mac: &str, cidrs: &[&str]) -> Endpoint {
        Endpoint {
            peer: "host1".into(),
            network: "default".into(),
            container_id: "c1".into(),
            mac: mac.into(),
            cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            ..Endpoint::default()
        }
    }

    #[test]
    fn a_row_that_does_not_read_is_named_with_why() {
        let good = ep("02:00:0a:20:00:05", &["10.32.0.5/12"]);
        assert_eq!(
            EndpointAddrs::of(&good).unwrap(),
            EndpointAddrs {
                mac: "02:00:0a:20:00:05".parse().unwrap(),
                cidrs: vec!["10.32.0.5/12".parse().unwrap()],
            }
        );
        let e = EndpointAddrs::of(&ep("02:00", &["10.32.0.5/12"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "endpoint of c1 in network default on host1: \"02:00\" is not a MAC address"
        );
        let e = EndpointAddrs::of(&ep("02:00:0a:20:00:05", &["10.32.0.300/12"])).unwrap_err();
        assert_eq!(
            e.why,
            "invalid address \"10.32.0.300/12\": \"10.32.0.300\" is not an IPv4 address"
        );
        let peer = Peer {
            name: "host2".into(),
            advertise_addr: "nowhere".into(),
        };
        assert_eq!(
            check(&Change::PeerPut(peer)).unwrap_err().to_string(),
            "peer host2: \"nowhere\" is not an IPv4 address"
        );
    }

    #[test]
    fn a_snapshot_keeps_the_rows_that_read() {
        let mut snapshot = Snapshot {
            endpoints: vec![
                ep("02:00:0a:20:00:05", &["10.32.0.5/12"]),
                ep("zz", &["10.32.0.6/12"]),
            ],
            networks: vec![Network {
                name: "blue".into(),
                subnet: "10.9.0.300/24".into(),
                vni: 2,
            }],
            ..Snapshot::default()
        };
        let refused = refuse_bad_rows(&mut snapshot);
        assert_eq!(snapshot.endpoints.len(), 1);
        assert_eq!(snapshot.endpoints[0].mac, "02:00:0a:20:00:05");
        assert!(snapshot.networks.is_empty());
        let rows: Vec<&str> = refused.iter().map(|b| b.row.as_str()).collect();
        assert_eq!(
            rows,
            ["network blue", "endpoint of c1 in network default on host1"]
        );
    }

    #[test]
    fn ips_drop_their_prefix() {
        assert_eq!(
            ips_of(&["10.32.0.5/12".into(), "192.168.0.2".into()]),
            ["10.32.0.5", "192.168.0.2"]
        );
    }
}
