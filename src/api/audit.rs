//! `AuditService`: reading the audit trail.

use tonic::{Request, Response, Status};

use super::{naive_time, parse_id, timestamp};
use crate::{
    db,
    error::AppError,
    proto::automation_v1::{self as pb, audit_service_server::AuditService},
    server::AppState,
    store::{
        audit::{self, AuditFilter},
        models::AuditLogRow,
        pagination::{Cursor, page_size},
    },
};

/// Handlers of `automation.v1.AuditService`.
#[derive(Clone)]
pub struct AuditApi {
    state: AppState,
}

impl AuditApi {
    /// Handlers over shared state.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

/// A JSON object as a protobuf `Struct` (other JSON values are wrapped as
/// `{"value": ...}`).
pub(crate) fn json_to_struct(value: serde_json::Value) -> prost_types::Struct {
    match json_to_value(value).kind {
        Some(prost_types::value::Kind::StructValue(s)) => s,
        other => prost_types::Struct {
            fields: [("value".to_owned(), prost_types::Value { kind: other })].into(),
        },
    }
}

/// Any JSON value as a protobuf `Value`.
pub(crate) fn json_to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
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

impl AuditApi {
    async fn inner_list(
        &self,
        request: pb::ListAuditLogsRequest,
    ) -> Result<pb::ListAuditLogsResponse, AppError> {
        let limit = page_size(request.page_size)?;
        if !matches!(request.outcome.as_str(), "" | "success" | "failure") {
            return Err(AppError::invalid(
                "outcome",
                "must be 'success' or 'failure'",
            ));
        }
        let filter = AuditFilter {
            user_id: match request.user_id.as_str() {
                "" => None,
                id => Some(parse_id("user_id", id)?),
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
            before: match Cursor::decode(&request.page_token)? {
                Some(cursor) => Some((cursor.time()?, cursor.id)),
                None => None,
            },
        };
        let mut conn = db::connect(&self.state.pool).await?;
        let mut rows = audit::list(&mut conn, &filter, limit + 1).await?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|last| Cursor::at_time(last.created_at, last.id).encode())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListAuditLogsResponse {
            audit_logs: rows.into_iter().map(audit_message).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_logs(
        &self,
        request: Request<pb::ListAuditLogsRequest>,
    ) -> Result<Response<pb::ListAuditLogsResponse>, Status> {
        Ok(Response::new(self.inner_list(request.into_inner()).await?))
    }
}
