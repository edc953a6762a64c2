//! The Work stream, driven by a worker written only from the proto (a plain
//! tonic client): handshake, credits, fencing, leases, heartbeats,
//! cancellation, retries, and the stream's own lifetime.

use crate::common;

use std::time::Duration;

use automation_control_plane::proto::automation_v1::{
    self as pb, work_request::Kind as Out, work_response::Kind as In,
};
use common::{
    JobServiceClient, TestApp, TestOptions, authed, new_job,
    worker::{TestWorker, hello, job_id, lease_of, open_raw},
};
use serde_json::json;
use tonic::Code;

/// A server whose leases last `lease`.
async fn with_lease(lease: Duration) -> TestApp {
    let mut options = TestOptions::default();
    options.jobs.lease = lease;
    TestApp::spawn_with(options).await
}

async fn create(app: &TestApp, token: &str, name: &str) -> pb::Job {
    app.create_job(token, new_job(name, json!({}))).await
}

#[tokio::test]
async fn a_stream_must_say_hello_first() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let (_tx, mut rx) = open_raw(
        app.channel().await,
        &token,
        pb::WorkRequest {
            kind: Some(Out::Heartbeat(pb::WorkerHeartbeat { jobs: vec![] })),
        },
    )
    .await
    .expect("the call opens");
    let status = rx.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("hello:"), "{status:?}");

    let status = TestWorker::connect(app.channel().await, &token, hello(0))
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("hello.max_concurrency"),
        "{status:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn credits_bound_what_a_stream_holds() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut worker = app.worker(2).await;
    for i in 0..6 {
        create(&app, &token, &format!("credit.{i}")).await;
    }
    let first = worker.assignment().await;
    let second = worker.assignment().await;
    worker.silent_for(Duration::from_millis(300)).await;
    // A report frees its slot.
    worker.complete(&first, json!(1)).await;
    assert!(worker.ack().await.accepted);
    let third = worker.assignment().await;
    worker.silent_for(Duration::from_millis(300)).await;
    // Credit adds capacity.
    worker.credit(2).await;
    let fourth = worker.assignment().await;
    let fifth = worker.assignment().await;
    worker.silent_for(Duration::from_millis(300)).await;
    let ids: std::collections::HashSet<String> = [&first, &second, &third, &fourth, &fifth]
        .iter()
        .map(|a| job_id(a))
        .collect();
    assert_eq!(ids.len(), 5, "five different jobs");
    app.stop().await;
}

#[tokio::test]
async fn stale_foreign_and_duplicate_reports_are_refused() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut alice = app.worker(1).await;
    let mut bob = app.worker(1).await;
    create(&app, &token, "fence.a").await;
    create(&app, &token, "fence.b").await;
    let mine = alice.assignment().await;
    let theirs = bob.assignment().await;
    assert_ne!(job_id(&mine), job_id(&theirs));

    // Another stream's job.
    bob.complete(&mine, json!("stolen")).await;
    let ack = bob.ack().await;
    assert!(!ack.accepted);
    assert!(ack.reason.contains("not leased to this stream"), "{ack:?}");
    // A stale attempt number.
    let mut stale = lease_of(&mine);
    stale.attempt += 7;
    alice.complete_lease(stale, json!("stale")).await;
    assert!(!alice.ack().await.accepted);
    // An unknown job.
    alice
        .complete_lease(
            pb::JobLeaseRef {
                job_id: uuid::Uuid::now_v7().to_string(),
                attempt: 1,
            },
            json!(null),
        )
        .await;
    assert!(!alice.ack().await.accepted);
    // The real one, twice: exactly one accepted.
    alice.complete(&mine, json!("done")).await;
    alice.complete(&mine, json!("again")).await;
    let acks = [alice.ack().await, alice.ack().await];
    assert_eq!(acks.iter().filter(|a| a.accepted).count(), 1, "{acks:?}");
    let job = app.job(&token, &job_id(&mine)).await;
    assert_eq!(job.status(), pb::JobStatus::Completed);
    assert_eq!(
        job.result.and_then(|v| v.kind),
        Some(prost_types::value::Kind::StringValue("done".into()))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_dropped_stream_gives_its_jobs_back_at_once() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = create(&app, &token, "drop.me").await;
    let mut first = app.worker(1).await;
    let assignment = first.assignment().await;
    assert_eq!(assignment.attempt, 1);
    drop(first);
    // Back in the queue at once (the lease is 30 s): the next worker gets it
    // as the next attempt.
    let mut second = app.worker(1).await;
    let again = second.assignment().await;
    assert_eq!(job_id(&again), job.id);
    assert_eq!(again.attempt, 2);
    let seen = app.job(&token, &job.id).await;
    let error = seen.error.expect("the loss is recorded");
    assert!(error.fields.contains_key("message"));
    app.stop().await;
}

#[tokio::test]
async fn a_silent_worker_loses_its_lease_and_its_late_result() {
    let app = with_lease(Duration::from_millis(900)).await;
    let token = app.admin_token().await;
    let job = create(&app, &token, "silent").await;
    let mut silent = app.worker(1).await;
    let first = silent.assignment().await;
    // No heartbeat: the reaper takes the lease; another worker gets it.
    let mut other = app.worker(1).await;
    let second = other.assignment().await;
    assert_eq!(job_id(&second), job.id);
    assert_eq!(second.attempt, 2);
    // The silent one is told, and its late result is refused.
    let cancellation = silent.cancellation().await;
    assert_eq!(cancellation.cause(), pb::CancellationCause::LeaseLost);
    silent.complete(&first, json!("late")).await;
    assert!(!silent.ack().await.accepted);
    other.complete(&second, json!("on time")).await;
    assert!(other.ack().await.accepted);
    app.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_a_lease() {
    let app = with_lease(Duration::from_millis(900)).await;
    let token = app.admin_token().await;
    let job = create(&app, &token, "beating").await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        worker.heartbeat().await;
    }
    // Two seconds later, still ours.
    let seen = app.job(&token, &job.id).await;
    assert_eq!(seen.status(), pb::JobStatus::Running);
    assert_eq!(seen.attempts, 1);
    worker.complete(&assignment, json!(true)).await;
    assert!(worker.ack().await.accepted);
    app.stop().await;
}

#[tokio::test]
async fn cancelling_a_running_job_tells_its_worker() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = create(&app, &token, "cancel.me").await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    let cancelled = JobServiceClient::new(app.channel().await)
        .cancel_job(authed(&token, pb::CancelJobRequest { id: job.id.clone() }))
        .await
        .expect("cancel")
        .into_inner()
        .job
        .unwrap();
    assert_eq!(cancelled.status(), pb::JobStatus::Cancelled);
    let cancellation = worker.cancellation().await;
    assert_eq!(cancellation.cause(), pb::CancellationCause::Cancelled);
    assert_eq!(cancellation.lease, Some(lease_of(&assignment)));
    worker.complete(&assignment, json!("too late")).await;
    assert!(!worker.ack().await.accepted);
    assert_eq!(
        app.job(&token, &job.id).await.status(),
        pb::JobStatus::Cancelled
    );
    // The slot is free again.
    let next = create(&app, &token, "next").await;
    assert_eq!(job_id(&worker.assignment().await), next.id);
    // A finished job cannot be cancelled.
    let status = JobServiceClient::new(app.channel().await)
        .cancel_job(authed(&token, pb::CancelJobRequest { id: job.id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.stop().await;
}

#[tokio::test]
async fn failures_retry_with_backoff_then_fail_for_good() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                max_attempts: 3,
                ..new_job("flaky", json!({}))
            },
        )
        .await;
    let mut worker = app.worker(1).await;
    let mut schedule = Vec::new();
    for attempt in 1..=3 {
        let assignment = worker.assignment().await;
        assert_eq!(assignment.attempt, attempt);
        worker
            .fail(&assignment, &format!("boom {attempt}"), false)
            .await;
        assert!(worker.ack().await.accepted);
        let seen = app.job(&token, &job.id).await;
        schedule.push((
            seen.status(),
            seen.schedule_time.unwrap(),
            seen.update_time.unwrap(),
        ));
    }
    assert_eq!(schedule[0].0, pb::JobStatus::Pending);
    assert_eq!(schedule[1].0, pb::JobStatus::Pending);
    assert_eq!(schedule[2].0, pb::JobStatus::Failed);
    // Each retry waited: base 100 ms, doubling, ±25 %.
    let delay =
        |(_, at, from): &(
            pb::JobStatus,
            prost_types::Timestamp,
            prost_types::Timestamp,
        )| { (at.seconds - from.seconds) as f64 + (at.nanos - from.nanos) as f64 / 1e9 };
    assert!((0.07..=0.13).contains(&delay(&schedule[0])), "{schedule:?}");
    assert!((0.14..=0.26).contains(&delay(&schedule[1])), "{schedule:?}");
    let failed = app.job(&token, &job.id).await;
    assert_eq!(failed.attempts, 3);
    let error = failed.error.unwrap();
    assert_eq!(
        error.fields["message"].kind,
        Some(prost_types::value::Kind::StringValue("boom 3".into()))
    );
    assert!(failed.fail_time.is_some());

    // RetryJob: a fresh budget, the next attempt number.
    let retried = JobServiceClient::new(app.channel().await)
        .retry_job(authed(&token, pb::RetryJobRequest { id: job.id.clone() }))
        .await
        .expect("retry")
        .into_inner()
        .job
        .unwrap();
    assert_eq!(retried.status(), pb::JobStatus::Pending);
    assert_eq!(retried.max_attempts, 6);
    let assignment = worker.assignment().await;
    assert_eq!(assignment.attempt, 4);
    worker.complete(&assignment, json!("finally")).await;
    assert!(worker.ack().await.accepted);
    let status = JobServiceClient::new(app.channel().await)
        .retry_job(authed(&token, pb::RetryJobRequest { id: job.id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_is_final() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = create(&app, &token, "doomed").await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    worker.fail(&assignment, "bad input", true).await;
    assert!(worker.ack().await.accepted);
    let seen = app.job(&token, &job.id).await;
    assert_eq!(seen.status(), pb::JobStatus::Failed);
    assert_eq!(seen.attempts, 1);
    worker.silent_for(Duration::from_millis(300)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_worker_takes_only_what_it_names() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut picky = TestWorker::connect(
        app.channel().await,
        &token,
        pb::WorkerHello {
            job_names: vec!["wanted".into()],
            ..hello(5)
        },
    )
    .await
    .unwrap();
    create(&app, &token, "unwanted").await;
    let wanted = create(&app, &token, "wanted").await;
    assert_eq!(job_id(&picky.assignment().await), wanted.id);
    picky.silent_for(Duration::from_millis(300)).await;
    app.stop().await;
}

#[tokio::test]
async fn jobs_come_in_priority_order_and_not_before_their_time() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let later = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 2,
        nanos: 0,
    };
    let scheduled = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                schedule_time: Some(later),
                priority: 1000,
                ..new_job("scheduled", json!({}))
            },
        )
        .await;
    let mut by_priority = Vec::new();
    for priority in [0, 10, -5, 10] {
        by_priority.push(
            app.create_job(
                &token,
                pb::CreateJobRequest {
                    priority,
                    ..new_job("ordered", json!({}))
                },
            )
            .await,
        );
    }
    let mut worker = app.worker(1).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let assignment = worker.assignment().await;
        order.push(assignment.job.as_ref().unwrap().priority);
        worker.complete(&assignment, json!(null)).await;
        assert!(worker.ack().await.accepted);
    }
    assert_eq!(order, [10, 10, 0, -5]);
    // The scheduled one only when due.
    let assignment = worker.assignment().await;
    assert_eq!(job_id(&assignment), scheduled.id);
    let now = chrono::Utc::now().timestamp_millis();
    assert!(now >= later.seconds * 1000, "not early");
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_session_ends_the_stream_and_returns_its_jobs() {
    let app = with_lease(Duration::from_millis(900)).await;
    let admin = app.admin_token().await;
    let (_, token) = app.user_with_roles("runner", &["admin"]).await;
    let job = create(&app, &admin, "held").await;
    let mut worker = TestWorker::connect(app.channel().await, &token, hello(1))
        .await
        .unwrap();
    worker.assignment().await;
    common::AuthServiceClient::new(app.channel().await)
        .logout(authed(&token, pb::LogoutRequest {}))
        .await
        .expect("logout");
    // Within a heartbeat interval (300 ms here), the stream ends…
    let status = worker.end().await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // …and its job is back in the queue, not failed.
    let seen = app.job(&admin, &job.id).await;
    assert_eq!(seen.status(), pb::JobStatus::Pending);
    app.stop().await;
}

#[tokio::test]
async fn losing_jobs_execute_ends_the_stream() {
    let app = with_lease(Duration::from_millis(900)).await;
    let admin = app.admin_token().await;
    let (user, token) = app.user_with_roles("runner", &["admin"]).await;
    let mut worker = TestWorker::connect(app.channel().await, &token, hello(1))
        .await
        .unwrap();
    app.user_with_roles("other-admin", &["admin"]).await;
    common::RoleServiceClient::new(app.channel().await)
        .unassign_role(authed(
            &admin,
            pb::UnassignRoleRequest {
                user_id: user,
                role: "admin".into(),
            },
        ))
        .await
        .expect("unassign");
    let status = worker.end().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_expired_access_token_does_not_end_the_stream() {
    let mut options = TestOptions::default();
    options.jobs.lease = Duration::from_millis(900);
    options.auth.access_token_ttl_secs = 1;
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let mut worker = TestWorker::connect(app.channel().await, &token, hello(1))
        .await
        .unwrap();
    // Well past the token's expiry (plus the 5 s leeway of token checks);
    // the session is what counts.
    worker.silent_for(Duration::from_millis(7_000)).await;
    let fresh = app.admin_token().await;
    let job = create(&app, &fresh, "still.served").await;
    assert_eq!(job_id(&worker.assignment().await), job.id);
    app.stop().await;
}

#[tokio::test]
async fn a_released_job_goes_back_without_counting_as_a_failure() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                max_attempts: 1,
                ..new_job("handed.back", json!({}))
            },
        )
        .await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    // The worker drains: it takes nothing new and gives this one back.
    worker.send(Out::Drain(pb::WorkerDrain {})).await;
    worker
        .send(Out::Release(pb::JobRelease {
            lease: Some(lease_of(&assignment)),
            reason: "shutting down".into(),
        }))
        .await;
    assert!(worker.ack().await.accepted);
    worker.silent_for(Duration::from_millis(300)).await;
    let seen = app.job(&token, &job.id).await;
    assert_eq!(
        seen.status(),
        pb::JobStatus::Pending,
        "not failed, though its only attempt"
    );
    let mut next = app.worker(1).await;
    assert_eq!(job_id(&next.assignment().await), job.id);
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_result_fails_the_attempt_instead_of_sticking() {
    let mut options = TestOptions::default();
    options.jobs.payload_max_bytes = 1024;
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let job = create(&app, &token, "big.result").await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    worker.complete(&assignment, json!("x".repeat(5000))).await;
    let ack = worker.ack().await;
    assert!(
        ack.accepted,
        "the attempt was settled, as a failure: {ack:?}"
    );
    let seen = app.job(&token, &job.id).await;
    assert_ne!(seen.status(), pb::JobStatus::Running);
    assert!(
        format!("{:?}", seen.error).contains("refused"),
        "{:?}",
        seen.error
    );
    app.stop().await;
}

#[tokio::test]
async fn a_heartbeat_reveals_a_lease_lost_meanwhile() {
    let app = with_lease(Duration::from_millis(900)).await;
    let token = app.admin_token().await;
    let job = create(&app, &token, "lost.quietly").await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    // Behind the stream's back, the lease is taken (as another replica's
    // reaper would after a partition).
    {
        use diesel_async::RunQueryDsl as _;
        let mut conn = app.pool.get().await.unwrap();
        diesel::sql_query(
            r#"UPDATE jobs SET status = 'PENDING', "leasedBy" = NULL WHERE id = $1::uuid"#,
        )
        .bind::<diesel::sql_types::Text, _>(&job.id)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    worker.heartbeat().await;
    // Either the heartbeat or the job coming back to this worker tells it.
    match worker.next().await {
        Ok(Some(In::Cancellation(c))) => {
            assert_eq!(c.cause(), pb::CancellationCause::LeaseLost);
            assert_eq!(c.lease, Some(lease_of(&assignment)));
        }
        other => panic!("expected a cancellation, got {other:?}"),
    }
    app.stop().await;
}
