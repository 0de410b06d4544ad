//! Docker's IPAM driver: a pool is a weft network, the same on every host; its gateway is this
//! host's own address on it (the host exposes itself, as `weftctl expose` does); its addresses
//! are reserved at the controller until the endpoint that gets one takes it over.

use ipnetwork::IpNetwork;
use serde_json::{Value, json};
use weft_proto::addr::parse_ip;
use weft_proto::rows::NetworkRow;
use weft_proto::tables::DEFAULT_NETWORK;
use weft_proto::v1::CreateNetworkRequest;

use super::wire::{
    GATEWAY_ADDRESS, NETWORK_OPTION, REQUEST_ADDRESS_TYPE, ReleaseAddress, RequestAddress,
    RequestPool,
};
use super::{Plugin, host_address, network_where};
use crate::agent::Agent;

/// The one address space weft's pools are in.
pub const ADDRESS_SPACE: &str = "weft";

/// A pool id is a weft network's name, or the subnet of a network that does not exist yet
/// (the first address asked for in it creates it, named by its subnet as `weftctl attach
/// net:CIDR` does).
struct Pool {
    subnet: IpNetwork,
}

impl Pool {
    /// The pool `id` names now.
    fn find(agent: &Agent, id: &str) -> Result<Pool, String> {
        let subnet = match id.parse::<IpNetwork>() {
            Ok(subnet) => subnet,
            Err(_) => {
                let network = network_where(agent, |n| n.name == id)?
                    .ok_or_else(|| format!("no weft network is named {id}"))?;
                ipv4_subnet(&network)?.into()
            }
        };
        Ok(Pool { subnet })
    }

    /// An address Docker gave (`--ip`, `--gateway`), with the pool's prefix.
    fn cidr(&self, given: &str) -> Result<IpNetwork, String> {
        let ip = parse_ip(given.split('/').next().unwrap_or_default())?;
        IpNetwork::new(ip, self.subnet.prefix())
            .ok()
            .filter(|c| self.subnet.contains(ip) && c.is_ipv4())
            .ok_or_else(|| format!("{given} is not an address of pool {}", self.subnet))
    }

    /// The `net:` reference of the pool: its subnet, so a dual-stack network gives the IPv4
    /// address Docker asks for and no IPv6 one beside it.
    fn net_ref(&self) -> String {
        format!("net:{}", self.subnet)
    }
}

/// A network's IPv4 subnet, which Docker's pools are: weft's Docker driver is IPv4 only.
fn ipv4_subnet(network: &NetworkRow) -> Result<ipnetwork::Ipv4Network, String> {
    network.subnet4().ok_or_else(|| {
        format!(
            "weft network {} has no IPv4 subnet ({}): weft's Docker driver is IPv4 only",
            network.name,
            network.subnets_text()
        )
    })
}

pub async fn request_pool(agent: &Agent, req: RequestPool) -> Result<Value, String> {
    let what = match req.pool.as_str() {
        "" => "the pool without --subnet".to_string(),
        pool => format!("pool {pool}"),
    };
    let failed = |why: String| format!("{what}: {why}");
    if req.v6 {
        return Err(failed(
            "weft's Docker driver is IPv4 only: leave out --ipv6".into(),
        ));
    }
    if !req.sub_pool.is_empty() {
        return Err(failed(format!(
            "--ip-range {} is not supported: weft allocates from the whole subnet (give --ip for \
             a fixed address)",
            req.sub_pool
        )));
    }
    let mut name = None;
    for (key, value) in &req.options {
        match key.as_str() {
            NETWORK_OPTION => name = Some(value.as_str()),
            other if other.starts_with("weft.") => {
                return Err(failed(format!(
                    "unknown IPAM option {other}: weft's is {NETWORK_OPTION}"
                )));
            }
            _ => {}
        }
    }
    let (id, subnet) = match req.pool.as_str() {
        "" => {
            let name = name.unwrap_or(DEFAULT_NETWORK);
            let network = network_where(agent, |n| n.name == name)?.ok_or_else(|| {
                failed(format!(
                    "unknown weft network {name}: create it first (weftctl network create \
                     {name} --subnet CIDR)"
                ))
            })?;
            let subnet = ipv4_subnet(&network).map_err(failed)?.into();
            (network.name, subnet)
        }
        pool => {
            let subnet: IpNetwork = pool
                .parse()
                .ok()
                .filter(IpNetwork::is_ipv4)
                .ok_or_else(|| failed("not an IPv4 subnet".into()))?;
            let same = network_where(agent, |n| n.subnets.contains(&subnet))?;
            match (same, name) {
                (Some(network), Some(name)) if network.name != name => {
                    return Err(failed(format!(
                        "it is weft network {}'s, not {name}'s",
                        network.name
                    )));
                }
                (Some(network), _) => (network.name, subnet),
                (None, _) => {
                    let overlaps = |n: &IpNetwork| {
                        n.is_ipv4() == subnet.is_ipv4()
                            && (n.contains(subnet.network()) || subnet.contains(n.network()))
                    };
                    if let Some(other) = network_where(agent, |n| n.subnets.iter().any(overlaps))? {
                        return Err(failed(format!(
                            "overlaps weft network {} ({})",
                            other.name,
                            other.subnets_text()
                        )));
                    }
                    match name {
                        Some(name) => {
                            create_network(agent, name, subnet).await.map_err(failed)?;
                            (name.to_string(), subnet)
                        }
                        None => (subnet.to_string(), subnet),
                    }
                }
            }
        }
    };
    Ok(json!({ "PoolID": id, "Pool": subnet.to_string(), "Data": {} }))
}

/// Has the controller create network `name` with `subnet`.
async fn create_network(agent: &Agent, name: &str, subnet: IpNetwork) -> Result<(), String> {
    let request = CreateNetworkRequest {
        name: name.to_string(),
        subnets: vec![subnet.to_string()],
        encrypt: false,
    };
    let done = agent
        .link()
        .ask(request, |mut c, r| async move { c.create_network(r).await })
        .await
        .map_err(|s| s.message().to_string())?;
    agent.endpoints().caught_up(done.revision).await;
    Ok(())
}

pub async fn request_address(plugin: &Plugin, req: RequestAddress) -> Result<Value, String> {
    let agent = &plugin.agent;
    let what = match req.address.as_str() {
        "" => format!("an address in pool {}", req.pool_id),
        addr => format!("address {addr}"),
    };
    let failed = |why: String| format!("{what}: {why}");
    let pool = Pool::find(agent, &req.pool_id).map_err(failed)?;
    let given = match req.address.as_str() {
        "" => None,
        addr => Some(pool.cidr(addr).map_err(failed)?),
    };
    let gateway =
        req.options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_ADDRESS);
    let cidr = if gateway {
        let had = match network_where(agent, |n| n.subnets.contains(&pool.subnet))? {
            Some(network) => host_address(agent, &network.name)?,
            None => None,
        };
        if let (Some(had), Some(given)) = (had, given)
            && had != given
        {
            return Err(failed(format!(
                "this host's address on the network, Docker's gateway here, is {had} already"
            )));
        }
        let spec = given.map_or_else(|| pool.net_ref(), |c| c.to_string());
        let ips = agent
            .endpoints()
            .expose(vec![spec])
            .await
            .map_err(|e| failed(format!("this host's address on the network: {e}")))?;
        let ip = ips
            .first()
            .ok_or_else(|| failed("the host got no address".into()))?;
        let cidr = pool.cidr(ip).map_err(failed)?;
        if had.is_none() {
            plugin.unconfirmed().insert(cidr);
        }
        cidr
    } else {
        agent
            .endpoints()
            .reserve(&pool.net_ref(), given)
            .await
            .map_err(|e| failed(e.to_string()))?
    };
    Ok(json!({ "Address": cidr.to_string(), "Data": {} }))
}

/// Gives a reserved address back, or the host's own if it took it for a network Docker then
/// failed to create (see [`Plugin`]); an endpoint's goes at DeleteEndpoint, and the host keeps
/// its address when Docker removes a network (as after `weftctl expose`).
pub async fn release_address(plugin: &Plugin, req: ReleaseAddress) -> Result<Value, String> {
    let agent = &plugin.agent;
    let failed = |why: String| format!("address {}: {why}", req.address);
    let pool = Pool::find(agent, &req.pool_id).map_err(failed)?;
    let cidr = pool.cidr(&req.address).map_err(failed)?;
    if plugin.unconfirmed().contains(&cidr) {
        agent
            .endpoints()
            .hide(vec![cidr.to_string()])
            .await
            .map_err(|e| failed(e.to_string()))?;
        plugin.unconfirmed().remove(&cidr);
    } else if let Some(network) = network_where(agent, |n| n.subnets.contains(&pool.subnet))? {
        agent
            .endpoints()
            .release_docker_address(&network.name, cidr.ip())
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    Ok(json!({}))
}
