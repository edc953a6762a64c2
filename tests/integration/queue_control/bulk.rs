//! The dead-letter filters of ListJobs and the batch actions: by ids and by
//! filter, bounded, all or nothing per page, raced, refused to callers
//! without the permission.

use super::{
    TestApp, account, authed, batch_retry, by_name, common, failed_jobs, job_id, job_queue, jobs,
    module_job, new_job, queue_named, register_and_enable, scalar,
};

use automation_control_plane::proto::automation_v1 as pb;
use serde_json::json;
use tonic::Code;

async fn list(app: &TestApp, token: &str, request: pb::ListJobsRequest) -> pb::ListJobsResponse {
    jobs(app.channel().await)
        .list_jobs(authed(token, request))
        .await
        .expect("list jobs")
        .into_inner()
}

fn ids_of(jobs: &[pb::Job]) -> Vec<String> {
    let mut ids: Vec<String> = jobs.iter().map(|job| job.id.clone()).collect();
    ids.sort();
    ids
}

fn time_in(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + seconds,
        nanos: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_filtered_by_each_field_and_paged() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let ids = failed_jobs(
        &app,
        &token,
        &[
            ("dl.a", "disk full: /var"),
            ("dl.a", "disk full: /tmp"),
            ("dl.a", "timeout after 30s"),
            ("dl.b", "disk full: /srv"),
        ],
    )
    .await;
    // A pending job whose name matches, and no error.
    app.create_job(&token, new_job("dl.a", json!({}))).await;
    let failed = |prefix: &str, name: &str| pb::ListJobsRequest {
        status: pb::JobStatus::Failed.into(),
        error_message_prefix: prefix.into(),
        name: name.into(),
        ..Default::default()
    };

    let disk = list(&app, &token, failed("disk full", "")).await;
    assert_eq!(ids_of(&disk.jobs), {
        let mut expected = vec![ids[0].clone(), ids[1].clone(), ids[3].clone()];
        expected.sort();
        expected
    });
    let disk_a = list(&app, &token, failed("disk full", "dl.a")).await;
    assert_eq!(disk_a.jobs.len(), 2);
    assert!(
        list(&app, &token, failed("disk fullx", ""))
            .await
            .jobs
            .is_empty()
    );
    assert!(list(&app, &token, failed("Disk", "")).await.jobs.is_empty());
    assert_eq!(list(&app, &token, failed("", "dl.a")).await.jobs.len(), 3);

    // Failure and finish time ranges.
    let window = |start: i64, end: i64| pb::ListJobsRequest {
        fail_time_start: time_in(start),
        fail_time_end: time_in(end),
        ..Default::default()
    };
    assert_eq!(list(&app, &token, window(-600, 600)).await.jobs.len(), 4);
    assert!(list(&app, &token, window(60, 600)).await.jobs.is_empty());
    let finished = pb::ListJobsRequest {
        finish_time_start: time_in(-600),
        name: "dl.a".into(),
        ..Default::default()
    };
    // The pending dl.a job has not finished.
    assert_eq!(list(&app, &token, finished).await.jobs.len(), 3);
    let finished_later = pb::ListJobsRequest {
        finish_time_end: time_in(-600),
        ..Default::default()
    };
    assert!(list(&app, &token, finished_later).await.jobs.is_empty());

    // Paged: one at a time, each once.
    let mut seen = Vec::new();
    let mut token_of_page = String::new();
    loop {
        let page = list(
            &app,
            &token,
            pb::ListJobsRequest {
                page_size: 1,
                page_token: token_of_page.clone(),
                ..failed("disk full", "")
            },
        )
        .await;
        seen.extend(page.jobs.iter().map(|job| job.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token_of_page = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ids_of(&disk.jobs));
}

async fn batch_cancel(
    app: &TestApp,
    token: &str,
    request: pb::BatchCancelJobsRequest,
) -> Result<pb::BatchCancelJobsResponse, tonic::Status> {
    jobs(app.channel().await)
        .batch_cancel_jobs(authed(token, request))
        .await
        .map(tonic::Response::into_inner)
}

async fn statuses(app: &TestApp, token: &str, ids: &[String]) -> Vec<i32> {
    let mut found = Vec::new();
    for id in ids {
        found.push(app.job(token, id).await.status);
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_actions_take_ids_or_a_filter_a_page_at_a_time_all_or_nothing() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut pending = Vec::new();
    for n in 0..5 {
        pending.push(
            app.create_job(&token, new_job("bulk.x", json!({"n": n})))
                .await
                .id,
        );
    }

    // By ids: a page with a job in the wrong state changes nothing.
    let cancelled = batch_cancel(
        &app,
        &token,
        pb::BatchCancelJobsRequest {
            ids: vec![pending[0].clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(cancelled.jobs.len(), 1);
    // A job named that already finished is skipped and reported, not a
    // reason to refuse the call (the mixed case: queue_control::walks).
    let skipped = batch_cancel(
        &app,
        &token,
        pb::BatchCancelJobsRequest {
            ids: vec![pending[0].clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(skipped.jobs.is_empty());
    assert_eq!(skipped.skipped.len(), 1);
    assert_eq!(skipped.skipped[0].id, pending[0]);
    assert_eq!(
        skipped.skipped[0].status,
        i32::from(pb::JobStatus::Cancelled)
    );
    let pending_status = i32::from(pb::JobStatus::Pending);
    assert_eq!(
        statuses(&app, &token, &pending[1..3]).await,
        [pending_status, pending_status]
    );
    let unknown = batch_cancel(
        &app,
        &token,
        pb::BatchCancelJobsRequest {
            ids: vec![pending[1].clone(), uuid::Uuid::now_v7().to_string()],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        statuses(&app, &token, &pending[1..2]).await,
        [pending_status]
    );

    // By filter, bounded per call, continued with the page token.
    let mut taken = 0;
    let mut page_token = String::new();
    let mut calls = 0;
    loop {
        let page = batch_cancel(
            &app,
            &token,
            pb::BatchCancelJobsRequest {
                filter: by_name("bulk.x"),
                page_size: 2,
                page_token: page_token.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        calls += 1;
        assert!(page.jobs.len() <= 2);
        taken += page.jobs.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!((taken, calls), (4, 2));
    assert_eq!(
        common::audit_count(&app, "jobs.batch_cancel", "success").await,
        3
    );

    // Retry every CANCELLED bulk.x job in one call.
    let retried = batch_retry(
        &app,
        &token,
        pb::BatchRetryJobsRequest {
            filter: Some(pb::JobFilter {
                status: pb::JobStatus::Cancelled.into(),
                name: "bulk.x".into(),
                ..Default::default()
            }),
            page_size: 1000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(retried.jobs.len(), 5);
    assert!(retried.next_page_token.is_empty());
    assert!(retried.jobs.iter().all(|job| job.status == pending_status));
    // A retry of PENDING jobs by ids skips them all, and says so.
    let skipped = batch_retry(
        &app,
        &token,
        pb::BatchRetryJobsRequest {
            ids: pending.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(skipped.jobs.is_empty());
    assert_eq!(skipped.skipped.len(), pending.len());
    // A filter on a state the action does not apply to is a bad request.
    let bad_state = batch_retry(
        &app,
        &token,
        pb::BatchRetryJobsRequest {
            filter: Some(pb::JobFilter {
                status: pb::JobStatus::Pending.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(bad_state.code(), Code::InvalidArgument);
    // The bound: at most 1,000 ids.
    let too_many = batch_cancel(
        &app,
        &token,
        pb::BatchCancelJobsRequest {
            ids: (0..1001)
                .map(|_| uuid::Uuid::now_v7().to_string())
                .collect(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    let neither = batch_cancel(&app, &token, pb::BatchCancelJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(neither.code(), Code::InvalidArgument);

    // A running job cancelled in a batch: its worker is told, on the other
    // replica it is connected to.
    let other = app.replica(common::TestOptions::default()).await;
    let mut worker = other.worker(1).await;
    let assignment = worker.assignment().await;
    let running = job_id(&assignment);
    let page = batch_cancel(
        &app,
        &token,
        pb::BatchCancelJobsRequest {
            ids: vec![running.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.jobs[0].status, i32::from(pb::JobStatus::Cancelled));
    let cancellation = worker.cancellation().await;
    assert_eq!(cancellation.lease.unwrap().job_id, running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_batch_cancels_cancel_each_job_exactly_once() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let requests: Vec<_> = (0..60)
        .map(|n| new_job("race.x", json!({"n": n})))
        .collect();
    jobs(app.channel().await)
        .batch_create_jobs(authed(&token, pb::BatchCreateJobsRequest { requests }))
        .await
        .unwrap();
    let mut calls = Vec::new();
    for _ in 0..4 {
        let channel = app.channel().await;
        let token = token.clone();
        calls.push(tokio::spawn(async move {
            jobs(channel)
                .batch_cancel_jobs(authed(
                    &token,
                    pb::BatchCancelJobsRequest {
                        filter: by_name("race.x"),
                        page_size: 1000,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .jobs
        }));
    }
    let mut all = Vec::new();
    for call in calls {
        all.extend(call.await.unwrap().into_iter().map(|job| job.id));
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!((total, all.len()), (60, 60));
    assert_eq!(
        scalar(
            &app,
            "SELECT COALESCE(sum((details->>'count')::bigint), 0)::bigint AS value \
             FROM audit_logs WHERE action = 'jobs.batch_cancel'"
        )
        .await,
        60
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_cannot_pause_or_act_in_bulk_and_module_jobs_need_execute() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, reader) = account(&app, "reader", &["jobs:read"]).await;
    let (_, writer) = account(&app, "writer", &["jobs:read", "jobs:write"]).await;
    let job = app
        .create_job(&admin, new_job("guarded.x", json!({})))
        .await;
    let mut client = jobs(app.channel().await);
    let denied = [
        client
            .pause_queue(authed(
                &reader,
                pb::PauseQueueRequest {
                    queue: job_queue("guarded.x"),
                },
            ))
            .await
            .map(drop),
        client
            .resume_queue(authed(
                &reader,
                pb::ResumeQueueRequest {
                    queue: job_queue("guarded.x"),
                },
            ))
            .await
            .map(drop),
        client
            .batch_cancel_jobs(authed(
                &reader,
                pb::BatchCancelJobsRequest {
                    ids: vec![job.id.clone()],
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        client
            .batch_retry_jobs(authed(
                &reader,
                pb::BatchRetryJobsRequest {
                    filter: by_name("guarded.x"),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
    ];
    for result in denied {
        assert_eq!(result.unwrap_err().code(), Code::PermissionDenied);
    }
    // Reading the queues is theirs.
    assert!(queue_named(&app, &reader, "guarded.x").await.is_some());
    assert_eq!(
        app.job(&admin, &job.id).await.status,
        i32::from(pb::JobStatus::Pending)
    );
    assert_eq!(
        scalar(&app, "SELECT count(*) AS value FROM queue_pauses").await,
        0
    );

    // jobs:write alone cannot cancel a module's jobs in bulk: the page is
    // refused whole.
    register_and_enable(&app, &admin, "vault", &["vault.seal"]).await;
    let sealed = app
        .create_job(&admin, module_job("vault.seal", "vault"))
        .await;
    let refused = batch_cancel(
        &app,
        &writer,
        pb::BatchCancelJobsRequest {
            filter: Some(pb::JobFilter::default()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    for id in [&job.id, &sealed.id] {
        assert_eq!(
            app.job(&admin, id).await.status,
            i32::from(pb::JobStatus::Pending)
        );
    }
}
