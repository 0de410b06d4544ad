//! Many requests of one kind in few system calls, for programming a large network: the kernel
//! takes every request of one `sendmsg` in turn before the call returns, and, asked for no
//! acknowledgement, answers only those that fail. So a write costs no round trip, no
//! acknowledgement and no wake-up of its own, where rtnetlink's handle sends each request on its
//! own and waits for its answer (at 100,000 entries, the difference between trailing
//! `ip -batch` and keeping up with it).

use anyhow::{Context, anyhow};
use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Requests per `sendmsg`: few enough that the answers of a chunk that fails whole fit in the
/// socket's buffer.
const CHUNK: usize = 256;

/// Room for a chunk's answers (an error repeats its request; the kernel counts about 1 KiB a
/// message against the buffer).
const ANSWERS_BUFFER: usize = 1 << 20;

/// A request of a batch: the message and its flags beyond NLM_F_REQUEST.
pub(super) struct Request {
    pub message: RouteNetlinkMessage,
    pub flags: u16,
}

/// Sends `request(item)` for every item, in order; fails with the first failure the kernel
/// reports (`describe` names its item), but for errno `tolerated`: the kernel's way of saying
/// that what was asked is so already.
pub(super) fn send_all<T>(
    items: &[T],
    request: impl Fn(&T) -> Request,
    tolerated: Option<Errno>,
    describe: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let socket = open().context("cannot open a netlink socket")?;
    let mut buf = Vec::new();
    for chunk in items.chunks(CHUNK) {
        buf.clear();
        for (i, item) in chunk.iter().enumerate() {
            let Request { message, flags } = request(item);
            let mut msg = NetlinkMessage::from(message);
            msg.header.flags = NLM_F_REQUEST | flags;
            // Numbered from 1 within the chunk: an answer names its request by it.
            msg.header.sequence_number = i as u32 + 1;
            msg.finalize();
            let start = buf.len();
            buf.resize(start + msg.buffer_len(), 0);
            msg.serialize(&mut buf[start..]);
        }
        socket
            .send(&buf, 0)
            .context("cannot send requests to the kernel")?;
        let failed = failures(&socket, tolerated).context("cannot read the kernel's answers")?;
        if let Some((seq, errno)) = failed {
            let item = seq
                .checked_sub(1)
                .and_then(|i| chunk.get(i as usize))
                .with_context(|| format!("the kernel answered request {seq} of {CHUNK}"))?;
            return Err(anyhow!("{}", std::io::Error::from(errno))).with_context(|| describe(item));
        }
    }
    Ok(())
}

/// A netlink socket to the kernel, in this thread's namespace, with room for many answers.
fn open() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Root may pass the system's limit (net.core.rmem_max); others get what it allows.
    if setsockopt(&socket, sockopt::RcvBufForce, &ANSWERS_BUFFER).is_err() {
        socket.set_rx_buf_sz(ANSWERS_BUFFER)?;
    }
    Ok(socket)
}

/// The first failure among the answers waiting on `socket` (the sequence number of its request
/// and its errno), all of them read.
fn failures(socket: &Socket, tolerated: Option<Errno>) -> std::io::Result<Option<(u32, Errno)>> {
    let mut first = None;
    let mut buf = Vec::with_capacity(64 << 10);
    loop {
        buf.clear();
        match socket.recv(&mut buf, libc::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(first),
            Err(e) => return Err(e),
        }
        let mut offset = 0;
        while offset < buf.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                .map_err(|e| std::io::Error::other(format!("an answer does not read: {e}")))?;
            offset += msg.header.length.max(1) as usize;
            let NetlinkPayload::Error(err) = msg.payload else {
                continue;
            };
            let errno = Errno::from_raw(-err.raw_code());
            if err.raw_code() != 0 && Some(errno) != tolerated && first.is_none() {
                first = Some((msg.header.sequence_number, errno));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
    };
    use nix::sched::{CloneFlags, unshare};

    use super::*;

    /// Runs `test` with the index of a veth on a thread in a network namespace of its own,
    /// which goes with the thread (and the veth with it): the host's is never touched.
    fn with_veth<T: Send + 'static>(test: impl FnOnce(u32) -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("a network namespace of its own (as root)");
            // A child process is in the namespace of the thread that starts it.
            for args in [
                &["link", "add", "wfa", "type", "veth", "peer", "name", "wfb"][..],
                &["link", "set", "wfa", "up"],
            ] {
                let done = std::process::Command::new("ip").args(args).status();
                assert!(done.is_ok_and(|s| s.success()), "ip {args:?} failed");
            }
            test(nix::net::if_::if_nametoindex("wfa").expect("the veth"))
        })
        .join()
        .expect("the test thread")
    }

    /// Neighbour `192.0.2.N` (N < 256 × 256) on link `index`: added with a MAC, or deleted.
    fn neighbour(index: u32, n: u32, add: bool) -> Request {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        let ip = Ipv4Addr::new(192, 0, (n >> 8) as u8 + 2, n as u8);
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        if add {
            msg.header.state = NeighbourState::Permanent;
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 7]));
        }
        let (message, flags) = match add {
            true => (
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            ),
            false => (RouteNetlinkMessage::DelNeighbour(msg), 0),
        };
        Request { message, flags }
    }

    #[test]
    fn many_requests_in_chunks_and_the_one_that_fails_named() {
        with_veth(|veth| {
            let items: Vec<u32> = (0..3 * CHUNK as u32 + 5).collect();
            let describe = |n: &u32| format!("neighbour {n}");
            send_all(&items, |n| neighbour(veth, *n, true), None, describe).unwrap();
            send_all(&items, |n| neighbour(veth, *n, false), None, describe).unwrap();
            // Gone already: the kernel says ENOENT, which a deletion tolerates.
            let again = send_all(&items, |n| neighbour(veth, *n, false), None, describe);
            assert!(
                again.is_err(),
                "deleting what is gone fails unless tolerated"
            );
            send_all(
                &items,
                |n| neighbour(veth, *n, false),
                Some(Errno::ENOENT),
                describe,
            )
            .unwrap();
            // One bad request in the second chunk: it is the one named.
            let bad = CHUNK as u32 + 9;
            let index = |n: &u32| if *n == bad { 9999 } else { veth };
            let failed =
                send_all(&items, |n| neighbour(index(n), *n, true), None, describe).unwrap_err();
            assert_eq!(
                format!("{failed:#}"),
                format!("neighbour {bad}: {}", std::io::Error::from(Errno::ENODEV))
            );
        });
    }
}
