//! This host's WireGuard: one interface, `weftwg`, that encrypted networks' VXLAN devices send
//! through (their VTEPs are the hosts' tunnel addresses on it, see `names::tunnel_addr`), with
//! one WireGuard peer per remote host that shares an encrypted network with this one. The kernel
//! still does all VXLAN work; only the hop between hosts is encrypted.
//!
//! Where the kernel has WireGuard the interface is a `wireguard` link, configured over generic
//! netlink ([`kernel`]). Otherwise (this machine's kernel has none) it is a TUN device run by
//! `wireguard-go`, WireGuard's own userspace implementation (Debian packages it), configured
//! over its UAPI socket ([`uapi`]). That is a process of its own, so an agent that restarts
//! leaves the tunnel up and finds it again, as it finds its kernel devices; deleting the
//! interface ends it.

mod kernel;
pub mod keys;
mod uapi;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use netlink_packet_route::link::InfoKind;
use rtnetlink::Handle;
use tracing::{info, warn};
use weft_proto::names::{TUNNEL_PREFIX_LEN, WIREGUARD_DEVICE, tunnel_addr};
use weft_proto::rows::WgPeer;
use weft_proto::wireguard::WgKey;

use crate::netlink::{self, Link};
use keys::KeyPair;

/// The userspace WireGuard the agent runs.
const WIREGUARD_GO: &str = "wireguard-go";

/// How long a new wireguard-go may take to make its interface and socket.
const START_WAIT: Duration = Duration::from_secs(5);

/// A remote host as this host's WireGuard must know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its VTEP and WireGuard port: where its encrypted frames go.
    pub endpoint: SocketAddr,
    /// Its tunnel address: the one source WireGuard takes from it, and where VXLAN sends.
    pub tunnel: Ipv6Addr,
}

/// What an interface says of itself: its own key and port, and its peers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Device {
    pub private_key: Option<WgKey>,
    pub listen_port: u16,
    pub peers: BTreeMap<WgKey, PeerState>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<String>,
    /// The latest handshake; none before the first.
    pub last_handshake: Option<SystemTime>,
}

/// One change of an interface's settings, as both ways of configuring it take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Own {
        private_key: WgKey,
        port: u16,
    },
    RemovePeer(WgKey),
    /// Adds the peer, or makes its endpoint and allowed IP (its tunnel address alone) these.
    SetPeer {
        key: WgKey,
        spec: PeerSpec,
    },
}

/// Who runs the interface: the kernel (generic netlink) or wireguard-go (its UAPI socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Kernel,
    Userspace,
}

impl Control {
    /// A kernel WireGuard link is of kind `wireguard`; wireguard-go's is a TUN device.
    fn of(link: &Link) -> Control {
        match link.kind {
            Some(InfoKind::Wireguard) => Control::Kernel,
            _ => Control::Userspace,
        }
    }
}

pub struct Wireguard {
    keys: KeyPair,
    port: u16,
    tunnel: Ipv6Addr,
    /// wireguard-go's /run, bind-mounted there in a mount namespace of its own: it keeps its
    /// socket at a fixed path (/run/wireguard/weftwg.sock), which would be every agent's on a
    /// machine that runs several (each in its network namespace).
    run_dir: PathBuf,
}

impl Wireguard {
    /// This host's WireGuard with the key pair kept in `state_dir` (made on first use), on UDP
    /// `port`, with the tunnel address of `vtep`.
    pub fn new(state_dir: &Path, port: u16, vtep: IpAddr) -> anyhow::Result<Wireguard> {
        Ok(Wireguard {
            keys: KeyPair::load_or_create(state_dir)?,
            port,
            tunnel: tunnel_addr(vtep),
            run_dir: state_dir.join("run"),
        })
    }

    /// What the tables carry of this host's WireGuard.
    pub fn peer(&self) -> WgPeer {
        WgPeer {
            key: self.keys.public,
            port: self.port,
        }
    }

    pub fn tunnel(&self) -> Ipv6Addr {
        self.tunnel
    }

    fn socket(&self) -> PathBuf {
        self.run_dir
            .join("wireguard")
            .join(format!("{WIREGUARD_DEVICE}.sock"))
    }

    /// Makes the interface exist with this host's key, port and tunnel address, up with `mtu`;
    /// what is right already is left alone. A new one is the kernel's where the kernel has
    /// WireGuard, else wireguard-go's; a userspace one nobody answers for (its wireguard-go is
    /// gone) is replaced.
    pub async fn ensure(&self, handle: &Handle, mtu: u32) -> anyhow::Result<Link> {
        let link = match netlink::link_by_name(handle, WIREGUARD_DEVICE).await? {
            Some(link) if Control::of(&link) == Control::Kernel => link,
            Some(link) if uapi::get(&self.socket()).await.is_ok() => link,
            stale => {
                if let Some(link) = stale {
                    warn!(
                        link = WIREGUARD_DEVICE,
                        "no WireGuard answers for it; replacing it"
                    );
                    netlink::delete_link(handle, &link).await?;
                }
                match netlink::create_wireguard(handle, WIREGUARD_DEVICE).await? {
                    Some(link) => link,
                    None => self.start(handle).await?,
                }
            }
        };
        let control = Control::of(&link);
        let device = self.get(control).await?;
        if device.private_key != Some(self.keys.private) || device.listen_port != self.port {
            let own = Change::Own {
                private_key: self.keys.private,
                port: self.port,
            };
            self.set(control, &[own])
                .await
                .with_context(|| format!("cannot set {WIREGUARD_DEVICE}'s key and port"))?;
        }
        netlink::ensure_address_nodad(handle, &link, self.tunnel.into(), TUNNEL_PREFIX_LEN).await?;
        netlink::set_mtu_up(handle, &link, mtu).await?;
        Ok(link)
    }

    async fn get(&self, control: Control) -> anyhow::Result<Device> {
        match control {
            Control::Kernel => kernel::get(WIREGUARD_DEVICE).await,
            Control::Userspace => uapi::get(&self.socket()).await,
        }
    }

    async fn set(&self, control: Control, changes: &[Change]) -> anyhow::Result<()> {
        match control {
            Control::Kernel => kernel::set(WIREGUARD_DEVICE, changes).await,
            Control::Userspace => uapi::set(&self.socket(), changes).await,
        }
    }

    /// Runs wireguard-go for the interface and waits until both are there.
    async fn start(&self, handle: &Handle) -> anyhow::Result<Link> {
        let mut child = spawn(&self.run_dir)?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{WIREGUARD_GO} exited ({status}) before making {WIREGUARD_DEVICE}; see {}",
                    self.run_dir.join(LOG).display()
                );
            }
            if let Some(link) = netlink::link_by_name(handle, WIREGUARD_DEVICE).await?
                && uapi::get(&self.socket()).await.is_ok()
            {
                info!(
                    link = WIREGUARD_DEVICE,
                    pid = child.id(),
                    "{WIREGUARD_GO} started (the kernel has no WireGuard)"
                );
                // Reaped where it cannot hold anything up; it outlives this agent if need be.
                std::thread::spawn(move || {
                    let status = child.wait();
                    warn!(?status, "{WIREGUARD_GO} exited");
                });
                return Ok(link);
            }
            if started.elapsed() > START_WAIT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{WIREGUARD_GO} did not make {WIREGUARD_DEVICE} within {START_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes the peers of the interface `link` exactly `wanted`, by public key: a peer that is
    /// right is not touched, so its session goes on; a peer whose key changed (its host
    /// re-joined) is replaced. Returns how many peers it changed.
    pub async fn settle_peers(
        &self,
        link: &Link,
        wanted: &BTreeMap<WgKey, PeerSpec>,
    ) -> anyhow::Result<usize> {
        let control = Control::of(link);
        let held = self.get(control).await?.peers;
        let mut changes: Vec<Change> = held
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .map(|key| Change::RemovePeer(*key))
            .collect();
        for (key, spec) in wanted {
            let allowed = format!("{}/128", spec.tunnel);
            let right = held.get(key).is_some_and(|p| {
                p.endpoint == Some(spec.endpoint) && p.allowed_ips == [allowed.clone()]
            });
            if !right {
                changes.push(Change::SetPeer {
                    key: *key,
                    spec: *spec,
                });
            }
        }
        if !changes.is_empty() {
            self.set(control, &changes)
                .await
                .with_context(|| format!("cannot set {WIREGUARD_DEVICE}'s peers"))?;
            info!(
                changed = changes.len(),
                peers = wanted.len(),
                "WireGuard peers set"
            );
        }
        Ok(changes.len())
    }

    /// The peers the interface has, by public key, with their latest handshake; none when there
    /// is no interface.
    pub async fn handshakes(&self, handle: &Handle) -> BTreeMap<WgKey, Option<SystemTime>> {
        let link = netlink::link_by_name(handle, WIREGUARD_DEVICE).await;
        let Ok(Some(link)) = link else {
            return BTreeMap::new();
        };
        match self.get(Control::of(&link)).await {
            Ok(device) => device
                .peers
                .into_iter()
                .map(|(key, peer)| (key, peer.last_handshake))
                .collect(),
            Err(_) => BTreeMap::new(),
        }
    }
}

/// wireguard-go's standard error, in its run directory.
const LOG: &str = "wireguard-go.log";

/// Starts wireguard-go in the foreground for the interface: in a session of its own (a signal
/// to the agent's is not for it), in a mount namespace of its own whose /run is `run_dir`.
fn spawn(run_dir: &Path) -> anyhow::Result<std::process::Child> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(LOG))
        .with_context(|| format!("cannot open {}", run_dir.join(LOG).display()))?;
    let run_dir = run_dir.to_path_buf();
    let mut command = Command::new(WIREGUARD_GO);
    command
        .args(["-f", WIREGUARD_DEVICE])
        // Foreground: no daemon of its own, and no banner urging the kernel module.
        .env("WG_PROCESS_FOREGROUND", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: between fork and exec only system calls run (nix copies short paths onto the
    // stack, not the heap).
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            let none: Option<&str> = None;
            mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
            mount(Some(&run_dir), "/run", none, MsFlags::MS_BIND, none)?;
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot run {WIREGUARD_GO} (is it installed?)"))
}
