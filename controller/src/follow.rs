//! Following the other controllers on the store (etcd): their commits are applied to this
//! controller's tables and sent to its watchers as they land, so that every controller serves
//! the same tables at the same revisions and an agent can move between them.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, warn};

use crate::state::{EXIT_DIVERGED, Shared};
use crate::store::{RevisionWatch, StoreError};

/// How often the store is looked at besides its watch: a watch that hangs (a partition the
/// keepalives have not noticed yet) delays other controllers' changes by at most this.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Follows the store from now on, on the runtime's threads.
pub(crate) fn start(shared: Arc<Shared>, watch: RevisionWatch) {
    let watched = shared.clone();
    tokio::spawn(watch.run(move |seen| {
        // On a thread of the runtime: the store's requests block it (see store::etcd).
        tokio::task::block_in_place(|| catch_up(&watched, seen));
        true
    }));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(LOOK_EVERY);
        loop {
            every.tick().await;
            let shared = shared.clone();
            let _ = tokio::task::spawn_blocking(move || catch_up(&shared, None)).await;
        }
    });
}

fn catch_up(shared: &Shared, seen: Option<u64>) {
    match shared.follow(seen) {
        Ok(_) => {}
        Err(e @ StoreError::Outrun { .. }) => {
            error!("{e}");
            std::process::exit(EXIT_DIVERGED);
        }
        Err(e) => warn!("cannot follow the other controllers' changes: {e}"),
    }
}
