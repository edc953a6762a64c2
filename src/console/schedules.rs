//! Schedules: the list (cron, zone, paused, next and last fire, the last
//! job linked, the last error), a schedule's page with its recent jobs,
//! and the actions of ScheduleService: Pause, Resume, Trigger now, Delete
//! and a create form. Each needs its RPC's permission and calls the
//! function its handler calls ([`crate::domain::schedules::Schedules`]),
//! which checks what the schedule's jobs need and writes the audit row.

use axum::{
    Form,
    extract::{Path, Query},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{
    Console, Ctx, rpc,
    session::{CsrfForm, Viewer},
    views::{self, schedules::NewSchedule},
};
use crate::{
    domain::schedules::{JobTemplate, MissedFirePolicy, OverlapPolicy, ScheduleSpec},
    error::AppError,
    store::{
        jobs::JobFilter,
        pagination::{Cursor, PageRequest},
    },
};

/// Schedules per page.
const PAGE_SIZE: i64 = 100;

/// Recent jobs shown on a schedule's page.
const RECENT_JOBS: i64 = 20;

/// The list's query string.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only this module's schedules.
    #[serde(default)]
    pub module: String,
    #[serde(default)]
    pub page: String,
}

fn shell(title: &str) -> views::Shell<'_> {
    views::Shell {
        title,
        current: "Schedules",
        live: None,
    }
}

/// `GET /console/schedules`
pub async fn list(
    Console(ctx): Console,
    viewer: Viewer,
    Query(query): Query<ListQuery>,
) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_SCHEDULES).await {
        return refused;
    }
    render_list(&ctx, &viewer, &query, &NewSchedule::default(), None).await
}

async fn render_list(
    ctx: &Ctx,
    viewer: &Viewer,
    query: &ListQuery,
    form: &NewSchedule,
    refused: Option<&AppError>,
) -> Response {
    let result = async {
        let page = PageRequest {
            limit: PAGE_SIZE,
            after: Cursor::decode(&query.page)?,
        };
        let module = Some(query.module.trim().to_owned()).filter(|m| !m.is_empty());
        ctx.schedules.list(module, page).await
    }
    .await;
    match result {
        Ok(page) => {
            let content = views::schedules::list(viewer, &query.module, &page, form, refused);
            let mut response = views::page(viewer, shell("Schedules"), content);
            if let Some(error) = refused {
                *response.status_mut() = views::status_of(error);
            }
            response
        }
        Err(error) => views::error_response(&error),
    }
}

/// `GET /console/schedules/{id}`: one schedule by id or name.
pub async fn show(Console(ctx): Console, viewer: Viewer, Path(id): Path<String>) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::GET_SCHEDULE).await {
        return refused;
    }
    let schedule = match ctx.schedules.get(&id).await {
        Ok(schedule) => schedule,
        Err(error) => return views::error_response(&error),
    };
    // Its jobs, when the person may list jobs.
    let jobs = if viewer.may(rpc::LIST_JOBS) {
        let filter = JobFilter {
            schedule_id: Some(schedule.id),
            ..JobFilter::default()
        };
        match ctx.jobs.list(filter, PageRequest::first(RECENT_JOBS)).await {
            Ok(page) => Some(page.items),
            Err(error) => return views::error_response(&error),
        }
    } else {
        None
    };
    let title = format!("Schedule {}", schedule.name);
    views::page(
        &viewer,
        shell(&title),
        views::schedules::show(&viewer, &schedule, jobs.as_deref()),
    )
}

/// `POST /console/schedules/{id}/{pause|resume|trigger|delete}`
pub async fn act(
    Console(ctx): Console,
    viewer: Viewer,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let rpc = match action.as_str() {
        "pause" => rpc::PAUSE_SCHEDULE,
        "resume" => rpc::RESUME_SCHEDULE,
        "trigger" => rpc::TRIGGER_SCHEDULE,
        "delete" => rpc::DELETE_SCHEDULE,
        _ => return views::error_response(&AppError::NotFound(format!("action {action}"))),
    };
    if let Err(refused) = viewer.authorize(&ctx, &form.csrf, rpc).await {
        return refused;
    }
    let actor = &viewer.actor;
    let schedules = &ctx.schedules;
    let result = match action.as_str() {
        "pause" => schedules
            .set_paused(actor, &id, true)
            .await
            .map(|row| format!("/console/schedules/{}", row.id)),
        "resume" => schedules
            .set_paused(actor, &id, false)
            .await
            .map(|row| format!("/console/schedules/{}", row.id)),
        // The new job's page: the person sees it run.
        "trigger" => schedules
            .trigger(actor, &id)
            .await
            .map(|(job, _)| format!("/console/jobs/{}", job.id)),
        _ => schedules
            .delete(actor, &id)
            .await
            .map(|()| "/console/schedules".to_owned()),
    };
    match result {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(error) => views::error_response(&error),
    }
}

/// The create form's fields and its CSRF token.
#[derive(Debug, Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(flatten)]
    pub schedule: NewSchedule,
}

/// `POST /console/schedules`: CreateSchedule. A refused form is shown
/// again with what was typed and the reason.
pub async fn create(
    Console(ctx): Console,
    viewer: Viewer,
    Form(form): Form<CreateForm>,
) -> Response {
    if let Err(refused) = viewer
        .authorize(&ctx, &form.csrf, rpc::CREATE_SCHEDULE)
        .await
    {
        return refused;
    }
    let created = match spec_of(&form.schedule) {
        Ok(spec) => ctx.schedules.create(&viewer.actor, spec).await,
        Err(error) => Err(error),
    };
    match created {
        Ok(row) => Redirect::to(&format!("/console/schedules/{}", row.id)).into_response(),
        Err(error) => {
            render_list(
                &ctx,
                &viewer,
                &ListQuery::default(),
                &form.schedule,
                Some(&error),
            )
            .await
        }
    }
}

/// The form as CreateSchedule's request (the domain validates the rest,
/// naming the RPC's fields).
fn spec_of(form: &NewSchedule) -> Result<ScheduleSpec, AppError> {
    let payload = match form.payload.trim() {
        "" => serde_json::json!({}),
        text => serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| AppError::invalid("payload", format!("is not JSON: {e}")))?,
    };
    if !payload.is_object() {
        return Err(AppError::invalid("payload", "must be a JSON object"));
    }
    let overlap = match form.overlap.as_str() {
        "" | "ALLOW" => OverlapPolicy::Allow,
        "SKIP" => OverlapPolicy::Skip,
        "CANCEL_PREVIOUS" => OverlapPolicy::CancelPrevious,
        _ => return Err(AppError::invalid("overlap_policy", "is not a policy")),
    };
    let missed = match form.missed.as_str() {
        "" | "SKIP" => MissedFirePolicy::Skip,
        "RUN_ONCE" => MissedFirePolicy::RunOnce,
        _ => return Err(AppError::invalid("missed_fire_policy", "is not a policy")),
    };
    let text = |value: &str| Some(value.trim().to_owned()).filter(|v| !v.is_empty());
    Ok(ScheduleSpec {
        name: form.name.trim().to_owned(),
        description: form.description.trim().to_owned(),
        cron_expression: form.cron.trim().to_owned(),
        time_zone: form.time_zone.trim().to_owned(),
        job_template: Some(JobTemplate {
            name: form.job_name.trim().to_owned(),
            module_name: text(&form.module),
            payload,
            priority: 0,
            max_attempts: None,
        }),
        overlap_policy: Some(overlap),
        missed_fire_policy: Some(missed),
        paused: form.paused.is_some(),
    })
}
