//! WireGuard's cross-platform userspace API (UAPI): `get=1` and `set=1` over the device's unix
//! socket, lines of `key=value`, an empty line ending each message, `errno=N` the answer.
//! <https://www.wireguard.com/xplatform/>

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use weft_proto::wireguard::WgKey;

use super::{Change, Device, PeerState};

/// One round trip: sends `request` (its lines, then the empty line) and returns the answer's
/// lines, failing on an errno other than 0.
async fn exchange(socket: &Path, request: &str) -> anyhow::Result<Vec<String>> {
    let what = || format!("WireGuard's socket {}", socket.display());
    let mut stream = UnixStream::connect(socket).await.with_context(what)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .with_context(what)?;
    let mut lines = BufReader::new(stream).lines();
    let mut answer = Vec::new();
    while let Some(line) = lines.next_line().await.with_context(what)? {
        if line.is_empty() {
            break;
        }
        answer.push(line);
    }
    match answer.last().and_then(|l| l.strip_prefix("errno=")) {
        Some("0") => Ok(answer),
        Some(errno) => bail!("{} refused the request (errno {errno})", what()),
        None => bail!("{} answered without an errno", what()),
    }
}

/// The device's settings and peers.
pub async fn get(socket: &Path) -> anyhow::Result<Device> {
    let lines = exchange(socket, "get=1\n").await?;
    parse(&lines).map_err(|why| anyhow::anyhow!("WireGuard's socket {}: {why}", socket.display()))
}

/// Makes the changes, in one request.
pub async fn set(socket: &Path, changes: &[Change]) -> anyhow::Result<()> {
    let mut request = String::from("set=1\n");
    for line in lines(changes) {
        request.push_str(&line);
        request.push('\n');
    }
    exchange(socket, &request).await.map(|_| ())
}

/// The `set=1` lines that make the changes.
fn lines(changes: &[Change]) -> Vec<String> {
    let mut lines = Vec::new();
    for change in changes {
        match change {
            Change::Own { private_key, port } => {
                lines.push(format!("private_key={}", private_key.hex()));
                lines.push(format!("listen_port={port}"));
            }
            Change::RemovePeer(key) => {
                lines.push(format!("public_key={}", key.hex()));
                lines.push("remove=true".into());
            }
            Change::SetPeer { key, spec } => {
                lines.push(format!("public_key={}", key.hex()));
                lines.push("replace_allowed_ips=true".into());
                lines.push(format!("endpoint={}", spec.endpoint));
                lines.push(format!("allowed_ip={}/128", spec.tunnel));
            }
        }
    }
    lines
}

fn parse(lines: &[String]) -> Result<Device, String> {
    let mut device = Device::default();
    let mut peer: Option<(WgKey, PeerState)> = None;
    let mut handshake_secs = 0u64;
    for line in lines {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("\"{line}\" is not key=value"))?;
        let bad = || format!("bad {key} \"{value}\"");
        match key {
            "private_key" => device.private_key = Some(WgKey::from_hex(value)?),
            "listen_port" => device.listen_port = value.parse().map_err(|_| bad())?,
            "public_key" => {
                if let Some((k, p)) = peer.take() {
                    device.peers.insert(k, p);
                }
                peer = Some((WgKey::from_hex(value)?, PeerState::default()));
            }
            _ => {
                let Some((_, p)) = peer.as_mut() else {
                    continue;
                };
                match key {
                    "endpoint" => p.endpoint = Some(value.parse().map_err(|_| bad())?),
                    "allowed_ip" => p.allowed_ips.push(value.to_string()),
                    "last_handshake_time_sec" => {
                        handshake_secs = value.parse().map_err(|_| bad())?
                    }
                    // The seconds come first; 0 and 0 is no handshake yet.
                    "last_handshake_time_nsec" => {
                        let nanos: u64 = value.parse().map_err(|_| bad())?;
                        p.last_handshake = (handshake_secs != 0 || nanos != 0).then(|| {
                            SystemTime::UNIX_EPOCH
                                + Duration::from_secs(handshake_secs)
                                + Duration::from_nanos(nanos)
                        });
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some((k, p)) = peer {
        device.peers.insert(k, p);
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_with_peers_reads_as_it_was_set() {
        let k1 = WgKey([1; 32]);
        let k2 = WgKey([2; 32]);
        let text = format!(
            "private_key={}\nlisten_port=6787\npublic_key={}\nprotocol_version=1\n\
             endpoint=198.18.0.2:6787\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=5\nallowed_ip=fe80::7765:6674:c612:2/128\n\
             public_key={}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
             endpoint=[2001:db8::3]:6787\nerrno=0",
            WgKey([9; 32]).hex(),
            k1.hex(),
            k2.hex()
        );
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let device = parse(&lines).unwrap();
        assert_eq!(device.private_key, Some(WgKey([9; 32])));
        assert_eq!(device.listen_port, 6787);
        let p1 = &device.peers[&k1];
        assert_eq!(p1.endpoint, Some("198.18.0.2:6787".parse().unwrap()));
        assert_eq!(p1.allowed_ips, ["fe80::7765:6674:c612:2/128"]);
        assert_eq!(
            p1.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        let p2 = &device.peers[&k2];
        assert_eq!(p2.last_handshake, None);
        assert_eq!(p2.endpoint, Some("[2001:db8::3]:6787".parse().unwrap()));
        let e = parse(&["listen_port=x".to_string()]).unwrap_err();
        assert_eq!(e, "bad listen_port \"x\"");
    }

    #[test]
    fn changes_are_written_as_set_lines() {
        let spec = crate::wireguard::PeerSpec {
            endpoint: "198.18.0.2:6787".parse().unwrap(),
            tunnel: "fe80::7765:6674:c612:2".parse().unwrap(),
        };
        let changes = [
            Change::Own {
                private_key: WgKey([9; 32]),
                port: 6787,
            },
            Change::RemovePeer(WgKey([2; 32])),
            Change::SetPeer {
                key: WgKey([1; 32]),
                spec,
            },
        ];
        let hex = |b: u8| WgKey([b; 32]).hex();
        assert_eq!(
            lines(&changes),
            [
                format!("private_key={}", hex(9)),
                "listen_port=6787".into(),
                format!("public_key={}", hex(2)),
                "remove=true".into(),
                format!("public_key={}", hex(1)),
                "replace_allowed_ips=true".into(),
                "endpoint=198.18.0.2:6787".into(),
                "allowed_ip=fe80::7765:6674:c612:2/128".into(),
            ]
        );
    }
}
