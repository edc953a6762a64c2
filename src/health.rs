//! The standard gRPC health service, driven by a database probe: every
//! service reports NOT_SERVING while PostgreSQL does not answer, and SERVING
//! again once it does.

use std::time::Duration;

use tonic_health::{ServingStatus, server::HealthReporter};

use crate::db::{self, DbPool};

/// Publishes the database's reachability as the health of the server ("")
/// and of each named service.
pub struct DatabaseHealth {
    reporter: HealthReporter,
    pool: DbPool,
    services: Vec<&'static str>,
    timeout: Duration,
    last: Option<bool>,
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
        }
    }

    /// Probes once and publishes the result if it changed.
    pub async fn probe(&mut self) {
        let serving = db::ping(&self.pool, self.timeout).await;
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

    /// Probes every `interval`, forever (abort the task to stop).
    pub async fn run(mut self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.probe().await;
        }
    }
}

/// Reports `status` for the server and every service (the server is
/// shutting down: NOT_SERVING).
pub async fn report_all(reporter: &HealthReporter, services: &[&str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in services {
        reporter.set_service_status(*service, status).await;
    }
}
