//! One Work stream of a [`Worker`]: the handshake (hello, credential,
//! welcome), then a loop that hands each event to one handler: assignments
//! run as tasks, cancellations, acks, finished handlers reported, heartbeats,
//! and the drain.

use std::{collections::HashMap, time::Duration};

use automation_protocol::{
    automation_v1::{
        self as pb, job_service_client::JobServiceClient, work_request::Kind as Out,
        work_response::Kind as In,
    },
    json::{json_to_struct, json_to_value, struct_to_json},
};
use futures_util::FutureExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, Streaming, transport::Channel};
use uuid::Uuid;

use crate::{
    BoxedHandler, Job, JobError, JobResult, Worker,
    progress::{self, Progress, ProgressSlot, SendBudget},
};

/// How a stream ended.
pub(crate) enum Outcome {
    /// The worker was told to stop and drained.
    Stopped,
    /// The credential is refused: stop for good.
    Refused(Status),
    /// The stream failed before it was welcomed (or the server is away):
    /// back off.
    Lost(Status),
    /// The stream served and then ended (a draining server, a dropped
    /// connection): reconnect.
    Served,
}

/// A job running here.
struct Running {
    attempt: i32,
    cancel: CancellationToken,
    /// Its handler's latest progress, not sent yet.
    progress: ProgressSlot,
}

/// A handler's verdict on one attempt.
struct Finished {
    job: Uuid,
    attempt: i32,
    result: JobResult,
}

/// Runs one stream on `channel` until it ends or, once `stop` is
/// cancelled, has drained.
pub(crate) async fn run(worker: &Worker, channel: Channel, stop: &CancellationToken) -> Outcome {
    let (outbox, outgoing) = mpsc::channel::<pb::WorkRequest>(256);
    let outbox = Outbox(outbox);
    let (mut inbound, heartbeat_every) = match handshake(worker, channel, &outbox, outgoing).await {
        Ok(opened) => opened,
        Err(outcome) => return outcome,
    };
    tracing::info!(worker = %worker.worker_id, "work stream open");

    let (done, mut finished) = mpsc::unbounded_channel::<Finished>();
    let mut stream = OpenStream {
        worker,
        outbox,
        done,
        running: HashMap::new(),
        unacked: 0,
        draining: false,
        drain_deadline: None,
        progress_budget: SendBudget::new(),
    };
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.tick().await;
    let mut progress_tick = tokio::time::interval(progress::TICK);
    progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if stream.drained() {
            return Outcome::Stopped;
        }
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(pb::WorkResponse { kind: Some(kind) })) => stream.on_message(kind).await,
                Ok(Some(_)) => {}
                Ok(None) => return stream.closed(None),
                Err(status) => return stream.closed(Some(status)),
            },
            Some(finished) = finished.recv() => stream.on_finished(finished).await,
            _ = heartbeat.tick() => stream.on_heartbeat().await,
            _ = progress_tick.tick(), if !stream.running.is_empty() => {
                stream.send_progress().await;
            }
            () = stop.cancelled(), if !stream.draining => stream.on_stop().await,
            () = sleep_until(stream.drain_deadline),
                if stream.drain_deadline.is_some() && !stream.running.is_empty() =>
            {
                stream.on_drain_timeout().await;
            }
        }
    }
}

/// What the worker sends on its stream.
struct Outbox(mpsc::Sender<pb::WorkRequest>);

impl Outbox {
    async fn send(&self, kind: Out) {
        // A closed stream is noticed on the inbound side.
        let _ = self.0.send(pb::WorkRequest { kind: Some(kind) }).await;
    }
}

/// Opens the stream: the hello (the job types this worker has handlers
/// for), the credential, and the server's welcome, which names the
/// heartbeat interval.
async fn handshake(
    worker: &Worker,
    channel: Channel,
    outbox: &Outbox,
    outgoing: mpsc::Receiver<pb::WorkRequest>,
) -> Result<(Streaming<pb::WorkResponse>, Duration), Outcome> {
    outbox
        .send(Out::Hello(pb::WorkerHello {
            worker_id: worker.worker_id.clone(),
            job_names: worker.handlers.keys().cloned().collect(),
            module_names: Vec::new(),
            max_concurrency: worker.concurrency,
        }))
        .await;
    let mut request = Request::new(ReceiverStream::new(outgoing));
    let Ok(authorization) = format!("Bearer {}", worker.credential).parse() else {
        return Err(Outcome::Refused(Status::unauthenticated(
            "the credential is not valid header text",
        )));
    };
    request
        .metadata_mut()
        .insert("authorization", authorization);
    let mut inbound = JobServiceClient::new(channel)
        .work(request)
        .await
        .map_err(|status| classify(status, false))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(pb::WorkResponse {
            kind: Some(In::Welcome(welcome)),
        })) => {
            let heartbeat_every = welcome
                .heartbeat_interval
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(Duration::from_secs(10));
            Ok((inbound, heartbeat_every))
        }
        Ok(_) => Err(Outcome::Lost(Status::internal(
            "the stream did not start with a welcome",
        ))),
        Err(status) => Err(classify(status, false)),
    }
}

/// A welcomed stream: the jobs running here and what is owed to the server.
struct OpenStream<'w> {
    worker: &'w Worker,
    outbox: Outbox,
    /// Where handler tasks send their verdicts.
    done: mpsc::UnboundedSender<Finished>,
    running: HashMap<Uuid, Running>,
    /// Reports sent and not yet acknowledged: a draining worker leaves only
    /// once the server has committed every one.
    unacked: usize,
    draining: bool,
    drain_deadline: Option<tokio::time::Instant>,
    /// Progress reports the stream may send now.
    progress_budget: SendBudget,
}

impl OpenStream<'_> {
    /// Draining, with nothing running and every report acknowledged.
    fn drained(&self) -> bool {
        self.draining && self.running.is_empty() && self.unacked == 0
    }

    async fn on_message(&mut self, kind: In) {
        match kind {
            In::Assignment(assignment) => self.on_assignment(assignment).await,
            In::Cancellation(cancellation) => self.on_cancellation(cancellation),
            In::Ack(ack) => {
                self.unacked = self.unacked.saturating_sub(1);
                if !ack.accepted {
                    tracing::warn!(reason = %ack.reason, "a report was not accepted");
                }
            }
            In::Drain(_) => tracing::info!("the server is draining; finishing held jobs"),
            In::Welcome(_) => {}
        }
    }

    /// Starts the job's handler as a task, or gives back a job of a type
    /// this worker has no handler for.
    async fn on_assignment(&mut self, assignment: pb::JobAssignment) {
        let lease = assignment.job.as_ref().map(|job| pb::JobLeaseRef {
            job_id: job.id.clone(),
            attempt: assignment.attempt,
        });
        let Some((job, handler)) = job_of(self.worker, assignment) else {
            // Give it back at once rather than let its lease lapse.
            self.unacked += 1;
            self.outbox
                .send(Out::Release(pb::JobRelease {
                    lease,
                    reason: "this worker has no handler for the job type".into(),
                }))
                .await;
            return;
        };
        let running = Running {
            attempt: job.attempt,
            cancel: job.cancel.clone(),
            progress: job.progress.clone(),
        };
        // A new attempt of a job still running here (it was cancelled or
        // lost its lease, then came back): the old attempt's result could
        // never be accepted.
        if let Some(previous) = self.running.insert(job.id, running) {
            previous.cancel.cancel();
        }
        let done = self.done.clone();
        let (id, attempt) = (job.id, job.attempt);
        tokio::spawn(async move {
            let result = std::panic::AssertUnwindSafe(handler(job))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(JobError::retry("the handler panicked")));
            let _ = done.send(Finished {
                job: id,
                attempt,
                result,
            });
        });
    }

    /// Tells the handler of the named attempt, if it still runs here.
    fn on_cancellation(&self, cancellation: pb::JobCancellation) {
        let lease = cancellation.lease.unwrap_or_default();
        if let Ok(id) = lease.job_id.parse::<Uuid>()
            && let Some(job) = self.running.get(&id)
            && job.attempt == lease.attempt
        {
            job.cancel.cancel();
        }
    }

    /// Reports a handler's verdict: only for the current attempt of a job,
    /// and not once its lease is gone (the server would refuse it).
    async fn on_finished(&mut self, finished: Finished) {
        if self
            .running
            .get(&finished.job)
            .is_none_or(|job| job.attempt != finished.attempt)
        {
            return;
        }
        let Some(job) = self.running.remove(&finished.job) else {
            return;
        };
        if job.cancel.is_cancelled() {
            return;
        }
        // The last progress goes first, so that the finished job keeps it
        // (the server stores it with the report), when the budget allows.
        if let Some(progress) = job.progress.take()
            && self.progress_budget.available() > 0
        {
            self.progress_budget.spend(1);
            self.outbox
                .send(progress_report(finished.job, finished.attempt, progress))
                .await;
        }
        self.unacked += 1;
        self.outbox
            .send(report(finished.job, finished.attempt, finished.result))
            .await;
    }

    /// Sends the progress waiting, oldest first, as far as the budget
    /// allows; the rest waits for the next tick (still only the latest of
    /// each job).
    async fn send_progress(&mut self) {
        let mut waiting: Vec<(std::time::Instant, Uuid, i32, ProgressSlot)> = self
            .running
            .iter()
            .filter(|(_, job)| !job.cancel.is_cancelled())
            .filter_map(|(id, job)| {
                let since = job.progress.waiting_since()?;
                Some((since, *id, job.attempt, job.progress.clone()))
            })
            .collect();
        if waiting.is_empty() {
            return;
        }
        waiting.sort_by_key(|(since, ..)| *since);
        let allowed = self.progress_budget.available().min(waiting.len());
        self.progress_budget.spend(allowed);
        for (_, id, attempt, slot) in waiting.into_iter().take(allowed) {
            if let Some(progress) = slot.take() {
                self.outbox
                    .send(progress_report(id, attempt, progress))
                    .await;
            }
        }
    }

    async fn on_heartbeat(&self) {
        if !self.running.is_empty() {
            self.outbox
                .send(Out::Heartbeat(pb::WorkerHeartbeat { jobs: Vec::new() }))
                .await;
        }
    }

    /// Takes nothing new from now on, and gives the handlers until the
    /// drain timeout.
    async fn on_stop(&mut self) {
        self.draining = true;
        self.drain_deadline = Some(tokio::time::Instant::now() + self.worker.drain_timeout);
        self.outbox.send(Out::Drain(pb::WorkerDrain {})).await;
    }

    /// Handlers that outlived the drain: stop them and give their jobs back,
    /// so that other workers run them now.
    async fn on_drain_timeout(&mut self) {
        self.drain_deadline = None;
        for (id, job) in self.running.drain() {
            job.cancel.cancel();
            self.unacked += 1;
            self.outbox
                .send(Out::Release(pb::JobRelease {
                    lease: Some(pb::JobLeaseRef {
                        job_id: id.to_string(),
                        attempt: job.attempt,
                    }),
                    reason: "the worker is shutting down".into(),
                }))
                .await;
        }
    }

    /// The server closed the stream (`None`) or it failed: the server took
    /// the leases back with it, so every handler is told.
    fn closed(&self, error: Option<Status>) -> Outcome {
        for job in self.running.values() {
            job.cancel.cancel();
        }
        match error {
            _ if self.draining => Outcome::Stopped,
            None => Outcome::Served,
            Some(status) => classify(status, true),
        }
    }
}

/// A progress report on one attempt.
fn progress_report(job: Uuid, attempt: i32, progress: Progress) -> Out {
    Out::Progress(pb::JobProgressReport {
        lease: Some(pb::JobLeaseRef {
            job_id: job.to_string(),
            attempt,
        }),
        percent: progress.percent,
        message: progress.message,
        details: progress.details.map(json_to_struct),
    })
}

/// The report of one attempt's result.
fn report(job: Uuid, attempt: i32, result: JobResult) -> Out {
    let lease = Some(pb::JobLeaseRef {
        job_id: job.to_string(),
        attempt,
    });
    match result {
        Ok(result) => Out::Completion(pb::JobCompletion {
            lease,
            result: Some(json_to_value(result)),
        }),
        Err(error) => Out::Failure(pb::JobFailure {
            lease,
            message: error.message,
            details: Some(json_to_struct(match error.details {
                serde_json::Value::Object(map) => serde_json::Value::Object(map),
                other => serde_json::json!({ "value": other }),
            })),
            permanent: error.permanent,
        }),
    }
}

/// The job of an assignment and its handler; `None` for a type this worker
/// has no handler for (never assigned: the hello names the types).
fn job_of(worker: &Worker, assignment: pb::JobAssignment) -> Option<(Job, BoxedHandler)> {
    let job = assignment.job?;
    let handler = worker.handlers.get(&job.name)?.clone();
    let job = Job {
        id: job.id.parse().ok()?,
        attempt: assignment.attempt,
        traceparent: assignment.traceparent,
        module: (!job.module_name.is_empty()).then_some(job.module_name),
        payload: job
            .payload
            .map(struct_to_json)
            .unwrap_or_else(|| serde_json::json!({})),
        name: job.name,
        cancel: CancellationToken::new(),
        progress: ProgressSlot::default(),
    };
    Some((job, handler))
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Refused credentials stop the worker; anything else is reconnected to.
fn classify(status: Status, served: bool) -> Outcome {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => Outcome::Refused(status),
        // The server refused the hello itself (a concurrency above its
        // maximum, a job type it cannot take): retrying would not help.
        Code::InvalidArgument if !served => Outcome::Refused(status),
        _ if served => Outcome::Served,
        _ => Outcome::Lost(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(outcome: Outcome) -> &'static str {
        match outcome {
            Outcome::Stopped => "stopped",
            Outcome::Refused(_) => "refused",
            Outcome::Lost(_) => "lost",
            Outcome::Served => "served",
        }
    }

    #[test]
    fn refusals_stop_and_everything_else_reconnects() {
        let unauthenticated = || Status::unauthenticated("revoked");
        assert_eq!(kind(classify(unauthenticated(), false)), "refused");
        assert_eq!(kind(classify(unauthenticated(), true)), "refused");
        // A hello refused is final; a stream ended later by a bad report
        // is reconnected.
        assert_eq!(
            kind(classify(Status::invalid_argument("x"), false)),
            "refused"
        );
        assert_eq!(
            kind(classify(Status::invalid_argument("x"), true)),
            "served"
        );
        assert_eq!(kind(classify(Status::unavailable("x"), false)), "lost");
        assert_eq!(kind(classify(Status::unavailable("x"), true)), "served");
    }

    fn worker() -> Worker {
        Worker::builder("http://127.0.0.1:1", "acp_x")
            .handle("known", |job| async move { Ok(job.payload) })
            .build()
    }

    fn assignment(name: &str) -> pb::JobAssignment {
        pb::JobAssignment {
            job: Some(pb::Job {
                id: Uuid::nil().to_string(),
                name: name.into(),
                ..Default::default()
            }),
            attempt: 2,
            ..Default::default()
        }
    }

    #[test]
    fn an_assignment_becomes_a_job_only_with_a_handler() {
        assert!(job_of(&worker(), assignment("unknown")).is_none());
        let (job, _) = job_of(&worker(), assignment("known")).expect("a handler");
        assert_eq!((job.id, job.attempt, job.module), (Uuid::nil(), 2, None));
        assert_eq!(
            job.payload,
            serde_json::json!({}),
            "no payload reads as {{}}"
        );
    }

    #[test]
    fn progress_is_reported_on_its_attempt() {
        let Out::Progress(report) = progress_report(
            Uuid::nil(),
            4,
            Progress::new()
                .percent(30.0)
                .details(serde_json::json!({"n": 1})),
        ) else {
            panic!("a progress report");
        };
        assert_eq!(report.lease.map(|l| l.attempt), Some(4));
        assert_eq!(report.percent, Some(30.0));
        assert_eq!(report.message, "");
        assert_eq!(
            report.details.map(struct_to_json),
            Some(serde_json::json!({"n": 1}))
        );
    }

    #[test]
    fn a_failure_reports_its_details_as_an_object() {
        let Out::Failure(failure) = report(
            Uuid::nil(),
            3,
            Err(JobError::permanent("no").with_details(serde_json::json!([1]))),
        ) else {
            panic!("a failure is reported as one");
        };
        assert!(failure.permanent);
        assert_eq!(failure.lease.map(|l| l.attempt), Some(3));
        assert_eq!(
            failure.details.map(struct_to_json),
            Some(serde_json::json!({ "value": [1] }))
        );
    }
}
