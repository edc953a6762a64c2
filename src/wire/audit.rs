//! `AuditLog` messages and the filters of `ListAuditLogs`.

use super::{
    json::json_to_struct,
    time::{optional_time, timestamp},
};
use crate::{
    domain::validate,
    error::AppError,
    proto::automation_v1 as pb,
    store::{audit::AuditFilter, models::AuditLogRow},
};

/// The wire `AuditLog` of a row.
pub fn audit_message(row: AuditLogRow) -> pb::AuditLog {
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

/// The filters of a `ListAuditLogsRequest` (its page is read apart); empty
/// fields filter nothing.
pub fn audit_filter(request: &pb::ListAuditLogsRequest) -> Result<AuditFilter, AppError> {
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
        since: optional_time("start_time", request.start_time.as_ref())?,
        until: optional_time("end_time", request.end_time.as_ref())?,
        before: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_refuse_unknown_outcomes_and_bad_ids() {
        let outcome = pb::ListAuditLogsRequest {
            outcome: "maybe".into(),
            ..Default::default()
        };
        assert_eq!(
            audit_filter(&outcome).unwrap_err().to_string(),
            "outcome: must be 'success' or 'failure'"
        );
        let user = pb::ListAuditLogsRequest {
            user_id: "x".into(),
            ..Default::default()
        };
        assert_eq!(
            audit_filter(&user).unwrap_err().to_string(),
            "user_id: is not a UUID"
        );
        let everything = audit_filter(&pb::ListAuditLogsRequest::default()).unwrap();
        assert_eq!((everything.user_id, everything.outcome), (None, None));
    }
}
