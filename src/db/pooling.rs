//! What a pooled connection may keep between transactions, by
//! `DATABASE_POOL_MODE`.
//!
//! Behind PgBouncer in transaction mode (`transaction`), each transaction of
//! one client connection may run on a different server session, and a
//! statement outside a transaction may even be split across two: the
//! extended protocol parses a statement (`Parse`, `Sync`) and runs it
//! (`Bind`, `Execute`, `Sync`) in two round trips, and PgBouncer hands the
//! server session back to its pool at each `Sync` outside a transaction.
//! So in that mode nothing may rely on the session:
//! - diesel-async's prepared-statement cache is disabled: every statement is
//!   parsed, run and closed (tokio-postgres closes it when dropped) inside
//!   the transaction that uses it, on one server session;
//! - every unit of work runs in a transaction, reads included
//!   ([`super::with_connection`] opens one), so `Parse` and `Bind` meet;
//! - the settings that PgBouncer does not track (`statement_timeout`, `jit`)
//!   are `SET LOCAL` in the statement that opens each transaction (one round
//!   trip with `BEGIN`); those it tracks and replays on whichever server
//!   session serves the client (`application_name`, `TimeZone`) stay session
//!   settings;
//! - tokio-postgres resolves user-defined types (the `JobStatus` and
//!   `ModuleStatus` enums) once per connection, with statements it keeps for
//!   the connection's life: they are resolved here, in one transaction, when
//!   the connection opens, and those statements are deallocated before it
//!   commits, so no server session is left holding a statement of ours;
//! - the pool's health check is a simple-protocol `SELECT 1`.
//!
//! What needs a session of its own (LISTEN, the claim loop's plan settings,
//! the migration lock) connects to `LISTEN_DATABASE_URL` instead, directly.

use diesel::{ConnectionResult, connection::CacheSize};
use diesel_async::{
    AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _, SimpleAsyncConnection as _,
};

pub use crate::config::DatabasePoolMode as PoolMode;

use super::PoolSettings;

/// Takes over a connection tokio-postgres just opened (plaintext or TLS).
/// diesel-async sets its own session settings (`TimeZone`,
/// `client_encoding`) with two prepared statements as it builds the
/// connection; here they run in a transaction, so that a transaction
/// pooler keeps them on one server session.
pub(super) async fn adopt<T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<tokio_postgres::Socket, T>,
) -> ConnectionResult<AsyncPgConnection>
where
    T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
{
    let failed = |e: tokio_postgres::Error| diesel::ConnectionError::BadConnection(e.to_string());
    // diesel-async drives the connection once it owns it; until then, this
    // one statement needs it driven here.
    tokio::select! {
        began = client.batch_execute("BEGIN") => began.map_err(failed)?,
        ended = &mut connection => {
            return Err(diesel::ConnectionError::BadConnection(match ended {
                Ok(()) => "the server closed the connection".to_owned(),
                Err(e) => e.to_string(),
            }));
        }
    }
    let mut conn = AsyncPgConnection::try_from_client_and_connection(client, connection).await?;
    conn.batch_execute("COMMIT")
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Session settings of every pooled connection. Under `transaction`, only
/// those PgBouncer tracks and replays: the others would be left on
/// whichever server session ran them, for its next client.
pub(super) fn session_setup(settings: &PoolSettings) -> String {
    let application_name = format!(
        "SET application_name = '{}'; SET TIME ZONE 'UTC'",
        settings.application_name.replace('\'', "''")
    );
    match settings.mode {
        PoolMode::Session => format!(
            "{application_name}; SET statement_timeout = {}; SET jit = off",
            settings.statement_timeout.as_millis()
        ),
        PoolMode::Transaction => application_name,
    }
}

/// The statement that opens each transaction: `BEGIN`, and under
/// `transaction` the untracked settings, for this transaction only.
pub(super) fn begin_sql(settings: &PoolSettings) -> String {
    match settings.mode {
        PoolMode::Session => "BEGIN".to_owned(),
        PoolMode::Transaction => format!(
            "BEGIN; SET LOCAL statement_timeout = {}; SET LOCAL jit = off",
            settings.statement_timeout.as_millis()
        ),
    }
}

/// Makes a freshly opened connection fit for `mode` (nothing to do under
/// `session`).
pub(super) async fn prepare(conn: &mut AsyncPgConnection, mode: PoolMode) -> ConnectionResult<()> {
    if mode == PoolMode::Session {
        return Ok(());
    }
    conn.set_prepared_statement_cache_size(CacheSize::Disabled);
    resolve_user_types(conn)
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)
}

#[derive(diesel::QueryableByName)]
struct TypeName {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

/// Has tokio-postgres learn every enum and domain of the database's own
/// schemas (and their arrays) now, in one transaction, then deallocates the
/// statements it kept for that.
async fn resolve_user_types(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    conn.batch_execute("BEGIN").await?;
    let resolved = async {
        let types: Vec<TypeName> = diesel::sql_query(
            "SELECT format('%I.%I', n.nspname, t.typname) AS name \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.typtype IN ('e', 'd') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_%'",
        )
        .load(conn)
        .await?;
        if !types.is_empty() {
            let columns: Vec<String> = types
                .iter()
                .map(|t| format!("NULL::{0}, NULL::{0}[]", t.name))
                .collect();
            // Describing the statement is what resolves the types.
            diesel::sql_query(format!("SELECT {} LIMIT 0", columns.join(", ")))
                .execute(conn)
                .await?;
        }
        conn.batch_execute("DEALLOCATE ALL").await
    }
    .await;
    match resolved {
        Ok(()) => conn.batch_execute("COMMIT").await,
        Err(error) => {
            let _ = conn.batch_execute("ROLLBACK").await;
            Err(error)
        }
    }
}
