//! The schema migrations, embedded in the binary, and adopting a database
//! that the platform's existing backend created.
//!
//! diesel's migration harness is synchronous; it runs on a blocking thread
//! through `AsyncConnectionWrapper`, never on the async runtime's workers,
//! and the schema checks run on that same connection.
//!
//! Migrating ([`migrate`], [`run_pending`]) is one procedure under a
//! PostgreSQL advisory lock ([`catalog::MIGRATION_LOCK_KEY`]), so replicas
//! starting at once never migrate concurrently: the one that waits finds the
//! work done.
//! 1. When no migration of ours is recorded but the seed's tables or enum
//!    types exist, the database was created by the platform's existing
//!    (Prisma-based) backend, whose schema migration 1 reproduces. Running
//!    migration 1 there would fail, so its catalog is compared with the seed
//!    schema instead ([`catalog::SEED_SCHEMA`], exactly): when they match,
//!    migration 1 is recorded as applied without running it ("adopted");
//!    when they do not, nothing is changed and the error lists every
//!    difference. Prisma's `_prisma_migrations` table is left alone.
//! 2. Pending migrations are applied, each in a transaction of its own.

use diesel::migration::MigrationVersion;
use diesel_async::{AsyncPgConnection, async_connection_wrapper::AsyncConnectionWrapper};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::catalog::{self, Comparison, Difference, SEED_SCHEMA};
use crate::error::AppError;

/// Every migration under `migrations/`, in order.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Version of migration 1, the seed schema: the one a database created by
/// the platform's existing backend already holds, and the one adopting such
/// a database records as applied.
pub const SEED_SCHEMA_VERSION: &str = "00000000000001";

type SyncConnection = AsyncConnectionWrapper<AsyncPgConnection>;

/// Where the database stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Versions applied, oldest first.
    pub applied: Vec<String>,
    /// Versions not yet applied, oldest first.
    pub pending: Vec<String>,
}

/// What [`migrate`] did, so that the `migrate` command can say it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// The version recorded as applied without being run, because the
    /// database already held its schema (see the module documentation).
    pub adopted: Option<String>,
    /// Versions applied, oldest first.
    pub applied: Vec<String>,
}

async fn with_sync_connection<T, F>(url: &str, work: F) -> Result<T, AppError>
where
    T: Send + 'static,
    F: FnOnce(&mut SyncConnection) -> Result<T, AppError> + Send + 'static,
{
    // Connected here (TLS included, see `db::open_connection`), then driven
    // synchronously by diesel's migration harness off the async threads.
    let conn = super::open_connection(url).await.map_err(|e| {
        AppError::Unavailable(format!(
            "cannot connect to {}: {} (check DATABASE_URL and that the server is up)",
            super::redact_url(url),
            e.to_string().lines().next().unwrap_or_default()
        ))
    })?;
    tokio::task::spawn_blocking(move || {
        let mut conn = SyncConnection::from(conn);
        work(&mut conn)
    })
    .await
    .map_err(|e| AppError::internal(format!("migration task: {e}")))?
}

fn harness_error(error: Box<dyn std::error::Error + Send + Sync>) -> AppError {
    AppError::internal(format!("migration failed: {error}"))
}

/// Maps a failed schema-management query, saying what it was doing; a lost
/// connection stays UNAVAILABLE.
fn query_error(doing: &'static str) -> impl FnOnce(diesel::result::Error) -> AppError {
    move |error| match AppError::from(error) {
        AppError::Internal(detail) => AppError::internal(format!("{doing}: {detail}")),
        other => other,
    }
}

fn versions(list: Vec<MigrationVersion<'_>>) -> Vec<String> {
    list.into_iter().map(|v| v.to_string()).collect()
}

/// Runs `work` holding the migration lock, so no other process changes the
/// schema meanwhile. The lock belongs to the connection's session: it is
/// released here, and in any case when the connection closes.
fn with_migration_lock<T>(
    conn: &mut SyncConnection,
    work: impl FnOnce(&mut SyncConnection) -> Result<T, AppError>,
) -> Result<T, AppError> {
    let taken =
        catalog::try_lock_migrations(conn).map_err(query_error("taking the migration lock"))?;
    if !taken {
        tracing::info!("another process is migrating this database; waiting for it to finish");
        catalog::lock_migrations(conn).map_err(query_error("waiting for the migration lock"))?;
    }
    let result = work(conn);
    if let Err(error) = catalog::unlock_migrations(conn) {
        tracing::warn!(%error, "cannot release the migration lock; closing the connection will");
    }
    result
}

/// Records migration 1 as applied when the database already holds the seed
/// schema and no migration of ours is recorded; refuses, changing nothing,
/// when it holds part of it or something else under its names. Returns the
/// version adopted, if any.
fn adopt_existing_seed_schema(conn: &mut SyncConnection) -> Result<Option<String>, AppError> {
    if catalog::migrations_recorded(conn).map_err(query_error("reading diesel's migrations"))? {
        return Ok(None);
    }
    let live = catalog::read_live_catalog(conn, &SEED_SCHEMA)
        .map_err(query_error("reading the database catalog"))?;
    if !live.holds_any_of(&SEED_SCHEMA) {
        // Empty ground: migration 1 creates the seed schema.
        return Ok(None);
    }
    let differences = catalog::differences(&SEED_SCHEMA, &live, Comparison::Exact);
    if !differences.is_empty() {
        return Err(refusal(&differences));
    }
    // The platform compares emails exactly; this service, case-insensitively
    // (a later migration adds a unique index on lower(email)), which such
    // accounts would make fail on every start.
    let clashing = catalog::emails_equal_but_for_case(conn)
        .map_err(query_error("looking for emails that differ only in case"))?;
    if !clashing.is_empty() {
        return Err(AppError::Config(format!(
            "this database holds accounts whose emails differ only in letter case, which this \
             service treats as the same address; nothing was changed. Rename or merge them \
             first: {}",
            clashing.join(", ")
        )));
    }
    catalog::record_applied(conn, SEED_SCHEMA_VERSION)
        .map_err(query_error("recording the seed schema as applied"))?;
    tracing::info!(
        version = SEED_SCHEMA_VERSION,
        "adopted a database holding the seed schema (created by the platform's existing \
         backend): recorded the seed migration as applied without running it"
    );
    Ok(Some(SEED_SCHEMA_VERSION.to_owned()))
}

fn refusal(differences: &[Difference]) -> AppError {
    let list: String = differences.iter().map(|d| format!("\n  - {d}")).collect();
    AppError::Config(format!(
        "this database holds tables or types of the platform's schema but no record of this \
         service's migrations, and it differs from the seed schema (migration \
         {SEED_SCHEMA_VERSION}), so it cannot be adopted; nothing was changed. Bring it to the \
         seed schema or use another database. {} difference(s):{list}",
        differences.len()
    ))
}

/// Times a migration whose `lock_timeout` fired is tried again, and the
/// pause between tries. A migration that takes a lock on a table the
/// dispatcher uses (`ALTER TABLE`, `DROP INDEX`) sets a short
/// `lock_timeout`, so that while it waits behind a long transaction (a
/// backup's, say) it never holds up the claims queued behind it for more
/// than a few seconds; it is then rolled back whole and tried again, for
/// a few minutes, before the start fails.
const LOCK_TRIES: u32 = 40;
const LOCK_PAUSE: std::time::Duration = std::time::Duration::from_secs(3);

/// Applies the pending migrations, each in its own transaction; one that
/// gave up waiting for a lock (its `lock_timeout`) is rolled back whole and
/// tried again, up to [`LOCK_TRIES`] times. Returns the versions applied,
/// oldest first. Runs on a blocking thread.
fn run_pending_waiting_for_locks(conn: &mut SyncConnection) -> Result<Vec<String>, AppError> {
    let before = pending_versions(conn)?;
    let mut attempt = 1;
    loop {
        match conn.run_pending_migrations(MIGRATIONS) {
            Ok(_) => break,
            Err(error) if error.to_string().contains("lock timeout") && attempt < LOCK_TRIES => {
                tracing::warn!(
                    attempt,
                    %error,
                    "a migration could not take its lock in time (a long transaction holds \
                     the table): rolled back, trying again"
                );
                attempt += 1;
                std::thread::sleep(LOCK_PAUSE);
            }
            Err(error) => return Err(harness_error(error)),
        }
    }
    let after = pending_versions(conn)?;
    Ok(before
        .into_iter()
        .filter(|version| !after.contains(version))
        .collect())
}

fn pending_versions(conn: &mut SyncConnection) -> Result<Vec<String>, AppError> {
    Ok(conn
        .pending_migrations(MIGRATIONS)
        .map_err(harness_error)?
        .iter()
        .map(|m| m.name().version().to_string())
        .collect())
}

/// Brings the database up to date: adopts a database the platform's existing
/// backend created (see the module documentation), then applies every
/// pending migration, all under the migration lock.
pub async fn migrate(url: &str) -> Result<MigrationReport, AppError> {
    with_sync_connection(url, |conn| {
        with_migration_lock(conn, |conn| {
            let adopted = adopt_existing_seed_schema(conn)?;
            let applied = run_pending_waiting_for_locks(conn)?;
            Ok(MigrationReport { adopted, applied })
        })
    })
    .await
}

/// Applies all pending migrations, adopting a database the platform's
/// existing backend created first ([`migrate`]); returns the versions it
/// applied.
pub async fn run_pending(url: &str) -> Result<Vec<String>, AppError> {
    migrate(url).await.map(|report| report.applied)
}

/// Reverts every applied migration, newest first (used by tests and by
/// developers resetting a scratch database). On an adopted database this
/// drops the platform's tables too.
pub async fn revert_all(url: &str) -> Result<Vec<String>, AppError> {
    with_sync_connection(url, |conn| {
        with_migration_lock(conn, |conn| {
            conn.revert_all_migrations(MIGRATIONS)
                .map(versions)
                .map_err(harness_error)
        })
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

/// How the database's seed tables and enum types differ from the seed
/// schema, under `comparison` (see [`catalog`]); empty when they match.
pub async fn seed_schema_differences(
    url: &str,
    comparison: Comparison,
) -> Result<Vec<Difference>, AppError> {
    with_sync_connection(url, move |conn| {
        let live = catalog::read_live_catalog(conn, &SEED_SCHEMA)
            .map_err(query_error("reading the database catalog"))?;
        Ok(catalog::differences(&SEED_SCHEMA, &live, comparison))
    })
    .await
}
