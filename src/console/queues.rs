//! Queues: per job name what waits, what waits for a later time, what
//! runs, what failed in the last hour, the oldest wait and whether it is
//! paused (ListQueues' function), with Pause and Resume per job name and
//! per module (PauseQueue and ResumeQueue's functions: the same rules,
//! `modules:execute` for a module's queue, the same audit rows).

use axum::{
    Form,
    extract::{Path, Query},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{Console, rpc, session::Viewer, views};
use crate::{
    error::AppError,
    store::{
        jobs::QueueKey,
        pagination::{Cursor, PageRequest},
    },
};

/// Queues per page.
const PAGE_SIZE: i64 = 100;

/// The page's query string.
#[derive(Debug, Default, Deserialize)]
pub struct QueuesQuery {
    /// Only this module's queues.
    #[serde(default)]
    pub module: String,
    #[serde(default)]
    pub page: String,
}

/// `GET /console/queues`
pub async fn page(
    Console(ctx): Console,
    viewer: Viewer,
    Query(query): Query<QueuesQuery>,
) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_QUEUES).await {
        return refused;
    }
    let result = async {
        let page = PageRequest {
            limit: PAGE_SIZE,
            after: Cursor::decode(&query.page)?,
        };
        let module = Some(query.module.trim().to_owned()).filter(|m| !m.is_empty());
        ctx.jobs.queues(module, page).await
    }
    .await;
    match result {
        Ok(page) => views::page(
            &viewer,
            views::Shell {
                title: "Queues",
                current: "Queues",
                live: None,
            },
            views::queues::content(&viewer, &query.module, &page),
        ),
        Err(error) => views::error_response(&error),
    }
}

/// A pause or resume form: the queue (`job` or `module`, and its name).
#[derive(Debug, Deserialize)]
pub struct QueueForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

fn key_of(form: &QueueForm) -> Result<QueueKey, AppError> {
    let name = form.name.trim().to_owned();
    if name.is_empty() {
        return Err(AppError::invalid("queue", "name a job name or a module"));
    }
    match form.kind.as_str() {
        "job" => Ok(QueueKey::Job(name)),
        "module" => Ok(QueueKey::Module(name)),
        _ => Err(AppError::invalid("queue", "is a job name or a module")),
    }
}

/// `POST /console/queues/{pause|resume}`: PauseQueue or ResumeQueue. It
/// answers once the queue's pending jobs are walked (or after the wait
/// PauseQueue has; the page then shows the queue as settling).
pub async fn act(
    Console(ctx): Console,
    viewer: Viewer,
    Path(action): Path<String>,
    Form(form): Form<QueueForm>,
) -> Response {
    let rpc = match action.as_str() {
        "pause" => rpc::PAUSE_QUEUE,
        "resume" => rpc::RESUME_QUEUE,
        _ => return views::error_response(&AppError::NotFound(format!("action {action}"))),
    };
    if let Err(refused) = viewer.authorize(&ctx, &form.csrf, rpc).await {
        return refused;
    }
    let key = match key_of(&form) {
        Ok(key) => key,
        Err(error) => return views::error_response(&error),
    };
    let result = if action == "pause" {
        ctx.jobs.pause(&viewer.actor, key).await.map(|_| ())
    } else {
        ctx.jobs.resume(&viewer.actor, key).await.map(|_| ())
    };
    match result {
        Ok(()) => Redirect::to("/console/queues").into_response(),
        Err(error) => views::error_response(&error),
    }
}
