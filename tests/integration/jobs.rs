//! The job queue over real gRPC with a worker written from the proto.

use crate::common;

use std::time::Duration;

use automation_control_plane::proto::automation_v1 as pb;
use common::{TestApp, new_job, worker::job_id};
use serde_json::json;

#[tokio::test]
async fn a_job_runs_end_to_end() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut worker = app.worker(2).await;
    assert_eq!(worker.welcome.lease_duration.unwrap().seconds, 30);
    let job = app
        .create_job(&token, new_job("hello.world", json!({"n": 1})))
        .await;
    assert_eq!(job.status(), pb::JobStatus::Pending);
    let assignment = worker.assignment().await;
    assert_eq!(job_id(&assignment), job.id);
    assert_eq!(assignment.attempt, 1);
    worker.complete(&assignment, json!({"ok": true})).await;
    let ack = worker.ack().await;
    assert!(ack.accepted, "{ack:?}");
    let done = app.job(&token, &job.id).await;
    assert_eq!(done.status(), pb::JobStatus::Completed);
    assert_eq!(done.attempts, 1);
    worker.silent_for(Duration::from_millis(200)).await;
    app.stop().await;
}

use common::{JobServiceClient, authed};
use tonic::Code;

#[tokio::test]
async fn an_idempotency_key_makes_creation_safe_to_repeat() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let request = pb::CreateJobRequest {
        idempotency_key: "nightly-2026-11-25".into(),
        ..new_job("backup.run", json!({"target": "db"}))
    };
    let first = app.create_job(&token, request.clone()).await;
    let again = app.create_job(&token, request.clone()).await;
    assert_eq!(first.id, again.id);
    assert_eq!(first.idempotency_key, "nightly-2026-11-25");
    // Concurrent repeats too: one job.
    let racing =
        futures::future::join_all((0..10).map(|_| app.create_job(&token, request.clone()))).await;
    assert!(racing.iter().all(|job| job.id == first.id));
    let listed = JobServiceClient::new(app.channel().await)
        .list_jobs(authed(
            &token,
            pb::ListJobsRequest {
                name: "backup.run".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 1);
    // The key with another payload is a clash, named.
    let status = JobServiceClient::new(app.channel().await)
        .create_job(authed(
            &token,
            pb::CreateJobRequest {
                idempotency_key: "nightly-2026-11-25".into(),
                ..new_job("backup.run", json!({"target": "other"}))
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().starts_with("idempotency_key:"),
        "{status:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_is_all_or_nothing() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut client = JobServiceClient::new(app.channel().await);
    let mut requests: Vec<pb::CreateJobRequest> = (0..50)
        .map(|i| new_job("batch.item", json!({"i": i})))
        .collect();
    requests[37].priority = 5000;
    let status = client
        .batch_create_jobs(authed(
            &token,
            pb::BatchCreateJobsRequest {
                requests: requests.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("requests[37].priority:"),
        "{status:?}"
    );
    let count = |client: &mut JobServiceClient<_>| {
        let token = token.clone();
        let mut client = client.clone();
        async move {
            client
                .list_jobs(authed(
                    &token,
                    pb::ListJobsRequest {
                        page_size: 500,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .jobs
                .len()
        }
    };
    assert_eq!(count(&mut client).await, 0, "nothing was written");
    requests[37].priority = 5;
    let created = client
        .batch_create_jobs(authed(&token, pb::BatchCreateJobsRequest { requests }))
        .await
        .expect("a valid batch")
        .into_inner()
        .jobs;
    assert_eq!(created.len(), 50);
    assert_eq!(created[37].priority, 5);
    assert_eq!(count(&mut client).await, 50);
    let status = client
        .batch_create_jobs(authed(
            &token,
            pb::BatchCreateJobsRequest { requests: vec![] },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn bad_jobs_are_refused_by_field() {
    let mut options = common::TestOptions::default();
    options.jobs.payload_max_bytes = 2048;
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let mut client = JobServiceClient::new(app.channel().await);
    let cases = [
        (new_job("", json!({})), "name:"),
        (new_job("has space", json!({})), "name:"),
        (
            new_job("big", json!({"blob": "x".repeat(4000)})),
            "payload:",
        ),
        (
            pb::CreateJobRequest {
                priority: -1001,
                ..new_job("p", json!({}))
            },
            "priority:",
        ),
        (
            pb::CreateJobRequest {
                max_attempts: 101,
                ..new_job("m", json!({}))
            },
            "max_attempts:",
        ),
        (
            pb::CreateJobRequest {
                module_name: "Not_Kebab".into(),
                ..new_job("m", json!({}))
            },
            "module_name:",
        ),
    ];
    for (request, field) in cases {
        let status = client
            .create_job(authed(&token, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field} {status:?}");
        assert!(status.message().starts_with(field), "{field} {status:?}");
    }
    // A module that does not exist.
    let status = client
        .create_job(authed(
            &token,
            pb::CreateJobRequest {
                module_name: "no-such-module".into(),
                ..new_job("m", json!({}))
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    app.stop().await;
}

#[tokio::test]
async fn jobs_are_listed_newest_first_with_filters_and_stable_pages() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let name = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(
            app.create_job(&token, new_job(name, json!({"i": i})))
                .await
                .id,
        );
    }
    let mut client = JobServiceClient::new(app.channel().await);
    let mut seen = Vec::new();
    let mut token_page = String::new();
    loop {
        let page = client
            .list_jobs(authed(
                &token,
                pb::ListJobsRequest {
                    page_size: 3,
                    page_token: token_page.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        // A job created between pages does not shift the next page.
        if seen.len() == 3 {
            app.create_job(&token, new_job("late", json!({}))).await;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token_page = page.next_page_token;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let odd = client
        .list_jobs(authed(
            &token,
            pb::ListJobsRequest {
                name: "odd".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(odd.len(), 3);
    let pending = client
        .list_jobs(authed(
            &token,
            pb::ListJobsRequest {
                status: pb::JobStatus::Pending.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(pending.len(), 8);
    let future = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3600,
        nanos: 0,
    };
    let none = client
        .list_jobs(authed(
            &token,
            pb::ListJobsRequest {
                create_time_start: Some(future),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(none.is_empty());
    app.stop().await;
}

async fn next(watch: &mut tonic::Streaming<pb::WatchJobResponse>) -> Option<pb::Job> {
    tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("in time")
        .expect("ok")
        .map(|m| m.job.unwrap())
}

#[tokio::test]
async fn watch_job_follows_a_job_to_its_end() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = app.create_job(&token, new_job("watched", json!({}))).await;
    let mut watch = JobServiceClient::new(app.channel().await)
        .watch_job(authed(&token, pb::WatchJobRequest { id: job.id.clone() }))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next(&mut watch).await.unwrap().status(),
        pb::JobStatus::Pending
    );
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    assert_eq!(
        next(&mut watch).await.unwrap().status(),
        pb::JobStatus::Running
    );
    worker.complete(&assignment, json!("watched!")).await;
    let done = next(&mut watch).await.unwrap();
    assert_eq!(done.status(), pb::JobStatus::Completed);
    assert!(
        next(&mut watch).await.is_none(),
        "the stream ends with the job"
    );
    // Unknown jobs are refused before any stream.
    let status = JobServiceClient::new(app.channel().await)
        .watch_job(authed(
            &token,
            pb::WatchJobRequest {
                id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}

/// A watch re-checks its caller like a Work stream: the caller's logout
/// ends it UNAUTHENTICATED within a heartbeat interval.
#[tokio::test]
async fn a_watch_ends_when_its_caller_loses_access() {
    let mut options = common::TestOptions::default();
    options.jobs.lease = Duration::from_secs(3);
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    let job = app.create_job(&admin, new_job("watched", json!({}))).await;
    let (_, watcher) = common::account(&app, "watcher", &["jobs:read"]).await;
    let mut watch = JobServiceClient::new(app.channel().await)
        .watch_job(authed(&watcher, pb::WatchJobRequest { id: job.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    common::AuthServiceClient::new(app.channel().await)
        .logout(authed(&watcher, pb::LogoutRequest {}))
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the watch ends within a heartbeat interval")
        .unwrap_err();
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    app.stop().await;
}
