//! The `caller_changes` notification channel: what the triggers of migration
//! `2026-12-01-000008_caller_changes` announce, and the statements the
//! replicas' caller caches speak on it (see `auth::callers`); and the
//! `account_changes` channel of migration `2026-12-04-000002_account_changes`.

use diesel::{QueryResult, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// The channel's name.
pub const CHANNEL: &str = "caller_changes";

/// The channel on which every change of a `users` row is announced
/// (`account:<id>`), apart from [`CHANNEL`] so that replicas built before
/// it never hear it.
pub const ACCOUNT_CHANNEL: &str = "account_changes";

/// Starts listening on both channels on this connection (so that their
/// notifications arrive in commit order).
pub async fn listen(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    for channel in [CHANNEL, ACCOUNT_CHANNEL] {
        diesel::sql_query(format!("LISTEN {channel}"))
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Whether the trigger that announces account changes exists and fires
/// (it may be missing while the migration is pending or after it was
/// reverted, or disabled by an operator).
pub async fn account_trigger_enabled(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    #[derive(diesel::QueryableByName)]
    struct Enabled {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        enabled: bool,
    }
    let row: Enabled = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger \
         WHERE tgrelid = to_regclass('users') AND tgname = 'account_changes' \
         AND tgenabled IN ('O', 'A')) AS enabled",
    )
    .get_result(conn)
    .await?;
    Ok(row.enabled)
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
