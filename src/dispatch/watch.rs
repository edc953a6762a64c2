//! Who is watching which job on this replica, so that a change notification
//! wakes exactly the WatchJob streams that care.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;
use uuid::Uuid;

/// The watched jobs of this replica.
#[derive(Debug, Default, Clone)]
pub struct Watchers {
    inner: Arc<Mutex<HashMap<Uuid, Watched>>>,
}

#[derive(Debug)]
struct Watched {
    changes: watch::Sender<u64>,
    subscribers: usize,
}

/// A watcher's interest in one job; dropping it ends the interest.
#[derive(Debug)]
pub struct Subscription {
    id: Uuid,
    watchers: Watchers,
    /// Changes whenever the job may have changed.
    pub changes: watch::Receiver<u64>,
}

impl Watchers {
    /// Starts watching `id`. Subscribe before reading the job, so that a
    /// change between the read and the wait is not missed.
    pub fn subscribe(&self, id: Uuid) -> Subscription {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let watched = map.entry(id).or_insert_with(|| Watched {
            changes: watch::channel(0).0,
            subscribers: 0,
        });
        watched.subscribers += 1;
        let mut changes = watched.changes.subscribe();
        changes.mark_unchanged();
        Subscription {
            id,
            watchers: self.clone(),
            changes,
        }
    }

    /// Wakes the watchers of these jobs.
    pub fn bump(&self, ids: &[Uuid]) {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if let Some(watched) = map.get(id) {
                watched.changes.send_modify(|n| *n += 1);
            }
        }
    }

    /// Wakes every watcher (notifications may have been missed).
    pub fn bump_all(&self) {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for watched in map.values() {
            watched.changes.send_modify(|n| *n += 1);
        }
    }

    /// How many jobs are watched.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self
            .watchers
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(watched) = map.get_mut(&self.id) {
            watched.subscribers -= 1;
            if watched.subscribers == 0 {
                map.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bumps_reach_subscribers_and_interest_ends_on_drop() {
        let watchers = Watchers::default();
        let id = Uuid::now_v7();
        let mut first = watchers.subscribe(id);
        let second = watchers.subscribe(id);
        watchers.bump(&[Uuid::now_v7()]);
        assert!(!first.changes.has_changed().unwrap());
        watchers.bump(&[id]);
        first.changes.changed().await.unwrap();
        drop(first);
        drop(second);
        assert!(watchers.is_empty());
    }
}
