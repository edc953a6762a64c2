//! The audit trail: filters by action, account, subject, outcome and time,
//! paged; each row links to its subject (a job, an account, a module, a
//! key). Needs what ListAuditLogs needs.

use axum::{extract::Query, response::Response};
use serde::Deserialize;
use uuid::Uuid;

use super::{Console, rpc, session::Viewer, views};
use crate::{
    error::AppError,
    store::{
        audit::AuditFilter,
        pagination::{Cursor, PageRequest},
    },
};

/// Rows per page.
const PAGE_SIZE: i64 = 50;

/// The filters, as the query string carries them (empty: any).
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    pub action: String,
    /// An account id.
    #[serde(default)]
    pub user: String,
    /// The exact subject (`jobs/<id>`).
    #[serde(default)]
    pub resource: String,
    /// `success` or `failure`.
    #[serde(default)]
    pub outcome: String,
    #[serde(default)]
    pub page: String,
}

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
pub async fn page(Console(ctx): Console, viewer: Viewer, Query(query): Query<AuditQuery>) -> Response {
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
