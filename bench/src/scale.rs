//! The control plane at scale: many simulated agents ([`fleet`]) against one controller, or
//! spread over several on one etcd. They fill it (Register, Attach), join it (a Watch from
//! revision 0 each, held open), idle, watch new agents sync in full, and see single attaches fan
//! out to all of them, while the (first) controller's CPU and memory are read from /proc.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt, stream};
use tokio::sync::mpsc;
use weft_bench::harness;
use weft_bench::load::{GOAL_FANOUT_P99_MS, GOAL_RSS_MB, GOAL_SYNC_MS};
use weft_proto::v1::AttachRequest;

use crate::certs::AgentCa;
use crate::fleet::{Report, SimAgent, Synced, follow};
use crate::stats::{Spread, ms};
use weft_bench::usage::{Meter, Usage, mb, mib};

/// How long one change may take to reach every watcher before the run fails.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two measured changes (and new agents), so each is measured alone.
const BETWEEN: Duration = Duration::from_millis(200);
/// Connections opened at once while the fleet starts.
const CONNECTS_AT_ONCE: usize = 32;

pub struct Scale {
    /// The controllers: simulated agents, and then new agents, use them in turn.
    pub urls: Vec<String>,
    /// The controller's CA, which gives each simulated agent its client certificate; none:
    /// plaintext.
    pub ca: Option<AgentCa>,
    pub controller_pid: u32,
    pub agents: usize,
    pub endpoints_per_agent: usize,
    /// Attach requests in flight at once while filling.
    pub concurrency: usize,
    /// Agents joining (syncing in full) at once.
    pub join_concurrency: usize,
    /// New agents whose full sync is measured alone.
    pub syncs: usize,
    /// Changes whose fan-out is measured.
    pub changes: usize,
    pub idle: Duration,
    /// Where the figures the goals are judged on are written, as JSON, for a benchmark that
    /// compares runs.
    pub summary: Option<PathBuf>,
}

impl Scale {
    pub async fn run(&self) -> anyhow::Result<()> {
        let endpoints = self.agents * self.endpoints_per_agent;
        if self.urls.len() > 1 {
            println!(
                "controllers: {} (agents use them in turn; CPU and memory are the first's)",
                self.urls.join(", ")
            );
        }
        println!(
            "{} simulated agents, 2 HTTP/2 connections each (as weft-agent: Register+Watch, and unary requests), {}, {} endpoints each ({endpoints} in all)",
            self.agents,
            if self.ca.is_some() {
                "mutual TLS (a client certificate each, from the controller's CA)"
            } else {
                "plaintext"
            },
            self.endpoints_per_agent
        );
        let fleet = self.connect_fleet().await?;

        let phase = Phase::start(self.controller_pid)?;
        let filled = self.populate(&fleet).await?;
        println!(
            "populate: {} peers registered, {endpoints} endpoints attached in {:.1} s ({:.0} attaches/s, {} in flight)",
            self.agents,
            filled.as_secs_f64(),
            endpoints as f64 / filled.as_secs_f64(),
            self.concurrency
        );
        let populate = phase.stop().await?;

        let (reports, mut arrivals) = mpsc::unbounded_channel();
        let phase = Phase::start(self.controller_pid)?;
        let started = Instant::now();
        let joins = self.join(&fleet, endpoints, reports).await?;
        println!(
            "join: {} agents each watched from revision 0 and received the snapshot ({} endpoints, {:.1} MB), {} at a time, in {:.1} s",
            self.agents,
            joins[0].endpoints,
            joins[0].bytes as f64 / 1e6,
            self.join_concurrency,
            started.elapsed().as_secs_f64()
        );
        println!(
            "  full sync while others join: {}",
            Spread::new(joins.iter().map(|s| s.took).collect())
        );
        let join = phase.stop().await?;

        let phase = Phase::start(self.controller_pid)?;
        tokio::time::sleep(self.idle).await;
        println!(
            "idle: {} watches open, nothing changes, for {:.0} s",
            self.agents,
            self.idle.as_secs_f64()
        );
        let idle = phase.stop().await?;
        check_watches(&mut arrivals)?;

        let phase = Phase::start(self.controller_pid)?;
        let syncs = self.new_agents(endpoints).await?;
        println!(
            "full sync of a new agent (Watch from revision 0 until the snapshot is decoded), {} agents one after another, {} watching:",
            self.syncs, self.agents
        );
        // Per controller: each must serve it fast, the followers too.
        let mut median_syncs = Vec::new();
        for (k, url) in self.urls.iter().enumerate() {
            let took: Vec<Duration> = syncs
                .iter()
                .filter(|(by, _)| *by == k)
                .map(|(_, took)| *took)
                .collect();
            if took.is_empty() {
                continue;
            }
            let spread = Spread::new(took);
            println!("  from {url}: {spread}");
            median_syncs.push(spread.percentile(50.0));
        }
        let sync = phase.stop().await?;

        let phase = Phase::start(self.controller_pid)?;
        let fanout = self.fan_out(&fleet, &mut arrivals).await?;
        let to_last = Spread::new(fanout.to_last.clone());
        println!(
            "fan-out: {} attaches one at a time (by agents in turn), each until all {} watchers decoded its delta",
            self.changes, self.agents
        );
        println!("  attach request to the last watcher:  {to_last}");
        println!(
            "  attach request to the first watcher: {}",
            Spread::new(fanout.to_first)
        );
        println!(
            "  first to last watcher:               {}",
            Spread::new(fanout.first_to_last)
        );
        println!(
            "  attach round trip:                   {}",
            Spread::new(fanout.round_trips)
        );
        let fan = phase.stop().await?;
        println!(
            "  controller CPU per change, its keepalives included: {:.1} ms",
            ms(fan.cpu) / self.changes as f64
        );

        let median_sync = median_syncs.iter().copied().fold(0.0, f64::max);
        let fan_p99 = to_last.percentile(99.0);
        let hwm = [populate, join, idle, sync, fan]
            .iter()
            .map(|u| u.hwm_kib)
            .max()
            .unwrap_or_default();
        println!("goals:");
        harness::goal(
            "full sync of a new agent (median, from the slowest controller) < 1 s",
            median_sync < GOAL_SYNC_MS,
            format!("{median_sync:.1} ms"),
        );
        harness::goal(
            "fan-out, attach request to the last of all watchers, p99 < 100 ms",
            fan_p99 < GOAL_FANOUT_P99_MS,
            format!("{fan_p99:.1} ms"),
        );
        harness::goal(
            "controller RSS (VmHWM over the run) < 500 MB",
            mb(hwm) < GOAL_RSS_MB,
            format!("{:.1} MB, {:.1} MiB", mb(hwm), mib(hwm)),
        );
        if let Some(path) = &self.summary {
            let figures = serde_json::json!({
                "controllers": self.urls,
                "agents": self.agents,
                "endpoints": endpoints,
                "attaches_per_s": endpoints as f64 / filled.as_secs_f64(),
                "full_sync_median_ms": median_syncs,
                "fanout_p50_ms": to_last.percentile(50.0),
                "fanout_p99_ms": fan_p99,
                "controller_rss_mb": mb(hwm),
            });
            fs::write(path, figures.to_string())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// The controller the `i`th agent uses.
    fn url_for(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    async fn connect_fleet(&self) -> anyhow::Result<Vec<SimAgent>> {
        let started = Instant::now();
        let fleet: Vec<SimAgent> = stream::iter(0..self.agents)
            .map(|i| {
                SimAgent::connect(
                    self.url_for(i),
                    format!("agent-{i:04}"),
                    i,
                    self.ca.as_ref(),
                )
            })
            .buffered(CONNECTS_AT_ONCE)
            .try_collect()
            .await?;
        println!(
            "connected {} agents ({} connections) in {:.1} s",
            fleet.len(),
            2 * fleet.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(fleet)
    }

    /// Registers every agent, then attaches its containers, agents taking turns so that every
    /// connection carries its share. Returns the time it took.
    async fn populate(&self, fleet: &[SimAgent]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        stream::iter(fleet)
            .map(SimAgent::register)
            .buffer_unordered(self.concurrency)
            .try_collect::<()>()
            .await?;
        let attaches = (0..self.endpoints_per_agent)
            .flat_map(|c| (0..fleet.len()).map(move |a| (a, c)))
            .map(|(a, c)| attach(&fleet[a], format!("load-{a}-{c}")));
        stream::iter(attaches)
            .buffer_unordered(self.concurrency)
            .try_collect::<()>()
            .await?;
        Ok(started.elapsed())
    }

    /// Every agent syncs in full and keeps its watch, `join_concurrency` at a time.
    async fn join(
        &self,
        fleet: &[SimAgent],
        endpoints: usize,
        reports: mpsc::UnboundedSender<Report>,
    ) -> anyhow::Result<Vec<Synced>> {
        stream::iter(fleet.iter().enumerate())
            .map(|(i, agent)| {
                let reports = reports.clone();
                async move {
                    let (synced, watch) = agent.sync().await?;
                    check_snapshot(&agent.peer.name, &synced, endpoints)?;
                    tokio::spawn(follow(i, watch, reports));
                    anyhow::Ok(synced)
                }
            })
            .buffer_unordered(self.join_concurrency)
            .try_collect()
            .await
    }

    /// Agents that were not there before sync in full, one at a time, then leave; how long each
    /// took, by the index of its controller in `urls`.
    async fn new_agents(&self, endpoints: usize) -> anyhow::Result<Vec<(usize, Duration)>> {
        let mut took = Vec::new();
        for k in 0..self.syncs {
            tokio::time::sleep(BETWEEN).await;
            let agent = SimAgent::connect(
                self.url_for(k),
                format!("newcomer-{k}"),
                self.agents + k,
                self.ca.as_ref(),
            )
            .await?;
            let (synced, _watch) = agent.sync().await?;
            check_snapshot(&agent.peer.name, &synced, endpoints)?;
            took.push((k % self.urls.len(), synced.took));
        }
        Ok(took)
    }

    async fn fan_out(
        &self,
        fleet: &[SimAgent],
        arrivals: &mut mpsc::UnboundedReceiver<Report>,
    ) -> anyhow::Result<FanOut> {
        let mut fan = FanOut::default();
        for k in 0..self.changes {
            tokio::time::sleep(BETWEEN).await;
            let by = &fleet[k % fleet.len()];
            let sent = Instant::now();
            let response = by
                .client
                .clone()
                .attach(AttachRequest {
                    peer: by.peer.name.clone(),
                    container_id: format!("fanout-{k}"),
                    addrs: vec![],
                    dns_name: String::new(),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("fan-out attach {k} by {} failed", by.peer.name))?
                .into_inner();
            fan.round_trips.push(sent.elapsed());
            let arrived = wait_for(arrivals, response.revision, fleet.len()).await?;
            let first = arrived.iter().min().copied().unwrap_or(sent);
            let last = arrived.iter().max().copied().unwrap_or(sent);
            fan.to_first.push(first - sent);
            fan.to_last.push(last - sent);
            fan.first_to_last.push(last - first);
        }
        Ok(fan)
    }
}

/// Per change: from sending the attach until the first and the last watcher had its delta,
/// between those two, and until the attach's answer.
#[derive(Default)]
struct FanOut {
    to_first: Vec<Duration>,
    to_last: Vec<Duration>,
    first_to_last: Vec<Duration>,
    round_trips: Vec<Duration>,
}

/// The controller's and weft-load's own use of the machine over one phase: they share its
/// cores, so what the load generator takes is not the controller's to use.
struct Phase {
    controller: Meter,
    load: Meter,
}

impl Phase {
    fn start(controller_pid: u32) -> anyhow::Result<Phase> {
        Ok(Phase {
            controller: Meter::start(controller_pid)?,
            load: Meter::start(std::process::id())?,
        })
    }

    /// Prints both and returns the controller's.
    async fn stop(self) -> anyhow::Result<Usage> {
        let controller = self.controller.stop().await?;
        let load = self.load.stop().await?;
        println!("  controller: {controller}");
        println!(
            "  weft-load:  CPU {:.2} s ({:.1} % of one core)",
            load.cpu.as_secs_f64(),
            load.cpu_percent()
        );
        Ok(controller)
    }
}

async fn attach(agent: &SimAgent, container_id: String) -> anyhow::Result<()> {
    agent
        .client
        .clone()
        .attach(AttachRequest {
            peer: agent.peer.name.clone(),
            container_id: container_id.clone(),
            addrs: vec![],
            dns_name: String::new(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot attach {container_id} on {}", agent.peer.name))?;
    Ok(())
}

fn check_snapshot(who: &str, synced: &Synced, endpoints: usize) -> anyhow::Result<()> {
    if synced.endpoints != endpoints {
        bail!(
            "{who} received a snapshot of {} endpoints at revision {}, not the {endpoints} attached",
            synced.endpoints,
            synced.revision
        );
    }
    Ok(())
}

/// When each of `watchers` agents decoded the delta of `revision`.
async fn wait_for(
    arrivals: &mut mpsc::UnboundedReceiver<Report>,
    revision: u64,
    watchers: usize,
) -> anyhow::Result<Vec<Instant>> {
    let mut seen: HashMap<usize, Instant> = HashMap::new();
    let deadline = tokio::time::Instant::now() + FANOUT_TIMEOUT;
    while seen.len() < watchers {
        let report = tokio::time::timeout_at(deadline, arrivals.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {watchers} watchers received revision {revision} within {FANOUT_TIMEOUT:?}",
                    seen.len()
                )
            })?
            .context("every watch has ended")?;
        match report {
            Report::Delta {
                agent,
                revision: r,
                at,
            } if r == revision => {
                seen.insert(agent, at);
            }
            Report::Delta { .. } => {}
            Report::Ended { agent, why } => bail!("agent-{agent:04}'s watch ended: {why}"),
        }
    }
    Ok(seen.into_values().collect())
}

/// Fails if a watch ended while nothing was measured.
fn check_watches(arrivals: &mut mpsc::UnboundedReceiver<Report>) -> anyhow::Result<()> {
    while let Ok(report) = arrivals.try_recv() {
        if let Report::Ended { agent, why } = report {
            bail!("agent-{agent:04}'s watch ended: {why}");
        }
    }
    Ok(())
}
