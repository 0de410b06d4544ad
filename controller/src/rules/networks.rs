//! Networks: the default one, created once from `--ipalloc-range`; others created by name and
//! subnet, removed once empty.

use ipnetwork::Ipv4Network;
use weft_proto::addr::parse_subnet;
use weft_proto::rows::{EndpointRow, NetworkRow, RowChange};
use weft_proto::subnet::canonical;
use weft_proto::tables::{DEFAULT_NETWORK, DEFAULT_VNI};

use super::planner::Planner;
use super::{TableError, View, check_prefix};

const MAX_NETWORK_NAME: usize = 64;

pub(super) fn ensure_default_network(
    view: &View,
    range: Ipv4Network,
    encrypted: bool,
) -> Result<Vec<RowChange>, TableError> {
    check_prefix(range)?;
    let subnet = canonical(range);
    match view.tables.networks.get(DEFAULT_NETWORK) {
        Some(net) if net.subnet != subnet.into() => Err(TableError::Invalid(format!(
            "the stored default network is {} but --ipalloc-range is {subnet}",
            net.subnet
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
            subnet: subnet.into(),
            vni: DEFAULT_VNI,
            encrypted,
        })]),
    }
}

pub(super) fn create_network(
    view: &View,
    name: &str,
    subnet: &str,
    encrypted: bool,
) -> Result<(NetworkRow, Vec<RowChange>), TableError> {
    validate_network_name(name)?;
    let parsed = parse_subnet(subnet, subnet)
        .map_err(|e| TableError::Invalid(format!("invalid subnet \"{subnet}\": {}", e.reason)))?;
    if let Some(net) = view.tables.networks.get(name) {
        return Err(TableError::NetworkExists {
            name: name.to_string(),
            subnet: net.subnet.to_string(),
        });
    }
    let mut plan = Planner::new(view);
    if let Some(other) = plan.network_for_subnet(parsed, false)? {
        return Err(TableError::Invalid(format!(
            "subnet {} is already network {other}",
            canonical(parsed)
        )));
    }
    let net = plan.add_network(name, parsed, encrypted)?;
    Ok((net, plan.changes))
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
