//! One Work stream: credits, heartbeats, reports, progress (in
//! [`progress`]), the periodic re-check of the caller, and the end,
//! whichever way it comes (the hello and the registration are in
//! [`super::handshake`]).
//!
//! The session is one task; everything else reaches it through its command
//! channel. It never waits on its worker: what it sends is queued in its
//! [`Outbox`], so it keeps re-checking its caller while the worker does not
//! read, and a worker that leaves a message untaken longer than the send
//! timeout is cut off, its leases handed back at once. Its registration is a
//! guard: when the task ends for any reason (the worker left, its
//! connection died, the task panicked), the guard takes back the leases the
//! stream held.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{Stream, StreamExt as _};
use tonic::Status;
use uuid::Uuid;

use super::{
    Shared,
    handshake::{self, HELLO_TIMEOUT, RegisteredStream, Withdrawn},
    keepalive,
    outbox::{self, Outbox},
    registry::StreamCommand,
    reports::PendingReport,
};
use crate::{
    domain::{
        Actor,
        jobs::leases::{Report, ReportKind},
        modules,
    },
    error::AppError,
    proto::automation_v1::{
        self as pb, work_request::Kind as Inbound, work_response::Kind as Outbound,
    },
    store::jobs::LeaseRef,
    wire::work::{self, cancellation, completion_report, failure_report, message, parse_lease},
};

pub use outbox::ResponseStream;

mod budget;
mod progress;

use budget::InboundBudget;

/// Opens a session; its task runs until the stream ends.
pub fn open(
    shared: Arc<Shared>,
    actor: Actor,
    inbound: impl Stream<Item = Result<pb::WorkRequest, Status>> + Send + Unpin + 'static,
) -> ResponseStream {
    let (outbox, response) = outbox::channel();
    tokio::spawn(async move {
        let _ends = EndsStream(outbox.clone());
        let mut inbound = inbound;
        let ended = serve(shared, actor, &mut inbound, &outbox).await;
        outbox.finish(ended.err());
    });
    response
}

/// Ends the stream if the session's task ends without saying how (a
/// panic), so that the worker is not left waiting.
struct EndsStream(Arc<Outbox>);

impl Drop for EndsStream {
    fn drop(&mut self) {
        self.0
            .finish(Some(Status::internal("the session ended unexpectedly")));
    }
}

/// The running session of one stream.
struct WorkLoop<'a> {
    shared: &'a Arc<Shared>,
    registration: RegisteredStream,
    last_heartbeat: Option<Instant>,
    /// Leases named by heartbeats that came within the minimum gap of the
    /// last one written (an SDK may heartbeat each job on its own): written
    /// with the next one, or once the gap has passed. Only leases the
    /// stream holds, so never more than its capacity.
    pending_beat: HashSet<(Uuid, i32)>,
    inbound_budget: InboundBudget,
    /// Set once the server drains.
    drain_deadline: Option<Instant>,
    /// Whether the stream is given modules' jobs (its caller held
    /// `modules:execute` at hello): it must keep holding it.
    module_jobs: bool,
}

async fn serve(
    shared: Arc<Shared>,
    actor: Actor,
    inbound: &mut (impl Stream<Item = Result<pb::WorkRequest, Status>> + Unpin),
    outbox: &Arc<Outbox>,
) -> Result<(), Status> {
    // Boxed: its state (the hello, the audit write) would otherwise stay in
    // the size of every idle stream's task.
    match Box::pin(open_session(&shared, actor, inbound, outbox)).await? {
        Some(mut session) => session.run(inbound, outbox).await,
        None => Ok(()),
    }
}

/// The handshake: the hello (within [`HELLO_TIMEOUT`]), checked and
/// admitted, the welcome queued, and a drain already under way passed on.
/// `None`: the worker left before saying hello.
async fn open_session<'a>(
    shared: &'a Arc<Shared>,
    actor: Actor,
    inbound: &mut (impl Stream<Item = Result<pb::WorkRequest, Status>> + Unpin),
    outbox: &Arc<Outbox>,
) -> Result<Option<WorkLoop<'a>>, Status> {
    let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.next()).await {
        Err(_) => {
            return Err(AppError::invalid(
                "hello",
                "the first message must be hello, sent within 10 s",
            )
            .into());
        }
        Ok(Some(Err(status))) if status.code() == tonic::Code::InvalidArgument => {
            return Err(status);
        }
        Ok(None) | Ok(Some(Err(_))) => return Ok(None),
        Ok(Some(Ok(first))) => first,
    };
    let Some(Inbound::Hello(hello)) = first.kind else {
        return Err(AppError::invalid("hello", "the first message must be hello").into());
    };
    let id = Uuid::now_v7();
    let hello = handshake::decode_hello(hello, id, &actor.caller)?;
    let module_jobs = !hello.filter.plain_only;
    let (registration, granted) = handshake::admit(shared, actor, &hello, id, outbox.clone())?;
    handshake::audit_connected(&registration, &hello, granted).await;
    let settings = shared.settings;
    let mut session = WorkLoop {
        shared,
        registration,
        last_heartbeat: None,
        pending_beat: HashSet::new(),
        inbound_budget: InboundBudget::new(settings.streams.inbound_messages_per_sec),
        drain_deadline: None,
        module_jobs,
    };
    session.push(work::welcome(id, &settings, granted));
    shared.wake.notify_one();
    let draining = shared.registry().drain_deadline();
    if let Some((deadline, wall)) = draining {
        session.on_command(StreamCommand::Drain {
            deadline,
            wall_deadline: wall,
        });
    }
    Ok(Some(session))
}

/// What the loop does after one of the worker's messages.
enum Flow {
    Go,
    End(Result<(), Status>),
}

/// Whether a message reports on a lease (completion, failure, release).
fn is_report(message: &pb::WorkRequest) -> bool {
    matches!(
        message.kind,
        Some(Inbound::Completion(_) | Inbound::Failure(_) | Inbound::Release(_))
    )
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

impl WorkLoop<'_> {
    fn id(&self) -> Uuid {
        self.registration.id
    }

    /// The loop: commands from the dispatcher, the periodic re-check of the
    /// caller, the drain and stall deadlines, merged heartbeats, and the
    /// worker's messages, until one of them ends the stream.
    async fn run(
        &mut self,
        inbound: &mut (impl Stream<Item = Result<pb::WorkRequest, Status>> + Unpin),
        outbox: &Arc<Outbox>,
    ) -> Result<(), Status> {
        let settings = self.shared.settings;
        let stall_timeout = settings.stalled_send_timeout();
        let mut recheck =
            tokio::time::interval(settings.heartbeat_interval().max(Duration::from_millis(50)));
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        loop {
            let drain_wait = self
                .drain_deadline
                .map(|deadline| deadline.saturating_duration_since(Instant::now()));
            let stall_wait = outbox
                .waiting_since()
                .map(|since| (since + stall_timeout).saturating_duration_since(Instant::now()));
            // Past a full buffer, the worker's messages wait: each may call
            // for an answer, and the worker is not taking answers.
            let reading = outbox.has_room();
            let beat_wait = self
                .pending_beat_due()
                .map(|due| due.saturating_duration_since(Instant::now()));
            // What a branch does with the database is boxed: a future is as
            // large as its largest await, and an idle stream's task waits
            // here, so the rare awaits (reports, heartbeats, re-checks, the
            // end) would make every idle stream pay for them (they made its
            // task ~7 KiB; BENCHMARKS.md, "Idle workers with job names of
            // their own").
            // Biased, the worker's messages last: a worker that always has
            // one ready must not starve the rarely ready branches (a
            // re-check that ends a revoked caller, the stall and drain
            // deadlines).
            tokio::select! {
                biased;
                command = self.registration.commands.recv() => {
                    if let Some(command) = command {
                        self.on_command(command);
                    }
                }
                _ = recheck.tick() => Box::pin(self.recheck_caller()).await?,
                () = sleep_or_forever(drain_wait) => return Box::pin(self.end_draining()).await,
                () = sleep_or_forever(stall_wait) => {
                    if outbox
                        .waiting_since()
                        .is_some_and(|since| since.elapsed() >= stall_timeout)
                    {
                        return Box::pin(self.end_stalled(stall_timeout)).await;
                    }
                }
                () = sleep_or_forever(beat_wait) => Box::pin(self.flush_pending_beat()).await?,
                () = outbox.room(), if !reading => {}
                () = outbox.gone() => {
                    self.registration.ending = "the worker's connection went away";
                    return Ok(());
                }
                message = inbound.next(), if reading => {
                    if let Flow::End(result) = Box::pin(self.on_inbound(message)).await {
                        return result;
                    }
                }
            }
            if self.drained() {
                return Box::pin(self.end_draining()).await;
            }
        }
    }

    /// One item of the worker's half of the stream: a message, a message
    /// the codec refused, a failed transport, or its end.
    async fn on_inbound(&mut self, item: Option<Result<pb::WorkRequest, Status>>) -> Flow {
        match item {
            Some(Ok(message)) => {
                // A report of a lease the stream holds is work done, and
                // bounded by the leases it was given: only the rest
                // (heartbeats, credits, refused reports) spends the budget,
                // so a fast honest worker is never cut off.
                if !is_report(&message)
                    && let Err(status) = self.spend_inbound()
                {
                    return Flow::End(Err(status));
                }
                match self.on_message(message).await {
                    Ok(()) => Flow::Go,
                    Err(status) => Flow::End(Err(status)),
                }
            }
            // A message the codec refused (out of bounds, not protobuf).
            Some(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                self.registration.ending = "the worker sent an invalid message";
                Flow::End(Err(status))
            }
            Some(Err(_)) => {
                self.registration.ending = "the stream failed (connection lost or reset)";
                Flow::End(Ok(()))
            }
            None => Flow::End(Ok(())),
        }
    }

    /// Queues a message for the worker (never waits).
    fn push(&self, kind: Outbound) {
        self.registration.outbox.push(message(kind));
    }

    fn on_command(&mut self, command: StreamCommand) {
        match command {
            StreamCommand::Assign(job) => {
                let (id, attempt) = (job.id, job.attempts);
                let assignment = work::assignment(*job);
                self.registration
                    .outbox
                    .push_assignment(assignment, id, attempt);
            }
            StreamCommand::Revoke(revocation) => self.push(cancellation(&revocation)),
            StreamCommand::Settled { lease, outcome } => {
                let held = self.shared.registry().finish_report(&lease);
                if held {
                    self.shared.wake.notify_one();
                }
                self.push(work::ack(&lease, outcome.accepted, outcome.reason));
            }
            StreamCommand::Drain {
                deadline,
                wall_deadline,
            } => {
                self.drain_deadline = Some(deadline);
                self.push(work::drain(wall_deadline));
            }
        }
    }

    async fn on_message(&mut self, message: pb::WorkRequest) -> Result<(), Status> {
        let stream = self.id();
        let max = self.shared.settings.payload_max_bytes;
        match message.kind {
            None => Err(AppError::invalid("kind", "the message carries nothing").into()),
            Some(Inbound::Hello(_)) => Err(AppError::invalid("hello", "was already sent").into()),
            Some(Inbound::Credit(credit)) => self.on_credit(credit),
            Some(Inbound::Heartbeat(heartbeat)) => self.heartbeat(heartbeat).await,
            Some(Inbound::Completion(completion)) => {
                let (lease, kind) = completion_report(completion, stream, max)?;
                self.submit(lease, kind).await
            }
            Some(Inbound::Failure(failure)) => {
                let (lease, kind) = failure_report(failure, stream, max)?;
                self.submit(lease, kind).await
            }
            Some(Inbound::Release(release)) => {
                let lease = parse_lease("release.lease", release.lease, stream)?;
                self.submit(lease, ReportKind::Released).await
            }
            Some(Inbound::Drain(_)) => {
                self.shared.registry().stop_accepting(stream);
                Ok(())
            }
            Some(Inbound::Progress(report)) => self.on_progress(report),
        }
    }

    /// More slots for the worker, within the caps (more than the caps
    /// allow is not an error, just not granted).
    fn on_credit(&mut self, credit: pb::WorkerCredit) -> Result<(), Status> {
        let credits = usize::try_from(credit.credits)
            .ok()
            .filter(|c| *c >= 1)
            .ok_or_else(|| AppError::invalid("credit.credits", "must be at least 1"))?;
        let grew = self.shared.registry().add_credit(self.id(), credits);
        if grew {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Spends one message of the stream's inbound budget; past it the
    /// stream ends.
    fn spend_inbound(&mut self) -> Result<(), Status> {
        if self.inbound_budget.spend() {
            return Ok(());
        }
        self.registration.ending = "the worker sent too many messages";
        let rate = self.shared.settings.streams.inbound_messages_per_sec;
        Err(AppError::LimitExceeded {
            limit: "WORK_INBOUND_MESSAGES_PER_SEC",
            message: format!(
                "the worker sent more than {rate} messages a second on this stream (reports of \
                 held leases aside)"
            ),
            retry_after: Duration::from_secs(1),
        }
        .into())
    }

    /// Hands a report to the writers, or refuses it at once when the stream
    /// does not hold that lease.
    async fn submit(&mut self, lease: LeaseRef, kind: ReportKind) -> Result<(), Status> {
        let started = self.shared.registry().start_report(&lease);
        match started {
            Ok(()) => {
                let pending = PendingReport {
                    progress: self.shared.progress.take(&lease),
                    report: Report { lease, kind },
                    reply: self.registration.reply_to.clone(),
                };
                if self.shared.reports.send(pending).is_err() {
                    return Err(AppError::Draining("the server is shutting down".into()).into());
                }
                Ok(())
            }
            Err(refusal) => {
                self.spend_inbound()?;
                self.push(work::ack(&lease, false, refusal.reason(&lease)));
                Ok(())
            }
        }
    }

    /// Extends the leases the stream holds (those named, or all); leases it
    /// lost meanwhile are answered with a cancellation. Heartbeats closer
    /// together than a quarter of the interval are not written again.
    /// An empty heartbeat (all leases) within the gap is a no-op; leases
    /// named within it are kept for the next one written (see
    /// [`WorkLoop::pending_beat`]), not dropped.
    async fn heartbeat(&mut self, heartbeat: pb::WorkerHeartbeat) -> Result<(), Status> {
        let stream = self.id();
        // Sets, not lists: a heartbeat may name every one of 10,000 leases,
        // and it is matched while the registry is locked.
        let mut named = HashSet::with_capacity(heartbeat.jobs.len());
        for (index, lease) in heartbeat.jobs.into_iter().enumerate() {
            let lease = parse_lease(&format!("heartbeat.jobs[{index}]"), Some(lease), stream)?;
            named.insert((lease.job, lease.attempt));
        }
        self.shared.registry().note_heartbeat(stream);
        if self.heartbeat_due().is_some_and(|due| Instant::now() < due) {
            if !named.is_empty() {
                self.shared.registry().retain_held(stream, &mut named);
                self.pending_beat.extend(named);
            }
            return Ok(());
        }
        if named.is_empty() {
            // All of them: those pending too.
            self.pending_beat.clear();
        } else {
            named.extend(self.pending_beat.drain());
        }
        self.write_heartbeat(named).await
    }

    /// When the next heartbeat may be written (none yet: now).
    fn heartbeat_due(&self) -> Option<Instant> {
        let min_gap = self.shared.settings.heartbeat_interval() / 4;
        self.last_heartbeat.map(|at| at + min_gap)
    }

    /// When the leases kept from heartbeats within the gap are written.
    fn pending_beat_due(&self) -> Option<Instant> {
        if self.pending_beat.is_empty() {
            return None;
        }
        Some(self.heartbeat_due().unwrap_or_else(Instant::now))
    }

    /// Writes the leases kept from heartbeats within the gap.
    async fn flush_pending_beat(&mut self) -> Result<(), Status> {
        let named = std::mem::take(&mut self.pending_beat);
        if named.is_empty() {
            return Ok(());
        }
        self.write_heartbeat(named).await
    }

    /// Extends the leases named (all when none are) that the stream holds.
    async fn write_heartbeat(&mut self, named: HashSet<(Uuid, i32)>) -> Result<(), Status> {
        let stream = self.id();
        // Only what the stream holds now, and only those named if any were.
        let Some(checked) = self.shared.registry().to_extend(stream, &named) else {
            return Ok(());
        };
        self.last_heartbeat = Some(Instant::now());
        if checked.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = checked.iter().map(|(job, _)| *job).collect();
        match self.shared.leases.extend(stream, Some(&ids)).await {
            Ok(extended) => {
                let extended: HashSet<(Uuid, i32)> =
                    extended.iter().map(|e| (e.id, e.attempts)).collect();
                let lost = self
                    .shared
                    .registry()
                    .reconcile(stream, &checked, &extended);
                if lost > 0 {
                    self.shared.wake.notify_one();
                }
                Ok(())
            }
            Err(error) => {
                // The database is away: the worker keeps its jobs; the next
                // heartbeat tries again.
                self.shared.note_db_failure(&error);
                self.last_heartbeat = None;
                Ok(())
            }
        }
    }

    /// Checks that the caller may still work: the session live, the account
    /// active, `jobs:execute` still held, and `modules:execute` too when
    /// the stream is given modules' jobs (both questions share one verdict
    /// per caller, so the second costs nothing). The access token may have
    /// expired meanwhile; the session is what counts.
    async fn recheck_caller(&mut self) -> Result<(), Status> {
        let caller = &self.registration.actor.caller;
        let mut verdict = self.shared.recheck(caller, "jobs:execute").await;
        if verdict.is_ok() && self.module_jobs {
            verdict = self.shared.recheck(caller, modules::EXECUTE).await;
        }
        let Err(refusal) = verdict else {
            return Ok(());
        };
        self.registration.ending = "the caller lost access";
        self.give_back().await;
        // Nothing else queued matters to a caller that lost access.
        self.registration.outbox.discard();
        Err(refusal.into())
    }

    /// Whether the server drains and the stream holds nothing any more.
    fn drained(&self) -> bool {
        self.drain_deadline.is_some() && self.shared.registry().holds_nothing(self.id())
    }

    /// Ends a draining stream: what it still holds goes back to the queue,
    /// not counted as a failure, and the worker is told to reconnect.
    async fn end_draining(&mut self) -> Result<(), Status> {
        self.registration.ending = "the server drained";
        self.give_back().await;
        Err(
            AppError::Draining("the server is shutting down; reconnect (to another server)".into())
                .into(),
        )
    }

    /// Ends a stream whose worker took nothing for `waited`: what was never
    /// sent goes back as never leased, what was sent goes back unfinished
    /// without costing an attempt (a worker that stops reading may never
    /// have received it: the bytes can sit in its connection's buffers), and
    /// what is queued is dropped.
    async fn end_stalled(&mut self, waited: Duration) -> Result<(), Status> {
        self.registration.ending = "the worker stopped reading the stream";
        self.give_back().await;
        self.registration.outbox.discard();
        Err(AppError::LimitExceeded {
            limit: "STREAM_SEND_TIMEOUT_MS",
            message: format!(
                "the worker read nothing for {} ms; its jobs were handed back",
                waited.as_millis()
            ),
            retry_after: Duration::from_secs(1),
        }
        .into())
    }

    /// Unregisters the stream (nothing more is leased to it) and gives back
    /// every lease it holds that no report is settling, before the worker
    /// hears that the stream ended. The server ended the stream, not the
    /// worker's failure: nothing costs an attempt (what was never sent goes
    /// back as never leased, what was sent as unfinished).
    async fn give_back(&mut self) {
        let Withdrawn {
            undelivered,
            delivered,
        } = self.registration.withdraw();
        let leases = &self.shared.leases;
        for (leases_back, unsent) in [(undelivered, true), (delivered, false)] {
            if let Err(error) = leases.hand_back(&leases_back, unsent).await {
                // Not left to the reaper, which would charge an attempt:
                // tried again in the background until the database is back.
                self.shared.note_db_failure(&error);
                keepalive::hand_back_in_background(self.shared, leases_back, unsent);
            }
        }
        self.shared.wake.notify_one();
    }
}
