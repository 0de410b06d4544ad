//! What the agent's nftables table `weft` must hold, from the tables and the networks this host
//! masquerades, and its form in nftables' JSON API. Pure functions: no kernel needed.
//!
//! A rule is known by its comment, which spells it out: the kernel keeps comments as they were
//! given, while `nft` prints the rules themselves in its own normal form.

use std::borrow::Cow;
use std::collections::BTreeSet;

use ipnetwork::Ipv4Network;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule as NftRule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use weft_proto::names::{EXPOSE_ID, bridge_name};
use weft_proto::tables::Tables;

/// The table's name (`nft list table ip weft`).
pub const TABLE: &str = "weft";
const FORWARD: &str = "forward";
const POSTROUTING: &str = "postrouting";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// Traffic from the network that leaves by any interface but its bridge takes the host's
    /// address (the pods' way out).
    Masquerade { subnet: Ipv4Network, bridge: String },
    /// Nothing is forwarded from one network's bridge to another's: the host's addresses on
    /// both must not route one weft network into the other.
    Isolate { from: String, to: String },
}

impl Rule {
    fn chain(&self) -> &'static str {
        match self {
            Rule::Masquerade { .. } => POSTROUTING,
            Rule::Isolate { .. } => FORWARD,
        }
    }

    /// What the rule does, in words; the key it is known by.
    pub fn comment(&self) -> String {
        match self {
            Rule::Masquerade { subnet, bridge } => {
                format!("weft: masquerade {subnet} leaving by any interface but {bridge}")
            }
            Rule::Isolate { from, to } => format!("weft: no forwarding from {from} to {to}"),
        }
    }

    fn statements(&self) -> Vec<Statement<'static>> {
        let ifname = |key, op, name: &str| {
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta { key })),
                right: Expression::String(Cow::Owned(name.to_string())),
                op,
            })
        };
        match self {
            Rule::Masquerade { subnet, bridge } => vec![
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                        PayloadField {
                            protocol: "ip".into(),
                            field: "saddr".into(),
                        },
                    ))),
                    right: Expression::Named(NamedExpression::Prefix(Prefix {
                        addr: Box::new(Expression::String(Cow::Owned(
                            subnet.network().to_string(),
                        ))),
                        len: subnet.prefix().into(),
                    })),
                    op: Operator::EQ,
                }),
                ifname(MetaKey::Oifname, Operator::NEQ, bridge),
                Statement::Masquerade(None),
            ],
            Rule::Isolate { from, to } => vec![
                ifname(MetaKey::Iifname, Operator::EQ, from),
                ifname(MetaKey::Oifname, Operator::EQ, to),
                Statement::Drop(None),
            ],
        }
    }
}

/// The rules this host needs: none unless it masquerades a network it has an address on; then
/// the masquerade of each such network, and isolation between every two networks the host has
/// an address on (forwarding is on once a network is masqueraded).
pub fn wanted(tables: &Tables, me: &str, masqueraded: &BTreeSet<String>) -> BTreeSet<Rule> {
    let exposed: Vec<(&str, Ipv4Network, String)> = tables
        .endpoints_on(me)
        .filter(|ep| ep.id.container == EXPOSE_ID)
        .filter_map(|ep| {
            let net = tables.networks.get(&ep.id.network)?;
            let subnet = net.subnet4()?;
            Some((net.name.as_str(), subnet, bridge_name(net.vni)))
        })
        .collect();
    let mut rules = BTreeSet::new();
    for (name, subnet, bridge) in &exposed {
        if masqueraded.contains(*name) {
            rules.insert(Rule::Masquerade {
                subnet: *subnet,
                bridge: bridge.clone(),
            });
        }
    }
    if rules.is_empty() {
        return rules;
    }
    for (_, _, from) in &exposed {
        for (_, _, to) in exposed.iter().filter(|(_, _, to)| to != from) {
            rules.insert(Rule::Isolate {
                from: from.clone(),
                to: to.clone(),
            });
        }
    }
    rules
}

/// The commands that make the table hold exactly `rules`, in one transaction: the table is
/// added (so deleting it cannot fail), deleted and made anew.
pub fn replace(rules: &BTreeSet<Rule>) -> Nftables<'static> {
    let table = || Table {
        family: NfFamily::IP,
        name: TABLE.into(),
        handle: None,
    };
    let mut objects = vec![
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
    ];
    if !rules.is_empty() {
        objects.push(NfObject::CmdObject(NfCmd::Add(
            NfListObject::Table(table()),
        )));
        for (name, kind, hook, prio) in [
            (FORWARD, NfChainType::Filter, NfHook::Forward, 0),
            // srcnat
            (POSTROUTING, NfChainType::NAT, NfHook::Postrouting, 100),
        ] {
            objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
                Chain {
                    family: NfFamily::IP,
                    table: TABLE.into(),
                    name: name.into(),
                    _type: Some(kind),
                    hook: Some(hook),
                    prio: Some(prio),
                    policy: Some(NfChainPolicy::Accept),
                    ..Chain::default()
                },
            ))));
        }
        for rule in rules {
            objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(
                NftRule {
                    family: NfFamily::IP,
                    table: TABLE.into(),
                    chain: rule.chain().into(),
                    expr: Cow::Owned(rule.statements()),
                    comment: Some(Cow::Owned(rule.comment())),
                    ..NftRule::default()
                },
            ))));
        }
    }
    Nftables {
        objects: Cow::Owned(objects),
    }
}

/// What a listing of the table holds, as (chain, comment) of each rule and (chain, hook) of each
/// chain; compared with [`expected`] to tell whether the table is as wanted.
pub fn held(listing: &Nftables) -> BTreeSet<(String, String)> {
    listing
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Rule(r)) if r.table == TABLE => Some((
                r.chain.to_string(),
                r.comment.as_deref().unwrap_or_default().to_string(),
            )),
            NfObject::ListObject(NfListObject::Chain(c)) if c.table == TABLE => {
                Some((c.name.to_string(), format!("hook {:?}", c.hook)))
            }
            _ => None,
        })
        .collect()
}

/// What [`held`] gives for a table that holds `rules` (none for no rules: no table).
pub fn expected(rules: &BTreeSet<Rule>) -> BTreeSet<(String, String)> {
    if rules.is_empty() {
        return BTreeSet::new();
    }
    let mut expected: BTreeSet<(String, String)> = rules
        .iter()
        .map(|r| (r.chain().to_string(), r.comment()))
        .collect();
    expected.insert((FORWARD.into(), format!("hook {:?}", Some(NfHook::Forward))));
    expected.insert((
        POSTROUTING.into(),
        format!("hook {:?}", Some(NfHook::Postrouting)),
    ));
    expected
}

#[cfg(test)]
mod tests {
    use weft_proto::rows::{EndpointRow, NetworkRow};
    use weft_proto::tables::EndpointId;

    use super::*;

    fn tables_with_host_on(networks: &[(&str, &str, u32)]) -> Tables {
        let mut t = Tables::default();
        for (i, (name, subnet, vni)) in networks.iter().enumerate() {
            let subnet: Ipv4Network = subnet.parse().unwrap();
            t.networks.insert(
                name.to_string(),
                NetworkRow {
                    name: name.to_string(),
                    subnets: vec![subnet.into()],
                    vni: *vni,
                    encrypted: false,
                },
            );
            let host = Ipv4Network::new(subnet.nth(1).unwrap(), subnet.prefix()).unwrap();
            t.endpoints.insert(
                EndpointId::new("host1", name, EXPOSE_ID),
                EndpointRow {
                    id: EndpointId::new("host1", name, EXPOSE_ID),
                    mac: weft_proto::names::Mac([0x0a, 0, 0, 0, 0, i as u8]),
                    cidrs: vec![host.into()],
                    host_ifname: String::new(),
                    container_ifname: String::new(),
                    dns_name: String::new(),
                },
            );
        }
        t
    }

    #[test]
    fn nothing_unless_a_network_the_host_is_on_is_masqueraded() {
        let t = tables_with_host_on(&[("default", "10.32.0.0/12", 1), ("blue", "10.9.0.0/24", 3)]);
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        assert!(wanted(&t, "host1", &set(&[])).is_empty());
        assert!(wanted(&t, "host1", &set(&["red"])).is_empty());
        assert!(wanted(&t, "host2", &set(&["blue"])).is_empty());
        let rules = wanted(&t, "host1", &set(&["blue"]));
        let comments: Vec<String> = rules.iter().map(Rule::comment).collect();
        assert_eq!(
            comments,
            [
                "weft: masquerade 10.9.0.0/24 leaving by any interface but weave-3",
                "weft: no forwarding from weave to weave-3",
                "weft: no forwarding from weave-3 to weave",
            ]
        );
    }

    #[test]
    fn a_listing_of_what_replace_makes_is_as_expected() {
        let t = tables_with_host_on(&[("blue", "10.9.0.0/24", 3)]);
        let rules = wanted(&t, "host1", &["blue".to_string()].into());
        // What `nft -j list table` prints holds the objects themselves.
        let listing = Nftables {
            objects: replace(&rules)
                .objects
                .iter()
                .skip(3)
                .filter_map(|o| match o {
                    NfObject::CmdObject(NfCmd::Add(obj)) => Some(NfObject::ListObject(obj.clone())),
                    _ => None,
                })
                .collect(),
        };
        assert_eq!(held(&listing), expected(&rules));
        assert!(expected(&BTreeSet::new()).is_empty());
        let json = serde_json::to_value(replace(&rules)).unwrap();
        let rule = &json["nftables"][5]["add"]["rule"];
        assert_eq!(rule["chain"], "postrouting");
        assert_eq!(
            rule["expr"][0]["match"]["right"],
            serde_json::json!({"prefix": {"addr": "10.9.0.0", "len": 24}})
        );
        assert_eq!(rule["expr"][1]["match"]["op"], "!=");
    }
}
