//! `control-plane`: serve, migrate, seed.

/// mimalloc gives memory back to the system once the load that took it is
/// gone: after 24 concurrent worst-case CreateJobs, RSS fell from 2.0 GB to
/// 158 MB within 10 s, where glibc's allocator kept 4.5 GB for good
/// (BENCHMARKS.md, "Memory of large requests"). The `system-allocator`
/// feature leaves it out, for heap profilers that watch `malloc`
/// (heaptrack, valgrind's massif).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{process::ExitCode, sync::Arc, time::Duration};

use automation_control_plane::{
    AppError,
    api::codec::budget::BudgetSettings,
    auth::{AuthSettings, passwords::PasswordHasher, tokens},
    config::{
        Cli, ClientTlsArgs, Command, DatabaseArgs, HealthArgs, MigrateArgs, SeedArgs, ServeArgs,
    },
    db::{self, PoolSettings, migrations, source::DatabaseSource},
    domain::jobs::JobSettings,
    domain::schedules::ScheduleSettings,
    maintenance::{memory, retention::RetentionSettings},
    seed::{self, AdminPassword},
    server::{self, AppState, ServerOptions},
    store::users,
    telemetry::logs::{self, LogFormat},
    tls::TlsFiles,
};
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logs::init(LogFormat::parse(&cli.log_format).unwrap_or(LogFormat::Text));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(memory::on_park)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), AppError> {
    match cli.command {
        Command::Serve(args) => serve(&cli.database, *args).await,
        Command::Migrate(args) => {
            with_database(&cli.database, async |s| migrate(s, args).await).await
        }
        Command::Health(args) => check_health(args).await,
        Command::Seed(args) => {
            with_database(&cli.database, async |s| seed(s, &cli.database, args).await).await
        }
    }
}

/// Opens the database, runs `work`, and always closes it (stopping the
/// embedded cluster) before returning `work`'s result.
async fn with_database<F>(args: &DatabaseArgs, work: F) -> Result<(), AppError>
where
    F: AsyncFnOnce(&DatabaseSource) -> Result<(), AppError>,
{
    let source = DatabaseSource::open(args).await?;
    let result = work(&source).await;
    source.close().await;
    result
}

async fn migrate(source: &DatabaseSource, args: MigrateArgs) -> Result<(), AppError> {
    if !args.status {
        let report = migrations::migrate(&source.direct_url).await?;
        if let Some(version) = &report.adopted {
            println!(
                "adopted {version}: the database already holds the seed schema (created by the \
                 platform's existing backend); recorded it as applied"
            );
        }
        for version in &report.applied {
            println!("applied {version}");
        }
    }
    let status = migrations::status(&source.direct_url).await?;
    println!(
        "{} applied, {} pending",
        status.applied.len(),
        status.pending.len()
    );
    for version in &status.pending {
        println!("pending {version}");
    }
    Ok(())
}

fn pool_for(source: &DatabaseSource, args: &DatabaseArgs) -> Result<db::DbPool, AppError> {
    db::build_pool(&PoolSettings {
        url: source.url.clone(),
        max_size: args.db_pool_size as usize,
        acquire_timeout: args.acquire_timeout(),
        statement_timeout: args.statement_timeout(),
        application_name: "automation-control-plane".into(),
        mode: args.database_pool_mode,
    })
}

fn admin_password(source: &DatabaseSource, args: &SeedArgs) -> AdminPassword {
    match (&args.admin_password, source.is_embedded()) {
        // Naming the development password on the embedded database is the
        // development default (with its warning); anywhere else seeding
        // refuses it.
        (Some(password), true) if password == seed::DEV_ADMIN_PASSWORD => {
            AdminPassword::DevelopmentDefault
        }
        (Some(password), _) => AdminPassword::Given(password.clone()),
        (None, true) => AdminPassword::DevelopmentDefault,
        (None, false) => AdminPassword::Generated,
    }
}

async fn seed(
    source: &DatabaseSource,
    db_args: &DatabaseArgs,
    args: SeedArgs,
) -> Result<(), AppError> {
    migrations::run_pending(&source.direct_url).await?;
    let pool = pool_for(source, db_args)?;
    let hasher = PasswordHasher::from_args(&args.passwords);
    let report = seed::run(&pool, &hasher, admin_password(source, &args)).await?;
    println!(
        "roles created: [{}]; admin created: {}",
        report.roles_created.join(", "),
        report.admin_created
    );
    Ok(())
}

async fn serve(db_args: &DatabaseArgs, args: ServeArgs) -> Result<(), AppError> {
    refuse_open_plaintext(&args)?;
    // Bind first: a port in use fails before anything else is started.
    let listener = tokio::net::TcpListener::bind(args.listen_addr)
        .await
        .map_err(|e| {
            AppError::Config(format!(
                "cannot listen on {}: {e} (is another server running? choose another --listen-addr)",
                args.listen_addr
            ))
        })?;
    let http_listener = args
        .http_addr()
        .map_err(AppError::Config)?
        .map(automation_control_plane::http::HttpListener::bind)
        .transpose()?;
    let jwt_secret = match (&args.auth.jwt_secret, &db_args.database_url) {
        (Some(secret), _) => secret.clone(),
        (None, None) => {
            let data_dir = db_args.data_dir.clone();
            tokio::task::spawn_blocking(move || {
                db::source::development_jwt_secret(&data_dir, tokens::MIN_SECRET_BYTES)
            })
            .await
            .map_err(|e| AppError::internal(e.to_string()))??
        }
        (None, Some(_)) => {
            return Err(AppError::Config(
                "JWT_SECRET is required with DATABASE_URL (at least 32 random bytes, e.g. \
                 `openssl rand -base64 48`)"
                    .into(),
            ));
        }
    };
    let auth = AuthSettings::from_args(&args.auth, &args.seed.passwords, &jwt_secret)?;

    let source = DatabaseSource::open(db_args).await?;
    let result = serve_on(&source, db_args, &args, auth, (listener, http_listener)).await;
    source.close().await;
    result
}

async fn serve_on(
    source: &DatabaseSource,
    db_args: &DatabaseArgs,
    args: &ServeArgs,
    auth: AuthSettings,
    (listener, http_listener): (
        tokio::net::TcpListener,
        Option<automation_control_plane::http::HttpListener>,
    ),
) -> Result<(), AppError> {
    if !args.skip_migrations {
        let applied = migrations::run_pending(&source.direct_url).await?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "applied migrations");
        }
    }
    let pool = pool_for(source, db_args)?;
    let empty = db::with_connection(&pool, "serve.any_users", async |conn| {
        Ok(!users::any_exist(conn).await?)
    })
    .await?;
    if empty {
        let report = seed::run(&pool, &auth.passwords, admin_password(source, &args.seed)).await?;
        tracing::info!(roles = ?report.roles_created, admin = report.admin_created, "seeded an empty database");
    }
    let state = AppState {
        pool,
        database_url: source.direct_url.clone(),
        auth: Arc::new(auth),
        jobs: JobSettings::from_args(&args.jobs),
    };
    let address = listener
        .local_addr()
        .map_err(|e| AppError::internal(e.to_string()))?;
    tracing::info!(%address, tls = args.tls.tls_cert_file.is_some(), "serving gRPC");
    let purges = CancellationToken::new();
    tokio::spawn(memory::run(purges.clone()));
    let _stop_purges = purges.drop_guard();
    server::serve(
        state,
        listener,
        ServerOptions {
            health_check_interval: Duration::from_millis(args.health_check_interval_ms.max(100)),
            shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
            keepalive_interval: Duration::from_secs(args.keepalive_interval_secs),
            keepalive_timeout: Duration::from_secs(args.keepalive_timeout_secs),
            max_message_bytes: args.grpc_max_message_bytes as usize,
            batch_max_bytes: args.job_batch_max_bytes as usize,
            request_budget: BudgetSettings {
                total_bytes: args.request_memory_budget_bytes as usize,
                ..BudgetSettings::default()
            },
            tls: tls_files(args),
            http_listener,
            metrics_sample_interval: Duration::from_millis(args.metrics_sample_interval_ms),
            retention: RetentionSettings::from_args(&args.retention),
            schedules: ScheduleSettings {
                misfire_grace: Duration::from_millis(args.schedule_misfire_grace_ms),
                min_interval: Duration::from_secs(args.schedule_min_interval_secs),
                max_per_creator: args.schedules_max,
                ..ScheduleSettings::default()
            },
            console: args.console,
        },
        shutdown_signal(),
    )
    .await?;
    tracing::info!("server stopped");
    Ok(())
}

/// Secure by default: plaintext gRPC only on loopback, unless asked for by
/// name (a TLS-terminating proxy or mesh in front).
fn refuse_open_plaintext(args: &ServeArgs) -> Result<(), AppError> {
    let tls = &args.tls;
    if tls.tls_cert_file.is_none() && !tls.allow_plaintext && !args.listen_addr.ip().is_loopback() {
        return Err(AppError::Config(format!(
            "refusing plaintext gRPC on non-loopback {} (tokens and API keys would cross the \
             network in clear): set TLS_CERT_FILE and TLS_KEY_FILE, or --allow-plaintext \
             (ALLOW_PLAINTEXT=true) behind a TLS-terminating proxy",
            args.listen_addr
        )));
    }
    if tls.tls_cert_file.is_none() && !args.listen_addr.ip().is_loopback() {
        tracing::warn!(
            address = %args.listen_addr,
            "serving plaintext gRPC on a non-loopback address (ALLOW_PLAINTEXT)"
        );
    }
    Ok(())
}

/// The TLS files of `serve`, when TLS is on.
fn tls_files(args: &ServeArgs) -> Option<TlsFiles> {
    let tls = &args.tls;
    Some(TlsFiles {
        cert_file: tls.tls_cert_file.clone()?,
        key_file: tls.tls_key_file.clone()?,
        client_ca_file: tls.tls_client_ca_file.clone(),
        reload_interval: Duration::from_secs(tls.tls_reload_interval_secs),
    })
}

/// The endpoint of a client command: `https://` when the address says so or
/// a CA file is given, with the CA, server name and client certificate
/// from `tls`.
async fn client_endpoint(
    addr: &str,
    tls: &ClientTlsArgs,
) -> Result<tonic::transport::Endpoint, AppError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = async |path: &std::path::Path| {
        tokio::fs::read(path)
            .await
            .map_err(|e| AppError::Config(format!("cannot read {}: {e}", path.display())))
    };
    let url = if addr.contains("://") {
        addr.to_owned()
    } else if tls.ca_file.is_some() {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| AppError::Config(format!("--addr {addr}: {e}")))?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_file {
        Some(path) => config.ca_certificate(Certificate::from_pem(read(path).await?)),
        None => config.with_native_roots(),
    };
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert_file, &tls.client_key_file) {
        config = config.identity(Identity::from_pem(read(cert).await?, read(key).await?));
    }
    endpoint
        .tls_config(config)
        .map_err(|e| AppError::Config(format!("TLS: {e}")))
}

/// The address to call for a server that listens on `addr`: one that
/// listens on every interface (`0.0.0.0`, `[::]`) is called on loopback.
fn reachable_address(addr: &str) -> String {
    let (scheme, rest) = match addr.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), addr),
    };
    match rest.parse::<std::net::SocketAddr>() {
        Ok(mut socket) if socket.ip().is_unspecified() => {
            socket.set_ip(match socket {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
            format!("{scheme}{socket}")
        }
        _ => addr.to_owned(),
    }
}

/// One `grpc.health.v1.Health/Check` call against a running server.
async fn check_health(args: HealthArgs) -> Result<(), AppError> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let host = reachable_address(&args.addr);
    let unreachable =
        |e: &dyn std::fmt::Display| AppError::Unavailable(format!("cannot ask {}: {e}", args.addr));
    let channel = client_endpoint(&host, &args.tls)
        .await?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| unreachable(&e))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|e| unreachable(&e.message()))?
        .into_inner()
        .status();
    println!("{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(AppError::Unavailable(format!(
            "server reports {}",
            status.as_str_name()
        )))
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::reachable_address;

    #[test]
    fn every_interface_is_called_on_loopback_and_nothing_else_changes() {
        assert_eq!(reachable_address("0.0.0.0:50051"), "127.0.0.1:50051");
        assert_eq!(reachable_address("[::]:50051"), "[::1]:50051");
        assert_eq!(
            reachable_address("https://0.0.0.0:50051"),
            "https://127.0.0.1:50051"
        );
        assert_eq!(reachable_address("10.0.0.0:50051"), "10.0.0.0:50051");
        assert_eq!(reachable_address("cp.internal:50051"), "cp.internal:50051");
    }
}
