//! The CNI plugin's front end: weft-cni's ADD, DEL, CHECK and GC, each one call on the local
//! API. An attachment (CNI_CONTAINERID, CNI_IFNAME) is one endpoint keyed
//! `cni:CONTAINERID/IFNAME`, attached and detached through the endpoint core as weftctl's are;
//! this module turns the plugin's request into an order, adds what CNI asks beyond it (the
//! interface named CNI_IFNAME, a default route through the host), and reads the result back
//! from the tables.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use tonic::Code;
use tracing::warn;
use weft_proto::addr::parse_ip;
use weft_proto::dns_name;
use weft_proto::names::{check_ifname, cni_attachment, cni_container_id};
use weft_proto::rows::{EndpointRow, NetworkRow};
use weft_proto::tables::{DEFAULT_NETWORK, EndpointId};
use weft_proto::v1::{
    CniAddRequest, CniAddResponse, CniAttachment, CniCheckRequest, CniDelRequest, CniGcRequest,
    CniRoute,
};

use crate::agent::Agent;
use crate::cni_namespaces::CniNamespaces;
use crate::container::Container;
use crate::desired::Segment;
use crate::endpoints::EndpointError;
use crate::endpoints::attach::AttachOrder;
use crate::netlink::{self, Route};
use crate::netns;

/// Where weft's DNS answers inside every container (see `dns/listeners.rs`).
const DNS_SERVER: &str = "127.0.0.11";

/// The endpoint id of an attachment and its interface, checked.
fn attachment_id(attachment: Option<&CniAttachment>) -> Result<(String, String), EndpointError> {
    let a = attachment.ok_or_else(|| EndpointError::Invalid("no attachment given".into()))?;
    if a.container_id.is_empty() {
        return Err(EndpointError::Invalid("the container id is empty".into()));
    }
    check_ifname(&a.ifname).map_err(EndpointError::Invalid)?;
    Ok((
        cni_container_id(&a.container_id, &a.ifname),
        a.ifname.clone(),
    ))
}

fn network_name(network: &str) -> &str {
    match network {
        "" => DEFAULT_NETWORK,
        name => name,
    }
}

/// The ADDRs of an ADD: one address allocated in the network, or the static ones given (an IP
/// takes the network's prefix; an IP/LEN must be of the network).
fn addrs_for(network: &NetworkRow, ips: &[String]) -> Result<Vec<String>, EndpointError> {
    if ips.is_empty() {
        return Ok(vec![format!("net:{}", network.name)]);
    }
    ips.iter()
        .map(|given| {
            let ip = parse_ip(given.split('/').next().unwrap_or_default())
                .map_err(|why| EndpointError::Invalid(format!("{why} (IP or IP/LEN)")))?;
            // The network's subnet of the address's family gives a bare IP its prefix.
            let subnet = network.subnet_of(ip);
            let cidr = match (given.contains('/'), subnet) {
                (true, _) => given.parse::<IpNetwork>().ok(),
                (false, Some(subnet)) => IpNetwork::new(ip, subnet.prefix()).ok(),
                (false, None) => None,
            };
            let inside = cidr.zip(subnet).filter(|(cidr, subnet)| {
                cidr.prefix() == subnet.prefix()
                    && subnet.contains(cidr.ip())
                    && cidr.ip() != subnet.network()
            });
            let Some((cidr, _)) = inside else {
                return Err(EndpointError::Invalid(format!(
                    "{given} is not an address of network {} ({})",
                    network.name,
                    network.subnets_text()
                )));
            };
            Ok(cidr.to_string())
        })
        .collect()
}

impl Agent {
    fn network(&self, name: &str) -> Result<NetworkRow, EndpointError> {
        self.tables()
            .read(|t| t.networks.get(name).cloned())
            .ok_or_else(|| self.endpoints().no_tables())?
            .ok_or_else(|| {
                EndpointError::Invalid(format!(
                    "unknown network {name}: create it first (weftctl network create)"
                ))
            })
    }

    /// A pod's DNS name, `POD.NAMESPACE.<domain>`; none if that makes no DNS name (the attach
    /// goes on without one).
    fn pod_dns_name(&self, pod: &str, namespace: &str) -> String {
        if pod.is_empty() {
            return String::new();
        }
        let domain = &self.dns().state().domain;
        let name = [pod, namespace, domain.as_str()]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(".");
        dns_name::normalize(&name).unwrap_or_else(|why| {
            warn!(pod, namespace, "the pod gets no DNS name: {why}");
            String::new()
        })
    }

    /// CNI ADD: plugs the attachment into the network, with a default route through this
    /// host's own address on it if asked; a step that fails undoes the attach (the host keeps
    /// an address it took on the network, as `weftctl expose` leaves it).
    pub async fn cni_add(&self, req: CniAddRequest) -> Result<CniAddResponse, EndpointError> {
        let (id, ifname) = attachment_id(req.attachment.as_ref())?;
        let network = self.network(network_name(&req.network))?;
        let order = AttachOrder {
            container: id.clone(),
            netns: Some(PathBuf::from(&req.netns)),
            ifname: ifname.clone(),
            addrs: addrs_for(&network, &req.ips)?,
            dns_name: self.pod_dns_name(&req.pod_name, &req.pod_namespace),
            rewrite_resolv: Some(false),
        };
        let netns = Path::new(&req.netns);
        // Kept first: a restarted agent finds the pod's namespace by it (DNS, the veth's end).
        let namespaces = &self.containers().cni;
        namespaces
            .insert(&id, netns)
            .map_err(EndpointError::Kernel)?;
        if let Err(e) = self.endpoints().attach(order).await {
            forget_namespace(namespaces, &id);
            return Err(e);
        }
        let container = Container {
            id: id.clone(),
            netns: netns.to_path_buf(),
            hostname: String::new(),
            root: None,
        };
        let done = async {
            let gateway = self
                .cni_route_out(&req, &network, &container, &ifname)
                .await?;
            self.cni_result(&network, &id, gateway).await
        };
        match done.await {
            Ok(done) => Ok(done),
            Err(e) => {
                if let Err(undo) = self.endpoints().detach(&id, Some(netns), Vec::new()).await {
                    warn!(container = %id, "undoing a failed CNI ADD: {undo}");
                }
                forget_namespace(namespaces, &id);
                Err(e)
            }
        }
    }

    /// The way out of the network that an ADD asked for: the host's address on it (which the
    /// host takes, as `weftctl expose`), as the container's default gateway; with `ipMasq`, the
    /// network masqueraded through the host from now on.
    async fn cni_route_out(
        &self,
        req: &CniAddRequest,
        network: &NetworkRow,
        container: &Container,
        ifname: &str,
    ) -> Result<Option<Ipv4Addr>, EndpointError> {
        if !(req.default_route || req.ip_masq) {
            return Ok(None);
        }
        let Some(subnet) = network.subnet4() else {
            return Err(EndpointError::Invalid(format!(
                "network {} has no IPv4 subnet: the way out (defaultRoute, ipMasq) is IPv4 only",
                network.name
            )));
        };
        let exposed = self
            .endpoints()
            .expose(vec![format!("net:{subnet}")])
            .await?;
        let gateway = exposed
            .iter()
            .find_map(|ip| ip.parse().ok())
            .ok_or_else(|| {
                EndpointError::Internal(format!("no host address on network {}", network.name))
            })?;
        let ifname = ifname.to_string();
        netns::run_in(&container.netns, move |handle| async move {
            let link = netlink::link_by_name(&handle, &ifname)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{ifname} is gone from the container"))?;
            netlink::add_default_route(&handle, &link, gateway).await
        })
        .await
        .map_err(EndpointError::Kernel)?;
        if req.ip_masq {
            // The way out works when ADD answers, not at the next reconcile.
            self.firewall()
                .masquerade(&network.name, self.tables())
                .await
                .map_err(EndpointError::Kernel)?;
        }
        Ok(Some(gateway))
    }

    /// The result of an ADD, from the endpoint as the tables hold it.
    async fn cni_result(
        &self,
        network: &NetworkRow,
        id: &str,
        gateway: Option<Ipv4Addr>,
    ) -> Result<CniAddResponse, EndpointError> {
        let ep = self.cni_endpoint(&network.name, id)?.ok_or_else(|| {
            EndpointError::Lost(format!(
                "the tables of this host do not show {id} in network {} (yet)",
                network.name
            ))
        })?;
        let host_mac = self
            .datapath()
            .link(&ep.host_ifname)
            .await
            .map_err(EndpointError::Kernel)?
            .and_then(|l| l.mac)
            .map(|m| m.to_string())
            .unwrap_or_default();
        let mut routes: Vec<CniRoute> = network
            .subnets
            .iter()
            .map(|subnet| CniRoute {
                dst: subnet.to_string(),
                gw: String::new(),
            })
            .collect();
        if let Some(gw) = gateway {
            routes.push(CniRoute {
                dst: "0.0.0.0/0".into(),
                gw: gw.to_string(),
            });
        }
        Ok(CniAddResponse {
            host_ifname: ep.host_ifname.clone(),
            host_mac,
            container_mac: ep.mac.to_string(),
            cidrs: ep.cidrs.iter().map(|c| c.to_string()).collect(),
            gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
            routes,
            // An encrypted network's is smaller: its frames also carry WireGuard's headers.
            mtu: self.datapath().mtu_of(Segment::of(network)),
            dns_server: DNS_SERVER.into(),
            dns_domain: self.dns().state().domain.clone(),
        })
    }

    fn cni_endpoint(&self, network: &str, id: &str) -> Result<Option<EndpointRow>, EndpointError> {
        let me = self.name();
        self.tables()
            .read(|t| t.endpoints.get(&EndpointId::new(me, network, id)).cloned())
            .ok_or_else(|| self.endpoints().no_tables())
    }

    /// CNI DEL: releases the attachment; what is not there (never added, deleted before, its
    /// namespace gone) is no error.
    pub async fn cni_del(&self, req: CniDelRequest) -> Result<Vec<String>, EndpointError> {
        let (id, _) = attachment_id(req.attachment.as_ref())?;
        let netns = Some(Path::new(&req.netns)).filter(|p| p.exists());
        let released = match self.endpoints().detach(&id, netns, Vec::new()).await {
            Err(EndpointError::Controller(s)) if s.code() == Code::NotFound => Vec::new(),
            done => done?,
        };
        forget_namespace(&self.containers().cni, &id);
        Ok(released)
    }

    /// CNI CHECK: the attachment is as its ADD reported: the tables hold its endpoint, the
    /// container its interface (the veth's other end, with its MAC), every address and route.
    pub async fn cni_check(&self, req: CniCheckRequest) -> Result<(), EndpointError> {
        let (id, ifname) = attachment_id(req.attachment.as_ref())?;
        let network = network_name(&req.network);
        let ep = self.cni_endpoint(network, &id)?.ok_or_else(|| {
            EndpointError::Precondition(format!("{id} is not attached to network {network}"))
        })?;
        let container = self
            .containers()
            .resolve_at(&id, Path::new(&req.netns))
            .await?;
        let missing = |what: String| EndpointError::Precondition(format!("{id}: {what}"));
        let held = self
            .datapath()
            .holds(&container, &ifname, ep.mac, &ep.host_ifname)
            .await
            .map_err(EndpointError::Kernel)?;
        if !held {
            return Err(missing(format!(
                "the container has no interface {ifname} with MAC {} on veth {}",
                ep.mac, ep.host_ifname
            )));
        }
        let name = ifname.clone();
        let (addresses, routes) = netns::run_in(&container.netns, move |handle| async move {
            let link = netlink::link_by_name(&handle, &name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{name} is gone from the container"))?;
            let addresses = netlink::addresses(&handle, &link).await?;
            let routes = netlink::routes(&handle, &link).await?;
            Ok((addresses, routes))
        })
        .await
        .map_err(EndpointError::Kernel)?;
        for cidr in &req.cidrs {
            let want: IpNetwork = cidr.parse().map_err(|_| {
                EndpointError::Invalid(format!("prevResult address \"{cidr}\" is no CIDR"))
            })?;
            if !addresses.contains(&want) {
                return Err(missing(format!("{ifname} does not hold {want}")));
            }
        }
        for r in &req.routes {
            let bad = || EndpointError::Invalid(format!("prevResult route \"{}\" is bad", r.dst));
            let want = Route {
                dst: r.dst.parse().map_err(|_| bad())?,
                gw: match r.gw.as_str() {
                    "" => None,
                    gw => Some(gw.parse().map_err(|_| bad())?),
                },
            };
            if !routes.contains(&want) {
                let via = want.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(missing(format!(
                    "the container has no route to {}{via} on {ifname}",
                    want.dst
                )));
            }
        }
        Ok(())
    }

    /// CNI GC: releases this host's CNI attachments in the network that the runtime does not
    /// list as valid; returns them.
    pub async fn cni_gc(&self, req: CniGcRequest) -> Result<Vec<CniAttachment>, EndpointError> {
        let network = network_name(&req.network).to_string();
        let valid: BTreeSet<String> = req
            .valid
            .iter()
            .map(|a| cni_container_id(&a.container_id, &a.ifname))
            .collect();
        let me = self.name();
        let stale: Vec<String> = self
            .tables()
            .read(|t| {
                t.endpoints_on(me)
                    .filter(|ep| ep.id.network == network)
                    .map(|ep| ep.id.container.clone())
                    .filter(|id| cni_attachment(id).is_some() && !valid.contains(id))
                    .collect()
            })
            .ok_or_else(|| self.endpoints().no_tables())?;
        let mut released = Vec::new();
        for id in stale {
            match self.endpoints().detach(&id, None, Vec::new()).await {
                Ok(ips) => warn!(container = %id, ips = ?ips, "CNI GC released a stale attachment"),
                Err(EndpointError::Controller(s)) if s.code() == Code::NotFound => continue,
                Err(e) => return Err(e),
            }
            forget_namespace(&self.containers().cni, &id);
            if let Some((container_id, ifname)) = cni_attachment(&id) {
                released.push(CniAttachment {
                    container_id: container_id.to_string(),
                    ifname: ifname.to_string(),
                });
            }
        }
        Ok(released)
    }
}

/// Forgets an attachment's namespace; one that cannot be forgotten only stays on record.
fn forget_namespace(namespaces: &CniNamespaces, id: &str) {
    if let Err(e) = namespaces.remove(id) {
        warn!(container = %id, "{e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blue() -> NetworkRow {
        NetworkRow {
            name: "blue".into(),
            subnets: vec!["10.9.0.0/24".parse().unwrap()],
            vni: 7,
            encrypted: false,
        }
    }

    #[test]
    fn addresses_are_the_networks_or_named() {
        let addrs = |ips: &[&str]| {
            let ips: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
            addrs_for(&blue(), &ips).map_err(|e| e.to_string())
        };
        assert_eq!(addrs(&[]), Ok(vec!["net:blue".into()]));
        assert_eq!(
            addrs(&["10.9.0.5", "10.9.0.6/24"]),
            Ok(vec!["10.9.0.5/24".into(), "10.9.0.6/24".into()])
        );
        for (bad, why) in [
            (
                "10.9.1.5",
                "10.9.1.5 is not an address of network blue (10.9.0.0/24)",
            ),
            (
                "10.9.0.5/16",
                "10.9.0.5/16 is not an address of network blue (10.9.0.0/24)",
            ),
            (
                "10.9.0.0",
                "10.9.0.0 is not an address of network blue (10.9.0.0/24)",
            ),
            ("ten", "\"ten\" is not an IP address (IP or IP/LEN)"),
            (
                "::ffff:10.9.0.5",
                "::ffff:10.9.0.5 is an IPv4-mapped IPv6 address; write 10.9.0.5 (IP or IP/LEN)",
            ),
        ] {
            assert_eq!(addrs(&[bad]), Err(why.to_string()), "{bad}");
        }
    }

    #[test]
    fn an_attachment_is_checked_and_keyed() {
        let a = |c: &str, i: &str| CniAttachment {
            container_id: c.into(),
            ifname: i.into(),
        };
        assert_eq!(
            attachment_id(Some(&a("abc", "eth0"))).unwrap(),
            ("cni:abc/eth0".to_string(), "eth0".to_string())
        );
        assert!(attachment_id(Some(&a("", "eth0"))).is_err());
        assert!(attachment_id(Some(&a("abc", "eth/0"))).is_err());
        assert!(attachment_id(None).is_err());
    }
}
