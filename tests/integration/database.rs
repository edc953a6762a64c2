//! The database layer under misuse: `db::transaction` when its caller goes
//! away mid-transaction (a cancelled call, a deadline) rolls back at once
//! and releases its locks, not left idle in a pooled connection; a
//! LISTEN_DATABASE_URL naming another database than the pool's is refused;
//! a migration that waits for a lock behind a long transaction gives way
//! and is tried again.

use std::time::Duration;

use automation_control_plane::db;
use diesel_async::RunQueryDsl as _;

use crate::common::{self, TestApp, TestServer};

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Asked on a connection of its own: a checkout from the pool the
/// transaction ran on could pick the abandoned connection itself.
async fn advisory_locks_held(app: &TestApp, key: i64) -> i64 {
    let mut conn =
        db::dedicated_connection(&app.db.url(), "lock check", "", Duration::from_secs(5))
            .await
            .expect("connection");
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND objid = $1",
    )
    .bind::<diesel::sql_types::BigInt, _>(key)
    .get_result(&mut conn)
    .await
    .expect("pg_locks");
    count.n
}

#[tokio::test]
async fn a_transaction_dropped_midway_releases_its_locks() {
    let app = TestApp::spawn().await;
    let key = 424_242;
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        db::transaction(&app.pool, "test.abandoned", async |conn| {
            diesel::sql_query(format!("SELECT pg_advisory_xact_lock({key})"))
                .execute(conn)
                .await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        }),
    )
    .await;
    assert!(abandoned.is_err(), "the transaction was cut short");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while advisory_locks_held(&app, key).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned transaction still holds its lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pool still works.
    db::transaction(&app.pool, "test.after", async |conn| {
        diesel::sql_query("SELECT 1").execute(conn).await?;
        Ok(())
    })
    .await
    .expect("a transaction after");
}

#[tokio::test]
async fn a_direct_url_to_another_database_is_refused() {
    let app = TestApp::spawn().await;
    assert!(
        db::ensure_same_database(&app.pool, &app.db.url())
            .await
            .is_ok(),
        "the same database"
    );
    let other = TestServer::get().await.create_database(true).await;
    let refused = db::ensure_same_database(&app.pool, &other.url())
        .await
        .expect_err("another database");
    assert!(
        refused.to_string().contains("LISTEN_DATABASE_URL"),
        "{refused}"
    );
    // A pool on that other database, checked against the first: refused too.
    let pool = common::pool(&other.url(), Duration::from_secs(5));
    assert!(
        db::ensure_same_database(&pool, &app.db.url())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_migration_waiting_behind_a_long_transaction_gives_way_and_is_tried_again() {
    use diesel_async::{AsyncConnection as _, AsyncPgConnection, SimpleAsyncConnection as _};
    const VERSION: &str = "20261206000001";
    let server = TestServer::get().await;
    let database = server.create_database(true).await;
    let url = database.url();
    // A database one migration behind: the newest one undone by hand.
    let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
    conn.batch_execute(&format!(
        "BEGIN; {} DELETE FROM __diesel_schema_migrations WHERE version = '{VERSION}'; COMMIT",
        include_str!("../../migrations/2026-12-06-000001_concurrency_keys_hot/down.sql")
    ))
    .await
    .expect("one migration behind");
    // A long transaction that has read the table (as a backup's does).
    let mut reader = AsyncPgConnection::establish(&url).await.expect("connect");
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM concurrency_keys")
        .await
        .expect("long transaction");
    let migrating = tokio::spawn({
        let url = url.clone();
        async move { db::migrations::migrate(&url).await }
    });
    // Past the migration's lock timeout (5 s): it gave way, and waits to
    // try again rather than failing the start.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(!migrating.is_finished(), "the migration gave up");
    let rows: Vec<Count> = diesel::sql_query(
        "SELECT count(*) AS n FROM __diesel_schema_migrations WHERE version = $1",
    )
    .bind::<diesel::sql_types::Text, _>(VERSION)
    .load(&mut conn)
    .await
    .expect("recorded versions");
    assert_eq!(rows[0].n, 0, "not applied while the table is held");
    reader.batch_execute("COMMIT").await.expect("commit");
    let report = migrating.await.expect("task").expect("migrated");
    assert_eq!(report.applied, vec![VERSION.to_owned()]);
}
