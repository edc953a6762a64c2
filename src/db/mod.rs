//! Database access: the connection pool, the embedded default cluster and the
//! embedded migrations.

pub mod catalog;
mod connect;
pub mod embedded;
pub mod migrations;
pub mod pooling;
pub mod source;
mod transaction;

pub use connect::open_connection;
pub use pooling::PoolMode;
pub use transaction::{TransactionWork, transaction, with_connection};

use std::{sync::Arc, time::Duration};

use diesel::ConnectionResult;
use diesel_async::{
    AsyncPgConnection, SimpleAsyncConnection as _,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
        deadpool::{Object, Pool},
    },
};
use futures_util::FutureExt as _;

use crate::error::AppError;

/// The shared pool of PostgreSQL connections (the deadpool pool, with what
/// each transaction on it must start with under its [`PoolMode`]).
#[derive(Clone)]
pub struct DbPool {
    inner: Pool<AsyncPgConnection>,
    mode: PoolMode,
    begin: Arc<str>,
}

impl std::ops::Deref for DbPool {
    type Target = Pool<AsyncPgConnection>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DbPool {
    /// How the pool's connections reach PostgreSQL.
    pub fn mode(&self) -> PoolMode {
        self.mode
    }
}

/// A connection checked out of [`DbPool`].
pub type DbConn = Object<AsyncPgConnection>;

/// How the pool connects and how long callers wait for it.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// `postgres://` URL of the database.
    pub url: String,
    /// Most connections open at once.
    pub max_size: usize,
    /// How long a caller waits for a free connection (and for a new one to
    /// be established) before getting UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// Server-side limit on any one statement.
    pub statement_timeout: Duration,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
    /// Direct sessions, or a transaction pooler in between
    /// (`DATABASE_POOL_MODE`; see [`pooling`]).
    pub mode: PoolMode,
}

/// Builds the pool. No connection is opened until the first checkout, so a
/// database that is down at start-up surfaces on first use, as UNAVAILABLE.
/// Every connection works in UTC and without JIT: the service's statements
/// are short, and compiling one costs far more than running it.
pub fn build_pool(settings: &PoolSettings) -> Result<DbPool, AppError> {
    let session_setup = pooling::session_setup(settings);
    let mode = settings.mode;
    let mut config = ManagerConfig::default();
    // No `SELECT 1` before each checkout (the default): it was a round trip
    // per operation on every hot read. A connection that broke is known
    // broken (diesel-async marks it) and is not handed out again; one that
    // died silently fails its statement, which maps to UNAVAILABLE like an
    // unreachable database.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let setup = session_setup.clone();
        let url = url.to_owned();
        async move {
            let mut conn = establish(&url, &setup).await?;
            pooling::prepare(&mut conn, mode).await?;
            Ok(conn)
        }
        .boxed()
    });
    if mode == PoolMode::Transaction {
        // diesel's check is a prepared statement outside a transaction.
        config.recycling_method = RecyclingMethod::CustomFunction(Box::new(|conn| {
            conn.batch_execute("SELECT 1").boxed()
        }));
    }
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(&settings.url, config);
    let inner = Pool::builder(manager)
        .max_size(settings.max_size)
        .wait_timeout(Some(settings.acquire_timeout))
        .create_timeout(Some(settings.acquire_timeout))
        .recycle_timeout(Some(settings.acquire_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| AppError::Config(format!("database pool: {e}")))?;
    Ok(DbPool {
        inner,
        mode,
        begin: pooling::begin_sql(settings).into(),
    })
}

async fn establish(url: &str, setup: &str) -> ConnectionResult<AsyncPgConnection> {
    let mut conn = open_connection(url).await?;
    conn.batch_execute(setup)
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// A connection outside the pool, for a task that keeps one for its whole
/// life (the job queue's listener and claimer), set up like pooled ones plus
/// `extra_setup`; connecting gives up after `timeout`.
pub async fn dedicated_connection(
    url: &str,
    application_name: &str,
    extra_setup: &str,
    timeout: Duration,
) -> Result<AsyncPgConnection, AppError> {
    let setup = format!(
        "SET application_name = '{}'; SET TIME ZONE 'UTC'; SET jit = off; {extra_setup}",
        application_name.replace('\'', "''")
    );
    tokio::time::timeout(timeout, establish(url, &setup))
        .await
        .map_err(|_| AppError::Unavailable("timed out connecting".into()))?
        .map_err(AppError::from)
}

/// Checks a connection out of the pool; a timeout or a refused connection is
/// UNAVAILABLE.
pub async fn connect(pool: &DbPool) -> Result<DbConn, AppError> {
    pool.get().await.map_err(AppError::from)
}

/// Refuses to serve when `direct_url` (LISTEN_DATABASE_URL: the LISTEN
/// connections, the claimer, migrations) reaches another database than the
/// pool: the caller cache would hear its own pings but none of the changes
/// the pool's writes announce, and would serve revoked callers. Compared:
/// the database's name and its cluster's start time, which a transaction
/// pooler passes through. A database that does not answer is not checked
/// (the server starts and reports it unhealthy, as it always has).
pub async fn ensure_same_database(pool: &DbPool, direct_url: &str) -> Result<(), AppError> {
    use diesel_async::RunQueryDsl as _;
    const WHICH: &str =
        "SELECT current_database() || ' ' || pg_postmaster_start_time()::text AS which";
    #[derive(diesel::QueryableByName)]
    struct Which {
        #[diesel(sql_type = diesel::sql_types::Text)]
        which: String,
    }
    let through_pool = with_connection(pool, "db.identity", async |conn| {
        Ok(diesel::sql_query(WHICH).get_result::<Which>(conn).await?)
    })
    .await;
    let direct = async {
        let mut conn = dedicated_connection(
            direct_url,
            "control-plane check",
            "",
            Duration::from_secs(5),
        )
        .await?;
        Ok::<_, AppError>(
            diesel::sql_query(WHICH)
                .get_result::<Which>(&mut conn)
                .await?,
        )
    }
    .await;
    match (through_pool, direct) {
        (Ok(pooled), Ok(direct)) if pooled.which != direct.which => Err(AppError::Config(format!(
            "LISTEN_DATABASE_URL reaches another database than DATABASE_URL ({} vs {}): \
             both must name the same database",
            direct.which, pooled.which
        ))),
        _ => Ok(()),
    }
}

/// Checks that the database answers a trivial query within `timeout`.
pub async fn ping(pool: &DbPool, timeout: Duration) -> bool {
    let probe = async {
        let mut conn = connect(pool).await.ok()?;
        conn.batch_execute("SELECT 1").await.ok()
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(())))
}

/// Checks the URL's shape before anything tries to connect with it, so a typo
/// is reported as such rather than as an unreachable server.
pub fn validate_database_url(url: &str) -> Result<(), AppError> {
    let parsed = url::Url::parse(url).map_err(|e| {
        AppError::Config(format!(
            "DATABASE_URL is not a valid URL ({e}): expected postgres://user:password@host:port/database"
        ))
    })?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(AppError::Config(format!(
            "DATABASE_URL must start with postgres:// or postgresql://, not {}://",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(AppError::Config(
            "DATABASE_URL names no host: expected postgres://user:password@host:port/database"
                .into(),
        ));
    }
    Ok(())
}

/// The URL with its password masked, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            // libpq and tokio-postgres also take the password as a query
            // parameter.
            if parsed.query_pairs().any(|(key, _)| key == "password") {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(key, value)| {
                        let value = if key == "password" {
                            "***".into()
                        } else {
                            value.into_owned()
                        };
                        (key.into_owned(), value)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_masked_wherever_the_url_carries_them() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/cp"),
            "postgres://app:***@db:5432/cp"
        );
        let masked = redact_url("postgres://app@db/cp?sslmode=require&password=s3cret");
        assert!(!masked.contains("s3cret"), "{masked}");
        assert!(masked.contains("sslmode=require"), "{masked}");
    }
}
