//! Assembles the gRPC server: the `automation.v1` services behind the
//! authorization layer, plus health and reflection, which stay open.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    server::NamedService,
    transport::{Server, server::TcpIncoming},
};

use crate::{
    api,
    auth::{
        AuthSettings,
        layer::{AuthLayer, Authorizer},
    },
    db::DbPool,
    domain::Identity,
    error::AppError,
    health, maintenance,
    proto::{self, automation_v1 as pb},
    reflection::Reflection,
};

/// What the server is built from.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: DbPool,
    /// Identity configuration.
    pub auth: Arc<AuthSettings>,
}

/// Server behaviour that is not about identity.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How often health probes the database.
    pub health_check_interval: Duration,
    /// After the shutdown signal, how long in-flight calls (and clients that
    /// keep connections open) get before the server closes them.
    pub shutdown_grace: Duration,
}

/// Names of the `automation.v1` services, as health and reflection know them.
pub const SERVICE_NAMES: &[&str] = &[
    <pb::auth_service_server::AuthServiceServer<api::auth::AuthApi> as NamedService>::NAME,
    <pb::user_service_server::UserServiceServer<api::users::UserApi> as NamedService>::NAME,
    <pb::role_service_server::RoleServiceServer<api::roles::RoleApi> as NamedService>::NAME,
    <pb::module_service_server::ModuleServiceServer<api::modules::ModuleApi> as NamedService>::NAME,
    <pb::job_service_server::JobServiceServer<api::jobs::JobApi> as NamedService>::NAME,
    <pb::audit_service_server::AuditServiceServer<api::audit::AuditApi> as NamedService>::NAME,
];

/// Serves on `listener` until `shutdown` completes, then drains in-flight
/// calls and returns.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    state.auth.passwords.prepare().await?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // One probe before serving, so that health answers for every service
    // from the first call.
    let mut database_health = health::DatabaseHealth::new(
        reporter,
        state.pool.clone(),
        SERVICE_NAMES.to_vec(),
        options
            .health_check_interval
            .max(Duration::from_millis(500)),
    );
    database_health.probe().await;
    let monitor = tokio::spawn(database_health.run(options.health_check_interval));

    let reflection = Reflection::new(&[
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ])
    .map_err(|e| AppError::internal(format!("reflection: {e}")))?;

    let identity = Identity::new(&state.pool, &state.auth);
    let authorizer = Authorizer {
        sessions: identity.sessions.clone(),
        audit: identity.audit.clone(),
        trusted_proxies: state.auth.trusted_proxies.clone(),
    };
    let background = tokio_util::sync::CancellationToken::new();
    let housekeeping = tokio::spawn(maintenance::run(
        identity.clone(),
        maintenance::INTERVAL,
        background.clone(),
    ));

    let (drain, drain_started) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .layer(AuthLayer::new(authorizer))
        .add_service(health_service)
        .add_service(reflection.v1())
        .add_service(reflection.v1alpha())
        .add_service(pb::auth_service_server::AuthServiceServer::new(
            api::auth::AuthApi::new(identity.sessions.clone()),
        ))
        .add_service(pb::user_service_server::UserServiceServer::new(
            api::users::UserApi::new(identity.accounts.clone()),
        ))
        .add_service(pb::role_service_server::RoleServiceServer::new(
            api::roles::RoleApi::new(identity.roles.clone()),
        ))
        .add_service(pb::module_service_server::ModuleServiceServer::new(
            api::modules::ModuleApi,
        ))
        .add_service(pb::job_service_server::JobServiceServer::new(
            api::jobs::JobApi,
        ))
        .add_service(pb::audit_service_server::AuditServiceServer::new(
            api::audit::AuditApi::new(identity.audit.clone()),
        ))
        .serve_with_incoming_shutdown(incoming(listener), async {
            let _ = drain_started.await;
        });
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown => {
            // Stop accepting, let open calls finish, but do not wait forever
            // for clients that keep their connections (and streams) open.
            let _ = drain.send(());
            match tokio::time::timeout(options.shutdown_grace, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(
                        grace_ms = options.shutdown_grace.as_millis() as u64,
                        "connections still open after the shutdown grace period; closing them"
                    );
                    Ok(())
                }
            }
        }
    };
    monitor.abort();
    background.cancel();
    let _ = housekeeping.await;
    result.map_err(|e| AppError::internal(format!("gRPC server: {e}")))
}

/// Accepted connections with Nagle off (small gRPC frames must not wait for
/// delayed ACKs) and TCP keepalive on (dead worker streams are noticed).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}
