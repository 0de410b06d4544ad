//! A real etcd cluster (Debian's `etcd-server`) for a world's controllers: each member in a
//! namespace of its own on the world's underlay, its data in the world's temp dir.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::daemon::Daemon;
use crate::netns;

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// A new cluster elects its leader within about a second.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(20);

/// Underlay address of member `n` (1-based).
pub fn member_addr(n: usize) -> String {
    format!("198.18.0.{}", 200 + n)
}

fn client_url(n: usize) -> String {
    format!("http://{}:{CLIENT_PORT}", member_addr(n))
}

pub struct Etcd {
    prefix: String,
    members: Vec<Mutex<Daemon>>,
}

impl Etcd {
    /// Describes a cluster of `members` for the world of `prefix`, its data under `dir`;
    /// nothing runs until [`Etcd::start`].
    pub(crate) fn new(prefix: &str, dir: &Path, members: usize) -> Etcd {
        let cluster = (1..=members)
            .map(|n| format!("e{n}=http://{}:{PEER_PORT}", member_addr(n)))
            .collect::<Vec<_>>()
            .join(",");
        let members = (1..=members)
            .map(|n| {
                let args = [
                    "--name".to_string(),
                    format!("e{n}"),
                    "--data-dir".into(),
                    dir.join(format!("etcd-{n}")).display().to_string(),
                    "--listen-client-urls".into(),
                    client_url(n),
                    "--advertise-client-urls".into(),
                    client_url(n),
                    "--listen-peer-urls".into(),
                    format!("http://{}:{PEER_PORT}", member_addr(n)),
                    "--initial-advertise-peer-urls".into(),
                    format!("http://{}:{PEER_PORT}", member_addr(n)),
                    "--initial-cluster".into(),
                    cluster.clone(),
                    // A restarted member has its data dir and ignores these.
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    prefix.to_string(),
                    "--heartbeat-interval".into(),
                    "100".into(),
                    "--election-timeout".into(),
                    "1000".into(),
                ];
                Mutex::new(Daemon::new(
                    &member_ns(prefix, n),
                    ETCD.into(),
                    args.to_vec(),
                    dir.join(format!("etcd-{n}.log")),
                ))
            })
            .collect();
        Etcd {
            prefix: prefix.to_string(),
            members,
        }
    }

    fn member(&self, n: usize) -> MutexGuard<'_, Daemon> {
        assert!(
            (1..=self.members.len()).contains(&n),
            "no etcd member {n}: the cluster has {}",
            self.members.len()
        );
        self.members[n - 1]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts every member and waits until each reports itself healthy.
    pub(crate) fn start(&self) {
        for n in 1..=self.members.len() {
            self.member(n).start();
        }
        self.wait_healthy(1..=self.members.len());
    }

    /// Waits until `etcdctl endpoint health` passes for each of `members`.
    fn wait_healthy(&self, members: impl Iterator<Item = usize> + Clone) {
        let endpoints: Vec<String> = members.clone().map(client_url).collect();
        let endpoints = endpoints.join(",");
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        let ns = member_ns(&self.prefix, members.clone().next().expect("a member"));
        loop {
            for n in members.clone() {
                if let Some(status) = self.member(n).exited() {
                    panic!(
                        "etcd member {n} exited ({status}):\n{}",
                        self.member(n).log_tail(20)
                    );
                }
            }
            let out = netns::exec_env(
                &ns,
                &[ETCDCTL, "--endpoints", &endpoints, "endpoint", "health"],
                &[("ETCDCTL_API", "3")],
            );
            if out.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after {HEALTHY_TIMEOUT:?}: {}{}",
                out.stdout,
                out.stderr
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// `--etcd-endpoints` for a controller: every member's client URL.
    pub fn endpoints(&self) -> String {
        (1..=self.members.len())
            .map(client_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many members the cluster has.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// SIGKILLs member `n`.
    pub fn kill(&self, n: usize) {
        self.member(n).kill();
    }

    /// Starts member `n` again (from its data dir) and waits until it is healthy.
    pub fn restart(&self, n: usize) {
        self.member(n).start();
        self.wait_healthy(std::iter::once(n));
    }

    /// The member that is the cluster's leader now, as `etcdctl endpoint status` says.
    pub fn leader(&self) -> usize {
        let ns = member_ns(&self.prefix, 1);
        for n in 1..=self.members.len() {
            let out = netns::exec_env(
                &ns,
                &[
                    ETCDCTL,
                    "--endpoints",
                    &client_url(n),
                    "endpoint",
                    "status",
                    "-w",
                    "fields",
                ],
                &[("ETCDCTL_API", "3")],
            );
            let field = |name: &str| {
                out.stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("\"{name}\" : ")))
                    .map(str::to_owned)
            };
            if out.success() && field("Leader").is_some() && field("Leader") == field("MemberID") {
                return n;
            }
        }
        panic!("no etcd member says it is the leader");
    }

    /// Every key under `prefix`, as `etcdctl get --prefix --keys-only` lists them.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = netns::exec_env(
            &member_ns(&self.prefix, 1),
            &[
                ETCDCTL,
                "--endpoints",
                &self.endpoints(),
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ],
            &[("ETCDCTL_API", "3")],
        );
        assert!(out.success(), "etcdctl get: {}", out.stderr);
        out.stdout
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Every key under `prefix` that was ever put, once each in the order of their first put:
    /// etcd's history as `etcdctl watch --rev 1 -w json` replays it (nothing compacts a test's
    /// cluster), read until the events reach the cluster's revision now.
    pub fn keys_ever_put(&self, prefix: &str) -> Vec<String> {
        let ns = member_ns(&self.prefix, 1);
        let endpoints = self.endpoints();
        let status = netns::exec_env(
            &ns,
            &[ETCDCTL, "--endpoints", &endpoints, "get", "x", "-w", "json"],
            &[("ETCDCTL_API", "3")],
        );
        let now = serde_json::from_str::<serde_json::Value>(&status.stdout)
            .ok()
            .and_then(|v| v["header"]["revision"].as_i64())
            .unwrap_or_else(|| panic!("etcdctl get: {}{}", status.stdout, status.stderr));
        let args = [
            "--endpoints",
            &endpoints,
            "watch",
            "--rev",
            "1",
            "-w",
            "json",
            "--prefix",
            "",
        ];
        let mut watch = netns::in_netns(&ns, ETCDCTL, &args)
            .env("ETCDCTL_API", "3")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning etcdctl watch");
        let lines = BufReader::new(watch.stdout.take().expect("piped"));
        let (mut keys, mut seen) = (Vec::new(), std::collections::HashSet::new());
        for line in lines.lines() {
            let line = line.expect("reading etcdctl watch");
            let Ok(response) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let mut last = 0;
            for event in response["Events"].as_array().into_iter().flatten() {
                let kv = &event["kv"];
                last = kv["mod_revision"].as_i64().unwrap_or(last);
                let key = kv["key"].as_str().and_then(|k| BASE64.decode(k).ok());
                let key = String::from_utf8_lossy(&key.unwrap_or_default()).into_owned();
                let put = event.get("type").is_none_or(|t| t.as_i64() == Some(0));
                if put && key.starts_with(prefix) && seen.insert(key.clone()) {
                    keys.push(key);
                }
            }
            if last >= now {
                break;
            }
        }
        let _ = watch.kill();
        let _ = watch.wait();
        keys
    }

    pub(crate) fn stop(&self) {
        for n in 1..=self.members.len() {
            self.member(n).stop();
        }
    }

    pub(crate) fn log_tails(&self, lines: usize) -> String {
        (1..=self.members.len())
            .map(|n| self.member(n).log_tail(lines))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The namespace of member `n` of the world of `prefix`.
pub fn member_ns(prefix: &str, n: usize) -> String {
    format!("{prefix}-e{n}")
}
