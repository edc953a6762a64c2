//! `JobService`: the queue for clients (create, read, cancel, retry, watch)
//! and the Work stream for workers, which the dispatcher serves.

use tonic::{Request, Response, Status, Streaming};

use super::actor_of;
use crate::{
    dispatch::Dispatcher,
    domain::jobs::Jobs,
    proto::automation_v1::{self as pb, job_service_server::JobService},
    store::pagination::PageRequest,
    wire::{
        self,
        jobs::{job_filter, job_message, job_spec},
        queues::{batch_selection, pause_message, queue_key, queue_message, skipped_message},
        rate_limits::{rate_limit_message, rate_limit_spec},
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

#[tonic::async_trait]
impl JobService for JobApi {
    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::CreateJobResponse>, Status> {
        let actor = actor_of(&request)?;
        let traceparent = trace_parent(&request);
        let mut spec = job_spec(request.into_inner(), "")?;
        spec.traceparent = traceparent;
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
        let traceparent = trace_parent(&request);
        let specs = request
            .into_inner()
            .requests
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                job_spec(r, &format!("requests[{index}].")).map(|mut spec| {
                    spec.traceparent.clone_from(&traceparent);
                    spec
                })
            })
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
        let id = wire::id("id", &request.get_ref().id)?;
        let job = self.jobs.get(id).await?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(job_message(job)),
        }))
    }

    async fn list_job_attempts(
        &self,
        request: Request<pb::ListJobAttemptsRequest>,
    ) -> Result<Response<pb::ListJobAttemptsResponse>, Status> {
        let body = request.get_ref();
        let id = wire::id("job_id", &body.job_id)?;
        let page = PageRequest::parse(body.page_size, &body.page_token)?;
        let page = self.jobs.attempts(id, page).await?;
        Ok(Response::new(pb::ListJobAttemptsResponse {
            attempts: page
                .items
                .into_iter()
                .map(wire::attempts::attempt_message)
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let body = request.get_ref();
        let filter = job_filter(body)?;
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
        let id = wire::id("id", &request.get_ref().id)?;
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
        let id = wire::id("id", &request.get_ref().id)?;
        let job = self.jobs.retry(&actor, id).await?;
        Ok(Response::new(pb::RetryJobResponse {
            job: Some(job_message(job)),
        }))
    }

    async fn batch_retry_jobs(
        &self,
        request: Request<pb::BatchRetryJobsRequest>,
    ) -> Result<Response<pb::BatchRetryJobsResponse>, Status> {
        let actor = actor_of(&request)?;
        let body = request.get_ref();
        let selection = batch_selection(
            &body.ids,
            body.filter.as_ref(),
            body.page_size,
            &body.page_token,
        )?;
        let (page, skipped) = self.jobs.retry_batch(&actor, selection).await?;
        Ok(Response::new(pb::BatchRetryJobsResponse {
            jobs: page.items.into_iter().map(job_message).collect(),
            next_page_token: page.next_page_token,
            skipped: skipped.into_iter().map(skipped_message).collect(),
        }))
    }

    async fn batch_cancel_jobs(
        &self,
        request: Request<pb::BatchCancelJobsRequest>,
    ) -> Result<Response<pb::BatchCancelJobsResponse>, Status> {
        let actor = actor_of(&request)?;
        let body = request.get_ref();
        let selection = batch_selection(
            &body.ids,
            body.filter.as_ref(),
            body.page_size,
            &body.page_token,
        )?;
        let (page, skipped) = self.jobs.cancel_batch(&actor, selection).await?;
        Ok(Response::new(pb::BatchCancelJobsResponse {
            jobs: page.items.into_iter().map(job_message).collect(),
            next_page_token: page.next_page_token,
            skipped: skipped.into_iter().map(skipped_message).collect(),
        }))
    }

    async fn pause_queue(
        &self,
        request: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        let actor = actor_of(&request)?;
        let key = queue_key(request.get_ref().queue.as_ref())?;
        let (pause, walked) = self.jobs.pause(&actor, key).await?;
        Ok(Response::new(pb::PauseQueueResponse {
            pause: Some(pause_message(pause)),
            held_jobs: walked.held_now,
            settling: walked.settling,
        }))
    }

    async fn resume_queue(
        &self,
        request: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        let actor = actor_of(&request)?;
        let key = queue_key(request.get_ref().queue.as_ref())?;
        let (resumed, walked) = self.jobs.resume(&actor, key).await?;
        Ok(Response::new(pb::ResumeQueueResponse {
            resumed,
            released_jobs: walked.released,
            settling: walked.settling,
        }))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let body = request.get_ref();
        let page = PageRequest::parse(body.page_size, &body.page_token)?;
        let module = (!body.module_name.is_empty()).then(|| body.module_name.clone());
        let page = self.jobs.queues(module, page).await?;
        Ok(Response::new(pb::ListQueuesResponse {
            queues: page.queues.items.into_iter().map(queue_message).collect(),
            next_page_token: page.queues.next_page_token,
            pauses: page.pauses.into_iter().map(pause_message).collect(),
        }))
    }

    type WatchJobStream = crate::dispatch::WatchJobStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let actor = actor_of(&request)?;
        let id = wire::id("id", &request.get_ref().id)?;
        Ok(Response::new(self.dispatcher.watch_job(actor, id).await?))
    }

    async fn put_rate_limit(
        &self,
        request: Request<pb::PutRateLimitRequest>,
    ) -> Result<Response<pb::PutRateLimitResponse>, Status> {
        let actor = actor_of(&request)?;
        let spec = rate_limit_spec(request.into_inner().rate_limit);
        let row = self.jobs.put_rate_limit(&actor, spec).await?;
        Ok(Response::new(pb::PutRateLimitResponse {
            rate_limit: Some(rate_limit_message(row)),
        }))
    }

    async fn list_rate_limits(
        &self,
        request: Request<pb::ListRateLimitsRequest>,
    ) -> Result<Response<pb::ListRateLimitsResponse>, Status> {
        let body = request.get_ref();
        let page = PageRequest::parse(body.page_size, &body.page_token)?;
        let page = self.jobs.list_rate_limits(page).await?;
        Ok(Response::new(pb::ListRateLimitsResponse {
            rate_limits: page.items.into_iter().map(rate_limit_message).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_rate_limit(
        &self,
        request: Request<pb::DeleteRateLimitRequest>,
    ) -> Result<Response<pb::DeleteRateLimitResponse>, Status> {
        let actor = actor_of(&request)?;
        self.jobs
            .delete_rate_limit(&actor, &request.get_ref().name)
            .await?;
        Ok(Response::new(pb::DeleteRateLimitResponse {}))
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

/// The call's W3C `traceparent`, as the RPC layer validated it.
fn trace_parent<T>(request: &Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<crate::telemetry::rpc::TraceParent>()
        .map(|trace| trace.0.clone())
}
