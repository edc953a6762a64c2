//! The `caller_changes` notification channel: what the triggers of migration
//! `2026-12-01-000008_caller_changes` announce, and the statements the
//! replicas' caller caches speak on it (see `auth::callers`).

use diesel::{QueryResult, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// The channel's name.
pub const CHANNEL: &str = "caller_changes";

/// Starts listening on this connection.
pub async fn listen(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    diesel::sql_query(format!("LISTEN {CHANNEL}"))
        .execute(conn)
        .await
        .map(drop)
}

/// Sends `payload` on the channel (committed at once: no transaction).
pub async fn notify(conn: &mut AsyncPgConnection, payload: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(CHANNEL)
        .bind::<Text, _>(payload)
        .execute(conn)
        .await
        .map(drop)
}

/// The backend process of this connection: notifications it sent carry it.
pub async fn backend_pid(conn: &mut AsyncPgConnection) -> QueryResult<i32> {
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let row: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(conn)
        .await?;
    Ok(row.pid)
}
