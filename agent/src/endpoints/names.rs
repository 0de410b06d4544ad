//! DNS names added or removed by hand (`weftctl dns-add`, `dns-remove`), for a container of
//! this host or for addresses alone.

use weft_proto::dns_name;
use weft_proto::names::short_container_id;
use weft_proto::rows::{EndpointRow, ips_of};
use weft_proto::v1::{DnsRecord, UpdateDnsRequest};

use super::seam::{Claims, Host};
use super::{EndpointError, Endpoints};
use crate::dns::records::name_in_domain;

/// What a front end asks of a DNS update.
#[derive(Debug, Clone, Default)]
pub struct NameOrder {
    /// A CONTAINER reference; empty: addresses alone.
    pub container: String,
    /// Empty: the container's DNS name.
    pub name: String,
    /// Empty: the container's addresses.
    pub ips: Vec<String>,
    pub remove: bool,
}

impl<H: Host, C: Claims> Endpoints<H, C> {
    /// Adds (or removes) the records of a name; returns them.
    pub async fn update_dns(&self, order: NameOrder) -> Result<Vec<DnsRecord>, EndpointError> {
        let container = match order.container.as_str() {
            "" => None,
            reference => Some(self.host.identify(reference).await?),
        };
        let me = self.tables.me();
        // What the container has: its addresses and its name, the defaults of IPs and -h.
        let (held, name): (Vec<String>, String) = match &container {
            Some(c) => self
                .tables
                .read(|t| {
                    let eps: Vec<&EndpointRow> = t.endpoints_of(me, &c.id).collect();
                    let ips = eps.iter().flat_map(|ep| ips_of(&ep.cidrs)).collect();
                    let name = eps
                        .first()
                        .map(|ep| ep.dns_name.clone())
                        .unwrap_or_default();
                    (ips, name)
                })
                .ok_or_else(|| self.no_tables())?,
            None => (Vec::new(), String::new()),
        };
        let name = match (order.name.as_str(), name.as_str()) {
            ("", "") => {
                return Err(EndpointError::Invalid(
                    "no name: give -h FQDN (the container has no DNS name)".into(),
                ));
            }
            ("", name) => name.to_string(),
            (given, _) => given.to_string(),
        };
        // One form per name, so that what dns-remove names is what dns-add added.
        let domain = &self.dns.state().domain;
        let name = dns_name::normalize(&name).map_err(EndpointError::Invalid)?;
        let name = name_in_domain(&name, domain).ok_or_else(|| {
            EndpointError::Invalid(format!("{name} is not a name in the DNS domain {domain}"))
        })?;
        if let Some(c) = &container
            && held.is_empty()
            && order.ips.is_empty()
        {
            return Err(EndpointError::Precondition(format!(
                "{} is not attached on this host: give its IPs",
                short_container_id(&c.id)
            )));
        }
        let ips = if order.ips.is_empty() {
            held
        } else {
            order.ips
        };
        let records: Vec<DnsRecord> = ips
            .iter()
            .map(|ip| DnsRecord {
                name: name.clone(),
                ip: ip.clone(),
                peer: me.to_string(),
                container_id: container.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
            })
            .collect();
        let done = self
            .claims
            .update_dns(UpdateDnsRequest {
                peer: me.to_string(),
                remove: order.remove,
                records: records.clone(),
            })
            .await?;
        self.caught_up(done.revision).await;
        Ok(records)
    }

    /// The error of a request that needs the tables before the first snapshot.
    pub fn no_tables(&self) -> EndpointError {
        EndpointError::NoTables(format!(
            "no state from controller {} yet",
            self.claims.url()
        ))
    }
}
