//! Every request of the controller's gRPC API, as bytes off the wire (random, or encoded from
//! random fields), decoded and handled by the controller as host1's agent: nothing panics, no
//! refusal is an internal error, host2's peer record and endpoints never change (host2 stays
//! connected, so RemovePeer may not take it), no DNS record is added or changed in host2's name
//! and only an UpdateDns naming one of host2's records (DNS records are operator-wide) removes
//! it, and a Join without a real token never yields a certificate.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use prost::Message;
use tonic::{Code, Request, Status};
use weft_controller::authority::PeerIdentity;
use weft_controller::enrollment::EnrollmentService;
use weft_controller::rules::{AttachOptions, TableRules};
use weft_controller::service::ControllerService;
use weft_controller::store::{Emptied, Store};
use weft_controller::tls::Ca;
use weft_controller::tokens::Tokens;
use weft_fuzz::{addr_like, fuzz};
use weft_proto::addr::AddrSpec;
use weft_proto::names::Mac;
use weft_proto::rows::{PeerRow, RecordRow, RowChange};
use weft_proto::v1::controller_server::Controller;
use weft_proto::v1::enrollment_server::Enrollment;
use weft_proto::v1::*;

/// host2's own DNS record.
const HOST2_NAME: &str = "printer.weave.local";
const HOST2_IP: &str = "10.2.0.99";

struct Controllers {
    service: ControllerService,
    enrollment: EnrollmentService,
    runtime: tokio::runtime::Runtime,
    /// host2's agent's watch, which keeps it connected.
    _host2_watch: tokio::sync::mpsc::Receiver<Result<WatchEvent, Status>>,
    _dir: tempfile::TempDir,
}

fn host2_record() -> DnsRecord {
    DnsRecord {
        name: HOST2_NAME.into(),
        ip: HOST2_IP.into(),
        peer: "host2".into(),
        container_id: String::new(),
    }
}

/// A controller with host1 and host2 registered, one endpoint and one DNS record of host2's, and
/// host2's agent watching.
fn controllers() -> Controllers {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, tables) = Store::open(dir.path(), Emptied::Refuse).expect("store");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let service =
        ControllerService::new(store, tables, Duration::from_secs(180)).expect("controller");
    let ca = Ca::load_or_create(dir.path()).expect("CA");
    let enrollment = EnrollmentService::new(
        Arc::new(ca),
        Tokens::open(dir.path(), Emptied::Refuse).expect("tokens"),
    );
    runtime
        .block_on(service.mutate(|t| {
            let mut changes =
                t.ensure_default_network("10.32.0.0/12".parse().unwrap(), None, false)?;
            for (name, addr) in [("host1", "198.18.0.1"), ("host2", "198.18.0.2")] {
                changes.push(RowChange::PeerPut(PeerRow {
                    name: name.into(),
                    addr: addr.parse().unwrap(),
                    wireguard: None,
                }));
            }
            Ok(((), changes))
        }))
        .expect("setup");
    let spec: AddrSpec = "192.168.0.3/24".parse().unwrap();
    runtime
        .block_on(service.mutate(move |t| {
            t.attach(
                "host2",
                "netns:c2",
                std::slice::from_ref(&spec),
                AttachOptions::default(),
                &mut Mac::random,
            )
        }))
        .expect("host2's endpoint");
    put_host2_record(&service, &runtime);
    let watch = WatchRequest {
        peer: "host2".into(),
        ..Default::default()
    };
    let host2_watch = runtime.block_on(async {
        let watch = service.watch(from_peer("host2", watch)).await;
        let mut events = watch.expect("host2's watch").into_inner().into_inner();
        // Its first event comes once the watcher counts as connected.
        events
            .recv()
            .await
            .expect("a snapshot")
            .expect("a snapshot");
        events
    });
    Controllers {
        service,
        enrollment,
        runtime,
        _host2_watch: host2_watch,
        _dir: dir,
    }
}

fn put_host2_record(service: &ControllerService, runtime: &tokio::runtime::Runtime) {
    runtime
        .block_on(service.mutate(|t| Ok(((), t.update_dns("host2", false, &[host2_record()])?))))
        .expect("host2's DNS record");
}

/// host2's peer record and endpoints, and its DNS records.
fn host2_state(c: &Controllers) -> (String, Vec<DnsRecord>) {
    let (state, _) = c
        .runtime
        .block_on(c.service.mutate(|t| {
            let peer = t.tables.peers.get("host2").cloned();
            let endpoints: Vec<_> = t
                .tables
                .endpoints
                .values()
                .filter(|ep| ep.id.peer == "host2")
                .cloned()
                .collect();
            let dns: Vec<_> = t
                .tables
                .dns_records
                .values()
                .filter(|r| r.peer == "host2")
                .map(RecordRow::wire)
                .collect();
            Ok(((format!("{peer:?} {endpoints:?}"), dns), vec![]))
        }))
        .expect("reading the tables");
    state
}

/// A request from `peer`'s agent, as the TLS interceptor passes it on.
fn from_peer<T>(peer: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .extensions_mut()
        .insert(PeerIdentity(peer.to_string()));
    request
}

fn from_host1<T>(message: T) -> Request<T> {
    from_peer("host1", message)
}

fn peer() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("host1".to_string()),
        Just("host2".to_string()),
        "[a-z0-9.-]{0,12}",
        any::<String>(),
    ]
}

fn container() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("netns:c2".to_string()),
        "[a-z0-9:/]{0,12}",
        any::<String>()
    ]
}

/// Bytes of one request kind: random, or a message of random fields encoded. `host2_mac` is the
/// MAC of host2's endpoint, which detaches may name.
fn call(host2_mac: String) -> impl Strategy<Value = (u8, Vec<u8>)> {
    let bytes = prop::collection::vec(any::<u8>(), 0..256);
    let addrs = || prop::collection::vec(addr_like(), 0..4);
    let structured = prop_oneof![
        1 => (peer(), "[0-9.]{0,16}").prop_map(|(name, advertise_addr)| (
            0,
            RegisterRequest {
                peer: Some(Peer {
                    name,
                    advertise_addr,
                    ..Default::default()
                })
            }
            .encode_to_vec()
        )),
        1 => (
            peer(),
            container(),
            addrs(),
            "[a-z.]{0,10}",
            "[a-z0-9/: ]{0,17}",
            prop_oneof![Just(String::new()), container()]
        ).prop_map(
            |(peer, container_id, addrs, dns_name, container_ifname, take_from)| (
                2,
                AttachRequest {
                    peer,
                    container_id,
                    addrs,
                    dns_name,
                    container_ifname,
                    take_from
                }
                .encode_to_vec()
            )
        ),
        1 => (
            peer(),
            container(),
            addrs(),
            prop_oneof![Just(host2_mac), "[0-9a-f:]{0,17}"]
        )
            .prop_map(|(peer, container_id, addrs, only_mac)| (
                3,
                DetachRequest {
                    peer,
                    container_id,
                    addrs,
                    only_mac
                }
                .encode_to_vec()
            )),
        1 => ("[a-z0-9./-]{0,12}", proptest::collection::vec("[0-9a-f:./]{0,18}", 0..3), any::<bool>()).prop_map(|(name, subnets, encrypt)| (
            4,
            CreateNetworkRequest {
                name,
                subnets,
                encrypt
            }
            .encode_to_vec()
        )),
        // host2's network (in use), the default one, or any.
        1 => prop_oneof![
            Just("192.168.0.0/24".to_string()),
            Just("default".to_string()),
            "[a-z0-9./-]{0,18}"
        ]
        .prop_map(|name| (5, DeleteNetworkRequest { name }.encode_to_vec())),
        1 => peer().prop_map(|name| (6, RemovePeerRequest { name }.encode_to_vec())),
        // Weighted up: it reaches host2's DNS records only with the right name, IP and peer.
        4 => (
            peer(),
            any::<bool>(),
            prop_oneof![Just(HOST2_NAME.to_string()), "[a-z.]{0,10}"],
            prop_oneof![
                Just(HOST2_IP.to_string()),
                Just("10.2.0.7".to_string()),
                "[0-9.]{0,15}"
            ]
        )
            .prop_map(|(peer, remove, name, ip)| (
                8,
                UpdateDnsRequest {
                    peer: peer.clone(),
                    remove,
                    records: vec![DnsRecord {
                        name,
                        ip,
                        peer,
                        container_id: String::new()
                    }]
                }
                .encode_to_vec()
            )),
        1 => (any::<String>(), peer(), any::<String>()).prop_map(|(token, peer, csr_pem)| (
            9,
            JoinRequest {
                token,
                peer,
                csr_pem
            }
            .encode_to_vec()
        )),
    ];
    prop_oneof![1 => (0u8..10, bytes), 3 => structured]
}

/// Decodes `bytes` as request kind `kind` and handles it; `None` when they do not decode.
async fn handle(c: &Controllers, kind: u8, bytes: &[u8]) -> Option<Result<(), Status>> {
    fn ok<T>(r: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
        r.map(drop)
    }
    let s = &c.service;
    Some(match kind {
        0 => ok(s
            .register(from_host1(RegisterRequest::decode(bytes).ok()?))
            .await),
        1 => ok(s.watch(from_host1(WatchRequest::decode(bytes).ok()?)).await),
        2 => ok(s
            .attach(from_host1(AttachRequest::decode(bytes).ok()?))
            .await),
        3 => ok(s
            .detach(from_host1(DetachRequest::decode(bytes).ok()?))
            .await),
        4 => ok(s
            .create_network(from_host1(CreateNetworkRequest::decode(bytes).ok()?))
            .await),
        5 => ok(s
            .delete_network(from_host1(DeleteNetworkRequest::decode(bytes).ok()?))
            .await),
        6 => ok(s
            .remove_peer(from_host1(RemovePeerRequest::decode(bytes).ok()?))
            .await),
        7 => ok(s
            .list_peers(from_host1(ListPeersRequest::decode(bytes).ok()?))
            .await),
        8 => ok(s
            .update_dns(from_host1(UpdateDnsRequest::decode(bytes).ok()?))
            .await),
        _ => {
            let join = c
                .enrollment
                .join(Request::new(JoinRequest::decode(bytes).ok()?))
                .await;
            if join.is_ok() {
                return Some(Err(Status::internal("a join without a token succeeded")));
            }
            ok(join)
        }
    })
}

#[test]
fn no_request_breaks_the_controller_or_touches_another_peer() {
    let c = controllers();
    let host2 = host2_state(&c);
    let (mac, _) = c
        .runtime
        .block_on(c.service.mutate(|t| {
            let ep = t.tables.endpoints.values().find(|ep| ep.id.peer == "host2");
            Ok((ep.map(|ep| ep.mac.to_string()).unwrap_or_default(), vec![]))
        }))
        .expect("reading the tables");
    assert!(!mac.is_empty(), "host2 has no endpoint: {}", host2.0);
    fuzz("requests", call(mac), |(kind, bytes)| {
        let outcome = c.runtime.block_on(handle(&c, kind, &bytes));
        if let Some(Err(status)) = outcome {
            prop_assert!(
                !matches!(status.code(), Code::Internal | Code::Unknown),
                "request {} {:?}: {:?}",
                kind,
                bytes,
                status
            );
        }
        let (record, dns) = host2_state(&c);
        prop_assert_eq!(&record, &host2.0, "request {} changed host2", kind);
        prop_assert!(
            dns.iter().all(|r| host2.1.contains(r)),
            "request {} {:?} added a DNS record in host2's name: {:?}",
            kind,
            bytes,
            dns
        );
        if dns != host2.1 {
            prop_assert_eq!(kind, 8, "request {} removed host2's DNS record", kind);
            put_host2_record(&c.service, &c.runtime);
        }
        Ok(())
    });
}
