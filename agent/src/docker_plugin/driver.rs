//! Docker's network driver: a Docker network is the weft network of its pool; an endpoint is
//! the weft endpoint `docker-ep:ENDPOINTID`, which takes over the address the IPAM driver
//! reserved; Join hands Docker a veth to move into the sandbox, with the host's own address on
//! the network as gateway.

use ipnetwork::IpNetwork;
use serde_json::{Value, json};
use weft_proto::names::{docker_endpoint_key, short_container_id};

use super::wire::{
    CreateEndpoint, CreateNetwork, EndpointRequest, GENERIC_OPTIONS, MASQUERADE_OPTION,
    NETWORK_OPTION, PORT_MAP,
};
use super::{Plugin, host_address, ipam, network_where};
use crate::agent::Agent;

pub async fn create_network(plugin: &Plugin, req: CreateNetwork) -> Result<Value, String> {
    let agent = &plugin.agent;
    let failed = |why: String| format!("network {}: {why}", short_container_id(&req.network_id));
    if !req.ipv6_data.is_empty() {
        return Err(failed(
            "weft's Docker driver is IPv4 only: leave out --ipv6".into(),
        ));
    }
    let [data] = req.ipv4_data.as_slice() else {
        return Err(failed(format!(
            "a weft network has one IPv4 subnet, not {}",
            req.ipv4_data.len()
        )));
    };
    // Another IPAM driver's addresses would be handed out again on every host.
    if data.address_space != ipam::ADDRESS_SPACE {
        return Err(failed(format!(
            "the pool {} is not weft's (address space \"{}\"): create the network with \
             --ipam-driver weft",
            data.pool, data.address_space
        )));
    }
    let pool: IpNetwork = data
        .pool
        .parse()
        .map_err(|_| failed(format!("pool \"{}\" is not a subnet", data.pool)))?;
    let network = network_where(agent, |n| n.subnets.contains(&pool))?.ok_or_else(|| {
        failed(format!(
            "pool {pool} is no weft network's: create the network with --ipam-driver weft"
        ))
    })?;
    let mut masquerade = true;
    let options = match req.options.get(GENERIC_OPTIONS) {
        Some(Value::Object(options)) => Some(options),
        _ => None,
    };
    for (key, value) in options.into_iter().flatten() {
        let value = value.as_str().unwrap_or_default();
        match key.as_str() {
            NETWORK_OPTION if value != network.name => {
                return Err(failed(format!(
                    "{NETWORK_OPTION}={value}: the pool {pool} is weft network {}'s",
                    network.name
                )));
            }
            NETWORK_OPTION => {}
            MASQUERADE_OPTION => {
                masquerade = value.parse().map_err(|_| {
                    failed(format!(
                        "{MASQUERADE_OPTION}={value}: expected true or false"
                    ))
                })?
            }
            other if other.starts_with("weft.") => {
                return Err(failed(format!(
                    "unknown option {other}: weft's are {NETWORK_OPTION} and {MASQUERADE_OPTION}"
                )));
            }
            _ => {}
        }
    }
    if masquerade {
        agent
            .firewall()
            .masquerade(&network.name, agent.tables())
            .await
            .map_err(|e| failed(format!("masquerading network {}: {e:#}", network.name)))?;
    }
    if let Ok(gateway) = data.gateway.parse() {
        plugin.unconfirmed().remove(&gateway);
    }
    Ok(json!({}))
}

pub async fn create_endpoint(agent: &Agent, req: CreateEndpoint) -> Result<Value, String> {
    let failed = about(&req.endpoint_id);
    let key = endpoint_key(&req.endpoint_id).map_err(&failed)?;
    let iface = req.interface.as_ref();
    let given =
        |f: fn(&super::wire::EndpointInterface) -> &String| iface.map(f).filter(|s| !s.is_empty());
    if given(|i| &i.mac_address).is_some() {
        return Err(failed(
            "weft chooses each endpoint's MAC address: leave out --mac-address".into(),
        ));
    }
    if given(|i| &i.address_ipv6).is_some() {
        return Err(failed("weft's Docker driver is IPv4 only".into()));
    }
    let address = given(|i| &i.address).ok_or_else(|| {
        failed("Docker gave no address: create the network with --ipam-driver weft".into())
    })?;
    let cidr: IpNetwork = address
        .parse()
        .map_err(|_| failed(format!("\"{address}\" is not an IP/LEN")))?;
    let network = network_where(agent, |n| {
        n.subnet_of(cidr.ip())
            .is_some_and(|s| s.contains(cidr.ip()) && s.prefix() == cidr.prefix())
    })?
    .ok_or_else(|| failed(format!("{cidr} is in no weft network")))?;
    let ep = agent
        .endpoints()
        .take_over(&key, &network.name, cidr)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(json!({ "Interface": { "MacAddress": ep.mac.to_string() } }))
}

pub async fn join(agent: &Agent, req: EndpointRequest) -> Result<Value, String> {
    let failed = about(&req.endpoint_id);
    let key = endpoint_key(&req.endpoint_id).map_err(&failed)?;
    let (ep, guest) = agent
        .endpoints()
        .plug_unmoved(&key)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut answer = json!({ "InterfaceName": { "SrcName": guest, "DstPrefix": "eth" } });
    match host_address(agent, &ep.id.network)? {
        Some(gateway) => answer["Gateway"] = Value::from(gateway.ip().to_string()),
        // The host gave its address up (`weftctl hide`): no way out, and none of Docker's
        // either (it would add its gateway bridge).
        None => answer["DisableGatewayService"] = Value::from(true),
    }
    Ok(answer)
}

pub async fn leave(agent: &Agent, req: EndpointRequest) -> Result<Value, String> {
    let failed = about(&req.endpoint_id);
    let key = endpoint_key(&req.endpoint_id).map_err(&failed)?;
    agent
        .endpoints()
        .unplug_endpoint(&key)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(json!({}))
}

pub async fn delete_endpoint(agent: &Agent, req: EndpointRequest) -> Result<Value, String> {
    let failed = about(&req.endpoint_id);
    let key = endpoint_key(&req.endpoint_id).map_err(&failed)?;
    agent
        .endpoints()
        .release_endpoint(&key)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(json!({}))
}

/// Ports are not published (`-p`): refused rather than silently not done.
pub fn program_external_connectivity(req: EndpointRequest) -> Result<Value, String> {
    match req.options.get(PORT_MAP) {
        Some(Value::Array(ports)) if !ports.is_empty() => Err(format!(
            "endpoint {}: publishing ports (-p) is not supported on weft \
             networks: reach the container at its address from the host",
            short_container_id(&req.endpoint_id)
        )),
        _ => Ok(json!({})),
    }
}

/// An error about endpoint `endpoint_id`, saying why.
fn about(endpoint_id: &str) -> impl Fn(String) -> String + '_ {
    move |why| format!("endpoint {}: {why}", short_container_id(endpoint_id))
}

fn endpoint_key(endpoint_id: &str) -> Result<String, String> {
    if endpoint_id.is_empty() || !endpoint_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!("\"{endpoint_id}\" is not a Docker endpoint ID"));
    }
    Ok(docker_endpoint_key(endpoint_id))
}
