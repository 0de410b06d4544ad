//! Reading kernel state (links, addresses, the bridge FDB, neighbours) inside a namespace from the JSON that
//! `ip -j` and `bridge -j` print, so tests check what the kernel really holds.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::cmd;

/// One network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// The kernel's number for the device; a device deleted and made anew gets a new one.
    pub index: u64,
    pub mac: String,
    pub mtu: u64,
    /// The bridge it is enslaved to, if any.
    pub master: Option<String>,
    /// Its IPv4 addresses as `IP/LEN`.
    pub addrs: Vec<String>,
}

/// Every interface in namespace `ns`.
pub fn links(ns: &str) -> Vec<Link> {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns, "-j", "addr", "show"]);
    json_array(&cmd::check(cmd).stdout)
        .iter()
        .map(|l| Link {
            name: text(l, "ifname"),
            index: l["ifindex"].as_u64().unwrap_or_default(),
            mac: text(l, "address"),
            mtu: l["mtu"].as_u64().unwrap_or_default(),
            master: l["master"].as_str().map(str::to_owned),
            addrs: l["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["family"] == "inet")
                .map(|a| format!("{}/{}", text(a, "local"), a["prefixlen"]))
                .collect(),
        })
        .collect()
}

/// Interface `name` in namespace `ns`, if it exists.
pub fn link(ns: &str, name: &str) -> Option<Link> {
    links(ns).into_iter().find(|l| l.name == name)
}

/// How many packets interface `dev` in `ns` has received, from the kernel's 64-bit counters.
/// Every frame a bridge delivers to a container shows up here, whatever its protocol, so an
/// unchanged count proves nothing arrived.
pub fn rx_packets(ns: &str, dev: &str) -> u64 {
    stat64(ns, dev, "rx", "packets")
}

/// How many packets interface `dev` in `ns` has sent, from the kernel's 64-bit counters.
pub fn tx_packets(ns: &str, dev: &str) -> u64 {
    stat64(ns, dev, "tx", "packets")
}

/// Counts the ARP frames that arrive on `dev` in `ns` from now on, whatever else arrives (the
/// kernel's bridges send IGMP reports of their own as they come up): an nftables counter on
/// the device's ingress, which goes with the namespace. Read with [`arp_in`].
pub fn count_arp_in(ns: &str, dev: &str) {
    let table = arp_table(dev);
    let rules = format!(
        "add table netdev {table}; add chain netdev {table} arp_in {{ type filter hook ingress \
         device \"{dev}\" priority 0; }}; add rule netdev {table} arp_in ether type arp counter"
    );
    cmd::check(crate::netns::in_netns(ns, "nft", &[&rules]));
}

/// How many ARP frames arrived on `dev` in `ns` since [`count_arp_in`].
pub fn arp_in(ns: &str, dev: &str) -> u64 {
    let table = arp_table(dev);
    let out = cmd::check(crate::netns::in_netns(
        ns,
        "nft",
        &["list", "chain", "netdev", &table, "arp_in"],
    ))
    .stdout;
    out.split_once("counter packets ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ARP counter on {dev} in {ns}: {out}"))
}

fn arp_table(dev: &str) -> String {
    format!("weft_test_arp_{}", dev.replace('-', "_"))
}

/// How many packets interface `dev` in `ns` dropped on transmit: a packet sent before the
/// kernel has activated the interface's queue counts here.
pub fn tx_dropped(ns: &str, dev: &str) -> u64 {
    stat64(ns, dev, "tx", "dropped")
}

/// One of the kernel's 64-bit counters of `dev` in `ns`, e.g. `rx` `packets`.
fn stat64(ns: &str, dev: &str, direction: &str, counter: &str) -> u64 {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns, "-s", "-j", "link", "show", "dev", dev]);
    let out = cmd::check(cmd).stdout;
    json_array(&out)
        .first()
        .and_then(|l| l["stats64"][direction][counter].as_u64())
        .unwrap_or_else(|| panic!("no {direction} {counter} count for {dev} in {ns}: {out}"))
}

/// The FDB entries of device `dev` in `ns` that point at a remote VTEP, as `(mac, dst)` pairs.
/// Entries without a `dst` (the bridge's own local MACs) are not weft's and are left out.
pub fn fdb(ns: &str, dev: &str) -> BTreeSet<(String, String)> {
    let mut cmd = Command::new("bridge");
    cmd.args(["-n", ns, "-j", "fdb", "show", "dev", dev]);
    json_array(&cmd::check(cmd).stdout)
        .iter()
        .filter(|e| e["dst"].is_string())
        .map(|e| (text(e, "mac"), text(e, "dst")))
        .collect()
}

/// The permanent neighbour (ARP) entries of device `dev` in `ns`, as `(ip, mac)` pairs.
pub fn neighbours(ns: &str, dev: &str) -> BTreeSet<(String, String)> {
    let mut cmd = Command::new("ip");
    cmd.args([
        "-n",
        ns,
        "-j",
        "neigh",
        "show",
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
    json_array(&cmd::check(cmd).stdout)
        .iter()
        .map(|e| (text(e, "dst"), text(e, "lladdr")))
        .collect()
}

fn json_array(stdout: &str) -> Vec<Value> {
    // iproute2 prints nothing at all, rather than `[]`, for an empty list.
    if stdout.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str(stdout) {
        Ok(Value::Array(items)) => items,
        _ => panic!("unexpected JSON from iproute2: {stdout}"),
    }
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}
