//! The endpoint core: the one way anything changes this host's endpoints. weftctl (through
//! `local_api.rs`), and every other front end, calls these functions, so the guarantees hold for
//! all of them: attaches, detaches and releases of one container take turns ([`locks`]), the
//! controller claims addresses before the kernel is touched, a failed plug gives back what its
//! attach claimed, and a retried attach gives back what an unanswered one left.
//!
//! - [`attach`]: attach and expose; [`detach`]: detach, hide and the releases of endpoints
//!   whose container or veth is gone; [`names`]: DNS names;
//! - [`seam`]: what the core needs of the host and the controller, as traits.

pub mod attach;
pub mod detach;
pub mod docker;
pub mod error;
pub mod locks;
pub mod names;
pub mod seam;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ipnetwork::IpNetwork;
use weft_proto::addr::AddrSpec;
use weft_proto::rows::{BadRow, EndpointRow, NetworkRow, parse_ip_cidr};
use weft_proto::v1::{AttachRequest, AttachResponse, DetachRequest, DetachResponse, Endpoint};

pub use error::EndpointError;
use locks::ContainerLocks;
use seam::{Claims, Host, KernelHost};

use crate::controller_link::ControllerLink;
use crate::dns::listeners::Listeners;
use crate::tables::TablesCopy;

pub struct Endpoints<H = KernelHost, C = ControllerLink> {
    host: H,
    claims: Arc<C>,
    tables: Arc<TablesCopy>,
    dns: Arc<Listeners>,
    locks: ContainerLocks,
    /// The Docker container each endpoint of Docker's driver is for, once it has been seen
    /// running (the driver's calls never say).
    driver_containers: Mutex<HashMap<String, String>>,
    /// Tells this agent process's reservations for Docker from those of earlier ones.
    generation: String,
}

/// An attach as the controller answered it, its rows typed.
struct Claimed {
    endpoints: Vec<EndpointRow>,
    networks: Vec<NetworkRow>,
    /// Every address asked for, with its prefix.
    cidrs: Vec<IpNetwork>,
    /// Those of them that are new.
    added: Vec<IpNetwork>,
    revision: u64,
}

/// A detach as the controller answered it, its rows typed.
struct Released {
    updated: Vec<EndpointRow>,
    removed: Vec<EndpointRow>,
    released: Vec<IpNetwork>,
}

/// The addresses of a controller's answer.
fn answer_cidrs(what: &str, cidrs: &[String]) -> Result<Vec<IpNetwork>, BadRow> {
    let bad = |why| BadRow {
        row: format!("the {what} addresses of the controller's answer"),
        why,
    };
    cidrs
        .iter()
        .map(|c| parse_ip_cidr(c).map_err(bad))
        .collect()
}

fn endpoint_rows(endpoints: Vec<Endpoint>) -> Result<Vec<EndpointRow>, BadRow> {
    endpoints.into_iter().map(EndpointRow::read).collect()
}

impl Claimed {
    fn read(done: AttachResponse) -> Result<Claimed, BadRow> {
        Ok(Claimed {
            endpoints: endpoint_rows(done.endpoints)?,
            networks: done
                .networks
                .into_iter()
                .map(NetworkRow::read)
                .collect::<Result<_, _>>()?,
            cidrs: answer_cidrs("attached", &done.cidrs)?,
            added: answer_cidrs("added", &done.added)?,
            revision: done.revision,
        })
    }
}

impl Released {
    fn read(done: DetachResponse) -> Result<Released, BadRow> {
        Ok(Released {
            updated: endpoint_rows(done.updated)?,
            removed: endpoint_rows(done.removed)?,
            released: answer_cidrs("released", &done.released)?,
        })
    }
}

/// Checks ADDR arguments before anything is asked, so that a typo never reaches the controller.
fn check_addrs(addrs: &[String]) -> Result<(), EndpointError> {
    for addr in addrs {
        addr.parse::<AddrSpec>()
            .map_err(|e| EndpointError::Invalid(e.to_string()))?;
    }
    Ok(())
}

impl<H: Host, C: Claims> Endpoints<H, C> {
    pub fn new(host: H, claims: Arc<C>, tables: Arc<TablesCopy>, dns: Arc<Listeners>) -> Self {
        Endpoints {
            host,
            claims,
            tables,
            dns,
            locks: ContainerLocks::default(),
            driver_containers: Mutex::default(),
            generation: format!("{:08x}", rand::random::<u32>()),
        }
    }

    /// No attach, detach or release is under way.
    pub fn is_idle(&self) -> bool {
        self.locks.is_idle()
    }

    /// Waits until the tables hold `revision` (see [`TablesCopy::caught_up`]) and serves the
    /// names they hold: a name just added resolves as soon as the command that added it
    /// returns, not at the reconcile the change wakes.
    pub async fn caught_up(&self, revision: u64) {
        self.tables.caught_up(revision).await;
        self.dns.serve_names(&self.tables);
    }

    /// Has the controller claim or allocate `addrs` for a container of this host, and record
    /// its DNS name (empty: keep the one it has) and the interface name of a new endpoint
    /// (empty: the controller's choice). Does not wait for the change to arrive through
    /// the watch: the caller plugs meanwhile (a reconcile from older tables leaves a new veth
    /// alone while the container is locked) and then calls [`Endpoints::caught_up`].
    async fn claim(
        &self,
        container_id: &str,
        addrs: Vec<String>,
        dns_name: &str,
        ifname: &str,
    ) -> Result<Claimed, EndpointError> {
        self.claim_taking(container_id, addrs, dns_name, ifname, "")
            .await
    }

    /// [`Endpoints::claim`], taking the static addresses among `addrs` that the container
    /// `take_from` of this host holds over from it.
    async fn claim_taking(
        &self,
        container_id: &str,
        addrs: Vec<String>,
        dns_name: &str,
        ifname: &str,
        take_from: &str,
    ) -> Result<Claimed, EndpointError> {
        let request = AttachRequest {
            peer: self.tables.me().to_string(),
            container_id: container_id.to_string(),
            addrs,
            dns_name: dns_name.to_string(),
            container_ifname: ifname.to_string(),
            take_from: take_from.to_string(),
        };
        let done = self.claims.attach(request).await?;
        self.tables.made(done.revision);
        Claimed::read(done).map_err(|bad| EndpointError::Internal(bad.to_string()))
    }

    /// Has the controller release `addrs` of a container of this host (none: all it has), and
    /// waits for the change to arrive.
    async fn give_back(
        &self,
        container_id: &str,
        addrs: Vec<String>,
    ) -> Result<Released, EndpointError> {
        let request = DetachRequest {
            peer: self.tables.me().to_string(),
            container_id: container_id.to_string(),
            addrs,
            only_mac: String::new(),
        };
        let done = self.claims.detach(request).await?;
        self.caught_up(done.revision).await;
        Released::read(done).map_err(|bad| EndpointError::Internal(bad.to_string()))
    }
}
