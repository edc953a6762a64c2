//! The Work stream's messages, converted for the session: the leases that
//! reports name, the reports as the lease service takes them, and what the
//! server answers (acks, cancellations).

use serde_json::json;
use uuid::Uuid;

use crate::{
    api::json::{struct_to_json, value_to_json},
    domain::{
        jobs::{
            events::{Revocation, RevokeCause},
            leases::{ReportKind, failure_error},
        },
        validate,
    },
    error::AppError,
    proto::automation_v1::{self as pb, work_response::Kind as Outbound},
    store::jobs::LeaseRef,
};

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

pub fn lease_message(lease: &LeaseRef) -> pb::JobLeaseRef {
    pb::JobLeaseRef {
        job_id: lease.job.to_string(),
        attempt: lease.attempt,
    }
}

pub fn message(kind: Outbound) -> pb::WorkResponse {
    pb::WorkResponse { kind: Some(kind) }
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
