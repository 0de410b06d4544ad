//! Serving one DNS listener: a UDP socket and a TCP listener.
//!
//! UDP gets a thread of its own, blocked in `recv_from`: a query for weft's names is answered
//! there at once, two system calls in all, as few as dnsmasq's, with nothing else of the agent
//! in its way. Served as tasks of the agent's runtime, a query cost 1.5 times dnsmasq's CPU and
//! latency (epoll woke a worker for every answer sent, and a task was spawned for each query;
//! `make bench-dns`, BENCHMARKS.md). Only queries for the upstream resolvers, which wait on the
//! network, become tasks of the runtime, no more than [`MAX_FORWARDS`] at once. TCP, rare and
//! slower anyway, is served by tasks of the runtime.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::debug;

use super::handler::{self, DnsState, Handled, Transport};
use crate::metrics::METRICS;

/// The largest UDP query taken; a longer datagram arrives cut short and reads as malformed.
const MAX_UDP_QUERY: usize = 4096;
/// Forwarded UDP queries in flight per listener; more get SERVFAIL at once, so a flood of
/// them costs bounded memory and upstream sockets.
const MAX_FORWARDS: usize = 256;
/// How long the UDP thread waits in `recv_from` before it looks whether it should stop; only
/// a fallback: stopping wakes it at once.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP connections open at once per listener; more wait to be accepted.
const MAX_TCP_CONNECTIONS: usize = 64;
/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// One listener being served; dropping it stops serving and closes its sockets before it
/// returns, so the address can be bound again at once.
pub struct Serving {
    udp: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    receiver: Option<JoinHandle<()>>,
    /// Dropped with the listener: the TCP tasks end with it.
    _tcp: JoinSet<()>,
}

impl Serving {
    /// Serves `udp` (blocking) on a thread of its own and `tcp` (non-blocking) on the current
    /// runtime, where forwarded queries go too.
    pub fn start(
        state: Arc<DnsState>,
        udp: UdpSocket,
        tcp: std::net::TcpListener,
    ) -> std::io::Result<Serving> {
        let runtime = Handle::current();
        udp.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
        let udp = Arc::new(udp);
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = {
            let (state, udp, stop) = (state.clone(), udp.clone(), stop.clone());
            std::thread::Builder::new()
                .name("weft-dns".into())
                .spawn(move || serve_udp(&state, &udp, &stop, &runtime))?
        };
        let mut tcp_tasks = JoinSet::new();
        tcp_tasks.spawn(serve_tcp(state, TcpListener::from_std(tcp)?));
        Ok(Serving {
            udp,
            stop,
            receiver: Some(receiver),
            _tcp: tcp_tasks,
        })
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Shutting down reading wakes a thread blocked in recv_from at once; on an unconnected
        // UDP socket Linux does that too, and answers ENOTCONN, which says nothing here.
        let _ = shutdown(self.udp.as_raw_fd(), Shutdown::Read);
        if let Some(receiver) = self.receiver.take() {
            // At once (woken above), or within RECEIVE_TIMEOUT.
            let _ = receiver.join();
        }
    }
}

/// Answers the UDP queries until `stop`.
fn serve_udp(state: &Arc<DnsState>, socket: &Arc<UdpSocket>, stop: &AtomicBool, runtime: &Handle) {
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    while !stop.load(Ordering::Relaxed) {
        let (n, client) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            // A timeout, being stopped, or an ICMP error of an earlier answer: the socket
            // itself still works.
            Err(e) => {
                debug!("DNS: receiving on udp: {e}");
                continue;
            }
        };
        let started = Instant::now();
        let bytes = &buf[..n];
        let query = match handler::handle(state, bytes, Transport::Udp) {
            Handled::Answer(answer, how) => {
                send(socket, &answer, client);
                METRICS.dns_query(how, started.elapsed());
                continue;
            }
            Handled::Forward(query) => query,
            Handled::Ignore => continue,
        };
        let Ok(permit) = forwards.clone().try_acquire_owned() else {
            let (answer, how) = handler::failed(&query, Transport::Udp);
            send(socket, &answer, client);
            METRICS.dns_query(how, started.elapsed());
            continue;
        };
        // The answer goes out only while the listener is served.
        let (state, socket, bytes) = (state.clone(), Arc::downgrade(socket), bytes.to_vec());
        runtime.spawn(async move {
            let (answer, how) = handler::forward(&state, &query, &bytes, Transport::Udp).await;
            if let Some(socket) = Weak::upgrade(&socket) {
                send(&socket, &answer, client);
            }
            METRICS.dns_query(how, started.elapsed());
            drop(permit);
        });
    }
}

fn send(socket: &UdpSocket, answer: &[u8], client: SocketAddr) {
    if let Err(e) = socket.send_to(answer, client) {
        debug!("DNS: cannot answer {client}: {e}");
    }
}

async fn serve_tcp(state: Arc<DnsState>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    // Dropped with this task: the connections end with the listener.
    let mut connections = JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!("DNS: accepting on tcp: {e}");
                continue;
            }
        };
        let state = state.clone();
        connections.spawn(async move {
            if let Err(e) = serve_connection(&state, stream).await {
                debug!("DNS: tcp connection: {e}");
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Answers the queries of one TCP connection (each behind its two-byte length, RFC 1035
/// 4.2.2) in turn, until the client closes it or stays silent for [`TCP_IDLE`].
async fn serve_connection(state: &DnsState, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            // Closed, or idle: either way the conversation is over.
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        let mut query = vec![0u8; len];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let started = Instant::now();
        let (answer, how) = match handler::handle(state, &query, Transport::Tcp) {
            Handled::Answer(answer, how) => (answer, how),
            Handled::Forward(message) => {
                handler::forward(state, &message, &query, Transport::Tcp).await
            }
            Handled::Ignore => continue,
        };
        let len = u16::try_from(answer.len()).expect("answers over TCP fit their length field");
        let mut framed = Vec::with_capacity(2 + answer.len());
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        stream.write_all(&framed).await?;
        METRICS.dns_query(how, started.elapsed());
    }
}
