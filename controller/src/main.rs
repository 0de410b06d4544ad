use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{info, warn};
use weft_controller::authority::{mark_insecure, require_certificate};
use weft_controller::enrollment::EnrollmentService;
use weft_controller::limits::MAX_REQUEST_BYTES;
use weft_controller::rules::TableRules;
use weft_controller::service::ControllerService;
use weft_controller::store::{Emptied, EtcdConfig, EtcdKv, EtcdTls, Location, Store};
use weft_controller::tls::{Ca, ServerIdentity};
use weft_controller::tokens::Tokens;
use weft_proto::v1::admin_server::AdminServer;
use weft_proto::v1::controller_server::ControllerServer;
use weft_proto::v1::enrollment_server::EnrollmentServer;
use weft_tls::read_pem;

/// weft's controller: the authority for peers, networks, endpoints and addresses.
///
/// Agents register with it and watch its tables; it persists them under --data-dir.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connections get to close after SIGTERM or SIGINT, once the watch streams ended:
/// a stop must not wait on an agent that is slow to hang up (systemd would wait 90 s).
const STOP_GRACE: Duration = Duration::from_millis(1500);

#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address and port of the gRPC service agents connect to.
    #[arg(long, default_value = "0.0.0.0:6786")]
    listen: SocketAddr,
    /// Directory of the embedded store (mode 0700), its CA and its join tokens; with --store
    /// etcd, a copy of the control plane's CA.
    #[arg(long, default_value = "/var/lib/weft/controller", global = true)]
    data_dir: PathBuf,
    /// Start even though weft.redb (or tokens.redb) is missing or empty in a data dir that held
    /// a store: begin again with empty tables, as a new store (agents keep their datapath and
    /// refuse it until told to follow it), or with no join tokens. Without it such a start is
    /// refused.
    #[arg(long)]
    accept_empty_store: bool,
    /// Where the tables are kept: redb, the embedded store in --data-dir (one controller), or
    /// etcd (--etcd-endpoints).
    #[arg(long, value_enum, default_value_t = StoreKind::Redb, global = true)]
    store: StoreKind,
    /// etcd's client URLs, comma-separated (or repeated), for --store etcd.
    #[arg(
        long,
        env = "WEFT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URL",
        global = true
    )]
    etcd_endpoints: Vec<String>,
    /// The prefix of every key of the store in etcd.
    #[arg(long, default_value = "/weft/", global = true)]
    etcd_prefix: String,
    /// PEM file of the CA that signed etcd's server certificates, for https:// endpoints.
    #[arg(long, value_name = "FILE", global = true)]
    etcd_ca: Option<PathBuf>,
    /// PEM file of the client certificate shown to an etcd that asks for one (with --etcd-key).
    #[arg(long, value_name = "FILE", global = true, requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// PEM file of the key of --etcd-cert.
    #[arg(long, value_name = "FILE", global = true, requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// How many of the latest changes the store keeps for agents that reconnect: they resume
    /// with just the changes they missed; one further behind gets the whole tables.
    #[arg(long, default_value_t = weft_controller::store::DELTAS_KEPT, value_name = "CHANGES")]
    history: u64,
    /// Test-only fault injection: crash-after-commit:attach|detach (see failpoint.rs).
    #[arg(long, hide = true)]
    failpoint: Option<String>,
    /// Subnet of the default network (net:default).
    #[arg(long, default_value = "10.32.0.0/12", value_parser = parse_range)]
    ipalloc_range: Ipv4Network,
    /// IPv6 subnet of the default network, which makes it dual stack (net:default then gives
    /// one address of each family) [default: none, IPv4 only]. Fixed when the store first makes
    /// the network, as --ipalloc-range is.
    #[arg(long, value_name = "CIDR", value_parser = parse_range6)]
    ipalloc_range6: Option<Ipv6Network>,
    /// Encrypt the default network: its frames cross between hosts only inside WireGuard. Fixed
    /// when the store first makes the network; a controller of that store must say the same.
    #[arg(long)]
    encrypt_default: bool,
    /// How long a peer's agent may be gone before the peer is shown as unreachable: seconds, or
    /// a number with s, m or h.
    #[arg(long, default_value = "3m", value_parser = weft_process::parse_duration)]
    peer_lease: Duration,
    /// The server certificate (PEM, chain) agents check [default: one made at each start by the
    /// controller's own CA, kept in --data-dir].
    #[arg(long, requires_all = ["tls_key", "tls_ca"], conflicts_with = "insecure")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that signs agents' client certificates. Without its key the controller
    /// signs none: agents cannot --join.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// Another name (DNS name or IP) agents reach the controller by, for the certificate it
    /// makes itself (may be repeated) [default: its hostname and addresses].
    #[arg(long, value_name = "NAME", conflicts_with_all = ["tls_cert", "insecure"])]
    tls_san: Vec<String>,
    /// The root-only unix socket of the admin API (`weftctl token create`).
    #[arg(
        long,
        default_value = "/run/weft/controller.sock",
        conflicts_with = "insecure"
    )]
    admin_socket: PathBuf,
    /// Serve plaintext gRPC with no client authentication: anyone who reaches the port can
    /// rewrite every host's forwarding tables. For tests and trusted networks only.
    #[arg(long)]
    insecure: bool,
    /// Where `GET /healthz` (200 while it can serve changes, 503 naming why not) and `GET
    /// /metrics` (Prometheus) are served.
    #[arg(long, default_value = "127.0.0.1:6788")]
    health_listen: SocketAddr,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StoreKind {
    Redb,
    Etcd,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a consistent copy of the store's tables to FILE (root-only), also while a
    /// controller serves them.
    Backup {
        /// The backup file to write.
        file: PathBuf,
    },
    /// Put the tables of backup FILE, with their store identity and revision, into the empty
    /// store of --data-dir (a new data dir, or the one whose store was lost). No controller may
    /// be serving it.
    Restore {
        /// A file `weft-controller backup` wrote.
        file: PathBuf,
    },
}

/// What `backup` and `restore` print: the store, its revision and what it holds.
fn described(tables: &weft_proto::tables::Tables) -> String {
    format!(
        "store {} at revision {} ({} peers, {} networks, {} endpoints, {} DNS records)",
        tables.store_id,
        tables.revision,
        tables.peers.len(),
        tables.networks.len(),
        tables.endpoints.len(),
        tables.dns_records.len()
    )
}

fn copy(command: &Command, location: &Location) -> anyhow::Result<()> {
    use weft_controller::backup;
    match command {
        Command::Backup { file } => {
            let tables = backup::backup(location, file)?;
            println!("backed up {} to {}", described(&tables), file.display());
        }
        Command::Restore { file } => {
            let tables = backup::restore(file, location)?;
            println!("restored {} into {location}", described(&tables));
        }
    }
    Ok(())
}

/// The store the flags name.
fn location(args: &Args) -> anyhow::Result<Location> {
    Ok(match args.store {
        StoreKind::Redb => Location::Redb(args.data_dir.clone()),
        StoreKind::Etcd => {
            if args.etcd_endpoints.is_empty() {
                bail!("--store etcd needs --etcd-endpoints URL[,URL...] (or WEFT_ETCD_ENDPOINTS)");
            }
            if !args.etcd_prefix.ends_with('/') {
                bail!(
                    "--etcd-prefix {:?} must end with /, so that no other prefix's keys fall under it",
                    args.etcd_prefix
                );
            }
            Location::Etcd(EtcdConfig {
                endpoints: args.etcd_endpoints.clone(),
                prefix: args.etcd_prefix.clone(),
                tls: etcd_tls(args)?,
            })
        }
    })
}

/// The TLS files the flags name, read; none without `--etcd-ca`.
fn etcd_tls(args: &Args) -> anyhow::Result<Option<EtcdTls>> {
    let read = |flag: &str, file: &PathBuf| {
        std::fs::read(file).with_context(|| format!("{flag} {}", file.display()))
    };
    let Some(ca) = &args.etcd_ca else {
        if args.etcd_cert.is_some() {
            bail!("--etcd-cert needs --etcd-ca, the CA etcd's certificates are checked against");
        }
        return Ok(None);
    };
    let identity = match (&args.etcd_cert, &args.etcd_key) {
        (Some(cert), Some(key)) => Some((read("--etcd-cert", cert)?, read("--etcd-key", key)?)),
        _ => None,
    };
    Ok(Some(EtcdTls {
        ca: read("--etcd-ca", ca)?,
        identity,
    }))
}

fn parse_range(s: &str) -> Result<Ipv4Network, String> {
    match weft_proto::addr::parse_subnet(s, s).map_err(|e| e.reason)? {
        IpNetwork::V4(net) => Ok(net),
        IpNetwork::V6(_) => Err("an IPv6 subnet: give it as --ipalloc-range6".into()),
    }
}

fn parse_range6(s: &str) -> Result<Ipv6Network, String> {
    match weft_proto::addr::parse_subnet(s, s).map_err(|e| e.reason)? {
        IpNetwork::V6(net) => Ok(net),
        IpNetwork::V4(_) => Err("an IPv4 subnet: give it as --ipalloc-range".into()),
    }
}

/// Raises the open-file limit as far as allowed. Each agent holds two connections, and the
/// usual soft limit of 1024 would leave agents past the 500th unanswered in the listen backlog
/// until their keepalives give up.
fn allow_connections() {
    match weft_process::raise_open_file_limit() {
        Ok((before, now)) if before < now => {
            info!(from = before, to = now, "raised the open-file limit")
        }
        Ok((_, now)) => info!(limit = now, "open-file limit"),
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // tonic logs refused TLS handshakes (a client certificate from another CA, say) at debug
    // level only: they are worth an operator's eye, and a metric.
    weft_process::init_logging_and(
        &[weft_controller::metrics::TLS_REFUSALS_DIRECTIVE],
        weft_controller::metrics::TlsRefusals,
    );
    let args = Args::parse();
    let done = match (&args.command, location(&args)) {
        (_, Err(e)) => Err(e),
        (Some(command), Ok(at)) => copy(command, &at),
        (None, Ok(at)) => run(args, at).await,
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How the controller serves agents: plaintext, or TLS with its identity and the CA of clients.
enum Security {
    Insecure,
    Tls {
        identity: ServerIdentity,
        ca: Arc<Ca>,
    },
}

fn security(args: &Args, etcd: Option<&EtcdKv>) -> anyhow::Result<Security> {
    if args.insecure {
        warn!(
            "--insecure: plaintext gRPC, no client authentication; anyone who reaches the port can rewrite every host's forwarding tables"
        );
        return Ok(Security::Insecure);
    }
    let (identity, ca) = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => (
            ServerIdentity {
                chain_pem: read_pem(cert, "--tls-cert", true)?,
                key_pem: read_pem(key, "--tls-key", false)?,
            },
            Ca::given(ca)?,
        ),
        (None, None, None) => {
            let ca = match etcd {
                None => Ca::load_or_create(&args.data_dir)?,
                Some(kv) => control_plane_ca(kv, &args.data_dir)?,
            };
            let names = server_names(args.listen, &args.tls_san)?;
            info!(?names, ca_pin = %ca.pin(), "server certificate made by the controller's CA");
            (ca.issue_server(&names)?, ca)
        }
        _ => bail!("--tls-cert, --tls-key and --tls-ca go together"),
    };
    Ok(Security::Tls {
        identity,
        ca: Arc::new(ca),
    })
}

/// The control plane's CA, from etcd; the first controller puts it there: the CA of its data
/// dir if it has one (agents joined before keep their trust), else a new one. The data dir
/// keeps a copy, so that tables moved to another store (`restore`) keep their agents' trust;
/// one whose CA is not the one in etcd is refused, naming both.
fn control_plane_ca(kv: &EtcdKv, data_dir: &Path) -> anyhow::Result<Ca> {
    let local = Ca::local_pems(data_dir)?;
    let seed = match &local {
        Some(pems) => pems.clone(),
        None => Ca::new_pems()?,
    };
    let (pems, seeded) = weft_controller::store::shared_ca(kv, seed)?;
    if let Some((cert, _)) = &local
        && *cert != pems.0
    {
        bail!(
            "{} is not the CA of the control plane in {}: agents joined with it would not be \
             trusted by the other controllers; remove ca.pem and ca.key from {} to use the \
             control plane's",
            data_dir.join("ca.pem").display(),
            kv.config(),
            data_dir.display()
        );
    }
    if seeded {
        info!(store = %kv.config(), "put this controller's CA in etcd, for every controller");
    }
    if local.is_none() {
        Ca::keep_pems(data_dir, &pems)?;
    }
    Ok(Ca::from_pems(pems, &format!("{} ca/", kv.config()))?)
}

/// The names agents may reach the controller by: its hostname, the listen address (or, for
/// 0.0.0.0 or [::], every address of the host), localhost, and --tls-san.
fn server_names(listen: SocketAddr, extra: &[String]) -> anyhow::Result<Vec<String>> {
    let mut names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    if let Ok(host) = nix::unistd::gethostname() {
        names.push(host.to_string_lossy().into_owned());
    }
    if listen.ip().is_unspecified() {
        let addrs = nix::ifaddrs::getifaddrs().context("cannot list the host's addresses")?;
        // Link-local addresses are left out: a URL cannot carry their interface.
        names.extend(addrs.filter_map(|a| {
            let a = a.address?;
            let ip: IpAddr = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                (Some(v4), _) => v4.ip().into(),
                (_, Some(v6)) => v6.ip().into(),
                _ => return None,
            };
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
            (!ip.is_loopback() && !link_local).then(|| ip.to_string())
        }));
    } else {
        names.push(listen.ip().to_string());
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(names)
}

async fn run(args: Args, location: Location) -> anyhow::Result<()> {
    if let Some(spec) = &args.failpoint {
        weft_controller::failpoint::arm(spec).map_err(anyhow::Error::msg)?;
        warn!(failpoint = %spec, "a test failpoint is armed");
    }
    allow_connections();
    let emptied = if args.accept_empty_store {
        Emptied::BeginAgain
    } else {
        Emptied::Refuse
    };
    // Before the CA is made there: a fresh data dir must not look like one that held a store.
    let (mut store, tables) = Store::open_at(&location, emptied)?;
    store.keep_changes(args.history);
    info!(revision = tables.revision, store_id = %tables.store_id, store = %location, "store loaded");
    let etcd = store.etcd();
    let security = security(&args, etcd.as_ref())?;
    let service = ControllerService::new(store, tables, args.peer_lease)
        .context("cannot start the committing thread")?;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    // What the other controllers and weftctl know this one by.
    let address = if args.listen.ip().is_unspecified() {
        format!("{host}:{}", args.listen.port())
    } else {
        args.listen.to_string()
    };
    service.announce(etcd.clone(), address, host);
    let (range, range6) = (args.ipalloc_range, args.ipalloc_range6);
    let encrypted = args.encrypt_default;
    service
        .mutate(move |t| Ok(((), t.ensure_default_network(range, range6, encrypted)?)))
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;

    // Bound before the port: once agents can connect, tokens can be made.
    let admin_listener = match security {
        Security::Tls { .. } => Some(weft_process::bind_private_socket(&args.admin_socket).await?),
        Security::Insecure => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let health_listener = tokio::net::TcpListener::bind(args.health_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for health checks and metrics on {} (--health-listen)",
                args.health_listen
            )
        })?;
    let health = weft_controller::health::serve(service.clone(), health_listener);
    let mut builder = tonic::transport::Server::builder()
        // Notice an agent that vanished without closing its stream (a crash, a partition).
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(weft_controller::metrics::RpcMetrics);
    let stopper = service.clone();
    let controller = ControllerServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES);
    let (router, admin) = match security {
        Security::Insecure => (
            builder.add_service(InterceptedService::new(controller, mark_insecure)),
            None,
        ),
        Security::Tls { identity, ca } => {
            // Client certificates are optional in the handshake so that an agent without one
            // can Join; every other call is refused without one by require_certificate.
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(&identity.chain_pem, &identity.key_pem))
                .client_ca_root(Certificate::from_pem(&ca.cert_pem))
                .client_auth_optional(true);
            let tokens = match etcd {
                Some(kv) => Tokens::on_etcd(kv),
                None => Tokens::open(&args.data_dir, emptied)?,
            };
            let enrollment = EnrollmentService::new(ca, tokens);
            let router = builder
                .tls_config(tls)
                .context("invalid TLS configuration")?
                .add_service(InterceptedService::new(controller, require_certificate))
                .add_service(
                    EnrollmentServer::new(enrollment.clone())
                        .max_decoding_message_size(MAX_REQUEST_BYTES),
                );
            (router, Some(enrollment))
        }
    };
    let serves_admin = admin.is_some();
    let admin = async {
        let (Some(enrollment), Some(socket)) = (admin, admin_listener) else {
            return std::future::pending().await;
        };
        info!(socket = %args.admin_socket.display(), "serving the admin API");
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(enrollment))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(socket))
            .await
            .context("admin API failed")
    };
    info!(listen = %args.listen, "serving");
    let (signalled, stopping) = tokio::sync::oneshot::channel();
    let served = router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async move {
            weft_process::shutdown_signal().await;
            info!("stopping: ending the watch streams");
            stopper.stop();
            let _ = signalled.send(());
        },
    );
    let grace_over = async {
        if stopping.await.is_ok() {
            tokio::time::sleep(STOP_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = served => served.context("gRPC server failed")?,
        failed = admin => return failed,
        failed = health => return failed,
        () = grace_over => warn!("connections still open {STOP_GRACE:?} after the stop; closing them"),
    }
    if serves_admin {
        let _ = std::fs::remove_file(&args.admin_socket);
    }
    info!("stopped");
    Ok(())
}
