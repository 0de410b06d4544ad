mod cli;
mod render;
mod table;

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tonic::transport::Channel;
use weft_proto::addr::{AddrSpec, parse_ip};
use weft_proto::dns_name;
use weft_proto::error::root_cause;
use weft_proto::names::excerpt;
use weft_proto::v1::admin_client::AdminClient;
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{
    AcceptControllerRequest, ConnectionsRequest, CreateNetworkRequest, CreateTokenRequest,
    DeleteNetworkRequest, DnsLookupRequest, DnsStatusRequest, ExposeRequest, HideRequest,
    IpamStatusRequest, IpamStatusResponse, ListControllersRequest, ListPeersRequest,
    LocalAttachRequest, LocalDetachRequest, LocalDnsUpdateRequest, NetworkListRequest, PsRequest,
    RemovePeerRequest, ResetRequest, StatusRequest,
};

use crate::cli::{Cli, Command, DnsRecordArgs, NetworkCommand, Shell, StatusCommand, TokenCommand};

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
    let timeout = cli.timeout;
    // Whom weftctl waits for: a stopped (SIGSTOP) or wedged agent accepts the connection and
    // never answers.
    let asked = match &cli.command {
        Command::Token(TokenCommand::Create { admin_socket, .. }) => {
            format!("the controller's admin API at {}", admin_socket.display())
        }
        _ => format!("weft-agent at {}", cli.socket.display()),
    };
    match tokio::time::timeout(timeout, run(cli)).await {
        Ok(Ok(out)) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Ok(Err(f)) => {
            eprintln!("weftctl: {}: {}", f.what, f.why);
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("weftctl: {asked} did not answer in {}s", timeout.as_secs());
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
    let what = format!("{verb} {}", excerpt(&container));
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

/// Splits `[IP...] CONTAINER [-h FQDN] | IP... -h FQDN` into the IPs and the container.
fn dns_record_args(a: &DnsRecordArgs, verb: &str) -> Result<(Vec<String>, String), Failure> {
    let mut args = a.args.clone();
    let container = match args.last() {
        Some(last) if last.parse::<IpAddr>().is_err() => args.pop().unwrap_or_default(),
        _ => String::new(),
    };
    let what = match container.as_str() {
        "" => verb.to_string(),
        c => format!("{verb} {}", excerpt(c)),
    };
    for ip in &args {
        parse_ip(ip).map_err(|why| Failure::new(&what, why))?;
    }
    if container.is_empty() && a.fqdn.is_none() {
        return Err(Failure::new(
            &what,
            "addresses without a container need -h FQDN",
        ));
    }
    if let Some(name) = &a.fqdn {
        dns_name::normalize(name).map_err(|e| Failure::new(&what, e))?;
    }
    Ok((args, container))
}

/// Checks what can be checked here, so bad input is reported as such also when the agent is
/// down.
fn check_input(command: &Command) -> Result<(), Failure> {
    match command {
        Command::Attach { name, args, .. } => {
            let (_, _, what) = addrs_and_container(args.clone(), "attach")?;
            if let Some(name) = name {
                dns_name::normalize(name).map_err(|e| Failure::new(what, e))?;
            }
        }
        Command::Detach { args } => drop(addrs_and_container(args.clone(), "detach")?),
        Command::Expose { addrs } => check_addrs(addrs, "expose")?,
        Command::DnsAdd(a) => drop(dns_record_args(a, "dns-add")?),
        Command::DnsRemove(a) => drop(dns_record_args(a, "dns-remove")?),
        Command::Hide { addrs } => check_addrs(addrs, "hide")?,
        _ => {}
    }
    Ok(())
}

/// Output made without the agent: completions and the man page.
fn generated(command: &Command) -> Option<String> {
    let mut out = Vec::new();
    match command {
        Command::Completion { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "weftctl", &mut out);
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .expect("writing to memory cannot fail"),
        _ => return None,
    }
    Some(String::from_utf8(out).expect("clap writes UTF-8"))
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

async fn run(cli: Cli) -> Result<String, Failure> {
    if let Some(out) = generated(&cli.command) {
        return Ok(out);
    }
    check_input(&cli.command)?;
    if let Command::Token(TokenCommand::Create { ttl, admin_socket }) = &cli.command {
        let channel = unix_channel(admin_socket, "the controller's admin API").await?;
        let reply = AdminClient::new(channel)
            .create_token(CreateTokenRequest {
                ttl_secs: ttl.as_secs(),
            })
            .await
            .map_err(|s| Failure::new("token create", s.message()))?
            .into_inner();
        return Ok(format!("{}\n", reply.token));
    }
    let mut agent = AgentClient::new(unix_channel(&cli.socket, "weft-agent").await?);
    let fail = |what: &str| {
        let what = what.to_string();
        move |s: tonic::Status| Failure::new(what, s.message())
    };
    match cli.command {
        Command::Attach {
            name,
            args,
            rewrite_resolv,
            no_rewrite_resolv,
        } => {
            let (addrs, container, what) = addrs_and_container(args, "attach")?;
            let rewrite_resolv = match (rewrite_resolv, no_rewrite_resolv) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let reply = agent
                .attach(LocalAttachRequest {
                    container,
                    addrs,
                    dns_name: name.unwrap_or_default(),
                    rewrite_resolv,
                })
                .await
                .map_err(fail(&what))?
                .into_inner();
            Ok(render::ips(&reply.ips))
        }
        Command::Detach { args } => {
            let (addrs, container, what) = addrs_and_container(args, "detach")?;
            let reply = agent
                .detach(LocalDetachRequest { container, addrs })
                .await
                .map_err(fail(&what))?
                .into_inner();
            Ok(render::ips(&reply.ips))
        }
        Command::Ps { containers, json } => {
            let what = match containers.as_slice() {
                [] => "ps".to_string(),
                some => format!("ps {}", some.join(" ")),
            };
            let reply = agent
                .ps(PsRequest { containers })
                .await
                .map_err(fail(&what))?
                .into_inner();
            Ok(render::ps(&reply.entries, json))
        }
        Command::Network(NetworkCommand::Create {
            name,
            subnet,
            encrypt,
        }) => {
            let what = format!("network create {name}");
            let net = agent
                .create_network(CreateNetworkRequest {
                    name,
                    subnets: subnet,
                    encrypt,
                })
                .await
                .map_err(fail(&what))?
                .into_inner()
                .network
                .ok_or_else(|| Failure::new(&what, "the agent returned no network"))?;
            Ok(render::network_created(&net))
        }
        Command::Network(NetworkCommand::Ls { json }) => {
            let reply = agent
                .list_networks(NetworkListRequest {})
                .await
                .map_err(fail("network ls"))?
                .into_inner();
            Ok(render::networks(&reply.networks, json))
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
            json,
        } => {
            let reply = agent
                .list_peers(ListPeersRequest {})
                .await
                .map_err(fail("status peers"))?
                .into_inner();
            Ok(render::status_peers(&reply.peers, json))
        }
        Command::Status {
            detail: Some(StatusCommand::Controllers),
            json,
        } => {
            let reply = agent
                .list_controllers(ListControllersRequest {})
                .await
                .map_err(fail("status controllers"))?
                .into_inner();
            Ok(render::status_controllers(&reply.controllers, json))
        }
        Command::Status {
            detail: Some(StatusCommand::Networks),
            json,
        } => {
            let reply = ipam_status(&mut agent, "status networks").await?;
            Ok(render::status_networks(&reply, json))
        }
        Command::Status {
            detail: Some(StatusCommand::Ipam),
            json,
        } => {
            let reply = ipam_status(&mut agent, "status ipam").await?;
            Ok(render::status_ipam(&reply, json))
        }
        Command::Status { detail: None, json } => {
            let st = agent
                .status(StatusRequest {})
                .await
                .map_err(fail("status"))?
                .into_inner();
            // Reachability is the controller's to tell: ask only when it answers.
            let reachable = match st.connected {
                true => agent
                    .list_peers(ListPeersRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner().peers.iter().filter(|p| p.reachable).count()),
                false => None,
            };
            Ok(render::status(&st, reachable, json))
        }
        Command::Status {
            detail: Some(StatusCommand::Dns),
            json,
        } => {
            let reply = agent
                .dns_status(DnsStatusRequest {})
                .await
                .map_err(fail("status dns"))?
                .into_inner();
            Ok(render::status_dns(&reply, json))
        }
        Command::Status {
            detail: Some(StatusCommand::Connections),
            json,
        } => {
            let reply = agent
                .connections(ConnectionsRequest {})
                .await
                .map_err(fail("status connections"))?
                .into_inner();
            Ok(render::status_connections(&reply.connections, json))
        }
        Command::Report => report(&mut agent).await,
        Command::DnsAdd(ref a) | Command::DnsRemove(ref a) => {
            let remove = matches!(cli.command, Command::DnsRemove(_));
            let verb = if remove { "dns-remove" } else { "dns-add" };
            let (ips, container) = dns_record_args(a, verb)?;
            let what = format!("{verb} {}", a.args.join(" "));
            agent
                .dns_update(LocalDnsUpdateRequest {
                    remove,
                    ips,
                    container,
                    name: a.fqdn.clone().unwrap_or_default(),
                })
                .await
                .map_err(fail(&what))?;
            Ok(String::new())
        }
        Command::DnsLookup { name } => {
            let what = format!("dns-lookup {name}");
            let reply = agent
                .dns_lookup(DnsLookupRequest { name })
                .await
                .map_err(fail(&what))?
                .into_inner();
            Ok(render::ips(&reply.ips))
        }
        Command::Expose { addrs } => {
            let reply = agent
                .expose(ExposeRequest { addrs })
                .await
                .map_err(fail("expose"))?
                .into_inner();
            Ok(render::ips(&reply.ips))
        }
        Command::Hide { addrs } => {
            let reply = agent
                .hide(HideRequest { addrs })
                .await
                .map_err(fail("hide"))?
                .into_inner();
            Ok(render::ips(&reply.ips))
        }
        Command::AcceptController => {
            let reply = agent
                .accept_controller(AcceptControllerRequest {})
                .await
                .map_err(fail("accept-controller"))?
                .into_inner();
            Ok(render::following(&reply.store_id, reply.revision))
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
                        "removed {}, but the addresses could not be given back ({}); \
                         run `weftctl rmpeer` for this host from another one",
                        render::removed(&reply),
                        reply.release_error
                    ),
                ));
            }
            Ok(render::reset(&reply))
        }
        Command::Rmpeer { peer } => {
            let what = format!("rmpeer {peer}");
            let reply = agent
                .remove_peer(RemovePeerRequest { name: peer.clone() })
                .await
                .map_err(fail(&what))?
                .into_inner();
            Ok(render::peer_removed(&peer, &reply.released))
        }
        Command::Completion { .. } | Command::Man => unreachable!("generated without the agent"),
        Command::Token(_) => unreachable!("asked of the controller"),
    }
}

/// `weftctl report`: what the agent holds itself must come; what the controller answers (peers,
/// controllers, IPAM) is shown as an error while it cannot.
async fn report(agent: &mut AgentClient<Channel>) -> Result<String, Failure> {
    let fail = |s: tonic::Status| Failure::new("report", s.message());
    let status = agent.status(StatusRequest {}).await.map_err(fail)?;
    let connections = agent
        .connections(ConnectionsRequest {})
        .await
        .map_err(fail)?;
    let endpoints = agent.ps(PsRequest::default()).await.map_err(fail)?;
    let dns = agent.dns_status(DnsStatusRequest {}).await.map_err(fail)?;
    let said = |s: tonic::Status| s.message().to_string();
    let peers = agent.list_peers(ListPeersRequest {}).await;
    let controllers = agent.list_controllers(ListControllersRequest {}).await;
    let ipam = agent.ipam_status(IpamStatusRequest {}).await;
    Ok(render::report(&render::Report {
        status: status.into_inner(),
        connections: connections.into_inner().connections,
        peers: peers.map(|r| r.into_inner().peers).map_err(said),
        controllers: controllers
            .map(|r| r.into_inner().controllers)
            .map_err(said),
        ipam: ipam.map(|r| r.into_inner()).map_err(said),
        endpoints: endpoints.into_inner().entries,
        dns: dns.into_inner(),
    }))
}

/// Opens a gRPC channel over a unix socket: the agent's, or the controller's admin socket.
async fn unix_channel(socket: &Path, whom: &str) -> Result<Channel, Failure> {
    let channel = weft_process::unix_channel(socket).await.map_err(|e| {
        let why = root_cause(&e);
        // The socket is root-only (0600): say so rather than leave "Permission denied".
        let why = if why.contains("Permission denied") {
            format!("{why}: the socket is root-only; run weftctl as root (sudo)")
        } else {
            why
        };
        Failure::new(format!("cannot reach {whom} at {}", socket.display()), why)
    })?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_bad_name_is_refused_before_the_agent_is_asked() {
        let cli = Cli::try_parse_from(["weftctl", "attach", "--name", "a_b", "c1"]).unwrap();
        let Err(f) = check_input(&cli.command) else {
            panic!("accepted a bad name")
        };
        assert_eq!(
            (f.what.as_str(), f.why.as_str()),
            (
                "attach c1",
                "invalid DNS name \"a_b\": label \"a_b\" has a character other than a-z, 0-9 and -"
            )
        );
    }

    #[test]
    fn completions_and_man_page_come_from_the_same_definitions() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = generated(&Command::Completion { shell }).unwrap();
            for sub in ["attach", "detach", "ps", "status", "network", "rmpeer"] {
                assert!(script.contains(sub), "{shell:?} completion lacks {sub}");
            }
        }
        let man = generated(&Command::Man).unwrap();
        assert!(man.starts_with(".ie"), "not roff: {}", &man[..40]);
        // Every command has its entry, and the global flags are there.
        for sub in Cli::command().get_subcommands() {
            let entry = format!("weftctl\\-{}(1)", sub.get_name().replace('-', "\\-"));
            assert!(man.contains(&entry), "the man page lacks {entry}");
        }
        for flag in ["\\-\\-socket", "\\-\\-timeout"] {
            assert!(man.contains(flag), "the man page lacks {flag}");
        }
    }
}
