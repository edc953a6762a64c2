//! The audit trail: filters by action, account, subject, outcome and time,
//! paged; each row links to its subject (a job, an account, a module, a
//! key). Needs what ListAuditLogs needs.

use axum::{extract::Query, response::Response};
use uuid::Uuid;

use super::{Console, rpc, session::Viewer, views, views::audit::AuditQuery};
use crate::{
    error::AppError,
    store::{
        audit::AuditFilter,
        pagination::{Cursor, PageRequest},
    },
};

/// Rows per page.
const PAGE_SIZE: i64 = 50;

fn filter_of(query: &AuditQuery) -> Result<AuditFilter, AppError> {
    let text = |value: &str| Some(value.trim().to_owned()).filter(|v| !v.is_empty());
    let user_id = match query.user.trim() {
        "" => None,
        id => Some(Uuid::try_parse(id).map_err(|_| AppError::invalid("user", "is not a user id"))?),
    };
    let outcome = text(&query.outcome);
    if outcome
        .as_deref()
        .is_some_and(|o| o != "success" && o != "failure")
    {
        return Err(AppError::invalid("outcome", "must be success or failure"));
    }
    Ok(AuditFilter {
        user_id,
        action: text(&query.action),
        resource: text(&query.resource),
        outcome,
        ..AuditFilter::default()
    })
}

/// `GET /console/audit`
pub async fn page(
    Console(ctx): Console,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_AUDIT_LOGS).await {
        return refused;
    }
    let result = async {
        let filter = filter_of(&query)?;
        let page = PageRequest {
            limit: PAGE_SIZE,
            after: Cursor::decode(&query.page)?,
        };
        ctx.identity.audit.list(filter, page).await
    }
    .await;
    match result {
        Ok(page) => views::page(
            &viewer,
            views::Shell {
                title: "Audit trail",
                current: "Audit trail",
                live: None,
            },
            views::audit::content(&query, &page),
        ),
        Err(error) => views::error_response(&error),
    }
}
