//! Who is calling, as the authorization layer established it. Handlers read
//! these from the request extensions.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use tonic::transport::server::TcpConnectInfo;
use uuid::Uuid;

use super::policy;
use crate::{
    error::AppError,
    store::{self, models::AuditLogRow},
};

/// The client's address and software, recorded in sessions and audit rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client IP: the TCP peer, or the first untrusted hop of
    /// `x-forwarded-for` when the peer is a trusted proxy.
    pub ip: String,
    /// The `user-agent` header (gRPC clients always send one).
    pub user_agent: String,
}

impl ClientInfo {
    /// Reads the client from an HTTP/2 request.
    pub fn from_http<B>(request: &http::Request<B>, trusted_proxies: &[IpAddr]) -> Self {
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        Self::from_parts(peer, request.headers(), trusted_proxies)
    }

    fn from_parts(peer: Option<SocketAddr>, headers: &HeaderMap, trusted: &[IpAddr]) -> Self {
        let mut ip = peer.map(|p| p.ip());
        if let Some(peer_ip) = ip
            && trusted.contains(&peer_ip)
            && let Some(forwarded) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
        {
            // Walk from the nearest hop outwards; the first address that is
            // not one of our proxies is the client.
            let hops: Vec<IpAddr> = forwarded
                .split(',')
                .filter_map(|hop| hop.trim().parse().ok())
                .collect();
            ip = hops
                .iter()
                .rev()
                .find(|hop| !trusted.contains(hop))
                .or(hops.first())
                .copied()
                .or(ip);
        }
        let user_agent = headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .take(512)
            .collect();
        Self {
            ip: ip
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "unknown".into()),
            user_agent,
        }
    }
}

/// An audit record of an action by `user_id` from `client`: the one place
/// that turns an event into an `audit_logs` row.
pub struct AuditEntry<'a> {
    pub user_id: Option<Uuid>,
    pub client: &'a ClientInfo,
    pub action: &'a str,
    pub resource: String,
    pub success: bool,
    pub details: serde_json::Value,
}

impl AuditEntry<'_> {
    /// The row to insert.
    pub fn row(&self) -> AuditLogRow {
        AuditLogRow {
            id: Uuid::now_v7(),
            user_id: self.user_id,
            action: self.action.to_owned(),
            resource: self.resource.clone(),
            outcome: if self.success { "success" } else { "failure" }.to_owned(),
            details: self.details.clone(),
            ip_address: self.client.ip.clone(),
            user_agent: self.client.user_agent.clone(),
            created_at: store::now(),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// Permissions of the caller's roles at the time of the call.
    pub permissions: Vec<String>,
}

impl Caller {
    /// Whether the caller holds `permission`.
    pub fn holds(&self, permission: &str) -> bool {
        policy::grants(&self.permissions, permission)
    }

    /// Refuses unless the caller holds every permission in `wanted`: nobody
    /// hands out what they do not have.
    pub fn ensure_holds_all(&self, wanted: &[String]) -> Result<(), AppError> {
        match wanted.iter().find(|p| !self.holds(p)) {
            None => Ok(()),
            Some(missing) => Err(AppError::PermissionDenied(format!(
                "you cannot grant '{missing}': you do not hold it yourself"
            ))),
        }
    }
}

/// The caller and client of a request, as the layer stored them.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Result<Caller, AppError> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| AppError::Unauthenticated("missing access token".into()))
}

/// The client of a request; empty when the layer did not run (never in the
/// server).
pub fn client_of<T>(request: &tonic::Request<T>) -> ClientInfo {
    request
        .extensions()
        .get::<ClientInfo>()
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", forwarded.parse().unwrap());
        headers.insert("user-agent", "grpcurl/1.9".parse().unwrap());
        headers
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let peer: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let info = ClientInfo::from_parts(Some(peer), &headers("198.51.100.1"), &[]);
        assert_eq!(info.ip, "203.0.113.9");
        assert_eq!(info.user_agent, "grpcurl/1.9");
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let peer = SocketAddr::new(proxy, 443);
        let info = ClientInfo::from_parts(Some(peer), &headers("198.51.100.1, 10.0.0.2"), &[proxy]);
        assert_eq!(info.ip, "198.51.100.1");
    }
}
