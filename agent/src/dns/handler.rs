//! Answering one DNS message, whatever carried it: names in weft's domain and the reverse
//! names of their addresses from the records; single labels as names in the domain; everything
//! else forwarded to the host's upstream resolvers, with SERVFAIL when none answers in time.
//! hickory-proto reads and writes the messages.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use rand::seq::SliceRandom;
use tokio::net::UdpSocket;
use tracing::debug;

use super::records::{Records, reverse_address};

/// How long an upstream resolver may take before the client gets SERVFAIL.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP answer taken from an upstream resolver, and offered to clients over EDNS.
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
        let old = std::mem::replace(
            &mut *self.records.write().expect("records lock poisoned"),
            Arc::new(records),
        );
        // Freed after the lock: queries wait for no teardown of thousands of names.
        drop(old);
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

/// What to do with one message a client sent.
pub enum Handled {
    /// Send these bytes back; the `answer` label of the DNS metrics.
    Answer(Vec<u8>, &'static str),
    /// Not ours to answer: ask the upstream resolvers ([`forward`]) with this query.
    Forward(Message),
    /// Nothing to send: not a query, or too short to have come from a resolver.
    Ignore,
}

/// What carried a query: how long its answer may be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The most an answer to `query` may hold: over UDP, what the client's EDNS says it takes,
    /// at least 512 bytes (RFC 6891), or 512 without EDNS (RFC 1035); TCP takes any answer.
    pub fn limit(self, query: &Message) -> usize {
        match self {
            Transport::Udp => query
                .edns
                .as_ref()
                .map_or(512, |edns| usize::from(edns.max_payload().max(512))),
            Transport::Tcp => usize::from(u16::MAX),
        }
    }
}

/// Answers `bytes`, a message a client sent, when weft knows the answer or the message is
/// not a query it can answer; an answer longer than the transport takes is sent truncated
/// (the client asks again over TCP).
pub fn handle(state: &DnsState, bytes: &[u8], transport: Transport) -> Handled {
    let query = match Message::from_vec(bytes) {
        Ok(query) => query,
        // A header but nothing sensible after it: FORMERR, as far as the header goes.
        Err(_) => {
            let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
                return Handled::Ignore;
            };
            if header.metadata.message_type == MessageType::Response {
                return Handled::Ignore;
            }
            let mut metadata = Metadata::response_from_request(&header.metadata);
            metadata.response_code = ResponseCode::FormErr;
            let mut answer = Message::response(metadata.id, metadata.op_code);
            answer.metadata = metadata;
            return Handled::Answer(encode(&answer, 512), "malformed");
        }
    };
    let limit = transport.limit(&query);
    // Never answer an answer: that is how reflection loops start.
    if query.metadata.message_type == MessageType::Response {
        return Handled::Ignore;
    }
    if query.metadata.op_code != OpCode::Query {
        let answer = response(&query, ResponseCode::NotImp, false);
        return Handled::Answer(encode(&answer, limit), "malformed");
    }
    let [question] = query.queries.as_slice() else {
        let answer = response(&query, ResponseCode::FormErr, false);
        return Handled::Answer(encode(&answer, limit), "malformed");
    };
    let owner = question.name().clone();
    let qtype = question.query_type();
    let records = state.records();
    let record = |rdata| Record::from_rdata(owner.clone(), state.ttl, rdata);
    let (code, answers): (ResponseCode, Vec<Record>) =
        match answer_locally(state, &records, &owner.to_ascii(), qtype) {
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
            None => return Handled::Forward(query),
        };
    let how = if code == ResponseCode::NXDomain {
        "no_such_name"
    } else {
        "local"
    };
    let mut answer = response(&query, code, true);
    answer.answers = answers;
    Handled::Answer(encode(&answer, limit), how)
}

/// The answer to a query [`handle`] left to the upstream resolvers: theirs, under our header,
/// or SERVFAIL when none answered in time; with the `answer` label of the DNS metrics.
pub async fn forward(
    state: &DnsState,
    query: &Message,
    bytes: &[u8],
    transport: Transport,
) -> (Vec<u8>, &'static str) {
    let Some(upstream) = ask_upstreams(&state.upstreams, query.metadata.id, bytes).await else {
        return failed(query, transport);
    };
    let mut answer = response(query, upstream.metadata.response_code, false);
    answer.answers = upstream.answers;
    answer.authorities = upstream.authorities;
    answer.additionals = upstream.additionals;
    (encode(&answer, transport.limit(query)), "forwarded")
}

/// SERVFAIL: no upstream answered, or too many queries wait for one.
pub fn failed(query: &Message, transport: Transport) -> (Vec<u8>, &'static str) {
    let answer = response(query, ResponseCode::ServFail, false);
    (encode(&answer, transport.limit(query)), "failed")
}

/// An answer to `query`, with its question, and an OPT record if the query had one (RFC 6891).
fn response(query: &Message, code: ResponseCode, authoritative: bool) -> Message {
    let mut metadata = Metadata::response_from_request(&query.metadata);
    metadata.response_code = code;
    metadata.authoritative = authoritative;
    metadata.recursion_available = true;
    let mut answer = Message::response(metadata.id, metadata.op_code);
    answer.metadata = metadata;
    answer.queries = query.queries.clone();
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_ANSWER as u16);
        answer.set_edns(edns);
    }
    answer
}

/// The wire form of `answer`, truncated to its question (TC set) when longer than `limit`.
fn encode(answer: &Message, limit: usize) -> Vec<u8> {
    let encoded = answer.to_vec();
    match encoded {
        Ok(bytes) if bytes.len() <= limit => bytes,
        // Too long, or records that cannot be written (then the client gets no partial answer
        // either way).
        _ => answer
            .truncate()
            .to_vec()
            .expect("a header and one question encode"),
    }
}

/// Sends the query as the client sent it to each upstream in turn; the first answer wins.
async fn ask_upstreams(upstreams: &[SocketAddr], id: u16, bytes: &[u8]) -> Option<Message> {
    for upstream in upstreams {
        let bind: SocketAddr = match upstream.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let exchange = async {
            let socket = UdpSocket::bind(bind).await.ok()?;
            socket.connect(upstream).await.ok()?;
            socket.send(bytes).await.ok()?;
            let mut buf = vec![0u8; MAX_UDP_ANSWER];
            loop {
                let n = socket.recv(&mut buf).await.ok()?;
                // Only the answer to this query (a stray datagram is not one).
                match Message::from_vec(&buf[..n]) {
                    Ok(m) if m.metadata.id == id => return Some(m),
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

    /// A query for `name` of `qtype` as a resolver sends it, with EDNS if `edns` says so.
    fn query_bytes(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut query = Message::new(0x1234, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            qtype,
        ));
        if let Some(payload) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            query.set_edns(e);
        }
        query.to_vec().unwrap()
    }

    fn answered(handled: Handled) -> (Message, &'static str) {
        match handled {
            Handled::Answer(bytes, how) => (Message::from_vec(&bytes).unwrap(), how),
            Handled::Forward(_) => panic!("forwarded"),
            Handled::Ignore => panic!("ignored"),
        }
    }

    #[test]
    fn answers_carry_the_question_the_flags_and_edns() {
        let s = state();
        s.set_records(records());
        let bytes = query_bytes("Web.weave.local.", RecordType::A, Some(1232));
        let (answer, how) = answered(handle(&s, &bytes, Transport::Udp));
        assert_eq!(how, "local");
        assert_eq!(answer.metadata.id, 0x1234);
        assert_eq!(answer.metadata.message_type, MessageType::Response);
        assert!(answer.metadata.authoritative && answer.metadata.recursion_available);
        assert!(answer.metadata.recursion_desired, "RD is copied");
        assert_eq!(answer.queries[0].name().to_ascii(), "Web.weave.local.");
        let mut ips: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
        ips.sort();
        assert_eq!(ips, ["10.32.0.2", "10.32.0.3"]);
        assert!(answer.answers.iter().all(|r| r.ttl == 1));
        assert!(answer.edns.is_some(), "an OPT record answers one");
        let bytes = query_bytes("nobody.weave.local.", RecordType::A, None);
        let (answer, how) = answered(handle(&s, &bytes, Transport::Udp));
        assert_eq!(
            (answer.metadata.response_code, how),
            (ResponseCode::NXDomain, "no_such_name")
        );
        assert!(answer.edns.is_none());
        let bytes = query_bytes("example.com.", RecordType::A, None);
        assert!(matches!(
            handle(&s, &bytes, Transport::Udp),
            Handled::Forward(_)
        ));
    }

    #[test]
    fn bad_messages_get_formerr_or_nothing() {
        let s = state();
        assert!(matches!(
            handle(&s, &[1, 2, 3], Transport::Udp),
            Handled::Ignore
        ));
        // A header claiming one question, and none after it.
        let (answer, how) = answered(handle(
            &s,
            &[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
            Transport::Udp,
        ));
        assert_eq!(
            (answer.metadata.response_code, how),
            (ResponseCode::FormErr, "malformed")
        );
        assert_eq!(answer.metadata.id, 0xabcd);
        // An answer is never answered.
        let mut response = Message::from_vec(&query_bytes("web.", RecordType::A, None)).unwrap();
        response.metadata.message_type = MessageType::Response;
        let bytes = response.to_vec().unwrap();
        assert!(matches!(
            handle(&s, &bytes, Transport::Udp),
            Handled::Ignore
        ));
        // Not a query: NOTIMP.
        let mut notify = Message::from_vec(&query_bytes("web.", RecordType::A, None)).unwrap();
        notify.metadata.op_code = OpCode::Notify;
        let bytes = notify.to_vec().unwrap();
        let (answer, _) = answered(handle(&s, &bytes, Transport::Udp));
        assert_eq!(answer.metadata.response_code, ResponseCode::NotImp);
    }

    #[test]
    fn long_answers_are_truncated_over_udp_only() {
        let s = state();
        let mut t = weft_proto::tables::Tables::default();
        for i in 0..60 {
            let ep = weft_proto::rows::EndpointRow {
                id: weft_proto::tables::EndpointId::new("host1", "default", &format!("c{i}")),
                mac: weft_proto::names::Mac::ZERO,
                cidrs: vec![format!("10.32.1.{i}/12").parse().unwrap()],
                host_ifname: String::new(),
                container_ifname: String::new(),
                dns_name: "many".into(),
            };
            t.endpoints.insert(ep.id.clone(), ep);
        }
        s.set_records(Records::from_tables(&t, "weave.local"));
        // 60 A records take 12 + 21 + 60 * 16 bytes: over 512, within 1232.
        let plain = query_bytes("many.weave.local.", RecordType::A, None);
        let (answer, _) = answered(handle(&s, &plain, Transport::Udp));
        assert!(answer.metadata.truncation && answer.answers.is_empty());
        assert_eq!(answer.queries.len(), 1);
        let (answer, _) = answered(handle(&s, &plain, Transport::Tcp));
        assert!(!answer.metadata.truncation);
        assert_eq!(answer.answers.len(), 60);
        let edns = query_bytes("many.weave.local.", RecordType::A, Some(1232));
        let (answer, _) = answered(handle(&s, &edns, Transport::Udp));
        assert!(!answer.metadata.truncation);
        assert_eq!(answer.answers.len(), 60);
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
