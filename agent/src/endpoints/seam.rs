//! What the endpoint core needs of the world, as two traits: the host (its containers and its
//! kernel) and the controller's claims. The agent passes the real ones; the core's tests pass
//! fakes, so its undo paths run without a kernel or a controller.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use tonic::Status;
use weft_proto::names::Mac;
use weft_proto::rows::EndpointRow;
use weft_proto::v1::{
    AttachRequest, AttachResponse, DetachRequest, DetachResponse, UpdateDnsRequest,
    UpdateDnsResponse,
};

use crate::container::{Container, ContainerError, Containers};
use crate::controller_link::ControllerLink;
use crate::datapath::Datapath;
use crate::desired::{Exposed, Segment};

type Answer<T> = Result<T, Status>;

/// The host's containers and the kernel steps of an attach, a detach and a release (see
/// [`Datapath`] for what each does).
pub trait Host: Send + Sync {
    /// The container, which must be there now, with its namespace to plug into.
    fn resolve(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Container, ContainerError>> + Send;
    /// The container named by `reference`, in the namespace `netns` a front end was told
    /// (which must be there now).
    fn resolve_at(
        &self,
        reference: &str,
        netns: &Path,
    ) -> impl Future<Output = Result<Container, ContainerError>> + Send;
    /// The container's canonical id, running or not.
    fn identify(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Container, ContainerError>> + Send;
    fn link_exists(&self, name: &str) -> impl Future<Output = anyhow::Result<bool>> + Send;
    fn plug(
        &self,
        container: &Container,
        ep: &EndpointRow,
        net: Segment,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The endpoint's veth with both ends on this host, for Docker to move one; the name of
    /// that one.
    fn plug_unmoved(
        &self,
        ep: &EndpointRow,
        net: Segment,
    ) -> impl Future<Output = anyhow::Result<String>> + Send;
    fn holds(
        &self,
        container: &Container,
        ifname: &str,
        mac: Mac,
        host_ifname: &str,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Whether the container has the interface `ifname`.
    fn container_has(
        &self,
        container: &Container,
        ifname: &str,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Whether the container has any of weft's interfaces.
    fn has_interfaces(
        &self,
        container: &Container,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
    fn unplug_container(
        &self,
        container: &Container,
    ) -> impl Future<Output = anyhow::Result<Vec<String>>> + Send;
    fn unplug_from(
        &self,
        container: &Container,
        host_ifname: &str,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
    fn unplug(&self, host_ifname: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn remove_addresses(
        &self,
        container: &Container,
        ep: &EndpointRow,
        cidrs: &[IpNetwork],
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn expose(
        &self,
        net: Segment,
        exposed: Option<&Exposed>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What the controller records: the addresses and names of this host's endpoints.
pub trait Claims: Send + Sync {
    /// Where the controller is, for messages.
    fn url(&self) -> &str;
    fn attach(&self, request: AttachRequest)
    -> impl Future<Output = Answer<AttachResponse>> + Send;
    fn detach(&self, request: DetachRequest)
    -> impl Future<Output = Answer<DetachResponse>> + Send;
    fn update_dns(
        &self,
        request: UpdateDnsRequest,
    ) -> impl Future<Output = Answer<UpdateDnsResponse>> + Send;
}

/// This host: its containers (namespaces, Docker) and its kernel.
pub struct KernelHost {
    pub datapath: Arc<Datapath>,
    pub containers: Arc<Containers>,
}

impl Host for KernelHost {
    async fn resolve(&self, reference: &str) -> Result<Container, ContainerError> {
        self.containers.resolve(reference).await
    }

    async fn resolve_at(&self, reference: &str, netns: &Path) -> Result<Container, ContainerError> {
        self.containers.resolve_at(reference, netns).await
    }

    async fn identify(&self, reference: &str) -> Result<Container, ContainerError> {
        self.containers.identify(reference).await
    }

    async fn link_exists(&self, name: &str) -> anyhow::Result<bool> {
        self.datapath.link_exists(name).await
    }

    async fn plug(
        &self,
        container: &Container,
        ep: &EndpointRow,
        net: Segment,
    ) -> anyhow::Result<()> {
        self.datapath.plug(container, ep, net).await
    }

    async fn plug_unmoved(&self, ep: &EndpointRow, net: Segment) -> anyhow::Result<String> {
        self.datapath.plug_unmoved(ep, net).await
    }

    async fn holds(
        &self,
        container: &Container,
        ifname: &str,
        mac: Mac,
        host_ifname: &str,
    ) -> anyhow::Result<bool> {
        self.datapath
            .holds(container, ifname, mac, host_ifname)
            .await
    }

    async fn container_has(&self, container: &Container, ifname: &str) -> anyhow::Result<bool> {
        self.datapath.container_has(container, ifname).await
    }

    async fn has_interfaces(&self, container: &Container) -> anyhow::Result<bool> {
        Ok(!self
            .datapath
            .container_interfaces(container)
            .await?
            .is_empty())
    }

    async fn unplug_container(&self, container: &Container) -> anyhow::Result<Vec<String>> {
        self.datapath.unplug_container(container).await
    }

    async fn unplug_from(&self, container: &Container, host_ifname: &str) -> anyhow::Result<bool> {
        self.datapath.unplug_from(container, host_ifname).await
    }

    async fn unplug(&self, host_ifname: &str) -> anyhow::Result<()> {
        self.datapath.unplug(host_ifname).await
    }

    async fn remove_addresses(
        &self,
        container: &Container,
        ep: &EndpointRow,
        cidrs: &[IpNetwork],
    ) -> anyhow::Result<()> {
        self.datapath.remove_addresses(container, ep, cidrs).await
    }

    async fn expose(&self, net: Segment, exposed: Option<&Exposed>) -> anyhow::Result<()> {
        self.datapath.expose(net, exposed).await
    }
}

impl Claims for ControllerLink {
    fn url(&self) -> &str {
        ControllerLink::url(self)
    }

    async fn attach(&self, request: AttachRequest) -> Answer<AttachResponse> {
        self.ask(request, |mut c, r| async move { c.attach(r).await })
            .await
    }

    async fn detach(&self, request: DetachRequest) -> Answer<DetachResponse> {
        self.ask(request, |mut c, r| async move { c.detach(r).await })
            .await
    }

    async fn update_dns(&self, request: UpdateDnsRequest) -> Answer<UpdateDnsResponse> {
        self.ask(request, |mut c, r| async move { c.update_dns(r).await })
            .await
    }
}
