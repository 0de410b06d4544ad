//! The ADDR syntax of attach/detach/expose/hide, as Weave has it:
//! `IP/LEN` or `ip:IP/LEN` (static), `net:CIDR`, `net:default` or `net:NAME` (allocate), with
//! IPv4 or IPv6 addresses. weftctl parses it to reject bad input early; the agent and controller
//! parse the same strings.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;

/// One ADDR argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrSpec {
    /// A fixed address with the prefix length of its subnet, e.g. 192.168.0.2/24 or
    /// fd00:9::5/64.
    Static(IpNetwork),
    /// Any free address of a network.
    Allocate(NetRef),
}

/// The network `net:` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetRef {
    Default,
    Subnet(IpNetwork),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address \"{input}\": {reason}")]
pub struct AddrError {
    pub input: String,
    pub reason: String,
}

fn invalid(input: &str, reason: impl Into<String>) -> AddrError {
    AddrError {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// Parses an address a person typed, naming the family it evidently meant when it does not read
/// (`"192.168.0.300" is not an IPv4 address`). An IPv4-mapped IPv6 address is refused: it is an
/// IPv4 address in disguise, which the IPv4 form names.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s.parse().map_err(|_| {
        let family = match (s.contains(':'), s.contains('.')) {
            (true, _) => "an IPv6 address",
            (false, true) => "an IPv4 address",
            (false, false) => "an IP address",
        };
        format!("\"{s}\" is not {family}")
    })?;
    match ip {
        IpAddr::V6(v6) if let Some(v4) = v6.to_ipv4_mapped() => {
            Err(format!("{v6} is an IPv4-mapped IPv6 address; write {v4}"))
        }
        _ => Ok(ip),
    }
}

/// Parses `IP/LEN`, keeping the host bits (an address within its subnet).
pub fn parse_cidr(input: &str, whole: &str) -> Result<IpNetwork, AddrError> {
    let Some((ip, len)) = input.split_once('/') else {
        return Err(invalid(whole, "expected IP/LEN, e.g. 192.168.0.2/24"));
    };
    let ip = parse_ip(ip).map_err(|why| invalid(whole, why))?;
    let len: u8 = len
        .parse()
        .map_err(|_| invalid(whole, format!("\"{len}\" is not a prefix length")))?;
    let most = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, len)
        .map_err(|_| invalid(whole, format!("prefix length must be 0 to {most}")))
}

/// Parses `IP/LEN` as a subnet: the host bits must be zero. `whole` is the argument to name in
/// the error.
pub fn parse_subnet(input: &str, whole: &str) -> Result<IpNetwork, AddrError> {
    let net = parse_cidr(input, whole)?;
    if net.ip() != net.network() {
        return Err(invalid(
            whole,
            format!(
                "host bits set; the subnet is {}/{}",
                net.network(),
                net.prefix()
            ),
        ));
    }
    Ok(net)
}

impl FromStr for AddrSpec {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(net) = s.strip_prefix("net:") {
            if net == "default" {
                return Ok(AddrSpec::Allocate(NetRef::Default));
            }
            if net.contains('/') {
                return Ok(AddrSpec::Allocate(NetRef::Subnet(parse_subnet(net, s)?)));
            }
            if net.is_empty() {
                return Err(invalid(s, "expected net:CIDR, net:default or net:NAME"));
            }
            return Ok(AddrSpec::Allocate(NetRef::Name(net.to_string())));
        }
        let cidr = s.strip_prefix("ip:").unwrap_or(s);
        Ok(AddrSpec::Static(parse_cidr(cidr, s)?))
    }
}

impl fmt::Display for AddrSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrSpec::Static(net) => write!(f, "{net}"),
            AddrSpec::Allocate(NetRef::Default) => write!(f, "net:default"),
            AddrSpec::Allocate(NetRef::Subnet(net)) => write!(f, "net:{net}"),
            AddrSpec::Allocate(NetRef::Name(name)) => write!(f, "net:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_form_of_the_syntax() {
        assert_eq!(
            "192.168.0.2/24".parse::<AddrSpec>().unwrap(),
            AddrSpec::Static(cidr("192.168.0.2/24"))
        );
        assert_eq!(
            "ip:10.32.0.5/12".parse::<AddrSpec>().unwrap(),
            AddrSpec::Static(cidr("10.32.0.5/12"))
        );
        assert_eq!(
            "net:default".parse::<AddrSpec>().unwrap(),
            AddrSpec::Allocate(NetRef::Default)
        );
        assert_eq!(
            "net:10.2.0.0/16".parse::<AddrSpec>().unwrap(),
            AddrSpec::Allocate(NetRef::Subnet(cidr("10.2.0.0/16")))
        );
        assert_eq!(
            "net:blue".parse::<AddrSpec>().unwrap(),
            AddrSpec::Allocate(NetRef::Name("blue".into()))
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "192.168.0.2/24",
            "net:default",
            "net:10.2.0.0/16",
            "net:blue",
            "fd00:9::5/64",
            "net:fd00:9::/64",
            "2001:db8:0:1::/126",
        ] {
            assert_eq!(s.parse::<AddrSpec>().unwrap().to_string(), s);
        }
    }

    proptest::proptest! {
        /// Any IPv6 address and prefix length, static or as a subnet, in the form the address
        /// prints in, is accepted and prints back as itself; text of any other shape gives an
        /// error or a value that prints back as it parsed.
        #[test]
        fn ipv6_addrs_print_back_as_themselves(
            bits in proptest::prelude::any::<u128>(),
            len in 0u8..=128,
            noise in "[0-9a-f:./netip]{0,24}",
        ) {
            let ip = std::net::Ipv6Addr::from(bits);
            if ip.to_ipv4_mapped().is_none() {
                let text = format!("{ip}/{len}");
                let parsed: AddrSpec = text.parse().unwrap();
                proptest::prop_assert_eq!(parsed.to_string(), text);
                let net = ipnetwork::Ipv6Network::new(ip, len).unwrap().network();
                let subnet = format!("net:{net}/{len}");
                proptest::prop_assert_eq!(subnet.parse::<AddrSpec>().unwrap().to_string(), subnet);
            }
            if let Ok(spec) = noise.parse::<AddrSpec>() {
                proptest::prop_assert_eq!(spec.to_string().parse::<AddrSpec>().unwrap(), spec);
            }
        }
    }

    #[test]
    fn ipv6_forms_and_their_errors() {
        let err = |s: &str| s.parse::<AddrSpec>().unwrap_err().to_string();
        assert_eq!(
            "ip:fd00:9::5/64".parse::<AddrSpec>().unwrap(),
            AddrSpec::Static(cidr("fd00:9::5/64"))
        );
        assert_eq!(
            err("fd00:9::5/129"),
            "invalid address \"fd00:9::5/129\": prefix length must be 0 to 128"
        );
        assert_eq!(
            err("net:fd00:9::1/64"),
            "invalid address \"net:fd00:9::1/64\": host bits set; the subnet is fd00:9::/64"
        );
        assert_eq!(
            err("::ffff:192.168.0.2/120"),
            "invalid address \"::ffff:192.168.0.2/120\": ::ffff:192.168.0.2 is an IPv4-mapped \
             IPv6 address; write 192.168.0.2"
        );
        assert_eq!(
            err("fd00:9::g/64"),
            "invalid address \"fd00:9::g/64\": \"fd00:9::g\" is not an IPv6 address"
        );
    }

    #[test]
    fn errors_name_the_input_and_the_problem() {
        let err = |s: &str| s.parse::<AddrSpec>().unwrap_err().to_string();
        assert_eq!(
            err("192.168.0.300/24"),
            "invalid address \"192.168.0.300/24\": \"192.168.0.300\" is not an IPv4 address"
        );
        assert_eq!(
            err("192.168.0.2"),
            "invalid address \"192.168.0.2\": expected IP/LEN, e.g. 192.168.0.2/24"
        );
        assert_eq!(
            err("192.168.0.2/33"),
            "invalid address \"192.168.0.2/33\": prefix length must be 0 to 32"
        );
        assert_eq!(
            err("192.168.0.2/x"),
            "invalid address \"192.168.0.2/x\": \"x\" is not a prefix length"
        );
        assert_eq!(
            err("net:10.2.0.1/16"),
            "invalid address \"net:10.2.0.1/16\": host bits set; the subnet is 10.2.0.0/16"
        );
        assert_eq!(
            err("net:"),
            "invalid address \"net:\": expected net:CIDR, net:default or net:NAME"
        );
    }
}
