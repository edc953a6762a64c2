//! The Work stream's messages, converted for the dispatcher's sessions: the
//! leases that reports name, the reports as the lease service takes them,
//! and what the server answers (cancellations).
//!
//! What can go wrong: a worker's result or failure details may be too large
//! for the queue or hold what JSONB cannot (NUL characters). A result that
//! cannot be stored fails the attempt (rather than leaving the job leased
//! forever); failure details that cannot be stored are dropped and the
//! message kept.

use std::time::SystemTime;

use serde_json::json;
use uuid::Uuid;

use super::{
    jobs::job_message,
    json::{struct_to_json, value_to_json},
    time::{duration_message, timestamp},
};
use crate::{
    domain::{
        events::{Revocation, RevokeCause},
        jobs::{
            JobSettings,
            leases::{ReportKind, failure_error, progress::Progress},
        },
        validate,
    },
    error::AppError,
    proto::automation_v1::{self as pb, work_response::Kind as Outbound},
    store::jobs::{JobRow, LeaseRef},
};

/// The lease a report names, held by `stream`.
pub fn parse_lease(
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

/// A lease as the worker names it.
pub fn lease_message(lease: &LeaseRef) -> pb::JobLeaseRef {
    pb::JobLeaseRef {
        job_id: lease.job.to_string(),
        attempt: lease.attempt,
    }
}

/// One message to the worker.
pub fn message(kind: Outbound) -> pb::WorkResponse {
    pb::WorkResponse { kind: Some(kind) }
}

/// The first message of a stream: its id, the lease and heartbeat rhythm,
/// and how many jobs it was granted at once.
pub fn welcome(session: Uuid, settings: &JobSettings, granted: usize) -> Outbound {
    Outbound::Welcome(pb::WorkerWelcome {
        session_id: session.to_string(),
        lease_duration: Some(duration_message(settings.lease)),
        heartbeat_interval: Some(duration_message(settings.heartbeat_interval())),
        granted_concurrency: i32::try_from(granted).unwrap_or(i32::MAX),
    })
}

/// A job leased to the stream, with the attempt its reports must quote.
pub fn assignment(job: JobRow) -> pb::WorkResponse {
    let attempt = job.attempts;
    let lease_expire_time = job.lease_expires_at.map(timestamp);
    message(Outbound::Assignment(pb::JobAssignment {
        traceparent: job.traceparent.clone(),
        job: Some(job_message(job)),
        attempt,
        lease_expire_time,
    }))
}

/// The answer to a report on `lease`.
pub fn ack(lease: &LeaseRef, accepted: bool, reason: String) -> Outbound {
    Outbound::Ack(pb::ReportAck {
        lease: Some(lease_message(lease)),
        accepted,
        reason,
    })
}

/// The server drains: the worker finishes (or hands back) what it holds by
/// `deadline`.
pub fn drain(deadline: SystemTime) -> Outbound {
    let deadline = chrono::DateTime::<chrono::Utc>::from(deadline).naive_utc();
    Outbound::Drain(pb::ServerDrain {
        deadline: Some(timestamp(deadline)),
    })
}

/// A completion, as a report. A result that cannot be stored fails the
/// attempt rather than leaving the job leased forever.
pub fn completion_report(
    completion: pb::JobCompletion,
    stream: Uuid,
    max_bytes: usize,
) -> Result<(LeaseRef, ReportKind), AppError> {
    let lease = parse_lease("completion.lease", completion.lease, stream)?;
    let result = completion
        .result
        .map(value_to_json)
        .unwrap_or(serde_json::Value::Null);
    let kind = match validate::json_document("completion.result", &result, max_bytes) {
        Ok(()) => ReportKind::Completed(result),
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
    Ok((lease, kind))
}

/// A failure, as a report: details that cannot be stored are dropped, the
/// message kept.
pub fn failure_report(
    failure: pb::JobFailure,
    stream: Uuid,
    max_bytes: usize,
) -> Result<(LeaseRef, ReportKind), AppError> {
    let lease = parse_lease("failure.lease", failure.lease, stream)?;
    let details = failure
        .details
        .map(struct_to_json)
        .unwrap_or(serde_json::Value::Null);
    let mut error = failure_error(&failure.message, details, lease.attempt, failure.permanent);
    if validate::json_document("failure", &error, max_bytes).is_err() {
        let message: String = failure.message.replace('\0', "");
        error = failure_error(
            &message,
            json!({ "dropped": "details too large or not storable" }),
            lease.attempt,
            failure.permanent,
        );
    }
    let kind = ReportKind::Failed {
        error,
        permanent: failure.permanent,
    };
    Ok((lease, kind))
}

/// A progress report, checked (a percent within 0..100, a bounded message
/// and details).
pub fn progress_report(
    report: pb::JobProgressReport,
    stream: Uuid,
) -> Result<(LeaseRef, Progress), AppError> {
    let lease = parse_lease("progress.lease", report.lease, stream)?;
    let progress = Progress {
        percent: report.percent,
        message: report.message,
        details: report.details.map(struct_to_json),
    };
    progress.validate()?;
    Ok((lease, progress))
}

/// The answer to a progress report on a lease the stream does not hold:
/// stop running that attempt (`reason` says why).
pub fn progress_refused(lease: &LeaseRef, reason: String) -> Outbound {
    Outbound::Cancellation(pb::JobCancellation {
        lease: Some(lease_message(lease)),
        reason,
        cause: pb::CancellationCause::LeaseLost.into(),
    })
}

/// The message telling a worker that a lease was taken from it, and why.
pub fn cancellation(revocation: &Revocation) -> Outbound {
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

#[cfg(test)]
mod tests {
    use prost_types::{Struct, Value, value::Kind};

    use super::*;

    fn lease() -> Option<pb::JobLeaseRef> {
        Some(pb::JobLeaseRef {
            job_id: Uuid::nil().to_string(),
            attempt: 2,
        })
    }

    fn text(value: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(value.into())),
        }
    }

    #[test]
    fn a_report_without_its_lease_is_refused() {
        let completion = pb::JobCompletion {
            lease: None,
            result: None,
        };
        let error = completion_report(completion, Uuid::nil(), 100).unwrap_err();
        assert_eq!(error.to_string(), "completion.lease: is required");
        let failure = pb::JobFailure {
            lease: Some(pb::JobLeaseRef {
                job_id: "x".into(),
                attempt: 1,
            }),
            ..Default::default()
        };
        let error = failure_report(failure, Uuid::nil(), 100).unwrap_err();
        assert_eq!(error.to_string(), "failure.lease.job_id: is not a UUID");
    }

    #[test]
    fn an_unset_result_completes_with_null() {
        let completion = pb::JobCompletion {
            lease: lease(),
            result: None,
        };
        let (lease, kind) = completion_report(completion, Uuid::nil(), 100).unwrap();
        assert_eq!(lease.attempt, 2);
        assert_eq!(kind, ReportKind::Completed(serde_json::Value::Null));
    }

    #[test]
    fn a_result_that_cannot_be_stored_fails_the_attempt() {
        for result in [text("a\u{0}b"), text(&"x".repeat(200))] {
            let completion = pb::JobCompletion {
                lease: lease(),
                result: Some(result),
            };
            let (_, kind) = completion_report(completion, Uuid::nil(), 100).unwrap();
            let ReportKind::Failed { error, permanent } = kind else {
                panic!("not failed: {kind:?}");
            };
            assert!(!permanent);
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("the worker's result was refused: completion.result: "),
                "{error}"
            );
        }
    }

    #[test]
    fn failure_details_that_cannot_be_stored_are_dropped() {
        let failure = pb::JobFailure {
            lease: lease(),
            message: "boom\u{0}".into(),
            details: Some(Struct {
                fields: [("k".to_owned(), text("v\u{0}"))].into(),
            }),
            permanent: true,
        };
        let (_, kind) = failure_report(failure, Uuid::nil(), 1_000).unwrap();
        let ReportKind::Failed { error, permanent } = kind else {
            panic!("not failed: {kind:?}");
        };
        assert!(permanent);
        assert_eq!(error["message"], "boom");
        assert_eq!(
            error["details"],
            json!({ "dropped": "details too large or not storable" })
        );
        assert_eq!(error["attempt"], 2);
    }
}
