//! The Rust worker SDK against a live server, with an API key: results and
//! failures reported once, cancellation reaching the handler, a revoked key
//! stopping the worker, a drain on shutdown that finishes held jobs, and
//! progress reported without waiting.

use crate::common;

use std::{sync::Arc, time::Duration};

use automation_control_plane::proto::automation_v1 as pb;
use automation_worker::{JobError, Progress, Worker, WorkerError};
use common::{JobServiceClient, TestApp, authed, new_job};
use serde_json::json;
use tokio::sync::{Notify, oneshot};
use tonic::Code;

async fn api_key(app: &TestApp, permissions: &[&str]) -> (String, String) {
    let created = pb::api_key_service_client::ApiKeyServiceClient::new(app.channel().await)
        .create_api_key(authed(
            &app.admin_token().await,
            pb::CreateApiKeyRequest {
                name: "sdk test".into(),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    (created.api_key.unwrap().id, created.secret)
}

async fn wait_for(app: &TestApp, token: &str, id: &str, status: pb::JobStatus) -> pb::Job {
    let mut last = None;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let job = app.job(token, id).await;
            if job.status() == status {
                return job;
            }
            last = Some(job);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("job {id} never became {status:?}: {last:?}"))
}

#[tokio::test]
async fn the_sdk_runs_reports_cancels_and_drains() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let (_, key) = api_key(&app, &["jobs:execute"]).await;
    let cancelled_seen = Arc::new(Notify::new());
    let seen = cancelled_seen.clone();
    let release_slow = Arc::new(Notify::new());
    let release = release_slow.clone();
    let worker = Worker::builder(format!("http://{}", app.addr), key)
        .concurrency(4)
        .handle("sdk.double", |job| async move {
            Ok(json!({ "doubled": job.payload["n"].as_i64().unwrap_or(0) * 2 }))
        })
        .handle("sdk.broken", |_| async move {
            Err(JobError::permanent("no such file").with_details(json!({ "path": "/x" })))
        })
        .handle("sdk.endless", move |job| {
            let seen = seen.clone();
            async move {
                job.cancelled().await;
                seen.notify_one();
                Ok(json!({}))
            }
        })
        .handle("sdk.slow", move |_| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok(json!({ "finished": true }))
            }
        })
        .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));

    let doubled = app
        .create_job(&token, new_job("sdk.double", json!({ "n": 21 })))
        .await;
    let done = wait_for(&app, &token, &doubled.id, pb::JobStatus::Completed).await;
    assert_eq!(
        done.result,
        Some(common::worker::json_value(json!({ "doubled": 42 })))
    );
    let broken = app
        .create_job(&token, new_job("sdk.broken", json!({})))
        .await;
    let failed = wait_for(&app, &token, &broken.id, pb::JobStatus::Failed).await;
    assert_eq!(failed.attempts, 1, "a permanent failure is not retried");
    assert!(format!("{:?}", failed.error).contains("no such file"));

    let endless = app
        .create_job(&token, new_job("sdk.endless", json!({})))
        .await;
    wait_for(&app, &token, &endless.id, pb::JobStatus::Running).await;
    JobServiceClient::new(app.channel().await)
        .cancel_job(authed(&token, pb::CancelJobRequest { id: endless.id }))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), cancelled_seen.notified())
        .await
        .expect("the handler hears the cancellation");

    // Shutdown drains: the held job finishes and is reported first.
    let slow = app.create_job(&token, new_job("sdk.slow", json!({}))).await;
    wait_for(&app, &token, &slow.id, pb::JobStatus::Running).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!running.is_finished(), "the worker waits for its held job");
    release_slow.notify_one();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the worker stops once drained")
        .unwrap()
        .unwrap();
    wait_for(&app, &token, &slow.id, pb::JobStatus::Completed).await;
    app.stop().await;
}

#[tokio::test]
async fn a_refused_key_stops_the_worker_and_a_missing_server_is_retried() {
    let app = TestApp::spawn().await;
    let (_, key) = api_key(&app, &["jobs:read"]).await;
    let worker = Worker::builder(format!("http://{}", app.addr), key)
        .handle("sdk.any", |_| async move { Ok(json!({})) })
        .build();
    let result = tokio::time::timeout(Duration::from_secs(10), worker.run(std::future::pending()))
        .await
        .expect("a refused credential ends the run");
    match result {
        Err(WorkerError::Refused(status)) => assert_eq!(status.code(), Code::PermissionDenied),
        other => panic!("{other:?}"),
    }
    // Nobody listens there: the worker keeps retrying until told to stop.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let worker = Worker::builder(format!("http://{addr}"), "acp_x")
        .handle("sdk.any", |_| async move { Ok(json!({})) })
        .build();
    let stop = tokio::time::sleep(Duration::from_millis(700));
    let result = tokio::time::timeout(Duration::from_secs(10), worker.run(stop))
        .await
        .expect("shutdown ends the retries");
    assert!(result.is_ok(), "{result:?}");
    app.stop().await;
}

/// A job cancelled and retried at once comes back to the same worker as
/// attempt 2 while attempt 1's handler is still winding down: attempt 2's
/// result is the one reported, and attempt 1's is dropped.
#[tokio::test]
async fn a_new_attempt_of_a_job_still_running_here_is_reported() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let (_, key) = api_key(&app, &["jobs:execute"]).await;
    let worker = Worker::builder(format!("http://{}", app.addr), key)
        .handle("sdk.retried", |job| async move {
            if job.attempt == 1 {
                job.cancelled().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(800)).await;
            }
            Ok(json!({ "attempt": job.attempt }))
        })
        .build();
    let running = tokio::spawn(worker.run(std::future::pending()));
    let job = app
        .create_job(&token, new_job("sdk.retried", json!({})))
        .await;
    wait_for(&app, &token, &job.id, pb::JobStatus::Running).await;
    let mut jobs = JobServiceClient::new(app.channel().await);
    jobs.cancel_job(authed(&token, pb::CancelJobRequest { id: job.id.clone() }))
        .await
        .unwrap();
    jobs.retry_job(authed(&token, pb::RetryJobRequest { id: job.id.clone() }))
        .await
        .unwrap();
    let done = wait_for(&app, &token, &job.id, pb::JobStatus::Completed).await;
    assert_eq!(
        done.result,
        Some(common::worker::json_value(json!({ "attempt": 2 })))
    );
    running.abort();
    app.stop().await;
}

#[tokio::test]
async fn a_worker_without_handlers_refuses_to_run() {
    let worker = Worker::builder("http://127.0.0.1:1", "acp_x").build();
    let result = worker.run(std::future::pending()).await;
    assert!(matches!(result, Err(WorkerError::NoHandlers)), "{result:?}");
}

/// A handler that ignores its cancellation does not hold up a shutdown past
/// the drain timeout: its job is released to other workers, not failed.
#[tokio::test]
async fn a_stuck_handler_is_released_at_the_drain_timeout() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let (_, key) = api_key(&app, &["jobs:execute"]).await;
    let worker = Worker::builder(format!("http://{}", app.addr), key)
        .drain_timeout(Duration::from_millis(300))
        .handle("sdk.stuck", |_| async move {
            std::future::pending::<()>().await;
            Ok(json!({}))
        })
        .build();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let job = app
        .create_job(&token, new_job("sdk.stuck", json!({})))
        .await;
    wait_for(&app, &token, &job.id, pb::JobStatus::Running).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the drain ends at its timeout")
        .unwrap()
        .unwrap();
    let released = wait_for(&app, &token, &job.id, pb::JobStatus::Pending).await;
    assert!(
        released.error.is_none(),
        "a release is not a failure: {released:?}"
    );
    app.stop().await;
}

/// A handler reports progress as often as it likes without waiting: the
/// job shows the latest report while it runs, and the last one before its
/// result once it is finished.
#[tokio::test]
async fn a_handler_reports_progress_without_waiting() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let (_, key) = api_key(&app, &["jobs:execute"]).await;
    let release = Arc::new(Notify::new());
    let released = release.clone();
    let worker = Worker::builder(format!("http://{}", app.addr), key)
        .handle("sdk.progress", move |job| {
            let released = released.clone();
            async move {
                // A tight loop: each call returns at once, only the latest
                // is sent.
                for step in 0..=10_000 {
                    job.progress(f64::from(step) / 100.0, format!("step {step}"));
                }
                released.notified().await;
                job.report_progress(
                    Progress::new()
                        .percent(100.0)
                        .message("done")
                        .details(json!({ "files": 3 })),
                );
                Ok(json!({}))
            }
        })
        .build();
    let running = tokio::spawn(worker.run(std::future::pending()));
    let job = app
        .create_job(&token, new_job("sdk.progress", json!({})))
        .await;
    let shown = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let read = app.job(&token, &job.id).await;
            if let Some(progress) = read.progress.filter(|p| p.message == "step 10000") {
                return progress;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the latest progress is shown");
    assert_eq!(shown.percent, Some(100.0));
    release.notify_one();
    let done = wait_for(&app, &token, &job.id, pb::JobStatus::Completed).await;
    let kept = done.progress.expect("the finished job keeps its progress");
    assert_eq!(kept.message, "done");
    assert_eq!(
        kept.details,
        Some(common::worker::json_struct(json!({ "files": 3 })))
    );
    running.abort();
    app.stop().await;
}
