//! Where the database comes from: `DATABASE_URL`, or the embedded cluster.

use std::path::Path;

use super::{
    embedded::{EmbeddedPostgres, EmbeddedPostgresOptions},
    redact_url, validate_database_url,
};
use crate::{config::DatabaseArgs, error::AppError};

/// Name of the database the embedded cluster serves.
pub const EMBEDDED_DATABASE: &str = "automation_platform";

/// An open database: its URL, and the embedded cluster if we started one.
#[derive(Debug)]
pub struct DatabaseSource {
    /// URL to connect with (contains the password: never log it as is).
    pub url: String,
    /// The cluster this process runs, stopped by [`DatabaseSource::close`].
    pub embedded: Option<EmbeddedPostgres>,
}

impl DatabaseSource {
    /// Uses `DATABASE_URL`, or starts the embedded cluster under `data_dir`.
    pub async fn open(args: &DatabaseArgs) -> Result<Self, AppError> {
        if let Some(url) = &args.database_url {
            validate_database_url(url)?;
            tracing::info!(database.url = %redact_url(url), "using the configured database");
            return Ok(Self {
                url: url.clone(),
                embedded: None,
            });
        }
        let root = args.data_dir.join("postgres");
        tracing::info!(data_dir = %root.display(), port = args.embedded_pg_port, "starting embedded PostgreSQL");
        let cluster = EmbeddedPostgres::start(EmbeddedPostgresOptions {
            root_dir: root,
            port: args.embedded_pg_port,
            durable: true,
            max_connections: 100,
            startup_timeout: std::time::Duration::from_secs(60),
        })
        .await
        .map_err(|e| AppError::Config(e.to_string()))?;
        if let Err(error) = cluster.ensure_database(EMBEDDED_DATABASE).await {
            cluster.stop().await;
            return Err(AppError::Config(error.to_string()));
        }
        tracing::info!(port = cluster.port(), "embedded PostgreSQL ready");
        Ok(Self {
            url: cluster.url(EMBEDDED_DATABASE),
            embedded: Some(cluster),
        })
    }

    /// Whether this is the embedded development database.
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Stops the embedded cluster, if any, and waits for it to exit.
    pub async fn close(self) {
        if let Some(cluster) = self.embedded {
            cluster.stop().await;
            tracing::info!("embedded PostgreSQL stopped");
        }
    }
}

/// The development JWT secret kept in the data directory, created on first
/// use, so tokens survive restarts of the embedded setup. A kept secret
/// shorter than `min_bytes` (what the token signer requires) is replaced.
pub fn development_jwt_secret(data_dir: &Path, min_bytes: usize) -> Result<String, AppError> {
    let path = data_dir.join("jwt-secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        let secret = secret.trim().to_owned();
        if secret.len() >= min_bytes {
            return Ok(secret);
        }
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| AppError::Config(format!("creating {}: {e}", data_dir.display())))?;
    let secret = {
        use rand::distr::{Alphanumeric, SampleString};
        Alphanumeric.sample_string(&mut rand::rng(), 64)
    };
    super::embedded::write_secret(&path, &secret).map_err(|e| AppError::Config(e.to_string()))?;
    Ok(secret)
}
