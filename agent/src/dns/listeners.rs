//! One DNS listener (UDP and TCP on 127.0.0.11:53) inside each local container's namespace,
//! as Docker's embedded DNS has it: every container reaches its own host's agent whatever its
//! networks, and the host needs no address or route on them. The sockets are opened in the
//! namespace and served by the agent's runtime. In containers on a network of weft's Docker
//! driver, where Docker's own DNS holds 127.0.0.11, it listens on 127.0.0.12 instead.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tracing::debug;

use super::LISTEN_ADDR;
use super::handler::DnsState;
use super::records::Records;
use super::serve::Serving;
use crate::container::Container;
use crate::netlink;
use crate::netns;
use crate::tables::TablesCopy;

/// The inode of a namespace file: another inode (or none) means another namespace (or none).
fn inode_of(netns: &Path) -> Option<u64> {
    std::fs::metadata(netns).ok().map(|m| m.ino())
}

/// The DNS port inside containers.
const PORT: u16 = 53;

/// A container's listener and the namespace it serves.
struct Served {
    /// Dropping it stops its tasks and closes its sockets.
    _serving: Serving,
    /// The namespace file and its inode when the listener was opened.
    netns: PathBuf,
    inode: u64,
}

pub struct Listeners {
    state: Arc<DnsState>,
    /// Per container id.
    servers: Mutex<HashMap<String, Served>>,
}

impl Listeners {
    pub fn new(state: Arc<DnsState>) -> Listeners {
        Listeners {
            state,
            servers: Mutex::new(HashMap::new()),
        }
    }

    pub fn state(&self) -> &Arc<DnsState> {
        &self.state
    }

    pub fn serves(&self, container_id: &str) -> bool {
        self.servers
            .lock()
            .expect("listeners lock poisoned")
            .contains_key(container_id)
    }

    /// Serves DNS inside the container, unless it is served already.
    pub async fn ensure(&self, container: &Container) -> anyhow::Result<()> {
        self.ensure_at(container, LISTEN_ADDR).await
    }

    /// [`Listeners::ensure`] on `addr` (a loopback address: every one is the container's own).
    pub async fn ensure_at(&self, container: &Container, addr: Ipv4Addr) -> anyhow::Result<()> {
        if self.serves(&container.id) {
            return Ok(());
        }
        let (udp, tcp) = netns::run_in(&container.netns, move |handle| async move {
            // The listening address is on loopback, which a container may not have up yet.
            if let Some(lo) = netlink::link_by_name(&handle, "lo").await? {
                netlink::set_up(&handle, &lo).await?;
            }
            let udp = std::net::UdpSocket::bind((addr, PORT))
                .with_context(|| format!("cannot listen on udp {addr}:{PORT}"))?;
            let tcp = std::net::TcpListener::bind((addr, PORT))
                .with_context(|| format!("cannot listen on tcp {addr}:{PORT}"))?;
            // The UDP socket is served blocking, by a thread of its own (`serve`).
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })
        .await
        .with_context(|| format!("DNS for container {}", container.id))?;
        let serving = Serving::start(self.state.clone(), udp, tcp)?;
        debug!(container = %container.id, "serving DNS");
        let served = Served {
            _serving: serving,
            netns: container.netns.clone(),
            inode: inode_of(&container.netns).unwrap_or_default(),
        };
        self.servers
            .lock()
            .expect("listeners lock poisoned")
            .insert(container.id.clone(), served);
        Ok(())
    }

    /// Closes the listeners of containers whose namespace is gone (the container exited, or
    /// `ip netns del`), as often as `every`. Their sockets would otherwise keep the namespace,
    /// and so the veth, alive: the container's addresses would never be released.
    pub async fn close_when_namespaces_go(&self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.servers
                .lock()
                .expect("listeners lock poisoned")
                .retain(|id, served| {
                    let here = inode_of(&served.netns) == Some(served.inode);
                    if !here {
                        debug!(container = %id, "namespace gone; closing its DNS");
                    }
                    here
                });
        }
    }

    /// Gives the DNS server the names the tables hold now, unless they are those it has.
    pub fn serve_names(&self, tables: &TablesCopy) {
        if !tables.take_names_changed() {
            return;
        }
        if let Some(records) = tables.read(|t| Records::from_tables(t, &self.state.domain)) {
            self.state.set_records(records);
        }
    }

    /// Stops serving containers that `keep` does not select (they left this host).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.servers
            .lock()
            .expect("listeners lock poisoned")
            .retain(|id, _| keep(id));
    }
}
