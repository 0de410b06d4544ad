//! A packet capture with tcpdump on an interface of a namespace, read back as the frames it
//! holds: a test asserts what really crossed a wire, not what a program says it sent.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};

use crate::netns::in_netns;

pub struct Capture {
    child: Child,
    file: PathBuf,
}

/// A UDP datagram of a capture (over IPv4 or IPv6): its destination port and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

impl Capture {
    /// Starts capturing every frame on `dev` in `ns` into `file`, and returns once tcpdump
    /// listens.
    pub fn start(ns: &str, dev: &str, file: PathBuf) -> Capture {
        let path = file.display().to_string();
        let mut child = in_netns(
            ns,
            "tcpdump",
            &[
                "-i",
                dev,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-w",
                &path,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tcpdump (install tcpdump: `make deps`)");
        let stderr = child.stderr.take().expect("tcpdump's stderr");
        let mut lines = BufReader::new(stderr).lines();
        let listening = lines.any(|l| l.is_ok_and(|l| l.contains("listening on")));
        assert!(listening, "tcpdump on {dev} in {ns} did not start");
        Capture { child, file }
    }

    /// Stops the capture and returns the file's bytes.
    pub fn stop(mut self) -> Vec<u8> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        std::fs::read(&self.file).expect("the capture file")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The UDP datagrams of a pcap file of Ethernet frames (tcpdump's `-w` format), over IPv4 or
/// IPv6 (without extension headers, which nothing here sends).
pub fn udp_datagrams(pcap: &[u8]) -> Vec<Datagram> {
    frames(pcap)
        .filter_map(udp_of)
        .filter(|udp| udp.len() >= 8)
        .map(|udp| Datagram {
            dst_port: u16::from_be_bytes([udp[2], udp[3]]),
            payload: udp[8..].to_vec(),
        })
        .collect()
}

/// The frames of a pcap file: the global header, then records of a 16-byte header (its captured
/// length at 8..12) and the frame; the file's byte order is the host's.
fn frames(pcap: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 24;
    std::iter::from_fn(move || {
        if at + 16 > pcap.len() {
            return None;
        }
        let len = u32::from_ne_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[(at + 16).min(pcap.len())..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        Some(frame)
    })
}

/// The UDP header and payload of an Ethernet frame, if it carries UDP.
fn udp_of(frame: &[u8]) -> Option<&[u8]> {
    let ip = frame.get(14..)?;
    match frame.get(12..14)? {
        [0x08, 0x00] => {
            let header = usize::from(ip.first()? & 0x0f) * 4;
            (*ip.get(9)? == 17).then(|| ip.get(header..)).flatten()
        }
        [0x86, 0xdd] => (*ip.get(6)? == 17).then(|| ip.get(40..)).flatten(),
        _ => None,
    }
}

/// The ICMPv6 type of an Ethernet frame, if it carries ICMPv6 (135: a neighbour solicitation).
pub fn icmpv6_type(frame: &[u8]) -> Option<u8> {
    let ip = frame.get(14..)?;
    (frame.get(12..14)? == [0x86, 0xdd] && *ip.get(6)? == 58)
        .then(|| ip.get(40).copied())
        .flatten()
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// How many frames of a pcap file of Ethernet frames come from the MAC `src` (`aa:bb:...`).
pub fn frames_from(pcap: &[u8], src: &str) -> usize {
    let src: Vec<u8> = src
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("a MAC"))
        .collect();
    frames(pcap)
        .filter(|frame| frame.get(6..12) == Some(&src[..]))
        .count()
}
