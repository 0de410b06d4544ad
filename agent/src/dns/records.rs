//! The names weft serves, from the tables: each container's DNS name (from `attach --name`, or
//! its hostname) in the DNS domain, with every address of the container, the records added
//! with `weftctl dns-add`, and the reverse.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft_proto::rows;
use weft_proto::tables::Tables;

/// Names and addresses, both ways. Names are lower case, without the final dot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Records {
    pub addresses: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    pub names: BTreeMap<Ipv4Addr, BTreeSet<String>>,
}

/// The name a container's DNS name is served under: a single label gets the domain appended,
/// a name already in the domain stays; any other is not served.
pub fn name_in_domain(name: &str, domain: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    if !name.contains('.') {
        return Some(format!("{name}.{domain}"));
    }
    name.ends_with(&format!(".{domain}")).then_some(name)
}

impl Records {
    pub fn from_tables(tables: &Tables, domain: &str) -> Records {
        let mut records = Records::default();
        for ep in tables.endpoints.values() {
            let Some(name) = name_in_domain(&ep.dns_name, domain) else {
                continue;
            };
            for net in ep.cidrs.iter().copied().filter_map(rows::ipv4) {
                records.add(&name, net.ip());
            }
        }
        for record in tables.dns_records.values() {
            if let (Some(name), Some(ip)) = (
                name_in_domain(&record.name, domain),
                rows::ipv4_addr(record.ip),
            ) {
                records.add(&name, ip);
            }
        }
        records
    }

    fn add(&mut self, name: &str, ip: Ipv4Addr) {
        self.addresses
            .entry(name.to_string())
            .or_default()
            .insert(ip);
        self.names.entry(ip).or_default().insert(name.to_string());
    }

    /// How many (name, address) pairs there are.
    pub fn len(&self) -> usize {
        self.addresses.values().map(BTreeSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

/// The address a reverse name (`2.0.168.192.in-addr.arpa`) stands for.
pub fn reverse_address(name: &str) -> Option<Ipv4Addr> {
    let rest = name
        .trim_end_matches('.')
        .to_ascii_lowercase()
        .strip_suffix(".in-addr.arpa")?
        .to_string();
    let octets: Vec<u8> = rest
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<_>>()?;
    let [d, c, b, a] = <[u8; 4]>::try_from(octets).ok()?;
    Some(Ipv4Addr::new(a, b, c, d))
}

#[cfg(test)]
mod tests {
    use weft_proto::names::Mac;
    use weft_proto::rows::{EndpointRow, RecordRow};
    use weft_proto::tables::EndpointId;

    use super::*;

    fn tables(eps: &[(&str, &str, &[&str])]) -> Tables {
        let mut t = Tables::default();
        for (i, (container, name, cidrs)) in eps.iter().enumerate() {
            let ep = EndpointRow {
                id: EndpointId::new("host1", &format!("n{i}"), container),
                mac: Mac::ZERO,
                cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                host_ifname: String::new(),
                container_ifname: String::new(),
                dns_name: name.to_string(),
            };
            t.endpoints.insert(ep.id.clone(), ep);
        }
        t
    }

    #[test]
    fn names_are_served_in_the_domain_only() {
        assert_eq!(
            name_in_domain("bbox1", "weave.local").as_deref(),
            Some("bbox1.weave.local")
        );
        assert_eq!(
            name_in_domain("BBox1.weave.local.", "weave.local").as_deref(),
            Some("bbox1.weave.local")
        );
        assert_eq!(name_in_domain("web.example.com", "weave.local"), None);
        assert_eq!(name_in_domain("", "weave.local"), None);
    }

    #[test]
    fn one_name_many_containers_and_back() {
        let t = tables(&[
            ("c1", "web", &["10.32.0.2/12"]),
            ("c2", "web.weave.local", &["10.32.0.3/12", "192.168.0.3/24"]),
            ("c3", "", &["10.32.0.4/12"]),
            ("c4", "db.example.com", &["10.32.0.5/12"]),
        ]);
        let mut t = t;
        let extra = RecordRow {
            name: "web".into(),
            ip: "10.32.0.9".parse().unwrap(),
            peer: String::new(),
            container: String::new(),
        };
        t.dns_records.insert(extra.id(), extra);
        let r = Records::from_tables(&t, "weave.local");
        let web: Vec<String> = r.addresses["web.weave.local"]
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(web, ["10.32.0.2", "10.32.0.3", "10.32.0.9", "192.168.0.3"]);
        assert_eq!(r.addresses.len(), 1);
        assert_eq!(r.len(), 4);
        let ip: Ipv4Addr = "192.168.0.3".parse().unwrap();
        assert_eq!(r.names[&ip].iter().collect::<Vec<_>>(), ["web.weave.local"]);
    }

    #[test]
    fn reverse_names_give_addresses() {
        assert_eq!(
            reverse_address("2.0.168.192.in-addr.arpa."),
            Some("192.168.0.2".parse().unwrap())
        );
        for bad in [
            "0.168.192.in-addr.arpa",
            "x.0.168.192.in-addr.arpa",
            "example.com",
        ] {
            assert_eq!(reverse_address(bad), None, "{bad}");
        }
    }
}
