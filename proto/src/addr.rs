//! The ADDR syntax of attach/detach/expose/hide, as Weave has it:
//! `IP/LEN` or `ip:IP/LEN` (static), `net:CIDR`, `net:default` or `net:NAME` (allocate).
//! weftctl parses it to reject bad input early; the agent and controller parse the same strings.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnetwork::Ipv4Network;

/// One ADDR argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrSpec {
    /// A fixed address with the prefix length of its subnet, e.g. 192.168.0.2/24.
    Static(Ipv4Network),
    /// Any free address of a network.
    Allocate(NetRef),
}

/// The network `net:` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetRef {
    Default,
    Subnet(Ipv4Network),
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

/// Parses `IP/LEN`, keeping the host bits (an address within its subnet).
pub fn parse_cidr(input: &str, whole: &str) -> Result<Ipv4Network, AddrError> {
    let Some((ip, len)) = input.split_once('/') else {
        return Err(invalid(whole, "expected IP/LEN, e.g. 192.168.0.2/24"));
    };
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| invalid(whole, format!("\"{ip}\" is not an IPv4 address")))?;
    let len: u8 = len
        .parse()
        .map_err(|_| invalid(whole, format!("\"{len}\" is not a prefix length")))?;
    Ipv4Network::new(ip, len).map_err(|_| invalid(whole, "prefix length must be 0 to 32"))
}

/// Parses `IP/LEN` as a subnet: the host bits must be zero. `whole` is the argument to name in
/// the error.
pub fn parse_subnet(input: &str, whole: &str) -> Result<Ipv4Network, AddrError> {
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

    fn cidr(s: &str) -> Ipv4Network {
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
        ] {
            assert_eq!(s.parse::<AddrSpec>().unwrap().to_string(), s);
        }
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
