//! Assembles the gRPC server: the `automation.v1` services behind the
//! authorization layer, plus health and reflection, which stay open.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    server::NamedService,
    transport::{
        Server,
        server::{Router, TcpIncoming},
    },
};

use crate::{
    api::authorization::{AuthLayer, Authorizer},
    api::{
        self,
        codec::{
            budget::{BudgetSettings, RequestBudget},
            inspect::worst_create_job_cost,
            message_caps::{CapSettings, MessageCapLayer, MessageCaps},
        },
    },
    auth::{AuthSettings, callers::listener::CallerFeed},
    db::{self, DbPool},
    dispatch::{DispatchParts, Dispatcher},
    domain::{
        Identity,
        api_keys::ApiKeys,
        fleet::Fleet,
        jobs::{JobSettings, Jobs, leases::Leases},
        modules::Modules,
        schedules::{ScheduleSettings, Schedules},
    },
    error::AppError,
    health::{self, Readiness},
    http::HttpListener,
    maintenance::{
        self,
        retention::{Pruner, RetentionSettings},
    },
    proto::{self, automation_v1 as pb},
    reflection::Reflection,
    telemetry::{
        self,
        rpc::{CallerTapLayer, RpcLayer},
        sampler::SamplerSettings,
    },
    tls::{self, TlsFiles, TlsServer},
};

/// What the server is built from.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub pool: DbPool,
    /// The database's URL for direct sessions outside the pool: the job
    /// queue's LISTEN connection and claim loop (`LISTEN_DATABASE_URL`, or
    /// `DATABASE_URL`; never a transaction pooler).
    pub database_url: String,
    /// Identity configuration.
    pub auth: Arc<AuthSettings>,
    /// Job queue configuration.
    pub jobs: JobSettings,
}

/// Server behaviour that is not about identity or jobs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How often health probes the database.
    pub health_check_interval: Duration,
    /// After the shutdown signal, how long in-flight calls (and clients that
    /// keep connections open) get before the server closes them. Workers get
    /// three quarters of it to finish or release their jobs.
    pub shutdown_grace: Duration,
    /// How often the server pings each connection (HTTP/2 PING), so that a
    /// worker host that vanished without closing TCP is noticed.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Outer bound on every message the server decodes
    /// (`GRPC_MAX_MESSAGE_BYTES`). Each method's own cap follows from its
    /// largest legal request (see [`api::codec::message_caps`]); this one
    /// only lowers those that exceed it.
    pub max_message_bytes: usize,
    /// Largest BatchCreateJobs message (`JOB_BATCH_MAX_BYTES`): a batch is
    /// bounded in total, not as 1,000 payloads at their limit.
    pub batch_max_bytes: usize,
    /// The memory that requests carrying JSON documents may hold at once
    /// (`REQUEST_MEMORY_BUDGET_BYTES`; see [`api::codec::budget`]).
    pub request_budget: BudgetSettings,
    /// Serve TLS from these files (`TLS_CERT_FILE`, ...); `None` is
    /// plaintext.
    pub tls: Option<TlsFiles>,
    /// The HTTP port for health and metrics (`HTTP_ADDR`); `None`: off.
    pub http_listener: Option<HttpListener>,
    /// How often the metrics that need a query (jobs, table and index
    /// statistics, lock waits) are sampled (`METRICS_SAMPLE_INTERVAL_MS`).
    pub metrics_sample_interval: Duration,
    /// What the pruner deletes, and how often.
    pub retention: RetentionSettings,
    /// How schedules fire.
    pub schedules: ScheduleSettings,
    /// Serve the web console on the HTTP port (`CONSOLE`).
    pub console: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            health_check_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
            max_message_bytes: 16 * 1024 * 1024,
            batch_max_bytes: 8 * 1024 * 1024,
            request_budget: BudgetSettings::default(),
            tls: None,
            http_listener: None,
            metrics_sample_interval: Duration::from_secs(15),
            retention: RetentionSettings::default(),
            schedules: ScheduleSettings::default(),
            console: true,
        }
    }
}

/// Concurrent streams one HTTP/2 connection may open (close to hyper's own
/// default of 200, which tonic lifts).
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Names of the `automation.v1` services, as health and reflection know them.
pub const SERVICE_NAMES: &[&str] = &[
    <pb::auth_service_server::AuthServiceServer<api::auth::AuthApi> as NamedService>::NAME,
    <pb::user_service_server::UserServiceServer<api::users::UserApi> as NamedService>::NAME,
    <pb::role_service_server::RoleServiceServer<api::roles::RoleApi> as NamedService>::NAME,
    <pb::module_service_server::ModuleServiceServer<api::modules::ModuleApi> as NamedService>::NAME,
    <pb::job_service_server::JobServiceServer<api::jobs::JobApi> as NamedService>::NAME,
    <pb::audit_service_server::AuditServiceServer<api::audit::AuditApi> as NamedService>::NAME,
    <pb::api_key_service_server::ApiKeyServiceServer<api::api_keys::ApiKeyApi> as NamedService>::NAME,
    <pb::schedule_service_server::ScheduleServiceServer<api::schedules::ScheduleApi> as NamedService>::NAME,
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
    db::ensure_same_database(&state.pool, &state.database_url).await?;
    let tls = match &options.tls {
        Some(files) => {
            let tls = TlsServer::load(files.clone()).await?;
            tracing::info!(mutual = tls.mutual(), "gRPC over TLS");
            Some(tls)
        }
        None => None,
    };
    let metrics = telemetry::install();
    let (reporter, health_service, monitor, readiness) = start_health(&state, &options).await;
    let http_stop = tokio_util::sync::CancellationToken::new();
    let console = options.console.then(crate::console::ConsoleSlot::new);
    let http = options.http_listener.clone().map(|listener| {
        tokio::spawn(crate::http::serve(
            listener,
            tls.clone(),
            readiness.clone(),
            metrics,
            console.clone(),
            http_stop.clone(),
        ))
    });
    let reflection = reflection()?;

    let mut identity = Identity::new(&state.pool, &state.auth);
    let background = tokio_util::sync::CancellationToken::new();
    // This replica's cache of callers, kept current by its own LISTEN
    // connection (see auth::callers).
    let callers = CallerFeed::new(
        state.auth.callers.clone(),
        state.pool.clone(),
        state.auth.channel_key.clone(),
    );
    identity.sessions = identity.sessions.with_caller_cache(callers.cache().clone());
    identity.accounts = identity.accounts.with_caller_cache(callers.cache().clone());
    let caller_changes = tokio::spawn(
        callers
            .clone()
            .run(state.database_url.clone(), background.clone()),
    );
    let authorizer = Authorizer {
        sessions: identity.sessions.clone(),
        audit: identity.audit.clone(),
        trusted_proxies: state.auth.trusted_proxies.clone(),
        callers: callers.clone(),
    };
    let housekeeping = tokio::spawn(maintenance::run(
        identity.clone(),
        maintenance::INTERVAL,
        background.clone(),
    ));
    let reloader = tls.as_ref().map(|t| t.spawn_reloader(background.clone()));
    let pruning = tokio::spawn(
        Pruner::new(
            state.pool.clone(),
            identity.throttle.clone(),
            options.retention,
        )
        .run(background.clone()),
    );

    let wake = Arc::new(tokio::sync::Notify::new());
    let jobs = Jobs::new(state.pool.clone(), state.jobs, wake.clone());
    let modules = Modules::new(state.pool.clone(), wake.clone());
    // The schedule firing loop, woken by any replica's change to a schedule
    // (through the dispatcher's LISTEN connection).
    let schedules_wake = Arc::new(tokio::sync::Notify::new());
    let schedules = Schedules::new(
        state.pool.clone(),
        jobs.clone(),
        options.schedules,
        schedules_wake.clone(),
    );
    let (dispatcher, dispatch_tasks) = Dispatcher::start(DispatchParts {
        leases: Leases::new(state.pool.clone(), state.jobs),
        jobs: jobs.clone(),
        modules: modules.clone(),
        sessions: identity.sessions.clone(),
        audit: identity.audit.clone(),
        wake,
        schedules_wake: schedules_wake.clone(),
        database_url: state.database_url.clone(),
    });
    let firing = tokio::spawn(maintenance::schedules::run(
        schedules.clone(),
        schedules_wake,
        background.clone(),
    ));

    let fleet = Fleet::new(
        state.pool.clone(),
        maintenance::fleet::replica_label(listener.local_addr().ok()).await,
    );
    let publishing = tokio::spawn(maintenance::fleet::run(
        fleet.clone(),
        dispatcher.clone(),
        background.clone(),
    ));
    if let Some(slot) = &console {
        slot.fill(crate::console::ConsoleParts {
            pool: state.pool.clone(),
            identity: identity.clone(),
            jobs: jobs.clone(),
            modules: modules.clone(),
            schedules: schedules.clone(),
            api_keys: ApiKeys::new(state.pool.clone()),
            dispatcher: dispatcher.clone(),
            readiness: readiness.clone(),
            callers,
            trusted_proxies: state.auth.trusted_proxies.clone(),
            key: state.auth.console_key.clone(),
            settings: crate::console::ConsoleSettings {
                secure_cookie: options.tls.is_some(),
            },
            fleet,
        });
    }

    let walks = tokio::spawn(maintenance::walks::run(
        jobs.clone(),
        maintenance::walks::INTERVAL,
        background.clone(),
    ));

    let sampler = tokio::spawn(telemetry::sampler::run(
        state.pool.clone(),
        dispatcher.clone(),
        SamplerSettings {
            interval: Duration::from_secs(1),
            stats_interval: options.metrics_sample_interval,
        },
        background.clone(),
    ));

    let (caps, budget) = message_limits(&state, &options);

    let (drain, drain_started) = tokio::sync::oneshot::channel::<()>();
    let router = transport(&options)
        .layer(RpcLayer)
        .layer(AuthLayer::new(authorizer))
        .layer(CallerTapLayer)
        .layer(MessageCapLayer::new(caps.clone(), budget))
        .add_service(health_service)
        .add_service(reflection.v1())
        .add_service(reflection.v1alpha());
    let server = api_services(
        router,
        ApiParts {
            identity: &identity,
            jobs,
            modules,
            dispatcher: &dispatcher,
            api_keys: ApiKeys::new(state.pool.clone()),
            schedules,
        },
        &caps,
    );
    let stop_accepting = async {
        let _ = drain_started.await;
    };
    // The two transports differ only in the stream of connections.
    let server: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match tls {
        Some(tls) => {
            Box::pin(server.serve_with_incoming_shutdown(
                tls::incoming(tls, incoming(listener)),
                stop_accepting,
            ))
        }
        None => Box::pin(
            server.serve_with_incoming_shutdown(tls::plaintext(incoming(listener)), stop_accepting),
        ),
    };
    let result = run_until_shutdown(
        server,
        shutdown,
        Drain {
            signal: drain,
            reporter: &reporter,
            readiness: &readiness,
            monitor: &monitor,
            dispatcher: &dispatcher,
            grace: options.shutdown_grace,
        },
    )
    .await;
    monitor.abort();
    // Reports that arrived before the streams ended are settled before the
    // pool goes away.
    dispatcher.stop(dispatch_tasks).await;
    background.cancel();
    let _ = housekeeping.await;
    let _ = caller_changes.await;
    let _ = pruning.await;
    let _ = firing.await;
    let _ = walks.await;
    let _ = publishing.await;
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    let _ = sampler.await;
    // The HTTP port stops last: readiness said 503 during the whole drain.
    http_stop.cancel();
    if let Some(http) = http {
        match http.await {
            Ok(Err(error)) => tracing::warn!(%error, "HTTP server"),
            Err(error) => tracing::warn!(%error, "HTTP server task"),
            Ok(Ok(())) => {}
        }
    }
    result.map_err(|e| AppError::internal(format!("gRPC server: {e}")))
}

/// The health service, its reporter, and the task that keeps it in step
/// with the database. One probe runs before serving, so that health answers
/// for every service from the first call.
async fn start_health(
    state: &AppState,
    options: &ServerOptions,
) -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tokio::task::JoinHandle<()>,
    Readiness,
) {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let mut database_health = health::DatabaseHealth::new(
        reporter.clone(),
        state.pool.clone(),
        SERVICE_NAMES.to_vec(),
        options
            .health_check_interval
            .max(Duration::from_millis(500)),
    );
    database_health.probe().await;
    let readiness = database_health.readiness();
    let monitor = tokio::spawn(database_health.run(options.health_check_interval));
    (reporter, health_service, monitor, readiness)
}

/// Reflection over this server's services, the health service, and the
/// google.rpc error details every error carries (so that grpcurl, and any
/// reflection client, can decode them).
fn reflection() -> Result<Reflection, AppError> {
    Reflection::new(&[
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_types::pb::FILE_DESCRIPTOR_SET,
    ])
    .map_err(|e| AppError::internal(format!("reflection: {e}")))
}

/// The limits every request is held to (each method's message cap, and the
/// memory requests carrying JSON may hold at once), with a warning for each
/// that refuses some requests the job settings allow.
fn message_limits(state: &AppState, options: &ServerOptions) -> (MessageCaps, RequestBudget) {
    // Every message is held to its method's cap before it is buffered; the
    // library's per-service limit (the largest cap of the service) stays
    // behind it as a second line.
    let caps = MessageCaps::new(CapSettings {
        payload_max_bytes: state.jobs.payload_max_bytes,
        batch_max_bytes: options.batch_max_bytes,
        outer_max_bytes: options.max_message_bytes,
    });
    let create_job = caps.create_job();
    if create_job.limit == Some("GRPC_MAX_MESSAGE_BYTES") {
        tracing::warn!(
            grpc_max_message_bytes = options.max_message_bytes,
            job_payload_max_bytes = state.jobs.payload_max_bytes,
            "GRPC_MAX_MESSAGE_BYTES is below what a CreateJob with a payload at \
             JOB_PAYLOAD_MAX_BYTES can take on the wire; some legal payloads will be refused"
        );
    }

    let budget = RequestBudget::new(options.request_budget);
    let worst = worst_create_job_cost(state.jobs.payload_max_bytes);
    if worst > budget.max_cost() {
        tracing::warn!(
            request_memory_budget_bytes = options.request_budget.total_bytes,
            job_payload_max_bytes = state.jobs.payload_max_bytes,
            worst_create_job_bytes = worst,
            "REQUEST_MEMORY_BUDGET_BYTES cannot hold a CreateJob whose payload is \
             JOB_PAYLOAD_MAX_BYTES of one-key objects; such payloads will be refused"
        );
    }
    (caps, budget)
}

/// What the `automation.v1` services are built from.
struct ApiParts<'a> {
    identity: &'a Identity,
    jobs: Jobs,
    modules: Modules,
    dispatcher: &'a Dispatcher,
    api_keys: ApiKeys,
    schedules: Schedules,
}

/// Adds the `automation.v1` services to `router`, each with its decoding
/// limit (the largest cap among its methods).
fn api_services<L>(router: Router<L>, api: ApiParts<'_>, caps: &MessageCaps) -> Router<L> {
    let ApiParts {
        identity,
        jobs,
        modules,
        dispatcher,
        api_keys,
        schedules,
    } = api;
    router
        .add_service(
            pb::auth_service_server::AuthServiceServer::new(api::auth::AuthApi::new(
                identity.sessions.clone(),
            ))
            .max_decoding_message_size(caps.service_max("AuthService")),
        )
        .add_service(
            pb::user_service_server::UserServiceServer::new(api::users::UserApi::new(
                identity.accounts.clone(),
            ))
            .max_decoding_message_size(caps.service_max("UserService")),
        )
        .add_service(
            pb::role_service_server::RoleServiceServer::new(api::roles::RoleApi::new(
                identity.roles.clone(),
            ))
            .max_decoding_message_size(caps.service_max("RoleService")),
        )
        .add_service(
            pb::module_service_server::ModuleServiceServer::new(api::modules::ModuleApi::new(
                modules,
                dispatcher.clone(),
            ))
            .max_decoding_message_size(caps.service_max("ModuleService")),
        )
        .add_service(
            pb::job_service_server::JobServiceServer::new(api::jobs::JobApi::new(
                jobs,
                dispatcher.clone(),
            ))
            .max_decoding_message_size(caps.service_max("JobService")),
        )
        .add_service(
            pb::api_key_service_server::ApiKeyServiceServer::new(api::api_keys::ApiKeyApi::new(
                api_keys,
            ))
            .max_decoding_message_size(caps.service_max("ApiKeyService")),
        )
        .add_service(
            pb::audit_service_server::AuditServiceServer::new(api::audit::AuditApi::new(
                identity.audit.clone(),
            ))
            .max_decoding_message_size(caps.service_max("AuditService")),
        )
        .add_service(
            pb::schedule_service_server::ScheduleServiceServer::new(
                api::schedules::ScheduleApi::new(schedules),
            )
            .max_decoding_message_size(caps.service_max("ScheduleService")),
        )
}

/// How the server drains once the shutdown signal comes.
struct Drain<'a> {
    /// Tells the transport to stop accepting connections.
    signal: tokio::sync::oneshot::Sender<()>,
    reporter: &'a tonic_health::server::HealthReporter,
    /// Turned to not ready first, before anything else drains.
    readiness: &'a Readiness,
    monitor: &'a tokio::task::JoinHandle<()>,
    dispatcher: &'a Dispatcher,
    grace: Duration,
}

/// Runs `server` until it fails or `shutdown` completes, then drains: health
/// says NOT_SERVING, workers are told to finish or release their jobs, and
/// open calls get the grace period.
async fn run_until_shutdown(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: impl Future<Output = ()>,
    drain: Drain<'_>,
) -> Result<(), tonic::transport::Error> {
    let Drain {
        signal,
        reporter,
        readiness,
        monitor,
        dispatcher,
        grace,
    } = drain;
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        () = shutdown => {
            // Load balancers stop sending work here; workers are told to
            // finish or release their jobs; new connections are refused; open
            // calls get the grace period, not forever.
            readiness.start_draining();
            monitor.abort();
            health::report_all(reporter, SERVICE_NAMES, tonic_health::ServingStatus::NotServing).await;
            let _ = signal.send(());
            let (result, ()) = tokio::join!(
                async {
                    match tokio::time::timeout(grace, &mut server).await {
                        Ok(result) => result,
                        Err(_) => {
                            tracing::warn!(
                                grace_ms = grace.as_millis() as u64,
                                "connections still open after the shutdown grace period; \
                                 closing them"
                            );
                            Ok(())
                        }
                    }
                },
                dispatcher.drain(grace * 3 / 4),
            );
            result
        }
    }
}

/// The HTTP/2 transport: streams per connection bounded, and every
/// connection pinged so that a worker host that vanished is noticed.
fn transport(options: &ServerOptions) -> Server {
    Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
}

/// Accepted connections with Nagle off (small gRPC frames must not wait for
/// delayed ACKs) and TCP keepalive on (dead worker streams are noticed).
/// [`tls::incoming`] or [`tls::plaintext`] take them from here: a bounded
/// number at a time, and only once their client has spoken (HTTP/2
/// keepalive covers a connection only after its preface).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}
