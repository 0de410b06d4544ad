//! One lock per container with an attach, detach or release under way: they take turns, so none
//! acts on what another is half-way through changing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct ContainerLocks {
    /// Only containers with a lock held or awaited have an entry.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while an attach, detach or release of one container is under way.
pub struct ContainerLock<'a> {
    locks: &'a ContainerLocks,
    container_id: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    /// `None` while still waiting: a wait that is cancelled cleans up too.
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for ContainerLock<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = self.locks.map();
        // Only the map and this lock still know the mutex: nobody else holds or awaits it.
        if Arc::strong_count(&self.mutex) == 2 {
            locks.remove(&self.container_id);
        }
    }
}

impl ContainerLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().expect("container locks poisoned")
    }

    /// Waits until no attach, detach or release of `container_id` is under way, and keeps others
    /// waiting until the returned lock is dropped.
    pub async fn lock(&self, container_id: &str) -> ContainerLock<'_> {
        let mut lock = self.unlocked(container_id);
        lock.guard = Some(lock.mutex.clone().lock_owned().await);
        lock
    }

    /// The container's lock if nothing is under way for it.
    pub fn try_lock(&self, container_id: &str) -> Option<ContainerLock<'_>> {
        let mut lock = self.unlocked(container_id);
        lock.guard = Some(lock.mutex.clone().try_lock_owned().ok()?);
        Some(lock)
    }

    fn unlocked(&self, container_id: &str) -> ContainerLock<'_> {
        let mutex = self
            .map()
            .entry(container_id.to_string())
            .or_default()
            .clone();
        ContainerLock {
            locks: self,
            container_id: container_id.to_string(),
            mutex,
            guard: None,
        }
    }

    /// No attach, detach or release is under way.
    pub fn is_idle(&self) -> bool {
        self.map().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_container_takes_turns_and_others_do_not_wait() {
        let locks = ContainerLocks::default();
        assert!(locks.is_idle());
        let held = locks.lock("c1").await;
        assert!(locks.try_lock("c1").is_none());
        assert!(locks.try_lock("c2").is_some());
        // A waiter blocks until the holder lets go.
        let waiting = locks.lock("c1");
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(held);
        let again = waiting.await;
        assert!(!locks.is_idle());
        drop(again);
        assert!(locks.is_idle(), "a released lock leaves no entry behind");
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_nothing_behind() {
        let locks = ContainerLocks::default();
        let held = locks.lock("c1").await;
        {
            let waiting = locks.lock("c1");
            tokio::pin!(waiting);
            assert!(futures::poll!(&mut waiting).is_pending());
        }
        drop(held);
        assert!(locks.is_idle());
    }
}
