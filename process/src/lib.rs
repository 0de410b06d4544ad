//! What every weft binary does alike: log through `tracing` to stderr, filtered by `RUST_LOG`,
//! and stop cleanly on SIGTERM or SIGINT; serve their metrics; and what those holding many
//! connections do; reach a unix socket's gRPC service.

pub mod metrics;

pub fn init_logging() {
    init_logging_with(&[]);
}

/// [`init_logging`] with `directives` (e.g. `target=debug`) added to the filter, whatever
/// `RUST_LOG` says.
pub fn init_logging_with(directives: &[&str]) {
    init_logging_and(directives, tracing_subscriber::layer::Identity::new());
}

/// Logging with `directives` added to any filter (as [`init_logging_with`]), and `also` seeing
/// every event the filter lets through (to count some).
pub fn init_logging_and(
    directives: &[&str],
    also: impl tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    for directive in directives {
        filter = filter.add_directive(directive.parse().expect("a valid log directive"));
    }
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(also)
        .with(filter)
        .with(log)
        .init();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot install a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Listens on a unix socket only root may use (0600): weftctl's on the agent, the admin socket
/// on the controller. A leftover socket file is replaced, but not one that a running process
/// still serves. Errors name the path.
pub async fn bind_private_socket(
    path: &std::path::Path,
) -> std::io::Result<tokio::net::UnixListener> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::PermissionsExt;
    let at = |what: &str, e: Error| {
        Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| at("create the directory of", e))?;
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(Error::new(
            ErrorKind::AddrInUse,
            format!("another process is serving {}", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| at("listen on", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| at("restrict", e))?;
    Ok(listener)
}

/// A gRPC channel to a unix socket (the agent's, or the controller's admin socket): every
/// connection goes to `path`.
pub async fn unix_channel(
    path: &std::path::Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API but unused.
    tonic::transport::Endpoint::from_static("http://weft")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// A duration flag: seconds, or a number with s, m or h (`90s`, `3m`, `1h`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
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
    Ok(std::time::Duration::from_secs(secs))
}

/// Raises the soft limit on open files to the hard one, for a process that holds a socket or two
/// per agent: the usual soft limit of 1024 is reached at about 500 agents. Returns the soft limit
/// before and after.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard))
}
