//! `Job` messages and the requests of `JobService`: jobs and their states
//! to the wire, create requests and list filters to the domain.

use super::{
    json::{json_to_struct, json_to_value, struct_to_json},
    time::{optional_time, timestamp},
};
use crate::{
    domain::jobs::{JobSpec, leases::progress::Progress},
    error::AppError,
    proto::automation_v1 as pb,
    store::jobs::{JobFilter, JobRow, JobStatus},
};

/// The wire state of a job.
pub fn status_message(status: JobStatus) -> pb::JobStatus {
    match status {
        JobStatus::Pending => pb::JobStatus::Pending,
        JobStatus::Running => pb::JobStatus::Running,
        JobStatus::Completed => pb::JobStatus::Completed,
        JobStatus::Failed => pb::JobStatus::Failed,
        JobStatus::Cancelled => pb::JobStatus::Cancelled,
    }
}

/// The wire `Job` of a row. The lease's end is shown only while the job
/// runs (a finished job's row keeps the last one).
pub fn job_message(row: JobRow) -> pb::Job {
    let running = row.status == JobStatus::Running;
    let progress = progress_message(&row);
    pb::Job {
        id: row.id.to_string(),
        name: row.name,
        module_name: row.module_name.unwrap_or_default(),
        status: status_message(row.status).into(),
        priority: row.priority,
        payload: Some(json_to_struct(row.payload)),
        result: row.result.map(json_to_value),
        error: row.error.map(json_to_struct),
        attempts: row.attempts,
        max_attempts: row.max_attempts,
        schedule_time: Some(timestamp(row.scheduled_at)),
        start_time: row.started_at.map(timestamp),
        complete_time: row.completed_at.map(timestamp),
        fail_time: row.failed_at.map(timestamp),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
        idempotency_key: row.idempotency_key.unwrap_or_default(),
        worker_id: row.worker_id.unwrap_or_default(),
        lease_expire_time: row.lease_expires_at.filter(|_| running).map(timestamp),
        creator: row.created_by.map(|id| id.to_string()).unwrap_or_default(),
        progress,
        schedule_id: row.schedule_id.map(|id| id.to_string()).unwrap_or_default(),
        concurrency_key: row.concurrency_key.unwrap_or_default(),
        rate_limit: row.rate_limit.unwrap_or_default(),
    }
}

/// The progress a job shows: what was last reported on its latest attempt
/// (a new attempt starts with none; a finished job keeps its last). Never
/// while PENDING: a job retried (RetryJob) or whose lease was lost waits
/// with the attempt count of its last run, whose progress is not the next
/// run's.
fn progress_message(row: &JobRow) -> Option<pb::JobProgress> {
    if row.status == JobStatus::Pending || row.progress_attempt != Some(row.attempts) {
        return None;
    }
    let progress = Progress::from_json(row.progress.as_ref()?);
    Some(pb::JobProgress {
        percent: progress.percent,
        message: progress.message,
        details: progress.details.map(json_to_struct),
        update_time: row.progress_at.map(timestamp),
    })
}

/// A `CreateJobRequest` as a spec (its shapes are checked by the queue,
/// [`JobSpec::validate`]); `prefix` names it in a batch (`requests[3].`).
/// Empty strings and 0 mean "not given"; an unset payload is `{}`.
pub fn job_spec(request: pb::CreateJobRequest, prefix: &str) -> Result<JobSpec, AppError> {
    Ok(JobSpec {
        name: request.name,
        module_name: (!request.module_name.is_empty()).then_some(request.module_name),
        payload: request
            .payload
            .map(struct_to_json)
            .unwrap_or_else(|| serde_json::json!({})),
        priority: request.priority,
        max_attempts: match request.max_attempts {
            0 => None,
            n => Some(n),
        },
        schedule_at: optional_time(
            &format!("{prefix}schedule_time"),
            request.schedule_time.as_ref(),
        )?,
        idempotency_key: (!request.idempotency_key.is_empty()).then_some(request.idempotency_key),
        traceparent: None,
        concurrency_key: (!request.concurrency_key.is_empty()).then_some(request.concurrency_key),
        concurrency_max: match request.concurrency_max {
            0 => None,
            n => Some(n),
        },
        rate_limit: (!request.rate_limit.is_empty()).then_some(request.rate_limit),
    })
}

/// The state a list filters on; `UNSPECIFIED` is every state.
pub(super) fn status_filter(status: i32) -> Result<Option<JobStatus>, AppError> {
    Ok(match pb::JobStatus::try_from(status) {
        Ok(pb::JobStatus::Unspecified) => None,
        Ok(pb::JobStatus::Pending) => Some(JobStatus::Pending),
        Ok(pb::JobStatus::Running) => Some(JobStatus::Running),
        Ok(pb::JobStatus::Completed) => Some(JobStatus::Completed),
        Ok(pb::JobStatus::Failed) => Some(JobStatus::Failed),
        Ok(pb::JobStatus::Cancelled) => Some(JobStatus::Cancelled),
        Err(_) => return Err(AppError::invalid("status", "is not a JobStatus")),
    })
}

/// The filters of a `ListJobsRequest` (its page is read apart).
pub fn job_filter(request: &pb::ListJobsRequest) -> Result<JobFilter, AppError> {
    let non_empty = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    Ok(JobFilter {
        status: status_filter(request.status)?,
        module_name: non_empty(&request.module_name),
        name: non_empty(&request.name),
        created_from: optional_time("create_time_start", request.create_time_start.as_ref())?,
        created_until: optional_time("create_time_end", request.create_time_end.as_ref())?,
        before: None,
        error_prefix: non_empty(&request.error_message_prefix),
        failed_from: optional_time("fail_time_start", request.fail_time_start.as_ref())?,
        failed_until: optional_time("fail_time_end", request.fail_time_end.as_ref())?,
        finished_from: optional_time("finish_time_start", request.finish_time_start.as_ref())?,
        finished_until: optional_time("finish_time_end", request.finish_time_end.as_ref())?,
        schedule_id: match request.schedule_id.as_str() {
            "" => None,
            id => Some(super::id("schedule_id", id)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    fn row(status: JobStatus) -> JobRow {
        let now = DateTime::from_timestamp(1_700_000_000, 0)
            .unwrap()
            .naive_utc();
        JobRow {
            name: "backup.run".into(),
            payload: serde_json::json!({"n": 1}),
            result: Some(serde_json::json!(42)),
            started_at: Some(now),
            lease_expires_at: Some(now),
            ..JobRow::sample(status, now)
        }
    }

    #[test]
    fn the_lease_end_is_shown_only_while_running() {
        assert!(
            job_message(row(JobStatus::Running))
                .lease_expire_time
                .is_some()
        );
        assert!(
            job_message(row(JobStatus::Completed))
                .lease_expire_time
                .is_none()
        );
    }

    #[test]
    fn progress_is_shown_for_the_latest_attempt_only() {
        let mut job = row(JobStatus::Running);
        assert_eq!(job_message(job.clone()).progress, None);
        job.progress = Some(serde_json::json!({"percent": 40.0, "message": "copying"}));
        job.progress_attempt = Some(1);
        job.progress_at = Some(job.updated_at);
        let shown = job_message(job.clone()).progress.expect("shown");
        assert_eq!(shown.percent, Some(40.0));
        assert_eq!(shown.message, "copying");
        assert_eq!(shown.details, None);
        assert!(shown.update_time.is_some());
        // A new attempt starts clean.
        job.attempts = 2;
        assert_eq!(job_message(job).progress, None);
    }

    #[test]
    fn a_result_that_is_no_object_stays_a_value() {
        let message = job_message(row(JobStatus::Completed));
        assert_eq!(
            message.result.map(super::super::json::value_to_json),
            Some(serde_json::json!(42))
        );
        assert_eq!(message.module_name, "");
        assert_eq!(message.creator, "");
    }

    #[test]
    fn empty_fields_of_a_create_request_mean_not_given() {
        let spec = job_spec(
            pb::CreateJobRequest {
                name: "a".into(),
                ..Default::default()
            },
            "",
        )
        .unwrap();
        assert_eq!(spec.module_name, None);
        assert_eq!(spec.max_attempts, None);
        assert_eq!(spec.idempotency_key, None);
        assert_eq!(spec.schedule_at, None);
        assert_eq!(spec.payload, serde_json::json!({}));
    }

    #[test]
    fn a_bad_schedule_time_in_a_batch_names_its_request() {
        let request = pb::CreateJobRequest {
            name: "a".into(),
            schedule_time: Some(prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            }),
            ..Default::default()
        };
        let error = job_spec(request, "requests[2].").unwrap_err();
        assert!(
            error.to_string().starts_with("requests[2].schedule_time: "),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_status_filter_is_refused() {
        let request = pb::ListJobsRequest {
            status: 99,
            ..Default::default()
        };
        assert_eq!(
            job_filter(&request).unwrap_err().to_string(),
            "status: is not a JobStatus"
        );
        let all = pb::ListJobsRequest::default();
        assert_eq!(job_filter(&all).unwrap().status, None);
    }
}
