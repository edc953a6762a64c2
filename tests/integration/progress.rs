//! Progress reports from workers: shown by GetJob, streamed by WatchJob on
//! another replica, fenced like reports (only the stream holding the
//! attempt's lease writes it), coalesced (a burst stores its last report,
//! in a bounded number of writes; a flood past the stream's budget ends the
//! stream), kept with the job's final report, and refused by field when out
//! of bounds.

use crate::common;

use std::time::{Duration, Instant};

use automation_control_plane::proto::automation_v1::{
    self as pb, work_request::Kind as Out, work_response::Kind as In,
};
use common::{
    JobServiceClient, TestApp, TestOptions, authed, new_job,
    worker::{TestWorker, hello, json_struct, lease_of},
};
use diesel_async::RunQueryDsl as _;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt as _;

/// A progress report on `lease`.
fn progress(
    lease: pb::JobLeaseRef,
    percent: Option<f64>,
    message: &str,
    details: Option<serde_json::Value>,
) -> Out {
    Out::Progress(pb::JobProgressReport {
        lease: Some(lease),
        percent,
        message: message.into(),
        details: details.map(json_struct),
    })
}

/// Reads the job until `done` holds for its progress.
async fn wait_for_progress(
    app: &TestApp,
    token: &str,
    id: &str,
    done: impl Fn(&pb::JobProgress) -> bool,
) -> pb::Job {
    let mut last = None;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let job = app.job(token, id).await;
            if job.progress.as_ref().is_some_and(&done) {
                return job;
            }
            last = Some(job);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("job {id} never showed the progress: {last:?}"))
}

/// The next WatchJob message whose progress satisfies `done`.
async fn watch_until(
    watch: &mut tonic::Streaming<pb::WatchJobResponse>,
    done: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let job = watch
                .message()
                .await
                .expect("watch ok")
                .expect("watch open")
                .job
                .expect("job");
            if done(&job) {
                return job;
            }
        }
    })
    .await
    .expect("the watch shows it in time")
}

fn message_of(job: &pb::Job) -> &str {
    job.progress.as_ref().map_or("", |p| p.message.as_str())
}

#[tokio::test]
async fn progress_is_shown_by_get_job_and_streamed_to_a_watch_on_another_replica() {
    let a = TestApp::spawn().await;
    let b = a.replica(TestOptions::default()).await;
    let token = a.admin_token().await;
    let job = a
        .create_job(&token, new_job("progress.far", json!({})))
        .await;
    assert_eq!(job.progress, None, "no progress before any report");
    // The watcher is on B; the worker on A.
    let mut watch = JobServiceClient::new(b.channel().await)
        .watch_job(authed(&token, pb::WatchJobRequest { id: job.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    let mut worker = TestWorker::connect(a.channel().await, &token, hello(1))
        .await
        .unwrap();
    let assignment = worker.assignment().await;
    let lease = lease_of(&assignment);

    worker
        .send(progress(
            lease.clone(),
            Some(40.0),
            "copying",
            Some(json!({ "files": 3 })),
        ))
        .await;
    let seen = watch_until(&mut watch, |job| message_of(job) == "copying").await;
    assert_eq!(seen.status(), pb::JobStatus::Running);
    let shown = seen.progress.unwrap();
    assert_eq!(shown.percent, Some(40.0));
    assert_eq!(
        shown.details,
        Some(json_struct(json!({ "files": 3 }))),
        "details as reported"
    );
    assert!(shown.update_time.is_some());
    let read = a.job(&token, &job.id).await;
    assert_eq!(read.progress.as_ref().unwrap().message, "copying");

    // A report replaces the previous one whole (no percent now, no details).
    worker
        .send(progress(lease.clone(), None, "verifying", None))
        .await;
    let seen = watch_until(&mut watch, |job| message_of(job) == "verifying").await;
    assert_eq!(seen.progress.as_ref().unwrap().percent, None);
    assert_eq!(seen.progress.as_ref().unwrap().details, None);

    // The last report before the completion is stored with it (however
    // recent the previous write) and kept once the job is finished.
    worker
        .send(progress(lease.clone(), Some(100.0), "done", None))
        .await;
    worker.complete(&assignment, json!("ok")).await;
    assert!(worker.ack().await.accepted);
    let last = watch_until(&mut watch, |job| job.status() == pb::JobStatus::Completed).await;
    let kept = last.progress.expect("a finished job keeps its progress");
    assert_eq!((kept.percent, kept.message.as_str()), (Some(100.0), "done"));
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn progress_on_a_lease_the_stream_does_not_hold_changes_nothing() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = app
        .create_job(&token, new_job("progress.fenced", json!({})))
        .await;
    let mut holder = app.worker(1).await;
    let assignment = holder.assignment().await;
    let lease = lease_of(&assignment);

    // Another stream (taking other jobs): refused with a cancellation of
    // that attempt.
    let mut other = TestWorker::connect(
        app.channel().await,
        &token,
        pb::WorkerHello {
            job_names: vec!["progress.elsewhere".into()],
            ..hello(1)
        },
    )
    .await
    .unwrap();
    other
        .send(progress(lease.clone(), Some(50.0), "not mine", None))
        .await;
    let refused = other.cancellation().await;
    assert_eq!(refused.lease.as_ref(), Some(&lease));
    assert_eq!(refused.cause(), pb::CancellationCause::LeaseLost);
    assert!(
        refused.reason.contains("not leased to this stream"),
        "{refused:?}"
    );

    // Another attempt of a job the stream holds: refused the same way.
    let stale = pb::JobLeaseRef {
        attempt: lease.attempt + 1,
        ..lease.clone()
    };
    holder
        .send(progress(stale.clone(), Some(60.0), "wrong attempt", None))
        .await;
    let refused = holder.cancellation().await;
    assert_eq!(refused.lease, Some(stale));
    // The holder's own report is stored; the refused ones never were.
    holder
        .send(progress(lease.clone(), Some(10.0), "mine", None))
        .await;
    wait_for_progress(&app, &token, &job.id, |p| p.message == "mine").await;

    // A finished job: a late report is refused and the kept progress stays.
    holder.complete(&assignment, json!("ok")).await;
    assert!(holder.ack().await.accepted);
    holder
        .send(progress(lease.clone(), Some(99.0), "too late", None))
        .await;
    let refused = holder.cancellation().await;
    assert_eq!(refused.lease, Some(lease.clone()));
    let done = app.job(&token, &job.id).await;
    assert_eq!(done.status(), pb::JobStatus::Completed);
    assert_eq!(message_of(&done), "mine");

    // A stale attempt: cancelled and retried, the job runs again as attempt
    // 2; a report on attempt 1 changes nothing, and attempt 2 starts clean.
    let retried = app
        .create_job(&token, new_job("progress.retried", json!({})))
        .await;
    let first = holder.assignment().await;
    let first_lease = lease_of(&first);
    holder
        .send(progress(first_lease.clone(), Some(30.0), "first run", None))
        .await;
    wait_for_progress(&app, &token, &retried.id, |p| p.message == "first run").await;
    let mut jobs = JobServiceClient::new(app.channel().await);
    jobs.cancel_job(authed(
        &token,
        pb::CancelJobRequest {
            id: retried.id.clone(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(holder.cancellation().await.lease, Some(first_lease.clone()));
    let cancelled = app.job(&token, &retried.id).await;
    assert_eq!(message_of(&cancelled), "first run", "kept when it ends");
    jobs.retry_job(authed(
        &token,
        pb::RetryJobRequest {
            id: retried.id.clone(),
        },
    ))
    .await
    .unwrap();
    let second = holder.assignment().await;
    assert_eq!(second.attempt, first.attempt + 1);
    let running = app.job(&token, &retried.id).await;
    assert_eq!(running.progress, None, "a new attempt starts clean");
    holder
        .send(progress(first_lease.clone(), Some(90.0), "stale", None))
        .await;
    assert_eq!(holder.cancellation().await.lease, Some(first_lease));
    holder
        .send(progress(lease_of(&second), Some(5.0), "second run", None))
        .await;
    let shown = wait_for_progress(&app, &token, &retried.id, |p| p.message == "second run").await;
    assert_eq!(shown.progress.unwrap().percent, Some(5.0));
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

/// Counts every statement that writes a job's progress, behind the API's
/// back: a row per row written.
async fn count_progress_writes(app: &TestApp) {
    let mut conn = app.pool.get().await.unwrap();
    for statement in [
        "CREATE TABLE progress_writes (job uuid NOT NULL)",
        "CREATE FUNCTION note_progress_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO progress_writes VALUES (NEW.id); RETURN NEW; END $$",
        "CREATE TRIGGER note_progress_write AFTER UPDATE OF progress ON jobs
         FOR EACH ROW EXECUTE FUNCTION note_progress_write()",
    ] {
        diesel::sql_query(statement)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

async fn progress_writes(app: &TestApp) -> i64 {
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query("SELECT count(*) AS count FROM progress_writes")
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .count
}

#[tokio::test]
async fn a_burst_of_progress_stores_the_last_report_in_few_writes() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    count_progress_writes(&app).await;
    for _ in 0..2 {
        app.create_job(&token, new_job("progress.burst", json!({})))
            .await;
    }
    let mut worker = app.worker(2).await;
    let leases = [
        lease_of(&worker.assignment().await),
        lease_of(&worker.assignment().await),
    ];
    let started = Instant::now();
    // 1,000 reports in a burst, spread over two jobs.
    for step in 0..1000 {
        let lease = leases[step % 2].clone();
        worker
            .send(progress(
                lease,
                Some(step as f64 / 10.0),
                &format!("step {step}"),
                Some(json!({ "step": step })),
            ))
            .await;
    }
    for (lease, last) in leases.iter().zip(["step 998", "step 999"]) {
        let shown = wait_for_progress(&app, &token, &lease.job_id, |p| p.message == last).await;
        assert_eq!(
            shown.progress.unwrap().details,
            Some(json_struct(
                json!({ "step": last[5..].parse::<i64>().unwrap() })
            ))
        );
    }
    let elapsed = started.elapsed();
    // The stream is still open: nothing of the burst was refused.
    worker.heartbeat().await;
    worker.silent_for(Duration::from_millis(100)).await;
    // At most one write per job per second since the burst began (writes of
    // this replica are a second apart at least), the first one at once.
    let writes = progress_writes(&app).await;
    let bound = 2 * (elapsed.as_secs() as i64 + 2);
    assert!(
        (2..=bound).contains(&writes),
        "{writes} progress writes for 1,000 reports in {elapsed:?} (at most {bound})"
    );
    assert!(writes < 100, "{writes} writes: the burst was not coalesced");
    app.stop().await;
}

/// Opens a stream, sends `report` on the lease it is given, and returns the
/// status the stream ends with.
async fn refused(
    app: &TestApp,
    token: &str,
    report: impl Fn(pb::JobLeaseRef) -> Out,
) -> tonic::Status {
    app.create_job(token, new_job("progress.bad", json!({})))
        .await;
    let mut worker = TestWorker::connect(app.channel().await, token, hello(1))
        .await
        .unwrap();
    let lease = lease_of(&worker.assignment().await);
    worker.send(report(lease)).await;
    loop {
        match worker.next().await {
            Ok(Some(In::Assignment(_) | In::Ack(_) | In::Cancellation(_))) => continue,
            Ok(other) => panic!("the stream went on: {other:?}"),
            Err(status) => return status,
        }
    }
}

/// Makes a report on the lease given.
type MakeReport = dyn Fn(pb::JobLeaseRef) -> Out;

#[tokio::test]
async fn progress_out_of_bounds_ends_the_stream_naming_the_field() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let cases: [(&str, Box<MakeReport>); 3] = [
        (
            "progress.message",
            Box::new(|lease| progress(lease, None, &"m".repeat(1025), None)),
        ),
        (
            "progress.details",
            Box::new(|lease| progress(lease, None, "", Some(json!({ "k": "x".repeat(8 * 1024) })))),
        ),
        (
            "progress.percent",
            Box::new(|lease| progress(lease, Some(100.5), "", None)),
        ),
    ];
    for (field, report) in cases {
        let status = refused(&app, &token, report).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let violations = status
            .get_error_details()
            .bad_request()
            .cloned()
            .unwrap_or_else(|| panic!("{field}: no BadRequest: {status:?}"))
            .field_violations;
        assert_eq!(violations[0].field, field, "{status:?}");
    }
    // At the bounds, all is well.
    app.create_job(&token, new_job("progress.bounds", json!({})))
        .await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    worker
        .send(progress(
            lease_of(&assignment),
            Some(100.0),
            &"m".repeat(1024),
            Some(json!({ "k": "x".repeat(8 * 1024 - 8) })),
        ))
        .await;
    let id = common::worker::job_id(&assignment);
    wait_for_progress(&app, &token, &id, |p| p.message.len() == 1024).await;
    app.stop().await;
}

/// Past the stream's inbound budget a progress flood ends the stream like
/// any flood; what it wrote before is its last report, in few writes.
#[tokio::test]
async fn a_progress_flood_past_the_budget_ends_the_stream() {
    let mut options = TestOptions::default();
    options.jobs.streams.inbound_messages_per_sec = 50;
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    count_progress_writes(&app).await;
    let job = app
        .create_job(&token, new_job("progress.flood", json!({})))
        .await;
    let mut worker = app.worker(1).await;
    let lease = lease_of(&worker.assignment().await);
    let mut sent = 0;
    for step in 0..5_000 {
        if !worker
            .try_send(progress(lease.clone(), None, &format!("step {step}"), None))
            .await
        {
            break;
        }
        sent += 1;
    }
    let status = worker.end().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let limit = status
        .get_error_details()
        .error_info()
        .map(|info| info.metadata["limit"].clone());
    assert_eq!(limit.as_deref(), Some("WORK_INBOUND_MESSAGES_PER_SEC"));
    // Only one job's latest ever waited: a write or so landed before the
    // stream ended (a second apart), whatever the flood.
    let writes = progress_writes(&app).await;
    assert!(writes < 10, "{writes} writes for a flood of {sent}");
    let read = app.job(&token, &job.id).await;
    assert!(
        read.progress.is_none_or(|p| p.message.starts_with("step ")),
        "only the flood's own reports"
    );
    app.stop().await;
}

/// A retried job waits PENDING with the attempt count of its last run:
/// that run's progress is not shown until the new attempt reports.
#[tokio::test]
async fn a_retried_job_shows_no_progress_while_pending() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let job = app
        .create_job(&token, new_job("progress.pending", json!({})))
        .await;
    let mut worker = app.worker(1).await;
    let first = worker.assignment().await;
    worker
        .send(progress(lease_of(&first), Some(70.0), "first run", None))
        .await;
    wait_for_progress(&app, &token, &job.id, |p| p.message == "first run").await;
    worker.fail(&first, "broken", true).await;
    assert!(worker.ack().await.accepted);
    let failed = app.job(&token, &job.id).await;
    assert_eq!(failed.status(), pb::JobStatus::Failed);
    assert_eq!(message_of(&failed), "first run", "a failed job keeps it");
    // The worker's one slot is taken while the retry waits: it stays
    // PENDING.
    app.create_job(&token, new_job("progress.blocker", json!({})))
        .await;
    let blocker = worker.assignment().await;
    JobServiceClient::new(app.channel().await)
        .retry_job(authed(&token, pb::RetryJobRequest { id: job.id.clone() }))
        .await
        .unwrap();
    let pending = app.job(&token, &job.id).await;
    assert_eq!(pending.status(), pb::JobStatus::Pending);
    assert_eq!(pending.progress, None, "a waiting retry shows no progress");

    worker.complete(&blocker, json!("ok")).await;
    assert!(worker.ack().await.accepted);
    let second = worker.assignment().await;
    assert_eq!(second.attempt, first.attempt + 1);
    assert_eq!(app.job(&token, &job.id).await.progress, None);
    worker
        .send(progress(lease_of(&second), Some(5.0), "second run", None))
        .await;
    wait_for_progress(&app, &token, &job.id, |p| p.message == "second run").await;
    app.stop().await;
}
