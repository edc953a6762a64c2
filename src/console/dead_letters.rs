//! Dead letters: FAILED jobs grouped by name and the start of their error
//! message, with counts and the newest failure, and per group a bulk Retry
//! (BatchRetryJobs' function, with the group as its JobFilter) and a bulk
//! Cancel of the group's jobs still queued or running (BatchCancelJobs').
//! Each call acts on at most [`MAX_BATCH_PAGE`] jobs, like one RPC call,
//! is audited like it, and the page says how many it acted on, which it
//! skipped and whether more match.

use axum::{
    Form,
    extract::{Path, Query},
    response::Response,
};
use serde::Deserialize;

use super::{Console, Ctx, rpc, session::Viewer, views};
use crate::{
    domain::{
        jobs::{BatchSelection, MAX_BATCH_PAGE},
        overview,
    },
    error::AppError,
    store::{
        self,
        jobs::{JobFilter, JobStatus},
        pagination::PageRequest,
    },
};

/// The windows the page offers, by their query value.
pub const WINDOWS: &[(&str, &str, i64)] = &[
    ("1h", "last hour", 3_600),
    ("24h", "last 24 hours", 86_400),
    ("7d", "last 7 days", 7 * 86_400),
    ("30d", "last 30 days", 30 * 86_400),
];

/// How many characters of the message make a group, as offered.
pub const PREFIXES: &[i32] = &[20, 40, 80, 200];

/// The page's query string.
#[derive(Debug, Default, Deserialize)]
pub struct DeadQuery {
    /// One of [`WINDOWS`] (default 7 days).
    #[serde(default)]
    pub window: String,
    /// Only this job name.
    #[serde(default)]
    pub name: String,
    /// One of [`PREFIXES`] (default 40).
    #[serde(default)]
    pub chars: String,
}

impl DeadQuery {
    /// The window's value and length.
    pub fn window(&self) -> Result<(&'static str, chrono::Duration), AppError> {
        let wanted = if self.window.is_empty() {
            "7d"
        } else {
            self.window.as_str()
        };
        WINDOWS
            .iter()
            .find(|(value, _, _)| *value == wanted)
            .map(|(value, _, secs)| (*value, chrono::Duration::seconds(*secs)))
            .ok_or_else(|| AppError::invalid("window", "is one of 1h, 24h, 7d, 30d"))
    }

    /// Characters of the message that make a group.
    pub fn chars(&self) -> Result<i32, AppError> {
        match self.chars.trim() {
            "" => Ok(40),
            text => text
                .parse::<i32>()
                .ok()
                .filter(|n| PREFIXES.contains(n))
                .ok_or_else(|| AppError::invalid("chars", "is one of 20, 40, 80, 200")),
        }
    }

    fn name(&self) -> Option<String> {
        Some(self.name.trim().to_owned()).filter(|n| !n.is_empty())
    }
}

/// What a bulk action did, for the page's notice.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `Retried` or `Cancelled`.
    pub verb: &'static str,
    pub name: String,
    pub prefix: String,
    /// Jobs acted on (the first ones are linked).
    pub done: Vec<uuid::Uuid>,
    /// Jobs left alone, with the state they were in.
    pub skipped: Vec<(uuid::Uuid, JobStatus)>,
    /// More jobs match: another call takes the next ones.
    pub more: bool,
}

/// `GET /console/dead-letters`
pub async fn page(
    Console(ctx): Console,
    viewer: Viewer,
    Query(query): Query<DeadQuery>,
) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_JOBS).await {
        return refused;
    }
    render(&ctx, &viewer, &query, None).await
}

async fn render(
    ctx: &Ctx,
    viewer: &Viewer,
    query: &DeadQuery,
    outcome: Option<&Outcome>,
) -> Response {
    let result = async {
        let (_, window) = query.window()?;
        overview::dead_letters(&ctx.pool, window, query.name(), query.chars()?).await
    }
    .await;
    match result {
        Ok(dead) => views::page(
            viewer,
            views::Shell {
                title: "Dead letters",
                current: "Dead letters",
                live: None,
            },
            views::dead_letters::content(viewer, query, &dead, outcome),
        ),
        Err(error) => views::error_response(&error),
    }
}

/// A bulk action's form: the group (job name and message start) and the
/// window it was seen in.
#[derive(Debug, Deserialize)]
pub struct GroupForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub window: String,
    #[serde(default)]
    pub chars: String,
}

/// `POST /console/dead-letters/{retry|cancel}`: one BatchRetryJobs call
/// over the group's FAILED jobs of the window, or one BatchCancelJobs
/// call over the group's jobs still PENDING or RUNNING (retrying after the
/// same error). Answers the page with what was done.
pub async fn act(
    Console(ctx): Console,
    viewer: Viewer,
    Path(action): Path<String>,
    Form(form): Form<GroupForm>,
) -> Response {
    let rpc = match action.as_str() {
        "retry" => rpc::BATCH_RETRY_JOBS,
        "cancel" => rpc::BATCH_CANCEL_JOBS,
        _ => return views::error_response(&AppError::NotFound(format!("action {action}"))),
    };
    if let Err(refused) = viewer.authorize(&ctx, &form.csrf, rpc).await {
        return refused;
    }
    let query = DeadQuery {
        window: form.window.clone(),
        name: String::new(),
        chars: form.chars.clone(),
    };
    let result = async {
        let (_, window) = query.window()?;
        if form.name.trim().is_empty() {
            return Err(AppError::invalid("name", "is required"));
        }
        // A group without a message has no prefix to filter by: acting on
        // it would take every failure of the name.
        if form.prefix.is_empty() {
            return Err(AppError::invalid(
                "prefix",
                "this group has no error message to select it by; act on its jobs one by one",
            ));
        }
        let mut filter = JobFilter {
            name: Some(form.name.trim().to_owned()),
            error_prefix: Some(form.prefix.clone()),
            ..JobFilter::default()
        };
        let selection = |filter: JobFilter| BatchSelection::Filter {
            filter: Box::new(filter),
            page: PageRequest::first(MAX_BATCH_PAGE),
        };
        if action == "retry" {
            filter.status = Some(JobStatus::Failed);
            filter.failed_from = Some(store::now() - window);
            let (page, skipped) = ctx
                .jobs
                .retry_batch(&viewer.actor, selection(filter))
                .await?;
            Ok(outcome("Retried", &form, page, skipped))
        } else {
            let (page, skipped) = ctx
                .jobs
                .cancel_batch(&viewer.actor, selection(filter))
                .await?;
            Ok(outcome("Cancelled", &form, page, skipped))
        }
    }
    .await;
    match result {
        Ok(outcome) => render(&ctx, &viewer, &query, Some(&outcome)).await,
        Err(error) => views::error_response(&error),
    }
}

fn outcome(
    verb: &'static str,
    form: &GroupForm,
    page: crate::domain::Page<store::jobs::JobRow>,
    skipped: Vec<(uuid::Uuid, JobStatus)>,
) -> Outcome {
    Outcome {
        verb,
        name: form.name.trim().to_owned(),
        prefix: form.prefix.clone(),
        done: page.items.iter().map(|job| job.id).collect(),
        skipped,
        more: !page.next_page_token.is_empty(),
    }
}
