//! Who watches what on this replica: one follower per watched record,
//! shared by all its watchers, and the count of open watch streams that
//! the limits bound.
//!
//! A change notification wakes the record's follower (never its watchers):
//! the follower reads the record once and publishes it, and each watcher
//! forwards what was published. Between changes a watcher costs nothing.
//! Everything a watch holds here (its slot, its place among a record's
//! watchers) is a guard, released on whatever path the stream ends.

use std::{
    any::Any,
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::rechecks::{CALLER_RECHECKS, Rechecks};
use crate::{auth::caller::Caller, domain::jobs::JobSettings, error::AppError};

/// Records read by the followers of this process, for tests and benchmarks.
pub(crate) static RECORD_READS: AtomicU64 = AtomicU64::new(0);

/// What kind of record is followed (ids of different kinds are kept apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Job,
    Module,
}

type Key = (Kind, Uuid);

/// What a follower last published about its record.
#[derive(Debug, Clone)]
pub(crate) enum Snapshot<T> {
    /// The first read has not answered yet.
    Loading,
    /// The record does not exist.
    Missing,
    /// The first read failed (why).
    Failed(Arc<str>),
    /// The record as last read.
    Current(Arc<T>),
    /// The record was deleted; this is how it was last seen.
    Gone(Arc<T>),
}

/// The watches of this replica, and the shared re-checks of their callers
/// (and of Work streams' callers).
#[derive(Debug)]
pub struct Watchers {
    inner: Arc<Inner>,
    pub(crate) rechecks: Rechecks,
}

#[derive(Debug)]
struct Inner {
    per_caller: usize,
    per_replica: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    followers: HashMap<Key, Follower>,
    generations: u64,
    /// Open watch streams, in all.
    open: usize,
    /// Open watch streams per account.
    open_by: HashMap<Uuid, usize>,
}

/// One followed record.
struct Follower {
    /// Tells a membership or a retirement of an earlier follower of the
    /// same record from this one's.
    generation: u64,
    watchers: usize,
    /// Rung by change notifications; a ring while the follower reads is
    /// kept for after.
    changed: Arc<Notify>,
    /// Ends the follower when its last watcher leaves.
    stop: CancellationToken,
    /// A `watch::Receiver<Snapshot<T>>` of the kind's record type.
    records: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("generation", &self.generation)
            .field("watchers", &self.watchers)
            .finish_non_exhaustive()
    }
}

/// Counters of this process, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchStats {
    /// Reads of watched records by their followers.
    pub record_reads: u64,
    /// Re-checks of stream callers in the database.
    pub caller_rechecks: u64,
}

/// A watch stream's place among the open ones; dropping it frees it.
#[derive(Debug)]
pub(crate) struct WatchSlot {
    inner: Arc<Inner>,
    account: Uuid,
}

/// A watcher's place among a record's watchers; the last one leaving ends
/// the follower.
#[derive(Debug)]
pub(crate) struct Membership {
    inner: Arc<Inner>,
    key: Key,
    generation: u64,
}

/// What a new follower runs with; its end (on any path) is its
/// retirement, so the next watcher starts a new follower.
#[derive(Debug)]
pub(crate) struct FollowerStart<T> {
    pub id: Uuid,
    pub changed: Arc<Notify>,
    pub stop: CancellationToken,
    pub publish: watch::Sender<Snapshot<T>>,
    pub tenure: Tenure,
}

/// A follower's hold on its record's entry; dropping it removes the entry
/// (if it is still this follower's).
#[derive(Debug)]
pub(crate) struct Tenure {
    inner: Arc<Inner>,
    key: Key,
    generation: u64,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
}

impl Watchers {
    /// The watches of a replica configured by `settings`.
    pub(crate) fn new(settings: &JobSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                per_caller: settings.streams.watches_per_caller,
                per_replica: settings.streams.watches_per_replica,
                state: Mutex::new(State::default()),
            }),
            rechecks: Rechecks::new(settings.heartbeat_interval()),
        }
    }

    /// Counts a new watch stream of `caller`, or refuses it past the limits
    /// (an API key counts as its owner).
    pub(crate) fn admit(&self, caller: &Caller) -> Result<WatchSlot, AppError> {
        let mut state = self.inner.state();
        let account = caller.user_id;
        let mine = state.open_by.get(&account).copied().unwrap_or(0);
        if mine >= self.inner.per_caller {
            return Err(AppError::LimitExceeded {
                limit: "WATCHES_PER_CALLER",
                message: format!(
                    "this account already has {mine} watch streams open on this server, \
                     the most allowed (WATCHES_PER_CALLER); close one first"
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        if state.open >= self.inner.per_replica {
            return Err(AppError::LimitExceeded {
                limit: "WATCHES_PER_REPLICA",
                message: format!(
                    "this server already serves {} watch streams, the most allowed \
                     (WATCHES_PER_REPLICA); retry later or on another server",
                    state.open
                ),
                retry_after: Duration::from_secs(1),
            });
        }
        state.open += 1;
        *state.open_by.entry(account).or_insert(0) += 1;
        Ok(WatchSlot {
            inner: self.inner.clone(),
            account,
        })
    }

    /// Joins the watchers of record `id`: what its follower publishes, and,
    /// when nobody followed it yet, what to start the follower with (it is
    /// registered already, so no change notification after this is missed).
    pub(crate) fn join<T: Send + Sync + 'static>(
        &self,
        kind: Kind,
        id: Uuid,
    ) -> (
        Membership,
        watch::Receiver<Snapshot<T>>,
        Option<FollowerStart<T>>,
    ) {
        let key = (kind, id);
        let mut state = self.inner.state();
        if let Some(follower) = state.followers.get_mut(&key) {
            follower.watchers += 1;
            let records = follower
                .records
                .downcast_ref::<watch::Receiver<Snapshot<T>>>()
                .expect("one record type per kind")
                .clone();
            let membership = Membership {
                inner: self.inner.clone(),
                key,
                generation: follower.generation,
            };
            return (membership, records, None);
        }
        state.generations += 1;
        let generation = state.generations;
        let (publish, records) = watch::channel(Snapshot::Loading);
        let changed = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        state.followers.insert(
            key,
            Follower {
                generation,
                watchers: 1,
                changed: changed.clone(),
                stop: stop.clone(),
                records: Box::new(records.clone()),
            },
        );
        let membership = Membership {
            inner: self.inner.clone(),
            key,
            generation,
        };
        let start = FollowerStart {
            id,
            changed,
            stop,
            publish,
            tenure: Tenure {
                inner: self.inner.clone(),
                key,
                generation,
            },
        };
        (membership, records, Some(start))
    }

    /// Wakes the followers of these records.
    pub fn bump(&self, ids: &[Uuid]) {
        let state = self.inner.state();
        for id in ids {
            for kind in [Kind::Job, Kind::Module] {
                if let Some(follower) = state.followers.get(&(kind, *id)) {
                    follower.changed.notify_one();
                }
            }
        }
    }

    /// Wakes every follower (notifications may have been missed).
    pub fn bump_all(&self) {
        for follower in self.inner.state().followers.values() {
            follower.changed.notify_one();
        }
    }

    /// Records followed on this replica.
    pub fn followed(&self) -> usize {
        self.inner.state().followers.len()
    }

    /// Watch streams open on this replica.
    pub fn open(&self) -> usize {
        self.inner.state().open
    }

    /// The counters of this process (all replicas it runs).
    pub fn stats() -> WatchStats {
        WatchStats {
            record_reads: RECORD_READS.load(Ordering::Relaxed),
            caller_rechecks: CALLER_RECHECKS.load(Ordering::Relaxed),
        }
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        state.open -= 1;
        if let Some(mine) = state.open_by.get_mut(&self.account) {
            *mine -= 1;
            if *mine == 0 {
                state.open_by.remove(&self.account);
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        let Some(follower) = state.followers.get_mut(&self.key) else {
            return;
        };
        if follower.generation != self.generation {
            return;
        }
        follower.watchers -= 1;
        if follower.watchers == 0 {
            follower.stop.cancel();
            state.followers.remove(&self.key);
        }
    }
}

impl Drop for Tenure {
    fn drop(&mut self) {
        let mut state = self.inner.state();
        if state
            .followers
            .get(&self.key)
            .is_some_and(|follower| follower.generation == self.generation)
        {
            state.followers.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user_id: Uuid) -> Caller {
        Caller {
            user_id,
            session_id: Uuid::now_v7(),
            permissions: vec![],
            scope: None,
            api_key: None,
        }
    }

    #[tokio::test]
    async fn bumps_reach_followers_and_the_last_watcher_ends_them() {
        let watchers = Watchers::new(&JobSettings::default());
        let id = Uuid::now_v7();
        let (first, _, start) = watchers.join::<u32>(Kind::Job, id);
        let start = start.expect("the first watcher starts the follower");
        let (second, _, again) = watchers.join::<u32>(Kind::Job, id);
        assert!(again.is_none(), "one follower per record");
        watchers.bump(&[Uuid::now_v7()]);
        watchers.bump(&[id]);
        tokio::time::timeout(Duration::from_secs(1), start.changed.notified())
            .await
            .expect("the follower is woken");
        drop(first);
        assert!(!start.stop.is_cancelled());
        drop(second);
        assert!(start.stop.is_cancelled());
        assert_eq!(watchers.followed(), 0);
    }

    #[tokio::test]
    async fn a_retired_follower_leaves_room_for_a_new_one() {
        let watchers = Watchers::new(&JobSettings::default());
        let id = Uuid::now_v7();
        let (first, _, start) = watchers.join::<u32>(Kind::Module, id);
        drop(start);
        let (second, _, start) = watchers.join::<u32>(Kind::Module, id);
        assert!(start.is_some(), "a settled record is read afresh");
        drop(first);
        assert_eq!(watchers.followed(), 1);
        drop(second);
        assert_eq!(watchers.followed(), 0);
    }

    #[test]
    fn slots_are_bounded_per_account_and_per_replica() {
        let settings = JobSettings {
            streams: crate::domain::jobs::StreamLimits {
                watches_per_caller: 2,
                watches_per_replica: 3,
                ..Default::default()
            },
            ..JobSettings::default()
        };
        let watchers = Watchers::new(&settings);
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let a1 = watchers.admit(&caller(alice)).unwrap();
        let _a2 = watchers.admit(&caller(alice)).unwrap();
        let refused = watchers.admit(&caller(alice)).unwrap_err();
        assert!(matches!(
            refused,
            AppError::LimitExceeded {
                limit: "WATCHES_PER_CALLER",
                ..
            }
        ));
        let _b1 = watchers.admit(&caller(bob)).unwrap();
        let refused = watchers.admit(&caller(bob)).unwrap_err();
        assert!(matches!(
            refused,
            AppError::LimitExceeded {
                limit: "WATCHES_PER_REPLICA",
                ..
            }
        ));
        drop(a1);
        let _b2 = watchers.admit(&caller(bob)).unwrap();
        assert_eq!(watchers.open(), 3);
    }
}
