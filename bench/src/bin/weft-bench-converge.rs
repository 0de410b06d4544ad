//! `make bench`: how long after `weftctl attach` is run on host A a container on host B gets its
//! first ping reply from the new container, in worlds of 2 and 10 hosts; in the world of 2, next
//! to the same done by hand (a veth plugged with `ip` on A, a static FDB and neighbour entry
//! written with `bridge` and `ip` on B), attach by attach.
//!
//! Every host has a container attached before the measurement starts (a cluster in use: each host
//! already floods to every other). Host B's container then probes each new address with an ICMP
//! echo every millisecond from a raw socket in its namespace, started before the attach and
//! stopped by the first reply; its neighbour table retries ARP as often as the kernel allows (every
//! 10 ms, rounded down to whole jiffies), so neither ping's back-off nor ARP's 1 s retransmission
//! on the probing side hides when the path starts working.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread::{self, JoinHandle, sleep};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recv, sendto, socket,
};
use weft_bench::harness::{self, check_interrupted, percentile};
use weft_bench::{HB_IF, HandBuilt};
use weft_integration::{
    Netns, VXLAN_DEV, World, exec, exit_code_of, fdb, link, neighbours, tx_dropped, wait_until,
};

const ATTACHES: usize = 100;
const WORLDS: [usize; 2] = [2, 10];
/// The attach runs on host A; host B's container probes.
const HOST_A: usize = 1;
/// The goal for the 99th percentile.
const GOAL_P99_MS: f64 = 50.0;
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// How often the prober looks for a reply between sends.
const POLL: Duration = Duration::from_micros(50);
/// How long the prober waits for a reply before the attach counts as never converging.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The prober starts this long before the attach, so its ARP request is already pending.
const LEAD: Duration = Duration::from_millis(20);
/// How long host B may take to drop a detached container's entries before the next attach.
const DETACHED_TIMEOUT: Duration = Duration::from_secs(5);
/// Probe-side ARP: retransmit as often as the kernel allows (it waits at least HZ/100 jiffies
/// between tries) and never give up within a probe.
const ARP_RETRANS_MS: &str = "1";
const ARP_PROBES: &str = "100000";
/// The container interface weft gives a container in the default network.
const CONTAINER_IF: &str = "ethwe";
/// The reference, with weft's VXLAN options (proxy, permanent neighbour entries), in the world
/// of 2 hosts.
const HAND_BUILT: HandBuilt = HandBuilt {
    label: "hand-built",
    prefix: "hb",
    vni: "4242",
    port: "4789",
    subnet: "10.97.0",
    weft_options: true,
    over_wireguard: false,
};

fn main() -> ExitCode {
    harness::stop_on_interrupt();
    exit_code_of("weft-bench-converge", run)
}

/// One attach: how long weftctl took, how long after it was run B's first reply came, and
/// whether the new container's interface dropped a packet it sent (then its first ARP request
/// was lost, and Linux asks again only after `retrans_time`, 1 s by default).
struct Sample {
    attach_ms: f64,
    converge_ms: f64,
    tx_dropped: bool,
}

fn run() {
    println!(
        "weft-bench-converge: time from running `weftctl attach` on host{HOST_A} until a container on another host gets its first ping reply from the new container; in the world of 2, the same done by hand beside it"
    );
    harness::print_machine();
    println!(
        "method: {ATTACHES} attaches of a fresh namespace per world, each a static address not used before in the default network (10.32.0.0/12); the probing container sends an ICMP echo every {PROBE_INTERVAL:?} from a raw socket, started {LEAD:?} before the attach, and takes the receive time of the first echo reply; its ARP retransmits as often as the kernel allows (retrans_time_ms={ARP_RETRANS_MS}, mcast_solicit={ARP_PROBES}; the kernel waits at least HZ/100 jiffies, so the resolution is that plus the 1 ms probe interval); after each detach, the next attach waits until host B has dropped the container's FDB and neighbour entries; hand-built: a second overlay in the same two hosts (VNI {}, port {}, proxy), a veth plugged into its bridge on host{HOST_A} (ip), then the FDB entry (bridge) and neighbour entry (ip) on host B, timed from the first command",
        HAND_BUILT.vni, HAND_BUILT.port
    );
    let mut results = Vec::new();
    let mut hand = Vec::new();
    for hosts in WORLDS {
        check_interrupted();
        let (weft, by_hand) = measure_world(hosts);
        results.push((hosts, weft));
        hand.extend(by_hand);
    }
    println!("summary over {ATTACHES} attaches each:");
    let mut met = true;
    for (hosts, samples) in &results {
        let converge: Vec<f64> = samples.iter().map(|s| s.converge_ms).collect();
        let attach: Vec<f64> = samples.iter().map(|s| s.attach_ms).collect();
        let dropped: Vec<f64> = samples
            .iter()
            .filter(|s| s.tx_dropped)
            .map(|s| s.converge_ms)
            .collect();
        let p99 = percentile(converge.clone(), 99.0);
        met &= p99 <= GOAL_P99_MS;
        println!(
            "  {hosts:>2} hosts: convergence p50 {:6.1} ms  p99 {p99:6.1} ms  max {:6.1} ms  | weftctl attach itself p50 {:5.1} ms p99 {:5.1} ms",
            percentile(converge.clone(), 50.0),
            percentile(converge, 100.0),
            percentile(attach.clone(), 50.0),
            percentile(attach, 99.0),
        );
        if !dropped.is_empty() {
            println!(
                "           {} of them dropped a packet on the new container's ethwe: their convergence p50 {:.1} ms",
                dropped.len(),
                percentile(dropped, 50.0)
            );
        }
    }
    println!(
        "   2 hosts, hand-built: p50 {:6.1} ms  p99 {:6.1} ms  max {:6.1} ms",
        percentile(hand.clone(), 50.0),
        percentile(hand.clone(), 99.0),
        percentile(hand, 100.0)
    );
    println!(
        "goal: weft's p99 <= {GOAL_P99_MS} ms: {}",
        if met { "met" } else { "missed" }
    );
    harness::print_load("at end");
}

/// The samples of weft and, in the world of 2 hosts, of the hand-built reference (ms).
fn measure_world(hosts: usize) -> (Vec<Sample>, Vec<f64>) {
    let host_b = hosts;
    println!("world of {hosts} hosts: attaching on host{HOST_A}, probing from host{host_b}");
    let mut world = World::new(hosts);
    let mut prober_ns = String::new();
    for host in 1..=hosts {
        let ns = world.container(host, &format!("base{host}"));
        world.ctl(host, &["attach", &format!("netns:{ns}")]);
        prober_ns = ns;
    }
    let retrans = tune_arp(&prober_ns, CONTAINER_IF);
    println!(
        "  probing container's ARP retransmission: retrans_time_ms reads back {retrans} (one jiffy); the kernel's HZ/100 floor makes it {} ms",
        arp_floor_ms(&retrans)
    );
    let mtu = link(&prober_ns, CONTAINER_IF)
        .expect("the prober's ethwe")
        .mtu;
    let hand_prober = (hosts == 2).then(|| {
        let [_, prober] = HAND_BUILT.build(&mut world, mtu);
        tune_arp(&prober, HB_IF);
        prober
    });
    let mut samples = Vec::new();
    let mut by_hand = Vec::new();
    for i in 0..ATTACHES {
        check_interrupted();
        samples.push(weft_attach(&world, &prober_ns, i));
        if let Some(prober) = &hand_prober {
            by_hand.push(hand_attach(&world, prober, i, &mtu.to_string()));
        }
    }
    (samples, by_hand)
}

/// Attach `i` through weft, timed from running weftctl until the prober's first reply; returns
/// once host B has dropped the container's entries again.
fn weft_attach(world: &World, prober_ns: &str, i: usize) -> Sample {
    let host_b = world.hosts();
    let ns = Netns::new(&format!("{}-n{i}", world.prefix()));
    let ip = Ipv4Addr::new(10, 40, (i / 250) as u8, (i % 250 + 1) as u8);
    let container = format!("netns:{}", ns.name());
    let prober = Prober::start(prober_ns, ip, i as u16);
    sleep(LEAD);
    let cmd = world.weftctl_command(HOST_A, &["attach", &format!("{ip}/12"), &container]);
    let asked = Instant::now();
    let (took, out) = harness::timed(cmd);
    assert!(
        out.success() && out.stdout.trim() == ip.to_string(),
        "weftctl attach {ip}/12 {container} on host{HOST_A}: {:?} {}{}",
        out.code,
        out.stdout,
        out.stderr.trim()
    );
    let replied = prober.first_reply().unwrap_or_else(|| {
        panic!("{prober_ns} got no reply from {ip} within {PROBE_TIMEOUT:?} of the attach")
    });
    let converge_ms = (replied - asked).as_secs_f64() * 1000.0;
    let sample = Sample {
        attach_ms: took.as_secs_f64() * 1000.0,
        converge_ms,
        tx_dropped: tx_dropped(ns.name(), CONTAINER_IF) > 0,
    };
    println!(
        "  attach {:>3}/{ATTACHES}  {ip:<12} weftctl {:6.1} ms  first reply {converge_ms:7.1} ms after it was run{}",
        i + 1,
        sample.attach_ms,
        if sample.tx_dropped {
            "  (the new container's ethwe dropped a packet it sent)"
        } else {
            ""
        }
    );
    let mac = link(ns.name(), CONTAINER_IF).expect("the new ethwe").mac;
    world.ctl(HOST_A, &["detach", &container]);
    drop(ns);
    let b = world.host_ns(host_b);
    let ip = ip.to_string();
    let dropped = wait_until(DETACHED_TIMEOUT, || {
        !fdb(&b, VXLAN_DEV).iter().any(|(m, _)| *m == mac)
            && !neighbours(&b, VXLAN_DEV).iter().any(|(a, _)| *a == ip)
    });
    assert!(
        dropped,
        "host{host_b} still holds entries for detached {ip} ({mac}) after {DETACHED_TIMEOUT:?}"
    );
    sample
}

/// Attach `i` by hand, timed from the first command until the hand-built prober's first reply;
/// returns once it is undone.
fn hand_attach(world: &World, prober_ns: &str, i: usize, mtu: &str) -> f64 {
    let hb = &HAND_BUILT;
    let ns = Netns::new(&format!("{}-byhand{i}", world.prefix()));
    let ip = hb.addr(i + 3);
    let mac = format!("02:00:00:97:{:02x}:{:02x}", i / 256, i % 256);
    let target: Ipv4Addr = ip.parse().expect("an IPv4 address");
    let prober = Prober::start(prober_ns, target, i as u16);
    sleep(LEAD);
    let asked = Instant::now();
    hb.plug(world, HOST_A, ns.name(), i + 1, &ip, Some(&mac), mtu);
    hb.learn(world, 2, HOST_A, &mac, &ip);
    let replied = prober.first_reply().unwrap_or_else(|| {
        panic!("{prober_ns} got no reply from hand-built {ip} within {PROBE_TIMEOUT:?}")
    });
    let ms = (replied - asked).as_secs_f64() * 1000.0;
    println!(
        "  by hand {:>3}/{ATTACHES}  {ip:<12} first reply {ms:7.1} ms after the first command",
        i + 1
    );
    hb.forget(world, 2, &mac, &ip);
    drop(ns);
    ms
}

/// Makes the probing container's ARP on `dev` retry every jiffy and not give up; returns the
/// retransmission time the kernel kept, in ms.
fn tune_arp(ns: &str, dev: &str) -> String {
    let dir = format!("/proc/sys/net/ipv4/neigh/{dev}");
    let script = format!(
        "echo {ARP_RETRANS_MS} > {dir}/retrans_time_ms && echo {ARP_PROBES} > {dir}/mcast_solicit && cat {dir}/retrans_time_ms"
    );
    let out = exec(ns, &["sh", "-c", &script]);
    assert!(out.success(), "tuning ARP in {ns}: {}", out.stderr.trim());
    out.stdout.trim().to_owned()
}

/// The probing side's ARP retry interval: the kernel retries after max(retrans_time, HZ/100)
/// jiffies, and `jiffy_ms` (retrans_time_ms set to 1, read back) is one jiffy.
fn arp_floor_ms(jiffy_ms: &str) -> u64 {
    let jiffy: u64 = jiffy_ms.parse().expect("retrans_time_ms is a number");
    let hz = 1000 / jiffy.max(1);
    (hz / 100).max(1) * jiffy
}

/// A thread in a container's namespace sending ICMP echo requests to one address every
/// [`PROBE_INTERVAL`] until the first reply or [`PROBE_TIMEOUT`].
struct Prober {
    thread: JoinHandle<Option<Instant>>,
}

impl Prober {
    /// Starts probing `target` from namespace `ns`, with `id` as the echo identifier; returns
    /// once the first request is on its way.
    fn start(ns: &str, target: Ipv4Addr, id: u16) -> Prober {
        let path = format!("/var/run/netns/{ns}");
        let netns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        let (ready, started) = mpsc::channel();
        let thread = thread::spawn(move || {
            // setns moves only this thread, which ends with the probe.
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering {path}: {e}"));
            let sock = socket(
                AddressFamily::Inet,
                SockType::Raw,
                SockFlag::SOCK_NONBLOCK,
                SockProtocol::Icmp,
            )
            .expect("opening a raw ICMP socket");
            let fd = sock.as_raw_fd();
            let dest = SockaddrIn::from(std::net::SocketAddrV4::new(target, 0));
            let deadline = Instant::now() + PROBE_TIMEOUT;
            let mut next_send = Instant::now();
            let mut seq: u16 = 0;
            let mut buf = [0u8; 1500];
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                if now >= next_send {
                    // A send can fail while the neighbour is unresolved; the next one retries.
                    let _ = sendto(fd, &echo_request(id, seq), &dest, MsgFlags::empty());
                    if seq == 0 {
                        let _ = ready.send(());
                    }
                    seq = seq.wrapping_add(1);
                    next_send += PROBE_INTERVAL;
                }
                match recv(fd, &mut buf, MsgFlags::empty()) {
                    Ok(n) if is_reply(&buf[..n], target, id) => return Some(Instant::now()),
                    // Not SO_RCVTIMEO: it counts in jiffies (4 ms here); sleeps are finer.
                    Err(Errno::EAGAIN) => sleep(POLL),
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => panic!("receiving ICMP in the prober: {e}"),
                }
            }
        });
        started
            .recv()
            .expect("the prober thread ended before its first send");
        Prober { thread }
    }

    /// When the first reply arrived, or `None` if none did within [`PROBE_TIMEOUT`].
    fn first_reply(self) -> Option<Instant> {
        self.thread.join().expect("the prober thread panicked")
    }
}

/// An ICMP echo request (type 8) with 8 bytes of payload; the kernel adds the IP header.
fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[0] = 8;
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    packet[8..16].copy_from_slice(b"weftconv");
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// Whether `packet` (IP header included, as raw sockets deliver it) is an echo reply (type 0)
/// from `from` with identifier `id`.
fn is_reply(packet: &[u8], from: Ipv4Addr, id: u16) -> bool {
    let Some(first) = packet.first() else {
        return false;
    };
    let header = usize::from(first & 0x0f) * 4;
    let Some(icmp) = packet.get(header..header + 8) else {
        return false;
    };
    packet[12..16] == from.octets() && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes()
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_sums_to_zero() {
        assert_eq!(checksum(&echo_request(0x1234, 7)), 0);
    }

    #[test]
    fn a_reply_is_recognised_by_type_source_and_id() {
        let mut packet = vec![0x45u8; 20];
        packet[12..16].copy_from_slice(&[10, 40, 0, 1]);
        packet.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 7]);
        let from = Ipv4Addr::new(10, 40, 0, 1);
        assert!(is_reply(&packet, from, 0x1234));
        assert!(!is_reply(&packet, from, 0x1235));
        assert!(!is_reply(&packet, Ipv4Addr::new(10, 40, 0, 2), 0x1234));
        packet[20] = 8;
        assert!(!is_reply(&packet, from, 0x1234));
    }
}
