//! weft-load: drives a weft-controller over its real gRPC protocol, as many agents and containers
//! would, to put load on it and to fill its tables for benchmarks (by hand, not in CI), and
//! reads its tables back (`dump`, which the integration tests use to ask the controller itself).

mod dump;
mod populate;

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use weft_proto::v1::controller_client::ControllerClient;
use weft_proto::v1::{AttachRequest, DetachRequest, Peer, RegisterRequest};

use crate::populate::Population;

/// How long to wait for a TCP connection to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take; generous, since the controller queues attaches behind fsyncs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// weft-load: puts load on a weft-controller through its gRPC API.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The controller's URL.
    #[arg(long, default_value = "http://127.0.0.1:6786", global = true)]
    controller: String,
    /// Client certificate (PEM) for an https:// controller; none: connect without one.
    #[arg(long, global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, global = true)]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) of the controller's certificate, for an https:// controller.
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register a peer that no agent runs for, and attach containers load-0, load-1, ... on it:
    /// one endpoint each, with a MAC of its own. Prints how long it took.
    Populate {
        /// Name of the peer.
        #[arg(long, default_value = "load")]
        peer: String,
        /// The peer's VTEP address; nothing needs to answer there.
        #[arg(long)]
        advertise_addr: Ipv4Addr,
        /// How many containers to attach.
        #[arg(long, default_value_t = 10_000)]
        endpoints: usize,
        /// Attach requests in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// ADDR for every container (repeatable); none means net:default.
        #[arg(long = "addr", value_name = "ADDR")]
        addrs: Vec<String>,
        /// Write every endpoint made to FILE, one `MAC IP/LEN` line per address.
        #[arg(long, value_name = "FILE")]
        list: Option<PathBuf>,
    },
    /// Print the controller's tables (revision, peers, networks, endpoints) as one JSON object,
    /// from the snapshot a Watch starts with.
    Dump {
        /// The peer name to watch as (over TLS, the one of the client certificate).
        #[arg(long, default_value = "weft-load-dump")]
        peer: String,
    },
    /// One Register, as an agent would send it (prints the status on refusal).
    Register {
        #[arg(long)]
        peer: String,
        #[arg(long)]
        advertise_addr: Ipv4Addr,
    },
    /// One Attach, as an agent would send it.
    Attach {
        #[arg(long)]
        peer: String,
        #[arg(long)]
        container: String,
        #[arg(long = "addr", value_name = "ADDR")]
        addrs: Vec<String>,
    },
    /// One Detach, as an agent would send it.
    Detach {
        #[arg(long)]
        peer: String,
        #[arg(long)]
        container: String,
        #[arg(long, default_value = "")]
        only_mac: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = connect(&cli).await?;
    match cli.command {
        Command::Populate {
            peer,
            advertise_addr,
            endpoints,
            concurrency,
            addrs,
            list,
        } => {
            let population = Population {
                peer: Peer {
                    name: peer,
                    advertise_addr: advertise_addr.to_string(),
                },
                endpoints,
                concurrency: concurrency.max(1),
                addrs,
            };
            let started = Instant::now();
            let made = population.run(client).await?;
            let took = started.elapsed();
            if let Some(path) = list {
                let mut text = Vec::new();
                for ep in &made {
                    for cidr in &ep.cidrs {
                        writeln!(text, "{} {cidr}", ep.mac)?;
                    }
                }
                fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            println!(
                "populated peer {} ({}): {} endpoints in {:.1} s ({:.0} attaches/s, {} in flight)",
                population.peer.name,
                population.peer.advertise_addr,
                made.len(),
                took.as_secs_f64(),
                made.len() as f64 / took.as_secs_f64(),
                population.concurrency
            );
            Ok(())
        }
        Command::Dump { peer } => {
            println!("{}", dump::dump(client, &peer).await?);
            Ok(())
        }
        Command::Register {
            peer,
            advertise_addr,
        } => {
            let peer = Peer {
                name: peer,
                advertise_addr: advertise_addr.to_string(),
            };
            refused(
                client
                    .clone()
                    .register(RegisterRequest { peer: Some(peer) })
                    .await,
            )?;
            Ok(())
        }
        Command::Attach {
            peer,
            container,
            addrs,
        } => {
            let request = AttachRequest {
                peer,
                container_id: container,
                addrs,
                dns_name: String::new(),
            };
            let reply = refused(client.clone().attach(request).await)?;
            println!("{}", reply.cidrs.join(" "));
            Ok(())
        }
        Command::Detach {
            peer,
            container,
            only_mac,
        } => {
            let request = DetachRequest {
                peer,
                container_id: container,
                addrs: vec![],
                only_mac,
            };
            let reply = refused(client.clone().detach(request).await)?;
            println!("{}", reply.released.join(" "));
            Ok(())
        }
    }
}

/// A refusal as `refused: CODE: message[: root cause]`, the code as tonic names it (e.g.
/// PermissionDenied).
fn refused<T>(reply: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<T> {
    reply.map(tonic::Response::into_inner).map_err(|s| {
        anyhow!(
            "refused: {:?}: {}",
            s.code(),
            weft_proto::error::describe(&s)
        )
    })
}

/// One HTTP/2 connection; concurrent requests share it, as an agent's do.
async fn connect(cli: &Cli) -> anyhow::Result<ControllerClient<Channel>> {
    let url = &cli.controller;
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow!("invalid controller URL {url}: {e}"))?;
    if let Some(ca) = &cli.tls_ca {
        let read = |p: &PathBuf| {
            fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(tls).context("invalid TLS settings")?;
    }
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .map_err(|e| {
            anyhow!(
                "controller {url} is unreachable: {}",
                weft_proto::error::root_cause(&e)
            )
        })?;
    Ok(ControllerClient::new(channel))
}
