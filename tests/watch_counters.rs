//! WatchJob and WatchModule against a caller that opens as many as it can:
//! the streams are capped per account and per replica (RESOURCE_EXHAUSTED
//! naming the limit), their slots come back however they end, thousands of
//! watchers of one job cost one follower's reads, and all of a caller's
//! streams share one re-check of it.
//!
//! The counters read here (`Watchers::stats`) are the process's, so these
//! tests have a binary of their own (no other test's streams count) and run
//! one at a time.

#[allow(
    dead_code,
    unused_imports,
    reason = "this binary uses a part of the shared harness"
)]
#[path = "integration/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use automation_control_plane::{dispatch::Watchers, proto::automation_v1 as pb};
use common::{
    JobServiceClient, ModuleServiceClient, TestApp, TestOptions, account, authed, new_job,
    worker::{TestWorker, hello},
};
use futures::{StreamExt as _, stream};
use serde_json::json;
use tonic::{Code, Status, Streaming, transport::Channel};
use tonic_types::StatusExt as _;

/// The tests of this file, one at a time (they read process-wide counters).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a test waits for what it expects.
const PATIENCE: Duration = Duration::from_secs(20);

type Watch = Streaming<pb::WatchJobResponse>;

async fn watch_job(channel: Channel, token: &str, id: &str) -> Result<Watch, Status> {
    JobServiceClient::new(channel)
        .watch_job(authed(token, pb::WatchJobRequest { id: id.into() }))
        .await
        .map(|r| r.into_inner())
}

/// Opens a watch and reads its first message.
async fn opened(channel: Channel, token: &str, id: &str) -> Watch {
    let mut watch = watch_job(channel, token, id).await.expect("watch opens");
    next_status(&mut watch).await;
    watch
}

/// The status the next message of `watch` carries.
async fn next_status(watch: &mut Watch) -> pb::JobStatus {
    tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("a message in time")
        .expect("the watch goes on")
        .expect("a message, not the end")
        .job
        .expect("job")
        .status()
}

/// The limit a refusal names (and checks that it is one).
fn limit_of(status: &Status) -> String {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("an ErrorInfo");
    assert_eq!(info.reason, "LIMIT_EXCEEDED");
    info.metadata.get("limit").cloned().expect("a limit")
}

/// Retries opening a watch until it is no longer refused for a limit (the
/// server frees a slot once it notices the stream that held it ended).
async fn once_freed(channel: &Channel, token: &str, id: &str) -> Result<Watch, Status> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match watch_job(channel.clone(), token, id).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(Instant::now() < deadline, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test]
async fn watches_are_capped_per_account_and_their_slots_come_back() {
    let _serial = SERIAL.lock().await;
    let mut options = TestOptions::default();
    options.jobs.streams.watches_per_caller = 3;
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    let job = app.create_job(&admin, new_job("watched", json!({}))).await;
    let (_, alice) = account(&app, "alice", &["jobs:read", "modules:read"]).await;
    let channel = app.channel().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(opened(channel.clone(), &alice, &job.id).await);
    }
    let refused = watch_job(channel.clone(), &alice, &job.id)
        .await
        .unwrap_err();
    assert_eq!(limit_of(&refused), "WATCHES_PER_CALLER");
    // WatchModule shares the allowance, and is refused before anything is
    // looked up.
    let refused = ModuleServiceClient::new(channel.clone())
        .watch_module(authed(
            &alice,
            pb::WatchModuleRequest {
                id: "no-such-module".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(limit_of(&refused), "WATCHES_PER_CALLER");
    // A key of hers counts as her.
    let key = pb::api_key_service_client::ApiKeyServiceClient::new(channel.clone())
        .create_api_key(authed(
            &alice,
            pb::CreateApiKeyRequest {
                user_id: String::new(),
                name: "watcher".into(),
                permissions: vec!["jobs:read".into()],
                expire_time: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let refused = watch_job(channel.clone(), &key, &job.id).await.unwrap_err();
    assert_eq!(limit_of(&refused), "WATCHES_PER_CALLER");
    // Someone else is not held back by her.
    let (_, bob) = account(&app, "bob", &["jobs:read"]).await;
    let _bobs = opened(channel.clone(), &bob, &job.id).await;

    // A watch she closes frees its slot.
    drop(held.pop());
    let mut again = once_freed(&channel, &alice, &job.id).await.unwrap();
    next_status(&mut again).await;
    held.push(again);

    // A watch refused NOT_FOUND holds no slot.
    drop(held.pop());
    let missing = uuid::Uuid::now_v7().to_string();
    let status = once_freed(&channel, &alice, &missing).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    for _ in 0..5 {
        let status = watch_job(channel.clone(), &alice, &missing)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    held.push(opened(channel.clone(), &alice, &job.id).await);

    // Watches that end with their job free their slots.
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    worker.complete(&assignment, json!({})).await;
    for watch in &mut held {
        while let Some(message) = tokio::time::timeout(PATIENCE, watch.message())
            .await
            .expect("in time")
            .expect("ok")
        {
            if message.job.unwrap().status() == pb::JobStatus::Completed {
                break;
            }
        }
    }
    let next = app.create_job(&admin, new_job("watched", json!({}))).await;
    for _ in 0..3 {
        let watch = once_freed(&channel, &alice, &next.id).await.unwrap();
        held.push(watch);
    }
    app.stop().await;
}

#[tokio::test]
async fn watches_are_capped_per_replica() {
    let _serial = SERIAL.lock().await;
    let mut options = TestOptions::default();
    options.jobs.streams.watches_per_replica = 4;
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    let job = app.create_job(&admin, new_job("watched", json!({}))).await;
    let channel = app.channel().await;
    let (_, alice) = account(&app, "alice", &["jobs:read"]).await;
    let (_, bob) = account(&app, "bob", &["jobs:read"]).await;
    let (_, carol) = account(&app, "carol", &["jobs:read"]).await;
    let mut held = Vec::new();
    for token in [&alice, &alice, &bob, &bob] {
        held.push(opened(channel.clone(), token, &job.id).await);
    }
    let refused = watch_job(channel.clone(), &carol, &job.id)
        .await
        .unwrap_err();
    assert_eq!(limit_of(&refused), "WATCHES_PER_REPLICA");
    drop(held.pop());
    let mut carols = once_freed(&channel, &carol, &job.id).await.unwrap();
    next_status(&mut carols).await;
    app.stop().await;
}

/// 2,000 watchers of one job, from one caller: each hears each change, and
/// the job is read a bounded number of times, not once per watcher.
#[tokio::test]
async fn thousands_of_watchers_of_one_job_share_its_reads() {
    const WATCHERS: usize = 2_000;
    let _serial = SERIAL.lock().await;
    let mut options = TestOptions::default();
    options.jobs.streams.watches_per_caller = WATCHERS;
    options.jobs.streams.watches_per_replica = WATCHERS;
    // No safety re-read during the test: every read is a change's.
    options.jobs.poll_interval = Duration::from_secs(120);
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    let job = app.create_job(&admin, new_job("watched", json!({}))).await;
    let (_, crowd) = account(&app, "crowd", &["jobs:read"]).await;
    // A connection carries at most 256 streams.
    let mut channels = Vec::new();
    for _ in 0..WATCHERS.div_ceil(200) {
        channels.push(app.channel().await);
    }
    let before_open = Watchers::stats();
    let mut watches: Vec<Watch> = stream::iter(0..WATCHERS)
        .map(|n| opened(channels[n % channels.len()].clone(), &crowd, &job.id))
        .buffer_unordered(64)
        .collect()
        .await;
    let opened_at = Watchers::stats();
    assert!(
        opened_at.record_reads - before_open.record_reads <= 2,
        "{WATCHERS} watches opened with {} reads of their job",
        opened_at.record_reads - before_open.record_reads
    );
    // The job runs, then completes: every watcher hears both.
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    let statuses: Vec<_> = stream::iter(watches.iter_mut())
        .map(next_status)
        .buffer_unordered(256)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == pb::JobStatus::Running));
    worker.complete(&assignment, json!({})).await;
    let statuses: Vec<_> = stream::iter(watches.iter_mut())
        .map(next_status)
        .buffer_unordered(256)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == pb::JobStatus::Completed));
    let reads = Watchers::stats().record_reads - opened_at.record_reads;
    eprintln!(
        "{WATCHERS} watchers: {} reads to open, {reads} through two changes",
        opened_at.record_reads - before_open.record_reads
    );
    assert!(
        reads <= 10,
        "{WATCHERS} watchers of one job through two changes: {reads} reads"
    );
    // Every stream ends with its job, and their slots come back.
    for watch in &mut watches {
        let end = tokio::time::timeout(PATIENCE, watch.message())
            .await
            .expect("in time")
            .expect("ok");
        assert!(end.is_none());
    }
    let next = app.create_job(&admin, new_job("watched", json!({}))).await;
    let _again = once_freed(&channels[0], &crowd, &next.id).await.unwrap();
    app.stop().await;
}

/// One caller's watches and Work stream share its re-checks (one per
/// heartbeat interval, not one per stream), and its logout ends them all.
#[tokio::test]
async fn a_callers_streams_share_its_recheck_and_end_with_its_session() {
    const WATCHES: usize = 200;
    let _serial = SERIAL.lock().await;
    let mut options = TestOptions::default();
    options.jobs.lease = Duration::from_secs(3);
    options.jobs.streams.watches_per_caller = WATCHES;
    let app = TestApp::spawn_with(options).await;
    let heartbeat = Duration::from_secs(1);
    let admin = app.admin_token().await;
    let mut jobs = Vec::new();
    for _ in 0..5 {
        jobs.push(app.create_job(&admin, new_job("watched", json!({}))).await);
    }
    let (_, alice) = account(&app, "alice", &["jobs:read", "jobs:execute"]).await;
    let channels = [app.channel().await, app.channel().await];
    let mut watches: Vec<Watch> = stream::iter(0..WATCHES)
        .map(|n| opened(channels[n % 2].clone(), &alice, &jobs[n % jobs.len()].id))
        .buffer_unordered(32)
        .collect()
        .await;
    // Her worker takes nothing (it asks for no job name that exists) but
    // re-checks her like the watches.
    let mut her_hello = hello(1);
    her_hello.job_names = vec!["nothing.here".into()];
    let mut worker = TestWorker::connect(app.channel().await, &alice, her_hello)
        .await
        .unwrap();

    let window = Duration::from_secs(4);
    let before = Watchers::stats().caller_rechecks;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let rechecks = Watchers::stats().caller_rechecks - before;
    // One periodic re-check per interval for her watches, plus at most one
    // per interval at her Work stream's own pace: never one per stream.
    let intervals = started.elapsed().as_secs_f64() / heartbeat.as_secs_f64();
    let bound = (2.0 * intervals.ceil()) as u64 + 2;
    assert!(
        (1..=bound).contains(&rechecks),
        "{rechecks} re-checks in {intervals:.1} heartbeat intervals for {WATCHES} watches \
         and a Work stream of one caller (bound {bound})"
    );

    eprintln!("{rechecks} re-checks in {intervals:.1} heartbeat intervals");
    let before = Watchers::stats().caller_rechecks;
    let logged_out = Instant::now();
    common::AuthServiceClient::new(app.channel().await)
        .logout(authed(&alice, pb::LogoutRequest {}))
        .await
        .unwrap();
    let ends: Vec<Status> = stream::iter(watches.iter_mut())
        .map(|watch| async move {
            tokio::time::timeout(PATIENCE, watch.message())
                .await
                .expect("the watch ends within a heartbeat interval or so")
                .unwrap_err()
        })
        .buffer_unordered(256)
        .collect()
        .await;
    eprintln!(
        "{WATCHES} watches ended {:?} after the logout, with {} re-checks",
        logged_out.elapsed(),
        Watchers::stats().caller_rechecks - before
    );
    for end in ends {
        assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    }
    let end = tokio::time::timeout(PATIENCE, worker.end())
        .await
        .expect("the Work stream ends too");
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    app.stop().await;
}

/// Losing `jobs:read` ends every watch of the account PERMISSION_DENIED;
/// the server's drain ends the others UNAVAILABLE.
#[tokio::test]
async fn watches_end_with_their_permission_and_with_the_drain() {
    let _serial = SERIAL.lock().await;
    let mut options = TestOptions::default();
    options.jobs.lease = Duration::from_secs(3);
    let mut app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    let job = app.create_job(&admin, new_job("watched", json!({}))).await;
    let (alice_id, alice) = account(&app, "alice", &["jobs:read"]).await;
    let (_, bob) = account(&app, "bob", &["jobs:read"]).await;
    let channel = app.channel().await;
    let mut hers = Vec::new();
    let mut his = Vec::new();
    for _ in 0..20 {
        hers.push(opened(channel.clone(), &alice, &job.id).await);
        his.push(opened(channel.clone(), &bob, &job.id).await);
    }
    common::RoleServiceClient::new(channel.clone())
        .unassign_role(authed(
            &admin,
            pb::UnassignRoleRequest {
                user_id: alice_id,
                role: "alice-role".into(),
            },
        ))
        .await
        .expect("unassign");
    for watch in &mut hers {
        let end = tokio::time::timeout(PATIENCE, watch.message())
            .await
            .expect("the watch ends")
            .unwrap_err();
        assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    }
    let stopping = tokio::spawn(async move {
        app.shutdown().await;
        app
    });
    for watch in &mut his {
        let end = tokio::time::timeout(PATIENCE, watch.message())
            .await
            .expect("the watch ends")
            .unwrap_err();
        assert_eq!(end.code(), Code::Unavailable, "{end:?}");
        let info = end.get_error_details().error_info().cloned();
        assert_eq!(info.expect("an ErrorInfo").reason, "SERVER_DRAINING");
    }
    drop(stopping.await.unwrap());
}

/// A watcher that stops reading is never waited on: while it sits on
/// megabytes it has not read, the job's other watcher hears every change;
/// it holds its slot until its client leaves, and then gives it back.
#[tokio::test]
async fn a_watcher_that_stops_reading_holds_nobody_up() {
    let _serial = SERIAL.lock().await;
    let mut options = TestOptions::default();
    options.jobs.streams.watches_per_caller = 2;
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    // Each message carries the payload: a few changes fill any buffer.
    let mut request = new_job("watched", json!({"blob": "x".repeat(600_000)}));
    request.max_attempts = 20;
    let job = app.create_job(&admin, request).await;
    let (_, alice) = account(&app, "alice", &["jobs:read"]).await;
    // Apart, since HTTP/2 flow control is also per connection.
    let stalled_channel = app.channel().await;
    let reader_channel = app.channel().await;
    let stalled = opened(stalled_channel.clone(), &alice, &job.id).await;
    let mut reader = opened(reader_channel.clone(), &alice, &job.id).await;
    let mut worker = app.worker(1).await;
    for attempt in 1..=5 {
        let assignment = worker.assignment().await;
        loop {
            let seen = tokio::time::timeout(PATIENCE, reader.message())
                .await
                .expect("the reader hears each change in time")
                .expect("ok")
                .expect("a message")
                .job
                .unwrap();
            if seen.status() == pb::JobStatus::Running && seen.attempts == attempt {
                break;
            }
        }
        worker.fail(&assignment, "again", false).await;
        assert!(worker.ack().await.accepted);
    }
    let refused = watch_job(reader_channel.clone(), &alice, &job.id)
        .await
        .unwrap_err();
    assert_eq!(limit_of(&refused), "WATCHES_PER_CALLER");
    drop(stalled);
    let mut again = once_freed(&reader_channel, &alice, &job.id).await.unwrap();
    next_status(&mut again).await;
    app.stop().await;
}
