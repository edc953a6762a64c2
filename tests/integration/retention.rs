//! Retention: the pruner deletes what is older than the settings keep,
//! table by table, in batches, and leaves young rows and unfinished jobs;
//! one replica prunes at a time.

use crate::common;

use std::time::Duration;

use automation_control_plane::{
    auth::AuthSettings,
    domain::Identity,
    maintenance::retention::{PruneReport, Pruner, RetentionSettings},
    seed::ADMIN_EMAIL,
    store::retention::PRUNE_LOCK_KEY,
};
use common::{ADMIN_PASSWORD, JWT_SECRET, TestApp, TestOptions};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _, SimpleAsyncConnection as _};

const DAY: Duration = Duration::from_secs(86_400);

fn settings() -> RetentionSettings {
    RetentionSettings {
        completed_jobs: Some(7 * DAY),
        failed_jobs: Some(30 * DAY),
        audit: Some(90 * DAY),
        ended_sessions: DAY,
        interval: Duration::from_millis(200),
        // Small batches, so that every table takes several.
        batch: 7,
    }
}

fn pruner(app: &TestApp, settings: RetentionSettings) -> Pruner {
    let options = TestOptions::default();
    let auth = AuthSettings::from_args(&options.auth, &options.passwords, JWT_SECRET)
        .expect("auth settings");
    let identity = Identity::new(&app.pool, &auth);
    Pruner::new(app.pool.clone(), identity.throttle, settings)
}

async fn execute(app: &TestApp, sql: &str) {
    let mut conn = app.pool.get().await.expect("connection");
    conn.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(sql)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// `n` jobs named `name` in `status`, created `created` days ago, with
/// `extra` columns set (`"completedAt" = …`).
fn jobs(n: usize, name: &str, status: &str, created: u32, extra: &str) -> String {
    let set = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        r#"INSERT INTO jobs (id, name, status, payload, "scheduledAt", "createdAt", "updatedAt")
           SELECT gen_random_uuid(), '{name}', '{status}', '{{}}',
                  now() - interval '{created} days', now() - interval '{created} days',
                  now() - interval '{created} days'
           FROM generate_series(1, {n});
           UPDATE jobs SET "updatedAt" = "updatedAt"{set} WHERE name = '{name}';"#
    )
}

async fn populate(app: &TestApp) {
    let sql = [
        // Finished long enough ago: they go.
        jobs(20, "old.completed", "COMPLETED", 40, r#""completedAt" = now() - interval '8 days'"#),
        jobs(9, "old.failed", "FAILED", 40, r#""failedAt" = now() - interval '31 days'"#),
        jobs(8, "old.cancelled", "CANCELLED", 40, ""),
        // Finished recently (though created long ago): they stay.
        jobs(5, "young.completed", "COMPLETED", 40, r#""completedAt" = now() - interval '6 days'"#),
        jobs(5, "young.failed", "FAILED", 40, r#""failedAt" = now() - interval '10 days'"#),
        jobs(3, "young.cancelled", "CANCELLED", 1, ""),
        // Unfinished, however old: they stay.
        jobs(4, "old.pending", "PENDING", 400, ""),
        jobs(
            4,
            "old.running",
            "RUNNING",
            400,
            r#""leaseExpiresAt" = now() + interval '1 hour', attempts = 1"#,
        ),
        r#"INSERT INTO audit_logs (id, action, resource, outcome, details, "ipAddress", "userAgent", "createdAt")
           SELECT gen_random_uuid(), 'old.action', 'r', 'success', '{}', '127.0.0.1', 't',
                  now() - interval '91 days' FROM generate_series(1, 15);
           INSERT INTO audit_logs (id, action, resource, outcome, details, "ipAddress", "userAgent", "createdAt")
           SELECT gen_random_uuid(), 'young.action', 'r', 'success', '{}', '127.0.0.1', 't',
                  now() - interval '89 days' FROM generate_series(1, 4);"#
            .to_owned(),
        sessions("old.expired", r#"now() - interval '2 days'"#, "NULL"),
        sessions("old.revoked", r#"now() + interval '5 days'"#, r#"now() - interval '2 days'"#),
        sessions("young.expired", r#"now() - interval '1 hour'"#, "NULL"),
        sessions("young.revoked", r#"now() + interval '5 days'"#, r#"now() - interval '1 hour'"#),
        r#"INSERT INTO session_spent_tokens ("tokenHash", "sessionId")
           SELECT 'spent-' || "refreshToken", id FROM sessions
           WHERE "userAgent" LIKE 'old.%' OR "userAgent" LIKE 'young.%';
           INSERT INTO login_throttles (key, failures, "windowStartedAt")
           VALUES ('old:key', 3, now() - interval '2 days'), ('young:key', 3, now());"#
            .to_owned(),
    ];
    execute(app, &sql.join("\n")).await;
}

/// Three sessions of the seeded admin (`userAgent` = `tag`).
fn sessions(tag: &str, expires: &str, revoked: &str) -> String {
    format!(
        r#"INSERT INTO sessions (id, "userId", "refreshToken", "userAgent", "ipAddress", "expiresAt", "revokedAt")
           SELECT gen_random_uuid(), u.id, '{tag}-' || n, '{tag}', '127.0.0.1', {expires}, {revoked}
           FROM users u, generate_series(1, 3) n WHERE u.email = '{ADMIN_EMAIL}';"#
    )
}

async fn jobs_named(app: &TestApp, name: &str) -> i64 {
    count(
        app,
        &format!("SELECT count(*) AS n FROM jobs WHERE name = '{name}'"),
    )
    .await
}

#[tokio::test]
async fn old_rows_go_and_young_rows_and_unfinished_jobs_stay() {
    let app = TestApp::spawn().await;
    // A live session of the admin's own, which must keep working.
    let live = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
    populate(&app).await;
    let report = pruner(&app, settings())
        .prune_once()
        .await
        .expect("prune")
        .expect("no other replica prunes");
    assert_eq!(
        report,
        PruneReport {
            completed_jobs: 20,
            failed_jobs: 17,
            audit: 15,
            sessions: 6,
            login_throttles: 1,
        }
    );
    for (name, left) in [
        ("old.completed", 0),
        ("old.failed", 0),
        ("old.cancelled", 0),
        ("young.completed", 5),
        ("young.failed", 5),
        ("young.cancelled", 3),
        ("old.pending", 4),
        ("old.running", 4),
    ] {
        assert_eq!(jobs_named(&app, name).await, left, "{name}");
    }
    let audit =
        |action: &str| format!("SELECT count(*) AS n FROM audit_logs WHERE action = '{action}'");
    assert_eq!(count(&app, &audit("old.action")).await, 0);
    assert_eq!(count(&app, &audit("young.action")).await, 4);
    for (tag, left) in [
        ("old.expired", 0),
        ("old.revoked", 0),
        ("young.expired", 3),
        ("young.revoked", 3),
    ] {
        let sql = format!(r#"SELECT count(*) AS n FROM sessions WHERE "userAgent" = '{tag}'"#);
        assert_eq!(count(&app, &sql).await, left, "{tag}");
    }
    // Spent tokens went with their sessions.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS n FROM session_spent_tokens t JOIN sessions s \
             ON s.id = t.\"sessionId\" WHERE s.\"userAgent\" LIKE 'young.%'"
        )
        .await,
        6
    );
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM session_spent_tokens").await,
        6
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS n FROM login_throttles WHERE key IN ('old:key', 'young:key')"
        )
        .await,
        1
    );
    // The live session still works, and a second pass finds nothing.
    assert_eq!(
        app.current_user(&live.access_token).await.email,
        ADMIN_EMAIL
    );
    let again = pruner(&app, settings())
        .prune_once()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, PruneReport::default());
    app.stop().await;
}

#[tokio::test]
async fn audit_is_kept_for_ever_by_default_and_zero_days_keeps_jobs() {
    let app = TestApp::spawn().await;
    populate(&app).await;
    let keep = RetentionSettings {
        completed_jobs: None,
        failed_jobs: None,
        ..RetentionSettings::default()
    };
    assert_eq!(RetentionSettings::default().audit, None);
    let report = pruner(&app, keep).prune_once().await.unwrap().unwrap();
    assert_eq!(
        (report.completed_jobs, report.failed_jobs, report.audit),
        (0, 0, 0)
    );
    assert_eq!(jobs_named(&app, "old.completed").await, 20);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS n FROM audit_logs WHERE action = 'old.action'"
        )
        .await,
        15
    );
    app.stop().await;
}

#[tokio::test]
async fn one_replica_prunes_at_a_time() {
    let app = TestApp::spawn().await;
    populate(&app).await;
    // Another replica mid-batch: it holds the lock in its transaction.
    let mut other = diesel_async::AsyncPgConnection::establish(&app.db.url())
        .await
        .expect("connect");
    other
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({PRUNE_LOCK_KEY})"
        ))
        .await
        .expect("lock");
    let pass = pruner(&app, settings()).prune_once().await.expect("prune");
    assert_eq!(pass, None, "this replica left the pass to the other");
    assert_eq!(
        jobs_named(&app, "old.completed").await,
        20,
        "nothing was deleted"
    );
    other.batch_execute("COMMIT").await.expect("commit");

    // Two replicas at once: each batch is one replica's (a replica that
    // finds the lock taken leaves the rest of its pass to the next one);
    // between them, and a pass after, every old row goes and no young one.
    let (first, second) = (pruner(&app, settings()), pruner(&app, settings()));
    let (a, b) = tokio::join!(first.prune_once(), second.prune_once());
    let passes = [a.expect("a"), b.expect("b")];
    assert!(passes.iter().any(Option::is_some), "{passes:?}");
    pruner(&app, settings())
        .prune_once()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(jobs_named(&app, "old.completed").await, 0);
    assert_eq!(jobs_named(&app, "young.completed").await, 5);
    app.stop().await;
}

#[tokio::test]
async fn the_server_prunes_on_its_interval() {
    let mut options = TestOptions::default();
    options.server.retention = settings();
    let app = TestApp::spawn_with(options).await;
    populate(&app).await;
    let started = std::time::Instant::now();
    while jobs_named(&app, "old.completed").await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server never pruned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(jobs_named(&app, "young.completed").await, 5);
    assert_eq!(jobs_named(&app, "old.running").await, 4);
    app.stop().await;
}
