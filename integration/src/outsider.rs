//! A machine on the underlay that is no weft host and has no route to any container network:
//! it answers only what comes from a host's own address, and counts who sent it what, so a test
//! sees whether traffic leaving the overlay was masqueraded.

use crate::netns::exec;

/// Counter comments of the outsider's nftables table `t`.
const FROM_HOST: &str = "from-host";
const FROM_CONTAINERS: &str = "from-containers";

pub struct Outsider {
    ns: String,
}

impl Outsider {
    /// Makes the namespace `ns` (on the underlay already) count echo requests from `host_ip`
    /// and anything from 10.0.0.0/8, where the tests' container networks are.
    pub(crate) fn counting(ns: String, host_ip: &str) -> Outsider {
        for rule in [
            "add table ip t".to_string(),
            "add chain ip t c { type filter hook input priority 0 ; }".into(),
            format!(
                "add rule ip t c ip saddr {host_ip} icmp type echo-request counter comment \
                 \"{FROM_HOST}\""
            ),
            format!("add rule ip t c ip saddr 10.0.0.0/8 counter comment \"{FROM_CONTAINERS}\""),
        ] {
            let out = exec(&ns, &["nft", &rule]);
            assert!(out.success(), "nft {rule}: {}", out.stderr);
        }
        Outsider { ns }
    }

    /// Echo requests that came from the host's address.
    pub fn from_host(&self) -> u64 {
        self.counted(FROM_HOST)
    }

    /// Packets that came from a container's address.
    pub fn from_containers(&self) -> u64 {
        self.counted(FROM_CONTAINERS)
    }

    fn counted(&self, comment: &str) -> u64 {
        let listing = exec(&self.ns, &["nft", "list", "table", "ip", "t"]).stdout;
        let line = listing
            .lines()
            .find(|l| l.contains(comment))
            .unwrap_or_else(|| panic!("no rule {comment} in {listing}"));
        let after = line.split("packets ").nth(1).expect("a counter");
        after.split(' ').next().unwrap().parse().unwrap()
    }
}
