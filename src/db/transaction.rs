//! The one way the service runs a transaction: check a connection out, run
//! the work between BEGIN and COMMIT (ROLLBACK on error), give the connection
//! back. One place to time every operation by name and to map pool errors.

use std::time::{Duration, Instant};

use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager as _};

use super::{DbConn, DbPool};
use crate::{error::AppError, telemetry::names};

/// Operations slower than this are logged at WARN with their name.
const SLOW_OPERATION: Duration = Duration::from_millis(500);

/// The work of a transaction: an async closure over the connection whose
/// future is `Send`. (Rust cannot yet bound an `AsyncFnOnce` future as
/// `Send` directly; naming the future through this trait can.)
pub trait TransactionWork<'c, R>:
    AsyncFnOnce(&'c mut AsyncPgConnection) -> Result<R, AppError>
    + FnOnce(&'c mut AsyncPgConnection) -> <Self as TransactionWork<'c, R>>::Future
{
    /// The future the closure returns.
    type Future: Future<Output = Result<R, AppError>> + Send;
}

impl<'c, R, F, Fut> TransactionWork<'c, R> for F
where
    F: AsyncFnOnce(&'c mut AsyncPgConnection) -> Result<R, AppError>
        + FnOnce(&'c mut AsyncPgConnection) -> Fut,
    Fut: Future<Output = Result<R, AppError>> + Send,
{
    type Future = Fut;
}

/// Runs `work` in a transaction on a pooled connection and commits when it
/// returns `Ok`; rolls back otherwise. `operation` names the work in logs.
///
/// A caller that goes away mid-transaction (a cancelled call, a deadline)
/// drops the future with the transaction open: [`OpenTransaction`] then
/// closes that connection instead of giving it back, so PostgreSQL rolls the
/// transaction back at once and its locks go with it. (The pool would take
/// it back as it is, idle in an open transaction, holding its row and
/// advisory locks until its next checkout.)
pub async fn transaction<R, F>(
    pool: &DbPool,
    operation: &'static str,
    work: F,
) -> Result<R, AppError>
where
    F: for<'c> TransactionWork<'c, R> + Send,
    R: Send,
{
    let started = Instant::now();
    let mut open = OpenTransaction {
        conn: Some(acquire(pool, operation, started).await?),
        settled: false,
    };
    let (result, settled) = {
        let conn: &mut AsyncPgConnection = open.conn.as_mut().expect("held until dropped");
        AnsiTransactionManager::begin_transaction_sql(conn, &pool.begin).await?;
        match work(conn).await {
            Ok(value) => match AnsiTransactionManager::commit_transaction(conn).await {
                Ok(()) => (Ok(value), true),
                Err(error) => (Err(AppError::from(error)), false),
            },
            Err(error) => {
                let rolled_back = AnsiTransactionManager::rollback_transaction(conn).await;
                if let Err(rollback) = &rolled_back {
                    tracing::warn!(db.operation = operation, error = %rollback, "rollback failed");
                }
                (Err(error), rolled_back.is_ok())
            }
        }
    };
    open.settled = settled;
    log_duration(operation, started.elapsed(), &result);
    result
}

/// A pooled connection while its transaction is open. Dropped before the
/// transaction settled (committed or rolled back), it takes the connection
/// out of the pool and closes it.
struct OpenTransaction {
    conn: Option<DbConn>,
    settled: bool,
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if !self.settled
            && let Some(conn) = self.conn.take()
        {
            drop(deadpool::managed::Object::take(conn));
        }
    }
}

/// Runs `work` on a pooled connection without a transaction (reads, and
/// single statements that are atomic on their own), timed like
/// [`transaction`]. Behind a transaction pooler it opens one all the same
/// (see [`super::pooling`]).
pub async fn with_connection<R, F>(
    pool: &DbPool,
    operation: &'static str,
    work: F,
) -> Result<R, AppError>
where
    F: for<'c> TransactionWork<'c, R> + Send,
    R: Send,
{
    if pool.mode() == super::PoolMode::Transaction {
        return transaction(pool, operation, work).await;
    }
    let started = Instant::now();
    let mut conn = acquire(pool, operation, started).await?;
    let result = work(&mut conn).await;
    log_duration(operation, started.elapsed(), &result);
    result
}

/// Checks a connection out, timing the wait (a timeout is counted apart:
/// the pool is too small, or the database too slow to give connections
/// back).
async fn acquire(
    pool: &DbPool,
    operation: &'static str,
    started: Instant,
) -> Result<DbConn, AppError> {
    let checkout = pool.get().await;
    let timed_out = matches!(checkout, Err(deadpool::managed::PoolError::Timeout(_)));
    names::pool_acquire(started.elapsed().as_secs_f64(), timed_out);
    checkout.map_err(|error| {
        let error = AppError::from(error);
        names::db_operation(
            operation,
            started.elapsed().as_secs_f64(),
            Some(error.reason()),
        );
        error
    })
}

/// Logs slow operations and records every one's duration (and the kind of
/// its error) in the metrics.
fn log_duration<R>(operation: &'static str, elapsed: Duration, result: &Result<R, AppError>) {
    let kind = result.as_ref().err().map(AppError::reason);
    names::db_operation(operation, elapsed.as_secs_f64(), kind);
    if elapsed >= SLOW_OPERATION {
        tracing::warn!(
            db.operation = operation,
            duration_ms = elapsed.as_millis() as u64,
            "slow database operation"
        );
    } else {
        tracing::trace!(
            db.operation = operation,
            duration_us = elapsed.as_micros() as u64,
            "database operation"
        );
    }
}
