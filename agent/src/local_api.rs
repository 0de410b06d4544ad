//! The API weftctl speaks to on the agent's unix socket: attach, detach, ps. Error messages are
//! the "why" of weftctl's `weftctl: <what failed>: <why>` line, so each names the culprit.

use std::sync::Arc;

use ipnetwork::Ipv4Network;
use tonic::{Code, Request, Response, Status};
use tracing::warn;
use weft_proto::addr::AddrSpec;
use weft_proto::tables::DEFAULT_NETWORK;
use weft_proto::v1::agent_server::Agent as AgentApi;
use weft_proto::v1::{
    AttachRequest, AttachResponse, CreateEndpointRequest, DeleteEndpointsRequest, DetachRequest,
    DetachResponse, Endpoint, PsEntry, PsRequest, PsResponse,
};

use crate::agent::Agent;
use crate::container::{self, ContainerError};
use crate::desired::{Mac, host_ifname};

/// Tries at a MAC whose veth name is free on this host before giving up.
const MAC_TRIES: usize = 8;

pub struct LocalApi {
    agent: Arc<Agent>,
}

impl LocalApi {
    pub fn new(agent: Arc<Agent>) -> Self {
        LocalApi { agent }
    }

    /// Passes the controller's answer on, saying so when it could not be reached at all.
    fn controller_status(&self, status: Status) -> Status {
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                Status::unavailable(format!(
                    "controller {} is unreachable: {}",
                    self.agent.controller_url,
                    status.message()
                ))
            }
            _ => status,
        }
    }

    /// A MAC for a new container interface whose veth name no link on this host has.
    async fn fresh_mac(&self) -> Result<(Mac, String), Status> {
        for _ in 0..MAC_TRIES {
            let mac = Mac::random();
            let ifname = host_ifname(mac);
            if !self
                .agent
                .datapath
                .link_exists(&ifname)
                .await
                .map_err(internal)?
            {
                return Ok((mac, ifname));
            }
        }
        Err(Status::resource_exhausted(
            "no free vethwepl name found; too many links on this host",
        ))
    }
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

fn container_status(e: ContainerError) -> Status {
    match e {
        ContainerError::NoNamespace(_) | ContainerError::NoProcess(_) => {
            Status::not_found(e.to_string())
        }
        ContainerError::Unsupported(_) => Status::invalid_argument(e.to_string()),
    }
}

/// The static addresses of an attach; allocation arrives with IPAM.
fn static_addresses(addrs: &[String]) -> Result<Vec<Ipv4Network>, Status> {
    if addrs.is_empty() {
        return Err(Status::invalid_argument(
            "no address given: give IP/LEN (allocation from net:default is not available yet)",
        ));
    }
    addrs
        .iter()
        .map(|a| match a.parse::<AddrSpec>() {
            Ok(AddrSpec::Static(net)) => Ok(net),
            Ok(alloc @ AddrSpec::Allocate(_)) => Err(Status::unimplemented(format!(
                "allocation ({alloc}) is not available yet: give IP/LEN"
            ))),
            Err(e) => Err(Status::invalid_argument(e.to_string())),
        })
        .collect()
}

fn ips_of(cidrs: &[String]) -> Vec<String> {
    cidrs
        .iter()
        .map(|c| {
            c.split_once('/')
                .map_or(c.as_str(), |(ip, _)| ip)
                .to_string()
        })
        .collect()
}

#[tonic::async_trait]
impl AgentApi for LocalApi {
    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        let req = request.into_inner();
        let cidrs = static_addresses(&req.addrs)?;
        let container = container::resolve(&req.container).map_err(container_status)?;
        let (mac, ifname) = self.fresh_mac().await?;
        let endpoint = Endpoint {
            network: DEFAULT_NETWORK.into(),
            container_id: container.id.clone(),
            mac: mac.to_string(),
            cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            peer: self.agent.name.clone(),
            host_ifname: ifname.clone(),
        };
        // The controller claims the addresses first, so no two hosts can plug the same one.
        let created = self
            .agent
            .client
            .clone()
            .create_endpoint(CreateEndpointRequest {
                endpoint: Some(endpoint),
            })
            .await
            .map_err(|s| self.controller_status(s))?
            .into_inner()
            .endpoint
            .ok_or_else(|| Status::internal("controller returned no endpoint"))?;
        if let Err(e) = self
            .agent
            .datapath
            .plug(&container, &ifname, mac, &cidrs)
            .await
        {
            // Give the addresses back: a failed attach must leave nothing claimed.
            let release = DeleteEndpointsRequest {
                peer: self.agent.name.clone(),
                container_id: container.id.clone(),
            };
            if let Err(s) = self.agent.client.clone().delete_endpoints(release).await {
                warn!(container = %container.id, "releasing the addresses of a failed attach failed: {}", s.message());
            }
            return Err(internal(e));
        }
        Ok(Response::new(AttachResponse {
            ips: ips_of(&created.cidrs),
        }))
    }

    async fn detach(
        &self,
        request: Request<DetachRequest>,
    ) -> Result<Response<DetachResponse>, Status> {
        let req = request.into_inner();
        let container = container::parse(&req.container).map_err(container_status)?;
        let removed = self
            .agent
            .client
            .clone()
            .delete_endpoints(DeleteEndpointsRequest {
                peer: self.agent.name.clone(),
                container_id: container.id.clone(),
            })
            .await
            .map_err(|s| self.controller_status(s))?
            .into_inner()
            .removed;
        let mut ips = Vec::new();
        for ep in &removed {
            self.agent
                .datapath
                .unplug(&ep.host_ifname)
                .await
                .map_err(internal)?;
            ips.extend(ips_of(&ep.cidrs));
        }
        Ok(Response::new(DetachResponse { ips }))
    }

    async fn ps(&self, _request: Request<PsRequest>) -> Result<Response<PsResponse>, Status> {
        let me = &self.agent.name;
        let entries = self
            .agent
            .with_tables(|t| {
                t.endpoints
                    .values()
                    .filter(|ep| &ep.peer == me)
                    .map(|ep| PsEntry {
                        container_id: ep.container_id.clone(),
                        mac: ep.mac.clone(),
                        cidrs: ep.cidrs.clone(),
                    })
                    .collect()
            })
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "no state from controller {} yet",
                    self.agent.controller_url
                ))
            })?;
        Ok(Response::new(PsResponse { entries }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_takes_static_addresses_and_names_the_bad_one() {
        let ok = static_addresses(&["192.168.0.2/24".into(), "ip:10.0.0.2/8".into()]).unwrap();
        assert_eq!(ok.len(), 2);
        let bad = static_addresses(&["192.168.0.300/24".into()]).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert_eq!(
            bad.message(),
            "invalid address \"192.168.0.300/24\": \"192.168.0.300\" is not an IPv4 address"
        );
        let alloc = static_addresses(&["net:default".into()]).unwrap_err();
        assert_eq!(alloc.code(), Code::Unimplemented);
    }

    #[test]
    fn ips_drop_the_prefix() {
        assert_eq!(
            ips_of(&["192.168.0.2/24".into(), "10.0.0.1/8".into()]),
            vec!["192.168.0.2", "10.0.0.1"]
        );
    }
}
