//! IP address management within one subnet of a network: which addresses are held, claiming a
//! given one, and allocating the lowest free one. The tables are the only record of what is
//! held, so an address is free exactly when no endpoint lists it. IPv4 and IPv6 alike: the free
//! addresses are ranges of 128-bit numbers, so a pool of 2^64 costs what one of 2^8 does.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_proto::names::{EXPOSE_ID, short_container_id};
use weft_proto::subnet::{
    address, count_text, gateway, number, pool_bounds, pool_size, reserved_reason,
};

/// Who holds an address: (container id, peer).
pub type Holder = (String, String);

/// Addresses a request has taken so far, before any of it is recorded.
pub type Taken = BTreeMap<IpAddr, Holder>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("address {ip} is outside network {network} ({subnet})")]
    Outside {
        ip: IpAddr,
        network: String,
        subnet: IpNetwork,
    },
    #[error("address {ip} {reason} of {subnet}")]
    Reserved {
        ip: IpAddr,
        reason: &'static str,
        subnet: IpNetwork,
    },
    #[error("address {ip} already in use by {} on {}", short_container_id(&.holder.0), .holder.1)]
    InUse { ip: IpAddr, holder: Holder },
    #[error("network {network} ({subnet}) has no free address: all {} are in use", count_text(*.pool))]
    Exhausted {
        network: String,
        subnet: IpNetwork,
        pool: u128,
    },
}

/// The held addresses of one network.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub network: String,
    pub subnet: IpNetwork,
    held: BTreeMap<IpAddr, Holder>,
    /// The addresses containers can have that nobody holds, as disjoint ranges (first → last,
    /// inclusive), so that the lowest free one is found without walking every held address.
    free: BTreeMap<u128, u128>,
}

impl Pool {
    pub fn new(network: &str, subnet: IpNetwork) -> Pool {
        let (first, last) = pool_bounds(subnet);
        Pool {
            network: network.to_string(),
            subnet,
            held: BTreeMap::new(),
            free: (first <= last)
                .then_some((first, last))
                .into_iter()
                .collect(),
        }
    }

    /// Records an address as held, as the tables say it is (no checks: they were made when it
    /// was claimed).
    pub fn note_held(&mut self, ip: IpAddr, holder: Holder) {
        self.held.insert(ip, holder);
        let ip = number(ip);
        let Some((&start, &end)) = self.free.range(..=ip).next_back() else {
            return;
        };
        if ip > end {
            return;
        }
        self.free.remove(&start);
        if start < ip {
            self.free.insert(start, ip - 1);
        }
        if ip < end {
            self.free.insert(ip + 1, end);
        }
    }

    pub fn used(&self) -> usize {
        self.held.len()
    }

    /// How many addresses containers can still have: the free ranges' sizes, not a walk.
    pub fn free(&self) -> u128 {
        self.free
            .iter()
            .map(|(&first, &last)| last - first + 1)
            .sum()
    }

    /// Who holds `ip`, counting what the request under way has `taken`.
    fn holder_with<'a>(&'a self, ip: IpAddr, taken: &'a Taken) -> Option<&'a Holder> {
        taken.get(&ip).or_else(|| self.held.get(&ip))
    }

    /// Checks that `holder` may have `ip`; true if it does not hold it yet. An address the same
    /// holder already has is fine (so a retried attach is harmless). The gateway address is a
    /// host's only. Changes nothing: the caller adds the address to `taken`.
    pub fn claim(&self, ip: IpAddr, holder: &Holder, taken: &Taken) -> Result<bool, IpamError> {
        if !self.subnet.contains(ip) {
            return Err(IpamError::Outside {
                ip,
                network: self.network.clone(),
                subnet: self.subnet,
            });
        }
        let host_at_gateway = holder.0 == EXPOSE_ID && ip == gateway(self.subnet);
        if let Some(reason) = reserved_reason(self.subnet, ip).filter(|_| !host_at_gateway) {
            return Err(IpamError::Reserved {
                ip,
                reason,
                subnet: self.subnet,
            });
        }
        match self.holder_with(ip, taken) {
            Some(h) if h == holder => Ok(false),
            Some(h) => Err(IpamError::InUse {
                ip,
                holder: h.clone(),
            }),
            None => Ok(true),
        }
    }

    /// The lowest free address, not counting what the request under way has `taken`; a host
    /// exposing itself gets the gateway address while it is free. Changes nothing.
    pub fn allocate(&self, holder: &Holder, taken: &Taken) -> Result<IpAddr, IpamError> {
        let gw = gateway(self.subnet);
        if holder.0 == EXPOSE_ID && self.holder_with(gw, taken).is_none() {
            return Ok(gw);
        }
        // The request has taken only a few addresses: this looks at no more than those.
        let lowest = self
            .free
            .iter()
            .flat_map(|(&start, &end)| start..=end)
            .map(|n| address(self.subnet, n))
            .find(|ip| !taken.contains_key(ip));
        if let Some(ip) = lowest {
            return Ok(ip);
        }
        Err(IpamError::Exhausted {
            network: self.network.clone(),
            subnet: self.subnet,
            pool: pool_size(self.subnet),
        })
    }

    pub fn release(&mut self, ip: IpAddr) {
        if self.held.remove(&ip).is_none() {
            return;
        }
        let ip = number(ip);
        let (first, last) = pool_bounds(self.subnet);
        if !(first..=last).contains(&ip) {
            return;
        }
        // Joined with the free ranges that end just below and start just above it.
        let (mut start, mut end) = (ip, ip);
        if let Some((&s, &e)) = self.free.range(..ip).next_back()
            && e.checked_add(1) == Some(ip)
        {
            self.free.remove(&s);
            start = s;
        }
        if let Some(e) = ip.checked_add(1).and_then(|above| self.free.remove(&above)) {
            end = e;
        }
        self.free.insert(start, end);
    }
}

#[cfg(test)]
mod tests {

    use proptest::prelude::*;

    use super::*;

    fn holder(n: usize) -> Holder {
        (format!("c{n}"), "host1".to_string())
    }

    fn pool(subnet: &str) -> Pool {
        Pool::new("net", subnet.parse().unwrap())
    }

    /// Claims and records, as a request that claims one address does.
    fn take(p: &mut Pool, ip: IpAddr, h: &Holder) -> Result<(), IpamError> {
        p.claim(ip, h, &Taken::new())?;
        p.note_held(ip, h.clone());
        Ok(())
    }

    /// Allocates and records, as a request that allocates one address does.
    fn alloc(p: &mut Pool, h: &Holder) -> Result<IpAddr, IpamError> {
        let ip = p.allocate(h, &Taken::new())?;
        p.note_held(ip, h.clone());
        Ok(ip)
    }

    #[test]
    fn what_a_request_has_taken_counts_before_it_is_recorded() {
        let p = pool("10.0.0.0/29");
        let mut taken = Taken::new();
        let first = p.allocate(&holder(1), &taken).unwrap();
        taken.insert(first, holder(1));
        let second = p.allocate(&holder(1), &taken).unwrap();
        assert_eq!(
            (first.to_string(), second.to_string()),
            ("10.0.0.2".into(), "10.0.0.3".into())
        );
        assert_eq!(
            p.claim(first, &holder(2), &taken).unwrap_err().to_string(),
            "address 10.0.0.2 already in use by c1 on host1"
        );
        assert_eq!(p.used(), 0, "nothing recorded");
    }

    #[test]
    fn claims_are_checked_and_name_the_problem() {
        let mut p = pool("192.168.0.0/24");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(take(&mut p, ip("192.168.0.2"), &holder(1)), Ok(()));
        assert_eq!(
            take(&mut p, ip("192.168.0.2"), &holder(1)),
            Ok(()),
            "same holder again"
        );
        assert_eq!(
            take(&mut p, ip("192.168.0.2"), &holder(2))
                .unwrap_err()
                .to_string(),
            "address 192.168.0.2 already in use by c1 on host1"
        );
        assert_eq!(
            take(&mut p, ip("192.168.1.2"), &holder(2))
                .unwrap_err()
                .to_string(),
            "address 192.168.1.2 is outside network net (192.168.0.0/24)"
        );
        assert_eq!(
            take(&mut p, ip("192.168.0.255"), &holder(2))
                .unwrap_err()
                .to_string(),
            "address 192.168.0.255 is the broadcast address of 192.168.0.0/24"
        );
        assert_eq!(
            take(&mut p, ip("192.168.0.0"), &holder(2))
                .unwrap_err()
                .to_string(),
            "address 192.168.0.0 is the network address of 192.168.0.0/24"
        );
        assert_eq!(
            take(&mut p, ip("192.168.0.1"), &holder(2))
                .unwrap_err()
                .to_string(),
            "address 192.168.0.1 is the gateway address, kept for the host of 192.168.0.0/24"
        );
    }

    #[test]
    fn the_gateway_address_goes_to_the_first_host_that_exposes_itself() {
        let mut p = pool("192.168.0.0/24");
        let host = |peer: &str| (EXPOSE_ID.to_string(), peer.to_string());
        let gw: IpAddr = "192.168.0.1".parse().unwrap();
        assert_eq!(alloc(&mut p, &host("host1")), Ok(gw));
        assert_eq!(
            alloc(&mut p, &host("host2")).unwrap().to_string(),
            "192.168.0.2"
        );
        assert_eq!(
            take(&mut p, gw, &host("host3")).unwrap_err().to_string(),
            "address 192.168.0.1 already in use by weft:expose on host1"
        );
        p.release(gw);
        assert_eq!(take(&mut p, gw, &host("host3")), Ok(()));
        assert!(take(&mut p, gw, &holder(1)).is_err(), "never a container's");
    }

    #[test]
    fn allocation_takes_the_lowest_free_address_and_fills_gaps() {
        let mut p = pool("10.0.0.0/29");
        let got: Vec<_> = (0..5)
            .map(|n| alloc(&mut p, &holder(n)).unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(
            alloc(&mut p, &holder(9)).unwrap_err().to_string(),
            "network net (10.0.0.0/29) has no free address: all 5 are in use"
        );
        p.release("10.0.0.4".parse().unwrap());
        assert_eq!(alloc(&mut p, &holder(9)).unwrap().to_string(), "10.0.0.4");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate(usize),
        Claim(usize, u8),
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..40usize).prop_map(Op::Allocate),
            (0..40usize, any::<u8>()).prop_map(|(h, last)| Op::Claim(h, last)),
            (0..40usize).prop_map(Op::Release),
        ]
    }

    /// Address `last` (32 to 63) of the model's subnet: 10.1.0.32/27, or fd00:1::20/123.
    fn model_addr(v6: bool, last: u8) -> IpAddr {
        match v6 {
            false => std::net::Ipv4Addr::new(10, 1, 0, last).into(),
            true => std::net::Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, last.into()).into(),
        }
    }

    proptest! {
        /// Random allocate/claim/release sequences on an IPv4 /27 (29 addresses) or an IPv6
        /// /123 (30: no broadcast): no address is ever held twice, nothing reserved is handed
        /// out, released addresses are reusable, and exhaustion is reported exactly when the
        /// pool is full. The oracle is written out by hand, not taken from the subnet rules the
        /// pool uses.
        #[test]
        fn never_twice_and_exhausted_exactly_at_pool_size(
            v6 in any::<bool>(),
            ops in prop::collection::vec(op(), 1..300),
        ) {
            let subnet: IpNetwork = if v6 { "fd00:1::20/123" } else { "10.1.0.32/27" }.parse().unwrap();
            let mut p = Pool::new("net", subnet);
            // The network address is .32 (::20), the gateway .33 (::21); IPv4's .63 is the
            // broadcast address, IPv6's ::3f a container's.
            let top = if v6 { 63 } else { 62 };
            let usable = |ip: IpAddr| (34..=top).any(|last| model_addr(v6, last) == ip);
            let pool = usize::from(top) - 33;
            // The model: which holder has which addresses.
            let mut model: BTreeMap<IpAddr, usize> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Allocate(h) => match alloc(&mut p, &holder(h)) {
                        Ok(ip) => {
                            prop_assert!(!model.contains_key(&ip), "{ip} handed out twice");
                            let lowest = (34..=top).map(|d| model_addr(v6, d)).find(|a| !model.contains_key(a));
                            prop_assert_eq!(Some(ip), lowest, "not the lowest free address");
                            prop_assert!(usable(ip), "{ip} is not to be handed out");
                            model.insert(ip, h);
                        }
                        Err(IpamError::Exhausted { pool: size, .. }) => {
                            prop_assert_eq!(model.len(), pool, "exhausted before the pool was full");
                            prop_assert_eq!(size as usize, pool);
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    },
                    Op::Claim(h, last) => {
                        let ip = model_addr(v6, last);
                        let result = take(&mut p, ip, &holder(h));
                        let expect_ok = usable(ip) && model.get(&ip).is_none_or(|held| *held == h);
                        prop_assert_eq!(result.is_ok(), expect_ok, "claim {} by {}: {:?}", ip, h, result);
                        if expect_ok {
                            model.insert(ip, h);
                        }
                    }
                    Op::Release(h) => {
                        let mine: Vec<IpAddr> = model.iter().filter(|(_, held)| **held == h).map(|(ip, _)| *ip).collect();
                        for ip in mine {
                            p.release(ip);
                            model.remove(&ip);
                        }
                    }
                }
                prop_assert_eq!(p.used(), model.len());
            }
            // Everything released is reusable: after releasing all, the whole pool allocates.
            for ip in model.keys() {
                p.release(*ip);
            }
            for n in 0..pool {
                prop_assert!(alloc(&mut p, &holder(n)).is_ok());
            }
            prop_assert!(alloc(&mut p, &holder(0)).is_err());
        }

        /// An IPv6 pool of any size, /48 to /120, costs what its holes cost: after any
        /// allocations and releases it keeps at most one free range per released address plus
        /// one, and counts its free addresses exactly, never walking them.
        #[test]
        fn an_ipv6_pool_grows_with_its_holes_not_its_size(
            prefix in 48u8..=120,
            allocated in 1usize..60,
            released in prop::collection::btree_set(0usize..60, 0..20),
        ) {
            let subnet = IpNetwork::new("2001:db8:7::".parse().unwrap(), prefix).unwrap();
            let mut p = Pool::new("net", subnet);
            let ips: Vec<IpAddr> = (0..allocated).map(|n| alloc(&mut p, &holder(n)).unwrap()).collect();
            let mut holes = 0;
            for n in released.iter().filter(|n| **n < allocated) {
                p.release(ips[*n]);
                holes += 1;
            }
            prop_assert!(p.free.len() <= holes + 1, "{} free ranges for {holes} holes", p.free.len());
            prop_assert_eq!(p.free(), pool_size(subnet) - (allocated - holes) as u128);
            prop_assert_eq!(p.used(), allocated - holes);
        }
    }
}
