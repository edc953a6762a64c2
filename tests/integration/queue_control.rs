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

/// The dead-letter filters and the batch actions.
mod bulk;
/// The walks of pauses and resumes, who may pause, and the bounds.
mod walks;

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
    //   -> Recursive Union
    //        -> Index Only Scan using jobs_pending_name_idx on jobs
    //             Index Cond: (name > ''::text)
    //   -> Index Scan using "jobs_leaseExpiresAt_idx" on jobs jobs_1
    //   -> Index Scan using jobs_failed_idx on jobs jobs_2
    //        Index Cond: ("failedAt" >= (LOCALTIMESTAMP - '01:00:00'::interval))
    //   -> Index Only Scan using queue_pauses_pkey on queue_pauses p
    let plan = explain_queue_figures(&app).await;
    assert!(!plan.contains("Seq Scan on jobs"), "{plan}");
    assert!(!plan.contains("jobs_createdAt_id_idx"), "{plan}");
    // The page's names come first, pending ones by a loose index scan
    // (a recursive union of one-row index descents), and only those
    // names' rows are counted.
    for index in [
        "jobs_pending_name_idx",
        "jobs_failed",
        "jobs_lease",
        "Recursive Union",
    ] {
        assert!(plan.contains(index), "{index}:\n{plan}");
    }
    assert!(
        plan.contains("Index Cond: ((name)::text = ANY"),
        "the page's names are looked up, not every pending row read:\n{plan}"
    );
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
        // A queue table of some size (rolled back): 20,000 pending jobs
        // over 400 names, so that the plan is the one of a real table.
        diesel::sql_query(
            r#"INSERT INTO jobs (id, name, status, payload, "scheduledAt", "updatedAt", held)
               SELECT gen_random_uuid(), 'plan.q' || (n % 400), 'PENDING', '{}',
                      LOCALTIMESTAMP, LOCALTIMESTAMP, false
               FROM generate_series(1, 20000) n"#,
        )
        .execute(conn)
        .await?;
        diesel::sql_query("ANALYZE jobs").execute(conn).await?;
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

/// The real binary, serving the test database (as in replicas.rs).
fn spawn_replica_process(database_url: &str) -> (std::process::Child, String) {
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_control-plane"))
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("JWT_SECRET", common::JWT_SECRET)
        .env("LISTEN_ADDR", &listen)
        .env("JOB_LEASE_SECS", "2")
        .env("BCRYPT_COST", "4")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start a replica");
    (child, listen)
}

async fn channel_to(listen: &str) -> Channel {
    for _ in 0..300 {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{listen}"))
            .unwrap()
            .connect()
            .await
        {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replica at {listen} never served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_survives_a_replica_killed_with_sigkill_and_its_lost_leases_wait() {
    let mut options = TestOptions::default();
    options.jobs.lease = Duration::from_secs(2);
    let a = TestApp::spawn_with(options).await;
    let token = a.admin_token().await;
    let (mut child, listen) = spawn_replica_process(&a.db.url());
    let mut doomed = TestWorker::connect(channel_to(&listen).await, &token, hello(2))
        .await
        .unwrap();
    let job = a.create_job(&token, new_job("kill.x", json!({}))).await;
    assert_eq!(job_id(&doomed.assignment().await), job.id);
    pause(&a, &token, job_queue("kill.x")).await;
    let waiting = a.create_job(&token, new_job("kill.x", json!({}))).await;

    // The replica dies mid-work, without a word: the lease expires and any
    // server's reaper puts the job back, held by the pause.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    drop(doomed);
    let mut survivor = a.worker(4).await;
    survivor.silent_for(Duration::from_secs(4)).await;
    assert_eq!(
        scalar(
            &a,
            "SELECT count(*) AS value FROM jobs WHERE name = 'kill.x' AND status = 'PENDING' \
             AND held"
        )
        .await,
        2
    );
    // A replica started again reads the pause; resumed there, both jobs run.
    let (mut again, listen) = spawn_replica_process(&a.db.url());
    let channel = channel_to(&listen).await;
    let mut fresh = TestWorker::connect(channel.clone(), &token, hello(4))
        .await
        .unwrap();
    fresh.silent_for(Duration::from_millis(500)).await;
    let released = jobs(channel)
        .resume_queue(authed(
            &token,
            pb::ResumeQueueRequest {
                queue: job_queue("kill.x"),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .released_jobs;
    assert_eq!(released, 2);
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let (_, assignment) =
            any_assignment(&mut [&mut survivor, &mut fresh], Duration::from_secs(10))
                .await
                .expect("the resumed jobs");
        ids.push(job_id(&assignment));
    }
    ids.sort();
    let mut expected = vec![job.id, waiting.id];
    expected.sort();
    assert_eq!(ids, expected);
    let _ = again.kill();
    let _ = again.wait();
}
