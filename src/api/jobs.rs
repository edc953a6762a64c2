//! `JobService`. The job queue and worker stream are not built yet: the
//! contract is in place and every RPC answers UNIMPLEMENTED (generated default
//! methods) until the job-dispatch work lands.

use crate::proto::automation_v1::job_service_server::JobService;

/// Handlers of `automation.v1.JobService`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobApi;

#[tonic::async_trait]
impl JobService for JobApi {}
