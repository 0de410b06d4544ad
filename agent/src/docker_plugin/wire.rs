//! The requests of Docker's plugin protocol (libnetwork's remote network and IPAM drivers) as
//! typed values, read once here; keys are Docker's, in its capitalisation. Unknown keys are
//! ignored (newer Docker versions add some); a key of the wrong type is named.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// Options Docker passes through: `-o KEY=VALUE` arrive as strings under
/// `com.docker.network.generic`, its own settings as other JSON values.
pub type Options = BTreeMap<String, Value>;

/// Where Docker puts `docker network create -o KEY=VALUE`.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// The `RequestAddress` option that marks the network's gateway.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
pub const GATEWAY_ADDRESS: &str = "com.docker.network.gateway";
/// `--ipam-opt weft.network=NAME`: the pool of that weft network; `-o weft.network=NAME`: the
/// pool must be it.
pub const NETWORK_OPTION: &str = "weft.network";
/// `-o weft.masquerade=false`: no masquerading of traffic that leaves the network.
pub const MASQUERADE_OPTION: &str = "weft.masquerade";
/// The `ProgramExternalConnectivity` option listing `-p` mappings.
pub const PORT_MAP: &str = "com.docker.network.portmap";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPool {
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub sub_pool: String,
    #[serde(default, deserialize_with = "or_default")]
    pub options: BTreeMap<String, String>,
    #[serde(default, rename = "V6")]
    pub v6: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReleasePool {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(default)]
    pub address: String,
    #[serde(default, deserialize_with = "or_default")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    /// Which IPAM driver's pool: [`super::ipam::ADDRESS_SPACE`] for weft's.
    #[serde(default)]
    pub address_space: String,
    pub pool: String,
    #[serde(default)]
    pub gateway: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(default, deserialize_with = "or_default")]
    pub options: Options,
    #[serde(default, rename = "IPv4Data")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(default, rename = "IPv6Data")]
    pub ipv6_data: Vec<IpamData>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    #[serde(default)]
    pub address: String,
    #[serde(default, rename = "AddressIPv6")]
    pub address_ipv6: String,
    #[serde(default)]
    pub mac_address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpoint {
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub interface: Option<EndpointInterface>,
}

/// DeleteEndpoint, Join, Leave, EndpointOperInfo, ProgramExternalConnectivity and
/// RevokeExternalConnectivity all name an endpoint of a network.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointRequest {
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default, deserialize_with = "or_default")]
    pub options: Options,
}

/// Docker sends `null` for options it has none of.
fn or_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// Reads a request body; empty (Docker retries a dropped call without its body) is an error.
pub fn read<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the request has no body (Docker resends a dropped call without one)".into());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| match e.path().to_string().as_str() {
        // "?": the JSON broke off before a key was read.
        "." | "?" => format!("the request is not valid JSON: {}", e.inner()),
        path => format!("the request's {path} is not valid: {}", e.inner()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_requests_read_as_docker_sends_them() {
        let create: CreateEndpoint = read(
            br#"{"NetworkID":"4004","EndpointID":"1d52","Interface":{"Address":"10.9.0.5/24",
            "AddressIPv6":"","MacAddress":""},"Options":{"com.docker.network.portmap":[]}}"#,
        )
        .unwrap();
        assert_eq!(create.endpoint_id, "1d52");
        assert_eq!(create.interface.unwrap().address, "10.9.0.5/24");
        let network: CreateNetwork = read(
            br#"{"NetworkID":"4004","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"weft.network":"blue"}},
            "IPv4Data":[{"AddressSpace":"weft","Gateway":"10.9.0.1/24","Pool":"10.9.0.0/24"}],
            "IPv6Data":[]}"#,
        )
        .unwrap();
        assert_eq!(network.ipv4_data[0].pool, "10.9.0.0/24");
        let address: RequestAddress =
            read(br#"{"PoolID":"blue","Address":"","Options":null}"#).unwrap();
        assert!(address.options.is_empty());
        assert_eq!(
            network.options[GENERIC_OPTIONS]["weft.network"],
            Value::from("blue")
        );
    }

    #[test]
    fn a_bad_request_names_what_is_wrong() {
        assert_eq!(
            read::<ReleasePool>(b"").unwrap_err(),
            "the request has no body (Docker resends a dropped call without one)"
        );
        assert_eq!(
            read::<RequestAddress>(br#"{"PoolID":7}"#).unwrap_err(),
            "the request's PoolID is not valid: invalid type: integer `7`, expected a string \
             at line 1 column 11"
        );
        assert_eq!(
            read::<ReleasePool>(b"{").unwrap_err(),
            "the request is not valid JSON: EOF while parsing an object at line 1 column 1"
        );
    }
}
