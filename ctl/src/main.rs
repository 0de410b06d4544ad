mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use weft_proto::addr::AddrSpec;
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{
    CreateNetworkRequest, DeleteNetworkRequest, ExposeRequest, HideRequest, IpamStatusRequest,
    IpamStatusResponse, ListPeersRequest, LocalAttachRequest, LocalDetachRequest, Network,
    NetworkInfo, NetworkListRequest, PsRequest, RemovePeerRequest, ResetRequest, StatusRequest,
};

/// weftctl: the operator's CLI for weft. It talks to the weft-agent on this host.
///
/// CONTAINER is netns:NAME (/var/run/netns/NAME), pid:PID, or the path of a network namespace.
/// ADDR is IP/LEN or ip:IP/LEN (that address), net:CIDR or net:NAME (a free address of that
/// network), or net:default (a free address of the default network; what no ADDR means).
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The agent's unix socket.
    #[arg(
        long,
        env = "WEFT_SOCKET",
        default_value = "/run/weft/agent.sock",
        global = true
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect a container to networks with the given addresses; prints its IPs.
    #[command(override_usage = "weftctl attach [ADDR...] CONTAINER")]
    Attach {
        /// Addresses to give the container, then the container.
        #[arg(required = true, value_name = "ARG")]
        args: Vec<String>,
    },
    /// Release addresses of a container (all, if none are given); prints the IPs released.
    #[command(override_usage = "weftctl detach [ADDR...] CONTAINER")]
    Detach {
        /// Addresses to release, then the container.
        #[arg(required = true, value_name = "ARG")]
        args: Vec<String>,
    },
    /// List the containers attached on this host: id, MAC, addresses (the host first, if exposed).
    Ps,
    /// Give this host addresses on networks' bridges (net:default if none), so it reaches their
    /// containers on every host; prints the IPs.
    #[command(override_usage = "weftctl expose [ADDR...]")]
    Expose {
        #[arg(value_name = "ADDR")]
        addrs: Vec<String>,
    },
    /// Take exposed addresses off the bridges (all, if none are given); prints the IPs removed.
    #[command(override_usage = "weftctl hide [ADDR...]")]
    Hide {
        #[arg(value_name = "ADDR")]
        addrs: Vec<String>,
    },
    /// Detach everything on this host, remove every kernel object weft made here, stop the agent.
    Reset,
    /// Create, list and remove networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Show this host's agent, its controller connection, peers, networks and IPAM; or, with a
    /// subcommand, one of them in detail.
    Status {
        #[command(subcommand)]
        detail: Option<StatusCommand>,
    },
    /// Forget a peer whose agent is gone; its addresses return to the pool.
    Rmpeer {
        #[arg(value_name = "PEER")]
        peer: String,
    },
}

#[derive(Subcommand, Debug)]
enum NetworkCommand {
    /// Create a network with its own VNI; prints NAME SUBNET vni=N.
    Create {
        name: String,
        #[arg(long, value_name = "CIDR")]
        subnet: String,
    },
    /// List networks: NAME SUBNET VNI ENDPOINTS.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a network that has no endpoints.
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
enum StatusCommand {
    /// Address use: range, and used and free addresses per network and per peer.
    Ipam,
    /// Networks with their endpoints and used and free addresses.
    Networks,
    /// Peers: address, whether their agent is connected (or since when it is gone), endpoints.
    Peers,
}

/// A failure to report as `weftctl: <what>: <why>`.
struct Failure {
    what: String,
    why: String,
}

impl Failure {
    fn new(what: impl Into<String>, why: impl Into<String>) -> Self {
        Failure {
            what: what.into(),
            why: why.into(),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("weftctl: {}: {}", f.what, f.why);
            ExitCode::FAILURE
        }
    }
}

/// Splits `[ADDR...] CONTAINER` and checks the addresses before anything is asked of the agent.
fn addrs_and_container(
    mut args: Vec<String>,
    verb: &str,
) -> Result<(Vec<String>, String, String), Failure> {
    let container = args.pop().expect("clap requires at least one argument");
    let what = format!("{verb} {container}");
    check_addrs(&args, &what)?;
    Ok((args, container, what))
}

fn check_addrs(addrs: &[String], what: &str) -> Result<(), Failure> {
    for addr in addrs {
        addr.parse::<AddrSpec>()
            .map_err(|e| Failure::new(what, e.to_string()))?;
    }
    Ok(())
}

async fn ipam_status(
    agent: &mut AgentClient<Channel>,
    what: &str,
) -> Result<IpamStatusResponse, Failure> {
    Ok(agent
        .ipam_status(IpamStatusRequest {})
        .await
        .map_err(|s| Failure::new(what, s.message()))?
        .into_inner())
}

/// Each network with its usage.
fn networks_of(infos: &[NetworkInfo]) -> impl Iterator<Item = (&Network, &NetworkInfo)> {
    infos.iter().filter_map(|i| Some((i.network.as_ref()?, i)))
}

/// A duration as people say it: 42s, 5m12s, 3h4m.
fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}

fn free(info: &NetworkInfo) -> u64 {
    info.pool.saturating_sub(info.used)
}

async fn run(cli: Cli) -> Result<String, Failure> {
    // Bad input is reported as such, also when the agent is down.
    match &cli.command {
        Command::Attach { args } => drop(addrs_and_container(args.clone(), "attach")?),
        Command::Detach { args } => drop(addrs_and_container(args.clone(), "detach")?),
        Command::Expose { addrs } => check_addrs(addrs, "expose")?,
        Command::Hide { addrs } => check_addrs(addrs, "hide")?,
        _ => {}
    }
    let mut agent = connect(&cli.socket).await?;
    let fail = |what: &str| {
        let what = what.to_string();
        move |s: tonic::Status| Failure::new(what, s.message())
    };
    match cli.command {
        Command::Attach { args } => {
            let (addrs, container, what) = addrs_and_container(args, "attach")?;
            let reply = agent
                .attach(LocalAttachRequest { container, addrs })
                .await
                .map_err(fail(&what))?
                .into_inner();
            Ok(format!("{}\n", reply.ips.join(" ")))
        }
        Command::Detach { args } => {
            let (addrs, container, what) = addrs_and_container(args, "detach")?;
            let reply = agent
                .detach(LocalDetachRequest { container, addrs })
                .await
                .map_err(fail(&what))?
                .into_inner();
            Ok(format!("{}\n", reply.ips.join(" ")))
        }
        Command::Ps => {
            let reply = agent
                .ps(PsRequest {})
                .await
                .map_err(fail("ps"))?
                .into_inner();
            Ok(reply
                .entries
                .iter()
                .map(|e| format!("{} {} {}\n", e.container_id, e.mac, e.cidrs.join(" ")))
                .collect())
        }
        Command::Network(NetworkCommand::Create { name, subnet }) => {
            let what = format!("network create {name}");
            let net = agent
                .create_network(CreateNetworkRequest { name, subnet })
                .await
                .map_err(fail(&what))?
                .into_inner()
                .network
                .ok_or_else(|| Failure::new(&what, "the agent returned no network"))?;
            Ok(format!("{} {} vni={}\n", net.name, net.subnet, net.vni))
        }
        Command::Network(NetworkCommand::Ls { json }) => {
            let reply = agent
                .list_networks(NetworkListRequest {})
                .await
                .map_err(fail("network ls"))?
                .into_inner();
            let nets = networks_of(&reply.networks);
            if json {
                let list: Vec<_> = nets
                    .map(|(n, i)| {
                        serde_json::json!({
                            "name": n.name, "subnet": n.subnet, "vni": n.vni, "endpoints": i.endpoints,
                        })
                    })
                    .collect();
                return Ok(format!("{}\n", serde_json::Value::Array(list)));
            }
            let rows: Vec<Vec<String>> = nets
                .map(|(n, i)| {
                    vec![
                        n.name.clone(),
                        n.subnet.clone(),
                        n.vni.to_string(),
                        i.endpoints.to_string(),
                    ]
                })
                .collect();
            Ok(table::render(
                &["NAME", "SUBNET", "VNI", "ENDPOINTS"],
                &rows,
            ))
        }
        Command::Network(NetworkCommand::Rm { name }) => {
            let what = format!("network rm {name}");
            agent
                .delete_network(DeleteNetworkRequest { name })
                .await
                .map_err(fail(&what))?;
            Ok(String::new())
        }
        Command::Status {
            detail: Some(StatusCommand::Peers),
        } => {
            let reply = agent
                .list_peers(ListPeersRequest {})
                .await
                .map_err(fail("status peers"))?
                .into_inner();
            let rows: Vec<Vec<String>> = reply
                .peers
                .iter()
                .filter_map(|p| {
                    let peer = p.peer.as_ref()?;
                    let state = match (p.connected, p.reachable) {
                        (true, _) => "connected".to_string(),
                        (false, true) => format!("disconnected {} ago", human(p.for_secs)),
                        (false, false) => format!("unreachable, gone {}", human(p.for_secs)),
                    };
                    Some(vec![
                        peer.name.clone(),
                        peer.advertise_addr.clone(),
                        state,
                        p.endpoints.to_string(),
                    ])
                })
                .collect();
            Ok(table::render(
                &["NAME", "ADDRESS", "STATE", "ENDPOINTS"],
                &rows,
            ))
        }
        Command::Status {
            detail: Some(StatusCommand::Networks),
        } => {
            let reply = ipam_status(&mut agent, "status networks").await?;
            let rows: Vec<Vec<String>> = networks_of(&reply.networks)
                .map(|(n, i)| {
                    vec![
                        n.name.clone(),
                        n.subnet.clone(),
                        n.vni.to_string(),
                        i.endpoints.to_string(),
                        i.used.to_string(),
                        free(i).to_string(),
                    ]
                })
                .collect();
            Ok(table::render(
                &["NAME", "SUBNET", "VNI", "ENDPOINTS", "USED", "FREE"],
                &rows,
            ))
        }
        Command::Status { detail: None } => {
            let st = agent
                .status(StatusRequest {})
                .await
                .map_err(fail("status"))?
                .into_inner();
            let controller = if st.connected {
                format!(
                    "{} (connected, revision {})",
                    st.controller_url, st.revision
                )
            } else {
                format!(
                    "{} (unreachable for {}: {})",
                    st.controller_url,
                    human(st.for_secs),
                    st.last_error
                )
            };
            // Reachability is the controller's to tell: ask only when it answers.
            let reachable = match st.connected {
                true => agent
                    .list_peers(ListPeersRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner().peers.iter().filter(|p| p.reachable).count()),
                false => None,
            };
            let peers = match reachable {
                Some(n) => format!("{} ({n} reachable)", st.peers),
                None => format!("{} (reachability unknown)", st.peers),
            };
            let lines = [
                ("Version", st.version),
                ("Name", format!("{} ({})", st.name, st.advertise_addr)),
                ("Controller", controller),
                ("Peers", peers),
                ("Networks", st.networks.to_string()),
                ("Endpoints", format!("{} on this host", st.endpoints)),
                (
                    "IPAM",
                    format!(
                        "{}, {} used, {} free",
                        st.ipam_range, st.ipam_used, st.ipam_free
                    ),
                ),
            ];
            Ok(lines
                .iter()
                .map(|(k, v)| format!("{k:>10}: {v}\n"))
                .collect())
        }
        Command::Status {
            detail: Some(StatusCommand::Ipam),
        } => {
            let reply = ipam_status(&mut agent, "status ipam").await?;
            let rows: Vec<Vec<String>> = networks_of(&reply.networks)
                .map(|(n, i)| {
                    vec![
                        n.name.clone(),
                        n.subnet.clone(),
                        i.pool.to_string(),
                        i.used.to_string(),
                        free(i).to_string(),
                    ]
                })
                .collect();
            let peers: Vec<Vec<String>> = reply
                .peers
                .iter()
                .map(|p| vec![p.peer.clone(), p.network.clone(), p.used.to_string()])
                .collect();
            Ok(format!(
                "Range: {}\n\n{}\n{}",
                reply.range,
                table::render(&["NETWORK", "SUBNET", "POOL", "USED", "FREE"], &rows),
                table::render(&["PEER", "NETWORK", "USED"], &peers)
            ))
        }
        Command::Expose { addrs } => {
            let reply = agent
                .expose(ExposeRequest { addrs })
                .await
                .map_err(fail("expose"))?
                .into_inner();
            Ok(format!("{}\n", reply.ips.join(" ")))
        }
        Command::Hide { addrs } => {
            let reply = agent
                .hide(HideRequest { addrs })
                .await
                .map_err(fail("hide"))?
                .into_inner();
            Ok(format!("{}\n", reply.ips.join(" ")))
        }
        Command::Reset => {
            let reply = agent
                .reset(ResetRequest {})
                .await
                .map_err(fail("reset"))?
                .into_inner();
            if !reply.release_error.is_empty() {
                return Err(Failure::new(
                    "reset",
                    format!(
                        "removed {} links, but the addresses could not be given back ({}); \
                         run `weftctl rmpeer` for this host from another one",
                        reply.removed.len(),
                        reply.release_error
                    ),
                ));
            }
            Ok(format!(
                "removed {} links, released {} addresses; the agent has stopped\n",
                reply.removed.len(),
                reply.released.len()
            ))
        }
        Command::Rmpeer { peer } => {
            let what = format!("rmpeer {peer}");
            let reply = agent
                .remove_peer(RemovePeerRequest { name: peer.clone() })
                .await
                .map_err(fail(&what))?
                .into_inner();
            Ok(format!(
                "{peer}: {} address(es) released\n",
                reply.released.len()
            ))
        }
    }
}

/// Opens a gRPC channel over the agent's unix socket.
async fn connect(socket: &Path) -> Result<AgentClient<Channel>, Failure> {
    let path = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    let channel = Endpoint::from_static("http://weft-agent")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| {
            Failure::new(
                format!("cannot reach weft-agent at {}", socket.display()),
                root_cause(&e),
            )
        })?;
    Ok(AgentClient::new(channel))
}

/// The innermost error's message: for a failed connect, the OS's reason.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn attach_takes_the_container_last() {
        let cli = Cli::try_parse_from([
            "weftctl",
            "attach",
            "10.0.0.2/24",
            "net:default",
            "netns:c1",
        ])
        .unwrap();
        let Command::Attach { args } = cli.command else {
            panic!("not an attach")
        };
        let (addrs, container, what) = addrs_and_container(args, "attach").ok().unwrap();
        assert_eq!(
            (addrs.as_slice(), container.as_str(), what.as_str()),
            (
                &["10.0.0.2/24".to_string(), "net:default".to_string()][..],
                "netns:c1",
                "attach netns:c1"
            )
        );
        let missing = Cli::try_parse_from(["weftctl", "attach"]).unwrap_err();
        assert_eq!(missing.exit_code(), 2);
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(human(42), "42s");
        assert_eq!(human(312), "5m12s");
        assert_eq!(human(11_040), "3h4m");
    }

    #[test]
    fn a_bad_address_names_the_command_and_the_address() {
        let Err(f) = addrs_and_container(vec!["10.0.0.300/24".into(), "netns:c1".into()], "detach")
        else {
            panic!("accepted a bad address")
        };
        assert_eq!(f.what, "detach netns:c1");
        assert_eq!(
            f.why,
            "invalid address \"10.0.0.300/24\": \"10.0.0.300\" is not an IPv4 address"
        );
    }
}
