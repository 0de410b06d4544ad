//! The tables' rows as typed values, converted from their wire form once: where a row arrives
//! (an agent's watch, the controller's store) it is read here or refused, naming it; everything
//! after works on [`PeerRow`], [`NetworkRow`], [`EndpointRow`] and [`RecordRow`], and turns them
//! back into wire rows only to send or store them. Addresses are family-generic (`IpAddr`,
//! `IpNetwork`); the parts of weft that speak IPv4 only take the IPv4 ones with [`ipv4`].

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::addr::parse_ip;
use crate::names::Mac;
use crate::tables::EndpointId;
use crate::v1::{DnsRecord, Endpoint, Network, Peer, delta::Change};
use crate::wireguard::WgKey;

/// A row that does not read: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{row}: {why}")]
pub struct BadRow {
    pub row: String,
    pub why: String,
}

/// A host: its name and the VTEP address other hosts send VXLAN traffic to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    pub name: String,
    pub addr: IpAddr,
    /// Where its encrypted networks' frames go in WireGuard; none: it has no key (an agent
    /// from before encryption).
    pub wireguard: Option<WgPeer>,
}

/// A host's WireGuard: its public key, and the UDP port at its VTEP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgPeer {
    pub key: WgKey,
    pub port: u16,
}

/// A layer-2 segment: one bridge and one VXLAN device (one VNI) on every host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRow {
    pub name: String,
    /// One or two: an IPv4 subnet, an IPv6 one, or both (in that order).
    pub subnets: Vec<IpNetwork>,
    pub vni: u32,
    /// Its frames cross between hosts only inside WireGuard.
    pub encrypted: bool,
}

/// One container's interface in one network on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    pub id: EndpointId,
    pub mac: Mac,
    /// Its addresses, each with the prefix length of its network.
    pub cidrs: Vec<IpNetwork>,
    pub host_ifname: String,
    pub container_ifname: String,
    /// The container's DNS name; empty: none.
    pub dns_name: String,
}

/// A DNS record added with `weftctl dns-add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRow {
    pub name: String,
    pub ip: IpAddr,
    /// The peer that added it.
    pub peer: String,
    /// The container it was added for; empty: none.
    pub container: String,
}

/// One change of the tables, with typed rows: what [`Change`] carries on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowChange {
    PeerPut(PeerRow),
    PeerDeleted(String),
    NetworkPut(NetworkRow),
    NetworkDeleted(String),
    EndpointPut(EndpointRow),
    EndpointDeleted(EndpointId),
    RecordPut(RecordRow),
    RecordDeleted(RecordRow),
}

/// The IPv4 network of an address, if it is one: for the parts that speak IPv4 only
/// (masquerading).
pub fn ipv4(net: IpNetwork) -> Option<Ipv4Network> {
    match net {
        IpNetwork::V4(net) => Some(net),
        IpNetwork::V6(_) => None,
    }
}

/// Reads `IP/LEN`, keeping the host bits (an address within its subnet), as the ADDR syntax
/// does; the one parser of the rows' addresses.
pub fn parse_ip_cidr(s: &str) -> Result<IpNetwork, String> {
    crate::addr::parse_cidr(s, s).map_err(|e| e.reason)
}

/// The addresses of CIDRs, without their prefix length: what the commands report.
pub fn ips_of(cidrs: &[IpNetwork]) -> Vec<String> {
    cidrs.iter().map(|c| c.ip().to_string()).collect()
}

/// CIDRs in their wire form.
pub fn cidr_strings(cidrs: &[IpNetwork]) -> Vec<String> {
    cidrs.iter().map(IpNetwork::to_string).collect()
}

impl PeerRow {
    pub fn read(peer: Peer) -> Result<PeerRow, BadRow> {
        let bad = |why| BadRow {
            row: format!("peer {}", peer.name),
            why,
        };
        let addr = parse_ip(&peer.advertise_addr).map_err(bad)?;
        let wireguard = match peer.wireguard_key.as_str() {
            "" => None,
            key => Some(WgPeer {
                key: key.parse().map_err(bad)?,
                port: u16::try_from(peer.wireguard_port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(format!("bad WireGuard port {}", peer.wireguard_port)))?,
            }),
        };
        Ok(PeerRow {
            name: peer.name,
            addr,
            wireguard,
        })
    }

    pub fn wire(&self) -> Peer {
        Peer {
            name: self.name.clone(),
            advertise_addr: self.addr.to_string(),
            wireguard_key: self
                .wireguard
                .map(|w| w.key.to_string())
                .unwrap_or_default(),
            wireguard_port: self.wireguard.map(|w| w.port.into()).unwrap_or_default(),
        }
    }
}

impl NetworkRow {
    pub fn read(network: Network) -> Result<NetworkRow, BadRow> {
        let bad = |why| BadRow {
            row: format!("network {}", network.name),
            why,
        };
        let mut subnets = vec![parse_ip_cidr(&network.subnet).map_err(bad)?];
        if !network.subnet6.is_empty() {
            let subnet6 = parse_ip_cidr(&network.subnet6).map_err(bad)?;
            if !subnets[0].is_ipv4() || !subnet6.is_ipv6() {
                return Err(bad(format!(
                    "subnets {} and {subnet6} are not an IPv4 and an IPv6 one",
                    network.subnet
                )));
            }
            subnets.push(subnet6);
        }
        Ok(NetworkRow {
            name: network.name,
            subnets,
            vni: network.vni,
            encrypted: network.encrypted,
        })
    }

    pub fn wire(&self) -> Network {
        Network {
            name: self.name.clone(),
            subnet: self.subnets[0].to_string(),
            vni: self.vni,
            encrypted: self.encrypted,
            subnet6: self
                .subnets
                .get(1)
                .map(IpNetwork::to_string)
                .unwrap_or_default(),
        }
    }

    /// Its subnet of `ip`'s family, if it has one.
    pub fn subnet_of(&self, ip: IpAddr) -> Option<IpNetwork> {
        self.subnets
            .iter()
            .copied()
            .find(|s| s.is_ipv4() == ip.is_ipv4())
    }

    /// Its IPv4 subnet, if it has one.
    pub fn subnet4(&self) -> Option<Ipv4Network> {
        self.subnets.iter().copied().find_map(ipv4)
    }

    /// Its subnets as weftctl shows them: `10.9.0.0/24,fd00:9::/64`.
    pub fn subnets_text(&self) -> String {
        cidr_strings(&self.subnets).join(",")
    }
}

impl EndpointRow {
    /// Takes the row's strings over: a snapshot of many endpoints is not held twice.
    pub fn read(ep: Endpoint) -> Result<EndpointRow, BadRow> {
        let id = EndpointId {
            peer: ep.peer,
            network: ep.network,
            container: ep.container_id,
        };
        let bad = |why: String| BadRow {
            row: id.to_string(),
            why,
        };
        let mac = ep.mac.parse().map_err(bad)?;
        let cidrs: Result<Vec<_>, _> = ep.cidrs.iter().map(|c| parse_ip_cidr(c)).collect();
        let mut cidrs = cidrs.map_err(bad)?;
        // Collected without knowing how many, it has room for four; a copy of the tables holds
        // each row for long.
        cidrs.shrink_to_fit();
        Ok(EndpointRow {
            mac,
            cidrs,
            host_ifname: ep.host_ifname,
            container_ifname: ep.container_ifname,
            dns_name: ep.dns_name,
            id,
        })
    }

    pub fn wire(&self) -> Endpoint {
        Endpoint {
            network: self.id.network.clone(),
            container_id: self.id.container.clone(),
            mac: self.mac.to_string(),
            cidrs: cidr_strings(&self.cidrs),
            peer: self.id.peer.clone(),
            host_ifname: self.host_ifname.clone(),
            container_ifname: self.container_ifname.clone(),
            dns_name: self.dns_name.clone(),
        }
    }
}

impl RecordRow {
    pub fn read(record: DnsRecord) -> Result<RecordRow, BadRow> {
        let ip = parse_ip(&record.ip).map_err(|why| BadRow {
            row: format!("DNS record {}", record.name),
            why,
        })?;
        Ok(RecordRow {
            name: record.name,
            ip,
            peer: record.peer,
            container: record.container_id,
        })
    }

    pub fn wire(&self) -> DnsRecord {
        DnsRecord {
            name: self.name.clone(),
            ip: self.ip.to_string(),
            peer: self.peer.clone(),
            container_id: self.container.clone(),
        }
    }

    /// What the record is known by: its name and address.
    pub fn id(&self) -> (String, IpAddr) {
        (self.name.clone(), self.ip)
    }
}

impl RowChange {
    pub fn read(change: Change) -> Result<RowChange, BadRow> {
        Ok(match change {
            Change::PeerPut(peer) => RowChange::PeerPut(PeerRow::read(peer)?),
            Change::PeerDeleted(name) => RowChange::PeerDeleted(name),
            Change::NetworkPut(net) => RowChange::NetworkPut(NetworkRow::read(net)?),
            Change::NetworkDeleted(name) => RowChange::NetworkDeleted(name),
            Change::EndpointPut(ep) => RowChange::EndpointPut(EndpointRow::read(ep)?),
            Change::EndpointDeleted(key) => RowChange::EndpointDeleted(EndpointId::of_key(&key)),
            Change::DnsRecordPut(r) => RowChange::RecordPut(RecordRow::read(r)?),
            Change::DnsRecordDeleted(r) => RowChange::RecordDeleted(RecordRow::read(r)?),
        })
    }

    pub fn wire(&self) -> Change {
        match self {
            RowChange::PeerPut(peer) => Change::PeerPut(peer.wire()),
            RowChange::PeerDeleted(name) => Change::PeerDeleted(name.clone()),
            RowChange::NetworkPut(net) => Change::NetworkPut(net.wire()),
            RowChange::NetworkDeleted(name) => Change::NetworkDeleted(name.clone()),
            RowChange::EndpointPut(ep) => Change::EndpointPut(ep.wire()),
            RowChange::EndpointDeleted(id) => Change::EndpointDeleted(id.key()),
            RowChange::RecordPut(r) => Change::DnsRecordPut(r.wire()),
            RowChange::RecordDeleted(r) => Change::DnsRecordDeleted(r.wire()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::v1::EndpointKey;

    use super::*;

    fn ep(mac: &str, cidrs: &[&str]) -> Endpoint {
        Endpoint {
            peer: "host1".into(),
            network: "default".into(),
            container_id: "c1".into(),
            mac: mac.into(),
            cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            host_ifname: "vethwepl1".into(),
            container_ifname: "ethwe".into(),
            dns_name: "web".into(),
        }
    }

    #[test]
    fn a_row_that_does_not_read_is_named_with_why() {
        let e = EndpointRow::read(ep("02:00", &["10.32.0.5/12"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "endpoint of c1 in network default on host1: \"02:00\" is not a MAC address"
        );
        let e = EndpointRow::read(ep("02:00:0a:20:00:05", &["10.32.0.300/12"])).unwrap_err();
        assert_eq!(e.why, "\"10.32.0.300\" is not an IPv4 address");
        let e = EndpointRow::read(ep("02:00:0a:20:00:05", &["10.32.0.3/33"])).unwrap_err();
        assert_eq!(e.why, "prefix length must be 0 to 32");
        let e = EndpointRow::read(ep("02:00:0a:20:00:05", &["10.32.0.3"])).unwrap_err();
        assert_eq!(e.why, "expected IP/LEN, e.g. 192.168.0.2/24");
        let peer = Peer {
            name: "host2".into(),
            advertise_addr: "nowhere".into(),
            ..Default::default()
        };
        assert_eq!(
            RowChange::read(Change::PeerPut(peer))
                .unwrap_err()
                .to_string(),
            "peer host2: \"nowhere\" is not an IP address"
        );
        let net = Network {
            name: "blue".into(),
            subnet: "10.9.0.300/24".into(),
            vni: 2,
            encrypted: false,
            subnet6: String::new(),
        };
        assert_eq!(
            NetworkRow::read(net.clone()).unwrap_err().row,
            "network blue"
        );
        let swapped = Network {
            subnet: "fd00:9::/64".into(),
            subnet6: "10.9.0.0/24".into(),
            ..net
        };
        assert_eq!(
            NetworkRow::read(swapped).unwrap_err().why,
            "subnets fd00:9::/64 and 10.9.0.0/24 are not an IPv4 and an IPv6 one"
        );
    }

    #[test]
    fn rows_read_back_as_they_were_sent() {
        let endpoint = ep("02:00:0a:20:00:05", &["10.32.0.5/12", "2001:db8::5/64"]);
        let row = EndpointRow::read(endpoint.clone()).unwrap();
        assert_eq!(row.mac, "02:00:0a:20:00:05".parse().unwrap());
        assert_eq!(ipv4(row.cidrs[0]), Some("10.32.0.5/12".parse().unwrap()));
        assert_eq!(ipv4(row.cidrs[1]), None);
        assert_eq!(row.wire(), endpoint);
        let changes = [
            Change::PeerPut(Peer {
                name: "host1".into(),
                advertise_addr: "198.18.0.1".into(),
                wireguard_key: "s5B/H7N0dCcr2n3JvU1ZvdobckrLDAU7TkHvS2B09Ug=".into(),
                wireguard_port: 6787,
            }),
            Change::NetworkPut(Network {
                name: "blue".into(),
                subnet: "10.9.0.0/24".into(),
                vni: 2,
                encrypted: true,
                subnet6: "fd00:9::/64".into(),
            }),
            Change::DnsRecordDeleted(DnsRecord {
                name: "db".into(),
                ip: "10.9.0.7".into(),
                peer: "host1".into(),
                container_id: String::new(),
            }),
            Change::EndpointDeleted(EndpointKey {
                peer: "host1".into(),
                container_id: "c1".into(),
                network: "blue".into(),
            }),
        ];
        for change in changes {
            assert_eq!(RowChange::read(change.clone()).unwrap().wire(), change);
        }
    }

    #[test]
    fn ips_drop_their_prefix() {
        let cidrs = ["10.32.0.5/12", "2001:db8::5/64"].map(|c| c.parse().unwrap());
        assert_eq!(ips_of(&cidrs), ["10.32.0.5", "2001:db8::5"]);
    }
}
