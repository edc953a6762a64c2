//! How schedules fire: one job per fire time across two replicas, the
//! overlap policies with a real worker, fire times missed while no server
//! ran, and schedules of a module following the module's state.

use std::time::{Duration, Instant};

use automation_control_plane::proto::automation_v1::{self as pb, CancellationCause};
use diesel_async::RunQueryDsl as _;
use serde_json::json;
use tonic::Code;

use super::{create, get, jobs_of, new_schedule, pause};
use crate::common::{
    self, ModuleServiceClient, TestApp, TestOptions, authed,
    worker::{TestWorker, job_id, json_struct},
};

/// Registers and enables a module declaring `job` (no hooks).
pub(crate) async fn module_with_job(app: &TestApp, token: &str, module: &str, job: &str) {
    let mut modules = ModuleServiceClient::new(app.channel().await);
    modules
        .register_module(authed(
            token,
            pb::RegisterModuleRequest {
                name: module.into(),
                version: "1.0.0".into(),
                display_name: module.into(),
                description: String::new(),
                manifest: Some(json_struct(json!({"jobs": [{"name": job}]}))),
            },
        ))
        .await
        .expect("register");
    modules
        .enable_module(authed(token, pb::EnableModuleRequest { id: module.into() }))
        .await
        .expect("enable");
}

#[derive(diesel::QueryableByName)]
struct FireCount {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    at: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    jobs: i64,
}

/// Jobs per fire time of a schedule (unix seconds, count), in order.
async fn jobs_per_fire_time(app: &TestApp, schedule: &str) -> Vec<(i64, i64)> {
    let mut conn = app.pool.get().await.unwrap();
    let rows: Vec<FireCount> = diesel::sql_query(
        r#"SELECT extract(epoch FROM "scheduleFireAt")::bigint AS at, count(*) AS jobs
           FROM jobs WHERE "scheduleId" = $1::uuid AND "scheduleFireAt" IS NOT NULL
           GROUP BY "scheduleFireAt" ORDER BY "scheduleFireAt""#,
    )
    .bind::<diesel::sql_types::Text, _>(schedule)
    .load(&mut conn)
    .await
    .unwrap();
    rows.into_iter().map(|r| (r.at, r.jobs)).collect()
}

#[derive(diesel::QueryableByName)]
struct Lateness {
    #[diesel(sql_type = diesel::sql_types::Double)]
    p50_ms: f64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    max_ms: f64,
}

/// How long after its fire time each job of a schedule was created
/// (median and worst, in ms, by the database's clock).
async fn lateness_ms(app: &TestApp, schedule: &str) -> Lateness {
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query(
        r#"SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50_ms,
                  max(ms)::float8 AS max_ms
           FROM (SELECT (extract(epoch FROM "createdAt" - "scheduleFireAt") * 1000)::float8 AS ms
                 FROM jobs WHERE "scheduleId" = $1::uuid AND "scheduleFireAt" IS NOT NULL) l"#,
    )
    .bind::<diesel::sql_types::Text, _>(schedule)
    .get_result(&mut conn)
    .await
    .unwrap()
}

/// Waits until `check` holds, for at most `patience`.
async fn eventually<F, Fut>(patience: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_second_on_two_replicas_makes_one_job_per_fire_time() {
    let app = TestApp::spawn().await;
    let replica = app.replica(TestOptions::default()).await;
    let token = app.admin_token().await;
    let schedule = create(
        &app,
        &token,
        new_schedule("tick", "* * * * * *", "tick.tock"),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "five fire times", || async {
        jobs_per_fire_time(&app, &schedule.id).await.len() >= 5
    })
    .await;
    pause(&replica, &token, "tick").await.unwrap();
    let fires = jobs_per_fire_time(&app, &schedule.id).await;
    assert!(
        fires.iter().all(|&(_, jobs)| jobs == 1),
        "a fire time with other than one job: {fires:?}"
    );
    // No fire time was passed over: consecutive seconds.
    let (first, last) = (fires[0].0, fires[fires.len() - 1].0);
    assert_eq!(last - first + 1, fires.len() as i64, "{fires:?}");
    let listed = jobs_of(&app, &token, &schedule.id).await;
    assert_eq!(listed.len(), fires.len());
    assert!(listed.iter().all(|job| job.schedule_id == schedule.id));
    let after = get(&app, &token, "tick").await.unwrap();
    assert_eq!(after.last_fire_time.unwrap().seconds, last);
    // How late jobs were created, for the record (timing is never asserted).
    let lateness = lateness_ms(&app, &schedule.id).await;
    eprintln!(
        "schedule lateness over {} fire times: p50 {} ms, max {} ms",
        fires.len(),
        lateness.p50_ms,
        lateness.max_ms
    );
    assert!(listed.iter().any(|job| job.id == after.last_job_id));
    replica.stop().await;
    app.stop().await;
}

async fn worker_for(app: &TestApp, job: &str) -> TestWorker {
    TestWorker::connect(
        app.channel().await,
        &app.admin_token().await,
        pb::WorkerHello {
            worker_id: "schedule-worker".into(),
            job_names: vec![job.into()],
            module_names: vec![],
            max_concurrency: 10,
        },
    )
    .await
    .expect("worker")
}

#[tokio::test]
async fn overlap_skip_waits_for_the_running_job() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut worker = worker_for(&app, "slow.skip").await;
    let schedule = create(
        &app,
        &token,
        pb::CreateScheduleRequest {
            overlap_policy: pb::OverlapPolicy::Skip.into(),
            ..new_schedule("skipper", "* * * * * *", "slow.skip")
        },
    )
    .await
    .unwrap();
    let first = worker.assignment().await;
    // While it runs, fire times pass and make nothing.
    worker.silent_for(Duration::from_millis(2500)).await;
    assert_eq!(jobs_of(&app, &token, &schedule.id).await.len(), 1);
    worker.complete(&first, json!({"ok": true})).await;
    assert!(worker.ack().await.accepted);
    // Once it finished, the next fire time runs.
    let second = worker.assignment().await;
    assert_ne!(job_id(&second), job_id(&first));
    pause(&app, &token, "skipper").await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn overlap_cancel_previous_tells_the_worker() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut worker = worker_for(&app, "slow.cancel").await;
    let schedule = create(
        &app,
        &token,
        pb::CreateScheduleRequest {
            overlap_policy: pb::OverlapPolicy::CancelPrevious.into(),
            ..new_schedule("canceller", "*/2 * * * * *", "slow.cancel")
        },
    )
    .await
    .unwrap();
    let first = worker.assignment().await;
    // The next fire time cancels it through CancelJob's path (the worker
    // is told) and runs a new one.
    let mut cancelled = None;
    let mut second = None;
    while cancelled.is_none() || second.is_none() {
        match worker.next().await {
            Ok(Some(pb::work_response::Kind::Cancellation(c))) => cancelled = Some(c),
            Ok(Some(pb::work_response::Kind::Assignment(a))) => second = Some(a),
            other => panic!("unexpected {other:?}"),
        }
    }
    let cancelled = cancelled.unwrap();
    assert_eq!(cancelled.lease.as_ref().unwrap().job_id, job_id(&first));
    assert_eq!(cancelled.cause(), CancellationCause::Cancelled);
    assert_ne!(job_id(&second.unwrap()), job_id(&first));
    pause(&app, &token, "canceller").await.unwrap();
    let first_job = app.job(&token, &job_id(&first)).await;
    assert_eq!(first_job.status(), pb::JobStatus::Cancelled);
    assert_eq!(first_job.schedule_id, schedule.id);
    app.stop().await;
}

/// Fire times missed while no server ran: SKIP runs none of them, RUN_ONCE
/// one job for all.
#[tokio::test]
async fn missed_fire_times_are_skipped_or_run_once() {
    let mut app = TestApp::spawn().await;
    let token = app.admin_token().await;
    // Daily, at a time two hours ago: nothing fires while the test runs.
    let at = chrono::Utc::now() - chrono::Duration::hours(2);
    let cron = at.format("%M %H * * *").to_string();
    let mut ids = Vec::new();
    for (name, policy) in [
        ("skips", pb::MissedFirePolicy::Skip),
        ("runs-once", pb::MissedFirePolicy::RunOnce),
    ] {
        let schedule = create(
            &app,
            &token,
            pb::CreateScheduleRequest {
                missed_fire_policy: policy.into(),
                ..new_schedule(name, &cron, "catch.up")
            },
        )
        .await
        .unwrap();
        ids.push(schedule.id);
    }
    // The servers stop; three days pass.
    app.shutdown().await;
    {
        let mut conn = app.pool.get().await.unwrap();
        diesel::sql_query(
            r#"UPDATE schedules SET "nextFireAt" = "nextFireAt" - interval '3 days'"#,
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let restarted = TestApp::on_database(app.db.clone(), TestOptions::default()).await;
    let token = restarted.admin_token().await;
    let now = chrono::Utc::now().timestamp();
    eventually(
        Duration::from_secs(10),
        "both schedules caught up",
        || async {
            let mut caught_up = true;
            for name in ["skips", "runs-once"] {
                let schedule = get(&restarted, &token, name).await.unwrap();
                caught_up &= schedule.next_fire_time.unwrap().seconds > now;
            }
            caught_up
        },
    )
    .await;
    assert_eq!(jobs_of(&restarted, &token, &ids[0]).await.len(), 0);
    let once = jobs_of(&restarted, &token, &ids[1]).await;
    assert_eq!(once.len(), 1, "{once:?}");
    let runs_once = get(&restarted, &token, "runs-once").await.unwrap();
    assert_eq!(runs_once.last_job_id, once[0].id);
    assert!(
        get(&restarted, &token, "skips")
            .await
            .unwrap()
            .last_job_id
            .is_empty()
    );
    restarted.stop().await;
}

/// A module's schedule does not fire while the module is not ENABLED, goes
/// on when it is enabled again (fire times missed meanwhile follow the
/// missed-fire policy, SKIP here), and is deleted with the module.
#[tokio::test]
async fn module_schedules_are_held_while_disabled_and_go_with_the_module() {
    let mut options = TestOptions::default();
    options.server.schedules.misfire_grace = Duration::from_secs(1);
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    module_with_job(&app, &token, "ticker", "ticker.beat").await;
    let schedule = create(
        &app,
        &token,
        new_schedule("beat", "* * * * * *", "ticker.beat"),
    )
    .await
    .unwrap();
    assert_eq!(
        schedule.job_template.as_ref().unwrap().module_name,
        "ticker"
    );
    eventually(Duration::from_secs(10), "a first job", || async {
        !jobs_of(&app, &token, &schedule.id).await.is_empty()
    })
    .await;
    let mut modules = ModuleServiceClient::new(app.channel().await);
    modules
        .disable_module(authed(
            &token,
            pb::DisableModuleRequest {
                id: "ticker".into(),
            },
        ))
        .await
        .unwrap();
    // A claim in flight when the module was disabled may still commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = jobs_of(&app, &token, &schedule.id).await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(jobs_of(&app, &token, &schedule.id).await.len(), held);

    modules
        .enable_module(authed(
            &token,
            pb::EnableModuleRequest {
                id: "ticker".into(),
            },
        ))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "jobs again", || async {
        jobs_of(&app, &token, &schedule.id).await.len() > held
    })
    .await;
    // The three seconds held were missed (grace 1 s) and skipped: no burst.
    let fires = jobs_per_fire_time(&app, &schedule.id).await;
    let after: Vec<i64> = fires.iter().skip(held).map(|f| f.0).collect();
    assert!(after.len() <= 3, "{fires:?}");
    assert!(fires.iter().all(|&(_, jobs)| jobs == 1));

    modules
        .delete_module(authed(
            &token,
            pb::DeleteModuleRequest {
                id: "ticker".into(),
            },
        ))
        .await
        .unwrap();
    let status = get(&app, &token, &schedule.id).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Its jobs stay findable by the schedule's id.
    assert!(!jobs_of(&app, &token, &schedule.id).await.is_empty());
    let _ = common::audit_count(&app, "schedules.create", "success").await;
    app.stop().await;
}

/// The real binary as a second replica on the test database.
fn spawn_replica_process(database_url: &str, listen: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("JWT_SECRET", common::JWT_SECRET)
        .env("LISTEN_ADDR", listen)
        .env("BCRYPT_COST", "4")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start a replica")
}

/// A replica killed with SIGKILL, whatever it was doing (a claim's
/// transaction rolls back with its connection): the other replica goes on,
/// and every fire time still has exactly one job, none passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_sigkill_leaves_one_job_per_fire_time() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let listen = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let mut child = spawn_replica_process(&app.db.url(), &listen);
    let schedule = create(
        &app,
        &token,
        new_schedule("survivor", "* * * * * *", "tick.tock"),
    )
    .await
    .unwrap();
    // Both replicas fire for a while (the process serves once it answers).
    eventually(Duration::from_secs(30), "the replica serving", || async {
        tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
            .unwrap()
            .connect()
            .await
            .is_ok()
    })
    .await;
    let before = jobs_per_fire_time(&app, &schedule.id).await.len();
    eventually(Duration::from_secs(20), "three more fire times", || async {
        jobs_per_fire_time(&app, &schedule.id).await.len() >= before + 3
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let killed_at = jobs_per_fire_time(&app, &schedule.id).await.len();
    eventually(
        Duration::from_secs(20),
        "three fire times after the kill",
        || async { jobs_per_fire_time(&app, &schedule.id).await.len() >= killed_at + 3 },
    )
    .await;
    pause(&app, &token, "survivor").await.unwrap();
    let fires = jobs_per_fire_time(&app, &schedule.id).await;
    assert!(fires.iter().all(|&(_, jobs)| jobs == 1), "{fires:?}");
    let (first, last) = (fires[0].0, fires[fires.len() - 1].0);
    assert_eq!(last - first + 1, fires.len() as i64, "{fires:?}");
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct LockedJob {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    #[allow(dead_code)]
    id: uuid::Uuid,
}

/// A schedule whose claim fails (CANCEL_PREVIOUS cannot lock its previous
/// job: a stuck transaction holds it) says why and backs off, and another
/// due schedule keeps firing meanwhile; once the lock is gone it fires
/// again.
#[tokio::test]
async fn a_failing_schedule_backs_off_while_another_keeps_firing() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let stuck = create(
        &app,
        &token,
        pb::CreateScheduleRequest {
            overlap_policy: pb::OverlapPolicy::CancelPrevious.into(),
            ..new_schedule("stuck", "* * * * * *", "stuck.job")
        },
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "a first job", || async {
        !jobs_of(&app, &token, &stuck.id).await.is_empty()
    })
    .await;
    // A transaction holds the schedule's waiting job (no worker takes it).
    let mut holder = app.pool.get().await.unwrap();
    diesel::sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let locked: Vec<LockedJob> = diesel::sql_query(
            r#"SELECT id FROM jobs WHERE "scheduleId" = $1::uuid AND status = 'PENDING'
               FOR UPDATE"#,
        )
        .bind::<diesel::sql_types::Text, _>(&stuck.id)
        .load(&mut holder)
        .await
        .unwrap();
        if !locked.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no pending job to hold");
    }
    let held_jobs = jobs_of(&app, &token, &stuck.id).await.len();

    let healthy = create(
        &app,
        &token,
        new_schedule("healthy", "* * * * * *", "healthy.job"),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "the stuck schedule's error and the other's jobs",
        || async {
            let error = get(&app, &token, "stuck").await.unwrap().last_error;
            error.contains("could not fire") && jobs_of(&app, &token, &healthy.id).await.len() >= 4
        },
    )
    .await;
    let failing = get(&app, &token, "stuck").await.unwrap();
    eprintln!("the stuck schedule says: {}", failing.last_error);
    assert_eq!(
        jobs_of(&app, &token, &stuck.id).await.len(),
        held_jobs,
        "a failed claim made no job"
    );

    diesel::sql_query("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the stuck schedule firing again",
        || async {
            get(&app, &token, "stuck")
                .await
                .unwrap()
                .last_error
                .is_empty()
                && jobs_of(&app, &token, &stuck.id).await.len() > held_jobs
        },
    )
    .await;
    pause(&app, &token, "stuck").await.unwrap();
    pause(&app, &token, "healthy").await.unwrap();
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct Fired {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    jobs: i64,
}

/// How many fires a second one replica sustains: `BENCH_SCHEDULES`
/// schedules (copied behind the API's back, past `SCHEDULES_MAX`) all due
/// at once, each making one job. A figure for BENCHMARKS.md, not a check:
/// `cargo test --test integration schedules::firing::fire_rate -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement; run by hand"]
async fn fire_rate_of_one_replica() {
    let count: i64 = std::env::var("BENCH_SCHEDULES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let app = TestApp::spawn_with(TestOptions {
        pool_size: 16,
        ..TestOptions::default()
    })
    .await;
    let token = app.admin_token().await;
    create(&app, &token, new_schedule("model", "@yearly", "bench.fire"))
        .await
        .unwrap();
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query(
        r#"INSERT INTO schedules (id, name, description, cron, "timeZone", "jobName",
               "moduleName", payload, priority, "maxAttempts", "overlapPolicy",
               "missedFirePolicy", paused, "nextFireAt", "createdBy", "createdAt", "updatedAt")
           SELECT gen_random_uuid(), 'bench-' || g, description, cron, "timeZone", "jobName",
               "moduleName", payload, priority, "maxAttempts", "overlapPolicy",
               "missedFirePolicy", false, LOCALTIMESTAMP(3) + interval '2 seconds', "createdBy",
               "createdAt", "updatedAt"
           FROM schedules, generate_series(1, $1) g WHERE name = 'model'"#,
    )
    .bind::<diesel::sql_types::BigInt, _>(count)
    .execute(&mut conn)
    .await
    .unwrap();
    // Any write wakes the loop, which then sleeps until they are due.
    pause(&app, &token, "model").await.unwrap();
    let jobs = async |conn: &mut _| -> i64 {
        let row: Fired = diesel::sql_query(
            r#"SELECT count(*) AS jobs FROM jobs WHERE "scheduleId" IS NOT NULL"#,
        )
        .get_result(conn)
        .await
        .unwrap();
        row.jobs
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while jobs(&mut conn).await == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    while jobs(&mut conn).await < count {
        assert!(Instant::now() < deadline, "not all fired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{count} due schedules fired in {:.2} s: {:.0} fires/s (firing tasks: {})",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        automation_control_plane::domain::schedules::firing::FIRING_TASKS
    );
    app.stop().await;
}
