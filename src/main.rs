//! `control-plane`: serve, migrate, seed.

/// mimalloc gives memory back to the system once the load that took it is
/// gone: after 24 concurrent worst-case CreateJobs, RSS fell from 2.0 GB to
/// 158 MB within 10 s, where glibc's allocator kept 4.5 GB for good
/// (BENCHMARKS.md, "Memory of large requests").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{process::ExitCode, sync::Arc, time::Duration};

use automation_control_plane::{
    AppError,
    api::codec::budget::BudgetSettings,
    auth::{AuthSettings, passwords::PasswordHasher, tokens},
    config::{Cli, Command, DatabaseArgs, HealthArgs, MigrateArgs, SeedArgs, ServeArgs},
    db::{self, PoolSettings, migrations, source::DatabaseSource},
    domain::jobs::JobSettings,
    maintenance::retention::RetentionSettings,
    seed::{self, AdminPassword},
    server::{self, AppState, ServerOptions},
    store::users,
};
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
    // Bind first: a port in use fails before anything else is started.
    let listener = tokio::net::TcpListener::bind(args.listen_addr)
        .await
        .map_err(|e| {
            AppError::Config(format!(
                "cannot listen on {}: {e} (is another server running? choose another --listen-addr)",
                args.listen_addr
            ))
        })?;
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
    let result = serve_on(&source, db_args, &args, auth, listener).await;
    source.close().await;
    result
}

async fn serve_on(
    source: &DatabaseSource,
    db_args: &DatabaseArgs,
    args: &ServeArgs,
    auth: AuthSettings,
    listener: tokio::net::TcpListener,
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
    tracing::info!(%address, "serving gRPC");
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
            retention: RetentionSettings::from_args(&args.retention),
        },
        shutdown_signal(),
    )
    .await?;
    tracing::info!("server stopped");
    Ok(())
}

/// One `grpc.health.v1.Health/Check` call against a running server.
async fn check_health(args: HealthArgs) -> Result<(), AppError> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let host = args.addr.replace("0.0.0.0", "127.0.0.1");
    let unreachable =
        |e: &dyn std::fmt::Display| AppError::Unavailable(format!("cannot ask {}: {e}", args.addr));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{host}"))
        .map_err(|e| AppError::Config(format!("--addr {}: {e}", args.addr)))?
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
