use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use weft_proto::addr::AddrSpec;
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{AttachRequest, DetachRequest, PsRequest};

/// weftctl: the operator's CLI for weft. It talks to the weft-agent on this host.
///
/// CONTAINER is netns:NAME (/var/run/netns/NAME), pid:PID, or the path of a network namespace.
/// ADDR is IP/LEN or ip:IP/LEN.
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
    /// Connect a container to the network with the given addresses; prints its IPs.
    #[command(override_usage = "weftctl attach [ADDR...] CONTAINER")]
    Attach {
        /// Addresses to give the container (IP/LEN or ip:IP/LEN), then the container.
        #[arg(required = true, value_name = "ARG")]
        args: Vec<String>,
    },
    /// Disconnect a container from the network; prints the IPs released.
    Detach {
        #[arg(value_name = "CONTAINER")]
        container: String,
    },
    /// List the containers attached on this host: id, MAC, addresses.
    Ps,
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

async fn run(cli: Cli) -> Result<String, Failure> {
    match cli.command {
        Command::Attach { args: mut addrs } => {
            let container = addrs.pop().expect("clap requires at least one argument");
            let what = format!("attach {container}");
            // Reject bad addresses here, before anything is asked of the agent.
            for addr in &addrs {
                addr.parse::<AddrSpec>()
                    .map_err(|e| Failure::new(&what, e.to_string()))?;
            }
            let mut agent = connect(&cli.socket).await?;
            let reply = agent
                .attach(AttachRequest { container, addrs })
                .await
                .map_err(|s| Failure::new(&what, s.message()))?
                .into_inner();
            Ok(format!("{}\n", reply.ips.join(" ")))
        }
        Command::Detach { container } => {
            let what = format!("detach {container}");
            let mut agent = connect(&cli.socket).await?;
            let reply = agent
                .detach(DetachRequest { container })
                .await
                .map_err(|s| Failure::new(&what, s.message()))?
                .into_inner();
            Ok(format!("{}\n", reply.ips.join(" ")))
        }
        Command::Ps => {
            let mut agent = connect(&cli.socket).await?;
            let reply = agent
                .ps(PsRequest {})
                .await
                .map_err(|s| Failure::new("ps", s.message()))?
                .into_inner();
            Ok(reply
                .entries
                .iter()
                .map(|e| format!("{} {} {}\n", e.container_id, e.mac, e.cidrs.join(" ")))
                .collect())
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
            "ip:10.0.0.3/24",
            "netns:c1",
        ])
        .unwrap();
        let Command::Attach { args } = cli.command else {
            panic!("not an attach")
        };
        assert_eq!(args, ["10.0.0.2/24", "ip:10.0.0.3/24", "netns:c1"]);
        let missing = Cli::try_parse_from(["weftctl", "attach"]).unwrap_err();
        assert_eq!(missing.exit_code(), 2);
    }
}
