//! Rate limits over real gRPC with real PostgreSQL: a bucket's tokens lease
//! that many jobs and the rest wait for the refill (the refill read from the
//! database's clock, moved by the test rather than waited for); two
//! replicas draw from one bucket; the shapes named by field; deleting a
//! bucket jobs name; and the new RPCs from the attacker's side.

use crate::common;

use std::time::Duration;

use automation_control_plane::proto::automation_v1::{self as pb, work_response::Kind as In};
use common::{
    JobServiceClient, TestApp, TestOptions, account, authed, new_job, worker::TestWorker,
};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

fn bucket(name: &str, units: i32, interval_secs: i64, burst: i32) -> pb::RateLimit {
    pb::RateLimit {
        name: name.into(),
        units,
        interval: Some(prost_types::Duration {
            seconds: interval_secs,
            nanos: 0,
        }),
        burst,
        ..Default::default()
    }
}

async fn put(
    app: &TestApp,
    token: &str,
    rate_limit: pb::RateLimit,
) -> Result<pb::RateLimit, Status> {
    JobServiceClient::new(app.channel().await)
        .put_rate_limit(authed(
            token,
            pb::PutRateLimitRequest {
                rate_limit: Some(rate_limit),
            },
        ))
        .await
        .map(|r| r.into_inner().rate_limit.expect("rate limit"))
}

fn limited(name: &str, bucket: &str, i: usize) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        rate_limit: bucket.into(),
        ..new_job(name, json!({ "i": i }))
    }
}

async fn create_all(app: &TestApp, token: &str, requests: Vec<pb::CreateJobRequest>) {
    JobServiceClient::new(app.channel().await)
        .batch_create_jobs(authed(token, pb::BatchCreateJobsRequest { requests }))
        .await
        .expect("batch create");
}

/// The assignments that arrive until the worker has been quiet a while.
async fn assignments_until_quiet(worker: &mut TestWorker) -> usize {
    let mut got = 0;
    while let Some(message) = worker.next_within(Duration::from_millis(700)).await {
        if let Ok(Some(In::Assignment(_))) = message {
            got += 1;
        }
    }
    got
}

/// Moves the bucket's last draw back by `secs` on the database's clock: as
/// if that much time had passed.
async fn age_bucket(app: &TestApp, name: &str, secs: i64) {
    use diesel_async::RunQueryDsl as _;
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(
        r#"UPDATE rate_limits SET "refilledAt" = "refilledAt" - make_interval(secs => $2)
           WHERE name = $1"#,
    )
    .bind::<diesel::sql_types::Text, _>(name)
    .bind::<diesel::sql_types::Double, _>(secs as f64)
    .execute(&mut conn)
    .await
    .expect("age the bucket");
}

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

#[tokio::test]
async fn a_bucket_leases_its_tokens_and_the_rest_wait_for_the_refill() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    // 3 tokens an hour, 3 at most: nothing refills within the test unless
    // the test moves the database's clock for it.
    put(&app, &token, bucket("smtp", 3, 3600, 3))
        .await
        .expect("put");
    create_all(
        &app,
        &token,
        (0..8).map(|i| limited("mail.send", "smtp", i)).collect(),
    )
    .await;
    let mut worker = app.worker(20).await;
    assert_eq!(
        assignments_until_quiet(&mut worker).await,
        3,
        "one job per token"
    );
    // Forty minutes later, by the database's clock: two tokens.
    age_bucket(&app, "smtp", 40 * 60).await;
    app.create_job(&token, new_job("wake.up", json!({}))).await;
    assert_eq!(
        assignments_until_quiet(&mut worker).await,
        3,
        "two refilled tokens' jobs, and the unlimited job"
    );
    let listed = JobServiceClient::new(app.channel().await)
        .list_rate_limits(authed(&token, pb::ListRateLimitsRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .rate_limits;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].tokens < 1.0, "{listed:?}");
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_draw_from_one_bucket() {
    let a = TestApp::spawn().await;
    let b = a.replica(TestOptions::default()).await;
    let token = a.admin_token().await;
    put(&a, &token, bucket("shared", 5, 3600, 5))
        .await
        .expect("put");
    let mut workers = Vec::new();
    for app in [&a, &b, &a, &b] {
        workers.push(app.worker(10).await);
    }
    create_all(
        &a,
        &token,
        (0..30).map(|i| limited("api.call", "shared", i)).collect(),
    )
    .await;
    let mut total = 0;
    for worker in &mut workers {
        total += assignments_until_quiet(worker).await;
    }
    assert_eq!(total, 5, "five tokens, five jobs, across both replicas");
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn bad_rate_limits_name_their_field() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let refused = |r: Result<pb::RateLimit, Status>| r.expect_err("refused");
    assert_eq!(
        field_of(&refused(
            put(&app, &token, bucket("bad name", 1, 1, 1)).await
        )),
        "rate_limit.name"
    );
    assert_eq!(
        field_of(&refused(put(&app, &token, bucket("b", 0, 1, 1)).await)),
        "rate_limit.units"
    );
    assert_eq!(
        field_of(&refused(put(&app, &token, bucket("b", 1, 0, 1)).await)),
        "rate_limit.interval"
    );
    assert_eq!(
        field_of(&refused(put(&app, &token, bucket("b", 1, 1, -1)).await)),
        "rate_limit.burst"
    );
    let unknown = JobServiceClient::new(app.channel().await)
        .create_job(authed(&token, limited("x", "nobody", 0)))
        .await
        .expect_err("unknown bucket");
    assert_eq!(field_of(&unknown), "rate_limit");
    put(&app, &token, bucket("b", 1, 1, 0)).await.expect("put");
    let both = JobServiceClient::new(app.channel().await)
        .create_job(authed(
            &token,
            pb::CreateJobRequest {
                concurrency_key: "k".into(),
                ..limited("x", "b", 0)
            },
        ))
        .await
        .expect_err("both");
    assert_eq!(field_of(&both), "rate_limit");
    app.stop().await;
}

#[tokio::test]
async fn a_bucket_jobs_name_is_not_deleted_under_them() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    put(&app, &token, bucket("kept", 1, 3600, 1))
        .await
        .expect("put");
    let job = app.create_job(&token, limited("x", "kept", 0)).await;
    let delete = || async {
        JobServiceClient::new(app.channel().await)
            .delete_rate_limit(authed(
                &token,
                pb::DeleteRateLimitRequest {
                    name: "kept".into(),
                },
            ))
            .await
    };
    assert_eq!(
        delete().await.expect_err("named").code(),
        Code::FailedPrecondition
    );
    JobServiceClient::new(app.channel().await)
        .cancel_job(authed(&token, pb::CancelJobRequest { id: job.id }))
        .await
        .expect("cancel");
    delete().await.expect("deleted once no open job names it");
    assert_eq!(delete().await.expect_err("gone").code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn declaring_a_bucket_needs_its_own_permission() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    put(&app, &admin, bucket("guarded", 1, 60, 1))
        .await
        .expect("put");
    // A caller who may create and read jobs, and even run them, but not
    // throttle everyone's jobs.
    let (_, token) = account(
        &app,
        "job-writer",
        &["jobs:read", "jobs:write", "jobs:execute"],
    )
    .await;
    let denied = put(&app, &token, bucket("guarded", 1_000_000, 1, 1_000_000)).await;
    assert_eq!(denied.expect_err("denied").code(), Code::PermissionDenied);
    let denied = JobServiceClient::new(app.channel().await)
        .delete_rate_limit(authed(
            &token,
            pb::DeleteRateLimitRequest {
                name: "guarded".into(),
            },
        ))
        .await;
    assert_eq!(denied.expect_err("denied").code(), Code::PermissionDenied);
    // Reading them and using them is theirs.
    let listed = JobServiceClient::new(app.channel().await)
        .list_rate_limits(authed(&token, pb::ListRateLimitsRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .rate_limits;
    assert_eq!(listed[0].units, 1, "unchanged");
    app.create_job(&token, limited("x", "guarded", 0)).await;
    // A role holding rate_limits:write may.
    let (_, manager) = account(&app, "limiter", &["rate_limits:write"]).await;
    put(&app, &manager, bucket("guarded", 2, 60, 2))
        .await
        .expect("put");
    app.stop().await;
}

#[tokio::test]
async fn a_job_type_may_declare_its_bucket() {
    use common::{ModuleServiceClient, worker::json_struct};
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    put(&app, &token, bucket("crm-api", 1, 3600, 1))
        .await
        .expect("put");
    let register = |name: &str, manifest: serde_json::Value| {
        let app = &app;
        let token = token.clone();
        let name = name.to_owned();
        async move {
            ModuleServiceClient::new(app.channel().await)
                .register_module(authed(
                    &token,
                    pb::RegisterModuleRequest {
                        name: name.clone(),
                        version: "1.0.0".into(),
                        display_name: name,
                        description: String::new(),
                        manifest: Some(json_struct(manifest)),
                    },
                ))
                .await
        }
    };
    register(
        "crm",
        json!({ "jobs": [{ "name": "crm.sync", "rate_limit": "crm-api" }] }),
    )
    .await
    .expect("register");
    ModuleServiceClient::new(app.channel().await)
        .enable_module(authed(&token, pb::EnableModuleRequest { id: "crm".into() }))
        .await
        .expect("enable");
    let job = app.create_job(&token, new_job("crm.sync", json!({}))).await;
    assert_eq!(job.rate_limit, "crm-api");
    let both = register(
        "both",
        json!({ "jobs": [{
            "name": "both.x", "rate_limit": "crm-api",
            "concurrency": { "key": "k", "max": 1 }
        }] }),
    )
    .await
    .expect_err("both");
    assert_eq!(field_of(&both), "manifest.jobs[0].rate_limit");
    // The bucket's one token goes to the first job; the second waits.
    app.create_job(&token, new_job("crm.sync", json!({}))).await;
    let mut worker = app.worker(5).await;
    assert_eq!(assignments_until_quiet(&mut worker).await, 1);
    app.stop().await;
}
