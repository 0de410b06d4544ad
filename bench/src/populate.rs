//! Filling the controller's tables with the endpoints of one peer, through the same Register
//! and Attach requests an agent sends, with DNS names if asked.

use anyhow::Context;
use futures::{StreamExt, TryStreamExt, stream};
use tonic::transport::Channel;
use weft_proto::v1::controller_client::ControllerClient;
use weft_proto::v1::{AttachRequest, Endpoint, Peer, RegisterRequest};

/// A peer and the containers to attach on it.
pub struct Population {
    pub peer: Peer,
    pub endpoints: usize,
    /// Attach requests in flight at once: the controller fsyncs each before it answers, so
    /// one at a time would leave it idle between them.
    pub concurrency: usize,
    /// ADDR strings every container asks for; empty means net:default.
    pub addrs: Vec<String>,
    /// Whether container `load-N` gets the DNS name `load-N` (served in the DNS domain).
    pub dns_names: bool,
}

impl Population {
    /// Registers the peer and attaches `load-0`, `load-1`, ...; returns the endpoints made, in
    /// container order.
    pub async fn run(&self, client: ControllerClient<Channel>) -> anyhow::Result<Vec<Endpoint>> {
        let name = &self.peer.name;
        client
            .clone()
            .register(RegisterRequest {
                peer: Some(self.peer.clone()),
            })
            .await
            .with_context(|| format!("cannot register peer {name}"))?;
        let per_container: Vec<Vec<Endpoint>> = stream::iter(0..self.endpoints)
            .map(|i| {
                let mut client = client.clone();
                let request = AttachRequest {
                    peer: name.clone(),
                    container_id: format!("load-{i}"),
                    addrs: self.addrs.clone(),
                    dns_name: if self.dns_names {
                        format!("load-{i}")
                    } else {
                        String::new()
                    },
                    ..Default::default()
                };
                async move {
                    let response = client
                        .attach(request)
                        .await
                        .with_context(|| format!("cannot attach load-{i} on peer {name}"))?;
                    anyhow::Ok(response.into_inner().endpoints)
                }
            })
            .buffered(self.concurrency)
            .try_collect()
            .await?;
        Ok(per_container.into_iter().flatten().collect())
    }
}
