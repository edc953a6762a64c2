//! The standard gRPC health service and the HTTP readiness, driven by one
//! database probe: every service reports NOT_SERVING (and `/health/ready`
//! 503) while PostgreSQL does not answer, and SERVING again once it does.
//! Readiness also waits for the embedded migrations to be applied, and ends
//! for good when the server starts draining.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    db::{self, DbPool, migrations::MIGRATIONS},
    store,
};

/// Whether this replica should be sent traffic, as `/health/ready` tells a
/// load balancer. Cheap to clone; read on every readiness request, written
/// by the probe and by shutdown.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<ReadinessFlags>);

#[derive(Debug, Default)]
struct ReadinessFlags {
    database: AtomicBool,
    migrations: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// `None` when ready; else why not, in a few words (the first reason
    /// that applies: draining, then the database, then migrations).
    pub fn not_ready(&self) -> Option<&'static str> {
        let flags = &self.0;
        if flags.draining.load(Ordering::Acquire) {
            Some("draining")
        } else if !flags.database.load(Ordering::Acquire) {
            Some("database unreachable")
        } else if !flags.migrations.load(Ordering::Acquire) {
            Some("migrations pending")
        } else {
            None
        }
    }

    /// The server stops taking new work: not ready from now on.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::Release);
    }

    fn set_database(&self, up: bool) {
        self.0.database.store(up, Ordering::Release);
    }

    fn migrations_applied(&self) -> bool {
        self.0.migrations.load(Ordering::Acquire)
    }
}

/// Publishes the database's reachability as the health of the server ("")
/// and of each named service, and in [`Readiness`].
pub struct DatabaseHealth {
    reporter: HealthReporter,
    pool: DbPool,
    services: Vec<&'static str>,
    timeout: Duration,
    last: Option<bool>,
    readiness: Readiness,
}

impl DatabaseHealth {
    /// A publisher whose probes give up after `timeout`.
    pub fn new(
        reporter: HealthReporter,
        pool: DbPool,
        services: Vec<&'static str>,
        timeout: Duration,
    ) -> Self {
        Self {
            reporter,
            pool,
            services,
            timeout,
            last: None,
            readiness: Readiness::default(),
        }
    }

    /// The readiness this publisher keeps.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Probes once and publishes the result if it changed.
    pub async fn probe(&mut self) {
        let serving = db::ping(&self.pool, self.timeout).await;
        self.readiness.set_database(serving);
        if serving && !self.readiness.migrations_applied() {
            self.check_migrations().await;
        }
        if self.last == Some(serving) {
            return;
        }
        let status = if serving {
            tracing::info!("database reachable: health SERVING");
            ServingStatus::Serving
        } else {
            tracing::warn!("database unreachable: health NOT_SERVING");
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for service in &self.services {
            self.reporter.set_service_status(*service, status).await;
        }
        self.last = Some(serving);
    }

    /// Whether every embedded migration is recorded as applied; checked
    /// until it is (migrations are never unapplied under a running server).
    async fn check_migrations(&self) {
        let embedded = embedded_versions();
        let applied = tokio::time::timeout(
            self.timeout,
            db::with_connection(&self.pool, "health.migrations", async |conn| {
                Ok(store::stats::applied_migrations(conn).await?)
            }),
        )
        .await;
        let Ok(Ok(applied)) = applied else { return };
        let applied: HashSet<String> = applied.into_iter().collect();
        let all = embedded.iter().all(|version| applied.contains(version));
        self.readiness.0.migrations.store(all, Ordering::Release);
    }

    /// Probes every `interval`, forever (abort the task to stop).
    pub async fn run(mut self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.probe().await;
        }
    }
}

/// The versions of the migrations built into the binary.
fn embedded_versions() -> Vec<String> {
    diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map(|list| {
            list.iter()
                .map(|m| m.name().version().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Reports `status` for the server and every service (the server is
/// shutting down: NOT_SERVING).
pub async fn report_all(reporter: &HealthReporter, services: &[&str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(*service, status).await;
    }
}
