//! Changes to a container's endpoints as the controller records them and the kernel follows,
//! the steps of weftctl's attach, detach, expose and hide (`local_api.rs`).

use tonic::{Code, Status};
use weft_proto::v1::{AttachRequest, AttachResponse, DetachRequest, DetachResponse};

use crate::agent::{Agent, describe};
use crate::container::Container;

impl Agent {
    /// Passes the controller's answer on, saying so when it could not be reached at all.
    pub fn controller_status(&self, status: Status) -> Status {
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                Status::unavailable(format!(
                    "controller {} is unreachable: {}",
                    self.controller_url,
                    describe(&status)
                ))
            }
            _ => status,
        }
    }

    pub async fn detach_at_controller(
        &self,
        container_id: &str,
        addrs: Vec<String>,
    ) -> Result<DetachResponse, Status> {
        let request = DetachRequest {
            peer: self.name.clone(),
            container_id: container_id.to_string(),
            addrs,
            only_mac: String::new(),
        };
        let done = self
            .ask(request, |mut c, r| async move { c.detach(r).await })
            .await?;
        self.caught_up(done.revision).await;
        Ok(done)
    }

    /// Has the controller claim or allocate `addrs` for a container of this host, and record
    /// its DNS name (empty: keep the one it has). Does not wait for the change to arrive through
    /// the watch: the caller plugs meanwhile (a reconcile from older tables leaves a new veth
    /// alone while the container is locked) and then calls [`Agent::caught_up`].
    pub async fn attach_at_controller(
        &self,
        container_id: &str,
        addrs: Vec<String>,
        dns_name: &str,
    ) -> Result<AttachResponse, Status> {
        let request = AttachRequest {
            peer: self.name.clone(),
            container_id: container_id.to_string(),
            addrs,
            dns_name: dns_name.to_string(),
        };
        let done = self
            .ask(request, |mut c, r| async move { c.attach(r).await })
            .await?;
        self.made(done.revision);
        Ok(done)
    }

    /// Makes the kernel follow a detach: removed endpoints lose their veth, updated ones the
    /// released addresses (if their container is still there).
    pub async fn unplug_detached(
        &self,
        container: &Container,
        done: &DetachResponse,
    ) -> anyhow::Result<()> {
        for ep in &done.removed {
            self.datapath
                .unplug_from(container, &ep.host_ifname)
                .await?;
        }
        // The delta of this detach may have been reconciled before the veth was gone, when its
        // network's devices still looked in use: look again.
        if !done.removed.is_empty() {
            self.request_reconcile();
        }
        if container.netns.exists() {
            for ep in &done.updated {
                self.datapath
                    .remove_addresses(container, ep, &done.released)
                    .await?;
            }
        }
        Ok(())
    }
}
