//! The audit trail. Rows are written inside the transaction of the change they
//! record, so a change and its record commit or vanish together.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::AuditLogRow;
use crate::schema::audit_logs;

/// Appends a record.
pub async fn insert(conn: &mut AsyncPgConnection, row: &AuditLogRow) -> QueryResult<()> {
    diesel::insert_into(audit_logs::table)
        .values(row)
        .execute(conn)
        .await
        .map(drop)
}

/// Filters of [`list`]; they combine with AND.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub user_id: Option<Uuid>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<NaiveDateTime>,
    pub until: Option<NaiveDateTime>,
    /// Continue before this (createdAt, id): the list runs newest first.
    pub before: Option<(NaiveDateTime, Uuid)>,
}

/// Lists records newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &AuditFilter,
    limit: i64,
) -> QueryResult<Vec<AuditLogRow>> {
    let mut query = audit_logs::table
        .select(AuditLogRow::as_select())
        .into_boxed();
    if let Some(user_id) = filter.user_id {
        query = query.filter(audit_logs::user_id.eq(user_id));
    }
    if let Some(action) = &filter.action {
        query = query.filter(audit_logs::action.eq(action.clone()));
    }
    if let Some(resource) = &filter.resource {
        query = query.filter(audit_logs::resource.eq(resource.clone()));
    }
    if let Some(outcome) = &filter.outcome {
        query = query.filter(audit_logs::outcome.eq(outcome.clone()));
    }
    if let Some(since) = filter.since {
        query = query.filter(audit_logs::created_at.ge(since));
    }
    if let Some(until) = filter.until {
        query = query.filter(audit_logs::created_at.lt(until));
    }
    if let Some((time, id)) = filter.before {
        query = query.filter(
            audit_logs::created_at
                .lt(time)
                .or(audit_logs::created_at.eq(time).and(audit_logs::id.lt(id))),
        );
    }
    query
        .order((audit_logs::created_at.desc(), audit_logs::id.desc()))
        .limit(limit)
        .load(conn)
        .await
}
