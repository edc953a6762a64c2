//! Jobs: the list (filters by status, name, module and creation time,
//! paged) and a job's page (payload, result and error as JSON, attempts,
//! Cancel and Retry), live while the job runs: server-sent events from the
//! WatchJob machinery, or a refresh every few seconds with scripts off.

use std::{convert::Infallible, time::Duration};

use axum::{
    Form,
    extract::{Path, Query},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use chrono::NaiveDateTime;
use futures_util::StreamExt as _;
use uuid::Uuid;

use super::{Console, rpc, session::CsrfForm, session::Viewer, views, views::jobs::JobsQuery};
use crate::{
    error::AppError,
    proto::automation_v1 as pb,
    store::{
        jobs::{JobFilter, JobRow, JobStatus},
        pagination::{Cursor, PageRequest},
    },
};

/// Rows per page.
const PAGE_SIZE: i64 = 50;

fn parse_time(field: &str, text: &str) -> Result<Option<NaiveDateTime>, AppError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(Some)
        .ok_or_else(|| AppError::invalid(field, "expected YYYY-MM-DDTHH:MM (UTC)"))
}

/// The longest error prefix a filter takes (ListJobs' bound).
const ERROR_PREFIX_MAX_BYTES: usize = 1024;

fn filter_of(query: &JobsQuery) -> Result<JobFilter, AppError> {
    if query.error.len() > ERROR_PREFIX_MAX_BYTES {
        return Err(AppError::invalid("error", "is too long"));
    }
    let status = match query.status.trim() {
        "" => None,
        label => Some(
            JobStatus::ALL
                .iter()
                .copied()
                .find(|s| s.label() == label)
                .ok_or_else(|| AppError::invalid("status", "is not a job status"))?,
        ),
    };
    let text = |value: &str| Some(value.trim().to_owned()).filter(|v| !v.is_empty());
    Ok(JobFilter {
        status,
        name: text(&query.name),
        module_name: text(&query.module),
        created_from: parse_time("from", &query.from)?,
        created_until: parse_time("until", &query.until)?,
        schedule_id: match query.schedule.trim() {
            "" => None,
            id => Some(
                Uuid::try_parse(id)
                    .map_err(|_| AppError::invalid("schedule", "is not a schedule id"))?,
            ),
        },
        error_prefix: Some(query.error.clone()).filter(|p| !p.is_empty()),
        ..JobFilter::default()
    })
}

/// `GET /console/jobs`
pub async fn list(
    Console(ctx): Console,
    viewer: Viewer,
    Query(query): Query<JobsQuery>,
) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_JOBS).await {
        return refused;
    }
    let result = async {
        let filter = filter_of(&query)?;
        let page = PageRequest {
            limit: PAGE_SIZE,
            after: Cursor::decode(&query.page)?,
        };
        ctx.jobs.list(filter, page).await
    }
    .await;
    match result {
        Ok(page) => views::page(
            &viewer,
            views::Shell {
                title: "Jobs",
                current: "Jobs",
                live: None,
            },
            views::jobs::list(&query, &page),
        ),
        Err(error) => views::error_response(&error),
    }
}

fn job_id(text: &str) -> Result<Uuid, AppError> {
    Uuid::try_parse(text).map_err(|_| AppError::invalid("id", "is not a job id"))
}

/// `GET /console/jobs/{id}`
pub async fn show(Console(ctx): Console, viewer: Viewer, Path(id): Path<String>) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::GET_JOB).await {
        return refused;
    }
    let job = match job_id(&id) {
        Ok(id) => ctx.jobs.get(id).await,
        Err(error) => Err(error),
    };
    match job {
        Ok(job) => {
            let live = (!job.status.is_terminal() && viewer.may(rpc::WATCH_JOB))
                .then(|| format!("/console/jobs/{}/events", job.id));
            let title = format!("Job {}", job.name);
            let attempts = super::attempts::section(&ctx, &viewer, &job).await;
            views::page(
                &viewer,
                views::Shell {
                    title: &title,
                    current: "Jobs",
                    live,
                },
                maud::html! { (views::jobs::show(&viewer, &job, &live_state(&job))) (attempts) },
            )
        }
        Err(error) => views::error_response(&error),
    }
}

/// What the script compares each event with: the page is reloaded when
/// the job's status, attempt or shown progress changed since it was
/// rendered (progress is written at most once a second).
pub fn live_state(job: &JobRow) -> String {
    let progress = views::jobs::shown_progress(job)
        .and(job.progress_at)
        .map(|at| at.and_utc().timestamp_millis().to_string())
        .unwrap_or_default();
    format!(
        "JOB_STATUS_{}|{}|{progress}",
        job.status.label(),
        job.attempts
    )
}

/// The same state of a job as WatchJob sends it.
fn event_state(job: &pb::Job) -> String {
    let status = pb::JobStatus::try_from(job.status)
        .map(|s| s.as_str_name())
        .unwrap_or("JOB_STATUS_UNSPECIFIED");
    let progress = job
        .progress
        .as_ref()
        .and_then(|p| p.update_time.as_ref())
        .map(|t| (t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).to_string())
        .unwrap_or_default();
    format!("{status}|{}|{progress}", job.attempts)
}

/// `GET /console/jobs/{id}/events`: the job's changes as server-sent
/// events (each event's data: `<status>|<attempt>|<progress time>`), from the WatchJob
/// machinery with its limits; ends when the job is settled.
pub async fn events(Console(ctx): Console, viewer: Viewer, Path(id): Path<String>) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::WATCH_JOB).await {
        return refused;
    }
    let stream = match job_id(&id) {
        Ok(id) => ctx.dispatcher.watch_job(viewer.actor.clone(), id).await,
        Err(error) => Err(error),
    };
    let stream = match stream {
        Ok(stream) => stream,
        Err(error) => return views::error_response(&error),
    };
    let events = stream
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(|item| {
            std::future::ready(item.ok().and_then(|message| message.job).map(|job| {
                Ok::<_, Infallible>(Event::default().event("job").data(event_state(&job)))
            }))
        });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn act(
    ctx: &super::Ctx,
    viewer: &Viewer,
    id: &str,
    csrf: &str,
    rpc: &str,
) -> Result<Uuid, Response> {
    viewer.authorize(ctx, csrf, rpc).await?;
    let id = job_id(id).map_err(|e| views::error_response(&e))?;
    let result = if rpc == super::rpc::CANCEL_JOB {
        ctx.jobs.cancel(&viewer.actor, id).await
    } else {
        ctx.jobs.retry(&viewer.actor, id).await
    };
    result
        .map(|job| job.id)
        .map_err(|e| views::error_response(&e))
}

/// `POST /console/jobs/{id}/cancel`: CancelJob.
pub async fn cancel(
    Console(ctx): Console,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    match act(&ctx, &viewer, &id, &form.csrf, rpc::CANCEL_JOB).await {
        Ok(id) => Redirect::to(&format!("/console/jobs/{id}")).into_response(),
        Err(response) => response,
    }
}

/// `POST /console/jobs/{id}/retry`: RetryJob.
pub async fn retry(
    Console(ctx): Console,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    match act(&ctx, &viewer, &id, &form.csrf, rpc::RETRY_JOB).await {
        Ok(id) => Redirect::to(&format!("/console/jobs/{id}")).into_response(),
        Err(response) => response,
    }
}
