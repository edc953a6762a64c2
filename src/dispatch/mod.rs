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

use diesel_async::AsyncPgConnection;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use self::registry::stats::RegistryStats;
pub use self::{
    outbox::ResponseStream as WorkStream, watch_stream::WatchStream, watchers::Watchers,
};
use self::{
    progress::ProgressBuffer,
    registry::{CLAIM_BATCH, Registry, StreamCommand},
    reports::PendingReport,
};

/// The server's half of a WatchJob stream.
pub type WatchJobStream = WatchStream<crate::proto::automation_v1::WatchJobResponse>;
/// The server's half of a WatchModule stream.
pub type WatchModuleStream = WatchStream<crate::proto::automation_v1::WatchModuleResponse>;
use crate::{
    db,
    domain::{
        audit::AuditTrail,
        events::{QueueEvent, Revocation},
        jobs::{
            JobSettings, Jobs,
            leases::{Leases, LimitsPhase},
        },
        modules::Modules,
        sessions::Sessions,
    },
    error::AppError,
    store::jobs::{CLAIM_SESSION_SETTINGS, ClaimFilter, ClaimPlan, JobRow, LeaseRef},
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
            tokio::spawn(claim_loop(shared.clone(), parts.database_url.clone())),
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

/// Leases jobs to free slots whenever something may have changed: a
/// notification, a freed slot, a new stream, the next scheduled job falling
/// due, or the poll interval passing.
async fn claim_loop(shared: Arc<Shared>, database_url: String) {
    let mut claimer = Claimer {
        url: database_url,
        conn: None,
        lost: Vec::new(),
        limits: LimitsWatch::new(),
    };
    let mut next_due: Option<Instant> = None;
    let mut failures = 0u32;
    // Waiting jobs may have fallen due: promote them before claiming.
    let mut promote = true;
    // Set when a claim failed: it may have committed all the same.
    let mut unsure = false;
    loop {
        let poll = shared.settings.poll_interval;
        let wait = next_due
            .map(|due| due.saturating_duration_since(Instant::now()))
            .map_or(poll, |until_due| until_due.min(poll));
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(wait) => {
                shared.schedule_changed.store(true, std::sync::atomic::Ordering::Release);
                promote = true;
            }
        }
        if next_due.is_some_and(|due| due <= Instant::now()) {
            promote = true;
        }
        if promote {
            match shared.leases.promote_due().await {
                Ok(_) => promote = false,
                Err(error) => shared.note_db_failure(&error),
            }
        }
        // A claim failed (its answer lost, its commit maybe made), or the
        // database was away (idle streams may have made no claim to notice
        // it): hand back what it leased before claiming again.
        unsure |= shared.registry().take_reconnected();
        if unsure || !claimer.lost.is_empty() {
            match keepalive::give_back_unknown_leases(&shared, &claimer.lost).await {
                Ok(_) => {
                    claimer.lost.clear();
                    unsure = false;
                }
                Err(error) => shared.note_db_failure(&error),
            }
        }
        match claim_rounds(&shared, &mut claimer).await {
            Ok(()) => failures = 0,
            Err(error) => {
                unsure = true;
                shared.note_db_failure(&error);
                failures += 1;
                let pause = Duration::from_millis(50 * 2u64.pow(failures.min(6)));
                tokio::time::sleep(pause).await;
                shared.wake.notify_one();
                continue;
            }
        }
        if shared
            .schedule_changed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            match shared.leases.time_to_next_scheduled().await {
                Ok(due) => next_due = due.map(|d| Instant::now() + d),
                Err(error) => {
                    shared.note_db_failure(&error);
                    shared
                        .schedule_changed
                        .store(true, std::sync::atomic::Ordering::Release);
                }
            }
        }
        if next_due.is_some_and(|due| due <= Instant::now()) {
            next_due = None;
            promote = true;
            shared
                .schedule_changed
                .store(true, std::sync::atomic::Ordering::Release);
            shared.wake.notify_one();
        }
    }
}

/// The claim loop's own connection, outside the pool: claims are the
/// dispatcher's hot path, and on a dedicated connection each is a single
/// round trip under session settings that pin its plan
/// ([`CLAIM_SESSION_SETTINGS`]). Reconnected on the next claim after a
/// failure.
struct Claimer {
    url: String,
    conn: Option<AsyncPgConnection>,
    /// The tags of claims that failed without an answer: each may have
    /// committed, leasing jobs no stream was told of. Kept until
    /// [`keepalive::give_back_unknown_leases`] handed those back.
    lost: Vec<Uuid>,
    /// Whether the next claim examines keys and buckets (see
    /// [`LimitsPhase`]): it does while the last look found some with room,
    /// right after a claim of plain jobs came back short (a key or bucket
    /// may hold what it did not find), and when plain claims came back full
    /// for [`LIMITS_RECHECK`] since the last look (so a busy drain of plain
    /// jobs holds up a keyed job at most that long). Otherwise a claim takes
    /// plain jobs in one short statement and one round trip.
    limits: LimitsWatch,
}

/// What [`Claimer`] remembers of keys and buckets.
#[derive(Debug, Clone, Copy)]
struct LimitsWatch {
    /// When keys and buckets were last examined.
    looked: Instant,
    /// Whether that look found any with room.
    found: bool,
    /// Whether a plain claim came back short since.
    short: bool,
    /// Whether a plain claim came back full since.
    full: bool,
}

impl LimitsWatch {
    fn new() -> Self {
        Self {
            looked: Instant::now(),
            found: false,
            short: false,
            full: false,
        }
    }

    fn phase(&self) -> LimitsPhase {
        if self.found || self.short || (self.full && self.looked.elapsed() >= LIMITS_RECHECK) {
            LimitsPhase::Run
        } else {
            LimitsPhase::Skip
        }
    }

    fn note(&mut self, phase: LimitsPhase, found: bool, short: bool) {
        match phase {
            LimitsPhase::Run => {
                *self = Self {
                    looked: Instant::now(),
                    found,
                    short: false,
                    full: false,
                }
            }
            LimitsPhase::Skip if short => self.short = true,
            LimitsPhase::Skip => self.full = true,
        }
    }
}

/// How long claims of plain jobs that come back full may go without
/// examining concurrency keys and buckets.
const LIMITS_RECHECK: Duration = Duration::from_millis(20);

impl Claimer {
    /// Claims for one group of streams; also answers whether every lane
    /// (keys and buckets too) was looked at.
    async fn claim(
        &mut self,
        leases: &Leases,
        filter: &ClaimFilter,
        plan: &ClaimPlan,
    ) -> Result<(Vec<JobRow>, bool), AppError> {
        if self.conn.is_none() {
            self.conn = Some(
                db::dedicated_connection(
                    &self.url,
                    "automation-control-plane-claimer",
                    CLAIM_SESSION_SETTINGS,
                    Duration::from_secs(5),
                )
                .await?,
            );
        }
        let conn = self.conn.as_mut().expect("connected above");
        let tag = Uuid::now_v7();
        let phase = self.limits.phase();
        let claimed =
            tokio::time::timeout(CLAIM_TIMEOUT, leases.claim(conn, filter, plan, tag, phase)).await;
        match claimed {
            Ok(Ok(claimed)) => {
                let short = claimed.jobs.len() < plan.owners.len();
                self.limits.note(phase, claimed.limits_found, short);
                Ok((claimed.jobs, phase == LimitsPhase::Run))
            }
            Ok(Err(error)) => {
                self.conn = None;
                self.lost.push(tag);
                Err(error)
            }
            Err(_) => {
                // A claim that does not answer: the connection is gone
                // (the transaction, if it ran, committed or not as a whole).
                self.conn = None;
                self.lost.push(tag);
                Err(AppError::Unavailable("a claim timed out".into()))
            }
        }
    }
}

/// Longest a claim may take before its connection is given up.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

/// Claims until every stream with room is filled or nothing runnable is
/// left for it. Each claim leases at most [`CLAIM_BATCH`] jobs for one group
/// of streams, so a round costs what it leases, not what streams advertise;
/// a group that came back short is not asked again in this call.
async fn claim_rounds(shared: &Arc<Shared>, claimer: &mut Claimer) -> Result<(), AppError> {
    let mut dry: std::collections::HashSet<ClaimFilter> = std::collections::HashSet::new();
    loop {
        let demand = shared.registry().demand(CLAIM_BATCH);
        let mut claimed_any = false;
        for (filter, plan) in demand {
            if dry.contains(&filter) {
                continue;
            }
            claimed_any = true;
            let since = shared.registry().claiming();
            let (jobs, every_lane) = claimer.claim(&shared.leases, &filter, &plan).await?;
            // Dry only once every lane was looked at: a claim of the plain
            // lane alone that came back short is followed by a full one.
            let is_dry = jobs.len() < plan.owners.len() && every_lane;
            shared
                .registry()
                .claimed(&filter, jobs.len(), is_dry, since);
            if is_dry {
                dry.insert(filter);
            }
            // Leased to a stream that left meanwhile: never sent.
            let orphans = shared.deliver(jobs);
            keepalive::hand_back_in_background(shared, orphans, true);
        }
        if !claimed_any {
            return Ok(());
        }
    }
}

/// Takes expired leases, on any replica's streams, while the database is
/// steady (after an outage, streams get a heartbeat interval to renew their
/// leases before any is taken).
async fn reaper(shared: Arc<Shared>) {
    let interval =
        (shared.settings.lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if !shared.db_steady() {
            continue;
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

/// Sends a command to a stream, ignoring a stream that is gone.
fn tell(commands: &mpsc::UnboundedSender<StreamCommand>, command: StreamCommand) {
    let _ = commands.send(command);
}
