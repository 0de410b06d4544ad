//! weftctl's command line, as clap reads it; the help, the shell completions and the man page
//! are all generated from these definitions.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// weftctl: the operator's CLI for weft. It talks to the weft-agent on this host.
///
/// CONTAINER is a Docker or Podman container's name, ID or unique ID prefix (resolved by the
/// agent through the Docker API at its --docker-host, default $DOCKER_HOST or
/// unix:///var/run/docker.sock), netns:NAME (/var/run/netns/NAME), pid:PID, or the path of a
/// network namespace.
///
/// ADDR is IP/LEN or ip:IP/LEN (that address), net:CIDR or net:NAME (a free address of that
/// network), or net:default (a free address of the default network; what no ADDR means).
#[derive(Parser, Debug)]
#[command(name = "weftctl", version)]
pub struct Cli {
    /// The agent's unix socket.
    #[arg(
        long,
        env = "WEFT_SOCKET",
        default_value = "/run/weft/agent.sock",
        global = true
    )]
    pub socket: PathBuf,
    /// How long to wait for the agent's (or the controller's admin API's) answer: seconds, or a
    /// number with s or m. Past it weftctl gives up, saying so.
    #[arg(long, default_value = "10s", value_parser = parse_timeout, global = true)]
    pub timeout: std::time::Duration,
    #[command(subcommand)]
    pub command: Command,
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match weft_process::parse_duration(s)? {
        d if d.is_zero() => Err("the timeout must be at least 1s".into()),
        d => Ok(d),
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Connect a container to networks with the given addresses; prints its IPs.
    #[command(
        override_usage = "weftctl attach [--name FQDN] [--[no-]rewrite-resolv] [ADDR...] CONTAINER"
    )]
    Attach {
        /// The container's DNS name [default: its hostname].
        #[arg(long, value_name = "FQDN")]
        name: Option<String>,
        /// Point the container's resolv.conf at weft's DNS (127.0.0.11, search domain first)
        /// [default: yes for Docker containers].
        #[arg(long, overrides_with = "no_rewrite_resolv")]
        rewrite_resolv: bool,
        /// Leave the container's resolv.conf as it is.
        #[arg(long)]
        no_rewrite_resolv: bool,
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
    /// List the containers attached on this host: id, MAC, addresses (the host first, if
    /// exposed).
    Ps {
        /// Only these containers.
        #[arg(value_name = "CONTAINER")]
        containers: Vec<String>,
        #[arg(long)]
        json: bool,
    },
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
    /// Follow the controller's tables although the agent refused them (the controller's store
    /// was emptied, replaced or restored from an older copy): the datapath then follows the
    /// store the controller serves now. Prints that store and the revision.
    AcceptController,
    /// Create, list and remove networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Show this host's agent, its controller connection, peers, networks and IPAM; or, with a
    /// subcommand, one of them in detail.
    Status {
        #[command(subcommand)]
        detail: Option<StatusCommand>,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Print everything the agent knows as one JSON document: status, connections, peers,
    /// controllers, networks, IPAM, endpoints, DNS and the last reconcile.
    Report,
    /// Forget a peer whose agent is gone; its addresses return to the pool.
    Rmpeer {
        #[arg(value_name = "PEER")]
        peer: String,
    },
    /// Add DNS records: the container's addresses (or the IPs given) under its name (or -h
    /// FQDN); or IPs under a name, with no container.
    #[command(
        name = "dns-add",
        disable_help_flag = true,
        override_usage = "weftctl dns-add [IP...] CONTAINER [-h FQDN] | IP... -h FQDN"
    )]
    DnsAdd(DnsRecordArgs),
    /// Remove DNS records added with dns-add (same arguments).
    #[command(
        name = "dns-remove",
        disable_help_flag = true,
        override_usage = "weftctl dns-remove [IP...] CONTAINER [-h FQDN] | IP... -h FQDN"
    )]
    DnsRemove(DnsRecordArgs),
    /// The addresses of a name in weft's DNS (a single label gets the domain appended).
    #[command(name = "dns-lookup")]
    DnsLookup {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Join tokens, made by the controller's admin API (run on the controller's host).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a shell completion script: `source <(weftctl completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print weftctl's man page (roff): `weftctl man > /usr/share/man/man1/weftctl.1`.
    Man,
}

/// `[IP...] CONTAINER [-h FQDN] | IP... -h FQDN`, as `weave dns-add` takes them.
#[derive(Args, Debug)]
pub struct DnsRecordArgs {
    /// The name [default: the container's].
    #[arg(short = 'h', value_name = "FQDN")]
    pub fqdn: Option<String>,
    /// Addresses, then the container (or only addresses, with -h).
    #[arg(required = true, value_name = "ARG")]
    pub args: Vec<String>,
    /// Print help (-h is the name here, as in Weave).
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network with its own VNI; prints NAME SUBNET vni=N.
    Create {
        name: String,
        /// Its subnet; twice for dual stack (one IPv4 and one IPv6 subnet).
        #[arg(long, value_name = "CIDR", required = true)]
        subnet: Vec<String>,
        /// Frames of the network cross between hosts only inside WireGuard (fixed at creation).
        #[arg(long)]
        encrypt: bool,
    },
    /// List networks: NAME SUBNET VNI ENDPOINTS ENCRYPTED.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a network that has no endpoints.
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a join token, good once: `weft-agent --join TOKEN` trades it for the agent's
    /// certificate. Prints the token.
    Create {
        /// How long the token may be used: seconds, or a number with s, m or h.
        #[arg(long, default_value = "1h", value_parser = weft_process::parse_duration)]
        ttl: std::time::Duration,
        /// The controller's admin socket.
        #[arg(long, default_value = "/run/weft/controller.sock", value_name = "PATH")]
        admin_socket: PathBuf,
    },
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCommand {
    /// Address use: range, and used and free addresses per network and per peer.
    Ipam,
    /// Networks with their endpoints and used and free addresses.
    Networks,
    /// Peers: address, whether their agent is connected to any controller (or since when it
    /// is gone), endpoints.
    Peers,
    /// The control plane's controllers: address, host, serving (since its start) or gone (since
    /// its last beat); the one answering is marked.
    Controllers,
    /// DNS: domain, TTL, upstream resolvers, and every name with its addresses.
    Dns,
    /// The data path to each remote peer, probed through the VXLAN path: its VTEP, ok (with the
    /// round trip and the largest packet that crosses) or failed (and why), or pending.
    Connections,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
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
    fn attach_takes_a_name_and_the_container_last() {
        let cli = Cli::try_parse_from([
            "weftctl",
            "attach",
            "--name",
            "bbox1.weave.local",
            "10.0.0.2/24",
            "my-test1",
        ])
        .unwrap();
        let Command::Attach { name, args, .. } = cli.command else {
            panic!("not an attach")
        };
        assert_eq!(name.as_deref(), Some("bbox1.weave.local"));
        assert_eq!(args, ["10.0.0.2/24", "my-test1"]);
        let missing = Cli::try_parse_from(["weftctl", "attach"]).unwrap_err();
        assert_eq!(missing.exit_code(), 2);
    }

    #[test]
    fn dns_add_takes_h_for_the_name() {
        let cli = Cli::try_parse_from(["weftctl", "dns-add", "10.2.0.9", "-h", "db.weave.local"])
            .unwrap();
        let Command::DnsAdd(a) = cli.command else {
            panic!("not a dns-add")
        };
        assert_eq!(a.fqdn.as_deref(), Some("db.weave.local"));
        assert_eq!(a.args, ["10.2.0.9"]);
    }

    #[test]
    fn json_goes_after_status_and_its_subcommands() {
        for args in [
            &["weftctl", "status", "--json"][..],
            &["weftctl", "status", "peers", "--json"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert!(matches!(cli.command, Command::Status { json: true, .. }));
        }
    }
}
