//! Following the store's revision in etcd: a watch of `meta/revision`, restarted when it ends.

use etcd_client::Client;
use tracing::warn;

use super::kv::{EtcdKv, RETRY_PAUSE};

/// etcd's watch of `meta/revision`.
pub struct RevisionWatch {
    client: Client,
    key: String,
    at: String,
}

impl RevisionWatch {
    pub(super) fn new(kv: &EtcdKv) -> RevisionWatch {
        RevisionWatch {
            client: kv.client().clone(),
            key: kv.key("meta/revision"),
            at: kv.config().to_string(),
        }
    }

    /// Calls `moved` with each revision the store moves to, and with none each time the watch
    /// (re)starts, since it may have moved meanwhile. Returns only if `moved` says to stop.
    pub async fn run(self, mut moved: impl FnMut(Option<u64>) -> bool) {
        let mut watch = self.client.watch_client();
        loop {
            match watch.watch(self.key.clone(), None).await {
                Ok(mut stream) => {
                    if !moved(None) {
                        return;
                    }
                    loop {
                        match stream.message().await {
                            Ok(Some(response)) => {
                                for event in response.events() {
                                    let revision = event
                                        .kv()
                                        .and_then(|kv| std::str::from_utf8(kv.value()).ok())
                                        .and_then(|v| v.parse().ok());
                                    if revision.is_some() && !moved(revision) {
                                        return;
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                warn!(store = %self.at, "watch of the store's revision ended: {e}");
                                break;
                            }
                        }
                    }
                }
                Err(e) => warn!(store = %self.at, "cannot watch the store's revision: {e}"),
            }
            tokio::time::sleep(RETRY_PAUSE * 10).await;
        }
    }
}
