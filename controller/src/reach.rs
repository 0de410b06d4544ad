//! Whether this controller reaches its store. A controller cut off from etcd (a partition, or
//! most of etcd down) can commit nothing, and the agents watching it would learn of nothing:
//! once etcd has not answered for [`LOST_AFTER`] it ends their watches and refuses new ones and
//! every change, naming why, so that agents given other controllers move to one of them. It
//! serves again as soon as etcd answers. The redb store is on the controller's own disk: it is
//! never lost this way.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::EtcdKv;

/// How often etcd is asked.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Longer than etcd's elections (about a second here, a few at most), shorter than an
/// operator's patience: agents move on within this, a probe and their backoff.
const LOST_AFTER: Duration = Duration::from_secs(4);

/// Why the store cannot be reached, while it cannot.
pub struct StoreReach {
    lost: watch::Sender<Option<String>>,
}

impl StoreReach {
    /// Probes etcd from now on, through `kv`; with none (redb), always reached.
    pub fn start(kv: Option<EtcdKv>) -> StoreReach {
        let reach = StoreReach {
            lost: watch::Sender::new(None),
        };
        if let Some(kv) = kv {
            tokio::spawn(probe(kv, reach.lost.clone()));
        }
        reach
    }

    /// Why the store cannot be reached now, if it cannot.
    pub fn lost(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Returns why, once the store cannot be reached.
    pub async fn wait_lost(&self) -> String {
        let mut lost = self.lost.subscribe();
        // The sender lives as long as `self`: the wait ends only when the store is lost.
        let why = lost
            .wait_for(Option::is_some)
            .await
            .map(|why| why.clone().unwrap_or_default());
        why.unwrap_or_default()
    }
}

async fn probe(kv: EtcdKv, lost: watch::Sender<Option<String>>) {
    let mut answered = Instant::now();
    loop {
        match kv.answers().await {
            Ok(()) => {
                answered = Instant::now();
                if lost.send_replace(None).is_some() {
                    info!(store = %kv.config(), "the store answers again; serving");
                }
            }
            Err(e) if answered.elapsed() >= LOST_AFTER && lost.borrow().is_none() => {
                let why = format!(
                    "the controller cannot reach its store {} (no answer for {}s: {e})",
                    kv.config(),
                    answered.elapsed().as_secs()
                );
                warn!("{why}; ending its watches and refusing changes until it answers");
                lost.send_replace(Some(why));
            }
            Err(_) => {}
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}
