use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Parser;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;
use weft_agent::agent::{Agent, ControllerConfig};
use weft_agent::datapath::{Datapath, remove_all};
use weft_agent::dns::handler::DnsState;
use weft_agent::dns::{DEFAULT_DOMAIN, upstreams_of_resolv_conf};
use weft_agent::docker::DEFAULT_HOST;
use weft_agent::docker_watch::DockerFollower;
use weft_agent::firewall::Firewall;
use weft_agent::following::Following;
use weft_agent::join::{Auth, credentials};
use weft_agent::local_api::LocalApi;
use weft_agent::netlink;
use weft_agent::probe::Prober;
use weft_agent::reconcile::{Reconciler, follow_entry_events, follow_link_events};
use weft_agent::watch::follow_controller;
use weft_agent::wireguard::Wireguard;
use weft_proto::names::DEFAULT_WIREGUARD_PORT;
use weft_proto::tables::DEFAULT_VNI;
use weft_proto::v1::agent_server::AgentServer;

/// What VXLAN encapsulation takes of the underlay's MTU: the outer IP header (20 for IPv4, 40
/// for IPv6), UDP (8), VXLAN (8) and the inner Ethernet header (14).
fn vxlan_overhead(underlay: IpAddr) -> u32 {
    match underlay {
        IpAddr::V4(_) => 50,
        IpAddr::V6(_) => 70,
    }
}

/// weft's per-host agent: programs this host's bridge/VXLAN datapath through netlink from the
/// controller's tables, and serves weftctl on a unix socket.
///
/// Stopping the agent leaves the datapath in place: containers keep talking.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The controller's gRPC URL: https://192.0.2.1:6786 (http:// with --insecure). Several
    /// controllers of one control plane (on etcd), comma-separated or repeated: the agent
    /// talks to one and moves to the next when it cannot follow it.
    #[arg(
        long,
        value_name = "URL",
        env = "WEFT_CONTROLLER",
        value_delimiter = ',',
        required_unless_present = "reset"
    )]
    controller: Vec<String>,
    /// This host's peer name [default: the hostname].
    #[arg(long)]
    name: Option<String>,
    /// The address other hosts send VXLAN traffic to [default: the source address of the route
    /// to the controller].
    #[arg(long)]
    advertise_addr: Option<IpAddr>,
    /// The unix socket weftctl talks to.
    #[arg(long, default_value = "/run/weft/agent.sock")]
    socket: PathBuf,
    /// Where `GET /healthz` (200 once the agent has applied a snapshot, 503 before) and `GET
    /// /metrics` (Prometheus) are served.
    #[arg(long, default_value = "127.0.0.1:6785")]
    health_listen: SocketAddr,
    /// The Docker Engine API (Docker, or Podman's Docker-compatible service) that container
    /// names and IDs are resolved through: unix:///PATH or tcp://HOST:PORT.
    #[arg(long, env = "DOCKER_HOST", default_value = DEFAULT_HOST)]
    docker_host: String,
    /// Where Docker's network and IPAM driver `weft` is served (`docker network create -d weft
    /// --ipam-driver weft`); "none" serves none.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/docker/plugins/weft.sock"
    )]
    docker_plugin_socket: PathBuf,
    /// The DNS domain of containers' names.
    #[arg(long, default_value = DEFAULT_DOMAIN, value_parser = parse_domain)]
    dns_domain: String,
    /// TTL of weft's DNS answers, in seconds.
    #[arg(long, default_value_t = 1)]
    dns_ttl: u32,
    /// A resolver that names outside the DNS domain are forwarded to (IP or IP:PORT; may be
    /// repeated) [default: the nameservers of /etc/resolv.conf].
    #[arg(long, value_name = "ADDR", value_parser = parse_upstream)]
    dns_upstream: Vec<SocketAddr>,
    /// VXLAN UDP port.
    #[arg(long, default_value_t = 6784)]
    port: u16,
    /// The UDP port WireGuard listens on for encrypted networks' frames.
    #[arg(long, default_value_t = DEFAULT_WIREGUARD_PORT)]
    wireguard_port: u16,
    /// MTU of the network: "auto" is the MTU of the interface holding the advertise address
    /// minus the VXLAN overhead (50 over IPv4, 70 over IPv6).
    #[arg(long, default_value = "auto", value_parser = parse_mtu)]
    mtu: Mtu,
    /// How often the data path to every peer is probed through the VXLAN path (`weftctl status
    /// connections`): seconds, or a number with s or m; 0 turns probing off. A peer that answers
    /// no probe for three intervals shows as failed.
    #[arg(long, default_value = "1s", value_parser = weft_process::parse_duration)]
    probe_interval: Duration,
    /// Remove every kernel object weft made on this host, then exit. Use `weftctl reset` while
    /// the agent runs: it also gives the addresses back to the controller.
    #[arg(long)]
    reset: bool,
    /// This agent's client certificate (PEM), signed by the CA the controller trusts
    /// [default: the one in --state-dir].
    #[arg(long, requires_all = ["tls_key", "tls_ca"], conflicts_with_all = ["insecure", "join"])]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that signed the controller's certificate.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// A join token from `weftctl token create`: used once, when --state-dir holds no
    /// certificate yet, to obtain one for --name from the controller.
    #[arg(long, value_name = "TOKEN", conflicts_with = "insecure")]
    join: Option<String>,
    /// Where the certificate obtained by --join is kept (key root-only).
    #[arg(long, default_value = "/var/lib/weft/agent")]
    state_dir: PathBuf,
    /// Talk to the controller in plaintext, unauthenticated. For tests and trusted networks
    /// only.
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, Clone, Copy)]
enum Mtu {
    Auto,
    Fixed(u32),
}

fn parse_domain(s: &str) -> Result<String, String> {
    weft_proto::dns_name::normalize(s)
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("\"{s}\" is not an IP address or IP:PORT"))
}

fn parse_mtu(s: &str) -> Result<Mtu, String> {
    if s == "auto" {
        return Ok(Mtu::Auto);
    }
    match s.parse::<u32>() {
        Ok(mtu) if (576..=65535).contains(&mtu) => Ok(Mtu::Fixed(mtu)),
        _ => Err("expected \"auto\" or a number from 576 to 65535".into()),
    }
}

fn main() -> ExitCode {
    // Before the runtime's threads exist, so none gets an arena of its own.
    weft_agent::heap::one_arena();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weft-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(agent_main())
}

async fn agent_main() -> ExitCode {
    weft_process::init_logging();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (connection, handle, _) = rtnetlink::new_connection().context("cannot open netlink")?;
    tokio::spawn(connection);
    if args.reset {
        let removed = remove_all(&handle, args.port).await?;
        let table = Firewall::load(&args.state_dir).reset().await?;
        info!(
            removed = removed.len(),
            nftables_table = table,
            "reset: every link and table weft made on this host is gone"
        );
        return Ok(());
    }
    let dns = dns_state(&args);
    let controllers = args.controller;
    let name = match args.name {
        Some(name) => name,
        None => nix::unistd::gethostname()
            .context("cannot read the hostname; give --name")?
            .to_string_lossy()
            .into_owned(),
    };
    let auth = match (args.insecure, args.tls_cert, args.tls_key, args.tls_ca) {
        (true, ..) => Auth::Insecure,
        (false, Some(cert), Some(key), Some(ca)) => Auth::Files { cert, key, ca },
        _ => Auth::StateDir {
            dir: args.state_dir.clone(),
            token: args.join.clone(),
        },
    };
    let creds = credentials(auth, &controllers, &name).await?;
    let advertise_addr = match args.advertise_addr {
        Some(addr) => addr,
        None => source_addr_towards(&controllers[0]).await?,
    };
    let mtu = match args.mtu {
        Mtu::Fixed(mtu) => mtu,
        Mtu::Auto => {
            netlink::mtu_of_address_holder(&handle, advertise_addr)
                .await
                .context("cannot detect the MTU; give --mtu")?
                - vxlan_overhead(advertise_addr)
        }
    };
    let wireguard = Wireguard::new(&args.state_dir, args.wireguard_port, advertise_addr)?;
    let datapath = Datapath::new(handle, args.port, advertise_addr, mtu, wireguard);
    datapath.prepare_default(DEFAULT_VNI).await?;
    info!(%name, %advertise_addr, mtu, "datapath ready");

    let agent = Arc::new(Agent::new(
        name,
        advertise_addr,
        ControllerConfig {
            urls: controllers,
            tls: creds.map(|c| c.client_tls()),
            following: Following::load(&args.state_dir),
        },
        datapath,
        &args.docker_host,
        dns,
        &args.state_dir,
    )?);
    let listener = weft_process::bind_private_socket(&args.socket).await?;
    let api = tonic::transport::Server::builder()
        .add_service(AgentServer::new(LocalApi::new(agent.clone())))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            // A reset stops the agent too, once its answer is on its way.
            tokio::select! {
                _ = weft_process::shutdown_signal() => {}
                _ = agent.lifecycle().stopped() => {}
            }
        });
    info!(socket = %args.socket.display(), "serving weftctl");
    let health = weft_agent::health::serve(agent.clone(), args.health_listen);
    let served = tokio::select! {
        served = api => served.context("local API failed"),
        served = health => served,
        _ = follow_controller(&agent) => unreachable!("the watch loop never ends"),
        _ = Reconciler::new(&agent).run() => unreachable!("the reconcile loop never ends"),
        _ = Prober::new(&agent, args.probe_interval).run() => unreachable!("probing never ends"),
        _ = DockerFollower::new(&agent).run() => unreachable!("the Docker loop never ends"),
        served = docker_plugin(agent.clone(), plugin_socket(&args.docker_plugin_socket)) => served,
        _ = agent.dns().close_when_namespaces_go(Duration::from_millis(500)) => {
            unreachable!("the DNS clean-up never ends")
        }
        watched = follow_link_events(agent.tables(), args.port) => watched,
        watched = follow_entry_events(agent.tables(), agent.datapath().held()) => watched,
    };
    let _ = std::fs::remove_file(&args.socket);
    if let Some(socket) = plugin_socket(&args.docker_plugin_socket) {
        let _ = std::fs::remove_file(socket);
    }
    info!("stopped; the datapath stays in place");
    served
}

/// `--docker-plugin-socket`, unless "none".
fn plugin_socket(flag: &Path) -> Option<&Path> {
    Some(flag).filter(|f| *f != Path::new("none"))
}

/// Serves Docker's driver, unless told not to (then it waits forever, as the other loops do).
async fn docker_plugin(agent: Arc<Agent>, socket: Option<&Path>) -> anyhow::Result<()> {
    let Some(socket) = socket else {
        return std::future::pending().await;
    };
    weft_agent::docker_plugin::serve(agent, socket)
        .await
        .context("Docker's network driver failed")
}

/// DNS as the flags say; the upstreams of the host's resolv.conf unless given.
fn dns_state(args: &Args) -> DnsState {
    let upstreams = match args.dns_upstream.as_slice() {
        [] => upstreams_of_resolv_conf(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
        given => given.to_vec(),
    };
    info!(domain = %args.dns_domain, ?upstreams, "DNS");
    DnsState {
        domain: args.dns_domain.clone(),
        ttl: args.dns_ttl,
        upstreams,
        records: Default::default(),
    }
}

/// The address this host sends from towards the controller (a UDP connect sends nothing).
async fn source_addr_towards(url: &str) -> anyhow::Result<IpAddr> {
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|e| anyhow!("invalid controller URL {url}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("controller URL {url} has no host"))?;
    let port = uri.port_u16().unwrap_or(6786);
    // An IPv6 literal keeps its brackets in a URI's host.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    // A name with both families is reached over IPv4, as weft's clusters mostly are; an IPv6
    // literal (or a name with IPv6 only) over IPv6.
    let found: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .with_context(|| format!("cannot resolve controller host {host}"))?
        .collect();
    let target = found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| anyhow!("controller host {host} has no address"))?;
    let unspecified: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(unspecified)
        .await
        .context("cannot open a UDP socket")?;
    socket.connect(target).await.with_context(|| {
        format!("no route to the controller at {target}; give --advertise-addr")
    })?;
    Ok(socket.local_addr()?.ip())
}
