//! Re-checks of the callers of open streams, shared per caller.
//!
//! A stream must stop once its caller's session or API key ends or it loses
//! the permission the stream needs. Checking that in the database once per
//! stream and heartbeat interval made a caller with thousands of streams a
//! load on everyone, so one check serves every stream of the same caller
//! identity (its session, or its API key): a verdict younger than half a
//! heartbeat interval is reused, and concurrent askers wait for the one
//! check in flight. Work streams ask at their own pace (`Shared::recheck`);
//! watch streams do not ask at all: while a caller has any, one task per
//! caller re-checks once per heartbeat interval and tells them when the
//! verdict changes, so an idle watch costs nothing.
//!
//! A database failure is no verdict: the streams go on, and the failure
//! counts as a check (it is not retried by every stream at once).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Shared;
use crate::{auth::caller::Caller, domain::sessions::Sessions, error::AppError, sync::lock};

/// Re-checks run by this process, for tests and benchmarks.
pub(crate) static CALLER_RECHECKS: AtomicU64 = AtomicU64::new(0);

/// What one re-check shares: an API key's calls are checked by key (each
/// key can be revoked alone), the rest by session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Identity {
    Session(Uuid),
    ApiKey(Uuid),
}

impl Identity {
    fn of(caller: &Caller) -> Self {
        caller
            .api_key
            .map_or(Self::Session(caller.session_id), Self::ApiKey)
    }
}

/// What the database last said about a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not checked since its streams opened (the request layer checked it
    /// when each opened).
    Unchecked,
    /// The caller as it is now: its current permissions.
    Current(Arc<Caller>),
    /// The session or key ended: why.
    Ended(Arc<str>),
}

impl Verdict {
    /// Whether a stream needing `permission` may go on.
    pub fn allows(&self, permission: &str) -> Result<(), AppError> {
        match self {
            Self::Unchecked => Ok(()),
            Self::Current(caller) if caller.holds(permission) => Ok(()),
            Self::Current(_) => Err(AppError::PermissionDenied(format!(
                "the caller no longer holds {permission}"
            ))),
            Self::Ended(why) => Err(AppError::Unauthenticated(why.to_string())),
        }
    }
}

/// What asking gave.
pub(crate) enum Outcome {
    /// A verdict at most half a heartbeat interval old.
    Verdict(Verdict),
    /// The database failed the check: no verdict. `Some` for the asker
    /// whose check failed (to note it), `None` for those who shared it.
    Failed(Option<AppError>),
}

/// The shared re-checks of this replica.
#[derive(Debug)]
pub(crate) struct Rechecks {
    /// The heartbeat interval: the oldest a verdict a stream acts on may be.
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    callers: HashMap<Identity, Arc<Entry>>,
    /// When callers nobody asked about lately were last forgotten.
    swept: Instant,
}

/// One caller identity.
#[derive(Debug)]
struct Entry {
    /// The latest verdict; watch streams hear when it changes.
    verdict: watch::Sender<Verdict>,
    /// When the latest check started, and whether the database answered.
    last: Mutex<Option<(Instant, bool)>>,
    /// One check at a time: the others wait for its verdict.
    turn: tokio::sync::Mutex<()>,
    /// The watch streams following the verdict.
    followers: Mutex<Followers>,
}

#[derive(Debug, Default)]
struct Followers {
    count: usize,
    /// Stops the task that re-checks for them.
    stop: Option<CancellationToken>,
    /// A stream joined since the last verdict was told: the next one is
    /// told even if unchanged (the stream's caller may have lost access
    /// between its request's check and its joining).
    joined: bool,
}

impl Entry {
    /// The latest verdict, if the latest check is younger than `within`.
    fn reusable(&self, within: Duration) -> Option<Outcome> {
        let (at, answered) = (*lock(&self.last))?;
        (at.elapsed() < within).then(|| {
            if answered {
                Outcome::Verdict(self.verdict.borrow().clone())
            } else {
                Outcome::Failed(None)
            }
        })
    }
}

impl Rechecks {
    /// Re-checks for streams that heartbeat every `heartbeat_interval`.
    pub fn new(heartbeat_interval: Duration) -> Self {
        Self {
            every: heartbeat_interval.max(Duration::from_millis(50)),
            state: Mutex::new(State {
                callers: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// The verdict on `caller`, checked now unless a check of the same
    /// identity is younger than half a heartbeat interval (so that a
    /// stream asking once per interval always gets one made since its last
    /// question).
    pub async fn check(&self, caller: &Caller, sessions: &Sessions) -> Outcome {
        let entry = self.entry(caller);
        self.check_entry(&entry, caller, sessions).await
    }

    async fn check_entry(&self, entry: &Entry, caller: &Caller, sessions: &Sessions) -> Outcome {
        let within = self.every / 2;
        if let Some(outcome) = entry.reusable(within) {
            return outcome;
        }
        let _turn = entry.turn.lock().await;
        if let Some(outcome) = entry.reusable(within) {
            return outcome;
        }
        let started = Instant::now();
        CALLER_RECHECKS.fetch_add(1, Ordering::Relaxed);
        let verdict = match sessions.recheck(caller).await {
            Ok(current) => Verdict::Current(Arc::new(current)),
            Err(AppError::Unauthenticated(why)) => Verdict::Ended(why.into()),
            Err(error) => {
                *lock(&entry.last) = Some((started, false));
                return Outcome::Failed(Some(error));
            }
        };
        {
            // Only a change wakes the watch streams (or one joining since
            // the last verdict, which has not been told any yet).
            let mut followers = lock(&entry.followers);
            let joined = std::mem::take(&mut followers.joined);
            entry.verdict.send_if_modified(|latest| {
                let changed = *latest != verdict;
                if changed {
                    *latest = verdict.clone();
                }
                changed || joined
            });
        }
        *lock(&entry.last) = Some((started, true));
        Outcome::Verdict(verdict)
    }

    /// Follows the verdict on `caller` for a watch stream: while the caller
    /// has any, one task re-checks it once per heartbeat interval.
    pub fn follow(&self, shared: &Arc<Shared>, caller: &Caller) -> VerdictWatch {
        let entry = self.entry(caller);
        let mut followers = lock(&entry.followers);
        let verdicts = entry.verdict.subscribe();
        followers.joined = true;
        followers.count += 1;
        if followers.count == 1 {
            let stop = CancellationToken::new();
            followers.stop = Some(stop.clone());
            tokio::spawn(keep_checking(
                shared.clone(),
                entry.clone(),
                caller.clone(),
                stop,
            ));
        }
        drop(followers);
        VerdictWatch { entry, verdicts }
    }

    /// The entry of `caller`'s identity; forgets, now and then, those no
    /// stream asked about for a while.
    fn entry(&self, caller: &Caller) -> Arc<Entry> {
        let mut state = lock(&self.state);
        if state.swept.elapsed() >= self.every * 4 {
            let stale = self.every * 2;
            state.callers.retain(|_, entry| {
                Arc::strong_count(entry) > 1
                    || lock(&entry.last).is_none_or(|(at, _)| at.elapsed() < stale)
            });
            state.swept = Instant::now();
        }
        state
            .callers
            .entry(Identity::of(caller))
            .or_insert_with(|| {
                Arc::new(Entry {
                    verdict: watch::channel(Verdict::Unchecked).0,
                    last: Mutex::new(None),
                    turn: tokio::sync::Mutex::new(()),
                    followers: Mutex::new(Followers::default()),
                })
            })
            .clone()
    }
}

/// Re-checks `caller` once per heartbeat interval (counted from the last
/// check, whoever made it) until its last watch stream leaves.
async fn keep_checking(
    shared: Arc<Shared>,
    entry: Arc<Entry>,
    caller: Caller,
    stop: CancellationToken,
) {
    let rechecks = &shared.watchers.rechecks;
    loop {
        let last = lock(&entry.last).map(|(at, _)| at);
        let due = last.unwrap_or_else(Instant::now) + rechecks.every;
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep_until(due.into()) => {}
        }
        // A check in flight is abandoned when the server stops (it must not
        // outlive it, holding a connection).
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            () = shared.shutdown.cancelled() => return,
            outcome = rechecks.check_entry(&entry, &caller, &shared.sessions) => outcome,
        };
        if let Outcome::Failed(Some(error)) = outcome {
            shared.note_db_failure(&error);
        }
    }
}

/// A watch stream's view of its caller's verdict; dropping it ends its
/// interest (and the re-checks, with the caller's last stream).
#[derive(Debug)]
pub(crate) struct VerdictWatch {
    entry: Arc<Entry>,
    verdicts: watch::Receiver<Verdict>,
}

impl VerdictWatch {
    /// Whether a stream needing `permission` may go on, by the verdicts
    /// told since it joined (the one before was the request's own check).
    pub fn verdict(&mut self, permission: &str) -> Result<(), AppError> {
        if self.verdicts.has_changed().unwrap_or(false) {
            self.verdicts.borrow_and_update().allows(permission)
        } else {
            Ok(())
        }
    }

    /// Waits until a new verdict is told (then read by [`Self::verdict`]).
    pub async fn changed(&mut self) {
        if self.verdicts.changed().await.is_err() {
            // The entry holds the sender as long as this exists.
            std::future::pending::<()>().await;
        }
        self.verdicts.mark_changed();
    }
}

impl Drop for VerdictWatch {
    fn drop(&mut self) {
        let mut followers = lock(&self.entry.followers);
        followers.count -= 1;
        if followers.count == 0
            && let Some(stop) = followers.stop.take()
        {
            stop.cancel();
        }
    }
}
