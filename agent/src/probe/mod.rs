//! Data-path probes: whether frames cross to each peer through the VXLAN path itself, not only
//! whether its agent talks to the controller.
//!
//! Every host has a probe device (`weft-probe`): a VXLAN device on a VNI no network has, on the
//! UDP port every network uses, on no bridge, with the outer header's DF bit set. It holds an
//! IPv6 address derived from the host's VTEP (`names::probe_addr`), and, for every remote peer,
//! that peer's probe MAC at its VTEP and its probe address at that MAC (reconciled with the rest
//! of the datapath). Each round (every `--probe-interval`) the agent sends every peer ICMPv6 echo
//! requests from its probe address: a small one and one of the network's MTU, plus, while the
//! full-size one is lost, sizes that narrow down the largest that crosses ([`path`]). The peer's
//! kernel answers through its own probe device. No container and no container address is
//! involved, and nothing is multicast.

pub mod path;
mod socket;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use weft_proto::names::{PROBE_DEVICE, probe_addr};

use crate::agent::Agent;
use crate::desired::probe_peers;
use crate::tables::TablesCopy;
use path::{Change, Path, State};
use socket::{ProbeSocket, Reply};

/// Rounds without any reply after which a path counts as failed.
const FAIL_ROUNDS: u32 = 3;

/// The data paths to every remote peer, by peer name, as the probes last saw them.
#[derive(Default)]
pub struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    paths: BTreeMap<String, Path>,
    /// Why no probe can be sent now (the probe socket cannot be opened or used), if so.
    trouble: Option<String>,
}

/// One peer's data path as `weftctl status connections` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub peer: String,
    pub vtep: IpAddr,
    pub state: State,
    /// Why it failed; empty otherwise.
    pub why: String,
    pub rtt: Option<Duration>,
    pub mtu: Option<u32>,
    /// How long it has been in this state.
    pub for_: Duration,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("connections lock poisoned")
    }

    /// Every peer's path now.
    pub fn list(&self) -> Vec<Connection> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .paths
            .iter()
            .map(|(peer, p)| {
                let why = match (&p.state, &inner.trouble) {
                    (State::Failed, None) => silence(p, now),
                    (State::Failed, Some(trouble)) => format!("{}; {trouble}", silence(p, now)),
                    _ => String::new(),
                };
                Connection {
                    peer: peer.clone(),
                    vtep: p.vtep,
                    state: p.state.clone(),
                    why,
                    rtt: p.rtt,
                    mtu: p.mtu,
                    for_: now.saturating_duration_since(p.since),
                }
            })
            .collect()
    }
}

fn silence(path: &Path, now: Instant) -> String {
    format!("no reply for {}s", path.silent_for(now).as_secs())
}

pub struct Prober {
    tables: Arc<TablesCopy>,
    connections: Arc<Connections>,
    /// This host's VTEP, and the network MTU (the full-size probe).
    local: IpAddr,
    full: u32,
    interval: Duration,
    /// The echo identifier of this agent's probes.
    id: u16,
    seq: u16,
    /// Probes of the round under way by sequence number: the peer, the size, when sent.
    in_flight: HashMap<u16, (String, u32, Instant)>,
    socket: Option<ProbeSocket>,
}

/// What wakes the prober.
enum Event {
    Round,
    Reply(std::io::Result<Reply>),
}

impl Prober {
    /// Probes every `interval` (zero: never).
    pub fn new(agent: &Agent, interval: Duration) -> Prober {
        Prober {
            tables: agent.tables().clone(),
            connections: agent.connections().clone(),
            local: agent.advertise_addr(),
            full: agent.datapath().mtu(),
            interval,
            id: rand::random(),
            seq: 0,
            in_flight: HashMap::new(),
            socket: None,
        }
    }

    pub async fn run(mut self) {
        if self.interval.is_zero() {
            return std::future::pending().await;
        }
        let mut rounds = tokio::time::interval(self.interval);
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let event = tokio::select! {
                _ = rounds.tick() => Event::Round,
                reply = next_reply(&mut self.socket) => Event::Reply(reply),
            };
            match event {
                Event::Round => self.round(),
                Event::Reply(Ok(reply)) => self.answered(reply),
                Event::Reply(Err(e)) => {
                    self.connections.lock().trouble =
                        Some(format!("cannot read probe replies: {e}"));
                    self.socket = None;
                }
            }
        }
    }

    /// Ends the round under way, then sends the next one's probes to every peer in the tables.
    fn round(&mut self) {
        let now = Instant::now();
        let Some(peers) = self.tables.read(|t| probe_peers(t, self.tables.me())) else {
            return;
        };
        let fail_after = self.interval * FAIL_ROUNDS;
        let connections = self.connections.clone();
        let mut inner = connections.lock();
        inner
            .paths
            .retain(|peer, path| peers.get(peer) == Some(&path.vtep));
        for (peer, vtep) in peers {
            inner
                .paths
                .entry(peer)
                .or_insert_with(|| Path::new(vtep, now));
        }
        self.in_flight.clear();
        for (peer, path) in inner.paths.iter_mut() {
            for change in path.close_round(self.full, fail_after, now) {
                self.log(peer, path, &change, now);
            }
        }
        if self.socket.is_none() {
            match ProbeSocket::open(PROBE_DEVICE, probe_addr(self.local), self.id) {
                Ok(socket) => self.socket = Some(socket),
                Err(e) => {
                    inner.trouble =
                        Some(format!("cannot open a probe socket on {PROBE_DEVICE}: {e}"));
                    return;
                }
            }
        }
        inner.trouble = self.send_round(&mut inner.paths, now).err();
    }

    /// Sends each path its probes; a socket that fails (say, its device was made anew) is
    /// opened again next round.
    fn send_round(
        &mut self,
        paths: &mut BTreeMap<String, Path>,
        now: Instant,
    ) -> Result<(), String> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        for (peer, path) in paths.iter_mut() {
            for size in path.sizes(self.full) {
                self.seq = self.seq.wrapping_add(1);
                path.sent(size);
                match socket.send(probe_addr(path.vtep), self.seq, size) {
                    Ok(()) => {
                        self.in_flight.insert(self.seq, (peer.clone(), size, now));
                    }
                    // Larger than the device, or no room just now: this size is lost.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EMSGSIZE)
                            || e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.socket = None;
                        return Err(format!("cannot send probes on {PROBE_DEVICE}: {e}"));
                    }
                }
            }
        }
        Ok(())
    }

    fn answered(&mut self, reply: Reply) {
        let Some((peer, size, sent)) = self.in_flight.remove(&reply.seq) else {
            return;
        };
        let now = Instant::now();
        let connections = self.connections.clone();
        let mut inner = connections.lock();
        let Some(path) = inner.paths.get_mut(&peer) else {
            return;
        };
        if probe_addr(path.vtep) != reply.from || size != reply.size {
            return;
        }
        if let Some(change) = path.answered(size, now - sent, now) {
            self.log(&peer, path, &change, now);
        }
    }

    /// A log line for each change an operator wants to hear of.
    fn log(&self, peer: &str, path: &Path, change: &Change, now: Instant) {
        let vtep = path.vtep;
        match change {
            Change::Up => info!(peer, %vtep, "the data path to this peer works"),
            Change::Down => warn!(
                peer, %vtep,
                "the data path to this peer failed: {}", silence(path, now)
            ),
            Change::Mtu(_, mtu) if *mtu < self.full => warn!(
                peer, %vtep,
                "the path to this peer drops full-size frames: the largest that crosses is {mtu} \
                 bytes, the network MTU {}", self.full
            ),
            Change::Mtu(Some(_), mtu) => {
                info!(peer, %vtep, "the path to this peer carries full-size frames ({mtu} bytes)")
            }
            Change::Mtu(None, _) => {}
        }
    }
}

async fn next_reply(socket: &mut Option<ProbeSocket>) -> std::io::Result<Reply> {
    match socket {
        Some(socket) => socket.recv().await,
        None => std::future::pending().await,
    }
}
