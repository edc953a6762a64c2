//! The server's half of a Work stream: what a session has for its worker,
//! queued until the transport takes it.
//!
//! The session never waits on its worker. It pushes and goes on (reading
//! reports, re-checking its caller), and it can see how long the transport
//! has had something to take without taking it: HTTP/2 takes a message only
//! when the worker's flow-control window has room, so a worker that stopped
//! reading shows as a front message that waits. Assignments the transport
//! never took were never delivered: the session can withdraw them, and
//! their leases go back without costing an attempt.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Instant,
};

use futures_util::Stream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::proto::automation_v1 as pb;

/// A message waiting for the transport; an assignment names its lease.
struct Queued {
    message: pb::WorkResponse,
    lease: Option<(Uuid, i32)>,
}

/// Whether the stream is still open.
enum End {
    Open,
    /// Ends once the queue is sent, with this status (or cleanly).
    Ending(Option<Status>),
    Ended,
}

struct State {
    queue: VecDeque<Queued>,
    end: End,
    /// When the transport last took a message, or when the queue last
    /// became non-empty: what waits has waited since then.
    since: Instant,
    waker: Option<Waker>,
}

/// Messages queued beyond which the session stops reading its worker's
/// messages (each may call for an answer) until the transport takes some.
pub const ROOM: usize = 64;

/// The session's side: it pushes, the [`ResponseStream`] takes.
pub struct Outbox {
    state: Mutex<State>,
    /// Cancelled when the transport dropped the stream (the worker is gone).
    gone: CancellationToken,
    /// Rung when the transport takes the queue below [`ROOM`].
    room: Notify,
    /// What must live as long as the stream's transport (its place among
    /// its caller's streams, once admitted): the outbox outlives both halves
    /// (the session's and the transport's), so it is held until both are
    /// gone. Type-erased: the outbox knows nothing of the registry.
    slot: Mutex<Option<Box<dyn Send>>>,
}

/// The server's half of a Work stream, as tonic sends it.
pub struct ResponseStream {
    outbox: Arc<Outbox>,
}

/// A new stream: the session's outbox and the transport's half.
pub fn channel() -> (Arc<Outbox>, ResponseStream) {
    let outbox = Arc::new(Outbox {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            end: End::Open,
            since: Instant::now(),
            waker: None,
        }),
        gone: CancellationToken::new(),
        room: Notify::new(),
        slot: Mutex::new(None),
    });
    let response = ResponseStream {
        outbox: outbox.clone(),
    };
    (outbox, response)
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queued", &self.state().queue.len())
            .finish()
    }
}

impl Outbox {
    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Holds `slot` (the stream's place among its caller's streams) until
    /// both halves of the stream are gone.
    pub fn hold_slot(&self, slot: impl Send + 'static) {
        *crate::sync::lock(&self.slot) = Some(Box::new(slot));
    }

    /// Queues a message (dropped once the stream ends).
    pub fn push(&self, message: pb::WorkResponse) {
        self.enqueue(Queued {
            message,
            lease: None,
        });
    }

    /// Queues the assignment of `job`'s `attempt`.
    pub fn push_assignment(&self, message: pb::WorkResponse, job: Uuid, attempt: i32) {
        self.enqueue(Queued {
            message,
            lease: Some((job, attempt)),
        });
    }

    fn enqueue(&self, queued: Queued) {
        let mut state = self.state();
        if !matches!(state.end, End::Open) {
            return;
        }
        if state.queue.is_empty() {
            state.since = Instant::now();
        }
        state.queue.push_back(queued);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// Whether fewer than [`ROOM`] messages wait.
    pub fn has_room(&self) -> bool {
        self.state().queue.len() < ROOM
    }

    /// Resolves once the transport took the queue below [`ROOM`] (perhaps
    /// spuriously: check [`Outbox::has_room`] again).
    pub async fn room(&self) {
        self.room.notified().await;
    }

    /// Since when the transport has had a message to take and took none;
    /// `None` while nothing waits.
    pub fn waiting_since(&self) -> Option<Instant> {
        let state = self.state();
        (!state.queue.is_empty()).then_some(state.since)
    }

    /// Takes back the assignments the transport has not taken (they never
    /// reached the worker): job → attempt. Other messages stay queued.
    pub fn withdraw_assignments(&self) -> HashMap<Uuid, i32> {
        let mut state = self.state();
        let mut withdrawn = HashMap::new();
        state.queue.retain(|queued| match queued.lease {
            Some((job, attempt)) => {
                withdrawn.insert(job, attempt);
                false
            }
            None => true,
        });
        withdrawn
    }

    /// The assignments the transport has not taken yet: job → attempt.
    pub fn queued_assignments(&self) -> HashMap<Uuid, i32> {
        self.state()
            .queue
            .iter()
            .filter_map(|queued| queued.lease)
            .collect()
    }

    /// Drops everything queued (its worker is not reading it).
    pub fn discard(&self) {
        let mut state = self.state();
        state.queue = VecDeque::new();
    }

    /// Ends the stream once what is queued is sent: with `status`, or
    /// cleanly. Later pushes, and later calls, change nothing.
    pub fn finish(&self, status: Option<Status>) {
        let mut state = self.state();
        if !matches!(state.end, End::Open) {
            return;
        }
        state.end = End::Ending(status);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// Resolves once the transport dropped the stream (the worker left or
    /// its connection died).
    pub async fn gone(&self) {
        self.gone.cancelled().await;
    }
}

impl Stream for ResponseStream {
    type Item = Result<pb::WorkResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.outbox.state();
        if let Some(queued) = state.queue.pop_front() {
            state.since = Instant::now();
            // An emptied queue gives its room back: a message is ~0.7 KiB,
            // and an idle stream would otherwise keep the room its welcome
            // took (2.7 KiB each, the largest share of an idle stream's
            // memory after its task; BENCHMARKS.md, "Idle workers with job
            // names of their own").
            if state.queue.is_empty() {
                state.queue = VecDeque::new();
            }
            if state.queue.len() == ROOM - 1 {
                self.outbox.room.notify_one();
            }
            return Poll::Ready(Some(Ok(queued.message)));
        }
        match std::mem::replace(&mut state.end, End::Ended) {
            End::Ending(status) => Poll::Ready(status.map(Err)),
            End::Ended => Poll::Ready(None),
            End::Open => {
                state.end = End::Open;
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        self.outbox.gone.cancel();
        // Nothing will take what is queued.
        self.outbox.discard();
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;

    fn message() -> pb::WorkResponse {
        pb::WorkResponse { kind: None }
    }

    #[tokio::test]
    async fn what_was_not_taken_can_be_withdrawn_and_the_end_comes_last() {
        let (outbox, mut response) = channel();
        assert_eq!(outbox.waiting_since(), None);
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        outbox.push_assignment(message(), first, 1);
        outbox.push(message());
        outbox.push_assignment(message(), second, 2);
        assert!(outbox.waiting_since().is_some());
        assert!(response.next().await.unwrap().is_ok());
        let withdrawn = outbox.withdraw_assignments();
        assert_eq!(withdrawn, HashMap::from([(second, 2)]));
        assert_eq!(outbox.state().queue.len(), 1);
        outbox.finish(Some(Status::cancelled("done")));
        outbox.push(message());
        assert!(response.next().await.unwrap().is_ok());
        assert_eq!(
            response.next().await.unwrap().unwrap_err().code(),
            tonic::Code::Cancelled
        );
        assert!(response.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_the_transport_half_is_seen() {
        let (outbox, response) = channel();
        outbox.push(message());
        drop(response);
        outbox.gone().await;
        assert_eq!(outbox.state().queue.len(), 0);
    }

    #[tokio::test]
    async fn taking_below_the_room_wakes_the_session() {
        let (outbox, mut response) = channel();
        for _ in 0..ROOM + 1 {
            outbox.push(message());
        }
        assert!(!outbox.has_room());
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.room().await }
        });
        response.next().await.unwrap().unwrap();
        assert!(!outbox.has_room());
        response.next().await.unwrap().unwrap();
        assert!(outbox.has_room());
        waiting.await.unwrap();
    }
}
