//! Running netlink requests inside another network namespace (a container's).
//!
//! A netlink socket belongs to the namespace of the thread that opens it, so each call gets a
//! short-lived thread that enters the namespace, opens its own connection and runs there; the
//! agent's runtime threads never change namespace.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

/// Runs `work` with a netlink handle bound to the namespace at `netns`.
pub async fn run_in<T, F, Fut>(netns: &Path, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let netns: PathBuf = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            let _ = tx.send(enter_and_run(&netns, work));
        })
        .context("cannot start a thread for the container namespace")?;
    rx.await
        .map_err(|_| anyhow!("the container namespace thread died"))?
}

fn enter_and_run<T, F, Fut>(netns: &Path, work: F) -> anyhow::Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let file = File::open(netns)
        .with_context(|| format!("cannot open network namespace {}", netns.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("{} is not a network namespace", netns.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime in the container namespace")?;
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection()
            .context("cannot open a netlink socket in the container namespace")?;
        tokio::spawn(connection);
        work(handle).await
    })
}
