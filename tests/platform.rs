//! The foundation, end to end: schema, migrations, seeding, health,
//! reflection and the command line.

mod common;

use std::{
    collections::BTreeSet, os::unix::fs::PermissionsExt as _, process::Command, time::Duration,
};

use automation_control_plane::{
    auth::passwords::PasswordHasher,
    db::migrations,
    seed::{self, AdminPassword},
};
use common::{TestApp, TestOptions, TestServer};
use diesel::{QueryableByName, sql_query, sql_types::Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
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

const SEED_TABLES: &str = "('users','roles','user_roles','sessions','modules','jobs','audit_logs')";

/// Every column of the seed document: table.column type nullability default.
const SEED_COLUMNS: &[&str] = &[
    "audit_logs.action character varying NOT NULL -",
    "audit_logs.createdAt timestamp without time zone NOT NULL CURRENT_TIMESTAMP",
    "audit_logs.details jsonb NOT NULL -",
    "audit_logs.id uuid NOT NULL -",
    "audit_logs.ipAddress character varying NOT NULL -",
    "audit_logs.outcome character varying NOT NULL -",
    "audit_logs.resource character varying NOT NULL -",
    "audit_logs.userAgent text NOT NULL -",
    "audit_logs.userId uuid NULL -",
    "jobs.attempts integer NOT NULL 0",
    "jobs.completedAt timestamp without time zone NULL -",
    "jobs.createdAt timestamp without time zone NOT NULL CURRENT_TIMESTAMP",
    "jobs.error jsonb NULL -",
    "jobs.failedAt timestamp without time zone NULL -",
    "jobs.id uuid NOT NULL -",
    "jobs.maxAttempts integer NOT NULL 3",
    "jobs.moduleName character varying NULL -",
    "jobs.name character varying NOT NULL -",
    "jobs.payload jsonb NOT NULL -",
    "jobs.priority integer NOT NULL 0",
    "jobs.result jsonb NULL -",
    "jobs.scheduledAt timestamp without time zone NOT NULL -",
    "jobs.startedAt timestamp without time zone NULL -",
    "jobs.status USER-DEFINED:JobStatus NOT NULL -",
    "jobs.updatedAt timestamp without time zone NOT NULL -",
    "modules.createdAt timestamp without time zone NOT NULL CURRENT_TIMESTAMP",
    "modules.description text NOT NULL -",
    "modules.disabledAt timestamp without time zone NULL -",
    "modules.displayName character varying NOT NULL -",
    "modules.enabledAt timestamp without time zone NULL -",
    "modules.id uuid NOT NULL -",
    "modules.installedAt timestamp without time zone NULL -",
    "modules.manifest jsonb NOT NULL -",
    "modules.name character varying NOT NULL -",
    "modules.status USER-DEFINED:ModuleStatus NOT NULL -",
    "modules.updatedAt timestamp without time zone NOT NULL -",
    "modules.version character varying NOT NULL -",
    "roles.createdAt timestamp without time zone NOT NULL CURRENT_TIMESTAMP",
    "roles.description text NOT NULL -",
    "roles.id uuid NOT NULL -",
    "roles.name character varying NOT NULL -",
    "roles.permissions jsonb NOT NULL -",
    "roles.updatedAt timestamp without time zone NOT NULL -",
    "sessions.createdAt timestamp without time zone NOT NULL CURRENT_TIMESTAMP",
    "sessions.expiresAt timestamp without time zone NOT NULL -",
    "sessions.id uuid NOT NULL -",
    "sessions.ipAddress character varying NOT NULL -",
    "sessions.refreshToken character varying NOT NULL -",
    "sessions.revokedAt timestamp without time zone NULL -",
    "sessions.userAgent text NOT NULL -",
    "sessions.userId uuid NOT NULL -",
    "user_roles.assignedAt timestamp without time zone NOT NULL CURRENT_TIMESTAMP",
    "user_roles.assignedBy uuid NULL -",
    "user_roles.id uuid NOT NULL -",
    "user_roles.roleId uuid NOT NULL -",
    "user_roles.userId uuid NOT NULL -",
    "users.createdAt timestamp without time zone NOT NULL CURRENT_TIMESTAMP",
    "users.email character varying NOT NULL -",
    "users.firstName character varying NULL -",
    "users.id uuid NOT NULL -",
    "users.isActive boolean NOT NULL true",
    "users.lastLogin timestamp without time zone NULL -",
    "users.lastName character varying NULL -",
    "users.password character varying NOT NULL -",
    "users.updatedAt timestamp without time zone NOT NULL -",
    "users.username character varying NOT NULL -",
];

#[tokio::test]
async fn live_schema_matches_the_seed_document() {
    let server = TestServer::get().await;
    let db = server.create_database(true).await;
    let url = db.url();

    let columns = lines(
        &url,
        &format!(
            "SELECT table_name || '.' || column_name || ' ' || \
               CASE WHEN data_type = 'USER-DEFINED' THEN 'USER-DEFINED:' || udt_name ELSE data_type END || ' ' || \
               CASE WHEN is_nullable = 'YES' THEN 'NULL' ELSE 'NOT NULL' END || ' ' || \
               COALESCE(column_default, '-') AS line \
             FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name IN {SEED_TABLES}"
        ),
    )
    .await;
    assert_eq!(columns, set(SEED_COLUMNS));

    let primary_keys = lines(
        &url,
        &format!(
            "SELECT tc.table_name || '.' || kcu.column_name AS line \
             FROM information_schema.table_constraints tc \
             JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name) \
             WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_name IN {SEED_TABLES}"
        ),
    )
    .await;
    assert_eq!(
        primary_keys,
        set(&[
            "audit_logs.id",
            "jobs.id",
            "modules.id",
            "roles.id",
            "sessions.id",
            "user_roles.id",
            "users.id"
        ])
    );

    // Indexes of the seed (later migrations may add more; none may be missing).
    let indexes = lines(
        &url,
        &format!(
            "SELECT regexp_replace(indexdef, ' USING btree', '') AS line FROM pg_indexes \
             WHERE schemaname = 'public' AND tablename IN {SEED_TABLES}"
        ),
    )
    .await;
    for expected in [
        r#"CREATE UNIQUE INDEX users_email_key ON public.users (email)"#,
        r#"CREATE UNIQUE INDEX users_username_key ON public.users (username)"#,
        r#"CREATE UNIQUE INDEX roles_name_key ON public.roles (name)"#,
        r#"CREATE UNIQUE INDEX "user_roles_userId_roleId_key" ON public.user_roles ("userId", "roleId")"#,
        r#"CREATE UNIQUE INDEX "sessions_refreshToken_key" ON public.sessions ("refreshToken")"#,
        r#"CREATE UNIQUE INDEX modules_name_key ON public.modules (name)"#,
        r#"CREATE INDEX jobs_status_idx ON public.jobs (status)"#,
        r#"CREATE INDEX "jobs_moduleName_idx" ON public.jobs ("moduleName")"#,
        r#"CREATE INDEX "jobs_scheduledAt_idx" ON public.jobs ("scheduledAt")"#,
        r#"CREATE INDEX "audit_logs_userId_idx" ON public.audit_logs ("userId")"#,
        r#"CREATE INDEX audit_logs_action_idx ON public.audit_logs (action)"#,
        r#"CREATE INDEX "audit_logs_createdAt_idx" ON public.audit_logs ("createdAt")"#,
    ] {
        assert!(
            indexes.contains(expected),
            "missing index: {expected}\nhave: {indexes:#?}"
        );
    }

    let foreign_keys = lines(
        &url,
        &format!(
            "SELECT conrelid::regclass || '.' || a.attname || ' -> ' || confrelid::regclass || \
               ' ON DELETE ' || CASE confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' \
               WHEN 'r' THEN 'RESTRICT' ELSE 'NO ACTION' END AS line \
             FROM pg_constraint c JOIN pg_attribute a \
               ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) \
             WHERE c.contype = 'f' AND conrelid::regclass::text IN {SEED_TABLES}"
        ),
    )
    .await;
    assert_eq!(
        foreign_keys,
        set(&[
            "audit_logs.userId -> users ON DELETE SET NULL",
            "sessions.userId -> users ON DELETE CASCADE",
            "user_roles.roleId -> roles ON DELETE CASCADE",
            "user_roles.userId -> users ON DELETE CASCADE",
        ])
    );

    let enums = lines(
        &url,
        "SELECT t.typname || ':' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) AS line \
         FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname",
    )
    .await;
    assert_eq!(
        enums,
        set(&[
            "JobStatus:PENDING,RUNNING,COMPLETED,FAILED,CANCELLED",
            "ModuleStatus:REGISTERED,INSTALLING,ENABLED,DISABLED,UPDATING,REMOVING",
        ])
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
    assert!(before.iter().any(|l| l.contains(r#"role operator ["modules:read", "modules:write", "modules:execute", "jobs:read", "jobs:write", "users:read"]"#)), "{before:#?}");
    assert!(before.iter().any(|l| l.starts_with("role admin [\"*:*\"]")));
    assert!(before.iter().any(|l| l.starts_with("role viewer [\"modules:read\", \"jobs:read\", \"users:read\"]")));

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
            "automation.v1.AuditService",
            "automation.v1.AuthService",
            "automation.v1.JobService",
            "automation.v1.ModuleService",
            "automation.v1.RoleService",
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
