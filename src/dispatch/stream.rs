//! One Work stream: the handshake, credits, heartbeats, reports, the
//! periodic re-check of the caller, and the end, whichever way it comes.
//!
//! The session is one task owning the stream's outgoing half; everything
//! else reaches it through its command channel. Its registration is a guard:
//! when the task ends for any reason (the worker left, its connection died,
//! the task panicked), the guard takes back the leases the stream held.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{Stream, StreamExt as _};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use super::{
    Shared,
    registry::{MAX_CAPACITY, StreamCommand, StreamEntry},
    reports::PendingReport,
};
use crate::{
    api::{
        jobs::{duration_message, job_message},
        json::{struct_to_json, value_to_json},
        timestamp,
    },
    domain::{
        Actor,
        audit::{AuditAction, AuditEvent},
        jobs::{
            events::{Revocation, RevokeCause},
            leases::{Report, ReportKind, failure_error},
        },
        validate,
    },
    error::AppError,
    proto::automation_v1::{
        self as pb, work_request::Kind as Inbound, work_response::Kind as Outbound,
    },
    store::jobs::{ClaimFilter, LeaseRef},
};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards a worker that is not reading; beyond it the
/// session waits (and so stops reading the worker's messages).
const OUTBOUND_BUFFER: usize = 64;

/// The server's half of a Work stream.
pub type ResponseStream = ReceiverStream<Result<pb::WorkResponse, Status>>;

/// Opens a session; its task runs until the stream ends.
pub fn open(
    shared: Arc<Shared>,
    actor: Actor,
    inbound: impl Stream<Item = Result<pb::WorkRequest, Status>> + Send + Unpin + 'static,
) -> ResponseStream {
    let (out, response) = mpsc::channel(OUTBOUND_BUFFER);
    tokio::spawn(async move {
        let mut inbound = inbound;
        if let Err(status) = serve(shared, actor, &mut inbound, &out).await {
            let _ = out.send(Err(status)).await;
        }
    });
    ReceiverStream::new(response)
}

/// What the worker said in `hello`, checked.
struct Hello {
    worker_id: String,
    filter: ClaimFilter,
    capacity: usize,
}

fn decode_hello(hello: pb::WorkerHello, stream: Uuid) -> Result<Hello, AppError> {
    let worker_id = if hello.worker_id.trim().is_empty() {
        format!("worker-{stream}")
    } else {
        validate::text("hello.worker_id", &hello.worker_id)?
    };
    let capacity = usize::try_from(hello.max_concurrency)
        .ok()
        .filter(|c| (1..=MAX_CAPACITY).contains(c))
        .ok_or_else(|| {
            AppError::invalid(
                "hello.max_concurrency",
                format!("must be within 1..{MAX_CAPACITY}"),
            )
        })?;
    let mut filter = ClaimFilter::default();
    for (index, name) in hello.job_names.iter().enumerate() {
        filter.names.push(validate::job_name(
            &format!("hello.job_names[{index}]"),
            name,
        )?);
    }
    for (index, name) in hello.module_names.iter().enumerate() {
        filter.modules.push(validate::module_name(
            &format!("hello.module_names[{index}]"),
            name,
        )?);
    }
    filter.names.sort();
    filter.names.dedup();
    filter.modules.sort();
    filter.modules.dedup();
    Ok(Hello {
        worker_id,
        filter,
        capacity,
    })
}

fn parse_lease(
    field: &str,
    lease: Option<pb::JobLeaseRef>,
    stream: Uuid,
) -> Result<LeaseRef, AppError> {
    let lease = lease.ok_or_else(|| AppError::invalid(field, "is required"))?;
    Ok(LeaseRef {
        job: validate::id(&format!("{field}.job_id"), &lease.job_id)?,
        attempt: lease.attempt,
        stream,
    })
}

fn lease_message(lease: &LeaseRef) -> pb::JobLeaseRef {
    pb::JobLeaseRef {
        job_id: lease.job.to_string(),
        attempt: lease.attempt,
    }
}

fn message(kind: Outbound) -> Result<pb::WorkResponse, Status> {
    Ok(pb::WorkResponse { kind: Some(kind) })
}

/// The registration of a stream; dropping it unregisters the stream and
/// takes back the leases it still held (the worker is gone: each job goes
/// back to the queue, or fails if that was its last attempt).
struct Registration {
    shared: Arc<Shared>,
    id: Uuid,
    actor: Actor,
    worker_id: String,
    opened: Instant,
    /// Why the stream ended, for the audit row.
    ending: &'static str,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let held = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unregister(self.id);
        let shared = self.shared.clone();
        let stream = self.id;
        let client = self.actor.client.clone();
        let event = AuditEvent::success(
            AuditAction::WorkerDisconnected,
            Some(self.actor.caller.user_id),
            format!("work-streams/{stream}"),
        )
        .with_details(json!({
            "worker_id": self.worker_id,
            "ended": self.ending,
            "leases_taken_back": held.len(),
            "seconds": self.opened.elapsed().as_secs(),
        }));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if !held.is_empty() {
                match shared.leases.lose(stream, &held).await {
                    Ok(_) => shared.wake.notify_one(),
                    // The reaper takes them when they expire.
                    Err(error) => shared.note_db_failure(&error),
                }
            }
            if let Err(error) = shared.audit.record_now(&client, &event).await {
                tracing::warn!(%error, "could not audit the end of a work stream");
            }
        });
    }
}

/// The running session of one stream.
struct Session<'a> {
    shared: &'a Arc<Shared>,
    registration: Registration,
    commands: mpsc::UnboundedSender<StreamCommand>,
    out: &'a mpsc::Sender<Result<pb::WorkResponse, Status>>,
    last_heartbeat: Option<Instant>,
    /// Set once the server drains.
    drain_deadline: Option<Instant>,
}

async fn serve(
    shared: Arc<Shared>,
    actor: Actor,
    inbound: &mut (impl Stream<Item = Result<pb::WorkRequest, Status>> + Unpin),
    out: &mpsc::Sender<Result<pb::WorkResponse, Status>>,
) -> Result<(), Status> {
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
        Ok(None) | Ok(Some(Err(_))) => return Ok(()),
        Ok(Some(Ok(first))) => first,
    };
    let Some(Inbound::Hello(hello)) = first.kind else {
        return Err(AppError::invalid("hello", "the first message must be hello").into());
    };
    let id = Uuid::now_v7();
    let hello = decode_hello(hello, id)?;
    let (commands, mut command_rx) = mpsc::unbounded_channel();
    let registered = shared
        .registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .register(
            id,
            StreamEntry {
                worker_id: hello.worker_id.clone(),
                filter: hello.filter.clone(),
                capacity: hello.capacity,
                held: Default::default(),
                accepting: true,
                commands: commands.clone(),
            },
        );
    if registered.is_none() {
        return Err(
            AppError::Draining("the server is shutting down; connect to another".into()).into(),
        );
    }
    let event = AuditEvent::success(
        AuditAction::WorkerConnected,
        Some(actor.caller.user_id),
        format!("work-streams/{id}"),
    )
    .with_details(json!({
        "worker_id": hello.worker_id,
        "max_concurrency": hello.capacity,
        "job_names": hello.filter.names,
        "module_names": hello.filter.modules,
    }));
    if let Err(error) = shared.audit.record_now(&actor.client, &event).await {
        tracing::warn!(%error, "could not audit a new work stream");
    }
    let mut session = Session {
        shared: &shared,
        registration: Registration {
            shared: shared.clone(),
            id,
            actor,
            worker_id: hello.worker_id,
            opened: Instant::now(),
            ending: "the worker closed the stream",
        },
        commands,
        out,
        last_heartbeat: None,
        drain_deadline: None,
    };
    let settings = shared.settings;
    session
        .send(Outbound::Welcome(pb::WorkerWelcome {
            session_id: id.to_string(),
            lease_duration: Some(duration_message(settings.lease)),
            heartbeat_interval: Some(duration_message(settings.heartbeat_interval())),
        }))
        .await?;
    shared.wake.notify_one();
    let draining = shared
        .registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain_deadline();
    if let Some((deadline, wall)) = draining {
        session
            .on_command(StreamCommand::Drain {
                deadline,
                wall_deadline: wall,
            })
            .await?;
    }

    let mut recheck =
        tokio::time::interval(settings.heartbeat_interval().max(Duration::from_millis(50)));
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.tick().await;
    loop {
        let drain_wait = session
            .drain_deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        tokio::select! {
            biased;
            command = command_rx.recv() => {
                if let Some(command) = command {
                    session.on_command(command).await?;
                }
            }
            message = inbound.next() => match message {
                Some(Ok(message)) => session.on_message(message).await?,
                // A message the codec refused (out of bounds, not protobuf).
                Some(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                    session.registration.ending = "the worker sent an invalid message";
                    return Err(status);
                }
                Some(Err(_)) => {
                    session.registration.ending = "the stream failed (connection lost or reset)";
                    return Ok(());
                }
                None => return Ok(()),
            },
            _ = recheck.tick() => session.recheck_caller().await?,
            () = sleep_or_forever(drain_wait) => return session.end_draining().await,
            () = out.closed() => {
                session.registration.ending = "the worker stopped reading the stream";
                return Ok(());
            }
        }
        if session.drained() {
            return session.end_draining().await;
        }
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

impl Session<'_> {
    fn id(&self) -> Uuid {
        self.registration.id
    }

    async fn send(&self, kind: Outbound) -> Result<(), Status> {
        self.out
            .send(message(kind))
            .await
            .map_err(|_| Status::cancelled("the worker went away"))
    }

    async fn on_command(&mut self, command: StreamCommand) -> Result<(), Status> {
        match command {
            StreamCommand::Assign(job) => {
                let attempt = job.attempts;
                let lease_expire_time = job.lease_expires_at.map(timestamp);
                self.send(Outbound::Assignment(pb::JobAssignment {
                    job: Some(job_message(*job)),
                    attempt,
                    lease_expire_time,
                }))
                .await
            }
            StreamCommand::Revoke(revocation) => self.send(cancellation(&revocation)).await,
            StreamCommand::Settled { lease, outcome } => {
                let held = self
                    .shared
                    .registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .finish_report(&lease);
                if held {
                    self.shared.wake.notify_one();
                }
                self.send(Outbound::Ack(pb::ReportAck {
                    lease: Some(lease_message(&lease)),
                    accepted: outcome.accepted,
                    reason: outcome.reason,
                }))
                .await
            }
            StreamCommand::Drain {
                deadline,
                wall_deadline,
            } => {
                self.drain_deadline = Some(deadline);
                let deadline = chrono::DateTime::<chrono::Utc>::from(wall_deadline).naive_utc();
                self.send(Outbound::Drain(pb::ServerDrain {
                    deadline: Some(timestamp(deadline)),
                }))
                .await
            }
        }
    }

    async fn on_message(&mut self, message: pb::WorkRequest) -> Result<(), Status> {
        let stream = self.id();
        match message.kind {
            None => Err(AppError::invalid("kind", "the message carries nothing").into()),
            Some(Inbound::Hello(_)) => Err(AppError::invalid("hello", "was already sent").into()),
            Some(Inbound::Credit(credit)) => {
                let credits = usize::try_from(credit.credits)
                    .ok()
                    .filter(|c| *c >= 1)
                    .ok_or_else(|| AppError::invalid("credit.credits", "must be at least 1"))?;
                if let Some(entry) = self
                    .shared
                    .registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(stream)
                {
                    entry.capacity = entry.capacity.saturating_add(credits).min(MAX_CAPACITY);
                }
                self.shared.wake.notify_one();
                Ok(())
            }
            Some(Inbound::Heartbeat(heartbeat)) => self.heartbeat(heartbeat).await,
            Some(Inbound::Completion(completion)) => {
                let lease = parse_lease("completion.lease", completion.lease, stream)?;
                let result = completion
                    .result
                    .map(value_to_json)
                    .unwrap_or(serde_json::Value::Null);
                let max = self.shared.settings.payload_max_bytes;
                let kind = match validate::json_document("completion.result", &result, max) {
                    Ok(()) => ReportKind::Completed(result),
                    // An unstorable result fails the attempt rather than
                    // leaving the job leased forever.
                    Err(refusal) => ReportKind::Failed {
                        error: failure_error(
                            &format!("the worker's result was refused: {refusal}"),
                            serde_json::Value::Null,
                            lease.attempt,
                            false,
                        ),
                        permanent: false,
                    },
                };
                self.submit(lease, kind).await
            }
            Some(Inbound::Failure(failure)) => {
                let lease = parse_lease("failure.lease", failure.lease, stream)?;
                let max = self.shared.settings.payload_max_bytes;
                let details = failure
                    .details
                    .map(struct_to_json)
                    .unwrap_or(serde_json::Value::Null);
                let mut error =
                    failure_error(&failure.message, details, lease.attempt, failure.permanent);
                if validate::json_document("failure", &error, max).is_err() {
                    // Keep the message, drop what cannot be stored.
                    let message: String = failure.message.replace('\0', "");
                    error = failure_error(
                        &message,
                        json!({ "dropped": "details too large or not storable" }),
                        lease.attempt,
                        failure.permanent,
                    );
                }
                self.submit(
                    lease,
                    ReportKind::Failed {
                        error,
                        permanent: failure.permanent,
                    },
                )
                .await
            }
            Some(Inbound::Release(release)) => {
                let lease = parse_lease("release.lease", release.lease, stream)?;
                self.submit(lease, ReportKind::Released).await
            }
            Some(Inbound::Drain(_)) => {
                if let Some(entry) = self
                    .shared
                    .registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(stream)
                {
                    entry.accepting = false;
                }
                Ok(())
            }
        }
    }

    /// Hands a report to the writers, or refuses it at once when the stream
    /// does not hold that lease.
    async fn submit(&mut self, lease: LeaseRef, kind: ReportKind) -> Result<(), Status> {
        let started = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .start_report(&lease);
        match started {
            Ok(()) => {
                let pending = PendingReport {
                    report: Report { lease, kind },
                    reply: self.commands.clone(),
                };
                if self.shared.reports.send(pending).is_err() {
                    return Err(AppError::Draining("the server is shutting down".into()).into());
                }
                Ok(())
            }
            Err(refusal) => {
                self.send(Outbound::Ack(pb::ReportAck {
                    lease: Some(lease_message(&lease)),
                    accepted: false,
                    reason: refusal.reason(&lease),
                }))
                .await
            }
        }
    }

    /// Extends the leases the stream holds (those named, or all); leases it
    /// lost meanwhile are answered with a cancellation. Heartbeats closer
    /// together than a quarter of the interval are not written again.
    async fn heartbeat(&mut self, heartbeat: pb::WorkerHeartbeat) -> Result<(), Status> {
        let min_gap = self.shared.settings.heartbeat_interval() / 4;
        if self.last_heartbeat.is_some_and(|at| at.elapsed() < min_gap) {
            return Ok(());
        }
        let stream = self.id();
        // Sets, not lists: a heartbeat may name every one of 10,000 leases,
        // and it is matched while the registry is locked.
        let mut named = std::collections::HashSet::with_capacity(heartbeat.jobs.len());
        for (index, lease) in heartbeat.jobs.into_iter().enumerate() {
            let lease = parse_lease(&format!("heartbeat.jobs[{index}]"), Some(lease), stream)?;
            named.insert((lease.job, lease.attempt));
        }
        // Only what the stream holds now, and only those named if any were.
        let checked: Vec<(Uuid, i32)> = {
            let mut registry = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let Some(entry) = registry.get_mut(stream) else {
                return Ok(());
            };
            entry
                .held
                .iter()
                .filter(|(job, held)| named.is_empty() || named.contains(&(**job, held.attempt)))
                .map(|(job, held)| (*job, held.attempt))
                .collect()
        };
        self.last_heartbeat = Some(Instant::now());
        if checked.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = checked.iter().map(|(job, _)| *job).collect();
        match self.shared.leases.extend(stream, Some(&ids)).await {
            Ok(extended) => {
                let checked_set: std::collections::HashSet<(Uuid, i32)> =
                    checked.iter().copied().collect();
                let still: std::collections::HashSet<Uuid> = extended
                    .iter()
                    .filter(|e| checked_set.contains(&(e.id, e.attempts)))
                    .map(|e| e.id)
                    .collect();
                let lost = self
                    .shared
                    .registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .reconcile(stream, &checked, &still);
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
    /// active, `jobs:execute` still held. The access token may have expired
    /// meanwhile; the session is what counts.
    async fn recheck_caller(&mut self) -> Result<(), Status> {
        let caller = &self.registration.actor.caller;
        let Err(refusal) = self.shared.recheck(caller, "jobs:execute").await else {
            return Ok(());
        };
        self.registration.ending = "the caller lost access";
        self.hand_back_all().await;
        Err(refusal.into())
    }

    /// Whether the server drains and the stream holds nothing any more.
    fn drained(&self) -> bool {
        self.drain_deadline.is_some()
            && self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(self.id())
                .is_none_or(|entry| entry.held.is_empty())
    }

    /// Ends a draining stream: what it still holds goes back to the queue,
    /// not counted as a failure, and the worker is told to reconnect.
    async fn end_draining(&mut self) -> Result<(), Status> {
        self.registration.ending = "the server drained";
        self.hand_back_all().await;
        Err(
            AppError::Draining("the server is shutting down; reconnect (to another server)".into())
                .into(),
        )
    }

    /// Hands back every lease the stream holds that no report is settling.
    async fn hand_back_all(&mut self) {
        let stream = self.id();
        let leases: Vec<LeaseRef> = {
            let mut registry = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let Some(entry) = registry.get_mut(stream) else {
                return;
            };
            let leases = entry
                .held
                .iter()
                .filter(|(_, held)| !held.reporting)
                .map(|(job, held)| LeaseRef {
                    job: *job,
                    attempt: held.attempt,
                    stream,
                })
                .collect();
            entry.held.retain(|_, held| held.reporting);
            entry.accepting = false;
            leases
        };
        if let Err(error) = self.shared.leases.hand_back(&leases, false).await {
            // The guard cannot find them any more; the reaper will.
            self.shared.note_db_failure(&error);
        }
        self.shared.wake.notify_one();
    }
}

fn cancellation(revocation: &Revocation) -> Outbound {
    let (cause, reason) = match revocation.cause {
        RevokeCause::Cancelled => (
            pb::CancellationCause::Cancelled,
            "the job was cancelled; its result will be refused",
        ),
        RevokeCause::LeaseLost => (
            pb::CancellationCause::LeaseLost,
            "the lease ended (no heartbeat in time); the job may run elsewhere",
        ),
        RevokeCause::ModuleRemoved => (
            pb::CancellationCause::ModuleRemoved,
            "the job's module is being removed",
        ),
    };
    Outbound::Cancellation(pb::JobCancellation {
        lease: Some(pb::JobLeaseRef {
            job_id: revocation.job.to_string(),
            attempt: revocation.attempt,
        }),
        reason: reason.into(),
        cause: cause.into(),
    })
}
