//! `AuditService`: reading the audit trail.

use tonic::{Request, Response, Status};

use super::{json::json_to_struct, naive_time, timestamp};
use crate::{
    domain::{audit::AuditTrail, validate},
    error::AppError,
    proto::automation_v1::{self as pb, audit_service_server::AuditService},
    store::{audit::AuditFilter, models::AuditLogRow, pagination::PageRequest},
};

/// Handlers of `automation.v1.AuditService`.
#[derive(Clone)]
pub struct AuditApi {
    audit: AuditTrail,
}

impl AuditApi {
    /// Handlers over the audit trail.
    pub fn new(audit: AuditTrail) -> Self {
        Self { audit }
    }
}

fn audit_message(row: AuditLogRow) -> pb::AuditLog {
    pb::AuditLog {
        id: row.id.to_string(),
        user_id: row.user_id.map(|id| id.to_string()).unwrap_or_default(),
        action: row.action,
        resource: row.resource,
        outcome: row.outcome,
        details: Some(json_to_struct(row.details)),
        ip_address: row.ip_address,
        user_agent: row.user_agent,
        create_time: Some(timestamp(row.created_at)),
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

fn decode_filter(request: &pb::ListAuditLogsRequest) -> Result<AuditFilter, AppError> {
    if !matches!(request.outcome.as_str(), "" | "success" | "failure") {
        return Err(AppError::invalid(
            "outcome",
            "must be 'success' or 'failure'",
        ));
    }
    Ok(AuditFilter {
        user_id: match request.user_id.as_str() {
            "" => None,
            id => Some(validate::id("user_id", id)?),
        },
        action: non_empty(&request.action),
        resource: non_empty(&request.resource),
        outcome: non_empty(&request.outcome),
        since: request
            .start_time
            .as_ref()
            .map(|t| naive_time("start_time", t))
            .transpose()?,
        until: request
            .end_time
            .as_ref()
            .map(|t| naive_time("end_time", t))
            .transpose()?,
        before: None,
    })
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_logs(
        &self,
        request: Request<pb::ListAuditLogsRequest>,
    ) -> Result<Response<pb::ListAuditLogsResponse>, Status> {
        let body = request.get_ref();
        let filter = decode_filter(body)?;
        let page = PageRequest::parse(body.page_size, &body.page_token)?;
        let page = self.audit.list(filter, page).await?;
        Ok(Response::new(pb::ListAuditLogsResponse {
            audit_logs: page.items.into_iter().map(audit_message).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
