//! Answering one DNS query (hickory-server's `RequestHandler`): names in weft's domain and the
//! reverse names of their addresses from the records; single labels as names in the domain;
//! everything else forwarded to the host's upstream resolvers, with SERVFAIL when none answers
//! in time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, HeaderCounts, Message, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use rand::seq::SliceRandom;
use tokio::net::UdpSocket;
use tracing::debug;

use super::records::{Records, reverse_address};
use crate::metrics::METRICS;

/// How long an upstream resolver may take before the client gets SERVFAIL.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP answer taken from an upstream resolver (EDNS allows up to this).
const MAX_UDP_ANSWER: usize = 4096;

/// What every listener of this agent shares: the domain, the TTL, the upstreams and the
/// records, which the reconciler replaces when the tables change.
pub struct DnsState {
    /// Lower case, without the final dot: `weave.local`.
    pub domain: String,
    pub ttl: u32,
    pub upstreams: Vec<SocketAddr>,
    pub records: RwLock<Arc<Records>>,
}

impl DnsState {
    pub fn records(&self) -> Arc<Records> {
        self.records.read().expect("records lock poisoned").clone()
    }

    pub fn set_records(&self, records: Records) {
        *self.records.write().expect("records lock poisoned") = Arc::new(records);
    }

    /// The name a query stands for in the domain, if it is one of ours: a name in the domain,
    /// or a single label (which gets the domain appended).
    fn local_name(&self, query: &str) -> Option<String> {
        let query = query.trim_end_matches('.').to_ascii_lowercase();
        if query == self.domain || query.ends_with(&format!(".{}", self.domain)) {
            return Some(query);
        }
        (!query.is_empty() && !query.contains('.')).then(|| format!("{query}.{}", self.domain))
    }
}

/// The answer to a query weft knows the answer to, or `None` to forward it.
#[derive(Debug, PartialEq)]
pub enum LocalAnswer {
    Addresses(Vec<IpAddr>),
    Names(Vec<String>),
    /// The name exists but has no record of the type asked for.
    NoData,
    NoSuchName,
}

/// Looks a query up in the records: names in the domain (and single labels) always get a local
/// answer; reverse names only for addresses weft has a name for.
pub fn answer_locally(
    state: &DnsState,
    records: &Records,
    query: &str,
    qtype: RecordType,
) -> Option<LocalAnswer> {
    if let Some(name) = state.local_name(query) {
        let Some(addresses) = records.addresses.get(&name) else {
            return Some(if name == state.domain {
                LocalAnswer::NoData
            } else {
                LocalAnswer::NoSuchName
            });
        };
        let family: fn(&IpAddr) -> bool = match qtype {
            RecordType::A => IpAddr::is_ipv4,
            RecordType::AAAA => IpAddr::is_ipv6,
            RecordType::ANY => |_| true,
            _ => |_| false,
        };
        let mut addresses: Vec<IpAddr> = addresses.iter().copied().filter(family).collect();
        if addresses.is_empty() {
            return Some(LocalAnswer::NoData);
        }
        // Several containers under one name share the load: random order, as Weave.
        addresses.shuffle(&mut rand::rng());
        return Some(LocalAnswer::Addresses(addresses));
    }
    let names = records.names.get(&reverse_address(query)?)?;
    Some(match qtype {
        RecordType::PTR | RecordType::ANY => LocalAnswer::Names(names.iter().cloned().collect()),
        _ => LocalAnswer::NoData,
    })
}

pub struct DnsHandler {
    pub state: Arc<DnsState>,
}

/// The header of an answer that could not be sent, for hickory's bookkeeping.
fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

impl DnsHandler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
        code: ResponseCode,
        authoritative: bool,
        sections: [&[Record]; 3],
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = code;
        metadata.authoritative = authoritative;
        metadata.recursion_available = true;
        let [answers, authorities, additionals] = sections;
        let message = MessageResponseBuilder::from_message_request(request).build(
            metadata,
            answers.iter(),
            authorities.iter(),
            [].iter(),
            additionals.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                debug!("cannot send a DNS answer to {}: {e}", request.src());
                failed(request)
            }
        }
    }

    /// Sends the query as the client sent it to each upstream in turn; the first answer wins.
    async fn forward(&self, request: &Request) -> Option<Message> {
        for upstream in &self.state.upstreams {
            let bind: SocketAddr = match upstream.ip() {
                IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let exchange = async {
                let socket = UdpSocket::bind(bind).await.ok()?;
                socket.connect(upstream).await.ok()?;
                socket.send(request.as_slice()).await.ok()?;
                let mut buf = vec![0u8; MAX_UDP_ANSWER];
                loop {
                    let n = socket.recv(&mut buf).await.ok()?;
                    // Only the answer to this query (a stray datagram is not one).
                    match Message::from_vec(&buf[..n]) {
                        Ok(m) if m.metadata.id == request.metadata.id => return Some(m),
                        _ => continue,
                    }
                }
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
                Ok(Some(answer)) => return Some(answer),
                _ => debug!(%upstream, "upstream resolver did not answer"),
            }
        }
        None
    }
}

// hickory's trait is declared with async_trait; tonic re-exports the same macro.
#[tonic::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let (info, answer) = self.answer(request, response).await;
        METRICS.dns_query(answer, started.elapsed());
        info
    }
}

impl DnsHandler {
    /// Answers `request`; returns how, as the `answer` label of the DNS metrics.
    async fn answer<R: ResponseHandler>(
        &self,
        request: &Request,
        response: R,
    ) -> (ResponseInfo, &'static str) {
        let Ok(info) = request.request_info() else {
            let info = self
                .respond(request, response, ResponseCode::FormErr, false, [&[]; 3])
                .await;
            return (info, "malformed");
        };
        let owner: Name = info.query.name().clone().into();
        let qtype = info.query.query_type();
        let records = self.state.records();
        let ttl = self.state.ttl;
        let record = |rdata| Record::from_rdata(owner.clone(), ttl, rdata);
        let (code, answers): (ResponseCode, Vec<Record>) =
            match answer_locally(&self.state, &records, &owner.to_string(), qtype) {
                Some(LocalAnswer::Addresses(ips)) => (
                    ResponseCode::NoError,
                    ips.into_iter()
                        .map(|ip| match ip {
                            IpAddr::V4(v4) => record(RData::A(A(v4))),
                            IpAddr::V6(v6) => record(RData::AAAA(AAAA(v6))),
                        })
                        .collect(),
                ),
                Some(LocalAnswer::Names(names)) => (
                    ResponseCode::NoError,
                    names
                        .iter()
                        .filter_map(|n| Name::from_ascii(format!("{n}.")).ok())
                        .map(|n| record(RData::PTR(PTR(n))))
                        .collect(),
                ),
                Some(LocalAnswer::NoData) => (ResponseCode::NoError, Vec::new()),
                Some(LocalAnswer::NoSuchName) => (ResponseCode::NXDomain, Vec::new()),
                None => return self.forwarded(request, response).await,
            };
        let how = if code == ResponseCode::NXDomain {
            "no_such_name"
        } else {
            "local"
        };
        let info = self
            .respond(request, response, code, true, [&answers, &[], &[]])
            .await;
        (info, how)
    }

    /// Answers with what an upstream resolver answered, or SERVFAIL.
    async fn forwarded<R: ResponseHandler>(
        &self,
        request: &Request,
        response: R,
    ) -> (ResponseInfo, &'static str) {
        match self.forward(request).await {
            Some(answer) => {
                let code = answer.metadata.response_code;
                let info = self
                    .respond(
                        request,
                        response,
                        code,
                        false,
                        [&answer.answers, &answer.authorities, &answer.additionals],
                    )
                    .await;
                (info, "forwarded")
            }
            None => {
                let info = self
                    .respond(request, response, ResponseCode::ServFail, false, [&[]; 3])
                    .await;
                (info, "failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DnsState {
        DnsState {
            domain: "weave.local".into(),
            ttl: 1,
            upstreams: vec![],
            records: RwLock::default(),
        }
    }

    fn records() -> Records {
        let mut t = weft_proto::tables::Tables::default();
        for (i, (name, ip)) in [
            ("web", "10.32.0.2/12"),
            ("web", "10.32.0.3/12"),
            ("db", "10.32.0.4/12"),
            ("db", "fd00:9::4/64"),
        ]
        .into_iter()
        .enumerate()
        {
            let ep = weft_proto::rows::EndpointRow {
                id: weft_proto::tables::EndpointId::new("host1", "default", &format!("c{i}")),
                mac: weft_proto::names::Mac::ZERO,
                cidrs: vec![ip.parse().unwrap()],
                host_ifname: String::new(),
                container_ifname: String::new(),
                dns_name: name.into(),
            };
            t.endpoints.insert(ep.id.clone(), ep);
        }
        Records::from_tables(&t, "weave.local")
    }

    fn ips(answer: Option<LocalAnswer>) -> Vec<String> {
        match answer {
            Some(LocalAnswer::Addresses(mut ips)) => {
                ips.sort();
                ips.iter().map(|ip| ip.to_string()).collect()
            }
            other => panic!("not addresses: {other:?}"),
        }
    }

    #[test]
    fn names_in_the_domain_and_single_labels_are_ours() {
        let (s, r) = (state(), records());
        assert_eq!(
            ips(answer_locally(&s, &r, "web.weave.local.", RecordType::A)),
            ["10.32.0.2", "10.32.0.3"]
        );
        assert_eq!(
            ips(answer_locally(&s, &r, "DB.", RecordType::A)),
            ["10.32.0.4"]
        );
        assert_eq!(
            answer_locally(&s, &r, "gone.weave.local.", RecordType::A),
            Some(LocalAnswer::NoSuchName)
        );
        assert_eq!(
            ips(answer_locally(&s, &r, "db.weave.local.", RecordType::AAAA)),
            ["fd00:9::4"]
        );
        assert_eq!(
            ips(answer_locally(&s, &r, "db.weave.local.", RecordType::ANY)),
            ["10.32.0.4", "fd00:9::4"]
        );
        assert_eq!(
            answer_locally(&s, &r, "web.weave.local.", RecordType::AAAA),
            Some(LocalAnswer::NoData)
        );
        assert_eq!(
            answer_locally(&s, &r, "db.weave.local.", RecordType::MX),
            Some(LocalAnswer::NoData)
        );
        assert_eq!(answer_locally(&s, &r, "example.com.", RecordType::A), None);
    }

    #[test]
    fn reverse_names_of_our_addresses_only() {
        let (s, r) = (state(), records());
        assert_eq!(
            answer_locally(&s, &r, "4.0.32.10.in-addr.arpa.", RecordType::PTR),
            Some(LocalAnswer::Names(vec!["db.weave.local".into()]))
        );
        assert_eq!(
            answer_locally(&s, &r, "9.0.32.10.in-addr.arpa.", RecordType::PTR),
            None
        );
        let six = "4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(
            answer_locally(&s, &r, six, RecordType::PTR),
            Some(LocalAnswer::Names(vec!["db.weave.local".into()]))
        );
    }

    #[test]
    fn several_containers_come_in_random_order() {
        let (s, r) = (state(), records());
        let orders: std::collections::BTreeSet<Vec<IpAddr>> = (0..64)
            .filter_map(|_| match answer_locally(&s, &r, "web.", RecordType::A) {
                Some(LocalAnswer::Addresses(ips)) => Some(ips),
                _ => None,
            })
            .collect();
        assert_eq!(orders.len(), 2, "both orders appear in 64 answers");
    }
}
