//! What weftctl prints: each answer of the agent as text (columns that line up, in the formats
//! of the operator contract) or, with `--json`, as JSON with the field names the README lists.

use serde_json::{Value, json};
use weft_proto::names::short_container_id;
use weft_proto::subnet::{count_text, pool_size};
use weft_proto::v1::{
    Connection, ControllerMember, DnsStatusResponse, IpamStatusResponse, Network, NetworkInfo,
    PeerStatus, PsEntry, ReconcileReport, ResetResponse, StatusResponse,
};

use crate::table;

/// Addresses on one line, space-separated, as attach, detach, expose and hide print them.
pub fn ips(ips: &[String]) -> String {
    format!("{}\n", ips.join(" "))
}

fn json_line(value: Value) -> String {
    format!("{value}\n")
}

/// `weftctl ps`: as `weave ps`, one line per container: short id, MAC, every CIDR.
pub fn ps(entries: &[PsEntry], as_json: bool) -> String {
    if as_json {
        return json_line(ps_json(entries));
    }
    entries
        .iter()
        .map(|e| {
            format!(
                "{} {} {}\n",
                short_container_id(&e.container_id),
                e.mac,
                e.cidrs.join(" ")
            )
        })
        .collect()
}

fn ps_json(entries: &[PsEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                json!({
                    "container_id": e.container_id, "mac": e.mac, "cidrs": e.cidrs,
                    "dns_name": e.dns_name,
                })
            })
            .collect(),
    )
}

pub fn network_created(net: &Network) -> String {
    format!("{} {} vni={}\n", net.name, subnets_text(net), net.vni)
}

/// A network's subnets as one column: `10.9.0.0/24,fd00:9::/64`.
fn subnets_text(net: &Network) -> String {
    match net.subnet6.as_str() {
        "" => net.subnet.clone(),
        v6 => format!("{},{v6}", net.subnet),
    }
}

/// Each network with its usage.
fn networks_of(infos: &[NetworkInfo]) -> impl Iterator<Item = (&Network, &NetworkInfo)> {
    infos.iter().filter_map(|i| Some((i.network.as_ref()?, i)))
}

/// One subnet of a network as the IPAM views show it: a dual-stack network has two.
struct SubnetRow<'a> {
    network: &'a Network,
    info: &'a NetworkInfo,
    subnet: &'a str,
    pool: u128,
    used: u64,
}

impl SubnetRow<'_> {
    fn free(&self) -> u128 {
        self.pool.saturating_sub(self.used.into())
    }
}

fn subnet_rows(infos: &[NetworkInfo]) -> impl Iterator<Item = SubnetRow<'_>> {
    networks_of(infos).flat_map(|(network, info)| {
        info.subnets.iter().map(move |s| SubnetRow {
            network,
            info,
            subnet: &s.subnet,
            pool: s.subnet.parse().map(pool_size).unwrap_or_default(),
            used: s.used,
        })
    })
}

/// A count in JSON: a number while a JSON number holds it exactly, else its text (`2^64-2`).
fn count_json(n: u128) -> Value {
    match u64::try_from(n) {
        Ok(small) if count_text(n) == small.to_string() => json!(small),
        _ => json!(count_text(n)),
    }
}

/// `weftctl network ls`.
pub fn networks(infos: &[NetworkInfo], as_json: bool) -> String {
    if as_json {
        return json_line(Value::Array(
            networks_of(infos)
                .map(|(n, i)| {
                    let mut net = json!({
                        "name": n.name, "subnet": n.subnet, "vni": n.vni, "endpoints": i.endpoints,
                        "encrypted": n.encrypted,
                    });
                    // A dual-stack network's IPv6 subnet; the others read as they always did.
                    if !n.subnet6.is_empty() {
                        net["subnet6"] = n.subnet6.clone().into();
                    }
                    net
                })
                .collect(),
        ));
    }
    let rows: Vec<Vec<String>> = networks_of(infos)
        .map(|(n, i)| {
            vec![
                n.name.clone(),
                subnets_text(n),
                n.vni.to_string(),
                i.endpoints.to_string(),
                yes_no(n.encrypted).to_string(),
            ]
        })
        .collect();
    table::render(&["NAME", "SUBNET", "VNI", "ENDPOINTS", "ENCRYPTED"], &rows)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// `weftctl status networks`.
pub fn status_networks(ipam: &IpamStatusResponse, as_json: bool) -> String {
    if as_json {
        return json_line(status_networks_json(ipam));
    }
    let rows: Vec<Vec<String>> = subnet_rows(&ipam.networks)
        .map(|r| {
            vec![
                r.network.name.clone(),
                r.subnet.to_string(),
                r.network.vni.to_string(),
                r.info.endpoints.to_string(),
                r.used.to_string(),
                count_text(r.free()),
            ]
        })
        .collect();
    table::render(
        &["NAME", "SUBNET", "VNI", "ENDPOINTS", "USED", "FREE"],
        &rows,
    )
}

fn status_networks_json(ipam: &IpamStatusResponse) -> Value {
    Value::Array(
        subnet_rows(&ipam.networks)
            .map(|r| {
                json!({
                    "name": r.network.name, "subnet": r.subnet, "vni": r.network.vni,
                    "endpoints": r.info.endpoints, "used": r.used, "free": count_json(r.free()),
                })
            })
            .collect(),
    )
}

/// `weftctl status ipam`: the range, then usage per network and per peer.
pub fn status_ipam(ipam: &IpamStatusResponse, as_json: bool) -> String {
    if as_json {
        return json_line(status_ipam_json(ipam));
    }
    let rows: Vec<Vec<String>> = subnet_rows(&ipam.networks)
        .map(|r| {
            vec![
                r.network.name.clone(),
                r.subnet.to_string(),
                count_text(r.pool),
                r.used.to_string(),
                count_text(r.free()),
            ]
        })
        .collect();
    let peers: Vec<Vec<String>> = ipam
        .peers
        .iter()
        .map(|p| vec![p.peer.clone(), p.network.clone(), p.used.to_string()])
        .collect();
    format!(
        "Range: {}\n\n{}\n{}",
        ipam.range,
        table::render(&["NETWORK", "SUBNET", "POOL", "USED", "FREE"], &rows),
        table::render(&["PEER", "NETWORK", "USED"], &peers)
    )
}

fn status_ipam_json(ipam: &IpamStatusResponse) -> Value {
    let networks: Vec<Value> = subnet_rows(&ipam.networks)
        .map(|r| {
            json!({
                "name": r.network.name, "subnet": r.subnet, "pool": count_json(r.pool),
                "used": r.used, "free": count_json(r.free()),
            })
        })
        .collect();
    let peers: Vec<Value> = ipam
        .peers
        .iter()
        .map(|p| json!({ "peer": p.peer, "network": p.network, "used": p.used }))
        .collect();
    json!({ "range": ipam.range, "networks": networks, "peers": peers })
}

/// A duration as people say it: 42s, 5m12s, 3h4m.
pub fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}

fn peer_state(p: &PeerStatus) -> String {
    match (p.connected, p.reachable) {
        (true, _) => "connected".to_string(),
        (false, true) => format!("disconnected {} ago", human(p.for_secs)),
        (false, false) => format!("unreachable, gone {}", human(p.for_secs)),
    }
}

/// `weftctl status peers`.
pub fn status_peers(peers: &[PeerStatus], as_json: bool) -> String {
    if as_json {
        return json_line(status_peers_json(peers));
    }
    let known = peers.iter().filter_map(|p| Some((p.peer.as_ref()?, p)));
    let rows: Vec<Vec<String>> = known
        .map(|(peer, p)| {
            vec![
                peer.name.clone(),
                peer.advertise_addr.clone(),
                peer_state(p),
                p.endpoints.to_string(),
            ]
        })
        .collect();
    table::render(&["NAME", "ADDRESS", "STATE", "ENDPOINTS"], &rows)
}

fn status_peers_json(peers: &[PeerStatus]) -> Value {
    let known = peers.iter().filter_map(|p| Some((p.peer.as_ref()?, p)));
    Value::Array(
        known
            .map(|(peer, p)| {
                json!({
                    "name": peer.name, "advertise_addr": peer.advertise_addr,
                    "connected": p.connected, "reachable": p.reachable,
                    "for_secs": p.for_secs, "endpoints": p.endpoints,
                })
            })
            .collect(),
    )
}

/// `weftctl status controllers`.
pub fn status_controllers(controllers: &[ControllerMember], as_json: bool) -> String {
    if as_json {
        return json_line(status_controllers_json(controllers));
    }
    let rows: Vec<Vec<String>> = controllers
        .iter()
        .map(|c| {
            let state = if c.serving {
                format!("serving for {}", human(c.for_secs))
            } else {
                format!("gone {}", human(c.for_secs))
            };
            let answering = if c.answering { " (answering)" } else { "" };
            vec![
                c.address.clone(),
                c.name.clone(),
                format!("{state}{answering}"),
            ]
        })
        .collect();
    table::render(&["ADDRESS", "NAME", "STATE"], &rows)
}

fn status_controllers_json(controllers: &[ControllerMember]) -> Value {
    Value::Array(
        controllers
            .iter()
            .map(|c| {
                json!({
                    "address": c.address, "name": c.name, "serving": c.serving,
                    "for_secs": c.for_secs, "answering": c.answering,
                })
            })
            .collect(),
    )
}

/// `weftctl accept-controller`: the store followed now.
pub fn following(store_id: &str, revision: u64) -> String {
    format!("following store {store_id} at revision {revision}\n")
}

/// `weftctl status`: the summary block, in the spirit of `weave status`. `reachable` is how
/// many peers the controller counts as reachable, when it could be asked.
pub fn status(st: &StatusResponse, reachable: Option<usize>, as_json: bool) -> String {
    if as_json {
        return json_line(status_json(st, reachable));
    }
    let controller = if !st.refused.is_empty() {
        format!(
            "{} (refused): {}; weftctl accept-controller follows it",
            st.controller_url, st.refused
        )
    } else if st.connected {
        format!(
            "{} (connected, revision {})",
            st.controller_url, st.revision
        )
    } else {
        format!(
            "{} (unreachable for {}): {}",
            st.controller_url,
            human(st.for_secs),
            st.last_error
        )
    };
    let peers = match reachable {
        Some(n) => format!("{} ({n} reachable)", st.peers),
        None => format!("{} (reachability unknown)", st.peers),
    };
    let mut paths = format!("{} ok, {} failed", st.connections_ok, st.connections_failed);
    if st.connections_pending > 0 {
        paths.push_str(&format!(", {} pending", st.connections_pending));
    }
    let lines = [
        ("Version", st.version.clone()),
        ("Name", format!("{} ({})", st.name, st.advertise_addr)),
        ("Controller", controller),
        ("Peers", peers),
        ("Data path", paths),
        ("Networks", st.networks.to_string()),
        ("Endpoints", format!("{} on this host", st.endpoints)),
        (
            "IPAM",
            format!(
                "{}, {} used, {} free",
                st.ipam_range, st.ipam_used, st.ipam_free
            ),
        ),
        (
            "DNS",
            format!("{}, {} entries", st.dns_domain, st.dns_entries),
        ),
    ];
    lines
        .iter()
        .map(|(k, v)| format!("{k:>10}: {}\n", wrap(v, STATUS_VALUE_WIDTH, 12)))
        .collect()
}

fn status_json(st: &StatusResponse, reachable: Option<usize>) -> Value {
    json!({
        "version": st.version,
        "name": st.name,
        "advertise_addr": st.advertise_addr,
        "controller": {
            "url": st.controller_url, "connected": st.connected, "for_secs": st.for_secs,
            "last_error": st.last_error, "revision": st.revision,
            "refused": st.refused,
            "watch": { "start": st.watch_start, "missed": st.watch_missed },
        },
        "peers": { "count": st.peers, "reachable": reachable },
        "connections": {
            "ok": st.connections_ok, "failed": st.connections_failed,
            "pending": st.connections_pending,
        },
        "networks": st.networks,
        "endpoints": st.endpoints,
        "ipam": { "range": st.ipam_range, "used": st.ipam_used, "free": st.ipam_free },
        "dns": { "domain": st.dns_domain, "entries": st.dns_entries },
    })
}

/// `weftctl status connections`: as `weave status connections`, one line per remote peer.
pub fn status_connections(connections: &[Connection], as_json: bool) -> String {
    if as_json {
        return json_line(status_connections_json(connections));
    }
    connections
        .iter()
        .map(|c| {
            let state = match c.state.as_str() {
                "ok" => format!("ok rtt={} mtu={}", rtt_ms(c.rtt_us), mtu(c.mtu)),
                "failed" => format!("failed: {}", c.why),
                other => other.to_string(),
            };
            // Encrypted networks reach the peer inside WireGuard: when it last shook hands.
            let encrypted = match (c.encrypted, c.handshake_secs) {
                (false, _) => String::new(),
                (true, Some(secs)) => format!(" encrypted handshake={secs}s"),
                (true, None) => " encrypted handshake=none".to_string(),
            };
            // An IPv6 VTEP is bracketed as in a URL: -> [2001:db8::2]:6784.
            let vtep = match c.vtep.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, c.port as u16).to_string(),
                Err(_) => format!("{}:{}", c.vtep, c.port),
            };
            format!("-> {vtep} {state}{encrypted}\n")
        })
        .collect()
}

/// A round trip in milliseconds, to the hundredth as ping prints it ("?" before any).
fn rtt_ms(us: u64) -> String {
    match us {
        0 => "?".to_string(),
        us => format!("{:.2}ms", us as f64 / 1000.0),
    }
}

fn mtu(mtu: u32) -> String {
    match mtu {
        0 => "?".to_string(),
        mtu => mtu.to_string(),
    }
}

fn status_connections_json(connections: &[Connection]) -> Value {
    let known = |n: u64| (n > 0).then_some(n);
    Value::Array(
        connections
            .iter()
            .map(|c| {
                json!({
                    "peer": c.peer, "vtep": c.vtep, "port": c.port, "state": c.state,
                    "why": c.why, "rtt_ms": known(c.rtt_us).map(|us| us as f64 / 1000.0),
                    "mtu": known(c.mtu.into()), "network_mtu": c.network_mtu,
                    "for_secs": c.for_secs, "encrypted": c.encrypted,
                    "handshake_secs": c.handshake_secs,
                })
            })
            .collect(),
    )
}

/// Room for a value of the status block in an 80-column terminal, after its 12-column label.
const STATUS_VALUE_WIDTH: usize = 80 - 12;

/// Breaks a value between words so that no line is wider than `width`, indenting the lines
/// after the first by `indent` (a single longer word stays whole).
fn wrap(value: &str, width: usize, indent: usize) -> String {
    let mut lines: Vec<String> = vec![String::new()];
    for word in value.split(' ') {
        let line = lines.last_mut().expect("never empty");
        if line.is_empty() || line.len() + 1 + word.len() <= width {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        } else {
            lines.push(word.to_string());
        }
    }
    lines.join(&format!("\n{}", " ".repeat(indent)))
}

/// `weftctl status dns`.
pub fn status_dns(dns: &DnsStatusResponse, as_json: bool) -> String {
    if as_json {
        return json_line(status_dns_json(dns));
    }
    let upstreams = match dns.upstreams.as_slice() {
        [] => "none".to_string(),
        some => some.join(" "),
    };
    let rows: Vec<Vec<String>> = dns
        .entries
        .iter()
        .map(|e| vec![e.name.clone(), e.ips.join(" ")])
        .collect();
    format!(
        "Domain: {}\nTTL: {}s\nUpstreams: {}\n\n{}",
        dns.domain,
        dns.ttl,
        wrap(&upstreams, 80 - 11, 11),
        table::render(&["NAME", "ADDRESSES"], &rows)
    )
}

fn status_dns_json(dns: &DnsStatusResponse) -> Value {
    let entries: Vec<Value> = dns
        .entries
        .iter()
        .map(|e| json!({ "name": e.name, "ips": e.ips }))
        .collect();
    json!({
        "domain": dns.domain, "ttl": dns.ttl, "upstreams": dns.upstreams, "entries": entries,
    })
}

/// The latest reconcile pass, or null before the first.
fn reconcile_json(last: Option<&ReconcileReport>) -> Value {
    let Some(r) = last else {
        return Value::Null;
    };
    json!({
        "ago_secs": r.ago_secs, "duration_ms": r.duration_us as f64 / 1000.0,
        "ok": r.error.is_empty(), "error": r.error,
        "fdb": { "added": r.fdb_added, "removed": r.fdb_removed, "held": r.fdb_held },
        "neighbours": {
            "added": r.neigh_added, "removed": r.neigh_removed, "held": r.neigh_held,
        },
    })
}

/// What `weftctl report` gathers. The parts the controller answers are errors while it cannot.
pub struct Report {
    pub status: StatusResponse,
    pub connections: Vec<Connection>,
    pub peers: Result<Vec<PeerStatus>, String>,
    pub controllers: Result<Vec<ControllerMember>, String>,
    pub ipam: Result<IpamStatusResponse, String>,
    pub endpoints: Vec<PsEntry>,
    pub dns: DnsStatusResponse,
}

/// `weftctl report`: everything as one JSON document, each part as its own `--json` shows it.
pub fn report(r: &Report) -> String {
    fn or_error<T>(part: &Result<T, String>, json: impl Fn(&T) -> Value) -> Value {
        match part {
            Ok(value) => json(value),
            Err(e) => json!({ "error": e }),
        }
    }
    let reachable = r
        .peers
        .as_ref()
        .ok()
        .map(|peers| peers.iter().filter(|p| p.reachable).count());
    let document = json!({
        "status": status_json(&r.status, reachable),
        "connections": status_connections_json(&r.connections),
        "peers": or_error(&r.peers, |p| status_peers_json(p)),
        "controllers": or_error(&r.controllers, |c| status_controllers_json(c)),
        "networks": or_error(&r.ipam, status_networks_json),
        "ipam": or_error(&r.ipam, status_ipam_json),
        "endpoints": ps_json(&r.endpoints),
        "dns": status_dns_json(&r.dns),
        "last_reconcile": reconcile_json(r.status.last_reconcile.as_ref()),
    });
    format!("{document:#}\n")
}

pub fn reset(reply: &ResetResponse) -> String {
    format!(
        "removed {}, released {} addresses; the agent has stopped\n",
        removed(reply),
        reply.released.len()
    )
}

/// What a reset removed: its links, and its nftables table (`weft`) if it had one.
pub fn removed(reply: &ResetResponse) -> String {
    let links = format!("{} links", reply.removed.len());
    match reply.tables.as_slice() {
        [] => links,
        tables => format!("{links} and table {}", tables.join(", ")),
    }
}

pub fn peer_removed(peer: &str, released: &[String]) -> String {
    format!("{peer}: {} address(es) released\n", released.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use weft_proto::v1::{Peer, PeerIpam, SubnetUse};

    /// Compares with `tests/golden/NAME`; `UPDATE_GOLDEN=1 cargo test` rewrites the files
    /// (review the diff before committing).
    fn golden(name: &str, actual: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(actual, expected, "output differs from {}", path.display());
        for line in actual.lines().filter(|_| !name.ends_with(".json")) {
            assert!(line.len() <= 80, "{name}: longer than 80 columns: {line}");
        }
    }

    fn network(name: &str, subnet: &str, vni: u32) -> Network {
        Network {
            name: name.into(),
            subnet: subnet.into(),
            vni,
            ..Default::default()
        }
    }

    fn ipam() -> IpamStatusResponse {
        let info = |net: Network, endpoints, used: &[u64]| NetworkInfo {
            subnets: [&net.subnet, &net.subnet6]
                .into_iter()
                .filter(|s| !s.is_empty())
                .zip(used)
                .map(|(subnet, used)| SubnetUse {
                    subnet: subnet.clone(),
                    used: *used,
                })
                .collect(),
            network: Some(net),
            endpoints,
        };
        IpamStatusResponse {
            range: "10.32.0.0/12".into(),
            networks: vec![
                info(network("default", "10.32.0.0/12", 1), 3, &[4]),
                info(
                    Network {
                        encrypted: true,
                        ..network("192.168.0.0/24", "192.168.0.0/24", 2)
                    },
                    2,
                    &[2],
                ),
                info(
                    Network {
                        subnet6: "fd00:9::/64".into(),
                        ..network("blue", "10.9.0.0/24", 3)
                    },
                    1,
                    &[1, 1],
                ),
            ],
            peers: [
                ("host1", "192.168.0.0/24", 1),
                ("host1", "default", 3),
                ("host2", "192.168.0.0/24", 1),
                ("host2", "default", 1),
            ]
            .into_iter()
            .map(|(peer, network, used)| PeerIpam {
                peer: peer.into(),
                network: network.into(),
                used,
            })
            .collect(),
        }
    }

    fn ps_entries() -> Vec<PsEntry> {
        [
            (
                "weft:expose",
                "7a:c4:8b:a1:e6:ad",
                vec!["192.168.0.1/24"],
                "",
            ),
            (
                "06d700491410f2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b",
                "8a:b0:dd:a2:58:c5",
                vec!["192.168.0.2/24"],
                "my-test1",
            ),
            (
                "netns:c3",
                "56:46:8c:14:42:e6",
                vec!["192.168.10.10/24", "10.32.0.5/12"],
                "",
            ),
        ]
        .into_iter()
        .map(|(id, mac, cidrs, name)| PsEntry {
            container_id: id.into(),
            mac: mac.into(),
            cidrs: cidrs.into_iter().map(String::from).collect(),
            dns_name: name.into(),
        })
        .collect()
    }

    fn peers() -> Vec<PeerStatus> {
        [
            ("host1", "198.18.0.1", true, true, 312, 3),
            ("host2", "198.18.0.2", false, true, 42, 2),
            ("host3", "198.18.0.3", false, false, 11_040, 0),
        ]
        .into_iter()
        .map(
            |(name, addr, connected, reachable, for_secs, endpoints)| PeerStatus {
                peer: Some(Peer {
                    name: name.into(),
                    advertise_addr: addr.into(),
                    ..Default::default()
                }),
                connected,
                reachable,
                for_secs,
                endpoints,
            },
        )
        .collect()
    }

    fn status_response(connected: bool) -> StatusResponse {
        StatusResponse {
            version: "0.1.0".into(),
            name: "host1".into(),
            advertise_addr: "198.18.0.1".into(),
            controller_url: "http://198.18.0.254:6786".into(),
            connected,
            for_secs: if connected { 3_700 } else { 75 },
            last_error: if connected {
                String::new()
            } else {
                "tcp connect error: Connection refused (os error 111)".into()
            },
            revision: 42,
            peers: 3,
            networks: 2,
            ipam_range: "10.32.0.0/12".into(),
            ipam_used: 4,
            ipam_free: 1_048_569,
            endpoints: 3,
            dns_domain: "weave.local".into(),
            dns_entries: 2,
            refused: String::new(),
            watch_start: "resume".into(),
            watch_missed: 3,
            connections_ok: 1,
            connections_failed: 1,
            connections_pending: 0,
            last_reconcile: Some(ReconcileReport {
                ago_secs: 12,
                duration_us: 2_345,
                error: String::new(),
                fdb_added: 2,
                fdb_removed: 0,
                neigh_added: 1,
                neigh_removed: 0,
                fdb_held: 5,
                neigh_held: 3,
            }),
        }
    }

    fn connections() -> Vec<Connection> {
        [
            ("host2", "198.18.0.2", "ok", "", 112, 1450, 312),
            (
                "host3",
                "198.18.0.3",
                "failed",
                "no reply for 3s",
                95,
                1450,
                3,
            ),
            ("host4", "198.18.0.4", "ok", "", 2_004, 1350, 40),
            ("host5", "198.18.0.5", "pending", "", 0, 0, 0),
        ]
        .into_iter()
        .map(
            |(peer, vtep, state, why, rtt_us, mtu, for_secs)| Connection {
                // host2 is reached inside WireGuard, host4 will be once it shakes hands.
                encrypted: ["host2", "host4"].contains(&peer),
                handshake_secs: (peer == "host2").then_some(12),
                peer: peer.into(),
                vtep: vtep.into(),
                port: 6784,
                state: state.into(),
                why: why.into(),
                rtt_us,
                mtu,
                network_mtu: 1450,
                for_secs,
            },
        )
        .collect()
    }

    #[test]
    fn connections_as_weave_status_connections() {
        golden(
            "status-connections.txt",
            &status_connections(&connections(), false),
        );
        golden(
            "status-connections.json",
            &status_connections(&connections(), true),
        );
    }

    #[test]
    fn a_report_is_one_document_of_every_part() {
        let r = Report {
            status: status_response(true),
            connections: connections(),
            peers: Ok(peers()),
            controllers: Err("the controller keeps no list of controllers".into()),
            ipam: Ok(ipam()),
            endpoints: ps_entries(),
            dns: DnsStatusResponse::default(),
        };
        let text = report(&r);
        golden("report.json", &text);
        let doc: Value = serde_json::from_str(&text).expect("one JSON document");
        for part in [
            "status",
            "connections",
            "peers",
            "controllers",
            "networks",
            "ipam",
            "endpoints",
            "dns",
            "last_reconcile",
        ] {
            assert!(doc.get(part).is_some(), "the report lacks {part}");
        }
        assert_eq!(doc["status"]["peers"]["reachable"], 2);
        assert_eq!(doc["last_reconcile"]["fdb"]["added"], 2);
        assert_eq!(
            doc["controllers"]["error"],
            "the controller keeps no list of controllers"
        );
    }

    #[test]
    fn ps_as_weave_ps() {
        golden("ps.txt", &ps(&ps_entries(), false));
        golden("ps.json", &ps(&ps_entries(), true));
    }

    #[test]
    fn networks_line_up() {
        let infos = ipam().networks;
        golden("network-ls.txt", &networks(&infos, false));
        golden("network-ls.json", &networks(&infos, true));
        golden(
            "network-create.txt",
            &network_created(&network("blue", "10.9.0.0/24", 3)),
        );
        golden("status-networks.txt", &status_networks(&ipam(), false));
        golden("status-networks.json", &status_networks(&ipam(), true));
        golden("status-ipam.txt", &status_ipam(&ipam(), false));
        golden("status-ipam.json", &status_ipam(&ipam(), true));
    }

    #[test]
    fn peers_say_whether_and_since_when() {
        golden("status-peers.txt", &status_peers(&peers(), false));
        golden("status-peers.json", &status_peers(&peers(), true));
    }

    #[test]
    fn controllers_serving_or_gone() {
        let member = |address: &str, name: &str, serving, for_secs, answering| ControllerMember {
            address: address.into(),
            name: name.into(),
            serving,
            for_secs,
            answering,
        };
        let members = [
            member("198.18.0.100:6786", "ctl-a", true, 754, true),
            member("ctl-b:6786", "ctl-b", true, 30, false),
            member("198.18.0.102:6786", "ctl-c", false, 7, false),
        ];
        golden(
            "status-controllers.txt",
            &status_controllers(&members, false),
        );
        golden(
            "status-controllers.json",
            &status_controllers(&members, true),
        );
    }

    #[test]
    fn status_summary_connected_and_not() {
        golden(
            "status-connected.txt",
            &status(&status_response(true), Some(2), false),
        );
        golden(
            "status-unreachable.txt",
            &status(&status_response(false), None, false),
        );
        golden(
            "status.json",
            &status(&status_response(true), Some(2), true),
        );
        let refused = StatusResponse {
            refused: "its store 5e3f00000000 (revision 0) is not the store 8a1c00000000 this \
                      agent follows (revision 42): the controller's store was emptied or replaced"
                .into(),
            ..status_response(false)
        };
        golden("status-refused.txt", &status(&refused, None, false));
    }

    #[test]
    fn dns_entries_line_up() {
        let dns = DnsStatusResponse {
            domain: "weave.local".into(),
            ttl: 1,
            upstreams: vec!["192.0.2.53:53".into()],
            entries: [
                ("bbox1.weave.local", vec!["10.32.0.2"]),
                ("web.weave.local", vec!["10.32.0.3", "10.32.0.4"]),
            ]
            .into_iter()
            .map(|(name, ips)| weft_proto::v1::DnsEntry {
                name: name.into(),
                ips: ips.into_iter().map(String::from).collect(),
            })
            .collect(),
        };
        golden("status-dns.txt", &status_dns(&dns, false));
        golden("status-dns.json", &status_dns(&dns, true));
    }

    #[test]
    fn one_line_answers() {
        golden(
            "one-liners.txt",
            &[
                ips(&["192.168.0.2".into(), "10.32.0.5".into()]),
                reset(&ResetResponse {
                    removed: vec!["weave".into(), "vxlan-6784".into()],
                    released: vec!["10.32.0.5/12".into()],
                    ..ResetResponse::default()
                }),
                reset(&ResetResponse {
                    removed: vec!["weave".into()],
                    tables: vec!["weft".into()],
                    ..ResetResponse::default()
                }),
                peer_removed("host3", &["10.32.0.9/12".into()]),
            ]
            .concat(),
        );
    }

    #[test]
    fn long_values_wrap_between_words() {
        assert_eq!(wrap("aa bb cc", 5, 2), "aa bb\n  cc");
        assert_eq!(wrap("aaaaaaa bb", 5, 2), "aaaaaaa\n  bb");
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(human(42), "42s");
        assert_eq!(human(312), "5m12s");
        assert_eq!(human(11_040), "3h4m");
    }
}
