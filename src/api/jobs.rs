//! `JobService`: the queue for clients (create, read, cancel, retry, watch)
//! and the Work stream for workers, which the dispatcher serves.

use std::time::Duration;

use tonic::{Request, Response, Status, Streaming};

use super::{
    actor_of,
    json::{json_to_struct, json_to_value, struct_to_json},
    naive_time, timestamp,
};
use crate::{
    dispatch::Dispatcher,
    domain::{
        jobs::{JobSpec, Jobs},
        validate,
    },
    error::AppError,
    proto::automation_v1::{self as pb, job_service_server::JobService},
    store::{
        jobs::{JobFilter, JobRow, JobStatus},
        pagination::PageRequest,
    },
};

/// Handlers of `automation.v1.JobService`.
#[derive(Clone)]
pub struct JobApi {
    jobs: Jobs,
    dispatcher: Dispatcher,
}

impl JobApi {
    /// Handlers over the queue and this replica's dispatcher.
    pub fn new(jobs: Jobs, dispatcher: Dispatcher) -> Self {
        Self { jobs, dispatcher }
    }
}

/// The wire state of a job.
pub(crate) fn status_message(status: JobStatus) -> pb::JobStatus {
    match status {
        JobStatus::Pending => pb::JobStatus::Pending,
        JobStatus::Running => pb::JobStatus::Running,
        JobStatus::Completed => pb::JobStatus::Completed,
        JobStatus::Failed => pb::JobStatus::Failed,
        JobStatus::Cancelled => pb::JobStatus::Cancelled,
    }
}

/// The wire `Job` of a row.
pub(crate) fn job_message(row: JobRow) -> pb::Job {
    let running = row.status == JobStatus::Running;
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
    }
}

/// A `CreateJobRequest` as a spec; `prefix` names it in a batch.
fn decode_spec(request: pb::CreateJobRequest, prefix: &str) -> Result<JobSpec, AppError> {
    let field = |name: &str| format!("{prefix}{name}");
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
        schedule_at: request
            .schedule_time
            .as_ref()
            .map(|t| naive_time(&field("schedule_time"), t))
            .transpose()?,
        idempotency_key: (!request.idempotency_key.is_empty()).then_some(request.idempotency_key),
    })
}

fn decode_filter(request: &pb::ListJobsRequest) -> Result<JobFilter, AppError> {
    let status = match pb::JobStatus::try_from(request.status) {
        Ok(pb::JobStatus::Unspecified) => None,
        Ok(pb::JobStatus::Pending) => Some(JobStatus::Pending),
        Ok(pb::JobStatus::Running) => Some(JobStatus::Running),
        Ok(pb::JobStatus::Completed) => Some(JobStatus::Completed),
        Ok(pb::JobStatus::Failed) => Some(JobStatus::Failed),
        Ok(pb::JobStatus::Cancelled) => Some(JobStatus::Cancelled),
        Err(_) => return Err(AppError::invalid("status", "is not a JobStatus")),
    };
    let non_empty = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    Ok(JobFilter {
        status,
        module_name: non_empty(&request.module_name),
        name: non_empty(&request.name),
        created_from: request
            .create_time_start
            .as_ref()
            .map(|t| naive_time("create_time_start", t))
            .transpose()?,
        created_until: request
            .create_time_end
            .as_ref()
            .map(|t| naive_time("create_time_end", t))
            .transpose()?,
        before: None,
    })
}

/// The duration as a protobuf one.
pub(crate) fn duration_message(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::CreateJobResponse>, Status> {
        let actor = actor_of(&request)?;
        let spec = decode_spec(request.into_inner(), "")?;
        let job = self.jobs.create(&actor, spec).await?;
        Ok(Response::new(pb::CreateJobResponse {
            job: Some(job_message(job)),
        }))
    }

    async fn batch_create_jobs(
        &self,
        request: Request<pb::BatchCreateJobsRequest>,
    ) -> Result<Response<pb::BatchCreateJobsResponse>, Status> {
        let actor = actor_of(&request)?;
        let specs = request
            .into_inner()
            .requests
            .into_iter()
            .enumerate()
            .map(|(index, r)| decode_spec(r, &format!("requests[{index}].")))
            .collect::<Result<Vec<_>, _>>()?;
        let jobs = self.jobs.create_batch(&actor, specs).await?;
        Ok(Response::new(pb::BatchCreateJobsResponse {
            jobs: jobs.into_iter().map(job_message).collect(),
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let id = validate::id("id", &request.get_ref().id)?;
        let job = self.jobs.get(id).await?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(job_message(job)),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let body = request.get_ref();
        let filter = decode_filter(body)?;
        let page = PageRequest::parse(body.page_size, &body.page_token)?;
        let page = self.jobs.list(filter, page).await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page.items.into_iter().map(job_message).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let actor = actor_of(&request)?;
        let id = validate::id("id", &request.get_ref().id)?;
        let job = self.jobs.cancel(&actor, id).await?;
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(job_message(job)),
        }))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        let actor = actor_of(&request)?;
        let id = validate::id("id", &request.get_ref().id)?;
        let job = self.jobs.retry(&actor, id).await?;
        Ok(Response::new(pb::RetryJobResponse {
            job: Some(job_message(job)),
        }))
    }

    type WatchJobStream = crate::dispatch::WatchJobStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let actor = actor_of(&request)?;
        let id = validate::id("id", &request.get_ref().id)?;
        Ok(Response::new(self.dispatcher.watch_job(actor, id).await?))
    }

    type WorkStream = crate::dispatch::WorkStream;

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let actor = actor_of(&request)?;
        Ok(Response::new(
            self.dispatcher.work(actor, request.into_inner()),
        ))
    }
}
