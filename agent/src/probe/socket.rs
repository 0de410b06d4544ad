//! The probes' socket: ICMPv6 echo requests out of the probe device from this host's probe
//! address, each of an exact size and never fragmented on this host, and the replies to them.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// IPv6 header before the ICMPv6 message.
const IPV6_HEADER: u32 = 40;
/// Type, code, checksum, identifier and sequence number.
const ECHO_HEADER: usize = 8;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
/// Room for the replies of one round, which come back together: about 1 KiB of the socket's
/// buffer each, so the default (208 KiB) would drop some at a few hundred peers.
const RECEIVE_BUFFER: libc::c_int = 8 << 20;
/// ICMPV6_FILTER of linux/icmpv6.h (libc has no name for it): which ICMPv6 types a raw socket
/// is not given, one bit per type.
const ICMPV6_FILTER: libc::c_int = 1;

pub struct ProbeSocket {
    /// A raw ICMPv6 socket. tokio's UdpSocket serves as its async wrapper: it is a datagram fd
    /// with send_to and recv_from, which is all a raw socket needs (the kernel puts in the
    /// ICMPv6 checksum, and takes port 0 as the socket's own protocol).
    socket: tokio::net::UdpSocket,
    /// The echo identifier of this agent's probes: a raw socket sees every echo reply that
    /// reaches the device.
    id: u16,
    buf: Vec<u8>,
}

/// An echo reply to one of this socket's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub from: Ipv6Addr,
    pub seq: u16,
    /// The IPv6 packet's size, as the probe's.
    pub size: u32,
}

/// Sets a socket option that neither socket2 nor nix has a setter for.
fn set_option<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, a plain value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl ProbeSocket {
    /// Opens the socket on `device`, sending from `local`. Needs the device and the address to
    /// exist: a socket bound to a device that is made anew must be opened again.
    pub fn open(device: &str, local: Ipv6Addr, id: u16) -> io::Result<ProbeSocket> {
        let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        socket.set_nonblocking(true)?;
        socket.bind_device(Some(device.as_bytes()))?;
        socket.bind(&SocketAddrV6::new(local, 0, 0, 0).into())?;
        let fd = socket.as_raw_fd();
        // Send at the device's MTU whatever path MTU the kernel has cached (the VXLAN device
        // caches a smaller one when its own link is smaller): each probe tests the path anew.
        set_option(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
        // A probe larger than the device is refused (EMSGSIZE), never fragmented.
        set_option(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_DONTFRAG,
            1 as libc::c_int,
        )?;
        // Echo replies only: the peers' echo requests, which the kernel answers itself, would
        // wake the agent as often again.
        let mut blocked = [u32::MAX; 8];
        blocked[usize::from(ECHO_REPLY) / 32] &= !(1 << (ECHO_REPLY % 32));
        set_option(fd, libc::IPPROTO_ICMPV6, ICMPV6_FILTER, blocked)?;
        // Past net.core.rmem_max, which the agent may (CAP_NET_ADMIN); the usual limit if not.
        set_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECEIVE_BUFFER)
            .or_else(|_| socket.set_recv_buffer_size(RECEIVE_BUFFER as usize))?;
        let socket = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
        Ok(ProbeSocket {
            socket,
            id,
            buf: vec![0; 1 << 16],
        })
    }

    /// Sends echo request `seq` to `to` as an IPv6 packet of `size` bytes.
    pub fn send(&self, to: Ipv6Addr, seq: u16, size: u32) -> io::Result<()> {
        let len = size.saturating_sub(IPV6_HEADER).max(ECHO_HEADER as u32) as usize;
        let mut msg = vec![0u8; len];
        msg[0] = ECHO_REQUEST;
        msg[4..6].copy_from_slice(&self.id.to_be_bytes());
        msg[6..8].copy_from_slice(&seq.to_be_bytes());
        let to = SocketAddr::V6(SocketAddrV6::new(to, 0, 0, 0));
        self.socket.try_send_to(&msg, to).map(drop)
    }

    /// The next echo reply to one of this socket's probes; another agent's (a raw socket sees
    /// every reply that reaches the device) is skipped.
    pub async fn recv(&mut self) -> io::Result<Reply> {
        loop {
            let (len, from) = self.socket.recv_from(&mut self.buf).await?;
            let msg = &self.buf[..len];
            let (SocketAddr::V6(from), true) = (from, len >= ECHO_HEADER) else {
                continue;
            };
            if msg[0] != ECHO_REPLY || u16::from_be_bytes([msg[4], msg[5]]) != self.id {
                continue;
            }
            return Ok(Reply {
                from: *from.ip(),
                seq: u16::from_be_bytes([msg[6], msg[7]]),
                size: len as u32 + IPV6_HEADER,
            });
        }
    }
}
