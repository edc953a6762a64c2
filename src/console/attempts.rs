//! A job's attempts on the console: the section of the job's page (its
//! first page of attempts, oldest first) and, for a job with more, the
//! whole history paged at `/console/jobs/{id}/attempts`. Needs what
//! ListJobAttempts needs; without it the job's page simply has no section.

use axum::{
    extract::{Path, Query},
    response::Response,
};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::{Console, Ctx, session::Viewer, views};
use crate::{
    error::AppError,
    store::{
        jobs::JobRow,
        pagination::{Cursor, PageRequest},
    },
};

/// The RPC whose permission the attempts need.
pub const LIST_JOB_ATTEMPTS: &str = "/automation.v1.JobService/ListJobAttempts";

/// Attempts shown per page (and on the job's page).
const PAGE_SIZE: i64 = 50;

/// The section of `job`'s page: nothing when the viewer may not list
/// attempts, the error in place when they cannot be read.
pub async fn section(ctx: &Ctx, viewer: &Viewer, job: &JobRow) -> Markup {
    if !viewer.may(LIST_JOB_ATTEMPTS) {
        return html! {};
    }
    match ctx
        .jobs
        .attempts(job.id, PageRequest::first(PAGE_SIZE))
        .await
    {
        Ok(page) => views::attempts::section(job.id, &page),
        Err(error) => views::attempts::unavailable(&error),
    }
}

/// The query of the full list: the page token.
#[derive(Debug, Default, Deserialize)]
pub struct AttemptsQuery {
    #[serde(default)]
    pub page: String,
}

/// `GET /console/jobs/{id}/attempts`: every attempt of a job, paged.
pub async fn page(
    Console(ctx): Console,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(query): Query<AttemptsQuery>,
) -> Response {
    if let Err(refused) = viewer.require(&ctx, LIST_JOB_ATTEMPTS).await {
        return refused;
    }
    let result = async {
        let id = Uuid::try_parse(&id).map_err(|_| AppError::invalid("id", "is not a job id"))?;
        let request = PageRequest {
            limit: PAGE_SIZE,
            after: Cursor::decode(&query.page)?,
        };
        Ok::<_, AppError>((id, ctx.jobs.attempts(id, request).await?))
    }
    .await;
    match result {
        Ok((id, page)) => views::page(
            &viewer,
            views::Shell {
                title: "Attempts",
                current: "Jobs",
                live: None,
            },
            views::attempts::full(id, &page),
        ),
        Err(error) => views::error_response(&error),
    }
}
