//! The rules applied when jobs are created, tried from the attacker's side
//! over real gRPC: a module's job is its module's whatever the request says
//! (or leaves out), hook job names belong to the lifecycle alone, a module
//! registered over existing jobs takes its names back, idempotency keys
//! belong to their caller, manifests are bounded, batches naming the same
//! keys in different orders never deadlock, and cancelling a hook job needs
//! the permission of the call that started its transition.

use crate::common;

use std::time::Duration;

use automation_control_plane::proto::automation_v1 as pb;
use common::{
    JobServiceClient, ModuleServiceClient, TestApp, account, authed, mask, new_job,
    worker::{TestWorker, job_id, json_struct},
};
use serde_json::{Value, json};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt as _;

fn modules(channel: Channel) -> ModuleServiceClient<Channel> {
    ModuleServiceClient::new(channel)
}

async fn register(app: &TestApp, token: &str, name: &str, manifest: Value) -> Result<(), Status> {
    modules(app.channel().await)
        .register_module(authed(
            token,
            pb::RegisterModuleRequest {
                name: name.into(),
                version: "1.0.0".into(),
                display_name: format!("The {name} module"),
                description: String::new(),
                manifest: Some(json_struct(manifest)),
            },
        ))
        .await
        .map(drop)
}

async fn enable(app: &TestApp, token: &str, name: &str) -> pb::Module {
    modules(app.channel().await)
        .enable_module(authed(token, pb::EnableModuleRequest { id: name.into() }))
        .await
        .expect("enable")
        .into_inner()
        .module
        .expect("module")
}

async fn disable(app: &TestApp, token: &str, name: &str) {
    modules(app.channel().await)
        .disable_module(authed(token, pb::DisableModuleRequest { id: name.into() }))
        .await
        .expect("disable");
}

async fn set_manifest(app: &TestApp, token: &str, name: &str, manifest: Value) {
    modules(app.channel().await)
        .update_module(authed(
            token,
            pb::UpdateModuleRequest {
                module: Some(pb::Module {
                    id: name.into(),
                    manifest: Some(json_struct(manifest)),
                    ..Default::default()
                }),
                update_mask: mask(&["manifest"]),
            },
        ))
        .await
        .expect("update manifest");
}

async fn create(
    app: &TestApp,
    token: &str,
    request: pb::CreateJobRequest,
) -> Result<pb::Job, Status> {
    JobServiceClient::new(app.channel().await)
        .create_job(authed(token, request))
        .await
        .map(|r| r.into_inner().job.expect("job"))
}

async fn create_batch(
    app: &TestApp,
    token: &str,
    requests: Vec<pb::CreateJobRequest>,
) -> Result<Vec<pb::Job>, Status> {
    JobServiceClient::new(app.channel().await)
        .batch_create_jobs(authed(token, pb::BatchCreateJobsRequest { requests }))
        .await
        .map(|r| r.into_inner().jobs)
}

fn in_module(name: &str, module: &str) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        module_name: module.into(),
        ..new_job(name, json!({}))
    }
}

/// The field an INVALID_ARGUMENT names.
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

/// A worker (admin) taking only jobs named `names`, as a module's worker
/// subscribed by job type does.
async fn worker_for(app: &TestApp, names: &[&str]) -> TestWorker {
    let token = app.admin_token().await;
    TestWorker::connect(
        app.channel().await,
        &token,
        pb::WorkerHello {
            worker_id: "module-worker".into(),
            job_names: names.iter().map(|n| n.to_string()).collect(),
            module_names: vec![],
            max_concurrency: 10,
        },
    )
    .await
    .expect("worker connects")
}

/// The backup module: `backup.run` (priority 7), a job type outside its
/// namespace (`nightly-dump`), and an install hook.
fn backup_manifest() -> Value {
    json!({
        "jobs": [
            {"name": "backup.run", "priority": 7},
            {"name": "nightly-dump"},
            {"name": "backup.install"},
        ],
        "hooks": {"install": "backup.install"},
    })
}

/// An ENABLED backup module, a `jobs:write`-only attacker and an executor
/// holding `modules:execute`; returns (admin, attacker, executor) tokens.
async fn backup_enabled(app: &TestApp) -> (String, String, String) {
    let admin = app.admin_token().await;
    register(app, &admin, "backup", backup_manifest())
        .await
        .unwrap();
    let module = enable(app, &admin, "backup").await;
    // The install hook runs on a worker; complete it.
    let mut hooks = worker_for(app, &["backup.install"]).await;
    let hook = hooks.assignment().await;
    assert_eq!(job_id(&hook), module.hook_job_id);
    hooks.complete(&hook, json!({})).await;
    assert!(hooks.ack().await.accepted);
    drop(hooks);
    let (_, attacker) = account(app, "mallory", &["jobs:write", "jobs:read"]).await;
    let (_, executor) = account(
        app,
        "executor",
        &["jobs:write", "jobs:read", "modules:execute"],
    )
    .await;
    (admin, attacker, executor)
}

/// Leaving `module_name` out does not make a module's job a plain one: its
/// namespace (`backup.`) and its declared job types (`nightly-dump`) are the
/// module's, with the module's permission and defaults.
#[tokio::test]
async fn a_modules_job_is_its_modules_without_module_name() {
    let app = TestApp::spawn().await;
    let (_admin, attacker, executor) = backup_enabled(&app).await;
    let mut worker = worker_for(&app, &["backup.run", "nightly-dump"]).await;

    for name in ["backup.run", "nightly-dump", "backup.whatever"] {
        let status = create(&app, &attacker, new_job(name, json!({"rm": "-rf /"})))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{name}: {status:?}");
        assert!(status.message().contains("modules:execute"), "{status:?}");
    }
    // Nor in a batch, hidden behind a plain job.
    let status = create_batch(
        &app,
        &attacker,
        vec![
            new_job("plain.thing", json!({})),
            new_job("backup.run", json!({})),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    worker.silent_for(Duration::from_millis(300)).await;

    // For a caller who may run module code, the job is the module's.
    let job = create(&app, &executor, new_job("backup.run", json!({})))
        .await
        .unwrap();
    assert_eq!(job.module_name, "backup");
    assert_eq!(job.priority, 7, "the manifest's default applies");
    let job = create(&app, &executor, new_job("nightly-dump", json!({})))
        .await
        .unwrap();
    assert_eq!(job.module_name, "backup");
    // A job type the manifest does not declare is refused, as with module_name.
    let status = create(&app, &executor, new_job("backup.whatever", json!({})))
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "name");
    // Naming another module for the backup module's job is refused.
    let admin = app.admin_token().await;
    register(&app, &admin, "other", json!({})).await.unwrap();
    enable(&app, &admin, "other").await;
    let status = create(&app, &executor, in_module("backup.run", "other"))
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "module_name");
    let status = create_batch(
        &app,
        &executor,
        vec![
            in_module("other.run", "other"),
            in_module("nightly-dump", "other"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(field_of(&status), "requests[1].module_name");
    // A job of no module is still a plain job.
    let plain = create(&app, &attacker, new_job("plain.thing", json!({})))
        .await
        .unwrap();
    assert_eq!(plain.module_name, "");
    app.stop().await;
}

/// While the module is DISABLED nobody creates its jobs, named or not, and
/// its workers receive nothing.
#[tokio::test]
async fn a_disabled_modules_jobs_cannot_be_slipped_in_without_module_name() {
    let app = TestApp::spawn().await;
    let (admin, attacker, executor) = backup_enabled(&app).await;
    disable(&app, &admin, "backup").await;
    let mut worker = worker_for(&app, &["backup.run", "nightly-dump", "backup.install"]).await;
    for token in [&attacker, &executor, &admin] {
        for name in ["backup.run", "nightly-dump"] {
            let status = create(&app, token, new_job(name, json!({})))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    status.code(),
                    Code::PermissionDenied | Code::FailedPrecondition
                ),
                "{name}: {status:?}"
            );
        }
    }
    let status = create(&app, &executor, new_job("backup.run", json!({})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("DISABLED"), "{status:?}");
    worker.silent_for(Duration::from_millis(500)).await;
    app.stop().await;
}

/// Hook job names are the lifecycle's: no caller creates one, with or
/// without module_name, whatever it holds — not even a forged install
/// "for" a version the module never had.
#[tokio::test]
async fn hook_job_names_are_created_only_by_the_lifecycle() {
    let app = TestApp::spawn().await;
    let (admin, attacker, executor) = backup_enabled(&app).await;
    let mut worker = worker_for(&app, &["backup.install"]).await;
    let forged = json!({"module": "backup", "hook": "install", "version": "6.6.6"});
    for token in [&admin, &executor] {
        let status = create(&app, token, new_job("backup.install", forged.clone()))
            .await
            .unwrap_err();
        assert_eq!(field_of(&status), "name");
        assert!(status.message().contains("hook"), "{status:?}");
        let status = create(
            &app,
            token,
            pb::CreateJobRequest {
                payload: Some(json_struct(forged.clone())),
                ..in_module("backup.install", "backup")
            },
        )
        .await
        .unwrap_err();
        assert_eq!(field_of(&status), "name");
        let status = create_batch(
            &app,
            token,
            vec![
                new_job("backup.run", json!({})),
                new_job("backup.install", forged.clone()),
            ],
        )
        .await
        .unwrap_err();
        assert_eq!(field_of(&status), "requests[1].name");
    }
    let status = create(&app, &attacker, new_job("backup.install", forged))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::PermissionDenied | Code::InvalidArgument
        ),
        "{status:?}"
    );
    worker.silent_for(Duration::from_millis(300)).await;
    app.stop().await;
}

/// Jobs created in a namespace before its module existed do not run as the
/// module's when it arrives: registering the module cancels them (telling
/// a worker running one), and they cannot be retried into it.
#[tokio::test]
async fn a_module_registered_after_jobs_in_its_namespace_takes_its_names_back() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, attacker) = account(&app, "mallory", &["jobs:write", "jobs:read"]).await;
    // Squatted before the module exists: one waits, one runs on a worker
    // that takes anything.
    let mut any = {
        let (_, runner) = account(&app, "runner", &["jobs:execute"]).await;
        TestWorker::connect(app.channel().await, &runner, common::worker::hello(1))
            .await
            .unwrap()
    };
    let running = create(&app, &attacker, new_job("late.run", json!({"evil": 1})))
        .await
        .unwrap();
    assert_eq!(job_id(&any.assignment().await), running.id);
    let pending = create(&app, &attacker, new_job("late.run", json!({"evil": 2})))
        .await
        .unwrap();
    let declared = create(&app, &attacker, new_job("late-report", json!({"evil": 3})))
        .await
        .unwrap();
    let unrelated = create(&app, &attacker, new_job("early.run", json!({})))
        .await
        .unwrap();

    register(
        &app,
        &admin,
        "late",
        json!({"jobs": [{"name": "late.run"}, {"name": "late-report"}]}),
    )
    .await
    .unwrap();
    let cancellation = any.cancellation().await;
    assert_eq!(cancellation.lease.unwrap().job_id, running.id);
    for id in [&running.id, &pending.id, &declared.id] {
        let job = app.job(&admin, id).await;
        assert_eq!(job.status(), pb::JobStatus::Cancelled, "{id}");
    }
    // A job of another namespace is left alone (the freed worker may have
    // taken it).
    assert_ne!(
        app.job(&admin, &unrelated.id).await.status(),
        pb::JobStatus::Cancelled
    );
    let cancelled = app.job(&admin, &pending.id).await;
    assert!(
        cancelled.error.unwrap().fields["message"]
            .kind
            .as_ref()
            .is_some_and(|m| format!("{m:?}").contains("module late")),
        "the job says why"
    );
    // The squatter cannot put them back.
    let status = JobServiceClient::new(app.channel().await)
        .retry_job(authed(
            &attacker,
            pb::RetryJobRequest {
                id: pending.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::PermissionDenied | Code::FailedPrecondition
        ),
        "{status:?}"
    );
    // The module's workers see none of them once it is enabled.
    enable(&app, &admin, "late").await;
    let mut worker = worker_for(&app, &["late.run", "late-report"]).await;
    worker.silent_for(Duration::from_millis(500)).await;
    // A module declaring a job type another module owns is refused.
    let status = modules(app.channel().await)
        .register_module(authed(
            &admin,
            pb::RegisterModuleRequest {
                name: "thief".into(),
                version: "1.0.0".into(),
                display_name: "Thief".into(),
                description: String::new(),
                manifest: Some(json_struct(
                    json!({"jobs": [{"name": "x"}, {"name": "late.run"}]}),
                )),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "manifest.jobs[1].name");
    app.stop().await;
}

/// Idempotency keys are the caller's: another caller reusing one gets a job
/// of its own and learns nothing; a squatter cannot block the owner; the
/// owner's API key counts as the owner.
#[tokio::test]
async fn idempotency_keys_belong_to_their_caller() {
    let app = TestApp::spawn().await;
    let (alice_id, alice) = account(&app, "alice", &["jobs:write", "jobs:read"]).await;
    let (_, mallory) = account(&app, "mallory", &["jobs:write"]).await;
    let keyed = |key: &str, payload: Value| pb::CreateJobRequest {
        idempotency_key: key.into(),
        ..new_job("report.build", payload)
    };

    let secret = json!({"password": "hunter2"});
    let alices = create(&app, &alice, keyed("nightly", secret.clone()))
        .await
        .unwrap();
    // Mallory reusing the key, with Alice's name and payload, gets a job of
    // her own, never Alice's; repeating it returns her own.
    let hers = create(&app, &mallory, keyed("nightly", secret.clone()))
        .await
        .unwrap();
    assert_ne!(hers.id, alices.id);
    assert_ne!(hers.creator, alice_id);
    let again = create(&app, &mallory, keyed("nightly", secret.clone()))
        .await
        .unwrap();
    assert_eq!(again.id, hers.id);
    // Another payload under the key clashes with her own job, and the error
    // names only hers.
    let status = create(&app, &mallory, keyed("nightly", json!({})))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(!status.message().contains(&alices.id), "{status:?}");
    assert!(status.message().contains(&hers.id), "{status:?}");
    // A squatted key does not block its owner.
    let squat = create(&app, &mallory, keyed("weekly", json!({"squat": true})))
        .await
        .unwrap();
    let owned = create(&app, &alice, keyed("weekly", json!({"real": true})))
        .await
        .unwrap();
    assert_ne!(owned.id, squat.id);
    assert_eq!(owned.creator, alice_id);
    // In a batch too.
    let jobs = create_batch(&app, &mallory, vec![keyed("monthly", json!({"squat": 1}))])
        .await
        .unwrap();
    let alices_batch = create_batch(
        &app,
        &alice,
        vec![
            keyed("monthly", json!({"real": 1})),
            keyed("nightly", secret.clone()),
        ],
    )
    .await
    .unwrap();
    assert_ne!(alices_batch[0].id, jobs[0].id);
    assert_eq!(
        alices_batch[1].id, alices.id,
        "her own key still returns her job"
    );

    // Alice's API key acts as Alice: it gets her job back.
    let key = pb::api_key_service_client::ApiKeyServiceClient::new(app.channel().await)
        .create_api_key(authed(
            &alice,
            pb::CreateApiKeyRequest {
                user_id: String::new(),
                name: "script".into(),
                permissions: vec!["jobs:write".into()],
                expire_time: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let via_key = create(&app, &key, keyed("nightly", secret.clone()))
        .await
        .unwrap();
    assert_eq!(via_key.id, alices.id);
    app.stop().await;
}

/// A manifest declares at most 1,000 job types; a change of the manifest at
/// the same version is seen by the next CreateJob (the parsed manifest is
/// cached per module version, never served stale).
#[tokio::test]
async fn manifests_are_bounded_and_their_cache_follows_changes() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let types = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"name": format!("big.t{i}")}))
            .collect()
    };
    let status = register(&app, &admin, "big", json!({"jobs": types(1001)}))
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "manifest.jobs");
    assert!(status.message().contains("1000"), "{status:?}");
    register(&app, &admin, "big", json!({"jobs": types(1000)}))
        .await
        .unwrap();
    enable(&app, &admin, "big").await;
    let job = create(&app, &admin, new_job("big.t999", json!({})))
        .await
        .unwrap();
    assert_eq!(job.module_name, "big");
    // The same version, another manifest: the next create sees it.
    set_manifest(
        &app,
        &admin,
        "big",
        json!({"jobs": [{"name": "big.t0", "priority": 3}]}),
    )
    .await;
    let status = create(&app, &admin, new_job("big.t999", json!({})))
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "name");
    let job = create(&app, &admin, new_job("big.t0", json!({})))
        .await
        .unwrap();
    assert_eq!(job.priority, 3);
    // Too many types through an update too.
    let status = modules(app.channel().await)
        .update_module(authed(
            &admin,
            pb::UpdateModuleRequest {
                module: Some(pb::Module {
                    id: "big".into(),
                    manifest: Some(json_struct(json!({"jobs": types(1001)}))),
                    ..Default::default()
                }),
                update_mask: mask(&["manifest"]),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "module.manifest.jobs");
    app.stop().await;
}

/// While an update's hook runs, the job types of the old manifest stay the
/// module's (a failed hook restores them): nobody slips a plain job into a
/// name the module may take back. Once the new manifest holds, a type it
/// dropped is free.
#[tokio::test]
async fn an_updates_dropped_job_types_stay_the_modules_until_its_hook_settles() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, attacker) = account(&app, "mallory", &["jobs:write", "jobs:read"]).await;
    let manifest = |extra: &[&str]| {
        let mut jobs = vec![json!({"name": "svc.run"}), json!({"name": "svc.update"})];
        jobs.extend(extra.iter().map(|name| json!({"name": name})));
        json!({"jobs": jobs, "hooks": {"update": "svc.update"}})
    };
    register(&app, &admin, "svc", manifest(&["legacy-job"]))
        .await
        .unwrap();
    enable(&app, &admin, "svc").await;
    let mut hooks = worker_for(&app, &["svc.update"]).await;
    for (version, succeed) in [("2.0.0", false), ("3.0.0", true)] {
        let updating = modules(app.channel().await)
            .update_module(authed(
                &admin,
                pb::UpdateModuleRequest {
                    module: Some(pb::Module {
                        id: "svc".into(),
                        version: version.into(),
                        manifest: Some(json_struct(manifest(&[]))),
                        ..Default::default()
                    }),
                    update_mask: mask(&["version", "manifest"]),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .module
            .unwrap();
        assert_eq!(updating.status(), pb::ModuleStatus::Updating);
        let status = create(&app, &attacker, new_job("legacy-job", json!({})))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        let hook = hooks.assignment().await;
        if succeed {
            hooks.complete(&hook, json!({})).await;
        } else {
            hooks.fail(&hook, "no", true).await;
        }
        assert!(hooks.ack().await.accepted);
        let mut watch = modules(app.channel().await)
            .watch_module(authed(&admin, pb::WatchModuleRequest { id: "svc".into() }))
            .await
            .unwrap()
            .into_inner();
        loop {
            let event = tokio::time::timeout(common::worker::PATIENCE, watch.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if event.module.unwrap().status() == pb::ModuleStatus::Enabled {
                break;
            }
        }
        let outcome = create(&app, &attacker, new_job("legacy-job", json!({}))).await;
        if succeed {
            // Dropped for good: a plain job now.
            assert_eq!(outcome.unwrap().module_name, "");
        } else {
            // Restored with the old manifest: the module's again.
            assert_eq!(outcome.unwrap_err().code(), Code::PermissionDenied);
        }
    }
    // A module cannot be registered under a namespace another module
    // declares job types in.
    register(
        &app,
        &admin,
        "alpha",
        json!({"jobs": [{"name": "gamma.run"}]}),
    )
    .await
    .unwrap();
    let status = register(&app, &admin, "gamma", json!({}))
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "name");
    app.stop().await;
}

/// Creates racing a registration never leave a job of no module in the
/// new module's namespace: each create either commits before the module
/// (which then takes the job back) or sees the module.
#[tokio::test]
async fn creates_racing_a_registration_leave_nothing_unchecked() {
    use diesel::{dsl::count_star, prelude::*};
    use diesel_async::RunQueryDsl;
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, attacker) = account(&app, "mallory", &["jobs:write"]).await;
    let racers: Vec<_> = (0..6)
        .map(|_| {
            let channel = app.channel();
            let attacker = attacker.clone();
            async move {
                let mut client = JobServiceClient::new(channel.await);
                for i in 0..25 {
                    let _ = client
                        .create_job(authed(&attacker, new_job("race.run", json!({"i": i}))))
                        .await;
                }
            }
        })
        .collect();
    let registration = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        register(&app, &admin, "race", json!({})).await.unwrap();
    };
    futures::future::join(futures::future::join_all(racers), registration).await;
    use automation_control_plane::schema::jobs::dsl::*;
    let mut conn = app.pool.get().await.unwrap();
    let unchecked: i64 =
        jobs.filter(name.eq("race.run"))
            .filter(module_name.is_null())
            .filter(status.eq_any(
                ["PENDING", "RUNNING"].map(|s| {
                    automation_control_plane::store::jobs::JobStatus::from_label(s).unwrap()
                }),
            ))
            .select(count_star())
            .first(&mut conn)
            .await
            .unwrap();
    assert_eq!(unchecked, 0);
    app.stop().await;
}

/// Two batches of one caller naming the same new keys in opposite orders
/// ({a, b} and {b, a}), sent at once, many times: each batch waits on the
/// key the other is inserting, so inserted in request order they would
/// deadlock (one aborted after a second). Both must succeed, and both must
/// name the same job for each key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_naming_the_same_keys_in_opposite_orders_never_deadlock() {
    let app = TestApp::spawn().await;
    let (_, alice) = account(&app, "alice", &["jobs:write", "jobs:read"]).await;
    let keyed = |key: String| pb::CreateJobRequest {
        idempotency_key: key.clone(),
        ..new_job("report.build", json!({"key": key}))
    };
    for round in 0..30 {
        let (a, b) = (format!("r{round}-a"), format!("r{round}-b"));
        let forward = vec![keyed(a.clone()), keyed(b.clone())];
        let backward = vec![keyed(b.clone()), keyed(a.clone())];
        let (first, second) = tokio::join!(
            create_batch(&app, &alice, forward),
            create_batch(&app, &alice, backward)
        );
        let first = first.unwrap_or_else(|s| panic!("round {round}: {s:?}"));
        let second = second.unwrap_or_else(|s| panic!("round {round}: {s:?}"));
        assert_eq!(first[0].id, second[1].id, "round {round}: key a");
        assert_eq!(first[1].id, second[0].id, "round {round}: key b");
        assert_eq!(first[0].idempotency_key, a);
        assert_eq!(first[1].idempotency_key, b);
    }
    app.stop().await;
}

async fn module_now(app: &TestApp, token: &str, name: &str) -> pb::Module {
    modules(app.channel().await)
        .get_module(authed(token, pb::GetModuleRequest { id: name.into() }))
        .await
        .expect("get module")
        .into_inner()
        .module
        .expect("module")
}

async fn cancel(app: &TestApp, token: &str, id: &str) -> Result<pb::Job, Status> {
    JobServiceClient::new(app.channel().await)
        .cancel_job(authed(token, pb::CancelJobRequest { id: id.into() }))
        .await
        .map(|r| r.into_inner().job.expect("job"))
}

/// Cancelling a hook job undoes its module's transition, so it needs the
/// permission of the call that started it: an attacker holding `jobs:write`
/// and `modules:execute` (enough for a module's jobs) cannot roll back a
/// DeleteModule (`modules:delete`) or an install (`modules:write`).
#[tokio::test]
async fn cancelling_a_hook_job_needs_the_permission_of_its_transition() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let manifest = json!({
        "jobs": [{"name": "vault.install"}, {"name": "vault.remove"}],
        "hooks": {"install": "vault.install", "remove": "vault.remove"},
    });
    register(&app, &admin, "vault", manifest).await.unwrap();
    let (_, attacker) = account(
        &app,
        "mallory",
        &["jobs:write", "jobs:read", "modules:execute", "modules:read"],
    )
    .await;
    let (_, writer) = account(
        &app,
        "writer",
        &["jobs:write", "modules:execute", "modules:write"],
    )
    .await;

    // An install (EnableModule: modules:write) in progress.
    let installing = enable(&app, &admin, "vault").await;
    assert_eq!(installing.status(), pb::ModuleStatus::Installing);
    let status = cancel(&app, &attacker, &installing.hook_job_id)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("modules:write"), "{status:?}");
    let module = module_now(&app, &attacker, "vault").await;
    assert_eq!(module.status(), pb::ModuleStatus::Installing);
    // Let the install finish.
    let mut hooks = worker_for(&app, &["vault.install", "vault.remove"]).await;
    let hook = hooks.assignment().await;
    assert_eq!(job_id(&hook), installing.hook_job_id);
    hooks.complete(&hook, json!({})).await;
    assert!(hooks.ack().await.accepted);
    drop(hooks);
    assert_eq!(
        module_now(&app, &admin, "vault").await.status(),
        pb::ModuleStatus::Enabled
    );

    // A removal (DeleteModule: modules:delete) in progress: neither the
    // attacker nor a caller holding modules:write may roll it back.
    let removing = modules(app.channel().await)
        .delete_module(authed(
            &admin,
            pb::DeleteModuleRequest { id: "vault".into() },
        ))
        .await
        .expect("delete")
        .into_inner()
        .module
        .expect("module");
    assert_eq!(removing.status(), pb::ModuleStatus::Removing);
    for token in [&attacker, &writer] {
        let status = cancel(&app, token, &removing.hook_job_id)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("modules:delete"), "{status:?}");
    }
    assert_eq!(
        module_now(&app, &attacker, "vault").await.status(),
        pb::ModuleStatus::Removing
    );
    // The admin (who may delete) still can.
    let cancelled = cancel(&app, &admin, &removing.hook_job_id).await.unwrap();
    assert_eq!(cancelled.status(), pb::JobStatus::Cancelled);
    assert_eq!(
        module_now(&app, &admin, "vault").await.status(),
        pb::ModuleStatus::Enabled
    );
    app.stop().await;
}
