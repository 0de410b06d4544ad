//! Looking at a device's permanent neighbour entries through netlink, for a benchmark that polls
//! the kernel while the agent writes 100,000 of them: counting them with one dump (`ip neigh
//! show` formats every entry and takes about 45 ms per look at 10,000, which would be the
//! resolution of the figure), or asking for one (a dump of 100,000 takes the kernel tens of
//! milliseconds, which polling would take from the agent).

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::thread;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};

/// How many permanent neighbour entries (IPv4 and IPv6) device `dev` holds in namespace `ns`;
/// `None` while `ns` has no such device.
pub fn permanent_neighbours(ns: &str, dev: &str) -> Option<usize> {
    on_device(ns, dev, dump_count)
}

/// Whether device `dev` in namespace `ns` has a permanent neighbour entry for `ip`; `None`
/// while `ns` has no such device.
pub fn has_permanent_neighbour(ns: &str, dev: &str, ip: IpAddr) -> Option<bool> {
    on_device(ns, dev, move |index| get_permanent(index, ip))
}

/// Runs `look` with the index of device `dev`, on a thread in namespace `ns`.
fn on_device<T: Send + 'static>(
    ns: &str,
    dev: &str,
    look: impl FnOnce(u32) -> T + Send + 'static,
) -> Option<T> {
    let path = format!("/var/run/netns/{ns}");
    let netns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    let dev = dev.to_owned();
    // setns moves only this thread, which ends with the look.
    thread::spawn(move || {
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
        let index = nix::net::if_::if_nametoindex(dev.as_str()).ok()?;
        Some(look(index))
    })
    .join()
    .expect("the looking thread panicked")
}

/// A netlink socket of the current namespace that has sent `msg` with `flags`.
fn send(msg: NeighbourMessage, flags: u16) -> Socket {
    let mut socket = Socket::new(NETLINK_ROUTE).expect("opening a netlink socket");
    socket.bind_auto().expect("binding the netlink socket");
    socket
        .connect(&SocketAddr::new(0, 0))
        .expect("connecting the netlink socket");
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, RouteNetlinkMessage::GetNeighbour(msg).into());
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0).expect("sending the neighbour request");
    socket
}

fn get_permanent(index: u32, ip: IpAddr) -> bool {
    let mut msg = NeighbourMessage::default();
    msg.header.ifindex = index;
    let (family, dst) = match ip {
        IpAddr::V4(ip) => (AddressFamily::Inet, NeighbourAddress::Inet(ip)),
        IpAddr::V6(ip) => (AddressFamily::Inet6, NeighbourAddress::Inet6(ip)),
    };
    msg.header.family = family;
    msg.attributes.push(NeighbourAttribute::Destination(dst));
    let socket = send(msg, 0);
    let (reply, _) = socket
        .recv_from_full()
        .expect("receiving the neighbour entry");
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
        .expect("decoding the neighbour entry");
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
            n.header.state == NeighbourState::Permanent
        }
        // ENOENT: no entry yet.
        NetlinkPayload::Error(e) if e.raw_code() == -(Errno::ENOENT as i32) => false,
        other => panic!("asking for neighbour {ip}: {other:?}"),
    }
}

fn dump_count(index: u32) -> usize {
    let mut msg = NeighbourMessage::default();
    // Both families, as `ip neigh show` asks.
    msg.header.family = AddressFamily::Unspec;
    let socket = send(msg, NLM_F_DUMP);
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
