//! The walk of a pause or a resume (in batches, finished by a server after
//! a crash, racing creates), who may pause a module's queue, the bound on
//! pauses, a deleted module's pauses, and batch calls by ids that skip
//! jobs which moved.

use std::time::Duration;

use super::{
    ModuleServiceClient, TestApp, TestOptions, account, authed, batch_retry, job_queue, jobs,
    module_job, module_queue, new_job, queue_named, register_and_enable, scalar, set_enabled,
};
use automation_control_plane::{domain::jobs::JobSettings, proto::automation_v1 as pb};
use serde_json::json;
use tonic::Code;

/// A server whose walks take 3 jobs per transaction.
fn tiny_batches() -> TestOptions {
    TestOptions {
        jobs: JobSettings {
            queue_walk_batch: 3,
            ..TestOptions::default().jobs
        },
        ..TestOptions::default()
    }
}

async fn held(app: &TestApp, name: &str) -> i64 {
    scalar(
        app,
        &format!(
            "SELECT count(*) AS value FROM jobs \
             WHERE name = '{name}' AND status = 'PENDING' AND held"
        ),
    )
    .await
}

async fn create_many(app: &TestApp, token: &str, request: pb::CreateJobRequest, n: usize) {
    let requests = vec![request; n];
    jobs(app.channel().await)
        .batch_create_jobs(authed(token, pb::BatchCreateJobsRequest { requests }))
        .await
        .expect("batch create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_in_small_batches_hold_and_release_every_job_of_the_queue() {
    let app = TestApp::spawn_with(tiny_batches()).await;
    let token = app.admin_token().await;
    register_and_enable(&app, &token, "mail", &["mail.send", "mail.bounce"]).await;
    create_many(&app, &token, new_job("tiny.a", json!({})), 7).await;
    create_many(&app, &token, new_job("tiny.b", json!({})), 2).await;
    create_many(&app, &token, module_job("mail.send", "mail"), 4).await;
    create_many(&app, &token, module_job("mail.bounce", "mail"), 5).await;
    let mut client = jobs(app.channel().await);

    let paused = client
        .pause_queue(authed(
            &token,
            pb::PauseQueueRequest {
                queue: job_queue("tiny.a"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((paused.held_jobs, paused.settling), (7, false));
    assert_eq!(
        (held(&app, "tiny.a").await, held(&app, "tiny.b").await),
        (7, 0)
    );
    // Pausing it again walks nothing and counts what is held.
    let again = client
        .pause_queue(authed(
            &token,
            pb::PauseQueueRequest {
                queue: job_queue("tiny.a"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.held_jobs, again.settling), (7, false));
    let module = client
        .pause_queue(authed(
            &token,
            pb::PauseQueueRequest {
                queue: module_queue("mail"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(module.held_jobs, 9);
    assert_eq!(
        (
            held(&app, "mail.send").await,
            held(&app, "mail.bounce").await
        ),
        (4, 5)
    );
    let queue = queue_named(&app, &token, "mail.bounce").await.unwrap();
    assert!(queue.paused && !queue.settling);

    let resumed = client
        .resume_queue(authed(
            &token,
            pb::ResumeQueueRequest {
                queue: job_queue("tiny.a"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resumed.released_jobs, resumed.settling), (7, false));
    let resumed = client
        .resume_queue(authed(
            &token,
            pb::ResumeQueueRequest {
                queue: module_queue("mail"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.released_jobs, 9);
    assert_eq!(
        scalar(&app, "SELECT count(*) AS value FROM jobs WHERE held").await,
        0
    );
    assert_eq!(
        scalar(&app, "SELECT count(*) AS value FROM queue_walks").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_owed_after_a_crash_is_finished_by_a_server() {
    let app = TestApp::spawn_with(tiny_batches()).await;
    let token = app.admin_token().await;
    create_many(&app, &token, new_job("owed.paused", json!({})), 7).await;
    create_many(&app, &token, new_job("owed.resumed", json!({})), 5).await;
    // What a replica killed between a pause's commit and its walk leaves
    // (the pause stored and owed, its jobs not held), and one killed in a
    // resume's (no pause, its jobs still held).
    scalar(
        &app,
        "WITH p AS (INSERT INTO queue_pauses (kind, name) VALUES ('job', 'owed.paused') \
         RETURNING 1) SELECT count(*) AS value FROM p",
    )
    .await;
    scalar(
        &app,
        "WITH j AS (UPDATE jobs SET held = true WHERE name = 'owed.resumed' RETURNING 1) \
         SELECT count(*) AS value FROM j",
    )
    .await;
    scalar(
        &app,
        "WITH w AS (INSERT INTO queue_walks (kind, name, \"owedSince\", generation) \
         VALUES ('job', 'owed.paused', LOCALTIMESTAMP - interval '1 hour', 1), \
                ('job', 'owed.resumed', LOCALTIMESTAMP - interval '1 hour', 4) \
         RETURNING 1) SELECT count(*) AS value FROM w",
    )
    .await;
    let queue = queue_named(&app, &token, "owed.paused").await.unwrap();
    assert!(queue.paused && queue.settling, "{queue:?}");
    assert!(
        queue_named(&app, &token, "owed.resumed")
            .await
            .unwrap()
            .settling
    );

    // A server starting (or any running one, on its next round) finishes
    // the owed walks.
    let replica = app.replica(tiny_batches()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while scalar(&app, "SELECT count(*) AS value FROM queue_walks").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "owed walks left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (
            held(&app, "owed.paused").await,
            held(&app, "owed.resumed").await
        ),
        (7, 0)
    );
    let queue = queue_named(&app, &token, "owed.paused").await.unwrap();
    assert!(queue.paused && !queue.settling, "{queue:?}");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_created_while_a_queue_is_paused_all_end_held() {
    let app = TestApp::spawn_with(tiny_batches()).await;
    let token = app.admin_token().await;
    let mut creators = Vec::new();
    for n in 0..6 {
        let channel = app.channel().await;
        let token = token.clone();
        creators.push(tokio::spawn(async move {
            let mut client = jobs(channel);
            for i in 0..12 {
                client
                    .create_job(authed(&token, new_job("racing.q", json!({"n": n, "i": i}))))
                    .await
                    .expect("create");
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    jobs(app.channel().await)
        .pause_queue(authed(
            &token,
            pb::PauseQueueRequest {
                queue: job_queue("racing.q"),
            },
        ))
        .await
        .expect("pause");
    for creator in creators {
        creator.await.unwrap();
    }
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS value FROM jobs \
             WHERE name = 'racing.q' AND status = 'PENDING' AND NOT held"
        )
        .await,
        0
    );
    assert_eq!(held(&app, "racing.q").await, 72);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_modules_queue_needs_modules_execute() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    register_and_enable(&app, &admin, "vault", &["vault.seal"]).await;
    let (_, writer) = account(&app, "qwriter", &["jobs:read", "jobs:write"]).await;
    let mut client = jobs(app.channel().await);
    for queue in [module_queue("vault"), job_queue("vault.seal")] {
        let paused = client
            .pause_queue(authed(
                &writer,
                pb::PauseQueueRequest {
                    queue: queue.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(paused.code(), Code::PermissionDenied, "{queue:?}");
        let resumed = client
            .resume_queue(authed(
                &writer,
                pb::ResumeQueueRequest {
                    queue: queue.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(resumed.code(), Code::PermissionDenied, "{queue:?}");
    }
    assert_eq!(
        scalar(&app, "SELECT count(*) AS value FROM queue_pauses").await,
        0
    );
    // A queue no module owns is jobs:write's.
    client
        .pause_queue(authed(
            &writer,
            pb::PauseQueueRequest {
                queue: job_queue("plain.q"),
            },
        ))
        .await
        .expect("pause a plain queue");
    // With modules:execute, the module's queues too.
    let (_, executor) = account(
        &app,
        "qexecutor",
        &["jobs:read", "jobs:write", "modules:execute"],
    )
    .await;
    for queue in [module_queue("vault"), job_queue("vault.seal")] {
        client
            .pause_queue(authed(&executor, pb::PauseQueueRequest { queue }))
            .await
            .expect("pause with modules:execute");
    }
    // The resume of a module's pause is refused to jobs:write alone too.
    let refused = client
        .resume_queue(authed(
            &writer,
            pb::ResumeQueueRequest {
                queue: module_queue("vault"),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        scalar(&app, "SELECT count(*) AS value FROM queue_pauses").await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_are_bounded_and_a_deleted_module_takes_its_pauses_along() {
    let app = TestApp::spawn_with(TestOptions {
        jobs: JobSettings {
            queue_pauses_max: 2,
            ..TestOptions::default().jobs
        },
        ..TestOptions::default()
    })
    .await;
    let token = app.admin_token().await;
    register_and_enable(&app, &token, "gone", &["gone.x"]).await;
    let mut client = jobs(app.channel().await);
    for queue in [module_queue("gone"), job_queue("cap.a")] {
        client
            .pause_queue(authed(&token, pb::PauseQueueRequest { queue }))
            .await
            .expect("pause");
    }
    let refused = client
        .pause_queue(authed(
            &token,
            pb::PauseQueueRequest {
                queue: job_queue("cap.b"),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // Pausing a paused queue stores nothing, so the bound does not refuse it.
    client
        .pause_queue(authed(
            &token,
            pb::PauseQueueRequest {
                queue: job_queue("cap.a"),
            },
        ))
        .await
        .expect("pause again");

    set_enabled(&app, &token, "gone", false).await;
    ModuleServiceClient::new(app.channel().await)
        .delete_module(authed(
            &token,
            pb::DeleteModuleRequest { id: "gone".into() },
        ))
        .await
        .expect("delete");
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) AS value FROM queue_pauses WHERE kind = 'module'"
        )
        .await,
        0
    );
    // Registered again, the module starts unpaused.
    register_and_enable(&app, &token, "gone", &["gone.x"]).await;
    let job = app.create_job(&token, module_job("gone.x", "gone")).await;
    assert_eq!(
        scalar(
            &app,
            &format!(
                "SELECT count(*) AS value FROM jobs WHERE id = '{}' AND held",
                job.id
            )
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_by_ids_skips_jobs_that_moved_and_acts_on_the_rest() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            app.create_job(&token, new_job("moved.x", json!({"n": n})))
                .await
                .id,
        );
    }
    let mut client = jobs(app.channel().await);
    client
        .cancel_job(authed(&token, pb::CancelJobRequest { id: ids[0].clone() }))
        .await
        .expect("cancel");
    let cancelled = client
        .batch_cancel_jobs(authed(
            &token,
            pb::BatchCancelJobsRequest {
                ids: vec![ids[1].clone(), ids[0].clone(), ids[2].clone()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut done: Vec<&str> = cancelled.jobs.iter().map(|job| job.id.as_str()).collect();
    done.sort_unstable();
    let mut expected = vec![ids[1].as_str(), ids[2].as_str()];
    expected.sort_unstable();
    assert_eq!(done, expected);
    assert_eq!(cancelled.skipped.len(), 1);
    assert_eq!(cancelled.skipped[0].id, ids[0]);

    // A retry by ids: the pending job is skipped, the cancelled ones
    // come back.
    let pending = app.create_job(&token, new_job("moved.x", json!({}))).await;
    let retried = batch_retry(
        &app,
        &token,
        pb::BatchRetryJobsRequest {
            ids: vec![ids[0].clone(), pending.id.clone(), ids[1].clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(retried.jobs.len(), 2);
    assert_eq!(retried.skipped.len(), 1);
    assert_eq!(retried.skipped[0].id, pending.id);
    assert_eq!(retried.skipped[0].status, i32::from(pb::JobStatus::Pending));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_walk_blocks_neither_creates_nor_pauses_of_other_queues() {
    use diesel_async::RunQueryDsl as _;
    let app = TestApp::spawn_with(tiny_batches()).await;
    let token = app.admin_token().await;
    create_many(&app, &token, new_job("stuck.a", json!({})), 5).await;
    // A transaction of someone else's holds one of the queue's jobs: the
    // walk of its pause stops at that row until it ends.
    let mut blocker = app.pool.get().await.expect("connection");
    diesel::sql_query("BEGIN")
        .execute(&mut blocker)
        .await
        .unwrap();
    diesel::sql_query("SELECT id FROM jobs WHERE name = 'stuck.a' LIMIT 1 FOR UPDATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let pausing = {
        let channel = app.channel().await;
        let token = token.clone();
        tokio::spawn(async move {
            jobs(channel)
                .pause_queue(authed(
                    &token,
                    pb::PauseQueueRequest {
                        queue: job_queue("stuck.a"),
                    },
                ))
                .await
                .expect("pause")
                .into_inner()
        })
    };
    // Meanwhile a job of that queue is created, and another queue is
    // paused and resumed: no table lock makes them wait for the walk.
    let bound = Duration::from_secs(30);
    tokio::time::timeout(
        bound,
        app.create_job(&token, new_job("stuck.a", json!({"late": true}))),
    )
    .await
    .expect("a create does not wait for a walk");
    let mut client = jobs(app.channel().await);
    tokio::time::timeout(
        bound,
        client.pause_queue(authed(
            &token,
            pb::PauseQueueRequest {
                queue: job_queue("other.b"),
            },
        )),
    )
    .await
    .expect("another queue's pause does not wait for a walk")
    .expect("pause other.b");
    let answered = pausing.await.unwrap();
    assert!(answered.settling, "{answered:?}");
    diesel::sql_query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .unwrap();
    drop(blocker);
    // Once the row is free, the walk goes on and holds every job.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while held(&app, "stuck.a").await < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the walk never ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while queue_named(&app, &token, "stuck.a").await.unwrap().settling {
        assert!(tokio::time::Instant::now() < deadline, "still settling");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
