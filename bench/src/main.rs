//! weft-load: drives a weft-controller over its real gRPC protocol, as many agents and containers
//! would, to put load on it and to fill its tables for benchmarks (by hand, not in CI), and
//! reads its tables back (`dump`, which the integration tests use to ask the controller itself).
//! `scale` measures the controller under a fleet of simulated agents; `footprint` measures any
//! process's memory and CPU over a while.

mod certs;
mod client;
mod dump;
mod fleet;
mod populate;
mod scale;
mod stats;

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use weft_proto::v1::controller_client::ControllerClient;
use weft_proto::v1::{
    AttachRequest, DetachRequest, DnsRecord, Peer, RegisterRequest, UpdateDnsRequest,
};

use crate::certs::AgentCa;
use crate::client::refused;
use crate::populate::Population;
use crate::scale::Scale;
use weft_bench::usage::{self, Meter};

/// weft-load: puts load on a weft-controller through its gRPC API.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The controller's URL.
    #[arg(long, default_value = "http://127.0.0.1:6786", global = true)]
    controller: String,
    /// Client certificate (PEM) for an https:// controller (dump, populate and the single
    /// calls); none: connect without one.
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
        advertise_addr: IpAddr,
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
        /// Give container load-N the DNS name load-N (served as load-N.<DNS domain>).
        #[arg(long)]
        dns_names: bool,
    },
    /// Print the controller's tables (revision, peers, networks, endpoints, DNS records) as one
    /// JSON object, from the snapshot a Watch starts with (prints the status on refusal).
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
        advertise_addr: IpAddr,
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
    /// One UpdateDns of one record, as an agent would send it.
    Dns {
        #[arg(long)]
        peer: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        ip: IpAddr,
        /// Remove the record instead of adding it.
        #[arg(long)]
        remove: bool,
    },
    /// Simulate a fleet of agents against the controller: fill it, let every agent sync in full
    /// and keep watching, then measure a new agent's full sync, the fan-out of single changes,
    /// and the controller's CPU and memory (from /proc) throughout. Prints labelled figures.
    Scale {
        /// Process id of the controller, whose /proc entries are read.
        #[arg(long)]
        controller_pid: u32,
        /// Simulated agents (peers), each with 2 connections and one Watch.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Containers attached per agent.
        #[arg(long, default_value_t = 100)]
        endpoints_per_agent: usize,
        /// Attach requests in flight at once while filling.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Agents joining (each receiving a full snapshot) at once.
        #[arg(long, default_value_t = 8)]
        join_concurrency: usize,
        /// New agents whose full sync is measured, one at a time.
        #[arg(long, default_value_t = 5)]
        syncs: usize,
        /// Single attaches whose fan-out to every watcher is measured, one at a time.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// Seconds of idling (nothing changes) whose cost is measured.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
        /// The controller's data dir, for an https:// controller: its CA (ca.pem, ca.key) gives
        /// each simulated agent a client certificate naming it, as joining would, and is the CA
        /// trusted for the controller's own. Without it the agents speak plaintext.
        #[arg(long, value_name = "DIR")]
        sign_with: Option<PathBuf>,
        /// Another controller on the same store (repeatable): simulated agents and new agents
        /// use --controller and these in turn.
        #[arg(long = "spread-over", value_name = "URL")]
        spread_over: Vec<String>,
        /// Also write the figures the goals are judged on to FILE, as one JSON object.
        #[arg(long, value_name = "FILE")]
        summary: Option<PathBuf>,
    },
    /// Measure a process's resident memory and CPU use over a while (e.g. an idle agent).
    Footprint {
        #[arg(long)]
        pid: u32,
        /// How long to measure.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Also say whether the largest RSS seen stayed below this many MB (10^6 bytes).
        #[arg(long, value_name = "MB")]
        rss_goal_mb: Option<f64>,
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
    let tls = client_tls(&cli)?;
    match cli.command {
        Command::Populate {
            peer,
            advertise_addr,
            endpoints,
            concurrency,
            addrs,
            list,
            dns_names,
        } => {
            let population = Population {
                peer: Peer {
                    name: peer,
                    advertise_addr: advertise_addr.to_string(),
                    ..Default::default()
                },
                endpoints,
                concurrency: concurrency.max(1),
                addrs,
                dns_names,
            };
            populate(&cli.controller, tls, population, list).await
        }
        Command::Dump { peer } => {
            let client = connect(&cli.controller, tls).await?;
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
                ..Default::default()
            };
            let mut client = connect(&cli.controller, tls).await?;
            refused(client.register(RegisterRequest { peer: Some(peer) }).await)?;
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
                ..Default::default()
            };
            let mut client = connect(&cli.controller, tls).await?;
            let reply = refused(client.attach(request).await)?;
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
            let mut client = connect(&cli.controller, tls).await?;
            let reply = refused(client.detach(request).await)?;
            println!("{}", reply.released.join(" "));
            Ok(())
        }
        Command::Dns {
            peer,
            name,
            ip,
            remove,
        } => {
            let record = DnsRecord {
                name,
                ip: ip.to_string(),
                peer: peer.clone(),
                container_id: String::new(),
            };
            let request = UpdateDnsRequest {
                peer,
                remove,
                records: vec![record],
            };
            let mut client = connect(&cli.controller, tls).await?;
            refused(client.update_dns(request).await)?;
            Ok(())
        }
        Command::Scale {
            controller_pid,
            agents,
            endpoints_per_agent,
            concurrency,
            join_concurrency,
            syncs,
            changes,
            idle_secs,
            sign_with,
            spread_over,
            summary,
        } => {
            fleet::allow_connections(agents)?;
            let ca = sign_with.as_deref().map(AgentCa::load).transpose()?;
            let scale = Scale {
                urls: [cli.controller].into_iter().chain(spread_over).collect(),
                ca,
                controller_pid,
                agents: agents.max(1),
                endpoints_per_agent,
                concurrency: concurrency.max(1),
                join_concurrency: join_concurrency.max(1),
                // At least one of each: the goals are judged on them.
                syncs: syncs.max(1),
                changes: changes.max(1),
                idle: Duration::from_secs(idle_secs),
                summary,
            };
            scale.run().await
        }
        Command::Footprint {
            pid,
            seconds,
            rss_goal_mb,
        } => {
            let meter = Meter::start(pid)?;
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let usage = meter.stop().await?;
            println!("pid {pid}: {usage}");
            if let Some(goal) = rss_goal_mb {
                let peak = usage.rss_peak_kib;
                println!(
                    "goal: RSS < {goal} MB while measured: {} ({:.1} MB, {:.1} MiB at most)",
                    if usage::mb(peak) < goal {
                        "met"
                    } else {
                        "MISSED"
                    },
                    usage::mb(peak),
                    usage::mib(peak)
                );
            }
            Ok(())
        }
    }
}

async fn populate(
    url: &str,
    tls: Option<ClientTlsConfig>,
    population: Population,
    list: Option<PathBuf>,
) -> anyhow::Result<()> {
    let client = connect(url, tls).await?;
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
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
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

/// The TLS settings the flags give, if any: the CA, and the client certificate if given.
fn client_tls(cli: &Cli) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(ca) = &cli.tls_ca else {
        return Ok(None);
    };
    let read =
        |p: &PathBuf| fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// One HTTP/2 connection; concurrent requests share it, as an agent's do.
async fn connect(
    url: &str,
    tls: Option<ClientTlsConfig>,
) -> anyhow::Result<ControllerClient<Channel>> {
    let mut endpoint = client::endpoint(url)?.timeout(client::REQUEST_TIMEOUT);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).context("invalid TLS settings")?;
    }
    Ok(ControllerClient::new(client::open(endpoint, url).await?))
}
