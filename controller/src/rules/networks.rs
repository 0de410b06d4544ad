//! Networks: the default one, created once from `--ipalloc-range` (and `--ipalloc-range6`);
//! others created by name and subnets, removed once empty.

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use weft_proto::addr::parse_subnet;
use weft_proto::rows::{self, EndpointRow, NetworkRow, RowChange};
use weft_proto::subnet::canonical;
use weft_proto::tables::{DEFAULT_NETWORK, DEFAULT_VNI};

use super::planner::Planner;
use super::{TableError, View, check_prefix};

const MAX_NETWORK_NAME: usize = 64;

pub(super) fn ensure_default_network(
    view: &View,
    range: Ipv4Network,
    range6: Option<Ipv6Network>,
    encrypted: bool,
) -> Result<Vec<RowChange>, TableError> {
    let mut subnets = vec![IpNetwork::V4(range)];
    subnets.extend(range6.map(IpNetwork::V6));
    for subnet in &subnets {
        check_prefix(*subnet)?;
    }
    let subnets: Vec<IpNetwork> = subnets.into_iter().map(canonical).collect();
    match view.tables.networks.get(DEFAULT_NETWORK) {
        Some(net) if net.subnet4() != rows::ipv4(subnets[0]) => Err(TableError::Invalid(format!(
            "the stored default network is {} but --ipalloc-range is {}",
            net.subnets_text(),
            subnets[0]
        ))),
        // Dual stack is fixed at creation too: addresses were handed out without it.
        Some(net) if net.subnets.get(1) != subnets.get(1) => Err(TableError::Invalid(format!(
            "the stored default network is {} but --ipalloc-range6 is {}",
            net.subnets_text(),
            subnets
                .get(1)
                .map_or("not given".to_string(), |s| s.to_string())
        ))),
        // Encryption is fixed at creation: a controller started otherwise must say so.
        Some(net) if net.encrypted != encrypted => Err(TableError::Invalid(format!(
            "the stored default network is {} but --encrypt-default is {}given",
            if net.encrypted {
                "encrypted"
            } else {
                "not encrypted"
            },
            if encrypted { "" } else { "not " }
        ))),
        Some(_) => Ok(vec![]),
        None => Ok(vec![RowChange::NetworkPut(NetworkRow {
            name: DEFAULT_NETWORK.into(),
            subnets,
            vni: DEFAULT_VNI,
            encrypted,
        })]),
    }
}

pub(super) fn create_network(
    view: &View,
    name: &str,
    subnets: &[String],
    encrypted: bool,
) -> Result<(NetworkRow, Vec<RowChange>), TableError> {
    validate_network_name(name)?;
    let parsed = parse_subnets(subnets)?;
    if let Some(net) = view.tables.networks.get(name) {
        return Err(TableError::NetworkExists {
            name: name.to_string(),
            subnet: net.subnets_text(),
        });
    }
    let mut plan = Planner::new(view);
    for subnet in &parsed {
        if let Some(other) = plan.network_for_subnet(*subnet, false)? {
            return Err(TableError::Invalid(format!(
                "subnet {} is already network {other}",
                canonical(*subnet)
            )));
        }
    }
    let net = plan.add_network(name, parsed, encrypted)?;
    Ok((net, plan.changes))
}

/// A network's subnets as given: one or two, at most one of each family, IPv4 first.
fn parse_subnets(given: &[String]) -> Result<Vec<IpNetwork>, TableError> {
    let mut subnets: Vec<IpNetwork> = Vec::new();
    for subnet in given {
        let parsed = parse_subnet(subnet, subnet).map_err(|e| {
            TableError::Invalid(format!("invalid subnet \"{subnet}\": {}", e.reason))
        })?;
        if let Some(same) = subnets.iter().find(|s| s.is_ipv4() == parsed.is_ipv4()) {
            let family = if parsed.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(TableError::Invalid(format!(
                "a second {family} subnet {parsed}: a network has at most one IPv4 and one IPv6 \
                 subnet, and {same} is given already"
            )));
        }
        subnets.push(parsed);
    }
    if subnets.is_empty() {
        return Err(TableError::Invalid("a network needs a subnet".into()));
    }
    subnets.sort_by_key(|s| s.is_ipv6());
    Ok(subnets)
}

pub(super) fn delete_network(view: &View, name: &str) -> Result<Vec<RowChange>, TableError> {
    if name == DEFAULT_NETWORK {
        return Err(TableError::Invalid(
            "the default network cannot be removed".into(),
        ));
    }
    if !view.tables.networks.contains_key(name) {
        return Err(TableError::UnknownNetwork(name.to_string()));
    }
    let members: Vec<&EndpointRow> = view
        .tables
        .endpoints
        .values()
        .filter(|ep| ep.id.network == name)
        .collect();
    if let Some(first) = members.first() {
        return Err(TableError::NetworkInUse {
            name: name.to_string(),
            count: members.len(),
            example: format!("{} on {}", first.id.container, first.id.peer),
        });
    }
    Ok(vec![RowChange::NetworkDeleted(name.to_string())])
}

fn validate_network_name(name: &str) -> Result<(), TableError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
    if name.is_empty()
        || name.len() > MAX_NETWORK_NAME
        || name.starts_with('-')
        || !name.chars().all(ok_char)
    {
        return Err(TableError::Invalid(format!(
            "invalid network name \"{name}\": use 1 to {MAX_NETWORK_NAME} letters, digits, '.', '_', '-' or '/'"
        )));
    }
    Ok(())
}
