//! The kernel's WireGuard, configured over generic netlink (family `wireguard`): the same
//! settings and peers as wireguard-go's UAPI, as typed attributes.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use weft_proto::wireguard::WgKey;

use super::{Change, Device, PeerState};

/// One request and its answers; `flags` besides NLM_F_REQUEST.
async fn request(message: WireguardMessage, flags: u16) -> anyhow::Result<Vec<WireguardMessage>> {
    let (connection, mut handle, _) =
        genetlink::new_connection().context("cannot open a generic netlink socket")?;
    let connection = tokio::spawn(connection);
    let mut request = NetlinkMessage::from(GenlMessage::from_payload(message));
    request.header.flags = NLM_F_REQUEST | flags;
    let mut answers = handle
        .request(request)
        .await
        .map_err(|e| anyhow!("the kernel's WireGuard: {e}"))?;
    let mut messages = Vec::new();
    while let Some(answer) = answers.next().await {
        match answer
            .context("the kernel's WireGuard answered something unreadable")?
            .payload
        {
            NetlinkPayload::InnerMessage(genl) => messages.push(genl.payload),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                bail!("the kernel's WireGuard: {}", e.to_io())
            }
            _ => {}
        }
    }
    connection.abort();
    Ok(messages)
}

/// The interface's settings and peers.
pub async fn get(ifname: &str) -> anyhow::Result<Device> {
    let message = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(ifname.to_string())],
    };
    let answers = request(message, NLM_F_DUMP)
        .await
        .with_context(|| format!("cannot read {ifname}"))?;
    Ok(device(answers))
}

/// Makes the changes, in one request.
pub async fn set(ifname: &str, changes: &[Change]) -> anyhow::Result<()> {
    request(set_message(ifname, changes), NLM_F_ACK)
        .await
        .with_context(|| format!("cannot set {ifname}"))
        .map(|_| ())
}

/// A device from a dump's messages: a long list of peers comes over several.
fn device(messages: Vec<WireguardMessage>) -> Device {
    let mut device = Device::default();
    for attribute in messages.into_iter().flat_map(|m| m.attributes) {
        match attribute {
            WireguardAttribute::PrivateKey(key) => device.private_key = Some(WgKey(key)),
            WireguardAttribute::ListenPort(port) => device.listen_port = port,
            WireguardAttribute::Peers(peers) => {
                for WireguardPeer(attributes) in peers {
                    let (key, peer) = peer_state(attributes);
                    if let Some(key) = key {
                        let held: &mut PeerState = device.peers.entry(key).or_default();
                        held.allowed_ips.extend(peer.allowed_ips);
                        held.endpoint = peer.endpoint.or(held.endpoint);
                        held.last_handshake = peer.last_handshake.or(held.last_handshake);
                    }
                }
            }
            _ => {}
        }
    }
    device
}

fn peer_state(attributes: Vec<WireguardPeerAttribute>) -> (Option<WgKey>, PeerState) {
    let (mut key, mut peer) = (None, PeerState::default());
    for attribute in attributes {
        match attribute {
            WireguardPeerAttribute::PublicKey(k) => key = Some(WgKey(k)),
            WireguardPeerAttribute::Endpoint(addr) => peer.endpoint = Some(addr),
            WireguardPeerAttribute::LastHandshake(t) if t.seconds != 0 || t.nano_seconds != 0 => {
                let since = Duration::new(t.seconds as u64, t.nano_seconds as u32);
                peer.last_handshake = Some(SystemTime::UNIX_EPOCH + since);
            }
            WireguardPeerAttribute::AllowedIps(ips) => {
                for WireguardAllowedIp(attributes) in ips {
                    let (mut ip, mut cidr) = (None, None);
                    for attribute in attributes {
                        match attribute {
                            WireguardAllowedIpAttr::IpAddr(a) => ip = Some(a),
                            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(c),
                            _ => {}
                        }
                    }
                    if let (Some(ip), Some(cidr)) = (ip, cidr) {
                        peer.allowed_ips.push(format!("{ip}/{cidr}"));
                    }
                }
            }
            _ => {}
        }
    }
    (key, peer)
}

fn set_message(ifname: &str, changes: &[Change]) -> WireguardMessage {
    let mut attributes = vec![WireguardAttribute::IfName(ifname.to_string())];
    let mut peers = Vec::new();
    for change in changes {
        match change {
            Change::Own { private_key, port } => {
                attributes.push(WireguardAttribute::PrivateKey(private_key.0));
                attributes.push(WireguardAttribute::ListenPort(*port));
            }
            Change::RemovePeer(key) => peers.push(WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(key.0),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ])),
            Change::SetPeer { key, spec } => {
                let tunnel = IpAddr::V6(spec.tunnel);
                let allowed = WireguardAllowedIp(vec![
                    WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv6),
                    WireguardAllowedIpAttr::IpAddr(tunnel),
                    WireguardAllowedIpAttr::Cidr(128),
                ]);
                peers.push(WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey(key.0),
                    WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                    WireguardPeerAttribute::Endpoint(spec.endpoint),
                    WireguardPeerAttribute::AllowedIps(vec![allowed]),
                ]));
            }
        }
    }
    if !peers.is_empty() {
        attributes.push(WireguardAttribute::Peers(peers));
    }
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{Emitable, ParseableParametrized};
    use netlink_packet_generic::GenlHeader;

    use super::*;
    use crate::wireguard::PeerSpec;

    /// Encodes a message as the kernel would get it and reads it back, as a dump's answer is read.
    fn round_trip(message: &WireguardMessage) -> WireguardMessage {
        let mut bytes = vec![0; message.buffer_len()];
        message.emit(&mut bytes);
        let header = GenlHeader {
            cmd: WireguardCmd::GetDevice.into(),
            version: 1,
        };
        WireguardMessage::parse_with_param(&bytes, header).unwrap()
    }

    #[test]
    fn what_is_set_reads_back_as_the_device() {
        let (own, peer, gone) = (WgKey([9; 32]), WgKey([1; 32]), WgKey([2; 32]));
        let spec = PeerSpec {
            endpoint: "198.18.0.2:6787".parse().unwrap(),
            tunnel: "fe80::7765:6674:c612:2".parse().unwrap(),
        };
        let changes = [
            Change::Own {
                private_key: own,
                port: 6787,
            },
            Change::RemovePeer(gone),
            Change::SetPeer { key: peer, spec },
        ];
        let sent = set_message("weftwg", &changes);
        let flags: Vec<_> = sent
            .attributes
            .iter()
            .filter_map(|a| match a {
                WireguardAttribute::Peers(peers) => Some(peers.len()),
                _ => None,
            })
            .collect();
        assert_eq!(flags, [2], "both peer changes in one request");
        let device = device(vec![round_trip(&sent)]);
        assert_eq!(device.private_key, Some(own));
        assert_eq!(device.listen_port, 6787);
        let held = &device.peers[&peer];
        assert_eq!(held.endpoint, Some(spec.endpoint));
        assert_eq!(held.allowed_ips, ["fe80::7765:6674:c612:2/128"]);
        assert_eq!(held.last_handshake, None);
    }
}
