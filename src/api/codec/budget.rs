//! The request budget: how much memory the messages that carry JSON
//! documents (CreateJob, BatchCreateJobs, RegisterModule, UpdateModule and
//! large Work reports) may hold at once on one replica,
//! `REQUEST_MEMORY_BUDGET_BYTES`.
//!
//! A decoded document costs far more than its bytes (1 MiB of one-key
//! objects took ~370 MB to handle as one CreateJob, 24 at once 4.6 GB), so
//! the budget is spent in estimated memory, not in message bytes: each
//! message's cost is estimated from its bytes before it is decoded
//! ([`super::inspect`]), and it is decoded only once that much of the budget
//! is its own. Two pools, so that a message never waits for one while holding
//! the other's share in a way that could stall everyone:
//! - *receiving* (an eighth of the budget): the bytes of a request being read,
//!   reserved from its length prefix, before it is read (so a flood of large
//!   requests is held back by HTTP/2 flow control, not buffered);
//! - *handling* (the rest): the estimated cost of a request from when it is
//!   decoded until its response is sent (a Work report: until the stream
//!   reads its next message). Taking it gives the receiving share back.
//!
//! A share that is not free waits at most [`BudgetSettings::wait`], then the
//! call is refused RESOURCE_EXHAUSTED (LIMIT_EXCEEDED, `limit` =
//! `REQUEST_MEMORY_BUDGET_BYTES`). A request that could never fit (its cost
//! alone is more than the handling pool) is refused INVALID_ARGUMENT at once.
//! A share is a guard ([`Lease`]): dropped on every path, it is given back.
//!
//! Not `tokio::sync::Semaphore`: it is first-come-first-served and a waiter
//! takes permits as they come free, so one request waiting for 400 MB would
//! hold up every small one behind it. Here a request takes its share only
//! when all of it is free, and small ones go ahead of a large one that
//! waits (which, under a steady load of small ones, may wait its bound out).

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::{sync::Notify, time::Instant};
use tonic::{Status, body::Body};

use crate::error::AppError;

/// The setting, named in refusals.
pub const LIMIT: &str = "REQUEST_MEMORY_BUDGET_BYTES";

/// How the budget is set.
#[derive(Debug, Clone, Copy)]
pub struct BudgetSettings {
    /// `REQUEST_MEMORY_BUDGET_BYTES`: both pools together.
    pub total_bytes: usize,
    /// Longest a request waits for its share before it is refused.
    pub wait: Duration,
    /// Longest a request may take to arrive once its bytes are reserved (so
    /// that a client that sends a length prefix and stalls cannot keep the
    /// reservation).
    pub receive_timeout: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            total_bytes: 512 * 1024 * 1024,
            wait: Duration::from_secs(5),
            receive_timeout: Duration::from_secs(30),
        }
    }
}

/// One pool of bytes.
#[derive(Debug)]
struct Pool {
    total: usize,
    free: Mutex<usize>,
    released: Notify,
}

impl Pool {
    fn new(total: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            free: Mutex::new(total),
            released: Notify::new(),
        })
    }

    fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Lease> {
        let mut free = crate::sync::lock(&self.free);
        (*free >= bytes).then(|| {
            *free -= bytes;
            Lease {
                pool: self.clone(),
                bytes,
            }
        })
    }

    /// `bytes` of this pool (all of it at most), once they are free, or
    /// `None` after `deadline`.
    async fn take(self: Arc<Self>, bytes: usize, deadline: Instant) -> Option<Lease> {
        let bytes = bytes.min(self.total);
        loop {
            // Registered before looking, so that a release in between is
            // not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(lease) = self.try_take(bytes) {
                return Some(lease);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return None;
            }
        }
    }

    fn free(&self) -> usize {
        *crate::sync::lock(&self.free)
    }
}

/// A share of a pool, given back when dropped.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    bytes: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        *crate::sync::lock(&self.pool.free) += self.bytes;
        self.pool.released.notify_waiters();
    }
}

/// A boxed wait for a share.
pub type Waiting = Pin<Box<dyn Future<Output = Result<Lease, AppError>> + Send>>;

/// This replica's budget.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    receiving: Arc<Pool>,
    handling: Arc<Pool>,
    settings: BudgetSettings,
}

impl RequestBudget {
    /// A budget of `settings.total_bytes`.
    pub fn new(settings: BudgetSettings) -> Self {
        let receiving = settings.total_bytes / 8;
        Self {
            receiving: Pool::new(receiving),
            handling: Pool::new(settings.total_bytes - receiving),
            settings,
        }
    }

    /// The settings.
    pub fn settings(&self) -> BudgetSettings {
        self.settings
    }

    /// The most a single request may cost.
    pub fn max_cost(&self) -> usize {
        self.handling.total
    }

    /// Bytes of both pools free now (for tests and logs).
    pub fn free(&self) -> usize {
        self.receiving.free() + self.handling.free()
    }

    /// Room to receive a message of `bytes` (the whole receiving pool at
    /// most, so that any message under its cap can be received).
    pub fn receive(&self, bytes: usize) -> Waiting {
        let deadline = Instant::now() + self.settings.wait;
        let (pool, total) = (self.receiving.clone(), self.settings.total_bytes);
        Box::pin(async move {
            pool.take(bytes, deadline)
                .await
                .ok_or_else(|| busy("a message of", bytes, total))
        })
    }

    /// Room to decode and handle a message whose cost is `bytes`; refused at
    /// once (naming `field`) when it could never fit.
    pub fn handle(&self, bytes: usize, field: &str) -> Result<Waiting, AppError> {
        if bytes > self.handling.total {
            return Err(AppError::invalid(
                field,
                format!(
                    "would take about {} MiB of memory to decode and handle; this server \
                     handles at most {} MiB at once ({LIMIT})",
                    bytes.div_ceil(1 << 20),
                    self.handling.total >> 20,
                ),
            ));
        }
        let deadline = Instant::now() + self.settings.wait;
        let (pool, total) = (self.handling.clone(), self.settings.total_bytes);
        Ok(Box::pin(async move {
            pool.take(bytes, deadline)
                .await
                .ok_or_else(|| busy("a request estimated at", bytes, total))
        }))
    }
}

/// The refusal of a request that found no room in time.
fn busy(what: &str, bytes: usize, total: usize) -> AppError {
    AppError::LimitExceeded {
        limit: LIMIT,
        message: format!(
            "the server is busy with other large requests: {what} {} KiB found no room in \
             {LIMIT} ({} MiB) in time; retry later",
            bytes.div_ceil(1024),
            total >> 20,
        ),
        retry_after: Duration::from_secs(1),
    }
}

/// The shares one unary call holds: taken while its request is read, given
/// back when its response has been sent (or the call is dropped).
#[derive(Debug, Clone, Default)]
pub struct Hold(Arc<Mutex<Vec<Lease>>>);

impl Hold {
    /// Keeps `lease` until the call ends.
    pub fn keep(&self, lease: Lease) {
        crate::sync::lock(&self.0).push(lease);
    }
}

/// A response body that keeps its call's [`Hold`] until it is sent.
pub struct HoldingBody {
    inner: Body,
    _hold: Hold,
}

impl HoldingBody {
    /// `inner`, keeping `hold`.
    pub fn new(inner: Body, hold: Hold) -> Self {
        Self { inner, _hold: hold }
    }
}

impl http_body::Body for HoldingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total_bytes: usize) -> RequestBudget {
        RequestBudget::new(BudgetSettings {
            total_bytes,
            wait: Duration::from_millis(50),
            receive_timeout: Duration::from_secs(1),
        })
    }

    #[tokio::test]
    async fn a_share_is_given_back_when_dropped_and_waiters_get_it() {
        let budget = budget(800);
        let first = budget.handle(700, "payload").unwrap().await.unwrap();
        // No room: refused after the wait, naming the setting.
        let refused = budget.handle(100, "payload").unwrap().await.unwrap_err();
        assert_eq!(refused.reason(), "LIMIT_EXCEEDED");
        assert!(refused.to_string().contains(LIMIT), "{refused}");
        // A waiter gets in when the holder lets go.
        let waiting = tokio::spawn(budget.handle(100, "payload").unwrap());
        tokio::task::yield_now().await;
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(budget.free(), 800);
    }

    #[tokio::test]
    async fn small_requests_pass_a_large_one_that_waits() {
        let budget = budget(800);
        let held = budget.handle(400, "payload").unwrap().await.unwrap();
        let large = tokio::spawn(budget.handle(700, "payload").unwrap());
        tokio::task::yield_now().await;
        budget.handle(100, "payload").unwrap().await.unwrap();
        drop(held);
        large.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn what_could_never_fit_is_refused_at_once_and_receiving_is_clamped() {
        let budget = budget(800);
        let error = budget.handle(701, "payload").err().expect("refused");
        assert_eq!(error.reason(), "INVALID_FIELD");
        assert!(error.to_string().starts_with("payload: "), "{error}");
        // Any message can be received: one larger than the pool takes it all.
        let all = budget.receive(10_000).await.unwrap();
        assert_eq!(budget.free(), 700);
        drop(all);
    }
}
