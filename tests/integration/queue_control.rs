//! Queue control: pausing and resuming queues (across replicas, against
//! module state), ListQueues' figures, the dead-letter filters of ListJobs,
//! and the batch actions (by ids and by filter, bounded, all or nothing,
//! raced, refused to callers without the permission).

use crate::common;

use std::time::Duration;

use automation_control_plane::{
    proto::automation_v1::{self as pb, work_response::Kind as In},
    store::jobs::QUEUE_FIGURES,
};
use common::{
    JobServiceClient, ModuleServiceClient, TestApp, TestOptions, account, authed, new_job,
    worker::{TestWorker, hello, job_id, json_struct},
};
use serde_json::json;
use tonic::{Code, transport::Channel};

fn jobs(channel: Channel) -> JobServiceClient<Channel> {
    JobServiceClient::new(channel)
}

fn job_queue(name: &str) -> Option<pb::QueueSelector> {
    Some(pb::QueueSelector {
        job_name: name.into(),
        ..Default::default()
    })
}

fn module_queue(name: &str) -> Option<pb::QueueSelector> {
    Some(pb::QueueSelector {
        module_name: name.into(),
        ..Default::default()
    })
}

async fn pause(app: &TestApp, token: &str, queue: Option<pb::QueueSelector>) -> i64 {
    jobs(app.channel().await)
        .pause_queue(authed(token, pb::PauseQueueRequest { queue }))
        .await
        .expect("pause")
        .into_inner()
        .held_jobs
}

async fn resume(app: &TestApp, token: &str, queue: Option<pb::QueueSelector>) -> i64 {
    jobs(app.channel().await)
        .resume_queue(authed(token, pb::ResumeQueueRequest { queue }))
        .await
        .expect("resume")
        .into_inner()
        .released_jobs
}

async fn queues(
    app: &TestApp,
    token: &str,
    request: pb::ListQueuesRequest,
) -> pb::ListQueuesResponse {
    jobs(app.channel().await)
        .list_queues(authed(token, request))
        .await
        .expect("list queues")
        .into_inner()
}

async fn queue_named(app: &TestApp, token: &str, name: &str) -> Option<pb::Queue> {
    queues(app, token, pb::ListQueuesRequest::default())
        .await
        .queues
        .into_iter()
        .find(|queue| queue.name == name)
}

/// One number from SQL run behind the API's back.
async fn scalar(app: &TestApp, sql: &str) -> i64 {
    use diesel_async::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct Value {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        value: i64,
    }
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(sql)
        .get_result::<Value>(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .value
}

/// The next assignment any of `workers` gets within `wait`, with the index
/// of the worker.
async fn any_assignment(
    workers: &mut [&mut TestWorker],
    wait: Duration,
) -> Option<(usize, pb::JobAssignment)> {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        for (index, worker) in workers.iter_mut().enumerate() {
            match worker.next_within(Duration::from_millis(100)).await {
                None => {}
                Some(Ok(Some(In::Assignment(assignment)))) => return Some((index, assignment)),
                Some(Ok(Some(In::Ack(_)))) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_stops_both_replicas_and_holds_across_a_restart_until_resumed() {
    let a = TestApp::spawn().await;
    let b = a.replica(TestOptions::default()).await;
    let token = a.admin_token().await;
    let mut wa = TestWorker::connect(a.channel().await, &token, hello(4))
        .await
        .unwrap();
    let running = a
        .create_job(&token, new_job("mail.send", json!({"n": 0})))
        .await;
    let first = wa.assignment().await;
    assert_eq!(job_id(&first), running.id);
    let mut wb = TestWorker::connect(b.channel().await, &token, hello(4))
        .await
        .unwrap();

    assert_eq!(pause(&a, &token, job_queue("mail.send")).await, 0);
    // Pausing again changes nothing and is not audited again.
    pause(&b, &token, job_queue("mail.send")).await;
    assert_eq!(
        common::audit_count(&a, "jobs.pause_queue", "success").await,
        1
    );
    // New jobs of a paused queue wait too, whichever replica takes them.
    for n in 1..=3 {
        b.create_job(&token, new_job("mail.send", json!({"n": n})))
            .await;
    }
    // Other queues go on.
    let other = a.create_job(&token, new_job("other.work", json!({}))).await;
    let (_, got) = any_assignment(&mut [&mut wa, &mut wb], Duration::from_secs(10))
        .await
        .expect("the other queue's job");
    assert_eq!(job_id(&got), other.id);
    wa.silent_for(Duration::from_millis(700)).await;
    wb.silent_for(Duration::from_millis(300)).await;
    assert_eq!(
        scalar(
            &a,
            "SELECT count(*) AS value FROM jobs WHERE name = 'mail.send' AND held"
        )
        .await,
        3
    );

    // The running job finishes.
    wa.complete(&first, json!("done")).await;
    assert!(wa.ack().await.accepted);
    let figures = queue_named(&b, &token, "mail.send").await.expect("queue");
    assert!(figures.paused);
    assert_eq!((figures.pending_count, figures.running_count), (3, 0));

    // A replica started now reads the stored pause.
    let c = a.replica(TestOptions::default()).await;
    let mut wc = TestWorker::connect(c.channel().await, &token, hello(4))
        .await
        .unwrap();
    wc.silent_for(Duration::from_millis(700)).await;
    wa.silent_for(Duration::from_millis(100)).await;

    // Resumed on the new replica, the jobs go out wherever workers are.
    assert_eq!(resume(&c, &token, job_queue("mail.send")).await, 3);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let (_, assignment) =
            any_assignment(&mut [&mut wa, &mut wb, &mut wc], Duration::from_secs(10))
                .await
                .expect("the resumed jobs");
        seen.push(job_id(&assignment));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        common::audit_count(&a, "jobs.resume_queue", "success").await,
        1
    );
    // Resuming a queue that is not paused changes nothing.
    let again = jobs(a.channel().await)
        .resume_queue(authed(
            &token,
            pb::ResumeQueueRequest {
                queue: job_queue("mail.send"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.resumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_coming_back_to_a_paused_queue_stay_held() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut worker = app.worker(2).await;
    let failing = app
        .create_job(&token, new_job("back.x", json!({"n": 1})))
        .await;
    let first = worker.assignment().await;
    let lost = app
        .create_job(&token, new_job("back.x", json!({"n": 2})))
        .await;
    let second = worker.assignment().await;
    pause(&app, &token, job_queue("back.x")).await;
    // A failure with attempts left, and a lease lost with its stream: both
    // go back to PENDING, held by the pause.
    let (fail_this, lose_this) = if job_id(&first) == failing.id {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(job_id(&lose_this), lost.id);
    worker.fail(&fail_this, "try again", false).await;
    assert!(worker.ack().await.accepted);
    drop(worker);
    let mut other = app.worker(2).await;
    other.silent_for(Duration::from_millis(1000)).await;
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS value FROM jobs WHERE name = 'back.x' AND status = 'PENDING' \
             AND held"
        )
        .await,
        2
    );
    assert_eq!(resume(&app, &token, job_queue("back.x")).await, 2);
    let mut assignments = vec![other.assignment().await, other.assignment().await];
    let mut ids: Vec<String> = assignments.iter().map(job_id).collect();
    ids.sort();
    let mut expected = vec![failing.id.clone(), lost.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);

    // Retried (in a batch) while paused, they wait too.
    for assignment in assignments.drain(..) {
        other.fail(&assignment, "gone for good", true).await;
        assert!(other.ack().await.accepted);
    }
    pause(&app, &token, job_queue("back.x")).await;
    let retried = batch_retry(
        &app,
        &token,
        pb::BatchRetryJobsRequest {
            filter: by_name("back.x"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(retried.jobs.len(), 2);
    other.silent_for(Duration::from_millis(700)).await;
    assert_eq!(resume(&app, &token, job_queue("back.x")).await, 2);
    other.assignment().await;
    other.assignment().await;
}

async fn register_and_enable(app: &TestApp, token: &str, module: &str, job_names: &[&str]) {
    let mut modules = ModuleServiceClient::new(app.channel().await);
    let declared: Vec<_> = job_names.iter().map(|name| json!({"name": name})).collect();
    modules
        .register_module(authed(
            token,
            pb::RegisterModuleRequest {
                name: module.into(),
                version: "1.0.0".into(),
                display_name: module.into(),
                description: String::new(),
                manifest: Some(json_struct(json!({"jobs": declared}))),
            },
        ))
        .await
        .expect("register");
    set_enabled(app, token, module, true).await;
}

async fn set_enabled(app: &TestApp, token: &str, module: &str, enabled: bool) {
    let mut modules = ModuleServiceClient::new(app.channel().await);
    if enabled {
        modules
            .enable_module(authed(token, pb::EnableModuleRequest { id: module.into() }))
            .await
            .expect("enable");
    } else {
        modules
            .disable_module(authed(
                token,
                pb::DisableModuleRequest { id: module.into() },
            ))
            .await
            .expect("disable");
    }
}

fn module_job(name: &str, module: &str) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        module_name: module.into(),
        ..new_job(name, json!({}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_pause_holds_all_its_names_and_module_state_and_pauses_stay_apart() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    register_and_enable(&app, &token, "mail", &["mail.send", "mail.bounce"]).await;
    assert_eq!(pause(&app, &token, module_queue("mail")).await, 0);
    let send = app
        .create_job(&token, module_job("mail.send", "mail"))
        .await;
    let bounce = app
        .create_job(&token, module_job("mail.bounce", "mail"))
        .await;
    let listed = queues(&app, &token, pb::ListQueuesRequest::default()).await;
    for name in ["mail.send", "mail.bounce"] {
        let queue = listed.queues.iter().find(|q| q.name == name).expect(name);
        assert!(queue.paused, "{queue:?}");
        assert_eq!(queue.module_name, "mail");
    }
    assert!(
        listed
            .pauses
            .iter()
            .any(|p| p.queue == module_queue("mail"))
    );
    let mut worker = app.worker(4).await;
    worker.silent_for(Duration::from_millis(700)).await;

    // Disabling and enabling the module does not lift the pause.
    set_enabled(&app, &token, "mail", false).await;
    set_enabled(&app, &token, "mail", true).await;
    worker.silent_for(Duration::from_millis(700)).await;
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS value FROM jobs WHERE \"moduleName\" = 'mail' AND held"
        )
        .await,
        2
    );

    // Resuming the module releases both names.
    assert_eq!(resume(&app, &token, module_queue("mail")).await, 2);
    let mut ids = vec![
        job_id(&worker.assignment().await),
        job_id(&worker.assignment().await),
    ];
    ids.sort();
    let mut expected = vec![send.id.clone(), bounce.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);

    // A job-name pause and a disabled module hold a job each on their own:
    // resuming the name does not release a disabled module's job.
    pause(&app, &token, job_queue("mail.send")).await;
    let later = app
        .create_job(&token, module_job("mail.send", "mail"))
        .await;
    set_enabled(&app, &token, "mail", false).await;
    assert_eq!(resume(&app, &token, job_queue("mail.send")).await, 0);
    worker.silent_for(Duration::from_millis(700)).await;
    set_enabled(&app, &token, "mail", true).await;
    assert_eq!(job_id(&worker.assignment().await), later.id);

    // A pause of a module that does not exist is refused.
    let missing = jobs(app.channel().await)
        .pause_queue(authed(
            &token,
            pb::PauseQueueRequest {
                queue: module_queue("no-such-module"),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let both = jobs(app.channel().await)
        .pause_queue(authed(
            &token,
            pb::PauseQueueRequest {
                queue: Some(pb::QueueSelector {
                    job_name: "a".into(),
                    module_name: "mail".into(),
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
}

/// Runs `jobs` (name, failure message) to a permanent failure through a
/// worker that takes only their names; returns their ids in order.
async fn failed_jobs(app: &TestApp, token: &str, specs: &[(&str, &str)]) -> Vec<String> {
    let mut names: Vec<String> = specs.iter().map(|(name, _)| (*name).to_owned()).collect();
    names.sort();
    names.dedup();
    let mut worker = TestWorker::connect(
        app.channel().await,
        token,
        pb::WorkerHello {
            job_names: names,
            ..hello(1)
        },
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for (name, message) in specs {
        let job = app
            .create_job(token, new_job(name, json!({"message": message})))
            .await;
        let assignment = worker.assignment().await;
        assert_eq!(job_id(&assignment), job.id);
        worker.fail(&assignment, message, true).await;
        assert!(worker.ack().await.accepted);
        ids.push(job.id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_counts_each_queue_from_unfinished_rows() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    failed_jobs(&app, &token, &[("fig.a", "boom")]).await;
    let mut worker = TestWorker::connect(
        app.channel().await,
        &token,
        pb::WorkerHello {
            job_names: vec!["fig.a".into()],
            ..hello(1)
        },
    )
    .await
    .unwrap();
    app.create_job(&token, new_job("fig.a", json!({"n": 1})))
        .await;
    let _running = worker.assignment().await;
    for n in 2..=3 {
        app.create_job(&token, new_job("fig.a", json!({"n": n})))
            .await;
    }
    let later = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3600,
        nanos: 0,
    };
    app.create_job(
        &token,
        pb::CreateJobRequest {
            schedule_time: Some(later),
            ..new_job("fig.a", json!({"n": 4}))
        },
    )
    .await;
    pause(&app, &token, job_queue("fig.b")).await;
    app.create_job(&token, new_job("fig.c", json!({}))).await;

    tokio::time::sleep(Duration::from_millis(50)).await;
    let listed = queues(&app, &token, pb::ListQueuesRequest::default()).await;
    let names: Vec<&str> = listed.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["fig.a", "fig.b", "fig.c"]);
    let a = &listed.queues[0];
    assert_eq!(
        (
            a.pending_count,
            a.scheduled_count,
            a.running_count,
            a.failed_last_hour_count,
            a.paused
        ),
        (2, 1, 1, 1, false),
        "{a:?}"
    );
    assert!(a.oldest_pending_age.is_some());
    let b = &listed.queues[1];
    assert!(b.paused && b.pending_count == 0 && b.oldest_pending_age.is_none());
    assert_eq!(listed.pauses.len(), 1);

    // Paged by name.
    let first = queues(
        &app,
        &token,
        pb::ListQueuesRequest {
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.queues.len(), 2);
    let second = queues(
        &app,
        &token,
        pb::ListQueuesRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(second.queues.len(), 1);
    assert_eq!(second.queues[0].name, "fig.c");
    assert!(second.next_page_token.is_empty() && second.pauses.is_empty());

    // The plan reads PENDING, RUNNING and FAILED rows through partial
    // indexes of those states, never the table (docs/api.md shows it; on
    // this small table the planner may pick either index of FAILED rows):
    //   -> Index Only Scan using jobs_pending_queue_idx on jobs
    //        Index Cond: (name > ''::text)
    //   -> Index Scan using "jobs_leaseExpiresAt_idx" on jobs jobs_1
    //   -> Index Scan using jobs_failed_idx on jobs jobs_2
    //        Index Cond: ("failedAt" >= (LOCALTIMESTAMP - '01:00:00'::interval))
    //   -> Index Only Scan using queue_pauses_pkey on queue_pauses p
    let plan = explain_queue_figures(&app).await;
    assert!(!plan.contains("Seq Scan on jobs"), "{plan}");
    assert!(!plan.contains("jobs_createdAt_id_idx"), "{plan}");
    for index in ["jobs_pending_queue_idx", "jobs_failed", "jobs_lease"] {
        assert!(plan.contains(index), "{index}:\n{plan}");
    }
}

/// The plan of ListQueues' statement as the server runs it.
async fn explain_queue_figures(app: &TestApp) -> String {
    use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let mut conn = app.pool.get().await.expect("connection");
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        diesel::sql_query("SET LOCAL enable_seqscan = off")
            .execute(conn)
            .await?;
        let lines: Vec<Line> = diesel::sql_query(format!("EXPLAIN {QUERY}"))
            .bind::<diesel::sql_types::Text, _>("")
            .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(None::<String>)
            .bind::<diesel::sql_types::BigInt, _>(51_i64)
            .load(conn)
            .await?;
        Ok(lines
            .into_iter()
            .map(|l| l.line)
            .collect::<Vec<_>>()
            .join("\n"))
    })
    .await
    .expect("explain")
}

const QUERY: &str = QUEUE_FIGURES;

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

async fn batch_retry(
    app: &TestApp,
    token: &str,
    request: pb::BatchRetryJobsRequest,
) -> Result<pb::BatchRetryJobsResponse, tonic::Status> {
    jobs(app.channel().await)
        .batch_retry_jobs(authed(token, request))
        .await
        .map(tonic::Response::into_inner)
}

fn by_name(name: &str) -> Option<pb::JobFilter> {
    Some(pb::JobFilter {
        name: name.into(),
        ..Default::default()
    })
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
    let refused = batch_cancel(
        &app,
        &token,
        pb::BatchCancelJobsRequest {
            ids: vec![pending[1].clone(), pending[0].clone(), pending[2].clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("ids[1]"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains(&pending[0]),
        "{}",
        refused.message()
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
    // A retry of PENDING jobs by ids is refused whole.
    let refused = batch_retry(
        &app,
        &token,
        pb::BatchRetryJobsRequest {
            ids: pending.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
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

    // A running job cancelled in a batch: its worker is told.
    let mut worker = app.worker(1).await;
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
