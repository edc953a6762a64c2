//! The Work stream under hostile and broken workers, each played by a plain
//! tonic client: one that stops reading, one that floods heartbeats, one
//! that opens and closes streams in a loop, one that asks for more streams
//! and capacity than the caps allow, and many idle high-capacity streams
//! beside an honest worker.

use crate::common;
mod heartbeats;
mod idle_names;
mod module_jobs;
mod stalled_transports;

use std::{collections::HashSet, time::Duration};

use automation_control_plane::proto::automation_v1::{
    self as pb, work_request::Kind as Out, work_response::Kind as In,
};
use common::{
    JobServiceClient, TestApp, TestOptions, account, authed, new_job,
    worker::{PATIENCE, TestWorker, hello, json_value, open_raw},
};
use diesel_async::RunQueryDsl as _;
use serde_json::json;
use tonic::{
    Code, Status, Streaming,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt as _;

/// A channel whose HTTP/2 windows are the protocol's minimum (64 KiB), so
/// that a client that does not read stops the server's sends after a few
/// messages rather than after megabytes.
async fn narrow_channel(app: &TestApp) -> Channel {
    Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .expect("connect")
}

fn hello_message(max_concurrency: i32) -> pb::WorkRequest {
    pb::WorkRequest {
        kind: Some(Out::Hello(hello(max_concurrency))),
    }
}

/// Creates `count` jobs of about 4 KiB each; returns their ids.
async fn enqueue(app: &TestApp, token: &str, name: &str, count: usize) -> HashSet<String> {
    let mut client = JobServiceClient::new(app.channel().await);
    let mut ids = HashSet::new();
    for chunk in 0..count.div_ceil(50) {
        let requests = (0..50.min(count - chunk * 50))
            .map(|i| new_job(name, json!({ "i": i, "blob": "x".repeat(4096) })))
            .collect();
        let jobs = client
            .batch_create_jobs(authed(token, pb::BatchCreateJobsRequest { requests }))
            .await
            .expect("batch create")
            .into_inner()
            .jobs;
        ids.extend(jobs.into_iter().map(|job| job.id));
    }
    ids
}

#[derive(diesel::QueryableByName, Debug)]
struct JobState {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    max_attempts: i32,
}

/// Every job's state, read behind the API's back.
async fn job_states(app: &TestApp) -> Vec<JobState> {
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(
        r#"SELECT id::text AS id, status::text AS status, attempts,
                  "maxAttempts" AS max_attempts FROM jobs"#,
    )
    .load(&mut conn)
    .await
    .expect("jobs")
}

/// Waits (bounded) until no job is RUNNING; returns the states then.
async fn until_none_running(app: &TestApp, within: Duration) -> Vec<JobState> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let states = job_states(app).await;
        if states.iter().all(|job| job.status != "RUNNING") {
            return states;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs still RUNNING after {within:?}: {} of {}",
            states.iter().filter(|job| job.status == "RUNNING").count(),
            states.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads what a stream still delivers: the ids of its assignments and the
/// status it ends with.
async fn read_to_end(rx: &mut Streaming<pb::WorkResponse>) -> (HashSet<String>, Status) {
    let mut assigned = HashSet::new();
    loop {
        match tokio::time::timeout(PATIENCE, rx.message()).await {
            Err(_) => panic!("the stream neither delivers nor ends"),
            Ok(Ok(Some(pb::WorkResponse {
                kind: Some(In::Assignment(assignment)),
            }))) => {
                assigned.insert(assignment.job.expect("job").id);
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return (assigned, Status::ok("")),
            Ok(Err(status)) => return (assigned, status),
        }
    }
}

/// Completes assignments until `count` jobs ran; returns their ids.
async fn run_all(worker: &mut TestWorker, count: usize) -> HashSet<String> {
    let mut done = HashSet::new();
    while done.len() < count {
        match worker.next().await {
            Ok(Some(In::Assignment(assignment))) => {
                worker.complete(&assignment, json!(1)).await;
                done.insert(assignment.job.expect("job").id);
            }
            Ok(Some(In::Ack(ack))) => assert!(ack.accepted, "{ack:?}"),
            other => panic!("expected assignments, got {other:?}"),
        }
    }
    done
}

/// The `limit` an ErrorInfo names.
fn limit_of(status: &Status) -> String {
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, "LIMIT_EXCEEDED", "{status:?}");
    info.metadata.get("limit").cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_worker_that_stops_reading_is_cut_off_and_what_it_never_got_costs_nothing() {
    let mut options = TestOptions::default();
    // Leases far longer than the wait below: whatever comes back, the
    // reaper did not take.
    options.jobs.lease = Duration::from_secs(60);
    options.jobs.streams.send_timeout = Duration::from_millis(500);
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    // Says hello for 200 jobs, then never reads.
    let (_tx, mut rx) = open_raw(narrow_channel(&app).await, &token, hello_message(200))
        .await
        .expect("the call opens");
    let ids = enqueue(&app, &token, "stuck.reader", 200).await;

    // The stream is ended and every job is back in the queue, long before
    // a lease could expire.
    let states = until_none_running(&app, Duration::from_secs(20)).await;
    assert_eq!(states.len(), 200);
    assert!(
        states.iter().all(|job| job.status == "PENDING"),
        "{states:?}"
    );

    // What the worker reads now is what was sent before the end (the
    // transport had taken it); the rest was never sent.
    let (received, status) = read_to_end(&mut rx).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(limit_of(&status), "STREAM_SEND_TIMEOUT_MS");
    assert!(received.len() < 100, "{} delivered", received.len());
    assert!(received.is_subset(&ids));
    for job in &states {
        if received.contains(&job.id) {
            // Sent, perhaps never received (it may have sat in the
            // connection's buffers): back unfinished, its attempt not spent.
            assert_eq!((job.attempts, job.max_attempts), (1, 4), "{job:?}");
        } else {
            // Never sent: the attempt is given back.
            assert_eq!((job.attempts, job.max_attempts), (0, 3), "{job:?}");
        }
    }

    // An honest worker gets every one of them.
    let mut worker = app.worker(200).await;
    assert_eq!(run_all(&mut worker, 200).await, ids);
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_key_ends_a_stream_that_stopped_reading() {
    let mut options = TestOptions::default();
    // The caller is re-checked every 5 s; the send timeout is 5 s too, but
    // it starts only once the jobs below are stuck, 2 s later.
    options.jobs.lease = Duration::from_secs(15);
    options.jobs.streams.send_timeout = Duration::from_secs(5);
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    let (_, bot) = account(&app, "stuck-bot", &["jobs:execute"]).await;
    let mut keys = pb::api_key_service_client::ApiKeyServiceClient::new(app.channel().await);
    let key = keys
        .create_api_key(authed(
            &bot,
            pb::CreateApiKeyRequest {
                user_id: String::new(),
                name: "stuck worker".into(),
                permissions: vec!["jobs:execute".into()],
                expire_time: None,
            },
        ))
        .await
        .expect("key")
        .into_inner();
    let (_tx, mut rx) = open_raw(narrow_channel(&app).await, &key.secret, hello_message(200))
        .await
        .expect("the call opens");
    tokio::time::sleep(Duration::from_secs(2)).await;
    enqueue(&app, &admin, "stuck.revoked", 200).await;
    keys.revoke_api_key(authed(
        &bot,
        pb::RevokeApiKeyRequest {
            id: key.api_key.expect("key").id,
        },
    ))
    .await
    .expect("revoke");

    // Before the lease (15 s) could expire, the jobs are back, none of
    // them charged an attempt: the server ended the stream.
    let states = until_none_running(&app, Duration::from_secs(12)).await;
    assert_eq!(states.len(), 200);
    for job in &states {
        assert_eq!(job.status, "PENDING", "{job:?}");
        assert_eq!(job.max_attempts - job.attempts, 3, "{job:?}");
    }
    let (_, status) = read_to_end(&mut rx).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_heartbeat_flood_ends_the_stream() {
    let mut options = TestOptions::default();
    options.jobs.streams.inbound_messages_per_sec = 20;
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    // A steady worker within the rate is served.
    let mut steady = app.worker(1).await;
    for _ in 0..15 {
        steady.heartbeat().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (flood, mut rx) = open_raw(app.channel().await, &token, hello_message(1))
        .await
        .expect("the call opens");
    for _ in 0..2_000 {
        let heartbeat = pb::WorkRequest {
            kind: Some(Out::Heartbeat(pb::WorkerHeartbeat { jobs: vec![] })),
        };
        if flood.send(heartbeat).await.is_err() {
            break;
        }
    }
    let (_, status) = read_to_end(&mut rx).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(limit_of(&status), "WORK_INBOUND_MESSAGES_PER_SEC");
    // The steady one is still there.
    let job = app
        .create_job(&token, new_job("after.flood", json!({})))
        .await;
    let assignment = steady.assignment().await;
    assert_eq!(assignment.job.expect("job").id, job.id);
    app.stop().await;
}

#[tokio::test]
async fn a_fast_honest_worker_is_not_taken_for_a_flood() {
    let mut options = TestOptions::default();
    options.jobs.streams.inbound_messages_per_sec = 20;
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let ids = enqueue(&app, &token, "fast.worker", 300).await;
    // 300 completions as fast as it can: far past 20 a second (and the
    // burst of 40), all reports of leases it holds.
    let mut worker = app.worker(300).await;
    assert_eq!(run_all(&mut worker, 300).await, ids);
    // Refused reports do count: a flood of them ends the stream.
    let lease = pb::JobLeaseRef {
        job_id: ids.iter().next().expect("a job").clone(),
        attempt: 1,
    };
    let mut sending = true;
    let status = loop {
        if sending {
            // The server may end the stream while acks are still queued
            // for us: then stop sending and read to the end.
            sending = worker
                .try_send(Out::Completion(pb::JobCompletion {
                    lease: Some(lease.clone()),
                    result: Some(json_value(json!(1))),
                }))
                .await;
        }
        match worker.next().await {
            // Acks of the last real completions may still be on their way;
            // then the refusals.
            Ok(Some(In::Ack(_))) => {}
            Ok(other) => panic!("expected acks, got {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(limit_of(&status), "WORK_INBOUND_MESSAGES_PER_SEC");
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct AuditRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    action: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    bytes: i32,
}

async fn stream_audit(app: &TestApp) -> Vec<AuditRow> {
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(
        "SELECT action, octet_length(details::text) AS bytes FROM audit_logs \
         WHERE action IN ('jobs.work_open', 'jobs.work_close')",
    )
    .load(&mut conn)
    .await
    .expect("audit rows")
}

#[tokio::test]
async fn opening_and_closing_streams_in_a_loop_writes_a_bounded_audit() {
    let mut app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let channel = app.channel().await;
    // The largest hello there is: 256 job names of 128 bytes.
    let names: Vec<String> = (0..256)
        .map(|i| format!("{i:03}.{}", "n".repeat(124)))
        .collect();
    for _ in 0..40 {
        let worker = TestWorker::connect(
            channel.clone(),
            &token,
            pb::WorkerHello {
                worker_id: "w".repeat(128),
                job_names: names.clone(),
                module_names: vec![],
                max_concurrency: 1,
            },
        )
        .await
        .expect("connects");
        let mut rx = worker.close();
        while let Ok(Some(_)) = rx.message().await {}
    }
    // Let the last close be recorded, then stop (which writes summaries).
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.shutdown().await;
    let rows = stream_audit(&app).await;
    let opens = rows.iter().filter(|r| r.action == "jobs.work_open").count();
    let closes = rows
        .iter()
        .filter(|r| r.action == "jobs.work_close")
        .count();
    // The first of each, and one summary of the repeats.
    assert!((1..=2).contains(&opens), "{opens} open rows");
    assert!((1..=2).contains(&closes), "{closes} close rows");
    for row in &rows {
        assert!(row.bytes < 4_096, "{} bytes of {}", row.bytes, row.action);
    }
}

#[tokio::test]
async fn stream_caps_refuse_with_the_limit_named() {
    let mut options = TestOptions::default();
    options.jobs.streams.work_streams_per_caller = 2;
    options.jobs.streams.capacity_per_stream = 5;
    options.jobs.streams.capacity_per_replica = 12;
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    let channel = app.channel().await;
    let (_, worker_token) = account(&app, "capped", &["jobs:execute"]).await;
    let only = |name: &str, max: i32| pb::WorkerHello {
        worker_id: name.into(),
        job_names: vec![format!("{name}.job")],
        module_names: vec![],
        max_concurrency: max,
    };

    // Beyond 10,000 is not a valid hello at all.
    let status = TestWorker::connect(channel.clone(), &worker_token, hello(10_001))
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Asking for 100 gets the per-stream cap, 5; credit does not lift it.
    let mut first = TestWorker::connect(channel.clone(), &worker_token, only("first", 100))
        .await
        .expect("first stream");
    first.credit(100).await;
    for _ in 0..7 {
        app.create_job(&admin, new_job("first.job", json!({})))
            .await;
    }
    for _ in 0..5 {
        first.assignment().await;
    }
    first.silent_for(Duration::from_millis(500)).await;

    // A second stream of the same caller: 5 more (10 of 12 taken).
    let mut second = TestWorker::connect(channel.clone(), &worker_token, only("second", 5))
        .await
        .expect("second stream");
    // A third stream of the same caller is refused.
    let status = TestWorker::connect(channel.clone(), &worker_token, only("third", 1))
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(limit_of(&status), "WORK_STREAMS_PER_CALLER");

    // Another caller asking for 5 gets what the replica has left, 2; then
    // nothing is left.
    let (_, other_token) = account(&app, "other", &["jobs:execute"]).await;
    let mut other = TestWorker::connect(channel.clone(), &other_token, only("other", 5))
        .await
        .expect("other stream");
    for _ in 0..3 {
        app.create_job(&admin, new_job("other.job", json!({})))
            .await;
    }
    other.assignment().await;
    other.assignment().await;
    other.silent_for(Duration::from_millis(500)).await;
    let status = TestWorker::connect(channel.clone(), &other_token, only("more", 1))
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(limit_of(&status), "WORK_CAPACITY_PER_REPLICA");

    // The second stream holds what it was granted.
    for _ in 0..6 {
        app.create_job(&admin, new_job("second.job", json!({})))
            .await;
    }
    for _ in 0..5 {
        second.assignment().await;
    }
    second.silent_for(Duration::from_millis(500)).await;

    // A closed stream gives its room back.
    let mut rx = first.close();
    while let Ok(Some(_)) = rx.message().await {}
    tokio::time::sleep(Duration::from_millis(200)).await;
    TestWorker::connect(channel.clone(), &worker_token, only("again", 1))
        .await
        .expect("room again");
    app.stop().await;
}

#[tokio::test]
async fn one_caller_cannot_take_the_whole_replica() {
    let mut options = TestOptions::default();
    options.jobs.streams.capacity_per_stream = 5;
    options.jobs.streams.capacity_per_caller = 8;
    options.jobs.streams.capacity_per_replica = 100;
    let app = TestApp::spawn_with(options).await;
    let channel = app.channel().await;
    let (_, greedy) = account(&app, "greedy", &["jobs:execute"]).await;
    let (_, honest) = account(&app, "honest", &["jobs:execute"]).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            TestWorker::connect(channel.clone(), &greedy, hello(5))
                .await
                .expect("within the caller's share"),
        );
    }
    // The welcome tells each stream what it was granted.
    let grants: Vec<i32> = held.iter().map(|w| w.welcome.granted_concurrency).collect();
    assert_eq!(grants, [5, 3]);
    // 5 + 3 of its 8: nothing left for this caller, plenty for others.
    let status = TestWorker::connect(channel.clone(), &greedy, hello(5))
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(limit_of(&status), "WORK_CAPACITY_PER_CALLER");
    TestWorker::connect(channel.clone(), &honest, hello(5))
        .await
        .expect("another caller still gets in");
    app.stop().await;
}

#[tokio::test]
async fn idle_high_capacity_streams_leave_an_honest_worker_served() {
    let mut options = TestOptions::default();
    options.jobs.streams.capacity_per_stream = 10_000;
    options.jobs.streams.capacity_per_caller = 1_000_000;
    options.jobs.streams.capacity_per_replica = 1_000_000;
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    let (_, idle_token) = account(&app, "idle", &["jobs:execute"]).await;
    let channel = app.channel().await;
    let mut idle = Vec::new();
    for i in 0..50 {
        idle.push(
            TestWorker::connect(
                channel.clone(),
                &idle_token,
                pb::WorkerHello {
                    worker_id: format!("idle-{i}"),
                    job_names: vec!["nobody.enqueues.this".into()],
                    module_names: vec![],
                    max_concurrency: 10_000,
                },
            )
            .await
            .expect("idle stream"),
        );
    }
    let mut honest = app.worker(4).await;
    let mut created = HashSet::new();
    for i in 0..20 {
        created.insert(
            app.create_job(&admin, new_job("honest.work", json!({ "i": i })))
                .await
                .id,
        );
    }
    assert_eq!(run_all(&mut honest, created.len()).await, created);
    drop(idle);
    app.stop().await;
}
