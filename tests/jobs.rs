//! The job queue over real gRPC with a worker written from the proto.

mod common;

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
