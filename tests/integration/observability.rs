//! The HTTP port: liveness, readiness (database cut, drain) and the
//! Prometheus metrics the gRPC calls leave behind; the request id.
//!
//! The metrics recorder is global to the process and shared by every test
//! of this binary: assertions are on deltas or on series only this test
//! makes, never on totals.

use crate::common;

use std::{net::SocketAddr, time::Duration};

use automation_control_plane::{http::HttpListener, proto::automation_v1 as pb, seed};
use bytes::Bytes;
use common::{ADMIN_PASSWORD, AuthServiceClient, TestApp, TestOptions, authed, new_job};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::json;

/// A server with an HTTP port on a free loopback port.
async fn spawn_observed(mut options: TestOptions) -> (TestApp, SocketAddr) {
    let listener = HttpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr();
    options.server.http_listener = Some(listener);
    (TestApp::spawn_with(options).await, addr)
}

/// GET `path`: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = client
        .get(format!("http://{addr}{path}").parse().expect("uri"))
        .await
        .expect("GET");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
}

/// Polls `path` until it answers `status` (or panics after 10 s).
async fn await_status(addr: SocketAddr, path: &str, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = get(addr, path).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} still answers {got} ({body}), expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of the samples of `name` whose labels include all of `labels`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn metrics(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn live_ready_and_metrics_answer() {
    let (app, http) = spawn_observed(TestOptions::default()).await;
    assert_eq!(get(http, "/health/live").await.0, 200);
    let body = await_status(http, "/health/ready", 200).await;
    assert_eq!(body, r#"{"status":"ready"}"#);
    let text = metrics(http).await;
    assert!(text.contains("build_info{version=\""), "{text}");
    assert!(text.contains("db_pool_connections_max"), "{text}");
    assert_eq!(get(http, "/nothing").await.0, 404);
    app.stop().await;
    // The port closes with the server.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{http}/health/live").parse().expect("uri");
    assert!(
        client.get(uri).await.is_err(),
        "the HTTP port outlived the server"
    );
}

#[tokio::test]
async fn ready_is_503_while_the_database_is_cut() {
    let (app, http) = spawn_observed(TestOptions {
        through_proxy: true,
        acquire_timeout: Duration::from_millis(500),
        ..TestOptions::default()
    })
    .await;
    await_status(http, "/health/ready", 200).await;
    let proxy = app.proxy.as_ref().expect("proxy");
    proxy.cut();
    let body = await_status(http, "/health/ready", 503).await;
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        body,
        json!({ "status": "not ready", "reason": "database unreachable" })
    );
    // Alive all the same: restarting the process would not help.
    assert_eq!(get(http, "/health/live").await.0, 200);
    proxy.restore();
    await_status(http, "/health/ready", 200).await;
    app.stop().await;
}

#[tokio::test]
async fn ready_is_503_as_soon_as_the_server_drains() {
    let mut options = TestOptions::default();
    options.server.shutdown_grace = Duration::from_secs(4);
    let (app, http) = spawn_observed(options).await;
    let token = app.admin_token().await;
    // A worker holding a job keeps the drain going (it is given time to
    // finish), while the HTTP port answers.
    let mut worker = app.worker(1).await;
    app.create_job(&token, new_job("observability.drain", json!({})))
        .await;
    let _assignment = worker.assignment().await;
    await_status(http, "/health/ready", 200).await;
    let stopping = tokio::spawn(app.stop());
    let body = await_status(http, "/health/ready", 503).await;
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body, json!({ "status": "not ready", "reason": "draining" }));
    assert_eq!(get(http, "/health/live").await.0, 200);
    drop(worker);
    stopping.await.expect("stopped");
}

#[tokio::test]
async fn rpcs_leave_grpc_pool_database_and_login_metrics() {
    let (app, http) = spawn_observed(TestOptions::default()).await;
    let before = metrics(http).await;
    let login_failed = [
        ("grpc_service", "automation.v1.AuthService"),
        ("grpc_method", "Login"),
        ("grpc_code", "Unauthenticated"),
    ];
    let login_ok = [
        ("grpc_service", "automation.v1.AuthService"),
        ("grpc_method", "Login"),
        ("grpc_code", "OK"),
    ];
    let token = app.admin_token().await;
    let refused = app.login(seed::ADMIN_EMAIL, "not-the-password").await;
    assert_eq!(
        refused.expect_err("refused").code(),
        tonic::Code::Unauthenticated
    );
    let missing = common::UserServiceClient::new(app.channel().await)
        .get_user(authed(
            &token,
            pb::GetUserRequest {
                id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await
        .expect_err("no such user");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let after = metrics(http).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert!(
        delta("grpc_server_handled_total", &login_failed) >= 1.0,
        "{after}"
    );
    assert!(
        delta("grpc_server_handled_total", &login_ok) >= 1.0,
        "{after}"
    );
    assert!(
        delta(
            "grpc_server_handled_total",
            &[("grpc_method", "GetUser"), ("grpc_code", "NotFound")]
        ) >= 1.0
    );
    assert!(
        delta(
            "grpc_server_started_total",
            &[
                ("grpc_service", "automation.v1.AuthService"),
                ("grpc_method", "Login")
            ]
        ) >= 2.0
    );
    assert!(
        delta(
            "grpc_server_handling_seconds_count",
            &[
                ("grpc_service", "automation.v1.AuthService"),
                ("grpc_method", "Login")
            ]
        ) >= 2.0
    );
    assert!(
        after.contains("grpc_server_handling_seconds_bucket{"),
        "{after}"
    );
    assert!(delta("auth_logins_total", &[("outcome", "success")]) >= 1.0);
    assert!(delta("auth_logins_total", &[("outcome", "failure")]) >= 1.0);
    assert!(
        delta(
            "db_operation_seconds_count",
            &[("operation", "sessions.login")]
        ) >= 1.0
    );
    assert!(delta("db_pool_acquire_seconds_count", &[]) >= 1.0);
    for gauge in [
        "db_pool_connections_in_use",
        "db_pool_connections_idle",
        "db_pool_connections_max",
        "queue_workers_connected",
        "queue_worker_slots_free",
        "queue_worker_slots_held",
    ] {
        assert!(
            after.contains(&format!("\n{gauge} ")),
            "no {gauge} in {after}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn sampled_gauges_show_unfinished_jobs_and_table_statistics() {
    let mut options = TestOptions::default();
    options.server.metrics_sample_interval = Duration::from_millis(200);
    let (app, http) = spawn_observed(options).await;
    let token = app.admin_token().await;
    let name = format!("observability.sampled.{}", uuid::Uuid::new_v4().simple());
    for _ in 0..3 {
        app.create_job(&token, new_job(&name, json!({}))).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(http).await;
        let pending = sample(
            &text,
            "queue_jobs",
            &[("name", name.as_str()), ("status", "PENDING")],
        );
        if pending == 3.0 {
            assert!(text.contains(&format!("queue_oldest_pending_seconds{{name=\"{name}\"}}")));
            assert!(
                text.contains("pg_table_size_bytes{table=\"jobs\"}"),
                "{text}"
            );
            assert!(
                text.contains("pg_table_dead_rows{table=\"jobs\"}"),
                "{text}"
            );
            assert!(text.contains("\npg_lock_waits "), "{text}");
            assert!(text.contains("\nauth_active_sessions "), "{text}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue_jobs never showed 3 pending {name}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn the_request_id_is_returned_and_made_when_absent() {
    let (app, _http) = spawn_observed(TestOptions::default()).await;
    let mut client = AuthServiceClient::new(app.channel().await);
    let mut request = tonic::Request::new(pb::LoginRequest {
        login: seed::ADMIN_EMAIL.into(),
        password: ADMIN_PASSWORD.into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "obs-test-42".parse().expect("value"));
    let response = client.login(request).await.expect("login");
    assert_eq!(
        response.metadata().get("x-request-id").expect("echoed"),
        "obs-test-42"
    );
    // An error (a trailers-only answer) carries it too; a missing one is
    // made.
    let refused = client
        .login(pb::LoginRequest {
            login: seed::ADMIN_EMAIL.into(),
            password: "wrong-password".into(),
        })
        .await
        .expect_err("refused");
    let made = refused
        .metadata()
        .get("x-request-id")
        .expect("made")
        .to_str()
        .expect("ASCII");
    assert!(uuid::Uuid::try_parse(made).is_ok(), "{made}");
    app.stop().await;
}

#[tokio::test]
async fn a_job_round_trip_leaves_queue_metrics_and_the_work_stream_is_handled_when_it_ends() {
    let (app, http) = spawn_observed(TestOptions::default()).await;
    let token = app.admin_token().await;
    let before = metrics(http).await;
    let mut worker = app.worker(1).await;
    app.create_job(&token, new_job("observability.round_trip", json!({})))
        .await;
    let assignment = worker.assignment().await;
    worker.complete(&assignment, json!({ "ok": true })).await;
    assert!(worker.ack().await.accepted);
    let work = [
        ("grpc_service", "automation.v1.JobService"),
        ("grpc_method", "Work"),
    ];
    let mut stream = worker.close();
    drop(stream.message().await);
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = metrics(http).await;
        let delta = |name: &str, labels: &[(&str, &str)]| {
            sample(&after, name, labels) - sample(&before, name, labels)
        };
        if delta("grpc_server_handled_total", &work) >= 1.0 {
            assert!(delta("grpc_server_started_total", &work) >= 1.0);
            assert!(delta("queue_reports_total", &[("kind", "completed")]) >= 1.0);
            assert!(delta("queue_reports_per_batch_count", &[]) >= 1.0);
            assert!(delta("queue_job_pending_to_leased_seconds_count", &[]) >= 1.0);
            assert!(delta("queue_job_leased_to_settled_seconds_count", &[]) >= 1.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Work stream was never counted as handled: {after}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_traceparent_is_stored_with_the_job_and_handed_to_the_worker() {
    let (app, _http) = spawn_observed(TestOptions::default()).await;
    let token = app.admin_token().await;
    let mut worker = app.worker(1).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut request = authed(&token, new_job("observability.traced", json!({})));
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("value"));
    common::JobServiceClient::new(app.channel().await)
        .create_job(request)
        .await
        .expect("create");
    let assignment = worker.assignment().await;
    assert_eq!(assignment.traceparent.as_deref(), Some(traceparent));
    worker.complete(&assignment, json!({})).await;
    assert!(worker.ack().await.accepted);

    // A malformed one is not kept; a job created without one has none.
    let mut request = authed(&token, new_job("observability.traced", json!({})));
    request.metadata_mut().insert(
        "traceparent",
        "00-nothex-00f067aa0ba902b7-01".parse().expect("value"),
    );
    common::JobServiceClient::new(app.channel().await)
        .create_job(request)
        .await
        .expect("create");
    assert_eq!(worker.assignment().await.traceparent, None);
    app.stop().await;
}

/// Retries and cancellations are counted once their change committed.
#[tokio::test]
async fn retries_and_cancellations_are_counted() {
    let (app, http) = spawn_observed(TestOptions::default()).await;
    let token = app.admin_token().await;
    let before = metrics(http).await;
    let mut worker = app.worker(1).await;
    app.create_job(&token, new_job("observability.retried", json!({})))
        .await;
    let assignment = worker.assignment().await;
    worker.fail(&assignment, "transient", false).await;
    assert!(worker.ack().await.accepted);
    let idle = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                schedule_time: Some(prost_types::Timestamp {
                    seconds: chrono::Utc::now().timestamp() + 3600,
                    nanos: 0,
                }),
                ..new_job("observability.cancelled", json!({}))
            },
        )
        .await;
    common::JobServiceClient::new(app.channel().await)
        .cancel_job(authed(&token, pb::CancelJobRequest { id: idle.id }))
        .await
        .expect("cancel");
    let after = metrics(http).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert!(delta("queue_job_retries_total", &[]) >= 1.0, "{after}");
    assert!(
        delta("queue_jobs_cancelled_total", &[("cause", "api")]) >= 1.0,
        "{after}"
    );
    drop(worker);
    app.stop().await;
}
