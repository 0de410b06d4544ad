//! The names weft serves, from the tables: each container's DNS name (from `attach --name`, or
//! its hostname) in the DNS domain, with every address of the container (IPv4 and IPv6), the
//! records added with `weftctl dns-add`, and the reverse.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hickory_proto::rr::Name;
use weft_proto::tables::Tables;

/// Names and addresses, both ways. Names are lower case, without the final dot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Records {
    pub addresses: BTreeMap<String, BTreeSet<IpAddr>>,
    pub names: BTreeMap<IpAddr, BTreeSet<String>>,
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
            for net in &ep.cidrs {
                records.add(&name, net.ip());
            }
        }
        for record in tables.dns_records.values() {
            if let Some(name) = name_in_domain(&record.name, domain) {
                records.add(&name, record.ip);
            }
        }
        records
    }

    fn add(&mut self, name: &str, ip: IpAddr) {
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

/// The address a reverse name (`2.0.168.192.in-addr.arpa`, or 32 nibbles and `ip6.arpa`)
/// stands for; a name of a whole network (fewer labels) stands for none.
pub fn reverse_address(name: &str) -> Option<IpAddr> {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let net = Name::from_ascii(fqdn).ok()?.parse_arpa_name().ok()?;
    let whole = if net.addr().is_ipv4() { 32 } else { 128 };
    (net.prefix_len() == whole).then(|| net.addr())
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
        let ip: IpAddr = "192.168.0.3".parse().unwrap();
        assert_eq!(r.names[&ip].iter().collect::<Vec<_>>(), ["web.weave.local"]);
    }

    #[test]
    fn reverse_names_give_addresses() {
        assert_eq!(
            reverse_address("2.0.168.192.in-addr.arpa."),
            Some("192.168.0.2".parse().unwrap())
        );
        let six = "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(reverse_address(six), Some("fd00:9::5".parse().unwrap()));
        for bad in [
            "0.168.192.in-addr.arpa",
            "x.0.168.192.in-addr.arpa",
            "example.com",
            "9.0.0.0.0.0.d.f.ip6.arpa",
            "g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.0.0.0.0.0.d.f.ip6.arpa",
        ] {
            assert_eq!(reverse_address(bad), None, "{bad}");
        }
    }
}
