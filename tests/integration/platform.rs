//! The foundation, end to end: schema, migrations, seeding, health,
//! reflection and the command line.

use crate::common;

use std::{
    collections::BTreeSet, os::unix::fs::PermissionsExt as _, process::Command, time::Duration,
};

use automation_control_plane::{
    AppError,
    auth::passwords::PasswordHasher,
    db::{
        catalog::{Comparison, Difference, DifferenceKind},
        migrations::{self, MigrationReport, SEED_SCHEMA_VERSION},
    },
    seed::{self, AdminPassword},
};
use common::{TestApp, TestDatabase, TestOptions, TestServer};
use diesel::{QueryableByName, sql_query, sql_types::Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection as _};
use tokio_stream::StreamExt as _;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[derive(QueryableByName, Debug)]
struct Row {
    #[diesel(sql_type = Text)]
    line: String,
}

async fn lines(url: &str, sql: &str) -> BTreeSet<String> {
    let mut conn = AsyncPgConnection::establish(url).await.expect("connect");
    sql_query(sql)
        .load::<Row>(&mut conn)
        .await
        .expect(sql)
        .into_iter()
        .map(|r| r.line)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn live_schema_matches_the_seed_document() {
    let server = TestServer::get().await;
    let db = server.create_database(true).await;

    // Our later migrations may add to the seed tables (indexes, columns
    // every insert can leave out), never change or remove what is there.
    let differences = migrations::seed_schema_differences(&db.url(), Comparison::AllowAdditions)
        .await
        .expect("reading the catalog");
    assert!(differences.is_empty(), "{}", shown(&differences));

    // Compared exactly, whatever differs is such an addition.
    let exact = migrations::seed_schema_differences(&db.url(), Comparison::Exact)
        .await
        .expect("reading the catalog");
    assert!(
        exact.iter().all(|d| d.kind == DifferenceKind::Extra),
        "{}",
        shown(&exact)
    );
}

fn shown(differences: &[Difference]) -> String {
    differences
        .iter()
        .map(|d| format!("\n  {d}"))
        .collect::<String>()
}

/// Migration 1, run as plain SQL: what the platform's existing backend
/// created, with no record of our migrations.
const SEED_SQL: &str = include_str!("../../migrations/00000000000001_seed_schema/up.sql");

/// Prisma's own bookkeeping, as Prisma Migrate creates it, with one applied
/// migration.
const PRISMA_MIGRATIONS_SQL: &str = r#"
CREATE TABLE "_prisma_migrations" (
    "id" VARCHAR(36) NOT NULL,
    "checksum" VARCHAR(64) NOT NULL,
    "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL,
    "logs" TEXT,
    "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count" INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT "_prisma_migrations_pkey" PRIMARY KEY ("id")
);
INSERT INTO "_prisma_migrations"
    ("id", "checksum", "finished_at", "migration_name", "started_at", "applied_steps_count")
VALUES ('0b7e9c1e-4a61-4f0e-9d0a-6f1f3c2b8a41',
        'a3f5c0d1e2b4a6978877665544332211ffeeddccbbaa99887766554433221100',
        '2025-03-01 10:00:01.5+00', '20250301100000_init', '2025-03-01 10:00:00.25+00', 1);
"#;

/// A little of everything the platform's backend writes.
const PLATFORM_ROWS_SQL: &str = r#"
INSERT INTO users (id, email, username, password, "firstName", "lastName", "isActive",
                   "createdAt", "updatedAt", "lastLogin")
VALUES ('6a1d2c3e-0000-4000-8000-000000000001', 'ada@example.com', 'ada',
        '$2b$10$abcdefghijklmnopqrstuuJ0V9S3oV1oQGZ3Qn1Wn3n5kz8zq1qW2', 'Ada', 'Lovelace', true,
        '2025-03-01 10:01:02.345', '2025-03-02 11:00:00.001', '2025-03-03 09:30:00.999');
INSERT INTO roles (id, name, description, permissions, "createdAt", "updatedAt")
VALUES ('6a1d2c3e-0000-4000-8000-000000000002', 'platform-operator', 'Runs things',
        '["modules:read", "jobs:write"]', '2025-03-01 10:01:02.345', '2025-03-01 10:01:02.345');
INSERT INTO user_roles (id, "userId", "roleId", "assignedAt", "assignedBy")
VALUES ('6a1d2c3e-0000-4000-8000-000000000003', '6a1d2c3e-0000-4000-8000-000000000001',
        '6a1d2c3e-0000-4000-8000-000000000002', '2025-03-01 10:05:00', NULL);
INSERT INTO sessions (id, "userId", "refreshToken", "userAgent", "ipAddress", "expiresAt")
VALUES ('6a1d2c3e-0000-4000-8000-000000000004', '6a1d2c3e-0000-4000-8000-000000000001',
        'platform-refresh-token', 'Mozilla/5.0', '10.0.0.7', '2030-01-01 00:00:00');
INSERT INTO modules (id, name, version, "displayName", description, status, manifest,
                     "installedAt", "enabledAt", "updatedAt")
VALUES ('6a1d2c3e-0000-4000-8000-000000000005', 'backup', '1.2.0', 'Backup', 'Nightly backups',
        'ENABLED', '{"entry": "main.py", "schedule": "0 3 * * *"}',
        '2025-03-01 10:10:00', '2025-03-01 10:11:00', '2025-03-01 10:11:00');
INSERT INTO jobs (id, name, "moduleName", status, priority, payload, attempts, "maxAttempts",
                  "scheduledAt", "startedAt", "updatedAt")
VALUES ('6a1d2c3e-0000-4000-8000-000000000006', 'backup.run', 'backup', 'RUNNING', 5,
        '{"target": "s3://bucket"}', 1, 3, '2025-03-04 03:00:00', '2025-03-04 03:00:01.5',
        '2025-03-04 03:00:01.5');
INSERT INTO audit_logs (id, "userId", action, resource, outcome, details, "ipAddress", "userAgent")
VALUES ('6a1d2c3e-0000-4000-8000-000000000007', '6a1d2c3e-0000-4000-8000-000000000001',
        'module.enable', 'modules/backup', 'success', '{"by": "ada"}', '10.0.0.7', 'Mozilla/5.0');
"#;

/// Every row of the platform's tables, as JSON, as the platform wrote it:
/// later migrations only add columns, null on rows that were there before
/// them (or, for `jobs.held` and `jobs.waiting`, false, and `jobs.freeReturns`, 0), and those
/// are left out.
const PLATFORM_ROWS: &str = "\
    SELECT 'users ' || jsonb_strip_nulls(to_jsonb(t))::text AS line FROM users t \
    UNION ALL SELECT 'roles ' || jsonb_strip_nulls(to_jsonb(t))::text FROM roles t \
    UNION ALL SELECT 'user_roles ' || jsonb_strip_nulls(to_jsonb(t))::text FROM user_roles t \
    UNION ALL SELECT 'sessions ' || jsonb_strip_nulls(to_jsonb(t))::text FROM sessions t \
    UNION ALL SELECT 'modules ' || jsonb_strip_nulls(to_jsonb(t))::text FROM modules t \
    UNION ALL SELECT 'jobs ' || jsonb_strip_nulls(to_jsonb(t) - 'held' - 'freeReturns' - 'waiting')::text FROM jobs t \
    UNION ALL SELECT 'audit_logs ' || jsonb_strip_nulls(to_jsonb(t))::text FROM audit_logs t \
    UNION ALL SELECT '_prisma_migrations ' || jsonb_strip_nulls(to_jsonb(t))::text FROM _prisma_migrations t";

/// Tables, indexes and types of the public schema: what a refused adoption
/// must leave as it was.
const PUBLIC_OBJECTS: &str = "\
    SELECT CASE c.relkind WHEN 'i' THEN 'index ' ELSE 'relation ' END || c.relname AS line \
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' \
    UNION ALL SELECT 'type ' || t.typname FROM pg_type t \
    JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public'";

/// A database built the way the platform builds it: `seed_sql` run directly
/// (not through diesel), Prisma's table, some rows, then `changes`.
async fn platform_database(seed_sql: &str, changes: &str) -> TestDatabase {
    let server = TestServer::get().await;
    let db = server.create_database(false).await;
    let mut conn = AsyncPgConnection::establish(&db.url())
        .await
        .expect("connect");
    for sql in [seed_sql, PRISMA_MIGRATIONS_SQL, PLATFORM_ROWS_SQL, changes] {
        conn.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
    }
    db
}

#[tokio::test]
async fn a_database_the_platform_built_is_adopted_with_its_rows() {
    let db = platform_database(SEED_SQL, "").await;
    let url = db.url();
    let rows = lines(&url, PLATFORM_ROWS).await;
    assert_eq!(rows.len(), 8, "{rows:#?}");

    // diesel's status creates its (empty) table: that must not hide the seed.
    let status = migrations::status(&url).await.expect("status");
    assert!(status.applied.is_empty(), "{status:?}");
    assert_eq!(status.pending[0], SEED_SCHEMA_VERSION, "{status:?}");

    let report = migrations::migrate(&url).await.expect("adopting");
    assert_eq!(report.adopted.as_deref(), Some(SEED_SCHEMA_VERSION));
    assert!(!report.applied.is_empty(), "later migrations ran");

    let status = migrations::status(&url).await.expect("status");
    assert!(status.pending.is_empty(), "{status:?}");
    let mut recorded = vec![SEED_SCHEMA_VERSION.to_owned()];
    recorded.extend(report.applied.iter().cloned());
    assert_eq!(status.applied, recorded);
    assert_eq!(lines(&url, PLATFORM_ROWS).await, rows);
    let differences = migrations::seed_schema_differences(&url, Comparison::AllowAdditions)
        .await
        .expect("reading the catalog");
    assert!(differences.is_empty(), "{}", shown(&differences));

    let again = migrations::migrate(&url).await.expect("again");
    assert_eq!(again, MigrationReport::default());
    assert_eq!(lines(&url, PLATFORM_ROWS).await, rows);
}

#[tokio::test]
async fn a_database_that_differs_from_the_seed_is_refused_untouched() {
    let without_removing = SEED_SQL.replace(", 'REMOVING'", "");
    let cases = [
        (
            SEED_SQL,
            r#"ALTER TABLE users DROP COLUMN "lastLogin";"#,
            "column users.lastLogin: missing (expected timestamp(3) without time zone NULL)",
        ),
        (
            without_removing.as_str(),
            "",
            "enum type ModuleStatus: expected labels REGISTERED, INSTALLING, ENABLED, DISABLED, \
             UPDATING, REMOVING, found REGISTERED, INSTALLING, ENABLED, DISABLED, UPDATING",
        ),
        (
            SEED_SQL,
            r#"ALTER TABLE audit_logs DROP CONSTRAINT "audit_logs_userId_fkey";
               ALTER TABLE audit_logs ADD CONSTRAINT "audit_logs_userId_fkey" FOREIGN KEY ("userId")
                   REFERENCES users (id) ON DELETE CASCADE ON UPDATE CASCADE;"#,
            "foreign key audit_logs_userId_fkey on audit_logs: expected (userId) REFERENCES users \
             (id) ON DELETE SET NULL ON UPDATE CASCADE, found (userId) REFERENCES users (id) \
             ON DELETE CASCADE ON UPDATE CASCADE",
        ),
        (
            SEED_SQL,
            r#"CREATE INDEX "jobs_priority_idx" ON jobs (priority);"#,
            "index jobs_priority_idx on jobs: not in the seed schema (found btree (priority))",
        ),
    ];
    for (seed_sql, changes, difference) in cases {
        let db = platform_database(seed_sql, changes).await;
        let url = db.url();
        let objects = lines(&url, PUBLIC_OBJECTS).await;
        let rows = lines(&url, PLATFORM_ROWS).await;

        let error = migrations::run_pending(&url)
            .await
            .expect_err("a differing schema is refused");
        let AppError::Config(message) = &error else {
            panic!("expected a configuration error, got {error:?}");
        };
        assert!(message.contains(difference), "{message}");
        assert!(message.contains("nothing was changed"), "{message}");
        assert_eq!(
            message.matches("\n  - ").count(),
            1,
            "one difference: {message}"
        );

        assert_eq!(lines(&url, PUBLIC_OBJECTS).await, objects);
        assert_eq!(lines(&url, PLATFORM_ROWS).await, rows);
        assert!(!objects.contains("relation __diesel_schema_migrations"));
    }
}

#[tokio::test]
async fn a_partial_seed_is_refused() {
    let db = platform_database(SEED_SQL, "").await;
    let url = db.url();
    let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
    conn.batch_execute("DROP TABLE jobs; DROP TABLE sessions;")
        .await
        .expect("dropping");
    let objects = lines(&url, PUBLIC_OBJECTS).await;

    let error = migrations::run_pending(&url)
        .await
        .expect_err("a partial schema is refused");
    let message = error.to_string();
    assert!(
        message.contains("\n  - table sessions: missing"),
        "{message}"
    );
    assert!(message.contains("\n  - table jobs: missing"), "{message}");
    assert_eq!(lines(&url, PUBLIC_OBJECTS).await, objects);
}

#[tokio::test]
async fn replicas_migrating_at_once_migrate_once() {
    let server = TestServer::get().await;
    let empty = server.create_database(false).await;
    let url = empty.url();
    let runs = futures::future::join_all((0..4).map(|_| migrations::run_pending(&url))).await;
    let applied: Vec<Vec<String>> = runs.into_iter().map(|r| r.expect("migrate")).collect();
    let status = migrations::status(&url).await.expect("status");
    assert!(status.pending.is_empty(), "{status:?}");
    let mut counts: Vec<usize> = applied.iter().map(Vec::len).collect();
    counts.sort_unstable();
    assert_eq!(counts, [0, 0, 0, status.applied.len()], "{applied:?}");

    let platform = platform_database(SEED_SQL, "").await;
    let url = platform.url();
    let runs = futures::future::join_all((0..4).map(|_| migrations::migrate(&url))).await;
    let reports: Vec<MigrationReport> = runs.into_iter().map(|r| r.expect("adopt")).collect();
    assert_eq!(
        reports.iter().filter(|r| r.adopted.is_some()).count(),
        1,
        "{reports:?}"
    );
    assert_eq!(
        reports.iter().filter(|r| !r.applied.is_empty()).count(),
        1,
        "{reports:?}"
    );
    assert!(
        migrations::status(&url)
            .await
            .expect("status")
            .pending
            .is_empty()
    );
}

#[tokio::test]
async fn migrations_go_up_down_and_up_again() {
    let server = TestServer::get().await;
    let db = server.create_database(false).await;
    let url = db.url();
    let tables = "SELECT table_name::text AS line FROM information_schema.tables \
                  WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations'";

    let status = migrations::status(&url).await.expect("status");
    assert!(status.applied.is_empty());
    assert!(status.pending.len() >= 2);

    let applied = migrations::run_pending(&url).await.expect("up");
    assert_eq!(applied.len(), status.pending.len());
    assert!(lines(&url, tables).await.is_superset(&set(&[
        "users",
        "roles",
        "user_roles",
        "sessions",
        "modules",
        "jobs",
        "audit_logs"
    ])));
    let status = migrations::status(&url).await.expect("status");
    assert!(status.pending.is_empty());
    assert!(
        migrations::run_pending(&url)
            .await
            .expect("again")
            .is_empty()
    );

    let reverted = migrations::revert_all(&url).await.expect("down");
    assert_eq!(reverted.len(), applied.len());
    assert!(lines(&url, tables).await.is_empty());
    let types =
        "SELECT typname::text AS line FROM pg_type WHERE typname IN ('JobStatus','ModuleStatus')";
    assert!(lines(&url, types).await.is_empty());

    assert_eq!(
        migrations::run_pending(&url).await.expect("up again").len(),
        applied.len()
    );
}

#[tokio::test]
async fn seeding_twice_changes_nothing() {
    let server = TestServer::get().await;
    let db = server.create_database(true).await;
    let pool = common::pool(&db.url(), Duration::from_secs(10));
    let hasher = PasswordHasher::new(4);
    let snapshot = "SELECT 'role ' || name || ' ' || permissions::text || ' ' || id AS line FROM roles \
                    UNION ALL SELECT 'user ' || email || ' ' || password || ' ' || id FROM users \
                    UNION ALL SELECT 'assignment ' || \"userId\" || ' ' || \"roleId\" FROM user_roles";

    let first = seed::run(
        &pool,
        &hasher,
        AdminPassword::Given("first-password".into()),
    )
    .await
    .unwrap();
    assert_eq!(first.roles_created, ["admin", "operator", "viewer"]);
    assert!(first.admin_created);
    let before = lines(&db.url(), snapshot).await;
    assert!(before.iter().any(|l| l.contains(r#"role operator ["modules:read", "modules:write", "modules:execute", "jobs:read", "jobs:write", "users:read", "schedules:read", "schedules:write"]"#)), "{before:#?}");
    assert!(before.iter().any(|l| l.starts_with("role admin [\"*:*\"]")));
    assert!(before.iter().any(|l| l.starts_with(
        "role viewer [\"modules:read\", \"jobs:read\", \"users:read\", \"schedules:read\"]"
    )));

    let second = seed::run(
        &pool,
        &hasher,
        AdminPassword::Given("other-password".into()),
    )
    .await
    .unwrap();
    assert!(second.roles_created.is_empty());
    assert!(!second.admin_created);
    assert_eq!(lines(&db.url(), snapshot).await, before);
    let hash = before
        .iter()
        .find(|l| l.starts_with("user admin@"))
        .unwrap();
    assert!(hash.contains(" $2"), "stored as a bcrypt hash: {hash}");
    assert!(!hash.contains("first-password"));
}

async fn health_of(app: &TestApp, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(app.channel().await);
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check");
    ServingStatus::try_from(response.into_inner().status).expect("status")
}

async fn wait_for_health(app: &TestApp, service: &str, wanted: ServingStatus) {
    for _ in 0..100 {
        if health_of(app, service).await == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health of '{service}' never became {wanted:?}");
}

#[tokio::test]
async fn health_follows_the_database() {
    let app = TestApp::spawn_with(TestOptions {
        through_proxy: true,
        acquire_timeout: Duration::from_millis(500),
        ..TestOptions::default()
    })
    .await;

    wait_for_health(&app, "", ServingStatus::Serving).await;
    wait_for_health(&app, "automation.v1.UserService", ServingStatus::Serving).await;

    let proxy = app.proxy.as_ref().expect("proxy");
    proxy.cut();
    wait_for_health(&app, "", ServingStatus::NotServing).await;
    wait_for_health(&app, "automation.v1.JobService", ServingStatus::NotServing).await;
    // Calls needing the database fail fast and retryably, not with a hang.
    let status = app
        .login("admin", common::ADMIN_PASSWORD)
        .await
        .expect_err("database is down");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    proxy.restore();
    wait_for_health(&app, "", ServingStatus::Serving).await;
    wait_for_health(&app, "automation.v1.JobService", ServingStatus::Serving).await;
    app.login("admin", common::ADMIN_PASSWORD)
        .await
        .expect("login works again");
    app.stop().await;
}

#[tokio::test]
async fn reflection_lists_every_service() {
    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("one answer").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected answer {response:?}");
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        set(&[
            "automation.v1.ApiKeyService",
            "automation.v1.AuditService",
            "automation.v1.AuthService",
            "automation.v1.JobService",
            "automation.v1.ModuleService",
            "automation.v1.RoleService",
            "automation.v1.ScheduleService",
            "automation.v1.UserService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ])
    );
    app.stop().await;
}

fn control_plane(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let data_dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_control-plane"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env("DATA_DIR", data_dir.path())
        .env("RUST_LOG", "error");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run control-plane")
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn unknown_flags_are_refused() {
    let output = control_plane(&["serve", "--no-such-flag"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--no-such-flag"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn malformed_database_url_is_named() {
    let output = control_plane(&["migrate"], &[("DATABASE_URL", "mysql//nope")]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("DATABASE_URL"), "{message}");
    assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
}

#[test]
fn unreachable_database_is_reported() {
    let output = control_plane(
        &["migrate"],
        &[("DATABASE_URL", "postgres://user:secret-pw@127.0.0.1:1/db")],
    );
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("secret-pw"), "password leaked: {message}");
}

#[tokio::test]
async fn migrate_adopts_a_database_the_platform_built() {
    let db = platform_database(SEED_SQL, "").await;
    let url = db.url();
    let output =
        tokio::task::spawn_blocking(move || control_plane(&["migrate"], &[("DATABASE_URL", &url)]))
            .await
            .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}{stdout}", stderr(&output));
    assert!(
        stdout.contains(&format!("adopted {SEED_SCHEMA_VERSION}")),
        "{stdout}"
    );
    assert!(stdout.contains(", 0 pending"), "{stdout}");

    let differing = platform_database(SEED_SQL, "ALTER TABLE roles DROP COLUMN description;").await;
    let url = differing.url();
    let output =
        tokio::task::spawn_blocking(move || control_plane(&["migrate"], &[("DATABASE_URL", &url)]))
            .await
            .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("column roles.description: missing")
            && message.contains("nothing was changed"),
        "{message}"
    );
}

#[test]
fn a_port_in_use_is_reported() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let output = control_plane(
        &["serve", "--listen-addr", &addr],
        &[
            ("DATABASE_URL", "postgres://u:p@127.0.0.1:1/db"),
            ("JWT_SECRET", common::JWT_SECRET),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains(&addr) && message.contains("--listen-addr"),
        "{message}"
    );
}

#[test]
fn an_external_database_needs_a_jwt_secret() {
    let output = control_plane(
        &["serve", "--listen-addr", "127.0.0.1:0"],
        &[("DATABASE_URL", "postgres://u:p@127.0.0.1:1/db")],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("JWT_SECRET"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn replicas_seeding_at_once_all_succeed() {
    let server = TestServer::get().await;
    let db = server.create_database(true).await;
    let pool = common::pool(&db.url(), Duration::from_secs(10));
    let hasher = PasswordHasher::new(4);
    let runs = futures::future::join_all(
        (0..4).map(|_| seed::run(&pool, &hasher, AdminPassword::Given("race-password".into()))),
    )
    .await;
    let reports: Vec<_> = runs.into_iter().map(|r| r.expect("seed")).collect();
    assert_eq!(reports.iter().filter(|r| r.admin_created).count(), 1);
    let counts = lines(
        &db.url(),
        "SELECT (SELECT count(*) FROM users) || ' users, ' || \
         (SELECT count(*) FROM user_roles) || ' assignments' AS line",
    )
    .await;
    assert_eq!(counts, set(&["1 users, 1 assignments"]));
}

#[test]
fn an_unreachable_data_directory_is_named() {
    if !nix::unistd::Uid::effective().is_root() {
        return; // Only root switches to the postgres user.
    }
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data_dir = private.path().join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .env("DATA_DIR", &data_dir)
        .env("EMBEDDED_PG_PORT", "0")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}{}",
        stderr(&output),
        String::from_utf8_lossy(&output.stdout)
    );
    let message = stderr(&output);
    assert!(
        message.contains("cannot enter") && message.contains(&private.path().display().to_string()),
        "{message}"
    );
}
