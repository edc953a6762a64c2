//! Attempt history: every attempt of a job, with its worker, times and how
//! it ended (`ListJobAttempts`), recorded by the statement that ended it
//! whatever ended it (a report, a lost or expired lease, a hand-back, a
//! cancel); the running one shown from the job; the console's job page.

use crate::common;

use std::time::Duration;

use automation_control_plane::{http::HttpListener, proto::automation_v1 as pb, seed};
use common::{
    ADMIN_PASSWORD, JobServiceClient, TestApp, TestOptions, account, authed,
    browser::{self, request},
    new_job,
    worker::{PATIENCE, TestWorker, hello, job_id, lease_of},
};
use diesel_async::RunQueryDsl as _;
use serde_json::json;
use tonic::{Code, Status};

use pb::JobAttemptOutcome as Outcome;
use pb::work_request::Kind as Out;

async fn list(
    app: &TestApp,
    token: &str,
    job: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListJobAttemptsResponse, Status> {
    JobServiceClient::new(app.channel().await)
        .list_job_attempts(authed(
            token,
            pb::ListJobAttemptsRequest {
                job_id: job.into(),
                page_size,
                page_token: page_token.into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn attempts(app: &TestApp, token: &str, job: &str) -> Vec<pb::JobAttempt> {
    list(app, token, job, 0, "")
        .await
        .expect("list attempts")
        .attempts
}

/// A worker saying it is `worker_id`.
async fn worker(app: &TestApp, token: &str, worker_id: &str) -> TestWorker {
    TestWorker::connect(
        app.channel().await,
        token,
        pb::WorkerHello {
            worker_id: worker_id.into(),
            ..hello(1)
        },
    )
    .await
    .expect("worker connects")
}

/// Waits until the job's attempts are `outcomes`, in order.
async fn attempts_become(
    app: &TestApp,
    token: &str,
    job: &str,
    outcomes: &[Outcome],
) -> Vec<pb::JobAttempt> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let seen = attempts(app, token, job).await;
        if seen.iter().map(|a| a.outcome()).collect::<Vec<_>>() == outcomes {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempts of {job} stayed {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_ended_in_order(attempt: &pb::JobAttempt) {
    let leased = attempt.lease_time.expect("leased at");
    let ended = attempt.end_time.expect("ended at");
    assert!(
        (ended.seconds, ended.nanos) >= (leased.seconds, leased.nanos),
        "{attempt:?}"
    );
}

#[tokio::test]
async fn a_job_that_fails_twice_then_completes_shows_three_attempts() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                max_attempts: 3,
                ..new_job("flaky.twice", json!({}))
            },
        )
        .await;
    assert!(attempts(&app, &token, &job.id).await.is_empty());

    let mut alpha = worker(&app, &token, "w-alpha").await;
    let first = alpha.assignment().await;
    // While it runs, the list shows the running attempt, from the job.
    let running = attempts(&app, &token, &job.id).await;
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].outcome(), Outcome::Running);
    assert_eq!(running[0].worker_id, "w-alpha");
    assert!(running[0].end_time.is_none() && running[0].lease_expire_time.is_some());
    assert!(!running[0].stream_id.is_empty());
    alpha.fail(&first, "boom 1", false).await;
    assert!(alpha.ack().await.accepted);
    let second = alpha.assignment().await;
    assert_eq!(second.attempt, 2);
    alpha.fail(&second, "boom 2", false).await;
    assert!(alpha.ack().await.accepted);
    drop(alpha);

    let mut beta = worker(&app, &token, "w-beta").await;
    let third = beta.assignment().await;
    assert_eq!((job_id(&third), third.attempt), (job.id.clone(), 3));
    beta.complete(&third, json!("done")).await;
    assert!(beta.ack().await.accepted);

    let seen = attempts(&app, &token, &job.id).await;
    let summary: Vec<_> = seen
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.worker_id.as_str(),
                a.outcome(),
                a.error_message.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "w-alpha", Outcome::Failed, "boom 1"),
            (2, "w-alpha", Outcome::Failed, "boom 2"),
            (3, "w-beta", Outcome::Completed, ""),
        ]
    );
    for attempt in &seen {
        assert_eq!(attempt.job_id, job.id);
        assert!(!attempt.stream_id.is_empty());
        assert!(attempt.lease_expire_time.is_none());
        assert_ended_in_order(attempt);
    }
    assert_ne!(seen[1].stream_id, seen[2].stream_id, "two workers' streams");
    app.stop().await;
}

#[tokio::test]
async fn a_killed_worker_and_a_silent_one_leave_lost_and_expired_attempts() {
    let mut options = TestOptions::default();
    options.jobs.lease = Duration::from_millis(900);
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let job = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                max_attempts: 5,
                ..new_job("fragile", json!({}))
            },
        )
        .await;
    // Killed: its stream drops with the lease in hand.
    let mut killed = worker(&app, &token, "w-killed").await;
    assert_eq!(killed.assignment().await.attempt, 1);
    drop(killed);
    // Silent: holds the stream, never heartbeats; the reaper takes it.
    let mut silent = worker(&app, &token, "w-silent").await;
    let second = silent.assignment().await;
    assert_eq!(second.attempt, 2);
    // Draining, so that the slot its expired lease frees takes nothing new
    // and the retry goes to the steady worker.
    silent.send(Out::Drain(pb::WorkerDrain {})).await;
    let mut steady = worker(&app, &token, "w-steady").await;
    let third = steady.assignment().await;
    assert_eq!(third.attempt, 3);
    steady.complete(&third, json!(true)).await;
    assert!(steady.ack().await.accepted);

    let seen = attempts_become(
        &app,
        &token,
        &job.id,
        &[
            Outcome::LeaseLost,
            Outcome::LeaseExpired,
            Outcome::Completed,
        ],
    )
    .await;
    let workers: Vec<_> = seen.iter().map(|a| a.worker_id.as_str()).collect();
    assert_eq!(workers, ["w-killed", "w-silent", "w-steady"]);
    assert!(seen[0].error_message.contains("stream ended"), "{seen:?}");
    assert!(seen[1].error_message.contains("lease expired"), "{seen:?}");
    seen.iter().for_each(assert_ended_in_order);
    drop(silent);
    app.stop().await;
}

#[tokio::test]
async fn cancelling_or_releasing_a_running_job_ends_its_attempt() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    // Released (a hand-back), then cancelled while running again.
    let job = app
        .create_job(&token, new_job("stoppable", json!({})))
        .await;
    let mut first = worker(&app, &token, "w-releasing").await;
    let assignment = first.assignment().await;
    first
        .send(pb::work_request::Kind::Release(pb::JobRelease {
            lease: Some(lease_of(&assignment)),
            reason: "shutting down".into(),
        }))
        .await;
    assert!(first.ack().await.accepted);
    drop(first);
    let mut second = worker(&app, &token, "w-cancelled").await;
    let again = second.assignment().await;
    assert_eq!(again.attempt, 2);
    JobServiceClient::new(app.channel().await)
        .cancel_job(authed(&token, pb::CancelJobRequest { id: job.id.clone() }))
        .await
        .expect("cancel");
    // The worker is told, and its slot is free again.
    assert_eq!(
        second.cancellation().await.cause(),
        pb::CancellationCause::Cancelled
    );
    let seen = attempts(&app, &token, &job.id).await;
    let summary: Vec<_> = seen
        .iter()
        .map(|a| (a.attempt, a.worker_id.as_str(), a.outcome()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "w-releasing", Outcome::HandedBack),
            (2, "w-cancelled", Outcome::Cancelled),
        ]
    );
    seen.iter().for_each(assert_ended_in_order);

    // BatchCancelJobs ends a running attempt the same way.
    let other = app
        .create_job(&token, new_job("stoppable", json!({})))
        .await;
    let running = second.assignment().await;
    assert_eq!(job_id(&running), other.id);
    let answer = JobServiceClient::new(app.channel().await)
        .batch_cancel_jobs(authed(
            &token,
            pb::BatchCancelJobsRequest {
                ids: vec![other.id.clone()],
                ..Default::default()
            },
        ))
        .await
        .expect("batch cancel")
        .into_inner();
    assert_eq!(answer.jobs.len(), 1, "{answer:?}");
    let seen = attempts(&app, &token, &other.id).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].outcome(), seen[0].worker_id.as_str()),
        (Outcome::Cancelled, "w-cancelled")
    );
    app.stop().await;
}

#[tokio::test]
async fn attempts_are_paged_oldest_first_and_go_with_their_job() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                max_attempts: 5,
                ..new_job("many.tries", json!({}))
            },
        )
        .await;
    let mut w = worker(&app, &token, "w-pager").await;
    for attempt in 1..=4 {
        let assignment = w.assignment().await;
        assert_eq!(assignment.attempt, attempt);
        w.fail(&assignment, &format!("try {attempt}"), false).await;
        assert!(w.ack().await.accepted);
    }
    // The fifth runs: the last page ends with it.
    let fifth = w.assignment().await;
    let mut numbers = Vec::new();
    let mut outcomes = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = list(&app, &token, &job.id, 2, &page_token)
            .await
            .expect("page");
        assert!(page.attempts.len() <= 2);
        pages += 1;
        numbers.extend(page.attempts.iter().map(|a| a.attempt));
        outcomes.extend(page.attempts.iter().map(|a| a.outcome()));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
    assert_eq!(pages, 3);
    assert_eq!(outcomes[4], Outcome::Running);
    // A token is refused by another job's list, and garbage is refused.
    let first = list(&app, &token, &job.id, 2, "").await.expect("page");
    let other = app.create_job(&token, new_job("other", json!({}))).await;
    for bad in [first.next_page_token.as_str(), "garbage!"] {
        let job_id = if bad == "garbage!" {
            &job.id
        } else {
            &other.id
        };
        let status = list(&app, &token, job_id, 2, bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("page_token"), "{status:?}");
    }
    w.complete(&fifth, json!(5)).await;
    assert!(w.ack().await.accepted);
    assert_eq!(attempts(&app, &token, &job.id).await.len(), 5);

    // Retention (or the platform) deleting the job deletes its attempts.
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query("DELETE FROM jobs WHERE id = $1::uuid")
        .bind::<diesel::sql_types::Text, _>(&job.id)
        .execute(&mut conn)
        .await
        .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let left: Count =
        diesel::sql_query(r#"SELECT count(*) AS n FROM job_attempts WHERE "jobId" = $1::uuid"#)
            .bind::<diesel::sql_types::Text, _>(&job.id)
            .get_result(&mut conn)
            .await
            .unwrap();
    assert_eq!(left.n, 0);
    let status = list(&app, &token, &job.id, 0, "").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn only_callers_who_may_read_jobs_see_attempts() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = app
        .create_job(&token, new_job("secret.work", json!({})))
        .await;
    let mut w = worker(&app, &token, "w-secret").await;
    let assignment = w.assignment().await;
    w.fail(&assignment, "classified failure", true).await;
    assert!(w.ack().await.accepted);

    // A custom role with everything of the queue but reading: refused,
    // before anything about the job is said.
    let (_, writer) = account(&app, "writer", &["jobs:write", "jobs:execute"]).await;
    for id in [job.id.as_str(), "00000000-0000-0000-0000-000000000000"] {
        let status = list(&app, &writer, id, 0, "").await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(!status.message().contains("classified"), "{status:?}");
    }
    // No token at all.
    let status = JobServiceClient::new(app.channel().await)
        .list_job_attempts(pb::ListJobAttemptsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A reader sees what GetJob shows it; a job it cannot see (none by
    // that id) is NOT_FOUND, as GetJob answers.
    let (_, reader) = account(&app, "reader", &["jobs:read"]).await;
    let seen = attempts(&app, &reader, &job.id).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].error_message, "classified failure");
    let missing = "00000000-0000-0000-0000-000000000000";
    let status = list(&app, &reader, missing, 0, "").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let get = JobServiceClient::new(app.channel().await)
        .get_job(authed(&reader, pb::GetJobRequest { id: missing.into() }))
        .await
        .unwrap_err();
    assert_eq!(get.code(), status.code());
    // Field checks name the field.
    let status = list(&app, &reader, "not-an-id", 0, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("job_id"), "{status:?}");
    let status = list(&app, &reader, &job.id, -1, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn the_console_job_page_shows_every_attempt() {
    let listener = HttpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let http = listener.local_addr();
    let mut options = TestOptions::default();
    options.server.http_listener = Some(listener);
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let job = app
        .create_job(
            &token,
            pb::CreateJobRequest {
                max_attempts: 2,
                ..new_job("console.tries", json!({}))
            },
        )
        .await;
    let mut w = worker(&app, &token, "w-console").await;
    let first = w.assignment().await;
    w.fail(&first, "first <try> failed", false).await;
    assert!(w.ack().await.accepted);
    let second = w.assignment().await;
    assert_eq!(second.attempt, 2);

    let cookie = browser::login(http, seed::ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let page = request(
        http,
        "GET",
        &format!("/console/jobs/{}", job.id),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(page.status, 200, "{page:?}");
    for expected in [
        "<h2>Attempts</h2>",
        "w-console",
        "data-outcome=\"FAILED\"",
        "data-outcome=\"RUNNING\"",
        "first &lt;try&gt; failed",
    ] {
        assert!(
            page.body.contains(expected),
            "lacks {expected:?}: {}",
            page.body
        );
    }
    // The full list, paged, for a job with many attempts.
    let all = request(
        http,
        "GET",
        &format!("/console/jobs/{}/attempts", job.id),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(all.status, 200, "{all:?}");
    assert!(all.body.contains("data-outcome=\"FAILED\""), "{}", all.body);

    // A viewer without jobs:read is refused the list (and the job page).
    let (_, _) = account(&app, "worker-only", &["jobs:execute"]).await;
    let cookie = browser::login(http, "worker-only", "user-password-1").await;
    let refused = request(
        http,
        "GET",
        &format!("/console/jobs/{}/attempts", job.id),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(refused.status, 403, "{refused:?}");
    app.stop().await;
}
