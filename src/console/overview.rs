//! The Overview: per job name what waits, runs and failed in the last hour,
//! the oldest wait, connected workers, database health and the last hour's
//! throughput (an SVG drawn here). Needs what ListJobs needs.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

use super::{Console, rpc, session::Viewer, views};
use crate::domain::overview;

/// `GET /console/`
pub async fn page(Console(ctx): Console, viewer: Viewer) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_JOBS).await {
        return refused;
    }
    let queue = match overview::queue(&ctx.pool).await {
        Ok(queue) => queue,
        Err(error) => return views::error_response(&error),
    };
    let workers = ctx.dispatcher.stats();
    let database = ctx.readiness.not_ready();
    views::page(
        &viewer,
        views::Shell {
            title: "Overview",
            current: "Overview",
            live: None,
        },
        views::overview::content(&queue, workers, database),
    )
}

/// `GET /console/overview/throughput.svg`: the chart alone (the page
/// inlines the same drawing; this serves it as an image too).
pub async fn chart(Console(ctx): Console, viewer: Viewer) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_JOBS).await {
        return refused;
    }
    match overview::queue(&ctx.pool).await {
        Ok(queue) => (
            [(header::CONTENT_TYPE, "image/svg+xml")],
            views::overview::chart(&queue.minutes),
        )
            .into_response(),
        Err(error) => views::error_response(&error),
    }
}
