//! What the claim statement enforces beyond dispatch order, over real gRPC
//! with real PostgreSQL: concurrency keys (a key's maximum holds with
//! workers on two replicas racing; a saturated key holds up no other key;
//! keys are served in turns; a slot comes back when its job fails, is
//! cancelled or loses its lease), jobs scheduled later kept out of the
//! claim's way (with the plan as evidence), and the shapes of the new
//! fields.

use crate::common;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use automation_control_plane::proto::automation_v1::{self as pb, work_response::Kind as In};
use common::{
    JobServiceClient, ModuleServiceClient, TestApp, TestOptions, authed, new_job,
    worker::{TestWorker, job_id, json_struct},
};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// A job of concurrency key `key` (maximum `max`).
fn keyed(name: &str, key: &str, max: i32, i: usize) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        concurrency_key: key.into(),
        concurrency_max: max,
        ..new_job(name, json!({ "i": i }))
    }
}

async fn create_all(
    app: &TestApp,
    token: &str,
    requests: Vec<pb::CreateJobRequest>,
) -> Vec<pb::Job> {
    JobServiceClient::new(app.channel().await)
        .batch_create_jobs(authed(token, pb::BatchCreateJobsRequest { requests }))
        .await
        .expect("batch create")
        .into_inner()
        .jobs
}

/// The field an INVALID_ARGUMENT names.
fn field_of(status: &Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .expect("field violations")
        .field_violations[0]
        .field
        .clone()
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Jobs of `key` RUNNING now, read from the database.
async fn running_of(app: &TestApp, key: &str) -> i64 {
    use diesel_async::RunQueryDsl as _;
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(
        r#"SELECT count(*) AS n FROM jobs WHERE "concurrencyKey" = $1 AND status = 'RUNNING'"#,
    )
    .bind::<diesel::sql_types::Text, _>(key)
    .get_result::<Count>(&mut conn)
    .await
    .expect("count")
    .n
}

/// What the workers of a run saw.
#[derive(Default)]
struct Tally {
    /// Jobs held by the workers at once, now and at most.
    holding: AtomicI64,
    most: AtomicI64,
    done: AtomicUsize,
}

/// A worker holding each job it gets for one turn of its loop (so that its
/// jobs overlap), counting what it holds, until `target` jobs are done.
async fn hold_and_complete(mut worker: TestWorker, tally: Arc<Tally>, target: usize) {
    let mut held: Vec<pb::JobAssignment> = Vec::new();
    while tally.done.load(Ordering::SeqCst) < target {
        match worker.next_within(Duration::from_millis(15)).await {
            Some(Ok(Some(In::Assignment(assignment)))) => {
                let now = tally.holding.fetch_add(1, Ordering::SeqCst) + 1;
                tally.most.fetch_max(now, Ordering::SeqCst);
                held.push(assignment);
            }
            Some(Ok(Some(In::Ack(ack)))) => {
                assert!(ack.accepted, "{ack:?}");
                tally.done.fetch_add(1, Ordering::SeqCst);
            }
            Some(Ok(Some(_))) => {}
            Some(other) => panic!("the stream ended: {other:?}"),
            None => {
                if !held.is_empty() {
                    let assignment = held.remove(0);
                    tally.holding.fetch_sub(1, Ordering::SeqCst);
                    worker.complete(&assignment, json!(null)).await;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_key_runs_at_most_its_max_with_workers_on_two_replicas() {
    const MAX: i32 = 3;
    const JOBS: usize = 40;
    let a = TestApp::spawn().await;
    let b = a.replica(TestOptions::default()).await;
    let token = a.admin_token().await;
    let requests = (0..JOBS)
        .map(|i| keyed("limited.job", "tenant-1", MAX, i))
        .collect();
    create_all(&a, &token, requests).await;
    // A watcher reading the database while the workers race.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pool, stop) = (a.pool.clone(), stop.clone());
        tokio::spawn(async move {
            use diesel_async::RunQueryDsl as _;
            let mut most = 0;
            while !AtomicBool::load(&stop, Ordering::SeqCst) {
                let mut conn = pool.get().await.expect("connection");
                let n = diesel::sql_query(
                    r#"SELECT count(*) AS n FROM jobs
                       WHERE "concurrencyKey" = 'tenant-1' AND status = 'RUNNING'"#,
                )
                .get_result::<Count>(&mut conn)
                .await
                .expect("count")
                .n;
                most = most.max(n);
                drop(conn);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            most
        })
    };
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();
    for app in [&a, &b, &a, &b] {
        let worker = app.worker(5).await;
        workers.push(tokio::spawn(hold_and_complete(worker, tally.clone(), JOBS)));
    }
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("the jobs finish")
            .expect("worker");
    }
    stop.store(true, Ordering::SeqCst);
    let most_running = watcher.await.expect("watcher");
    assert_eq!(
        tally.done.load(Ordering::SeqCst),
        JOBS,
        "every job finished"
    );
    assert!(
        tally.most.load(Ordering::SeqCst) <= i64::from(MAX),
        "the workers held {} jobs of the key at once",
        tally.most.load(Ordering::SeqCst)
    );
    assert!(
        most_running <= i64::from(MAX),
        "{most_running} jobs of the key were RUNNING at once"
    );
    assert_eq!(running_of(&a, "tenant-1").await, 0);
    assert_eq!(crate::key_counts::keys_in_disagreement(&a.pool).await, 0);
    b.stop().await;
    a.stop().await;
}

/// The assignments that arrive until the worker has been silent a while.
async fn assignments_until_quiet(worker: &mut TestWorker) -> Vec<pb::JobAssignment> {
    let mut got = Vec::new();
    while let Some(message) = worker.next_within(Duration::from_millis(700)).await {
        if let Ok(Some(In::Assignment(assignment))) = message {
            got.push(assignment);
        }
    }
    got
}

fn key_of(assignment: &pb::JobAssignment) -> String {
    assignment
        .job
        .as_ref()
        .expect("job")
        .concurrency_key
        .clone()
}

#[tokio::test]
async fn a_saturated_key_holds_up_no_other_job() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    // The hot key's jobs come first in dispatch order (older, and higher
    // priority).
    let mut requests: Vec<_> = (0..200)
        .map(|i| pb::CreateJobRequest {
            priority: 10,
            ..keyed("hot.job", "hot", 1, i)
        })
        .collect();
    requests.extend((0..4).map(|i| keyed("cold.job", "cold", 5, i)));
    requests.extend((0..3).map(|i| new_job("plain.job", json!({ "i": i }))));
    create_all(&app, &token, requests).await;
    let mut worker = app.worker(50).await;
    let got = assignments_until_quiet(&mut worker).await;
    let count = |key: &str| got.iter().filter(|a| key_of(a) == key).count();
    assert_eq!(count("hot"), 1, "the hot key runs one job at a time");
    assert_eq!(count("cold"), 4, "the other key's jobs all run");
    assert_eq!(count(""), 3, "keyless jobs all run");
    assert_eq!(running_of(&app, "hot").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn keys_are_served_in_turns() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    // One busy key with a thousand jobs (and room for them all), created
    // first; then ten keys with one job each.
    let busy = (0..1000)
        .map(|i| keyed("turns.job", "busy", 1000, i))
        .collect();
    create_all(&app, &token, busy).await;
    let small: Vec<_> = (0..10)
        .map(|i| keyed("turns.job", &format!("small-{i}"), 1, i))
        .collect();
    create_all(&app, &token, small).await;
    let mut worker = app.worker(30).await;
    let mut first = Vec::new();
    for _ in 0..30 {
        first.push(key_of(&worker.assignment().await));
    }
    let served: HashSet<&str> = first
        .iter()
        .map(String::as_str)
        .filter(|key| key.starts_with("small-"))
        .collect();
    assert_eq!(
        served.len(),
        10,
        "every small key is served in the first batch, beside the busy one: {first:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn workers_of_one_name_reach_their_key_behind_many_keys_of_other_names() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    // Forty keys with room, first in key order, whose jobs nobody here
    // takes (more than a claim examines at once); then the key of the job
    // the worker asks for.
    let others = (0..40)
        .map(|i| keyed("video.encode", &format!("a-{i:02}"), 1, i))
        .collect();
    create_all(&app, &token, others).await;
    let mine = create_all(&app, &token, vec![keyed("mail.send", "z-mail", 1, 0)]).await;
    let mut worker = TestWorker::connect(
        app.channel().await,
        &token,
        pb::WorkerHello {
            job_names: vec!["mail.send".into()],
            ..common::worker::hello(1)
        },
    )
    .await
    .expect("worker connects");
    let assignment = worker.assignment().await;
    assert_eq!(job_id(&assignment), mine[0].id);
    app.stop().await;
}

#[tokio::test]
async fn a_slot_comes_back_on_failure_cancel_and_lease_loss() {
    let mut options = TestOptions::default();
    options.jobs.lease = Duration::from_secs(2);
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let requests = (0..5)
        .map(|i| pb::CreateJobRequest {
            max_attempts: 1,
            ..keyed("slot.job", "one-at-a-time", 1, i)
        })
        .collect();
    let jobs = create_all(&app, &token, requests).await;
    let mut worker = app.worker(5).await;
    // One at a time: a failure gives the slot back.
    let first = worker.assignment().await;
    worker.silent_for(Duration::from_millis(400)).await;
    worker.fail(&first, "broken", true).await;
    assert!(worker.ack().await.accepted);
    let second = worker.assignment().await;
    assert_ne!(job_id(&second), job_id(&first));
    worker.silent_for(Duration::from_millis(400)).await;
    // A cancel gives it back.
    JobServiceClient::new(app.channel().await)
        .cancel_job(authed(
            &token,
            pb::CancelJobRequest {
                id: job_id(&second),
            },
        ))
        .await
        .expect("cancel");
    let mut third = None;
    for _ in 0..3 {
        if let Ok(Some(In::Assignment(assignment))) = worker.next().await {
            third = Some(assignment);
            break;
        }
    }
    let third = third.expect("the next job after the cancel");
    // A worker that goes silent loses its lease to the reaper: the slot
    // comes back with it.
    let mut other = app.worker(5).await;
    other.silent_for(Duration::from_millis(300)).await;
    drop(worker.close());
    let fourth = other.assignment().await;
    assert_ne!(job_id(&fourth), job_id(&third));
    let lost = app.job(&token, &job_id(&third)).await;
    assert_ne!(
        lost.status(),
        pb::JobStatus::Running,
        "the lost lease ended"
    );
    other.complete(&fourth, json!(null)).await;
    assert!(other.ack().await.accepted);
    let fifth = other.assignment().await;
    other.complete(&fifth, json!(null)).await;
    assert_eq!(jobs.len(), 5);
    assert_eq!(crate::key_counts::keys_in_disagreement(&app.pool).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_expired_lease_gives_its_slot_back() {
    let mut options = TestOptions::default();
    options.jobs.lease = Duration::from_millis(800);
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let requests = (0..2)
        .map(|i| pb::CreateJobRequest {
            max_attempts: 1,
            ..keyed("reaped.job", "reaped", 1, i)
        })
        .collect();
    create_all(&app, &token, requests).await;
    // A worker that never heartbeats and never reports: only the reaper
    // ends its lease.
    let mut silent = app.worker(2).await;
    let taken = silent.assignment().await;
    let mut other = app.worker(2).await;
    let next = other.assignment().await;
    assert_ne!(
        job_id(&next),
        job_id(&taken),
        "the other job, once the lease expired"
    );
    drop(silent);
    app.stop().await;
}

#[tokio::test]
async fn a_job_type_may_declare_its_key() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let modules = || async { ModuleServiceClient::new(app.channel().await) };
    modules()
        .await
        .register_module(authed(
            &token,
            pb::RegisterModuleRequest {
                name: "mailer".into(),
                version: "1.0.0".into(),
                display_name: "Mailer".into(),
                description: String::new(),
                manifest: Some(json_struct(json!({
                    "jobs": [{
                        "name": "mailer.send",
                        "concurrency": { "key": "customer_id", "max": 2 }
                    }]
                }))),
            },
        ))
        .await
        .expect("register");
    modules()
        .await
        .enable_module(authed(
            &token,
            pb::EnableModuleRequest {
                id: "mailer".into(),
            },
        ))
        .await
        .expect("enable");
    let job = app
        .create_job(&token, new_job("mailer.send", json!({ "customer_id": 42 })))
        .await;
    assert_eq!(job.concurrency_key, "@mailer.send:42");
    let refused = JobServiceClient::new(app.channel().await)
        .create_job(authed(&token, new_job("mailer.send", json!({}))))
        .await
        .expect_err("no key field");
    assert_eq!(field_of(&refused), "payload.customer_id");
    let bad = modules()
        .await
        .register_module(authed(
            &token,
            pb::RegisterModuleRequest {
                name: "bad".into(),
                version: "1.0.0".into(),
                display_name: "Bad".into(),
                description: String::new(),
                manifest: Some(json_struct(json!({
                    "jobs": [{ "name": "bad.x", "concurrency": { "key": "k", "max": 0 } }]
                }))),
            },
        ))
        .await
        .expect_err("max 0");
    assert_eq!(field_of(&bad), "manifest.jobs[0].concurrency.max");
    app.stop().await;
}

#[tokio::test]
async fn bad_limits_name_their_field() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let create = |request: pb::CreateJobRequest| {
        let app = &app;
        let token = token.clone();
        async move {
            JobServiceClient::new(app.channel().await)
                .create_job(authed(&token, request))
                .await
                .expect_err("refused")
        }
    };
    let long = create(keyed("x", &"k".repeat(300), 1, 0)).await;
    // The declared limit refuses it before the handler runs.
    assert_eq!(field_of(&long), "concurrency_key");
    let blank = create(keyed("x", "  ", 1, 0)).await;
    assert_eq!(field_of(&blank), "concurrency_key");
    let max = create(keyed("x", "k", 10_001, 0)).await;
    assert_eq!(field_of(&max), "concurrency_max");
    let negative = create(keyed("x", "k", -1, 0)).await;
    assert_eq!(field_of(&negative), "concurrency_max");
    let alone = create(pb::CreateJobRequest {
        concurrency_max: 2,
        ..new_job("x", json!({}))
    })
    .await;
    assert_eq!(field_of(&alone), "concurrency_max");
    let batch = JobServiceClient::new(app.channel().await)
        .batch_create_jobs(authed(
            &token,
            pb::BatchCreateJobsRequest {
                requests: vec![new_job("x", json!({})), keyed("x", "k", 20_000, 1)],
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(field_of(&batch), "requests[1].concurrency_max");
    app.stop().await;
}

#[tokio::test]
async fn jobs_scheduled_later_stay_out_of_the_claims_way() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let tomorrow = prost_types::Timestamp {
        seconds: (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 86_400) as i64,
        nanos: 0,
    };
    for _ in 0..5 {
        let requests = (0..1000)
            .map(|i| pb::CreateJobRequest {
                priority: 1000,
                schedule_time: Some(tomorrow),
                ..new_job("tomorrow.job", json!({ "i": i }))
            })
            .collect();
        create_all(&app, &token, requests).await;
    }
    let now = app.create_job(&token, new_job("now.job", json!({}))).await;
    let soon = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                schedule_time: Some(prost_types::Timestamp {
                    seconds: (std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs()
                        + 1) as i64,
                    nanos: 0,
                }),
                ..new_job("soon.job", json!({}))
            },
        )
        .await;
    // The plan of the claim's keyless scan, as the claimer runs it: the
    // dispatch index, whose first row is the runnable job; none of the
    // 5,000 jobs due tomorrow is read.
    {
        use diesel_async::{RunQueryDsl as _, SimpleAsyncConnection as _};
        let mut conn = app.pool.get().await.expect("connection");
        // The claimer's session settings (store::jobs::CLAIM_SESSION_SETTINGS).
        conn.batch_execute("VACUUM ANALYZE jobs")
            .await
            .expect("vacuum");
        conn.batch_execute(
            "SET enable_sort = off; SET enable_bitmapscan = off; SET enable_seqscan = off",
        )
        .await
        .expect("settings");
        #[derive(diesel::QueryableByName)]
        struct Line {
            #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
            line: String,
        }
        let plan: Vec<Line> = diesel::sql_query(
            r#"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
               SELECT j.id FROM jobs j
               WHERE j.status = 'PENDING' AND NOT j.held AND NOT j.waiting
                 AND j."concurrencyKey" IS NULL AND j."rateLimit" IS NULL
                 AND j."scheduledAt" <= LOCALTIMESTAMP
               ORDER BY j.priority DESC, j."scheduledAt", j.id
               LIMIT 10 FOR UPDATE OF j SKIP LOCKED"#,
        )
        .load(&mut conn)
        .await
        .expect("explain");
        conn.batch_execute("RESET ALL").await.expect("reset");
        let plan: Vec<String> = plan.into_iter().map(|l| l.line).collect();
        let text = plan.join("\n");
        eprintln!("{text}");
        assert!(text.contains("jobs_dispatch_idx"), "{text}");
        let scan = plan
            .iter()
            .find(|line| line.contains("Index Scan using jobs_dispatch_idx"))
            .expect("the dispatch index scan");
        // The job due now, and the one due a second later if it was
        // promoted already: never one of tomorrow's.
        assert!(
            scan.contains("actual rows=1 ") || scan.contains("actual rows=2 "),
            "at most the two due rows read: {scan}"
        );
        assert!(!text.contains("Rows Removed by Filter"), "{text}");
    }
    let mut worker = app.worker(5).await;
    let first = worker.assignment().await;
    assert_eq!(job_id(&first), now.id, "the runnable job, not tomorrow's");
    let second = worker.assignment().await;
    assert_eq!(
        job_id(&second),
        soon.id,
        "the job due a second later, once due"
    );
    worker.complete(&first, json!(null)).await;
    assert!(worker.ack().await.accepted);
    // Nothing else runs: tomorrow's jobs wait.
    worker.silent_for(Duration::from_millis(300)).await;
    app.stop().await;
}

/// The real binary, serving the test database, with 2-second leases.
fn spawn_replica_process(database_url: &str, listen: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("JWT_SECRET", common::JWT_SECRET)
        .env("LISTEN_ADDR", listen)
        .env("JOB_LEASE_SECS", "2")
        .env("BCRYPT_COST", "4")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start a replica")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_sigkill_gives_its_slots_back() {
    let mut options = TestOptions::default();
    options.jobs.lease = Duration::from_secs(2);
    let a = TestApp::spawn_with(options).await;
    let token = a.admin_token().await;
    let listen = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let mut child = spawn_replica_process(&a.db.url(), &listen);
    let channel = {
        let mut connected = None;
        for _ in 0..300 {
            if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
                .unwrap()
                .connect()
                .await
            {
                connected = Some(channel);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        connected.expect("the replica serves")
    };
    let mut doomed = TestWorker::connect(channel, &token, common::worker::hello(5))
        .await
        .expect("worker");
    let requests = (0..4).map(|i| keyed("k9.job", "k9", 2, i)).collect();
    create_all(&a, &token, requests).await;
    let mut lost = vec![
        job_id(&doomed.assignment().await),
        job_id(&doomed.assignment().await),
    ];
    doomed.silent_for(Duration::from_millis(300)).await;
    assert_eq!(
        running_of(&a, "k9").await,
        2,
        "the key is saturated by the doomed replica"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    child.wait().expect("reaped");
    // Its leases expire; the slots come back with them, and the key's four
    // jobs run on the other replica, two at a time.
    let mut rescuer = a.worker(5).await;
    let mut rescued = Vec::new();
    let mut acks = 0;
    while acks < 4 {
        match rescuer.next().await {
            Ok(Some(In::Assignment(assignment))) => {
                assert!(running_of(&a, "k9").await <= 2, "two at a time");
                rescued.push((job_id(&assignment), assignment.attempt));
                rescuer.complete(&assignment, json!(null)).await;
            }
            Ok(Some(In::Ack(ack))) => {
                assert!(ack.accepted, "{ack:?}");
                acks += 1;
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    lost.sort();
    let mut again: Vec<String> = rescued
        .iter()
        .filter(|(_, attempt)| *attempt == 2)
        .map(|(id, _)| id.clone())
        .collect();
    again.sort();
    assert_eq!(again, lost, "the jobs the killed replica held ran again");
    assert_eq!(rescued.len(), 4);
    assert_eq!(crate::key_counts::keys_in_disagreement(&a.pool).await, 0);
    a.stop().await;
}
