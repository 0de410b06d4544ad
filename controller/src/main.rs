use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipnetwork::Ipv4Network;
use tracing::{info, warn};
use weft_controller::rules::TableRules;
use weft_controller::service::ControllerService;
use weft_controller::store::Store;
use weft_proto::v1::controller_server::ControllerServer;

/// weft's controller: the authority for peers, networks, endpoints and addresses.
///
/// Agents register with it and watch its tables; it persists them under --data-dir.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address and port of the gRPC service agents connect to.
    #[arg(long, default_value = "0.0.0.0:6786")]
    listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, default_value = "/var/lib/weft/controller")]
    data_dir: PathBuf,
    /// Subnet of the default network (net:default).
    #[arg(long, default_value = "10.32.0.0/12", value_parser = parse_range)]
    ipalloc_range: Ipv4Network,
    /// How long a peer's agent may be gone before the peer is shown as unreachable: seconds, or
    /// a number with s, m or h.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    peer_lease: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration like 90s, 3m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("\"{s}\" is not a duration like 90s, 3m or 1h")),
    };
    Ok(Duration::from_secs(secs))
}

fn parse_range(s: &str) -> Result<Ipv4Network, String> {
    let net: Ipv4Network = s.parse().map_err(|e| format!("not a CIDR: {e}"))?;
    if net.ip() != net.network() {
        return Err(format!(
            "host bits set; the subnet is {}/{}",
            net.network(),
            net.prefix()
        ));
    }
    Ok(net)
}

/// Raises the open-file limit as far as allowed. Each agent holds two connections, and the
/// usual soft limit of 1024 would leave agents past the 500th unanswered in the listen backlog
/// until their keepalives give up.
fn allow_connections() {
    match weft_proto::process::raise_open_file_limit() {
        Ok((before, now)) if before < now => {
            info!(from = before, to = now, "raised the open-file limit")
        }
        Ok((_, now)) => info!(limit = now, "open-file limit"),
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    weft_proto::process::init_logging();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    allow_connections();
    let (store, tables) = Store::open(&args.data_dir)?;
    info!(revision = tables.revision, data_dir = %args.data_dir.display(), "store loaded");
    let service = ControllerService::new(store, tables, args.peer_lease)
        .context("cannot start the committing thread")?;
    let range = args.ipalloc_range;
    service
        .mutate(move |t| Ok(((), t.ensure_default_network(range)?)))
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(listen = %args.listen, "serving");
    tonic::transport::Server::builder()
        // Notice an agent that vanished without closing its stream (a crash, a partition).
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(ControllerServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            weft_proto::process::shutdown_signal(),
        )
        .await
        .context("gRPC server failed")?;
    info!("stopped");
    Ok(())
}
