//! The schema migrations, embedded in the binary.
//!
//! diesel's migration harness is synchronous; it runs on a blocking thread
//! through `AsyncConnectionWrapper`, never on the async runtime's workers.

use diesel::migration::MigrationVersion;
use diesel_async::{AsyncPgConnection, async_connection_wrapper::AsyncConnectionWrapper};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::AppError;

/// Every migration under `migrations/`, in order.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

type SyncConnection = AsyncConnectionWrapper<AsyncPgConnection>;

/// Where the database stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Versions applied, oldest first.
    pub applied: Vec<String>,
    /// Versions not yet applied, oldest first.
    pub pending: Vec<String>,
}

async fn with_sync_connection<T, F>(url: &str, work: F) -> Result<T, AppError>
where
    T: Send + 'static,
    F: FnOnce(&mut SyncConnection) -> Result<T, AppError> + Send + 'static,
{
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection as _;
        let mut conn = SyncConnection::establish(&url).map_err(|e| {
            AppError::Unavailable(format!(
                "cannot connect to {}: {} (check DATABASE_URL and that the server is up)",
                super::redact_url(&url),
                e.to_string().lines().next().unwrap_or_default()
            ))
        })?;
        work(&mut conn)
    })
    .await
    .map_err(|e| AppError::internal(format!("migration task: {e}")))?
}

fn harness_error(error: Box<dyn std::error::Error + Send + Sync>) -> AppError {
    AppError::internal(format!("migration failed: {error}"))
}

fn versions(list: Vec<MigrationVersion<'_>>) -> Vec<String> {
    list.into_iter().map(|v| v.to_string()).collect()
}

/// Applies all pending migrations; returns the versions it applied.
pub async fn run_pending(url: &str) -> Result<Vec<String>, AppError> {
    with_sync_connection(url, |conn| {
        conn.run_pending_migrations(MIGRATIONS)
            .map(versions)
            .map_err(harness_error)
    })
    .await
}

/// Reverts every applied migration, newest first (used by tests and by
/// developers resetting a scratch database).
pub async fn revert_all(url: &str) -> Result<Vec<String>, AppError> {
    with_sync_connection(url, |conn| {
        conn.revert_all_migrations(MIGRATIONS)
            .map(versions)
            .map_err(harness_error)
    })
    .await
}

/// Lists applied and pending migrations.
pub async fn status(url: &str) -> Result<MigrationStatus, AppError> {
    with_sync_connection(url, |conn| {
        let applied = conn.applied_migrations().map_err(harness_error)?;
        let pending = conn.pending_migrations(MIGRATIONS).map_err(harness_error)?;
        let mut applied = versions(applied);
        applied.sort();
        Ok(MigrationStatus {
            applied,
            pending: pending
                .iter()
                .map(|m| m.name().version().to_string())
                .collect(),
        })
    })
    .await
}
