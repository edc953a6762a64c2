//! One Work stream of a [`Worker`]: hello, assignments run as tasks,
//! heartbeats, reports, cancellations and the drain.

use std::{collections::HashMap, time::Duration};

use futures_util::FutureExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, transport::Channel};
use uuid::Uuid;

use crate::{Job, JobError, JobResult, Worker};
use automation_protocol::{
    automation_v1::{
        self as pb, job_service_client::JobServiceClient, work_request::Kind as Out,
        work_response::Kind as In,
    },
    json::{json_to_struct, json_to_value, struct_to_json},
};

/// How a stream ended.
pub(super) enum Outcome {
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
}

/// A handler's verdict on one attempt.
struct Finished {
    job: Uuid,
    attempt: i32,
    result: JobResult,
}

pub(super) async fn run(worker: &Worker, channel: Channel, stop: &CancellationToken) -> Outcome {
    let (tx, rx) = mpsc::channel::<pb::WorkRequest>(256);
    let send = |kind: Out| {
        let tx = tx.clone();
        async move {
            // A closed stream is noticed on the inbound side.
            let _ = tx.send(pb::WorkRequest { kind: Some(kind) }).await;
        }
    };
    send(Out::Hello(pb::WorkerHello {
        worker_id: worker.worker_id.clone(),
        job_names: worker.handlers.keys().cloned().collect(),
        module_names: Vec::new(),
        max_concurrency: worker.concurrency,
    }))
    .await;
    let mut request = Request::new(ReceiverStream::new(rx));
    match format!("Bearer {}", worker.credential).parse() {
        Ok(value) => {
            request.metadata_mut().insert("authorization", value);
        }
        Err(_) => {
            return Outcome::Refused(Status::unauthenticated(
                "the credential is not valid header text",
            ));
        }
    }
    let mut inbound = match JobServiceClient::new(channel).work(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return classify(status, false),
    };
    let heartbeat_every = match inbound.message().await {
        Ok(Some(pb::WorkResponse {
            kind: Some(In::Welcome(welcome)),
        })) => welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(10)),
        Ok(_) => return Outcome::Lost(Status::internal("the stream did not start with a welcome")),
        Err(status) => return classify(status, false),
    };
    tracing::info!(worker = %worker.worker_id, "work stream open");

    let mut running: HashMap<Uuid, Running> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.tick().await;
    let mut draining = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    // Reports sent and not yet acknowledged: a draining worker leaves only
    // once the server has committed every one.
    let mut unacked = 0usize;
    loop {
        if draining && running.is_empty() && unacked == 0 {
            return Outcome::Stopped;
        }
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(pb::WorkResponse { kind: Some(kind) })) => match kind {
                    In::Assignment(assignment) => {
                        let lease = assignment.job.as_ref().map(|job| pb::JobLeaseRef {
                            job_id: job.id.clone(),
                            attempt: assignment.attempt,
                        });
                        let Some((job, handler)) = job_of(worker, assignment) else {
                            // Not a type this worker runs: give it back at
                            // once rather than let its lease lapse.
                            unacked += 1;
                            send(Out::Release(pb::JobRelease {
                                lease,
                                reason: "this worker has no handler for the job type".into(),
                            }))
                            .await;
                            continue;
                        };
                        {
                            let previous = running.insert(job.id, Running { attempt: job.attempt, cancel: job.cancel.clone() });
                            // A new attempt of a job still running here (it was
                            // cancelled or lost its lease, then came back): the
                            // old attempt's result could never be accepted.
                            if let Some(previous) = previous {
                                previous.cancel.cancel();
                            }
                            let done = done_tx.clone();
                            let (id, attempt) = (job.id, job.attempt);
                            tokio::spawn(async move {
                                let result = std::panic::AssertUnwindSafe(handler(job))
                                    .catch_unwind()
                                    .await
                                    .unwrap_or_else(|_| Err(JobError::retry("the handler panicked")));
                                let _ = done.send(Finished { job: id, attempt, result });
                            });
                        }
                    }
                    In::Cancellation(cancellation) => {
                        let lease = cancellation.lease.unwrap_or_default();
                        if let Ok(id) = lease.job_id.parse::<Uuid>()
                            && let Some(job) = running.get(&id)
                            && job.attempt == lease.attempt
                        {
                            job.cancel.cancel();
                        }
                    }
                    In::Ack(ack) => {
                        unacked = unacked.saturating_sub(1);
                        if !ack.accepted {
                            tracing::warn!(reason = %ack.reason, "a report was not accepted");
                        }
                    }
                    In::Drain(_) => tracing::info!("the server is draining; finishing held jobs"),
                    In::Welcome(_) => {}
                },
                Ok(Some(_)) => {}
                Ok(None) => {
                    // The server took the leases back with the stream.
                    for job in running.values() {
                        job.cancel.cancel();
                    }
                    return if draining { Outcome::Stopped } else { Outcome::Served };
                }
                Err(status) => {
                    for job in running.values() {
                        job.cancel.cancel();
                    }
                    return if draining && stop.is_cancelled() { Outcome::Stopped } else { classify(status, true) };
                }
            },
            Some(finished) = done_rx.recv() => {
                // Only the current attempt of a job is reported.
                if running.get(&finished.job).is_none_or(|job| job.attempt != finished.attempt) {
                    continue;
                }
                let Some(job) = running.remove(&finished.job) else { continue };
                if job.cancel.is_cancelled() {
                    // Its lease is gone: the server would refuse the report.
                    continue;
                }
                let lease = Some(pb::JobLeaseRef { job_id: finished.job.to_string(), attempt: finished.attempt });
                unacked += 1;
                send(match finished.result {
                    Ok(result) => Out::Completion(pb::JobCompletion { lease, result: Some(json_to_value(result)) }),
                    Err(error) => Out::Failure(pb::JobFailure {
                        lease,
                        message: error.message,
                        details: Some(json_to_struct(match error.details {
                            serde_json::Value::Object(map) => serde_json::Value::Object(map),
                            other => serde_json::json!({ "value": other }),
                        })),
                        permanent: error.permanent,
                    }),
                }).await;
            }
            _ = heartbeat.tick() => {
                if !running.is_empty() {
                    send(Out::Heartbeat(pb::WorkerHeartbeat { jobs: Vec::new() })).await;
                }
            }
            () = stop.cancelled(), if !draining => {
                draining = true;
                drain_deadline = Some(tokio::time::Instant::now() + worker.drain_timeout);
                send(Out::Drain(pb::WorkerDrain {})).await;
            }
            () = sleep_until(drain_deadline), if drain_deadline.is_some() && !running.is_empty() => {
                // Handlers that outlived the drain: stop them and give their
                // jobs back, so that other workers run them now.
                drain_deadline = None;
                for (id, job) in running.drain() {
                    job.cancel.cancel();
                    unacked += 1;
                    send(Out::Release(pb::JobRelease {
                        lease: Some(pb::JobLeaseRef { job_id: id.to_string(), attempt: job.attempt }),
                        reason: "the worker is shutting down".into(),
                    }))
                    .await;
                }
            }
        }
    }
}

/// The job of an assignment and its handler; `None` for a type this worker
/// has no handler for (never assigned: the hello names the types).
fn job_of(worker: &Worker, assignment: pb::JobAssignment) -> Option<(Job, crate::BoxedHandler)> {
    let job = assignment.job?;
    let handler = worker.handlers.get(&job.name)?.clone();
    let job = Job {
        id: job.id.parse().ok()?,
        attempt: assignment.attempt,
        module: (!job.module_name.is_empty()).then_some(job.module_name),
        payload: job
            .payload
            .map(struct_to_json)
            .unwrap_or_else(|| serde_json::json!({})),
        name: job.name,
        cancel: CancellationToken::new(),
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
