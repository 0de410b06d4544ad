//! The rules' unit tests: every request against small tables, with the index built afresh.

use std::collections::BTreeSet;

use ipnetwork::Ipv4Network;
use weft_proto::rows;
use weft_proto::tables::{DEFAULT_NETWORK, DEFAULT_VNI, EndpointId};

use super::*;
use crate::index::Index;

/// The rules on the tables alone, with the index built afresh for each call, as the
/// controller has it after a restart: the index must not change any answer.
trait OnTables {
    fn view<R>(&self, f: impl FnOnce(&View) -> R) -> R;
    fn ensure_default_network(
        &self,
        range: Ipv4Network,
        encrypted: bool,
    ) -> Result<Vec<RowChange>, TableError> {
        self.view(|v| v.ensure_default_network(range, None, encrypted))
    }
    fn register_peer(&self, peer: Peer) -> Result<Vec<RowChange>, TableError> {
        self.view(|v| v.register_peer(peer))
    }
    fn attach(
        &self,
        peer: &str,
        container_id: &str,
        addrs: &[AddrSpec],
        dns_name: &str,
        new_mac: &mut dyn FnMut() -> Mac,
    ) -> Result<(Attached, Vec<RowChange>), TableError> {
        let options = AttachOptions {
            dns_name,
            ..AttachOptions::default()
        };
        self.view(|v| v.attach(peer, container_id, addrs, options, new_mac))
    }
    fn detach(
        &self,
        peer: &str,
        container_id: &str,
        addrs: &[AddrSpec],
        only_mac: &str,
    ) -> Result<(Detached, Vec<RowChange>), TableError> {
        self.view(|v| v.detach(peer, container_id, addrs, only_mac))
    }
    fn create_network(
        &self,
        name: &str,
        subnet: &str,
        encrypted: bool,
    ) -> Result<(NetworkRow, Vec<RowChange>), TableError> {
        let subnets: Vec<String> = subnet.split(',').map(String::from).collect();
        self.view(|v| v.create_network(name, &subnets, encrypted))
    }
    fn delete_network(&self, name: &str) -> Result<Vec<RowChange>, TableError> {
        self.view(|v| v.delete_network(name))
    }
    fn remove_peer(
        &self,
        name: &str,
        connected: bool,
    ) -> Result<(Vec<IpNetwork>, Vec<RowChange>), TableError> {
        self.view(|v| v.remove_peer(name, connected))
    }
    fn update_dns(
        &self,
        peer: &str,
        remove: bool,
        records: &[DnsRecord],
    ) -> Result<Vec<RowChange>, TableError> {
        self.view(|v| v.update_dns(peer, remove, records))
    }
}

impl OnTables for Tables {
    fn view<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        let index = Index::build(self);
        f(&View {
            tables: self,
            index: &index,
        })
    }
}

fn peer(name: &str, addr: &str) -> Peer {
    Peer {
        name: name.into(),
        advertise_addr: addr.into(),
        ..Default::default()
    }
}

fn apply_all(t: &mut Tables, changes: Vec<RowChange>) {
    for c in changes {
        t.apply(c);
    }
}

fn two_hosts() -> Tables {
    let mut t = Tables::default();
    let changes = t
        .ensure_default_network("10.32.0.0/12".parse().unwrap(), false)
        .unwrap();
    apply_all(&mut t, changes);
    for (name, addr) in [("host1", "198.18.0.1"), ("host2", "198.18.0.2")] {
        let changes = t.register_peer(peer(name, addr)).unwrap();
        apply_all(&mut t, changes);
    }
    t
}

/// MACs 02:00:00:00:00:01, :02, ... in turn.
fn macs() -> impl FnMut() -> Mac {
    let mut n = 0u8;
    move || {
        n += 1;
        Mac([2, 0, 0, 0, 0, n])
    }
}

fn specs(addrs: &[&str]) -> Vec<AddrSpec> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

/// Attaches and applies; returns the addresses the attach gave.
fn attach(
    t: &mut Tables,
    peer: &str,
    container: &str,
    addrs: &[&str],
) -> Result<Vec<String>, String> {
    let (done, changes) = t
        .attach(peer, container, &specs(addrs), "", &mut macs_from(t))
        .map_err(|e| e.to_string())?;
    apply_all(t, changes);
    Ok(done.cidrs)
}

/// A MAC source that skips MACs the tables already hold.
fn macs_from(t: &Tables) -> impl FnMut() -> Mac + use<> {
    let held: BTreeSet<Mac> = t.endpoints.values().map(|e| e.mac).collect();
    let mut next = macs();
    move || loop {
        let mac = next();
        if !held.contains(&mac) {
            return mac;
        }
    }
}

fn detach(
    t: &mut Tables,
    peer: &str,
    container: &str,
    addrs: &[&str],
) -> Result<Vec<String>, String> {
    let (done, changes) = t
        .detach(peer, container, &specs(addrs), "")
        .map_err(|e| e.to_string())?;
    apply_all(t, changes);
    Ok(rows::cidr_strings(&done.released))
}

#[test]
fn default_network_is_created_once_and_never_moved() {
    let t = two_hosts();
    assert_eq!(t.networks[DEFAULT_NETWORK].subnets_text(), "10.32.0.0/12");
    assert_eq!(t.networks[DEFAULT_NETWORK].vni, DEFAULT_VNI);
    assert_eq!(
        t.ensure_default_network("10.32.0.0/12".parse().unwrap(), false),
        Ok(vec![])
    );
    assert_eq!(
        t.ensure_default_network("10.40.0.0/16".parse().unwrap(), false)
            .unwrap_err()
            .to_string(),
        "the stored default network is 10.32.0.0/12 but --ipalloc-range is 10.40.0.0/16"
    );
    // Encryption is fixed at creation, both ways.
    assert_eq!(
        t.ensure_default_network("10.32.0.0/12".parse().unwrap(), true)
            .unwrap_err()
            .to_string(),
        "the stored default network is not encrypted but --encrypt-default is given"
    );
    let mut encrypted = Tables::default();
    let changes = encrypted
        .ensure_default_network("10.32.0.0/12".parse().unwrap(), true)
        .unwrap();
    apply_all(&mut encrypted, changes);
    assert!(encrypted.networks[DEFAULT_NETWORK].encrypted);
    assert_eq!(
        encrypted
            .ensure_default_network("10.32.0.0/12".parse().unwrap(), false)
            .unwrap_err()
            .to_string(),
        "the stored default network is encrypted but --encrypt-default is not given"
    );
}

#[test]
fn a_peer_that_comes_back_with_a_new_key_is_updated() {
    let mut t = two_hosts();
    let keyed = |key: &str| Peer {
        wireguard_key: key.into(),
        wireguard_port: 6787,
        ..peer("host1", "198.18.0.1")
    };
    let first = "s5B/H7N0dCcr2n3JvU1ZvdobckrLDAU7TkHvS2B09Ug=";
    let changes = t.register_peer(keyed(first)).unwrap();
    assert_eq!(changes.len(), 1, "the key is new");
    apply_all(&mut t, changes);
    assert_eq!(t.register_peer(keyed(first)), Ok(vec![]));
    let second = "CwEv/22CW8b4H/Qd9gyrkiGKS2J9EMPSCpy7HxeuRG0=";
    let changes = t.register_peer(keyed(second)).unwrap();
    apply_all(&mut t, changes);
    let wg = t.peers["host1"].wireguard.unwrap();
    assert_eq!((wg.key.to_string().as_str(), wg.port), (second, 6787));
    assert_eq!(
        t.register_peer(keyed("short")).unwrap_err().to_string(),
        "peer host1: \"short\" is not a WireGuard key (base64)"
    );
    let no_port = Peer {
        wireguard_port: 0,
        ..keyed(first)
    };
    assert_eq!(
        t.register_peer(no_port).unwrap_err().to_string(),
        "peer host1: bad WireGuard port 0"
    );
}

#[test]
fn peers_register_once_and_bad_addresses_are_refused() {
    let t = two_hosts();
    assert_eq!(t.revision, 3);
    assert_eq!(t.register_peer(peer("host1", "198.18.0.1")), Ok(vec![]));
    assert_eq!(
        t.register_peer(peer("host1", "nope"))
            .unwrap_err()
            .to_string(),
        "peer host1: \"nope\" is not an IP address"
    );
}

#[test]
fn an_ipv6_underlay_is_taken_but_not_mixed_with_ipv4() {
    let mut t = Tables::default();
    for (name, addr) in [("host1", "2001:db8::1"), ("host2", "2001:db8::2")] {
        let changes = t.register_peer(peer(name, addr)).unwrap();
        apply_all(&mut t, changes);
    }
    assert_eq!(
        t.register_peer(peer("host3", "198.18.0.3"))
            .unwrap_err()
            .to_string(),
        "peer host3: advertise address 198.18.0.3: the underlay is IPv6 (peer host1 advertises \
         2001:db8::1): weft does not mix IPv4 and IPv6 underlays in one cluster"
    );
    assert_eq!(
        t.register_peer(peer("host3", "::ffff:198.18.0.3"))
            .unwrap_err()
            .to_string(),
        "peer host3: ::ffff:198.18.0.3 is an IPv4-mapped IPv6 address; write 198.18.0.3"
    );
    for addr in ["fe80::3", "ff02::1", "::"] {
        assert_eq!(
            t.register_peer(peer("host3", addr))
                .unwrap_err()
                .to_string(),
            format!(
                "peer host3: advertise address {addr}: not a unicast address other hosts can \
                 send to"
            )
        );
    }
    // The only peer may move to the other family: nothing is mixed then.
    let mut alone = Tables::default();
    for addr in ["198.18.0.1", "2001:db8::1"] {
        let changes = alone.register_peer(peer("host1", addr)).unwrap();
        apply_all(&mut alone, changes);
    }
    assert_eq!(alone.peers["host1"].addr.to_string(), "2001:db8::1");
}

#[test]
fn a_vtep_whose_tag_another_has_is_refused_naming_it() {
    // Two addresses of one /64 whose tags collide, found by a search over random ones.
    let (first, second) = (
        "2001:db8::211e:f128:f934:cb05",
        "2001:db8::f11:8a20:42b5:bdd7",
    );
    let tag = |ip: &str| weft_proto::names::host_tag(ip.parse().unwrap());
    assert_eq!(tag(first), tag(second));
    let mut t = Tables::default();
    let changes = t.register_peer(peer("host1", first)).unwrap();
    apply_all(&mut t, changes);
    assert_eq!(
        t.register_peer(peer("host2", second))
            .unwrap_err()
            .to_string(),
        format!(
            "peer host2: advertise address {second}: its probe and tunnel addresses would be \
             those of peer host1 ({first}); advertise another address"
        )
    );
}

#[test]
fn static_addresses_create_their_network_and_name_holders() {
    let mut t = two_hosts();
    assert_eq!(
        attach(&mut t, "host1", "c1", &["192.168.0.2/24"]),
        Ok(vec!["192.168.0.2/24".into()])
    );
    let net = &t.networks["192.168.0.0/24"];
    assert_eq!((net.subnets_text(), net.vni), ("192.168.0.0/24".into(), 2));
    let ep = &t.endpoints[&EndpointId::new("host1", "192.168.0.0/24", "c1")];
    assert_eq!(ep.mac.to_string(), "0a:77:c0:a8:00:02");
    assert_eq!(ep.host_ifname, "vethwepl0a80002");
    assert_eq!(ep.container_ifname, "ethwe");
    assert_eq!(
        attach(&mut t, "host2", "c2", &["192.168.0.2/24"]),
        Err("address 192.168.0.2 already in use by c1 on host1".into())
    );
    // A retried attach of what the container already holds is harmless, and adds nothing.
    let (again, changes) = t
        .attach("host1", "c1", &specs(&["192.168.0.2/24"]), "", &mut macs())
        .unwrap();
    assert_eq!((again.added.len(), changes.len()), (0, 0));
    assert_eq!(again.networks[0].name, "192.168.0.0/24");
    let rev = t.revision;
    assert_eq!(
        attach(&mut t, "host1", "c1", &["192.168.0.2/24"]),
        Ok(vec!["192.168.0.2/24".into()])
    );
    assert_eq!(t.revision, rev);
    // A second network gets the next VNI and the container its next interface.
    assert_eq!(
        attach(&mut t, "host1", "c1", &["192.168.10.10/24"]),
        Ok(vec!["192.168.10.10/24".into()])
    );
    assert_eq!(t.networks["192.168.10.0/24"].vni, 3);
    let ep2 = &t.endpoints[&EndpointId::new("host1", "192.168.10.0/24", "c1")];
    assert_eq!(ep2.container_ifname, "ethwe1");
}

#[test]
fn a_chosen_interface_name_names_one_endpoint() {
    let mut t = two_hosts();
    let attach_as = |t: &mut Tables, container: &str, addrs: &[&str], ifname: &str| {
        let options = AttachOptions {
            ifname,
            ..AttachOptions::default()
        };
        let (done, changes) = t
            .view(|v| v.attach("host1", container, &specs(addrs), options, &mut macs()))
            .map_err(|e| e.to_string())?;
        apply_all(t, changes);
        Ok::<_, String>(done)
    };
    let done = attach_as(&mut t, "c1", &["192.168.0.2/24"], "eth0").unwrap();
    assert_eq!(done.endpoints[0].container_ifname, "eth0");
    // A retry, or another address in the same network, keeps the interface.
    attach_as(&mut t, "c1", &["192.168.0.3/24"], "eth0").unwrap();
    assert_eq!(
        attach_as(&mut t, "c1", &["192.168.0.4/24"], "net1"),
        Err("c1 is in network 192.168.0.0/24 as eth0, not net1".into())
    );
    assert_eq!(
        attach_as(&mut t, "c1", &["10.32.0.9/12"], "eth0"),
        Err("c1 has eth0 in network 192.168.0.0/24 already".into())
    );
    assert_eq!(
        attach_as(&mut t, "c2", &["10.32.0.9/12", "192.168.0.9/24"], "eth0"),
        Err("interface eth0 can be in one network only, not in 192.168.0.0/24, default".into())
    );
    // Nothing of the refused attaches was kept.
    let ep = &t.endpoints[&EndpointId::new("host1", "192.168.0.0/24", "c1")];
    assert_eq!(ep.cidrs.len(), 2);
    assert_eq!(t.endpoints.len(), 1);
}

#[test]
fn an_attach_takes_over_what_a_reservation_holds() {
    let mut t = two_hosts();
    let (_, changes) = t.create_network("blue", "10.9.0.0/24", false).unwrap();
    apply_all(&mut t, changes);
    assert_eq!(
        attach(&mut t, "host1", "r1", &["net:blue"]),
        Ok(vec!["10.9.0.2/24".into()])
    );
    assert_eq!(
        attach(&mut t, "host1", "r2", &["net:blue"]),
        Ok(vec!["10.9.0.3/24".into()])
    );
    let take = |t: &mut Tables, peer: &str, container: &str, addr: &str, from: &str| {
        let options = AttachOptions {
            take_from: from,
            ..AttachOptions::default()
        };
        let (done, changes) = t
            .view(|v| v.attach(peer, container, &specs(&[addr]), options, &mut macs_from(t)))
            .map_err(|e| e.to_string())?;
        // As the controller applies them: the index follows each change before the tables do.
        let mut index = Index::build(t);
        for change in changes {
            index.apply(t, &change);
            t.apply(change);
        }
        assert_eq!(index, Index::build(t), "the index went astray");
        Ok::<_, String>(done.added)
    };
    let reserved = t.endpoints[&EndpointId::new("host1", "blue", "r1")].clone();
    // Moved in one change, and counted as new to the endpoint (undoing it releases it).
    assert_eq!(
        take(&mut t, "host1", "e1", "10.9.0.2/24", "r1"),
        Ok(vec!["10.9.0.2/24".into()])
    );
    assert!(
        !t.endpoints
            .contains_key(&EndpointId::new("host1", "blue", "r1"))
    );
    let taken = &t.endpoints[&EndpointId::new("host1", "blue", "e1")];
    assert_eq!(taken.cidrs, ["10.9.0.2/24".parse().unwrap()]);
    // The address keeps its MAC (and so its veth's name), as any address does.
    assert_eq!(
        (taken.mac, &taken.host_ifname),
        (reserved.mac, &reserved.host_ifname)
    );
    assert_eq!(
        taken.mac,
        weft_proto::names::mac_for_address("10.9.0.2".parse().unwrap())
    );
    assert_eq!(
        take(&mut t, "host1", "e1", "10.9.0.2/24", "e1"),
        Err("e1 cannot take addresses over from itself".into())
    );
    // The pool knows who holds it now: nobody else gets it, and the next is still free.
    assert_eq!(
        attach(&mut t, "host1", "c9", &["net:blue"]),
        Ok(vec!["10.9.0.4/24".into()])
    );
    assert_eq!(
        attach(&mut t, "host2", "c8", &["10.9.0.2/24"]),
        Err("address 10.9.0.2 already in use by e1 on host1".into())
    );
    // Only what the reservation holds moves: another's address, or another peer's reservation,
    // is claimed as any other address and so refused.
    assert_eq!(
        take(&mut t, "host1", "e2", "10.9.0.4/24", "r2"),
        Err("address 10.9.0.4 already in use by c9 on host1".into())
    );
    assert_eq!(
        take(&mut t, "host2", "e2", "10.9.0.3/24", "r2"),
        Err("address 10.9.0.3 already in use by r2 on host1".into())
    );
    assert_eq!(
        t.endpoints[&EndpointId::new("host1", "blue", "r2")].cidrs,
        ["10.9.0.3/24".parse().unwrap()]
    );
}

#[test]
fn a_name_belongs_to_the_whole_container() {
    let mut t = two_hosts();
    let name_of = |t: &Tables, net: &str| {
        t.endpoints[&EndpointId::new("host1", net, "c1")]
            .dns_name
            .clone()
    };
    let (_, changes) = t
        .attach(
            "host1",
            "c1",
            &specs(&["192.168.0.2/24"]),
            "bbox1",
            &mut macs(),
        )
        .unwrap();
    apply_all(&mut t, changes);
    // A later attach without a name keeps it, also on the container's new endpoint.
    attach(&mut t, "host1", "c1", &["10.32.0.9/12"]).unwrap();
    assert_eq!(name_of(&t, "192.168.0.0/24"), "bbox1");
    assert_eq!(name_of(&t, "default"), "bbox1");
    // A new name renames every endpoint, also those the attach does not touch.
    let (_, changes) = t
        .attach(
            "host1",
            "c1",
            &specs(&["10.32.0.9/12"]),
            "bbox2",
            &mut macs(),
        )
        .unwrap();
    apply_all(&mut t, changes);
    assert_eq!(name_of(&t, "192.168.0.0/24"), "bbox2");
    assert_eq!(name_of(&t, "default"), "bbox2");
}

#[test]
fn docker_ids_are_shown_short_in_errors() {
    let mut t = two_hosts();
    let id = "3f2a9c1d7e55".to_string() + &"0".repeat(52);
    attach(&mut t, "host2", &id, &["192.168.0.2/24"]).unwrap();
    assert_eq!(
        attach(&mut t, "host1", "c2", &["192.168.0.2/24"]),
        Err("address 192.168.0.2 already in use by 3f2a9c1d7e55 on host2".into())
    );
}

#[test]
fn dns_records_live_with_their_container_and_peer() {
    let mut t = two_hosts();
    attach(&mut t, "host1", "c1", &["192.168.0.2/24"]).unwrap();
    let record = |name: &str, ip: &str, container: &str| DnsRecord {
        name: name.into(),
        ip: ip.into(),
        container_id: container.into(),
        ..DnsRecord::default()
    };
    let changes = t
        .update_dns(
            "host1",
            false,
            &[
                record("Web.", "192.168.0.2", "c1"),
                record("db", "10.9.9.9", ""),
            ],
        )
        .unwrap();
    apply_all(&mut t, changes);
    let names: Vec<_> = t.dns_records.keys().cloned().collect();
    assert_eq!(
        names,
        [
            ("db".to_string(), "10.9.9.9".parse().unwrap()),
            ("web".to_string(), "192.168.0.2".parse().unwrap())
        ]
    );
    // Adding again changes nothing; removing what is not there is refused, naming it.
    let again = t
        .update_dns("host1", false, &[record("web", "192.168.0.2", "c1")])
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(
        t.update_dns("host1", true, &[record("web", "192.168.0.9", "")])
            .unwrap_err()
            .to_string(),
        "no DNS record web 192.168.0.9"
    );
    // The container's last endpoint takes its records along; the other stays until rmpeer.
    let (_, changes) = t.detach("host1", "c1", &[], "").unwrap();
    apply_all(&mut t, changes);
    assert_eq!(t.dns_records.len(), 1);
    let (_, changes) = t.remove_peer("host1", false).unwrap();
    apply_all(&mut t, changes);
    assert!(t.dns_records.is_empty());
}

#[test]
fn attach_without_addresses_allocates_from_the_default_network() {
    let mut t = two_hosts();
    assert_eq!(
        attach(&mut t, "host1", "c1", &[]),
        Ok(vec!["10.32.0.2/12".into()])
    );
    assert_eq!(
        attach(&mut t, "host2", "c2", &["net:default"]),
        Ok(vec!["10.32.0.3/12".into()])
    );
    assert_eq!(
        attach(&mut t, "host1", "c3", &["net:default", "net:default"]),
        Ok(vec!["10.32.0.4/12".into(), "10.32.0.5/12".into()])
    );
    let ep = &t.endpoints[&EndpointId::new("host1", DEFAULT_NETWORK, "c3")];
    assert_eq!(
        rows::cidr_strings(&ep.cidrs),
        ["10.32.0.4/12", "10.32.0.5/12"]
    );
}

#[test]
fn a_container_asking_again_gets_the_address_it_holds() {
    let mut t = two_hosts();
    let (blue, changes) = t.create_network("blue", "10.9.0.0/24", false).unwrap();
    apply_all(&mut t, changes);
    let first = attach(&mut t, "host1", "c1", &[]).unwrap();
    assert_eq!(first, ["10.32.0.2/12"]);
    for again in [&[][..], &["net:default"], &["net:10.32.0.0/12"]] {
        assert_eq!(attach(&mut t, "host1", "c1", again).as_ref(), Ok(&first));
    }
    assert_eq!(
        attach(&mut t, "host1", "c1", &["net:blue"]),
        Ok(vec!["10.9.0.2/24".into()])
    );
    assert_eq!(
        attach(&mut t, "host1", "c1", &[&format!("net:{}", blue.name)]),
        Ok(vec!["10.9.0.2/24".into()])
    );
    // Two asked for at once: the one held, and one more.
    assert_eq!(
        attach(&mut t, "host1", "c1", &["net:default", "net:default"]),
        Ok(vec!["10.32.0.2/12".into(), "10.32.0.3/12".into()])
    );
    // The same container on another host is another holder.
    assert_eq!(
        attach(&mut t, "host2", "c1", &[]),
        Ok(vec!["10.32.0.4/12".into()])
    );
}

#[test]
fn net_cidr_and_net_name_allocate_in_their_network() {
    let mut t = two_hosts();
    assert_eq!(
        attach(&mut t, "host1", "c1", &["net:10.2.0.0/30"]),
        Ok(vec!["10.2.0.2/30".into()])
    );
    assert_eq!(
        attach(&mut t, "host1", "c2", &["net:10.2.0.0/30"]),
        Err("network 10.2.0.0/30 (10.2.0.0/30) has no free address: all 1 are in use".into())
    );
    let (blue, changes) = t.create_network("blue", "10.9.0.0/24", false).unwrap();
    apply_all(&mut t, changes);
    assert_eq!(blue.vni, 3);
    assert_eq!(
        attach(&mut t, "host2", "c3", &["net:blue"]),
        Ok(vec!["10.9.0.2/24".into()])
    );
    assert_eq!(
        attach(&mut t, "host2", "c3", &["net:red"]),
        Err("unknown network red".into())
    );
}

#[test]
fn failed_attaches_change_nothing() {
    let mut t = two_hosts();
    attach(&mut t, "host1", "c1", &["192.168.0.2/24"]).unwrap();
    let before = t.clone();
    for (addrs, why) in [
        (
            &["192.168.0.3/24", "192.168.0.2/24"][..],
            "address 192.168.0.2 already in use by c1 on host1",
        ),
        (
            &["192.168.0.0/24"],
            "address 192.168.0.0 is the network address of 192.168.0.0/24",
        ),
        (
            &["192.168.0.255/24"],
            "address 192.168.0.255 is the broadcast address of 192.168.0.0/24",
        ),
        (
            &["192.168.0.1/24"],
            "address 192.168.0.1 is the gateway address, kept for the host of 192.168.0.0/24",
        ),
        (
            &["192.168.0.9/23"],
            "subnet 192.168.0.0/23 overlaps network 192.168.0.0/24 (192.168.0.0/24)",
        ),
        (
            &["10.33.0.9/16"],
            "subnet 10.33.0.0/16 overlaps network default (10.32.0.0/12)",
        ),
        (
            &["10.0.0.2/31"],
            "prefix /31 of 10.0.0.2/31 is outside /8../30",
        ),
        (
            &["10.0.0.2/7"],
            "prefix /7 of 10.0.0.0/7 is outside /8../30",
        ),
    ] {
        assert_eq!(attach(&mut t, "host2", "c2", addrs), Err(why.to_string()));
        assert_eq!(t, before, "state after {addrs:?}");
    }
    assert_eq!(
        attach(&mut t, "host9", "c2", &[]),
        Err("peer host9 is not registered with the controller".into())
    );
}

#[test]
fn detach_releases_what_it_names_and_removes_empty_endpoints() {
    let mut t = two_hosts();
    attach(
        &mut t,
        "host1",
        "c1",
        &["192.168.0.2/24", "192.168.0.3/24", "192.168.10.2/24"],
    )
    .unwrap();
    assert_eq!(
        detach(&mut t, "host1", "c1", &["192.168.0.3/24"]),
        Ok(vec!["192.168.0.3/24".into()])
    );
    assert_eq!(
        detach(&mut t, "host1", "c1", &["192.168.0.3/24"]),
        Err("address 192.168.0.3 is not held by c1 on host1".into())
    );
    assert_eq!(
        detach(&mut t, "host1", "c1", &["net:192.168.10.0/24"]),
        Ok(vec!["192.168.10.2/24".into()])
    );
    assert_eq!(t.endpoints.len(), 1, "the emptied endpoint is gone");
    // Released addresses are free again.
    assert!(attach(&mut t, "host2", "c2", &["192.168.0.3/24"]).is_ok());
    assert_eq!(
        detach(&mut t, "host1", "c1", &[]),
        Ok(vec!["192.168.0.2/24".into()])
    );
    assert_eq!(
        detach(&mut t, "host1", "c1", &[]),
        Err("c1 is not attached on host1".into())
    );
}

#[test]
fn networks_are_created_checked_and_removed() {
    let mut t = two_hosts();
    let create = |t: &Tables, name: &str, subnet: &str| {
        t.create_network(name, subnet, false)
            .map(|(n, _)| n)
            .map_err(|e| e.to_string())
    };
    let (net, changes) = t.create_network("blue", "10.9.0.0/24", false).unwrap();
    apply_all(&mut t, changes);
    assert_eq!(
        (net.name.as_str(), net.subnets_text(), net.vni),
        ("blue", "10.9.0.0/24".into(), 2)
    );
    assert_eq!(
        create(&t, "blue", "10.8.0.0/24"),
        Err("network blue already exists (10.9.0.0/24)".into())
    );
    assert_eq!(
        create(&t, "red", "10.9.0.0/24"),
        Err("subnet 10.9.0.0/24 is already network blue".into())
    );
    assert_eq!(
        create(&t, "red", "10.9.0.0/16"),
        Err("subnet 10.9.0.0/16 overlaps network blue (10.9.0.0/24)".into())
    );
    assert_eq!(
        create(&t, "red", "10.9.1.1/24"),
        Err("invalid subnet \"10.9.1.1/24\": host bits set; the subnet is 10.9.1.0/24".into())
    );
    assert_eq!(
        create(&t, "red", "10.9.1.0/31"),
        Err("prefix /31 of 10.9.1.0/31 is outside /8../30".into())
    );
    assert_eq!(
        create(&t, "red", "banana"),
        Err("invalid subnet \"banana\": expected IP/LEN, e.g. 192.168.0.2/24".into())
    );
    assert!(
        create(&t, "a b", "10.7.0.0/24")
            .unwrap_err()
            .starts_with("invalid network name \"a b\"")
    );
    attach(&mut t, "host1", "c1", &["net:blue"]).unwrap();
    assert_eq!(
        t.delete_network("blue").unwrap_err().to_string(),
        "network blue still has 1 endpoint(s), e.g. c1 on host1"
    );
    assert_eq!(
        t.delete_network("default").unwrap_err().to_string(),
        "the default network cannot be removed"
    );
    assert_eq!(
        t.delete_network("green").unwrap_err().to_string(),
        "unknown network green"
    );
    detach(&mut t, "host1", "c1", &[]).unwrap();
    let changes = t.delete_network("blue").unwrap();
    apply_all(&mut t, changes);
    assert!(!t.networks.contains_key("blue"));
}

#[test]
fn removing_a_dead_peer_frees_its_addresses() {
    let mut t = two_hosts();
    attach(&mut t, "host2", "c2", &["192.168.0.2/24"]).unwrap();
    assert_eq!(
        t.remove_peer("host2", true).unwrap_err().to_string(),
        "peer host2 is connected: only a peer whose agent is gone can be removed"
    );
    let (released, changes) = t.remove_peer("host2", false).unwrap();
    assert_eq!(rows::cidr_strings(&released), ["192.168.0.2/24"]);
    apply_all(&mut t, changes);
    assert!(!t.peers.contains_key("host2"));
    assert!(attach(&mut t, "host1", "c1", &["192.168.0.2/24"]).is_ok());
}

#[test]
fn a_detach_by_mac_releases_only_that_endpoint_and_never_another_peers() {
    let mut t = two_hosts();
    attach(&mut t, "host1", "c1", &[]).unwrap();
    attach(&mut t, "host2", "c2", &[]).unwrap();
    let mac_of = |t: &Tables, c: &str| {
        let ep = t.endpoints.values().find(|ep| ep.id.container == c);
        ep.unwrap().mac.to_string()
    };
    let (c1, c2) = (mac_of(&t, "c1"), mac_of(&t, "c2"));
    let refused = |t: &Tables, mac: &str| t.detach("host1", "c1", &[], mac).unwrap_err();
    assert_eq!(
        refused(&t, &c2).to_string(),
        format!("MAC {c2} belongs to an endpoint of peer host2, not of host1")
    );
    assert_eq!(
        refused(&t, "02:00:00:00:00:99").to_string(),
        "c1 with MAC 02:00:00:00:00:99 is not attached on host1"
    );
    let (done, changes) = t.detach("host1", "c1", &[], &c1).unwrap();
    assert_eq!(rows::cidr_strings(&done.released), ["10.32.0.2/12"]);
    apply_all(&mut t, changes);
    assert_eq!(t.endpoints.len(), 1, "c2's endpoint stays");
}

#[test]
fn ipv6_networks_single_and_dual_stack() {
    let mut t = two_hosts();
    // A static IPv6 address makes its network, as an IPv4 one does.
    assert_eq!(
        attach(&mut t, "host1", "c1", &["fd00:7::5/64"]),
        Ok(vec!["fd00:7::5/64".into()])
    );
    assert_eq!(t.networks["fd00:7::/64"].subnets_text(), "fd00:7::/64");
    assert_eq!(
        attach(&mut t, "host1", "c2", &["net:fd00:7::/64"]),
        Ok(vec!["fd00:7::2/64".into()])
    );
    // Dual stack: net:NAME gives one address of each family, IPv4 first.
    let (net, changes) = t
        .create_network("blue", "fd00:9::/64,10.9.0.0/24", false)
        .unwrap();
    apply_all(&mut t, changes);
    assert_eq!(net.subnets_text(), "10.9.0.0/24,fd00:9::/64");
    assert_eq!(
        attach(&mut t, "host1", "c3", &["net:blue"]),
        Ok(vec!["10.9.0.2/24".into(), "fd00:9::2/64".into()])
    );
    // Again: the same two, not two more.
    assert_eq!(
        attach(&mut t, "host1", "c3", &["net:blue"]),
        Ok(vec!["10.9.0.2/24".into(), "fd00:9::2/64".into()])
    );
    assert_eq!(
        attach(&mut t, "host2", "c4", &["fd00:9::2/64"]),
        Err("address fd00:9::2 already in use by c3 on host1".into())
    );
    assert_eq!(
        attach(&mut t, "host2", "c4", &["fd00:9::1/64"]),
        Err("address fd00:9::1 is the gateway address, kept for the host of fd00:9::/64".into())
    );
    assert_eq!(
        detach(&mut t, "host1", "c3", &["fd00:9::2/64"]),
        Ok(vec!["fd00:9::2/64".into()])
    );
    assert_eq!(
        attach(&mut t, "host2", "c4", &["net:fd00:9::/64"]),
        Ok(vec!["fd00:9::2/64".into()])
    );
    // net:CIDR gives back that subnet's address only; the other family's stays.
    assert_eq!(
        attach(&mut t, "host1", "c5", &["net:blue"]),
        Ok(vec!["10.9.0.3/24".into(), "fd00:9::3/64".into()])
    );
    assert_eq!(
        detach(&mut t, "host1", "c5", &["net:fd00:9::/64"]),
        Ok(vec!["fd00:9::3/64".into()])
    );
    let c5 = &t.endpoints[&EndpointId::new("host1", "blue", "c5")];
    assert_eq!(rows::cidr_strings(&c5.cidrs), ["10.9.0.3/24"]);
    assert_eq!(
        detach(&mut t, "host1", "c5", &["net:fd00:9::/64"]),
        Err("an address in network blue is not held by c5 on host1".into())
    );
}

#[test]
fn bad_ipv6_subnets_are_refused_naming_them() {
    let t = two_hosts();
    let err = |subnets: &str| {
        t.create_network("blue", subnets, false)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("fd00:9::/64,fd00:8::/64"),
        "a second IPv6 subnet fd00:8::/64: a network has at most one IPv4 and one IPv6 subnet, \
         and fd00:9::/64 is given already"
    );
    assert_eq!(
        err("fd00::/47"),
        "prefix /47 of fd00::/47 is outside /48../126"
    );
    assert_eq!(
        err("fd00:9::/127"),
        "prefix /127 of fd00:9::/127 is outside /48../126"
    );
    assert_eq!(
        err("::ffff:10.9.0.0/120"),
        "invalid subnet \"::ffff:10.9.0.0/120\": ::ffff:10.9.0.0 is an IPv4-mapped IPv6 \
         address; write 10.9.0.0"
    );
    assert_eq!(
        err("10.9.0.0/24,10.32.1.0/24"),
        "a second IPv4 subnet 10.32.1.0/24: a network has at most one IPv4 and one IPv6 subnet, \
         and 10.9.0.0/24 is given already"
    );
}

#[test]
fn the_default_network_is_dual_stack_with_range6() {
    let mut t = Tables::default();
    let (range, range6) = (
        "10.32.0.0/12".parse().unwrap(),
        Some("fd00:32::/64".parse().unwrap()),
    );
    let changes = t
        .view(|v| v.ensure_default_network(range, range6, false))
        .unwrap();
    apply_all(&mut t, changes);
    assert_eq!(
        t.networks[DEFAULT_NETWORK].subnets_text(),
        "10.32.0.0/12,fd00:32::/64"
    );
    let changes = t.register_peer(peer("host1", "198.18.0.1")).unwrap();
    apply_all(&mut t, changes);
    assert_eq!(
        attach(&mut t, "host1", "c1", &[]),
        Ok(vec!["10.32.0.2/12".into(), "fd00:32::2/64".into()])
    );
    assert_eq!(
        t.view(|v| v.ensure_default_network(range, None, false))
            .unwrap_err()
            .to_string(),
        "the stored default network is 10.32.0.0/12,fd00:32::/64 but --ipalloc-range6 is not \
         given"
    );
    assert_eq!(
        t.view(|v| v.ensure_default_network(range, range6, false)),
        Ok(vec![])
    );
}
