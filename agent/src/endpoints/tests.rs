//! The core's undo paths with a fake host and a fake controller: no kernel, no processes.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipnetwork::IpNetwork;
use tonic::{Code, Status};
use weft_proto::names::Mac;
use weft_proto::rows::{self, EndpointRow};
use weft_proto::v1::{
    AttachRequest, AttachResponse, DetachRequest, DetachResponse, Endpoint, Network,
    UpdateDnsRequest, UpdateDnsResponse,
};

use super::attach::AttachOrder;
use super::seam::{Claims, Host};
use super::{EndpointError, Endpoints};
use crate::container::{Container, ContainerError};
use crate::desired::{Exposed, Segment};
use crate::dns::handler::DnsState;
use crate::dns::listeners::Listeners;
use crate::following::Following;
use crate::tables::TablesCopy;

const VETH: &str = "vethwepl0a1b2c3";

/// A host whose kernel is a few sets: the veths there, what was plugged and unplugged.
#[derive(Default)]
struct FakeHost {
    /// Host ends of veths that exist.
    veths: Mutex<BTreeSet<String>>,
    /// Every step taken, in order.
    steps: Mutex<Vec<String>>,
    /// Plugging fails with this.
    plug_fails: Option<&'static str>,
    /// The container loses its interface right after it is plugged.
    loses_interface: bool,
    /// What `unplug_container` finds to remove.
    leftover: Vec<String>,
    fail_expose: bool,
}

impl FakeHost {
    fn step(&self, step: String) {
        self.steps.lock().unwrap().push(step);
    }

    fn steps(&self) -> Vec<String> {
        self.steps.lock().unwrap().clone()
    }
}

fn container(reference: &str) -> Container {
    Container {
        id: reference.to_string(),
        // No such file: the fake host never enters it, and DNS cannot be opened there.
        netns: PathBuf::from(format!("/nonexistent/{reference}")),
        hostname: String::new(),
        root: None,
    }
}

impl Host for FakeHost {
    async fn resolve(&self, reference: &str) -> Result<Container, ContainerError> {
        Ok(container(reference))
    }

    async fn resolve_at(&self, reference: &str, netns: &Path) -> Result<Container, ContainerError> {
        Ok(Container {
            netns: netns.to_path_buf(),
            ..container(reference)
        })
    }

    async fn identify(&self, reference: &str) -> Result<Container, ContainerError> {
        Ok(container(reference))
    }

    async fn link_exists(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.veths.lock().unwrap().contains(name))
    }

    async fn plug(&self, _: &Container, ep: &EndpointRow, _net: Segment) -> anyhow::Result<()> {
        let cidrs = rows::cidr_strings(&ep.cidrs).join(",");
        self.step(format!("plug {} {cidrs}", ep.host_ifname));
        if let Some(why) = self.plug_fails {
            anyhow::bail!("{why}");
        }
        self.veths.lock().unwrap().insert(ep.host_ifname.clone());
        Ok(())
    }

    async fn plug_unmoved(&self, ep: &EndpointRow, _net: Segment) -> anyhow::Result<String> {
        self.step(format!("plug_unmoved {}", ep.host_ifname));
        self.veths.lock().unwrap().insert(ep.host_ifname.clone());
        Ok(format!("guest-{}", ep.host_ifname))
    }

    async fn holds(&self, _: &Container, _: &str, _: Mac, host: &str) -> anyhow::Result<bool> {
        Ok(!self.loses_interface && self.veths.lock().unwrap().contains(host))
    }

    async fn container_has(&self, _: &Container, _: &str) -> anyhow::Result<bool> {
        Ok(true)
    }

    async fn has_interfaces(&self, _: &Container) -> anyhow::Result<bool> {
        Ok(!self.leftover.is_empty())
    }

    async fn unplug_container(&self, _: &Container) -> anyhow::Result<Vec<String>> {
        self.step("unplug_container".into());
        Ok(self.leftover.clone())
    }

    async fn unplug_from(&self, _: &Container, host: &str) -> anyhow::Result<bool> {
        self.step(format!("unplug {host}"));
        Ok(self.veths.lock().unwrap().remove(host))
    }

    async fn unplug(&self, host: &str) -> anyhow::Result<()> {
        self.step(format!("unplug {host}"));
        self.veths.lock().unwrap().remove(host);
        Ok(())
    }

    async fn remove_addresses(
        &self,
        _: &Container,
        _: &EndpointRow,
        _: &[IpNetwork],
    ) -> anyhow::Result<()> {
        Ok(())
    }

    async fn expose(&self, net: Segment, exposed: Option<&Exposed>) -> anyhow::Result<()> {
        self.step(format!("expose {} {}", net.vni, exposed.is_some()));
        if self.fail_expose {
            anyhow::bail!("cannot add the address to weave");
        }
        Ok(())
    }
}

/// A controller that answers attaches as told and records every detach.
struct FakeClaims {
    attach: Mutex<Option<Result<AttachResponse, Status>>>,
    /// Answers to the detaches, in turn; once used up, each releases what it was asked.
    detach: Mutex<VecDeque<Result<DetachResponse, Status>>>,
    attaches: Mutex<Vec<AttachRequest>>,
    detaches: Mutex<Vec<DetachRequest>>,
}

impl FakeClaims {
    fn answering(attach: Result<AttachResponse, Status>) -> FakeClaims {
        FakeClaims {
            attach: Mutex::new(Some(attach)),
            detach: Mutex::default(),
            attaches: Mutex::default(),
            detaches: Mutex::default(),
        }
    }

    fn then_detach(self, answer: Result<DetachResponse, Status>) -> FakeClaims {
        self.detach.lock().unwrap().push_back(answer);
        self
    }

    /// The ADDRs of each detach asked, in order.
    fn detached(&self) -> Vec<Vec<String>> {
        let detaches = self.detaches.lock().unwrap();
        detaches.iter().map(|d| d.addrs.clone()).collect()
    }
}

impl Claims for FakeClaims {
    fn url(&self) -> &str {
        "http://controller.test"
    }

    async fn attach(&self, request: AttachRequest) -> Result<AttachResponse, Status> {
        self.attaches.lock().unwrap().push(request);
        self.attach.lock().unwrap().take().expect("one attach")
    }

    async fn detach(&self, request: DetachRequest) -> Result<DetachResponse, Status> {
        let released = request.addrs.clone();
        self.detaches.lock().unwrap().push(request);
        let next = self.detach.lock().unwrap().pop_front();
        next.unwrap_or(Ok(DetachResponse {
            released,
            ..DetachResponse::default()
        }))
    }

    async fn update_dns(&self, _: UpdateDnsRequest) -> Result<UpdateDnsResponse, Status> {
        Ok(UpdateDnsResponse::default())
    }
}

fn endpoint(container_id: &str, cidrs: &[&str]) -> Endpoint {
    Endpoint {
        network: "default".into(),
        container_id: container_id.into(),
        mac: "02:00:0a:20:00:05".into(),
        cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
        peer: "host1".into(),
        host_ifname: VETH.into(),
        container_ifname: "ethwe".into(),
        dns_name: String::new(),
    }
}

/// The controller's answer to an attach of `c1` that claimed `cidrs` and whose endpoint holds
/// `held` (more, when an unanswered attach left some).
fn attached(cidrs: &[&str], held: &[&str]) -> AttachResponse {
    let cidrs: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
    AttachResponse {
        endpoints: vec![endpoint("c1", held)],
        added: cidrs.clone(),
        cidrs,
        networks: vec![Network {
            name: "default".into(),
            subnet: "10.32.0.0/12".into(),
            vni: 1,
            ..Default::default()
        }],
        revision: 0,
    }
}

fn core_of(
    host: FakeHost,
    claims: FakeClaims,
) -> (Endpoints<FakeHost, FakeClaims>, Arc<FakeClaims>) {
    let claims = Arc::new(claims);
    let following = Arc::new(Following::load(std::path::Path::new("/nonexistent")));
    let tables = Arc::new(TablesCopy::new("host1".into(), following));
    let dns = Arc::new(Listeners::new(Arc::new(DnsState {
        domain: "weave.local".into(),
        ttl: 1,
        upstreams: Vec::new(),
        records: Default::default(),
    })));
    (Endpoints::new(host, claims.clone(), tables, dns), claims)
}

fn order(addrs: &[&str]) -> AttachOrder {
    AttachOrder {
        container: "c1".into(),
        addrs: addrs.iter().map(|a| a.to_string()).collect(),
        ..AttachOrder::default()
    }
}

#[tokio::test]
async fn an_attach_plugs_what_the_controller_claimed() {
    let claims = FakeClaims::answering(Ok(attached(&["10.32.0.5/12"], &["10.32.0.5/12"])));
    let (core, claims) = core_of(FakeHost::default(), claims);
    let ips = core.attach(order(&[])).await.unwrap();
    assert_eq!(ips, vec!["10.32.0.5"]);
    assert_eq!(core.host.steps(), vec![format!("plug {VETH} 10.32.0.5/12")]);
    assert!(claims.detached().is_empty());
    assert!(core.is_idle(), "the container's turn ends with the attach");
}

#[tokio::test]
async fn a_failed_plug_gives_back_what_the_attach_claimed() {
    let host = FakeHost {
        plug_fails: Some("the container already has an interface ethwe"),
        ..FakeHost::default()
    };
    let undone = DetachResponse {
        removed: vec![endpoint("c1", &["10.32.0.5/12"])],
        released: vec!["10.32.0.5/12".into()],
        ..DetachResponse::default()
    };
    let claims = FakeClaims::answering(Ok(attached(&["10.32.0.5/12"], &["10.32.0.5/12"])))
        .then_detach(Ok(undone));
    let (core, claims) = core_of(host, claims);
    let e = core.attach(order(&[])).await.unwrap_err();
    assert!(matches!(e, EndpointError::Kernel(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the container already has an interface ethwe"
    );
    assert_eq!(claims.detached(), vec![vec!["10.32.0.5/12".to_string()]]);
    assert_eq!(
        core.host.steps(),
        vec![
            format!("plug {VETH} 10.32.0.5/12"),
            format!("unplug {VETH}")
        ]
    );
}

#[tokio::test]
async fn what_an_unanswered_attach_left_is_given_back_before_plugging() {
    // The endpoint holds 10.32.0.9 too, which an attach the controller recorded but never
    // answered claimed; this one asked for 10.32.0.5 only, and the veth is not there.
    let claims = FakeClaims::answering(Ok(attached(
        &["10.32.0.5/12"],
        &["10.32.0.9/12", "10.32.0.5/12"],
    )));
    let (core, claims) = core_of(FakeHost::default(), claims);
    let ips = core.attach(order(&["10.32.0.5/12"])).await.unwrap();
    assert_eq!(ips, vec!["10.32.0.5"]);
    assert_eq!(claims.detached(), vec![vec!["10.32.0.9/12".to_string()]]);
    assert_eq!(core.host.steps(), vec![format!("plug {VETH} 10.32.0.5/12")]);
}

#[tokio::test]
async fn an_interface_lost_while_attaching_undoes_the_attach() {
    let host = FakeHost {
        loses_interface: true,
        ..FakeHost::default()
    };
    let claims = FakeClaims::answering(Ok(attached(&["10.32.0.5/12"], &["10.32.0.5/12"])));
    let (core, claims) = core_of(host, claims);
    let e = core.attach(order(&[])).await.unwrap_err();
    assert!(matches!(e, EndpointError::Lost(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("c1 lost its interface ethwe (veth {VETH}) while it was being attached")
    );
    assert_eq!(claims.detached(), vec![vec!["10.32.0.5/12".to_string()]]);
}

#[tokio::test]
async fn a_refused_claim_touches_nothing() {
    let refused = Status::resource_exhausted("network default has no free address");
    let (core, claims) = core_of(FakeHost::default(), FakeClaims::answering(Err(refused)));
    let e = core.attach(order(&[])).await.unwrap_err();
    let EndpointError::Controller(status) = e else {
        panic!("{e:?}");
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(core.host.steps().is_empty());
    assert!(claims.detached().is_empty());
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_asked() {
    let claims = FakeClaims::answering(Ok(attached(&[], &[])));
    let (core, claims) = core_of(FakeHost::default(), claims);
    let e = core.attach(order(&["192.168.0.300/24"])).await.unwrap_err();
    assert!(matches!(e, EndpointError::Invalid(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "invalid address \"192.168.0.300/24\": \"192.168.0.300\" is not an IPv4 address"
    );
    let named = AttachOrder {
        dns_name: "a..b".into(),
        ..order(&[])
    };
    let e = core.attach(named).await.unwrap_err();
    assert!(matches!(e, EndpointError::Invalid(_)), "{e:?}");
    let e = core
        .detach("c1", None, vec!["net:".into()])
        .await
        .unwrap_err();
    assert!(matches!(e, EndpointError::Invalid(_)), "{e:?}");
    assert!(claims.attaches.lock().unwrap().is_empty());
    assert!(claims.detached().is_empty());
    assert!(core.host.steps().is_empty());
}

#[tokio::test]
async fn a_detach_the_controller_already_made_removes_the_leftover_interfaces() {
    let not_attached = || Err(Status::not_found("c1 is not attached"));
    let host = FakeHost {
        leftover: vec![VETH.into()],
        ..FakeHost::default()
    };
    let claims = FakeClaims::answering(Ok(attached(&[], &[]))).then_detach(not_attached());
    let (core, _) = core_of(host, claims);
    assert_eq!(
        core.detach("c1", None, Vec::new()).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(core.host.steps(), vec!["unplug_container"]);

    // Nothing left either: the controller's answer stands.
    let claims = FakeClaims::answering(Ok(attached(&[], &[]))).then_detach(not_attached());
    let (core, _) = core_of(FakeHost::default(), claims);
    let e = core.detach("c1", None, Vec::new()).await.unwrap_err();
    let EndpointError::Controller(status) = e else {
        panic!("{e:?}");
    };
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "c1 is not attached");
}

#[tokio::test]
async fn a_failed_expose_gives_back_its_addresses() {
    let host = FakeHost {
        fail_expose: true,
        ..FakeHost::default()
    };
    let mut exposed = attached(&["10.32.0.1/12"], &["10.32.0.1/12"]);
    exposed.endpoints[0].container_id = weft_proto::names::EXPOSE_ID.into();
    let (core, claims) = core_of(host, FakeClaims::answering(Ok(exposed)));
    let e = core.expose(Vec::new()).await.unwrap_err();
    assert_eq!(e.to_string(), "cannot add the address to weave");
    assert_eq!(claims.detached(), vec![vec!["10.32.0.1/12".to_string()]]);
    assert_eq!(core.host.steps(), vec!["expose 1 true"]);
}

/// The core with tables holding network `blue` and, on host1, the endpoints `(key, cidr)`.
fn docker_core(
    claims: FakeClaims,
    endpoints: &[(&str, &str)],
) -> (Endpoints<FakeHost, FakeClaims>, Arc<FakeClaims>) {
    use weft_proto::v1::watch_event::Event;
    use weft_proto::v1::{Snapshot, WatchEvent};
    let (core, claims) = core_of(FakeHost::default(), claims);
    let snapshot = Snapshot {
        networks: vec![Network {
            name: "blue".into(),
            subnet: "10.9.0.0/24".into(),
            vni: 7,
            ..Default::default()
        }],
        endpoints: endpoints
            .iter()
            .map(|(key, cidr)| Endpoint {
                network: "blue".into(),
                ..endpoint(key, &[cidr])
            })
            .collect(),
        ..Snapshot::default()
    };
    let event = WatchEvent {
        revision: 1,
        event: Some(Event::Snapshot(snapshot)),
        store_id: String::new(),
    };
    core.tables.apply(event).expect("the snapshot");
    (core, claims)
}

#[tokio::test]
async fn docker_reserves_then_its_endpoint_takes_the_address_over() {
    let reserved = AttachResponse {
        cidrs: vec!["10.9.0.5/24".into()],
        ..attached(&["10.9.0.5/24"], &["10.9.0.5/24"])
    };
    let (core, claims) = docker_core(FakeClaims::answering(Ok(reserved)), &[]);
    let cidr = core.reserve("net:blue", None).await.unwrap();
    assert_eq!(cidr.to_string(), "10.9.0.5/24");
    let asked = claims.attaches.lock().unwrap()[0].clone();
    assert!(
        asked
            .container_id
            .starts_with(&format!("docker-ipam:{}-", core.generation)),
        "{}",
        asked.container_id
    );
    assert_eq!(asked.addrs, ["net:blue"]);

    // CreateEndpoint: the reservation the tables show holding the address gives it up.
    let (core, claims) = docker_core(
        FakeClaims::answering(Ok(attached(&["10.9.0.5/24"], &["10.9.0.5/24"]))),
        &[("docker-ipam:0-1", "10.9.0.5/24")],
    );
    core.take_over("docker-ep:e1", "blue", "10.9.0.5/24".parse().unwrap())
        .await
        .unwrap();
    let asked = claims.attaches.lock().unwrap()[0].clone();
    assert_eq!(
        (asked.container_id.as_str(), asked.take_from.as_str()),
        ("docker-ep:e1", "docker-ipam:0-1")
    );
    assert_eq!(asked.addrs, ["10.9.0.5/24"]);
}

#[tokio::test]
async fn docker_gets_a_veth_to_move_and_its_endpoint_goes_veth_first() {
    let (core, claims) = docker_core(
        FakeClaims::answering(Err(Status::internal("no attach expected"))),
        &[("docker-ep:e1", "10.9.0.5/24")],
    );
    let (ep, guest) = core.plug_unmoved("docker-ep:e1").await.unwrap();
    assert_eq!(
        (ep.host_ifname.as_str(), guest),
        (VETH, format!("guest-{VETH}"))
    );
    core.release_endpoint("docker-ep:e1").await.unwrap();
    assert_eq!(
        core.host.steps(),
        [format!("plug_unmoved {VETH}"), format!("unplug {VETH}")]
    );
    let detaches = claims.detaches.lock().unwrap().clone();
    assert_eq!(detaches.len(), 1);
    assert_eq!(detaches[0].container_id, "docker-ep:e1");
    // Join of an endpoint this host does not have names it.
    let e = core.plug_unmoved("docker-ep:e2").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "docker-ep:e2 is not an endpoint of this host"
    );
}

#[tokio::test]
async fn reservations_of_an_earlier_agent_are_released_and_its_own_kept() {
    let (core, claims) = docker_core(
        FakeClaims::answering(Err(Status::internal("no attach expected"))),
        &[
            ("docker-ipam:0-1", "10.9.0.5/24"),
            ("docker-ep:e1", "10.9.0.6/24"),
        ],
    );
    core.release_reservations().await.unwrap();
    let released: Vec<String> = claims
        .detaches
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.container_id.clone())
        .collect();
    assert_eq!(released, ["docker-ipam:0-1"]);
    // ReleaseAddress of an address an endpoint still holds (its DeleteEndpoint failed).
    core.release_docker_address("blue", "10.9.0.6".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        claims.detaches.lock().unwrap()[1].container_id,
        "docker-ep:e1"
    );
}
