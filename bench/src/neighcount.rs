//! Counting a device's permanent neighbour entries with one netlink dump, for a benchmark that
//! polls the kernel while the agent writes 10,000 of them: `ip neigh show` formats every entry
//! and takes about 45 ms per look, which would be the resolution of the figure.

use std::fs::File;
use std::os::fd::AsFd;
use std::thread;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::neighbour::{NeighbourMessage, NeighbourState};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sched::{CloneFlags, setns};

/// How many permanent neighbour entries (IPv4 and IPv6) device `dev` holds in namespace `ns`;
/// `None` while `ns` has no such device.
pub fn permanent_neighbours(ns: &str, dev: &str) -> Option<usize> {
    let path = format!("/var/run/netns/{ns}");
    let netns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    let dev = dev.to_owned();
    // setns moves only this thread, which ends with the count.
    thread::spawn(move || {
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
        let index = nix::net::if_::if_nametoindex(dev.as_str()).ok()?;
        Some(dump_count(index))
    })
    .join()
    .expect("the counting thread panicked")
}

fn dump_count(index: u32) -> usize {
    let mut socket = Socket::new(NETLINK_ROUTE).expect("opening a netlink socket");
    socket.bind_auto().expect("binding the netlink socket");
    socket
        .connect(&SocketAddr::new(0, 0))
        .expect("connecting the netlink socket");
    let mut msg = NeighbourMessage::default();
    // Both families, as `ip neigh show` asks.
    msg.header.family = AddressFamily::Unspec;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, RouteNetlinkMessage::GetNeighbour(msg).into());
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .expect("sending the neighbour dump request");
    let mut count = 0;
    loop {
        let (reply, _) = socket
            .recv_from_full()
            .expect("receiving the neighbour dump");
        let mut offset = 0;
        while offset < reply.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..])
                .expect("decoding the neighbour dump");
            offset += msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return count,
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n))
                    if n.header.ifindex == index && n.header.state == NeighbourState::Permanent =>
                {
                    count += 1;
                }
                NetlinkPayload::Error(e) => panic!("the neighbour dump failed: {e:?}"),
                _ => {}
            }
        }
    }
}
