//! `AuditService`: reading the audit trail.

use tonic::{Request, Response, Status};

use crate::{
    domain::audit::AuditTrail,
    proto::automation_v1::{self as pb, audit_service_server::AuditService},
    store::pagination::PageRequest,
    wire::audit::{audit_filter, audit_message},
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

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_logs(
        &self,
        request: Request<pb::ListAuditLogsRequest>,
    ) -> Result<Response<pb::ListAuditLogsResponse>, Status> {
        let body = request.get_ref();
        let filter = audit_filter(body)?;
        let page = PageRequest::parse(body.page_size, &body.page_token)?;
        let page = self.audit.list(filter, page).await?;
        Ok(Response::new(pb::ListAuditLogsResponse {
            audit_logs: page.items.into_iter().map(audit_message).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
