//! The service behind Debian's PgBouncer (1.18, no protocol-level prepared
//! statements) in transaction pooling mode: logins, the module lifecycle
//! and a job drain run through it, and nothing the service sets is left
//! on PgBouncer's server sessions for their next client.

use crate::common;

use std::time::{Duration, Instant};

use automation_control_plane::{proto::automation_v1 as pb, seed::ADMIN_EMAIL};
use common::{
    ADMIN_PASSWORD, AuthServiceClient, JobServiceClient, ModuleServiceClient, TestApp, TestOptions,
    UserServiceClient, authed, new_job, new_user,
    pgbouncer::{self, PgBouncer},
    worker::json_struct,
};
use diesel_async::RunQueryDsl as _;
use serde_json::json;
use tonic::Code;

async fn through_pgbouncer(test: &str) -> Option<(PgBouncer, TestApp)> {
    let binary = pgbouncer::binary(test)?;
    let bouncer = PgBouncer::start(&binary).await;
    let app = TestApp::spawn_with(TestOptions {
        pooler: Some(bouncer.addr),
        ..TestOptions::default()
    })
    .await;
    Some((bouncer, app))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_modules_and_a_job_drain_work_in_transaction_mode() {
    let Some((bouncer, app)) =
        through_pgbouncer("logins_modules_and_a_job_drain_work_in_transaction_mode").await
    else {
        return;
    };
    logins(&app).await;
    module_lifecycle(&app).await;
    job_drain(&app, 400).await;
    let url = app.db.url();
    let db = app.db.clone();
    app.stop().await;
    sessions_are_left_clean(&bouncer, &url).await;
    drop(db);
    let log = bouncer.log();
    assert!(
        !log.contains("does not exist") && !log.contains("already exists"),
        "PgBouncer saw statement errors:\n{log}"
    );
}

async fn logins(app: &TestApp) {
    let mut auth = AuthServiceClient::new(app.channel().await);
    let login = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
    let refreshed = auth
        .refresh(pb::RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .expect("refresh")
        .into_inner();
    assert_eq!(
        app.current_user(&refreshed.access_token).await.email,
        ADMIN_EMAIL
    );
    UserServiceClient::new(app.channel().await)
        .create_user(authed(&refreshed.access_token, new_user("bouncer")))
        .await
        .expect("create user");
    assert_eq!(
        app.login("bouncer", "wrong-password-1")
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let user = app.login("bouncer", "long-enough-1").await.expect("login");
    auth.logout(authed(&user.access_token, pb::LogoutRequest {}))
        .await
        .expect("logout");
    assert_eq!(
        auth.get_current_user(authed(&user.access_token, pb::GetCurrentUserRequest {}))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // The old refresh token was rotated away: using it again is refused.
    assert!(
        auth.refresh(pb::RefreshRequest {
            refresh_token: login.refresh_token,
        })
        .await
        .is_err()
    );
}

async fn module_lifecycle(app: &TestApp) {
    let token = app.admin_token().await;
    let mut modules = ModuleServiceClient::new(app.channel().await);
    let registered = modules
        .register_module(authed(
            &token,
            pb::RegisterModuleRequest {
                name: "bounced".into(),
                version: "1.0.0".into(),
                display_name: "Bounced".into(),
                description: String::new(),
                manifest: Some(json_struct(json!({"jobs": [{"name": "bounced.run"}]}))),
            },
        ))
        .await
        .expect("register")
        .into_inner()
        .module
        .expect("module");
    assert_eq!(registered.status(), pb::ModuleStatus::Registered);
    let id = registered.id.clone();
    let status = |module: Option<pb::Module>| module.expect("module").status();
    let enabled = modules
        .enable_module(authed(&token, pb::EnableModuleRequest { id: id.clone() }))
        .await
        .expect("enable")
        .into_inner();
    assert_eq!(status(enabled.module), pb::ModuleStatus::Enabled);
    // A module job runs while the module is enabled.
    let job = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                module_name: "bounced".into(),
                ..new_job("bounced.run", json!({}))
            },
        )
        .await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    assert_eq!(common::worker::job_id(&assignment), job.id);
    worker.complete(&assignment, json!({"ok": true})).await;
    assert!(worker.ack().await.accepted);
    drop(worker);
    let disabled = modules
        .disable_module(authed(&token, pb::DisableModuleRequest { id: id.clone() }))
        .await
        .expect("disable")
        .into_inner();
    assert_eq!(status(disabled.module), pb::ModuleStatus::Disabled);
    let deleted = modules
        .delete_module(authed(&token, pb::DeleteModuleRequest { id: id.clone() }))
        .await
        .expect("delete")
        .into_inner();
    assert!(deleted.deleted);
    assert_eq!(
        modules
            .get_module(authed(&token, pb::GetModuleRequest { id }))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

/// Enqueues `total` jobs and drains them with two workers; every job
/// completes once.
async fn job_drain(app: &TestApp, total: usize) {
    let token = app.admin_token().await;
    let mut jobs = JobServiceClient::new(app.channel().await);
    for chunk in (0..total).collect::<Vec<_>>().chunks(100) {
        let requests = chunk
            .iter()
            .map(|i| new_job("bounce.drain", json!({"i": i})))
            .collect();
        jobs.batch_create_jobs(authed(&token, pb::BatchCreateJobsRequest { requests }))
            .await
            .expect("batch");
    }
    let mut workers = Vec::new();
    for _ in 0..2 {
        let channel = app.channel().await;
        let token = token.clone();
        workers.push(tokio::spawn(async move {
            let mut worker =
                common::worker::TestWorker::connect(channel, &token, common::worker::hello(16))
                    .await
                    .expect("worker");
            let mut done = 0usize;
            loop {
                match worker.next_within(Duration::from_secs(3)).await {
                    Some(Ok(Some(pb::work_response::Kind::Assignment(assignment)))) => {
                        worker.complete(&assignment, json!({"ok": true})).await;
                        done += 1;
                    }
                    Some(Ok(Some(_))) => {}
                    Some(Ok(None)) | Some(Err(_)) | None => return done,
                }
            }
        }));
    }
    let started = Instant::now();
    let completed = loop {
        let completed = count(
            app,
            "SELECT count(*) AS n FROM jobs WHERE name = 'bounce.drain' AND status = 'COMPLETED'",
        )
        .await;
        if completed == total as i64 || started.elapsed() > Duration::from_secs(120) {
            break completed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let delivered: usize = futures::future::join_all(workers)
        .await
        .into_iter()
        .map(|r| r.expect("worker"))
        .sum();
    assert_eq!(completed, total as i64, "every job completed");
    assert_eq!(delivered, total, "every job was delivered once");
    assert_eq!(
        count(
            app,
            "SELECT count(*) AS n FROM jobs WHERE name = 'bounce.drain' AND attempts <> 1"
        )
        .await,
        0,
        "every job ran once"
    );
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
        .expect("count")
        .n
}

/// `statement_timeout`, `jit`, and the number of prepared statements of
/// the server session that answers, asked in one simple query (which
/// prepares nothing).
async fn session_state(client: &tokio_postgres::Client) -> (String, String, String) {
    let messages = client
        .simple_query(
            "SELECT current_setting('statement_timeout'), current_setting('jit'), \
             (SELECT count(*) FROM pg_prepared_statements)",
        )
        .await
        .expect("settings");
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .expect("a row");
    let column = |i: usize| row.get(i).expect("a value").to_owned();
    (column(0), column(1), column(2))
}

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// Every server session PgBouncer holds (round-robin: twice round the pool)
/// has the cluster's own settings and no prepared statement of ours.
async fn sessions_are_left_clean(bouncer: &PgBouncer, url: &str) {
    let (timeout, jit, _) = session_state(&client(url).await).await;
    let through = client(&bouncer.url(url)).await;
    for _ in 0..bouncer.pool_size * 2 {
        assert_eq!(
            session_state(&through).await,
            (timeout.clone(), jit.clone(), "0".to_owned()),
            "a server session keeps a setting or a prepared statement of ours"
        );
    }
}
