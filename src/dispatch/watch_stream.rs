//! WatchJob and WatchModule: a record as it is now, then each change, until
//! it is settled (a finished job, a module out of its transition) or gone.
//!
//! One follower per watched record on this replica reads it: once when the
//! first watcher comes, once per change notification (heard through the
//! replica's LISTEN connection, whichever replica made the change), and
//! once per poll interval as a safety net for notifications lost while that
//! connection was down. It publishes each new version to all the record's
//! watchers and ends with the last of them.
//!
//! A watcher is no task and no queue: it is the response stream itself,
//! which the transport polls only when its client has room for a message
//! (HTTP/2 flow control), and which then hands over the latest version
//! (older ones are superseded). So between changes a watcher costs nothing,
//! and one whose client stopped reading is never waited on: it holds its
//! slot (and the transport its send buffer) until the client reads again or
//! goes away, which drops the stream and, with it, everything it holds. It
//! ends when the record settles or disappears, when its caller loses access
//! (told by the caller's shared re-check), or when the server drains; those
//! are checked before any version is handed over.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, stream};
use tokio::sync::watch;
use tonic::Status;
use uuid::Uuid;

use super::{
    Shared,
    rechecks::VerdictWatch,
    watchers::{FollowerStart, Kind, Membership, RECORD_READS, Snapshot, WatchSlot},
};
use crate::{
    domain::{Actor, modules::lifecycle},
    error::AppError,
    proto::automation_v1 as pb,
    store::{jobs::JobRow, modules::ModuleRow},
    wire::{jobs::job_message, modules::module_message},
};

/// The server's half of a watch stream (see the module's documentation).
pub struct WatchStream<M> {
    inner: Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>,
}

impl<M> Stream for WatchStream<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A record a client can follow.
pub(crate) trait Followed: Clone + PartialEq + Send + Sync + 'static {
    /// One message of the stream.
    type Message: Send + 'static;
    /// What the caller must keep holding while the stream is open.
    const PERMISSION: &'static str;
    /// Which followers it shares.
    const KIND: Kind;
    /// Whether nothing more will happen that a watcher waits for.
    fn settled(&self) -> bool;
    fn message(&self) -> Self::Message;
    /// The end of the stream when the record disappears.
    fn gone(&self) -> Result<Self::Message, Status>;
    /// The refusal of a watch of a record that does not exist.
    fn missing(id: Uuid) -> AppError;
    /// The record now; `None` when it is gone.
    fn reload(
        shared: &Shared,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Self>, AppError>> + Send;
}

impl Followed for JobRow {
    type Message = pb::WatchJobResponse;
    const PERMISSION: &'static str = "jobs:read";
    const KIND: Kind = Kind::Job;
    fn settled(&self) -> bool {
        self.status.is_terminal()
    }
    fn message(&self) -> Self::Message {
        pb::WatchJobResponse {
            job: Some(job_message(self.clone())),
        }
    }
    fn gone(&self) -> Result<Self::Message, Status> {
        Err(AppError::NotFound(format!("job {} (deleted while watched)", self.id)).into())
    }
    fn missing(id: Uuid) -> AppError {
        AppError::NotFound(format!("job {id}"))
    }
    async fn reload(shared: &Shared, id: Uuid) -> Result<Option<Self>, AppError> {
        match shared.jobs.get(id).await {
            Ok(job) => Ok(Some(job)),
            Err(AppError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

impl Followed for ModuleRow {
    type Message = pb::WatchModuleResponse;
    const PERMISSION: &'static str = "modules:read";
    const KIND: Kind = Kind::Module;
    fn settled(&self) -> bool {
        !lifecycle::is_transition(self.status)
    }
    fn message(&self) -> Self::Message {
        pb::WatchModuleResponse {
            module: Some(module_message(self.clone())),
            deleted: false,
        }
    }
    fn gone(&self) -> Result<Self::Message, Status> {
        Ok(pb::WatchModuleResponse {
            module: Some(module_message(self.clone())),
            deleted: true,
        })
    }
    fn missing(id: Uuid) -> AppError {
        AppError::NotFound(format!("module {id}"))
    }
    async fn reload(shared: &Shared, id: Uuid) -> Result<Option<Self>, AppError> {
        match shared.modules.get(&id.to_string()).await {
            Ok(module) => Ok(Some(module)),
            Err(AppError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// Opens a watch of record `id` in `slot` (NOT_FOUND before the stream
/// starts when the record does not exist).
pub(crate) async fn open<T: Followed>(
    shared: &Arc<Shared>,
    actor: Actor,
    slot: WatchSlot,
    id: Uuid,
) -> Result<WatchStream<T::Message>, AppError> {
    let verdicts = shared.watchers.rechecks.follow(shared, &actor.caller);
    let (membership, mut records, start) = shared.watchers.join::<T>(T::KIND, id);
    if let Some(start) = start {
        tokio::spawn(run_follower(shared.clone(), start));
    }
    let first = records
        .wait_for(|snapshot| !matches!(snapshot, Snapshot::Loading))
        .await
        .map(|snapshot| snapshot.clone())
        .map_err(|_| draining())?;
    match first {
        Snapshot::Current(_) => {}
        Snapshot::Loading | Snapshot::Missing | Snapshot::Gone(_) => return Err(T::missing(id)),
        Snapshot::Failed(why) => return Err(AppError::Unavailable(why.to_string())),
    }
    let watch = Watch {
        shared: shared.clone(),
        records,
        verdicts,
        sent: None,
        _slot: slot,
        _membership: membership,
    };
    let messages = stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        match watch.next().await {
            Step::More(message) => Some((Ok(message), Some(watch))),
            Step::Last(message) => Some((message, None)),
            Step::Done => None,
        }
    });
    Ok(WatchStream {
        inner: Box::pin(messages),
    })
}

fn draining() -> AppError {
    AppError::Draining("the server is shutting down; watch again".into())
}

/// Reads the record for all its watchers until it settles, disappears or
/// its last watcher leaves.
async fn run_follower<T: Followed>(shared: Arc<Shared>, start: FollowerStart<T>) {
    let FollowerStart {
        id,
        changed,
        stop,
        publish,
        tenure: _tenure,
    } = start;
    // A read in flight is abandoned when the server stops or the last
    // watcher leaves (it must not outlive them, holding a connection).
    let read = async || {
        tokio::select! {
            () = stop.cancelled() => None,
            () = shared.shutdown.cancelled() => None,
            read = reload::<T>(&shared, id) => Some(read),
        }
    };
    let Some(first) = read().await else {
        return;
    };
    let mut record = match first {
        Ok(Some(record)) => record,
        Ok(None) => {
            publish.send_replace(Snapshot::Missing);
            return;
        }
        Err(error) => {
            publish.send_replace(Snapshot::Failed(error.to_string().into()));
            return;
        }
    };
    publish.send_replace(Snapshot::Current(Arc::new(record.clone())));
    // Every change is announced (and every follower re-reads after the
    // LISTEN connection comes back), so the safety re-read is slow: with
    // thousands of followed records it must not become a steady load. A
    // failed read is retried at the poll interval.
    let safety = safety_reread(shared.settings.poll_interval, id);
    let mut next_read = tokio::time::Instant::now() + safety;
    while !record.settled() {
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep_until(next_read) => {}
            () = stop.cancelled() => return,
            () = shared.shutdown.cancelled() => return,
        }
        let Some(now) = read().await else {
            return;
        };
        next_read = tokio::time::Instant::now() + safety;
        match now {
            Ok(Some(now)) => {
                if now != record {
                    record = now;
                    publish.send_replace(Snapshot::Current(Arc::new(record.clone())));
                }
            }
            Ok(None) => {
                publish.send_replace(Snapshot::Gone(Arc::new(record)));
                return;
            }
            // The database is away: try again soon.
            Err(_) => next_read = tokio::time::Instant::now() + shared.settings.poll_interval,
        }
    }
}

/// How often a followed record is re-read with no notification: a dozen
/// poll intervals, at least a minute, spread by the record's id so that
/// followers started together do not read together.
fn safety_reread(poll_interval: Duration, id: Uuid) -> Duration {
    let base = (poll_interval * 12).max(Duration::from_secs(60));
    let spread = u64::from(id.as_u128() as u16) % 1000;
    base + base.mul_f64(spread as f64 / 4000.0)
}

async fn reload<T: Followed>(shared: &Shared, id: Uuid) -> Result<Option<T>, AppError> {
    RECORD_READS.fetch_add(1, Ordering::Relaxed);
    T::reload(shared, id).await
}

/// One watch stream's state: everything it holds is released when the
/// transport drops the stream (its client left) or the stream ends.
struct Watch<T: Followed> {
    shared: Arc<Shared>,
    records: watch::Receiver<Snapshot<T>>,
    verdicts: VerdictWatch,
    /// The version last handed over.
    sent: Option<Arc<T>>,
    _slot: WatchSlot,
    _membership: Membership,
}

/// What a watch hands the transport next.
enum Step<M> {
    More(M),
    /// The end of the stream, after this.
    Last(Result<M, Status>),
    Done,
}

impl<T: Followed> Watch<T> {
    /// Waits until there is something to hand over: a version not handed
    /// over yet, or the end. Whether the stream may go on is decided first,
    /// so nothing reaches a caller who lost access or a draining server's
    /// client.
    async fn next(&mut self) -> Step<T::Message> {
        loop {
            if self.shared.draining.is_cancelled() {
                return Step::Last(Err(draining().into()));
            }
            if let Err(refusal) = self.verdicts.verdict(T::PERMISSION) {
                return Step::Last(Err(refusal.into()));
            }
            let snapshot = self.records.borrow_and_update().clone();
            match snapshot {
                Snapshot::Current(record) => {
                    let new = self
                        .sent
                        .as_ref()
                        .is_none_or(|sent| !Arc::ptr_eq(sent, &record) && **sent != *record);
                    if record.settled() {
                        return if new {
                            Step::Last(Ok(record.message()))
                        } else {
                            Step::Done
                        };
                    }
                    if new {
                        let message = record.message();
                        self.sent = Some(record);
                        return Step::More(message);
                    }
                }
                Snapshot::Gone(record) => return Step::Last(record.gone()),
                Snapshot::Loading | Snapshot::Missing | Snapshot::Failed(_) => {}
            }
            tokio::select! {
                changed = self.records.changed() => {
                    if changed.is_err() {
                        // The follower stopped without an end: the server
                        // is stopping.
                        return Step::Last(Err(draining().into()));
                    }
                }
                () = self.verdicts.changed() => {}
                () = self.shared.draining.cancelled() => {}
            }
        }
    }
}
