//! The job dispatcher of one replica: the Work streams connected to it, the
//! claim loop that leases jobs to their free slots, the writers that settle
//! their reports in batches (and store their progress, coalesced), the
//! LISTEN connection that hears every replica's changes, and the reaper of
//! expired leases.
//!
//! Wake-ups come from NOTIFY (and from this replica's own enqueues, at
//! once), with a slow poll as a safety net; streams never pin a pooled
//! connection (each operation checks one out); every lease a stream holds is
//! given back by a guard, whatever ends it.

mod claimer;
mod handshake;
mod idle;
mod keepalive;
mod listener;
mod outbox;
mod progress;
mod rechecks;
mod registry;
mod reports;
mod stream;
mod watch_stream;
mod watchers;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use self::registry::stats::RegistryStats;
pub use self::{
    outbox::ResponseStream as WorkStream, watch_stream::WatchStream, watchers::Watchers,
};
use self::{
    progress::ProgressBuffer,
    registry::{Registry, StreamCommand},
    reports::PendingReport,
};

/// The server's half of a WatchJob stream.
pub type WatchJobStream = WatchStream<crate::proto::automation_v1::WatchJobResponse>;
/// The server's half of a WatchModule stream.
pub type WatchModuleStream = WatchStream<crate::proto::automation_v1::WatchModuleResponse>;
use crate::{
    domain::{
        audit::AuditTrail,
        events::{QueueEvent, Revocation},
        jobs::{JobSettings, Jobs, leases::Leases},
        modules::Modules,
        sessions::Sessions,
    },
    error::AppError,
    store::jobs::{JobRow, LeaseRef},
};

/// Report writers settling batches at the same time.
const REPORT_WRITERS: usize = 2;

/// Everything the dispatcher's tasks and streams share.
pub(crate) struct Shared {
    pub leases: Leases,
    pub jobs: Jobs,
    pub modules: Modules,
    pub sessions: Sessions,
    pub audit: AuditTrail,
    pub settings: JobSettings,
    pub registry: Mutex<Registry>,
    /// Wakes the claim loop.
    pub wake: Arc<Notify>,
    /// Wakes this replica's schedule firing loop.
    pub schedules_wake: Arc<Notify>,
    /// Set when the schedule may have changed (a job due later).
    pub schedule_changed: std::sync::atomic::AtomicBool,
    pub watchers: Watchers,
    pub reports: mpsc::UnboundedSender<PendingReport>,
    /// Progress reports waiting to be written.
    pub progress: ProgressBuffer,
    /// Ends the background tasks.
    pub shutdown: CancellationToken,
    /// Ends WatchJob streams and tells Work streams to drain.
    pub draining: CancellationToken,
    /// When a dispatcher operation last failed on the database.
    last_db_failure: Mutex<Option<Instant>>,
}

impl Shared {
    /// Notes that the database failed an operation (the reaper waits for it
    /// to be steady again before taking anyone's leases).
    pub fn note_db_failure(&self, error: &AppError) {
        tracing::warn!(%error, "a job dispatch operation failed on the database");
        *crate::sync::lock(&self.last_db_failure) = Some(Instant::now());
    }

    /// Whether the database has answered for long enough that every live
    /// stream has had a chance to heartbeat since it last failed.
    fn db_steady(&self) -> bool {
        let steady_after = self.settings.heartbeat_interval().mul_f32(1.5);
        crate::sync::lock(&self.last_db_failure).is_none_or(|at| at.elapsed() >= steady_after)
    }

    /// Re-checks the caller of an open stream: `Ok` while it may go on,
    /// the refusal once its session or key ended or it lost `permission`.
    /// A database failure is no verdict on the caller: it is noted and the
    /// stream goes on until the next check. All streams of one session (or
    /// API key) share the checks: the verdict is at most half a heartbeat
    /// interval old (see [`rechecks`]).
    pub async fn recheck(
        &self,
        caller: &crate::auth::caller::Caller,
        permission: &str,
    ) -> Result<(), AppError> {
        match self.watchers.rechecks.check(caller, &self.sessions).await {
            rechecks::Outcome::Verdict(verdict) => verdict.allows(permission),
            rechecks::Outcome::Failed(Some(error)) => {
                self.note_db_failure(&error);
                Ok(())
            }
            rechecks::Outcome::Failed(None) => Ok(()),
        }
    }

    /// Acts on one notification from any replica.
    pub fn on_event(&self, event: QueueEvent) {
        match event {
            QueueEvent::Runnable => {
                self.registry().want_probe();
                self.wake.notify_one();
            }
            QueueEvent::Scheduled => {
                self.registry().want_probe();
                self.schedule_changed
                    .store(true, std::sync::atomic::Ordering::Release);
                self.wake.notify_one();
            }
            QueueEvent::Changed(ids) => self.watchers.bump(&ids),
            QueueEvent::Revoked(revocation) => self.revoke(revocation),
            QueueEvent::Schedules => self.schedules_wake.notify_one(),
        }
    }

    /// Tells the stream holding a lease that it is gone, if that stream is
    /// connected here.
    pub fn revoke(&self, revocation: Revocation) {
        let mut registry = self.registry();
        if registry.revoke(&revocation) {
            self.wake.notify_one();
        }
    }

    /// Registers freshly leased jobs with their streams and pushes them;
    /// returns the leases whose stream went away meanwhile.
    fn deliver(&self, jobs: Vec<JobRow>) -> Vec<LeaseRef> {
        let mut registry = self.registry();
        let mut orphans = Vec::new();
        for job in jobs {
            let lease = LeaseRef {
                job: job.id,
                attempt: job.attempts,
                stream: job.leased_by.unwrap_or_default(),
            };
            crate::telemetry::names::job_leased(job.scheduled_at);
            if !registry.assign(job) {
                orphans.push(lease);
            }
        }
        orphans
    }
}

/// The dispatcher of this replica; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

/// The dispatcher's background tasks, ended by [`Dispatcher::stop`].
pub struct DispatchTasks {
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for DispatchTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatchTasks")
            .field("tasks", &self.handles.len())
            .finish()
    }
}

/// What the dispatcher is built from.
pub struct DispatchParts {
    pub leases: Leases,
    pub jobs: Jobs,
    pub modules: Modules,
    pub sessions: Sessions,
    pub audit: AuditTrail,
    /// The wake-up `jobs` rings after an enqueue.
    pub wake: Arc<Notify>,
    /// The wake-up of the schedule firing loop, rung when any replica
    /// changes a schedule.
    pub schedules_wake: Arc<Notify>,
    /// URL for the dedicated LISTEN connection.
    pub database_url: String,
}

impl Dispatcher {
    /// Starts the claim loop, the report writers, the listener and the
    /// reaper.
    pub fn start(parts: DispatchParts) -> (Self, DispatchTasks) {
        let settings = *parts.leases.settings();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            leases: parts.leases,
            jobs: parts.jobs,
            modules: parts.modules,
            sessions: parts.sessions,
            audit: parts.audit,
            settings,
            registry: Mutex::new(Registry::new(settings.streams)),
            wake: parts.wake,
            schedules_wake: parts.schedules_wake,
            schedule_changed: std::sync::atomic::AtomicBool::new(true),
            watchers: Watchers::new(&settings),
            reports: reports_tx,
            progress: ProgressBuffer::default(),
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            last_db_failure: Mutex::new(None),
        });
        let reports_rx = Arc::new(tokio::sync::Mutex::new(reports_rx));
        let mut handles = vec![
            tokio::spawn(claimer::claim_loop(
                shared.clone(),
                parts.database_url.clone(),
            )),
            tokio::spawn(reaper(shared.clone())),
            tokio::spawn(keepalive::run(shared.clone())),
            tokio::spawn(listener::run(shared.clone(), parts.database_url)),
            tokio::spawn(progress::run_writer(shared.clone())),
            tokio::spawn(idle::run(shared.clone())),
        ];
        for _ in 0..REPORT_WRITERS {
            handles.push(tokio::spawn(reports::run_writer(
                shared.clone(),
                reports_rx.clone(),
            )));
        }
        (Self { shared }, DispatchTasks { handles })
    }

    /// What the Work streams of this replica hold now (for the metrics).
    pub fn stats(&self) -> RegistryStats {
        self.shared.registry().stats()
    }

    /// The Work streams of this replica, read-only (the console's Workers
    /// page).
    pub fn workers(&self) -> Vec<crate::domain::fleet::WorkerStream> {
        self.shared.registry().snapshot()
    }

    /// Serves one Work stream: returns the server's half; the session runs
    /// until the worker leaves, the caller loses access or the server drains.
    pub fn work(
        &self,
        actor: crate::domain::Actor,
        inbound: impl futures_util::Stream<
            Item = Result<crate::proto::automation_v1::WorkRequest, tonic::Status>,
        > + Send
        + Unpin
        + 'static,
    ) -> stream::ResponseStream {
        stream::open(self.shared.clone(), actor, inbound)
    }

    /// Serves one WatchJob stream (NOT_FOUND before it starts when the job
    /// does not exist; LIMIT_EXCEEDED past the caller's or the replica's
    /// watches).
    pub async fn watch_job(
        &self,
        actor: crate::domain::Actor,
        id: Uuid,
    ) -> Result<WatchJobStream, AppError> {
        let slot = self.shared.watchers.admit(&actor.caller)?;
        watch_stream::open::<JobRow>(&self.shared, actor, slot, id).await
    }

    /// Serves one WatchModule stream; `key` is an id or a name (a name is
    /// resolved first: the module's follower reads it by id).
    pub async fn watch_module(
        &self,
        actor: crate::domain::Actor,
        key: &str,
    ) -> Result<WatchModuleStream, AppError> {
        let slot = self.shared.watchers.admit(&actor.caller)?;
        let id = match key.parse::<Uuid>() {
            Ok(id) => id,
            Err(_) => self.shared.modules.get(key).await?.id,
        };
        watch_stream::open::<crate::store::modules::ModuleRow>(&self.shared, actor, slot, id).await
    }

    /// Starts draining (the server is shutting down): nothing new is
    /// leased, workers are told to finish or release what they hold before
    /// `grace` ends, after which their leases are handed back; watch streams
    /// end. Returns once no Work stream holds a lease or the grace is over.
    pub async fn drain(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let wall_deadline = std::time::SystemTime::now() + grace;
        self.shared.draining.cancel();
        {
            let mut registry = self.shared.registry();
            registry.begin_drain(deadline, wall_deadline);
        }
        while Instant::now() < deadline {
            let streams = self.shared.registry().stream_count();
            if streams == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends the background tasks, after the report writers settled what was
    /// reported.
    pub async fn stop(self, tasks: DispatchTasks) {
        self.shared.draining.cancel();
        self.shared.shutdown.cancel();
        for handle in tasks.handles {
            let _ = handle.await;
        }
    }
}

/// Takes expired leases, on any replica's streams, while the database is
/// steady (after an outage, streams get a heartbeat interval to renew their
/// leases before any is taken).
async fn reaper(shared: Arc<Shared>) {
    let interval =
        (shared.settings.lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tended = Instant::now();
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if !shared.db_steady() {
            continue;
        }
        if tended.elapsed() >= KEY_TENDING_INTERVAL {
            tended = Instant::now();
            tend_keys(&shared).await;
        }
        match shared.leases.reap().await {
            Ok(0) => {}
            Ok(reaped) => {
                crate::telemetry::names::leases_expired(reaped as u64);
                tracing::info!(reaped, "took expired leases back");
                shared.wake.notify_one();
            }
            Err(error) => shared.note_db_failure(&error),
        }
    }
}

/// How often the reaper tends the concurrency keys' rows.
const KEY_TENDING_INTERVAL: Duration = Duration::from_secs(2);

/// Walks every concurrency key's row once (see `Leases::tend_keys`):
/// emptied keys are deleted, so that claims do not walk past them, and a
/// count made wrong by a writer that bypassed the triggers heals. Freed
/// room wakes the claim loop.
async fn tend_keys(shared: &Arc<Shared>) {
    let mut after = String::new();
    loop {
        match shared.leases.tend_keys(&after).await {
            Ok((next, wrong)) => {
                if wrong > 0 {
                    tracing::warn!(wrong, "concurrency key counts were wrong; recounted");
                    shared.wake.notify_one();
                }
                match next {
                    Some(next) => after = next,
                    None => return,
                }
            }
            Err(error) => {
                shared.note_db_failure(&error);
                return;
            }
        }
    }
}

/// Sends a command to a stream, ignoring a stream that is gone.
fn tell(commands: &mpsc::UnboundedSender<StreamCommand>, command: StreamCommand) {
    let _ = commands.send(command);
}
