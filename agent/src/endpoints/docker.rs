//! The steps Docker's network and IPAM plugin takes an endpoint through, each its own request:
//! an address reserved before its endpoint exists (RequestAddress), taken over by the endpoint
//! in one change at the controller (CreateEndpoint), a veth whose container end Docker moves
//! into the sandbox (Join), unplugged (Leave), released (DeleteEndpoint, ReleaseAddress).
//! Docker governs these endpoints' lives: the reconcile does not release them for want of a
//! veth (see [`Endpoints::release_unplugged`]).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::MutexGuard;

use ipnetwork::IpNetwork;
use tonic::Code;
use tracing::{info, warn};
use weft_proto::names::{docker_reservation_key, is_docker_plugin_key, is_docker_reservation};
use weft_proto::rows::{EndpointRow, cidr_strings};

use super::seam::{Claims, Host};
use super::{EndpointError, Endpoints};
use crate::desired::Segment;

impl<H: Host, C: Claims> Endpoints<H, C> {
    /// Reserves an address for an endpoint to come: `addr` (IP/LEN), or the lowest free one of
    /// the network `net` refers to (`net:NAME`, `net:CIDR`); returns it.
    pub async fn reserve(
        &self,
        net: &str,
        addr: Option<IpNetwork>,
    ) -> Result<IpNetwork, EndpointError> {
        let token = format!("{}-{:016x}", self.generation, rand::random::<u64>());
        let key = docker_reservation_key(&token);
        let spec = addr.map_or_else(|| net.to_string(), |a| a.to_string());
        let _lock = self.locks.lock(&key).await;
        let done = self.claim(&key, vec![spec], "", "").await?;
        self.caught_up(done.revision).await;
        let cidr =
            done.cidrs.first().copied().ok_or_else(|| {
                EndpointError::Internal("the controller reserved no address".into())
            })?;
        info!(reservation = %key, %cidr, "address reserved for Docker");
        Ok(cidr)
    }

    /// Gives back an address of `network` Docker is done with (ReleaseAddress): one a
    /// reservation holds, or an endpoint of Docker's driver whose DeleteEndpoint failed; nothing
    /// to do if neither holds it (the endpoint gave it back at DeleteEndpoint).
    pub async fn release_docker_address(
        &self,
        network: &str,
        ip: IpAddr,
    ) -> Result<(), EndpointError> {
        match self.local_holder(network, ip)? {
            Some(key) if is_docker_reservation(&key) => self.release_endpoint(&key).await,
            Some(key) if is_docker_plugin_key(&key) => {
                warn!(endpoint = %key, %ip, "released by ReleaseAddress: its DeleteEndpoint failed");
                self.release_endpoint(&key).await
            }
            _ => Ok(()),
        }
    }

    /// Gives back every address Docker's IPAM reserved on this host before this agent started
    /// that no endpoint took over: left by a Docker or an agent that stopped between the two
    /// calls. An endpoint created after this claims its address anew (see
    /// [`Endpoints::take_over`]); this agent's own reservations are left alone.
    pub async fn release_reservations(&self) -> Result<(), EndpointError> {
        let me = self.tables.me();
        let mine = docker_reservation_key(&format!("{}-", self.generation));
        let reserved: BTreeSet<String> = self
            .tables
            .read(|t| {
                t.endpoints_on(me)
                    .map(|ep| ep.id.container.clone())
                    .filter(|key| is_docker_reservation(key) && !key.starts_with(&mine))
                    .collect()
            })
            .ok_or_else(|| self.no_tables())?;
        for key in reserved {
            info!(reservation = %key, "releasing an address reserved for Docker before a restart");
            self.release_endpoint(&key).await?;
        }
        Ok(())
    }

    /// Gives the endpoint `key` the address `cidr` of `network`, taken over from the
    /// reservation that holds it; returns the endpoint. Asking again changes nothing.
    pub async fn take_over(
        &self,
        key: &str,
        network: &str,
        cidr: IpNetwork,
    ) -> Result<EndpointRow, EndpointError> {
        let from = self
            .local_holder(network, cidr.ip())?
            .filter(|k| is_docker_reservation(k))
            .unwrap_or_default();
        let _lock = self.locks.lock(key).await;
        let done = self
            .claim_taking(key, vec![cidr.to_string()], "", "", &from)
            .await?;
        self.caught_up(done.revision).await;
        done.endpoints.into_iter().next().ok_or_else(|| {
            EndpointError::Internal(format!("the controller made no endpoint for {key}"))
        })
    }

    /// Makes the veth of endpoint `key` with its container end on the host for Docker to move
    /// (Join); returns the endpoint and that end's name.
    pub async fn plug_unmoved(&self, key: &str) -> Result<(EndpointRow, String), EndpointError> {
        let _lock = self.locks.lock(key).await;
        let (ep, net) = self.local_endpoint(key)?.ok_or_else(|| {
            EndpointError::Precondition(format!("{key} is not an endpoint of this host"))
        })?;
        let guest = self
            .host
            .plug_unmoved(&ep, net)
            .await
            .map_err(EndpointError::Kernel)?;
        Ok((ep, guest))
    }

    /// Removes the veth of endpoint `key`, wherever its container end is (Leave); nothing to do
    /// if there is none.
    pub async fn unplug_endpoint(&self, key: &str) -> Result<(), EndpointError> {
        let _lock = self.locks.lock(key).await;
        self.unplug_veth_of(key).await
    }

    /// Removes the veth of endpoint `key` (Leave did, unless it failed) and releases the
    /// endpoint (DeleteEndpoint); nothing to do for one that is not there.
    pub async fn release_endpoint(&self, key: &str) -> Result<(), EndpointError> {
        let _lock = self.locks.lock(key).await;
        self.unplug_veth_of(key).await?;
        match self.give_back(key, Vec::new()).await {
            Ok(_) => {}
            Err(EndpointError::Controller(s)) if s.code() == Code::NotFound => {}
            Err(e) => return Err(e),
        }
        self.driver_containers().remove(key);
        Ok(())
    }

    /// Removes the veth of endpoint `key`, if it has one; the caller holds its turn.
    async fn unplug_veth_of(&self, key: &str) -> Result<(), EndpointError> {
        if let Some((ep, _)) = self.local_endpoint(key)? {
            self.host
                .unplug(&ep.host_ifname)
                .await
                .map_err(EndpointError::Kernel)?;
        }
        Ok(())
    }

    /// Records that endpoint `key` is Docker container `container_id`'s (seen running), and
    /// gives it the DNS name `name` (the container's) on every host; nothing to do for an
    /// endpoint that is gone.
    pub async fn found_container(
        &self,
        key: &str,
        container_id: &str,
        name: Option<&str>,
    ) -> Result<(), EndpointError> {
        let _lock = self.locks.lock(key).await;
        let Some((ep, _)) = self.local_endpoint(key)? else {
            return Ok(());
        };
        self.driver_containers()
            .insert(key.to_string(), container_id.to_string());
        let Some(name) = name.filter(|n| *n != ep.dns_name) else {
            return Ok(());
        };
        let done = self.claim(key, cidr_strings(&ep.cidrs), name, "").await?;
        self.caught_up(done.revision).await;
        Ok(())
    }

    /// The Docker container endpoint `key` of Docker's driver is for, once seen running.
    pub fn driver_container(&self, key: &str) -> Option<String> {
        self.driver_containers().get(key).cloned()
    }

    fn driver_containers(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.driver_containers
            .lock()
            .expect("driver containers lock poisoned")
    }

    /// This host's endpoint `key` as the tables hold it, with its network.
    pub fn local_endpoint(
        &self,
        key: &str,
    ) -> Result<Option<(EndpointRow, Segment)>, EndpointError> {
        let me = self.tables.me();
        self.tables
            .read(|t| {
                t.endpoints_on(me)
                    .find(|ep| ep.id.container == key)
                    .and_then(|ep| Some((ep.clone(), Segment::of(t.networks.get(&ep.id.network)?))))
            })
            .ok_or_else(|| self.no_tables())
    }

    /// Which of this host's containers holds `ip` in `network`.
    pub fn local_holder(&self, network: &str, ip: IpAddr) -> Result<Option<String>, EndpointError> {
        let me = self.tables.me();
        self.tables
            .read(|t| {
                t.endpoints_on(me)
                    .find(|ep| ep.id.network == network && ep.cidrs.iter().any(|c| c.ip() == ip))
                    .map(|ep| ep.id.container.clone())
            })
            .ok_or_else(|| self.no_tables())
    }
}
