//! Thousands of connected idle workers, each with a job name of its own
//! (issue 17): the dispatcher claims for them only once a probe found that
//! one of their names has work, so an honest worker beside them is served
//! at once, and a job for any of them still arrives: created before or
//! after its worker connected, falling due later, behind a concurrency
//! key, of a module, or for a caller that runs no modules' jobs.

use std::time::{Duration, SystemTime};

use automation_control_plane::proto::automation_v1 as pb;
use futures_util::StreamExt as _;
use serde_json::json;

use crate::common::{
    TestApp, TestOptions, account, authed, new_job,
    worker::{TestWorker, job_id, json_struct},
};

/// Idle workers in these tests (each its own name).
const IDLE: usize = 2_000;
/// Streams per HTTP/2 connection (the server allows 256).
const PER_CONNECTION: usize = 200;

fn only(name: &str) -> pb::WorkerHello {
    pb::WorkerHello {
        worker_id: name.into(),
        job_names: vec![name.into()],
        module_names: vec![],
        max_concurrency: 1,
    }
}

/// `IDLE` workers of `token`, worker `i` asking for `idle.n-{i}` only.
async fn idle_fleet(app: &TestApp, token: &str) -> Vec<TestWorker> {
    let mut channels = Vec::new();
    for _ in 0..IDLE.div_ceil(PER_CONNECTION) {
        channels.push(app.channel().await);
    }
    futures_util::stream::iter(0..IDLE)
        .map(|i| {
            let channel = channels[i / PER_CONNECTION].clone();
            async move {
                TestWorker::connect(channel, token, only(&format!("idle.n-{i}")))
                    .await
                    .expect("idle worker connects")
            }
        })
        .buffered(32)
        .collect()
        .await
}

fn options() -> TestOptions {
    let mut options = TestOptions::default();
    options.jobs.streams.work_streams_per_caller = IDLE + 100;
    options
}

#[tokio::test]
async fn idle_workers_with_names_of_their_own_leave_everyone_served() {
    let app = TestApp::spawn_with(options()).await;
    let admin = app.admin_token().await;
    let mut fleet = idle_fleet(&app, &admin).await;
    let mut honest = TestWorker::connect(app.channel().await, &admin, only("honest.job"))
        .await
        .expect("honest worker");

    // The honest worker is served, job after job.
    for i in 0..5 {
        let job = app
            .create_job(&admin, new_job("honest.job", json!({ "i": i })))
            .await;
        let assignment = honest.assignment().await;
        assert_eq!(job_id(&assignment), job.id);
        honest.complete(&assignment, json!(i)).await;
        assert!(honest.ack().await.accepted);
    }

    // A job for one of the idle names goes to its worker.
    let job = app
        .create_job(&admin, new_job("idle.n-1234", json!({})))
        .await;
    assert_eq!(job_id(&fleet[1234].assignment().await), job.id);

    // Behind a concurrency key.
    let keyed = app
        .create_job(
            &admin,
            pb::CreateJobRequest {
                concurrency_key: "idle-key".into(),
                concurrency_max: 1,
                ..new_job("idle.n-77", json!({}))
            },
        )
        .await;
    assert_eq!(job_id(&fleet[77].assignment().await), keyed.id);

    // Falling due later.
    let later = app
        .create_job(
            &admin,
            pb::CreateJobRequest {
                schedule_time: Some(prost_types::Timestamp::from(
                    SystemTime::now() + Duration::from_millis(1_500),
                )),
                ..new_job("idle.n-500", json!({}))
            },
        )
        .await;
    assert_eq!(job_id(&fleet[500].assignment().await), later.id);

    // Created before its worker connected.
    let early = app
        .create_job(&admin, new_job("late.name", json!({})))
        .await;
    let mut late = TestWorker::connect(app.channel().await, &admin, only("late.name"))
        .await
        .expect("late worker");
    assert_eq!(job_id(&late.assignment().await), early.id);

    // And the honest worker still, after all of that.
    let job = app
        .create_job(&admin, new_job("honest.job", json!({})))
        .await;
    assert_eq!(job_id(&honest.assignment().await), job.id);
    // Nobody else was given anything.
    for worker in fleet.iter_mut().take(40) {
        worker.silent_for(Duration::from_millis(10)).await;
    }
}

/// Registers and enables module `name` (a manifest declaring nothing).
async fn enabled_module(app: &TestApp, token: &str, name: &str) {
    let mut modules = pb::module_service_client::ModuleServiceClient::new(app.channel().await);
    modules
        .register_module(authed(
            token,
            pb::RegisterModuleRequest {
                name: name.into(),
                version: "1.0.0".into(),
                display_name: name.into(),
                description: String::new(),
                manifest: Some(json_struct(json!({}))),
            },
        ))
        .await
        .expect("register");
    modules
        .enable_module(authed(token, pb::EnableModuleRequest { id: name.into() }))
        .await
        .expect("enable");
}

#[tokio::test]
async fn idle_module_and_plain_only_workers_get_their_jobs() {
    let app = TestApp::spawn_with(options()).await;
    let admin = app.admin_token().await;
    enabled_module(&app, &admin, "reports").await;
    let (_, bot) = account(&app, "plainbot", &["jobs:execute"]).await;
    let _fleet = idle_fleet(&app, &admin).await;
    let channel = app.channel().await;
    // Any job of module `reports`, no names.
    let mut by_module = TestWorker::connect(
        channel.clone(),
        &admin,
        pb::WorkerHello {
            worker_id: "by-module".into(),
            job_names: vec![],
            module_names: vec!["reports".into()],
            max_concurrency: 1,
        },
    )
    .await
    .expect("module worker");
    // A caller without modules:execute, one name.
    let mut plain = TestWorker::connect(channel.clone(), &bot, only("plain.job"))
        .await
        .expect("plain worker");
    // Let both go idle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let module_job = app
        .create_job(
            &admin,
            pb::CreateJobRequest {
                module_name: "reports".into(),
                ..new_job("reports.build", json!({}))
            },
        )
        .await;
    assert_eq!(job_id(&by_module.assignment().await), module_job.id);
    let plain_job = app
        .create_job(&admin, new_job("plain.job", json!({})))
        .await;
    assert_eq!(job_id(&plain.assignment().await), plain_job.id);
}

/// Runs `sql` on the test's database, behind the API's back.
async fn execute(app: &TestApp, sql: &str) {
    use diesel_async::RunQueryDsl as _;
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(sql)
        .execute(&mut conn)
        .await
        .expect("statement");
}

#[tokio::test]
async fn an_idle_name_with_work_is_found_beside_a_backlog_of_many_names() {
    let app = TestApp::spawn_with(options()).await;
    let admin = app.admin_token().await;
    let mut fleet = idle_fleet(&app, &admin).await;
    // Held jobs over more names than a quarter of the idle names: the probe
    // stops walking the pending names and asks about every idle name.
    execute(
        &app,
        r#"INSERT INTO jobs (id, name, status, payload, "scheduledAt", "updatedAt", held)
           SELECT gen_random_uuid(), 'backlog.' || g, 'PENDING', '{}', LOCALTIMESTAMP,
                  LOCALTIMESTAMP, true
           FROM generate_series(1, 1000) g"#,
    )
    .await;
    let job = app
        .create_job(&admin, new_job("idle.n-1999", json!({})))
        .await;
    assert_eq!(job_id(&fleet[1999].assignment().await), job.id);
    let job = app.create_job(&admin, new_job("idle.n-0", json!({}))).await;
    assert_eq!(job_id(&fleet[0].assignment().await), job.id);

    // Without the backlog the walk sees every pending name: the idle ones
    // among them are found.
    execute(&app, "DELETE FROM jobs WHERE name LIKE 'backlog.%'").await;
    let job = app.create_job(&admin, new_job("idle.n-3", json!({}))).await;
    assert_eq!(job_id(&fleet[3].assignment().await), job.id);
    // A name that sorts after every other.
    let job = app
        .create_job(&admin, new_job("idle.n-999", json!({})))
        .await;
    assert_eq!(job_id(&fleet[999].assignment().await), job.id);
    for worker in fleet.iter_mut().take(40).skip(4) {
        worker.silent_for(Duration::from_millis(10)).await;
    }
}
