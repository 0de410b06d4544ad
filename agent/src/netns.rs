//! Running netlink requests inside another network namespace (a container's).
//!
//! A netlink socket belongs to the namespace of the thread that opens it, so each call gets a
//! short-lived thread that enters the namespace, opens its own connection and runs there; the
//! agent's runtime threads never change namespace.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};
use rtnetlink::Handle;

/// Why a path cannot be entered as a network namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamespaceError {
    #[error("network namespace {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("{} is not a network namespace: it is {kind}", path.display())]
    NotNetwork { path: PathBuf, kind: String },
    #[error("cannot open network namespace {}: {why}", path.display())]
    Unreadable { path: PathBuf, why: String },
}

/// Opens a network namespace file, checking that it is one. Nothing but a regular file is
/// opened (a FIFO would block the opener, a device may act on open), and that without
/// blocking; it must then be on nsfs and be a network namespace, not another kind.
pub fn open(path: &Path) -> Result<File, NamespaceError> {
    let not_network = |kind: &str| NamespaceError::NotNetwork {
        path: path.to_path_buf(),
        kind: kind.to_string(),
    };
    let unreadable = |e: std::io::Error| NamespaceError::Unreadable {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => NamespaceError::Missing(path.to_path_buf()),
        _ => unreadable(e),
    })?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(not_network(if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        }));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(unreadable)?;
    let on_nsfs = fstatfs(&file).is_ok_and(|fs| fs.filesystem_type() == NSFS_MAGIC);
    if !on_nsfs {
        return Err(not_network("a regular file"));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the open descriptor's namespace.
    let kind = unsafe { ns_get_nstype(file.as_raw_fd()) }.map_err(|e| unreadable(e.into()))?;
    match CloneFlags::from_bits_truncate(kind) {
        CloneFlags::CLONE_NEWNET => Ok(file),
        other => Err(not_network(&format!("a {} namespace", kind_name(other)))),
    }
}

// NS_GET_NSTYPE, _IO(0xb7, 0x3) in linux/nsfs.h: the CLONE_NEW* flag of a namespace file.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

fn kind_name(kind: CloneFlags) -> &'static str {
    match kind {
        CloneFlags::CLONE_NEWNS => "mnt",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUSER => "user",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        _ => "non-network",
    }
}

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
    let file = open(netns)?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter network namespace {}", netns.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(path: &Path) -> String {
        open(path).map(drop).unwrap_err().to_string()
    }

    #[test]
    fn only_a_network_namespace_is_opened() {
        assert!(open(Path::new("/proc/self/ns/net")).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        for (path, kind) in [
            (fifo.as_path(), "a FIFO"),
            (file.as_path(), "a regular file"),
            (dir.path(), "a directory"),
            (Path::new("/dev/null"), "a character device"),
            (Path::new("/proc/self/ns/mnt"), "a mnt namespace"),
        ] {
            assert_eq!(
                refusal(path),
                format!(
                    "{} is not a network namespace: it is {kind}",
                    path.display()
                )
            );
        }
        let gone = dir.path().join("gone");
        assert_eq!(
            refusal(&gone),
            format!("network namespace {} does not exist", gone.display())
        );
    }
}
