//! `ScheduleService`: jobs on a calendar. Handlers decode, call the
//! schedules ([`crate::domain::schedules`]) and encode.

use tonic::{Request, Response, Status};

use super::actor_of;
use crate::{
    domain::schedules::Schedules,
    proto::automation_v1::{self as pb, schedule_service_server::ScheduleService},
    store::pagination::PageRequest,
    wire::{
        jobs::job_message,
        schedules::{schedule_message, schedule_spec, schedule_update},
    },
};

/// Handlers of `automation.v1.ScheduleService`.
#[derive(Clone)]
pub struct ScheduleApi {
    schedules: Schedules,
}

impl ScheduleApi {
    /// Handlers over `schedules`.
    pub fn new(schedules: Schedules) -> Self {
        Self { schedules }
    }
}

#[tonic::async_trait]
impl ScheduleService for ScheduleApi {
    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        let actor = actor_of(&request)?;
        let spec = schedule_spec(request.into_inner())?;
        let schedule = self.schedules.create(&actor, spec).await?;
        Ok(Response::new(pb::CreateScheduleResponse {
            schedule: Some(schedule_message(schedule)),
        }))
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        let schedule = self.schedules.get(&request.get_ref().id).await?;
        Ok(Response::new(pb::GetScheduleResponse {
            schedule: Some(schedule_message(schedule)),
        }))
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let request = request.into_inner();
        let page = PageRequest::parse(request.page_size, &request.page_token)?;
        let module = (!request.module_name.is_empty()).then_some(request.module_name);
        let page = self.schedules.list(module, page).await?;
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: page.items.into_iter().map(schedule_message).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_schedule(
        &self,
        request: Request<pb::UpdateScheduleRequest>,
    ) -> Result<Response<pb::UpdateScheduleResponse>, Status> {
        let actor = actor_of(&request)?;
        let (key, update) = schedule_update(request.into_inner())?;
        let schedule = self.schedules.update(&actor, &key, update).await?;
        Ok(Response::new(pb::UpdateScheduleResponse {
            schedule: Some(schedule_message(schedule)),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let actor = actor_of(&request)?;
        self.schedules.delete(&actor, &request.get_ref().id).await?;
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        let actor = actor_of(&request)?;
        let schedule = self
            .schedules
            .set_paused(&actor, &request.get_ref().id, true)
            .await?;
        Ok(Response::new(pb::PauseScheduleResponse {
            schedule: Some(schedule_message(schedule)),
        }))
    }

    async fn resume_schedule(
        &self,
        request: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::ResumeScheduleResponse>, Status> {
        let actor = actor_of(&request)?;
        let schedule = self
            .schedules
            .set_paused(&actor, &request.get_ref().id, false)
            .await?;
        Ok(Response::new(pb::ResumeScheduleResponse {
            schedule: Some(schedule_message(schedule)),
        }))
    }

    async fn trigger_schedule(
        &self,
        request: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        let actor = actor_of(&request)?;
        let (job, schedule) = self
            .schedules
            .trigger(&actor, &request.get_ref().id)
            .await?;
        Ok(Response::new(pb::TriggerScheduleResponse {
            job: Some(job_message(job)),
            schedule: Some(schedule_message(schedule)),
        }))
    }
}
