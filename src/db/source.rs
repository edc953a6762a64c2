//! Where the database comes from: `DATABASE_URL`, or the embedded cluster.

use std::path::Path;

use super::{
    PoolMode,
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
    /// URL of direct sessions (LISTEN, the claim loop, migrations):
    /// `LISTEN_DATABASE_URL`, or `url`.
    pub direct_url: String,
    /// The cluster this process runs, stopped by [`DatabaseSource::close`].
    pub embedded: Option<EmbeddedPostgres>,
}

impl DatabaseSource {
    /// Uses `DATABASE_URL`, or starts the embedded cluster under `data_dir`.
    pub async fn open(args: &DatabaseArgs) -> Result<Self, AppError> {
        if let Some(url) = &args.database_url {
            validate_database_url(url)?;
            tracing::info!(database.url = %redact_url(url), "using the configured database");
            let direct_url = direct_url(args, url)?;
            return Ok(Self {
                url: url.clone(),
                direct_url,
                embedded: None,
            });
        }
        if args.database_pool_mode == PoolMode::Transaction {
            return Err(AppError::Config(
                "DATABASE_POOL_MODE=transaction needs DATABASE_URL (the pooler) and \
                 LISTEN_DATABASE_URL (PostgreSQL itself); the embedded database has no pooler"
                    .into(),
            ));
        }
        let root = args.data_dir.join("postgres");
        tracing::info!(data_dir = %root.display(), port = args.embedded_pg_port, "starting embedded PostgreSQL");
        let cluster = EmbeddedPostgres::start(EmbeddedPostgresOptions {
            root_dir: root,
            port: args.embedded_pg_port,
            durable: true,
            max_connections: 100,
            startup_timeout: std::time::Duration::from_secs(60),
            settings: Vec::new(),
        })
        .await
        .map_err(|e| AppError::Config(e.to_string()))?;
        if let Err(error) = cluster.ensure_database(EMBEDDED_DATABASE).await {
            cluster.stop().await;
            return Err(AppError::Config(error.to_string()));
        }
        tracing::info!(port = cluster.port(), "embedded PostgreSQL ready");
        let url = cluster.url(EMBEDDED_DATABASE);
        Ok(Self {
            direct_url: url.clone(),
            url,
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

/// `LISTEN_DATABASE_URL`, checked; `url` when unset, unless `url` goes
/// through a transaction pooler, where a session does not last.
fn direct_url(args: &DatabaseArgs, url: &str) -> Result<String, AppError> {
    match (&args.listen_database_url, args.database_pool_mode) {
        (Some(direct), _) => {
            validate_database_url(direct).map_err(|e| {
                AppError::Config(e.to_string().replace("DATABASE_URL", "LISTEN_DATABASE_URL"))
            })?;
            Ok(direct.clone())
        }
        (None, PoolMode::Session) => Ok(url.to_owned()),
        (None, PoolMode::Transaction) => Err(AppError::Config(
            "DATABASE_POOL_MODE=transaction needs LISTEN_DATABASE_URL: a direct connection to \
             PostgreSQL (not through PgBouncer) for LISTEN, the claim loop and migrations"
                .into(),
        )),
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::Cli;

    fn args(extra: &[&str]) -> DatabaseArgs {
        let mut argv = vec!["control-plane"];
        argv.extend_from_slice(extra);
        argv.push("migrate");
        Cli::try_parse_from(argv).expect("flags").database
    }

    #[test]
    fn transaction_pooling_needs_a_direct_url_for_sessions() {
        let pooled = "postgres://app@pgbouncer:6432/app";
        let session = args(&[]);
        assert_eq!(direct_url(&session, pooled).unwrap(), pooled);
        let transaction = args(&["--database-pool-mode", "transaction"]);
        let refused = direct_url(&transaction, pooled).unwrap_err().to_string();
        assert!(refused.contains("LISTEN_DATABASE_URL"), "{refused}");
        let direct = "postgres://app@db:5432/app";
        let both = args(&[
            "--database-pool-mode",
            "transaction",
            "--listen-database-url",
            direct,
        ]);
        assert_eq!(direct_url(&both, pooled).unwrap(), direct);
        let typo = args(&["--listen-database-url", "mysql://db/app"]);
        let refused = direct_url(&typo, pooled).unwrap_err().to_string();
        assert!(
            refused.contains("LISTEN_DATABASE_URL must start"),
            "{refused}"
        );
    }
}
