//! What a runtime hands the plugin, converted once into typed values: the `CNI_*` environment
//! and the network configuration on stdin. Every refusal names the variable or key at fault,
//! with the spec's code.

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_proto::names::check_ifname;

use crate::error::{CniError, code};

/// The spec versions this plugin speaks; results are written in the one the configuration
/// names.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The agent's socket when the configuration names none.
pub const DEFAULT_SOCKET: &str = "/run/weft/agent.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!(
                        "CNI_COMMAND \"{other}\" is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
                    ),
                ));
            }
        })
    }

    /// The first spec version that has the command.
    fn since(self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
            _ => "0.3.0",
        }
    }
}

/// The `CNI_*` environment of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// Empty: not given (DEL may lack it).
    pub netns: String,
    pub ifname: String,
    pub args: Args,
}

/// The `CNI_ARGS` weft reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Args {
    /// `IP=` (a comma-separated list, as the static IPAM plugin takes it).
    pub ips: Vec<String>,
    pub pod_name: String,
    pub pod_namespace: String,
}

impl Env {
    /// Reads the environment through `var`; each command's required variables must be there.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = Command::parse(&var("CNI_COMMAND").unwrap_or_default())?;
        let need = |name: &str| {
            var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("{name} is not set: the runtime must give it for {command:?}"),
                )
            })
        };
        let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let (container_id, ifname) = if attachment {
            (need("CNI_CONTAINERID")?, need("CNI_IFNAME")?)
        } else {
            Default::default()
        };
        if attachment {
            check_ifname(&ifname).map_err(|why| {
                CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_IFNAME: {why}"))
            })?;
        }
        let netns = match command {
            Command::Add | Command::Check => need("CNI_NETNS")?,
            _ => var("CNI_NETNS").unwrap_or_default(),
        };
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args: Args::parse(&var("CNI_ARGS").unwrap_or_default())?,
        })
    }
}

impl Args {
    /// `KEY=VALUE;...`. A key weft does not know is an error unless `IgnoreUnknown` is set, as
    /// the reference plugins have it.
    fn parse(s: &str) -> Result<Args, CniError> {
        let bad =
            |why: String| CniError::new(code::INVALID_ENVIRONMENT, format!("CNI_ARGS: {why}"));
        let mut pairs = BTreeMap::new();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("\"{pair}\" is not KEY=VALUE")))?;
            pairs.insert(k, v);
        }
        let ignore_unknown = pairs
            .get("IgnoreUnknown")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"));
        let mut args = Args::default();
        for (k, v) in pairs {
            match k {
                "IP" => args.ips = v.split(',').map(str::to_string).collect(),
                "K8S_POD_NAME" => args.pod_name = v.to_string(),
                "K8S_POD_NAMESPACE" => args.pod_namespace = v.to_string(),
                "IgnoreUnknown" | "K8S_POD_INFRA_CONTAINER_ID" | "K8S_POD_UID" => {}
                unknown if !ignore_unknown => {
                    return Err(bad(format!("unknown key {unknown} (set IgnoreUnknown=1)")));
                }
                _ => {}
            }
        }
        Ok(args)
    }
}

/// The network configuration, as weft reads it (other plugins' keys are left alone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub socket: Option<String>,
    /// The weft network; none: `default`.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default, rename = "default_route")]
    pub default_route: bool,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<PrevResult>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeConfig {
    /// The `ips` capability: `IP/LEN` or `IP`.
    #[serde(default)]
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// What an earlier ADD reported, as CHECK compares it (any version's form).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub interfaces: Vec<PrevInterface>,
    #[serde(default)]
    pub ips: Vec<PrevIp>,
    #[serde(default)]
    pub routes: Vec<PrevRoute>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PrevInterface {
    pub name: String,
    #[serde(default)]
    pub sandbox: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PrevIp {
    pub address: String,
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PrevRoute {
    pub dst: String,
    #[serde(default)]
    pub gw: Option<String>,
}

impl NetConf {
    /// Decodes stdin. Broken JSON is a decoding failure; a key of the wrong type is named.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("cannot decode the network configuration on stdin: {e}"),
            )
        })?;
        serde_path_to_error::deserialize(value).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("network configuration key {}: {}", e.path(), e.inner()),
            )
        })
    }

    /// The configuration's version must be one this plugin speaks, and have the command.
    pub fn check_version(&self, command: Command) -> Result<(), CniError> {
        if self.cni_version.is_empty() {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "the network configuration has no cniVersion",
            ));
        }
        if !SUPPORTED_VERSIONS.contains(&self.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {} is not supported: weft supports {}",
                    self.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let since = command.since();
        if version_key(&self.cni_version) < version_key(since) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{command:?} needs cniVersion {since} or later; the configuration says {}",
                    self.cni_version
                ),
            ));
        }
        Ok(())
    }

    pub fn socket(&self) -> &str {
        self.socket.as_deref().unwrap_or(DEFAULT_SOCKET)
    }

    pub fn network(&self) -> &str {
        self.network.as_deref().unwrap_or("")
    }
}

/// A supported version as comparable numbers.
fn version_key(v: &str) -> Vec<u32> {
    v.split('.').map(|n| n.parse().unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::read(|name| vars.get(name).cloned())
    }

    #[test]
    fn each_command_needs_its_variables() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.9.0.5,10.9.0.6;X=y",
            ),
        ];
        let e = env(&add).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.args.ips, ["10.9.0.5", "10.9.0.6"]);
        assert_eq!(e.args.pod_name, "web");
        let missing = env(&add[..3]).unwrap_err();
        assert_eq!(missing.code, code::INVALID_ENVIRONMENT);
        assert_eq!(
            missing.msg,
            "CNI_IFNAME is not set: the runtime must give it for Add"
        );
        // DEL may come without a namespace; VERSION needs nothing.
        assert!(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0")
            ])
            .is_ok()
        );
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert_eq!(
            env(&[("CNI_COMMAND", "FOO")]).unwrap_err().msg,
            "CNI_COMMAND \"FOO\" is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
        );
        let mut bad_if = add;
        bad_if[3] = ("CNI_IFNAME", "eth0/x");
        assert!(
            env(&bad_if)
                .unwrap_err()
                .msg
                .starts_with("CNI_IFNAME: invalid interface name")
        );
        let mut unknown = add;
        unknown[4] = ("CNI_ARGS", "FOO=1");
        assert_eq!(
            env(&unknown).unwrap_err().msg,
            "CNI_ARGS: unknown key FOO (set IgnoreUnknown=1)"
        );
    }

    #[test]
    fn configurations_are_decoded_or_named() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"weft","type":"weft","network":"blue",
                "ipMasq":true,"runtimeConfig":{"ips":["10.9.0.5/24"],"portMappings":[]},
                "capabilities":{"ips":true}}"#,
        )
        .unwrap();
        assert_eq!(conf.network(), "blue");
        assert!(conf.ip_masq && !conf.default_route);
        assert_eq!(conf.runtime_config.ips, ["10.9.0.5/24"]);
        assert_eq!(conf.socket(), DEFAULT_SOCKET);
        let broken = NetConf::parse(b"{\"cniVersion\":").unwrap_err();
        assert_eq!(broken.code, code::DECODING_FAILURE);
        let typed = NetConf::parse(br#"{"cniVersion":"1.0.0","ipMasq":"yes"}"#).unwrap_err();
        assert_eq!(typed.code, code::INVALID_CONFIG);
        assert!(
            typed
                .msg
                .starts_with("network configuration key ipMasq: invalid type"),
            "{}",
            typed.msg
        );
    }

    #[test]
    fn versions_are_checked_per_command() {
        let conf = |v: &str| NetConf {
            cni_version: v.into(),
            ..NetConf::default()
        };
        assert!(conf("1.0.0").check_version(Command::Add).is_ok());
        assert!(conf("0.3.1").check_version(Command::Add).is_ok());
        assert_eq!(
            conf("0.3.1").check_version(Command::Check).unwrap_err().msg,
            "Check needs cniVersion 0.4.0 or later; the configuration says 0.3.1"
        );
        assert!(conf("1.0.0").check_version(Command::Gc).is_err());
        assert!(conf("1.1.0").check_version(Command::Gc).is_ok());
        let old = conf("0.2.0").check_version(Command::Add).unwrap_err();
        assert_eq!(old.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(
            old.msg,
            "cniVersion 0.2.0 is not supported: weft supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
        );
    }
}
