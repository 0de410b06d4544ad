//! weft-cni, installed as `/opt/cni/bin/weft`: the CNI plugin that makes weft the network of a
//! pod or Podman container. It does no netlink and no IPAM: each command is one call to the
//! local weft-agent, which plugs the interface through the same core as `weftctl attach`.
//!
//! The runtime runs it with `CNI_*` variables and the network configuration on stdin
//! ([`conf`]); it prints a result ([`result`]) or an error object ([`error`]) on stdout and
//! exits non-zero on error.

mod conf;
mod error;
mod result;

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{
    CniAddRequest, CniAttachment, CniCheckRequest, CniDelRequest, CniGcRequest, CniRoute,
    StatusRequest,
};

use conf::{Command, Env, NetConf, SUPPORTED_VERSIONS};
use error::{CniError, code, from_status};

/// The version errors are written in when the configuration names none it can be written in.
const NEWEST: &str = "1.1.0";

type Agent = AgentClient<tonic::transport::Channel>;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("weft-cni {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let conf = NetConf::parse(&stdin);
    let version = match &conf {
        Ok(c) if SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()) => c.cni_version.clone(),
        _ => NEWEST.to_string(),
    };
    let outcome = match read {
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            format!("cannot read stdin: {e}"),
        )),
        Ok(_) => Env::read(|name| std::env::var(name).ok()).and_then(|env| run(env, conf)),
    };
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn run(env: Env, conf: Result<NetConf, CniError>) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        // VERSION may come with no configuration at all.
        let asked = conf.map(|c| c.cni_version).unwrap_or_default();
        let version = if asked.is_empty() {
            NEWEST.into()
        } else {
            asked
        };
        return Ok(Some(json!({
            "cniVersion": version,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = conf?;
    conf.check_version(env.command)?;
    if matches!(env.command, Command::Add | Command::Check) {
        check_netns(&env.netns)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot start: {e}")))?;
    runtime.block_on(command(env, conf))
}

async fn command(env: Env, conf: NetConf) -> Result<Option<Value>, CniError> {
    let unreachable = match env.command {
        Command::Status => code::NOT_AVAILABLE,
        _ => code::TRY_AGAIN_LATER,
    };
    let mut agent = connect(conf.socket(), unreachable).await?;
    let attachment = || {
        Some(CniAttachment {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
        })
    };
    match env.command {
        Command::Add => {
            let mut ips = conf.runtime_config.ips.clone();
            ips.extend(env.args.ips.iter().cloned());
            let request = CniAddRequest {
                attachment: attachment(),
                netns: env.netns.clone(),
                network: conf.network().to_string(),
                ips,
                pod_name: env.args.pod_name.clone(),
                pod_namespace: env.args.pod_namespace.clone(),
                default_route: conf.default_route,
                ip_masq: conf.ip_masq,
            };
            let done = agent
                .cni_add(request)
                .await
                .map_err(|s| from_status("weft-agent could not add the attachment", &s))?
                .into_inner();
            Ok(Some(result::add_result(
                &conf.cni_version,
                &done,
                &env.ifname,
                &env.netns,
            )))
        }
        Command::Del => {
            let request = CniDelRequest {
                attachment: attachment(),
                netns: env.netns.clone(),
            };
            agent
                .cni_del(request)
                .await
                .map_err(|s| from_status("weft-agent could not delete the attachment", &s))?;
            Ok(None)
        }
        Command::Check => {
            let request = check_request(&env, &conf, attachment())?;
            agent
                .cni_check(request)
                .await
                .map_err(|s| from_status("the attachment is not as ADD left it", &s))?;
            Ok(None)
        }
        Command::Gc => {
            let valid = conf
                .valid_attachments
                .iter()
                .map(|a| CniAttachment {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                })
                .collect();
            let request = CniGcRequest {
                network: conf.network().to_string(),
                valid,
            };
            agent
                .cni_gc(request)
                .await
                .map_err(|s| from_status("weft-agent could not collect garbage", &s))?;
            Ok(None)
        }
        Command::Status => {
            let status = agent
                .status(StatusRequest {})
                .await
                .map_err(|s| CniError::new(code::NOT_AVAILABLE, s.message()))?
                .into_inner();
            if !status.connected || !status.refused.is_empty() {
                let why = [status.refused, status.last_error]
                    .into_iter()
                    .find(|w| !w.is_empty())
                    .unwrap_or_else(|| "not connected yet".into());
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!(
                        "weft-agent has no controller at {}: {why}",
                        status.controller_url
                    ),
                ));
            }
            Ok(None)
        }
        Command::Version => unreachable!("answered without the agent"),
    }
}

/// CHECK compares the container with what ADD reported: the addresses of the container's
/// interface and the routes.
fn check_request(
    env: &Env,
    conf: &NetConf,
    attachment: Option<CniAttachment>,
) -> Result<CniCheckRequest, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the network configuration",
        )
    })?;
    let index = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && !i.sandbox.is_empty());
    let cidrs = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == index)
        .map(|ip| ip.address.clone())
        .collect();
    let routes = prev
        .routes
        .iter()
        .map(|r| CniRoute {
            dst: r.dst.clone(),
            gw: r.gw.clone().unwrap_or_default(),
        })
        .collect();
    Ok(CniCheckRequest {
        attachment,
        netns: env.netns.clone(),
        network: conf.network().to_string(),
        cidrs,
        routes,
    })
}

async fn connect(socket: &str, unreachable: u32) -> Result<Agent, CniError> {
    let channel = weft_process::unix_channel(Path::new(socket))
        .await
        .map_err(|e| {
            CniError::new(
                unreachable,
                format!(
                    "cannot reach weft-agent at {socket}: {}",
                    weft_proto::error::root_cause(&e)
                ),
            )
        })?;
    Ok(AgentClient::new(channel))
}

/// CNI_NETNS must be a network namespace now: a missing one is an unknown container, anything
/// else a bad variable.
fn check_netns(path: &str) -> Result<(), CniError> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("CNI_NETNS {path} does not exist"),
        ),
        _ => CniError::new(
            code::IO_FAILURE,
            format!("cannot open CNI_NETNS {path}: {e}"),
        ),
    })?;
    // NS_GET_NSTYPE (ioctl_ns(2)): what kind of namespace the file is, if it is one.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the descriptor is open for the call; the ioctl takes no argument.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    match kind {
        libc::CLONE_NEWNET => Ok(()),
        -1 => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {path} is not a namespace"),
        )),
        _ => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {path} is a namespace, but not a network namespace"),
        )),
    }
}
