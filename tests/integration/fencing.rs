//! Reports on leases that changed hands or ran long: acks are exact per
//! attempt, a release never spends the failure budget, and the retry delay
//! stays finite however many attempts a job has had.

use crate::common;

use std::time::Duration;

use automation_control_plane::proto::automation_v1::{self as pb, work_request::Kind as Out};
use common::{TestApp, TestOptions, new_job};
use serde_json::json;

async fn sql(app: &TestApp, statement: &str) {
    use diesel_async::SimpleAsyncConnection as _;
    let mut conn = app.pool.get().await.unwrap();
    conn.batch_execute(statement).await.unwrap();
}

/// The backoff's `2^(attempt-1)` would overflow past attempt 1025, which
/// RetryJob makes reachable (each retry grows maxAttempts by the budget):
/// the exponent is capped, so the failure report is still stored.
#[tokio::test]
async fn the_retry_delay_stays_finite_after_a_thousand_attempts() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let job = app
        .create_job(&admin, new_job("long.lived", json!({})))
        .await;
    sql(
        &app,
        &format!(
            r#"UPDATE jobs SET attempts = 1100, "maxAttempts" = 1200 WHERE id = '{}'"#,
            job.id
        ),
    )
    .await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    worker.fail(&assignment, "transient", false).await;
    let ack = worker.ack().await;
    assert!(ack.accepted, "{ack:?}");
    app.stop().await;
}

/// A stale attempt's report settled in the same batch as the current
/// attempt's is refused: acks match (job, attempt, stream), not the job.
#[tokio::test]
async fn a_stale_attempt_is_refused_even_when_settled_with_the_current_one() {
    let options = TestOptions {
        through_proxy: true,
        ..TestOptions::default()
    };
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    let mut a = app.worker(1).await;
    let job = app
        .create_job(&admin, new_job("contested", json!({})))
        .await;
    let first = a.assignment().await;
    assert_eq!(first.attempt, 1);
    // The lease is taken behind A's back (as a reaper whose notification A
    // has not heard yet would).
    sql(
        &app,
        &format!(
            r#"UPDATE jobs SET status = 'PENDING', "leasedBy" = NULL WHERE id = '{}'"#,
            job.id
        ),
    )
    .await;
    let mut b = app.worker(1).await;
    let second = b.assignment().await;
    assert_eq!(second.attempt, 2);
    let mut c = app.worker(2).await;
    let _x1 = app.create_job(&admin, new_job("filler", json!({}))).await;
    let _x2 = app.create_job(&admin, new_job("filler", json!({}))).await;
    let x1 = c.assignment().await;
    let x2 = c.assignment().await;
    // Keep both report writers busy while the database is away…
    app.proxy.as_ref().unwrap().cut();
    c.complete(&x1, json!({})).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.complete(&x2, json!({})).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // …so that both reports of the job land in one batch.
    a.complete(&first, json!({"by": "a"})).await;
    b.complete(&second, json!({"by": "b"})).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    app.proxy.as_ref().unwrap().restore();
    let ack_a = a.ack().await;
    let ack_b = b.ack().await;
    eprintln!("A {ack_a:?}\nB {ack_b:?}");
    assert!(ack_b.accepted);
    assert!(
        !ack_a.accepted,
        "both attempts' completions were acked accepted"
    );
    app.stop().await;
}

/// A release (or a drain's hand-back) is not a failure: one real failure
/// after one release leaves a 2-attempt job with a retry.
#[tokio::test]
async fn a_release_does_not_spend_the_failure_budget() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                max_attempts: 2,
                ..new_job("released.once", json!({}))
            },
        )
        .await;
    let mut worker = app.worker(1).await;
    let first = worker.assignment().await;
    worker
        .send(Out::Release(pb::JobRelease {
            lease: Some(common::worker::lease_of(&first)),
            reason: "not now".into(),
        }))
        .await;
    assert!(worker.ack().await.accepted);
    let second = worker.assignment().await;
    worker.fail(&second, "transient", false).await;
    assert!(worker.ack().await.accepted);
    let seen = app.job(&token, &job.id).await;
    assert_eq!(
        seen.status(),
        pb::JobStatus::Pending,
        "one failure of a 2-attempt job (after one release) failed it for good"
    );
    app.stop().await;
}

/// The report writer settles a batch again when its connection died during
/// COMMIT, not knowing whether the commit landed: a completion it already
/// settled is acknowledged again, not refused (the worker would believe
/// its result lost), while the same report quoting another stream, or
/// another attempt, is still refused.
#[tokio::test]
async fn a_completion_settled_again_after_a_lost_commit_is_acknowledged() {
    use automation_control_plane::{
        domain::jobs::{
            JobSettings,
            leases::{Leases, Report, ReportKind},
        },
        store::jobs::LeaseRef,
    };

    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let job = app
        .create_job(&admin, new_job("settled.twice", json!({})))
        .await;
    let stream = uuid::Uuid::now_v7();
    // Leased to a stream of nobody's, behind the server's back, so that no
    // live stream races the settlements below.
    sql(
        &app,
        &format!(
            r#"UPDATE jobs SET status = 'RUNNING', attempts = 1, "leasedBy" = '{stream}',
                   "leaseExpiresAt" = LOCALTIMESTAMP + interval '1 hour'
               WHERE id = '{}'"#,
            job.id
        ),
    )
    .await;
    let leases = Leases::new(app.pool.clone(), JobSettings::default());
    let lease = LeaseRef {
        job: job.id.parse().unwrap(),
        attempt: 1,
        stream,
    };
    let report = |lease: LeaseRef, n: i64| Report {
        lease,
        kind: ReportKind::Completed(json!({ "n": n })),
    };
    let first = leases.settle(&[report(lease, 1)]).await.unwrap();
    assert!(first[0].accepted, "{first:?}");
    let again = leases.settle(&[report(lease, 2)]).await.unwrap();
    assert!(again[0].accepted, "settled again: {again:?}");
    let strangers = leases
        .settle(&[
            report(
                LeaseRef {
                    stream: uuid::Uuid::now_v7(),
                    ..lease
                },
                3,
            ),
            report(
                LeaseRef {
                    attempt: 2,
                    ..lease
                },
                4,
            ),
        ])
        .await
        .unwrap();
    assert!(
        strangers.iter().all(|outcome| !outcome.accepted),
        "{strangers:?}"
    );
    let done = app.job(&admin, &job.id).await;
    assert_eq!(done.status(), pb::JobStatus::Completed);
    assert_eq!(done.attempts, 1);
    assert_eq!(
        done.result
            .map(automation_control_plane::wire::json::value_to_json),
        Some(json!({ "n": 1 })),
        "the first settlement's result stays"
    );
}
