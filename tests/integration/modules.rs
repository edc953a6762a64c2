//! The module registry and lifecycle over real gRPC: bad input, every
//! transition a caller can ask for in every state, hooks carried out by a
//! worker on the Work stream (succeeding, failing, cancelled), the race of
//! concurrent transitions, and what disable and delete do to jobs.

use crate::common;

use std::time::Duration;

use automation_control_plane::proto::automation_v1 as pb;
use common::{
    JobServiceClient, ModuleServiceClient, TestApp, account, audit_count, authed, mask, new_job,
    worker::{PATIENCE, job_id, json_struct},
};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

fn client_of(channel: tonic::transport::Channel) -> ModuleServiceClient<tonic::transport::Channel> {
    ModuleServiceClient::new(channel)
}

async fn register(
    app: &TestApp,
    token: &str,
    name: &str,
    manifest: Value,
) -> Result<pb::Module, Status> {
    client_of(app.channel().await)
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
        .map(|r| r.into_inner().module.expect("module"))
}

async fn get(app: &TestApp, token: &str, key: &str) -> Result<pb::Module, Status> {
    client_of(app.channel().await)
        .get_module(authed(token, pb::GetModuleRequest { id: key.into() }))
        .await
        .map(|r| r.into_inner().module.expect("module"))
}

async fn enable(app: &TestApp, token: &str, key: &str) -> Result<pb::Module, Status> {
    client_of(app.channel().await)
        .enable_module(authed(token, pb::EnableModuleRequest { id: key.into() }))
        .await
        .map(|r| r.into_inner().module.expect("module"))
}

async fn disable(app: &TestApp, token: &str, key: &str) -> Result<pb::Module, Status> {
    client_of(app.channel().await)
        .disable_module(authed(token, pb::DisableModuleRequest { id: key.into() }))
        .await
        .map(|r| r.into_inner().module.expect("module"))
}

async fn delete(app: &TestApp, token: &str, key: &str) -> Result<pb::DeleteModuleResponse, Status> {
    client_of(app.channel().await)
        .delete_module(authed(token, pb::DeleteModuleRequest { id: key.into() }))
        .await
        .map(|r| r.into_inner())
}

async fn new_version(
    app: &TestApp,
    token: &str,
    key: &str,
    version: &str,
    manifest: Option<Value>,
) -> Result<pb::Module, Status> {
    let mut paths = vec!["version"];
    if manifest.is_some() {
        paths.push("manifest");
    }
    client_of(app.channel().await)
        .update_module(authed(
            token,
            pb::UpdateModuleRequest {
                module: Some(pb::Module {
                    id: key.into(),
                    version: version.into(),
                    manifest: manifest.map(json_struct),
                    ..Default::default()
                }),
                update_mask: mask(&paths),
            },
        ))
        .await
        .map(|r| r.into_inner().module.expect("module"))
}

/// A manifest declaring `backup.run` and hooks `hooks` (each `backup.<hook>`).
fn hooked(hooks: &[&str], max_attempts: i32) -> Value {
    let mut jobs = vec![json!({"name": "backup.run", "priority": 7, "max_attempts": 5})];
    let mut declared = serde_json::Map::new();
    for hook in hooks {
        jobs.push(json!({"name": format!("backup.{hook}"), "max_attempts": max_attempts}));
        declared.insert((*hook).to_owned(), json!(format!("backup.{hook}")));
    }
    json!({"jobs": jobs, "hooks": declared, "routes": ["/backup"]})
}

fn module_job(name: &str, module: &str) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        module_name: module.into(),
        ..new_job(name, json!({}))
    }
}

async fn module_rows(app: &TestApp) -> i64 {
    use diesel::{dsl::count_star, prelude::*};
    use diesel_async::RunQueryDsl;
    let mut conn = app.pool.get().await.unwrap();
    automation_control_plane::schema::modules::table
        .select(count_star())
        .first(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn bad_registrations_name_the_field_and_write_nothing() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let big = "x".repeat(300 * 1024);
    let cases: Vec<(pb::RegisterModuleRequest, Code, &str)> = vec![
        (
            pb::RegisterModuleRequest {
                name: "Backup_Runner".into(),
                ..valid()
            },
            Code::InvalidArgument,
            "name:",
        ),
        (
            pb::RegisterModuleRequest {
                name: "-backup".into(),
                ..valid()
            },
            Code::InvalidArgument,
            "name:",
        ),
        (
            pb::RegisterModuleRequest {
                version: "1.0".into(),
                ..valid()
            },
            Code::InvalidArgument,
            "version:",
        ),
        (
            pb::RegisterModuleRequest {
                version: "v1.0.0".into(),
                ..valid()
            },
            Code::InvalidArgument,
            "version:",
        ),
        (
            pb::RegisterModuleRequest {
                display_name: " ".into(),
                ..valid()
            },
            Code::InvalidArgument,
            "display_name:",
        ),
        (
            pb::RegisterModuleRequest {
                manifest: Some(json_struct(json!({"blob": big}))),
                ..valid()
            },
            Code::InvalidArgument,
            "manifest:",
        ),
        (
            pb::RegisterModuleRequest {
                manifest: Some(json_struct(
                    json!({"jobs": [{"name": "a"}], "hooks": {"install": "b"}}),
                )),
                ..valid()
            },
            Code::InvalidArgument,
            "manifest.hooks.install:",
        ),
        (
            pb::RegisterModuleRequest {
                manifest: Some(json_struct(json!({"jobs": "all"}))),
                ..valid()
            },
            Code::InvalidArgument,
            "manifest.jobs:",
        ),
    ];
    let mut client = client_of(app.channel().await);
    for (request, code, field) in cases {
        let status = client
            .register_module(authed(&token, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{field}: {status:?}");
        assert!(status.message().starts_with(field), "{field}: {status:?}");
    }
    assert_eq!(module_rows(&app).await, 0);
    client
        .register_module(authed(&token, valid()))
        .await
        .unwrap();
    let status = client
        .register_module(authed(&token, valid()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(module_rows(&app).await, 1);
    for key in ["no-such-module", "0190d1a4-0000-7000-8000-000000000000"] {
        assert_eq!(
            get(&app, &token, key).await.unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(
            enable(&app, &token, key).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let status = get(&app, &token, "Not A Name").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("id:"), "{status:?}");
    app.stop().await;

    fn valid() -> pb::RegisterModuleRequest {
        pb::RegisterModuleRequest {
            name: "backup-runner".into(),
            version: "1.4.0".into(),
            display_name: "Backup runner".into(),
            description: "Backs things up".into(),
            manifest: Some(json_struct(
                json!({"routes": ["/b"], "nested": {"kept": [1, "two"]}}),
            )),
        }
    }
}

#[tokio::test]
async fn the_registry_reads_lists_and_updates() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let manifest = json!({"routes": ["/b"], "custom": {"deep": [1, 2, {"x": null}]}});
    let module = register(&app, &token, "backup-runner", manifest.clone())
        .await
        .unwrap();
    assert_eq!(module.status(), pb::ModuleStatus::Registered);
    let by_name = get(&app, &token, "backup-runner").await.unwrap();
    let by_id = get(&app, &token, &module.id).await.unwrap();
    assert_eq!(by_name, by_id);
    assert_eq!(
        by_id.manifest,
        Some(json_struct(manifest)),
        "unknown keys kept verbatim"
    );
    for name in ["alpha", "bravo", "charlie", "delta"] {
        register(&app, &token, name, json!({})).await.unwrap();
    }
    enable(&app, &token, "bravo").await.unwrap();
    let mut client = client_of(app.channel().await);
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_modules(authed(
                &token,
                pb::ListModulesRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        names.extend(page.modules.into_iter().map(|m| m.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        names,
        ["alpha", "backup-runner", "bravo", "charlie", "delta"]
    );
    let enabled = client
        .list_modules(authed(
            &token,
            pb::ListModulesRequest {
                status: pb::ModuleStatus::Enabled.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .modules;
    assert_eq!(enabled.len(), 1);
    assert_eq!(enabled[0].name, "bravo");

    let renamed = client
        .update_module(authed(
            &token,
            pb::UpdateModuleRequest {
                module: Some(pb::Module {
                    id: "backup-runner".into(),
                    display_name: "Backups".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .module
        .unwrap();
    assert_eq!(renamed.display_name, "Backups");
    assert_eq!(renamed.version, "1.0.0");
    for (version, ok) in [
        ("1.0.0", false),
        ("0.9.9", false),
        ("1.0.1-rc.1", true),
        ("1.0.0", false),
        ("1.0.1", true),
    ] {
        let result = new_version(&app, &token, "backup-runner", version, None).await;
        match (ok, result) {
            (true, Ok(module)) => assert_eq!(module.version, version),
            (false, Err(status)) => {
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "{version}: {status:?}"
                );
                assert!(
                    status.message().starts_with("module.version:"),
                    "{status:?}"
                );
            }
            (ok, other) => panic!("{version}: expected ok={ok}, got {other:?}"),
        }
    }
    let status = client
        .update_module(authed(
            &token,
            pb::UpdateModuleRequest {
                module: Some(pb::Module {
                    id: "backup-runner".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["status"]),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("update_mask:"), "{status:?}");
    app.stop().await;
}

/// Every RPC a caller can send, in every state a module can be in when it
/// has no hooks, against the table of what each state allows.
#[tokio::test]
async fn every_transition_is_allowed_or_refused_as_the_lifecycle_says() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    #[derive(Debug, Clone, Copy)]
    enum Rpc {
        Enable,
        Disable,
        NewVersion,
        Delete,
    }
    // (state to prepare, rpc, expected state after or None when deleted,
    // or Err(code)).
    use pb::ModuleStatus::*;
    type Expected = Result<Option<pb::ModuleStatus>, Code>;
    let table: &[(pb::ModuleStatus, Rpc, Expected)] = &[
        (Registered, Rpc::Enable, Ok(Some(Enabled))),
        (Registered, Rpc::Disable, Err(Code::FailedPrecondition)),
        (Registered, Rpc::NewVersion, Ok(Some(Registered))),
        (Registered, Rpc::Delete, Ok(None)),
        (Enabled, Rpc::Enable, Err(Code::FailedPrecondition)),
        (Enabled, Rpc::Disable, Ok(Some(Disabled))),
        (Enabled, Rpc::NewVersion, Ok(Some(Enabled))),
        (Enabled, Rpc::Delete, Ok(None)),
        (Disabled, Rpc::Enable, Ok(Some(Enabled))),
        (Disabled, Rpc::Disable, Err(Code::FailedPrecondition)),
        (Disabled, Rpc::NewVersion, Ok(Some(Disabled))),
        (Disabled, Rpc::Delete, Ok(None)),
    ];
    for (index, (state, rpc, expected)) in table.iter().enumerate() {
        let name = format!("m{index}");
        register(&app, &token, &name, json!({})).await.unwrap();
        if *state != Registered {
            enable(&app, &token, &name).await.unwrap();
        }
        if *state == Disabled {
            disable(&app, &token, &name).await.unwrap();
        }
        let result = match rpc {
            Rpc::Enable => enable(&app, &token, &name).await.map(Some),
            Rpc::Disable => disable(&app, &token, &name).await.map(Some),
            Rpc::NewVersion => new_version(&app, &token, &name, "2.0.0", None)
                .await
                .map(Some),
            Rpc::Delete => delete(&app, &token, &name).await.map(|r| {
                assert!(r.deleted);
                None
            }),
        };
        match (expected, result) {
            (Ok(Some(status)), Ok(Some(module))) => {
                assert_eq!(module.status(), *status, "{state:?} {rpc:?}");
                assert_eq!(get(&app, &token, &name).await.unwrap().status(), *status);
            }
            (Ok(None), Ok(None)) => {
                assert_eq!(
                    get(&app, &token, &name).await.unwrap_err().code(),
                    Code::NotFound
                );
            }
            (Err(code), Err(status)) => {
                assert_eq!(status.code(), *code, "{state:?} {rpc:?}");
                let label = state.as_str_name().trim_start_matches("MODULE_STATUS_");
                assert!(status.message().contains(label), "{status:?}");
                assert!(status.message().contains("it allows"), "{status:?}");
                let info = status.get_error_details().error_info().cloned().unwrap();
                assert_eq!(
                    (info.reason.as_str(), info.domain.as_str()),
                    ("WRONG_STATE", "automation.v1")
                );
                assert_eq!(get(&app, &token, &name).await.unwrap().status(), *state);
            }
            (expected, got) => panic!("{state:?} {rpc:?}: expected {expected:?}, got {got:?}"),
        }
    }
    // Timestamps follow the transitions.
    register(&app, &token, "stamps", json!({})).await.unwrap();
    let enabled = enable(&app, &token, "stamps").await.unwrap();
    assert!(enabled.install_time.is_some() && enabled.enable_time.is_some());
    assert!(enabled.disable_time.is_none());
    let disabled = disable(&app, &token, "stamps").await.unwrap();
    assert!(disabled.disable_time.is_some());
    assert_eq!(disabled.install_time, enabled.install_time);
    assert_eq!(audit_count(&app, "modules.enable", "success").await, 11);
    app.stop().await;
}

/// During a transition nothing but display fields may change; the hook
/// carries it out, and the install completes when a worker completes it.
#[tokio::test]
async fn an_install_hook_runs_on_a_worker_and_watch_follows_it() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    register(&app, &token, "backup", hooked(&["install"], 3))
        .await
        .unwrap();
    let mut watch = client_of(app.channel().await)
        .watch_module(authed(
            &token,
            pb::WatchModuleRequest {
                id: "backup".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.module.unwrap().status(), pb::ModuleStatus::Registered);
    // A REGISTERED module is settled: that watch ended. Watch again once
    // the install began.
    assert!(watch.message().await.unwrap().is_none());

    let installing = enable(&app, &token, "backup").await.unwrap();
    assert_eq!(installing.status(), pb::ModuleStatus::Installing);
    assert!(!installing.hook_job_id.is_empty());
    let mut watch = client_of(app.channel().await)
        .watch_module(authed(
            &token,
            pb::WatchModuleRequest {
                id: installing.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch
            .message()
            .await
            .unwrap()
            .unwrap()
            .module
            .unwrap()
            .status(),
        pb::ModuleStatus::Installing
    );
    for refused in [
        enable(&app, &token, "backup").await.unwrap_err(),
        disable(&app, &token, "backup").await.unwrap_err(),
        delete(&app, &token, "backup").await.unwrap_err(),
        new_version(&app, &token, "backup", "2.0.0", None)
            .await
            .unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("INSTALLING"), "{refused:?}");
    }
    // Its jobs cannot be enqueued before it is installed.
    let status = JobServiceClient::new(app.channel().await)
        .create_job(authed(&token, module_job("backup.run", "backup")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    assert_eq!(job_id(&assignment), installing.hook_job_id);
    let job = assignment.job.clone().unwrap();
    assert_eq!(job.name, "backup.install");
    assert_eq!(job.module_name, "backup");
    let payload = job.payload.unwrap();
    assert_eq!(
        payload,
        json_struct(
            json!({"module": "backup", "hook": "install", "version": "1.0.0", "previous_version": "1.0.0"})
        )
    );
    worker
        .complete(&assignment, json!({"installed": true}))
        .await;
    assert!(worker.ack().await.accepted);

    let last = tokio::time::timeout(PATIENCE, async {
        let mut last = None;
        while let Some(message) = watch.message().await.unwrap() {
            last = Some(message);
        }
        last
    })
    .await
    .expect("the watch ends once installed")
    .unwrap();
    let module = last.module.unwrap();
    assert_eq!(module.status(), pb::ModuleStatus::Enabled);
    assert!(module.install_time.is_some());
    assert!(module.hook_job_id.is_empty());
    assert!(!last.deleted);
    assert_eq!(
        audit_count(&app, "modules.hook_succeeded", "success").await,
        1
    );
    // Installed: its declared jobs can be enqueued, with the manifest's
    // defaults.
    let job = app
        .create_job(&token, module_job("backup.run", "backup"))
        .await;
    assert_eq!((job.priority, job.max_attempts), (7, 5));
    app.stop().await;
}

#[tokio::test]
async fn a_failing_install_hook_puts_the_module_back_with_the_error() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    register(&app, &token, "flaky", hooked(&["install"], 2))
        .await
        .unwrap();
    enable(&app, &token, "flaky").await.unwrap();
    let mut worker = app.worker(1).await;
    // The first failure retries (attempts remain); the module waits.
    let assignment = worker.assignment().await;
    worker.fail(&assignment, "disk full", false).await;
    assert!(worker.ack().await.accepted);
    assert_eq!(
        get(&app, &token, "flaky").await.unwrap().status(),
        pb::ModuleStatus::Installing
    );
    let assignment = worker.assignment().await;
    assert_eq!(assignment.attempt, 2);
    worker.fail(&assignment, "disk still full", false).await;
    assert!(worker.ack().await.accepted);
    let module = get(&app, &token, "flaky").await.unwrap();
    assert_eq!(module.status(), pb::ModuleStatus::Registered);
    assert!(module.install_time.is_none());
    let error = module.last_error.expect("the error is kept");
    let text = format!("{error:?}");
    assert!(
        text.contains("disk still full") && text.contains("install"),
        "{text}"
    );
    assert_eq!(audit_count(&app, "modules.hook_failed", "failure").await, 1);
    // Retrying a hook job is refused: enabling again is how to retry.
    let status = JobServiceClient::new(app.channel().await)
        .retry_job(authed(
            &token,
            pb::RetryJobRequest {
                id: job_id(&assignment),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let again = enable(&app, &token, "flaky").await.unwrap();
    assert_eq!(again.status(), pb::ModuleStatus::Installing);
    let assignment = worker.assignment().await;
    worker.complete(&assignment, json!({})).await;
    assert!(worker.ack().await.accepted);
    let module = get(&app, &token, "flaky").await.unwrap();
    assert_eq!(module.status(), pb::ModuleStatus::Enabled);
    assert!(
        module.last_error.is_none(),
        "a success clears the last error"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failed_update_restores_the_previous_version_and_manifest() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let v1 = json!({"jobs": [{"name": "backup.run"}], "routes": ["/v1"]});
    register(&app, &token, "backup", v1.clone()).await.unwrap();
    enable(&app, &token, "backup").await.unwrap();
    let mut worker = app.worker(1).await;
    let v2 = hooked(&["update"], 1);
    let updating = new_version(&app, &token, "backup", "2.0.0", Some(v2.clone()))
        .await
        .unwrap();
    assert_eq!(updating.status(), pb::ModuleStatus::Updating);
    assert_eq!(updating.version, "2.0.0");
    let assignment = worker.assignment().await;
    assert_eq!(assignment.job.as_ref().unwrap().name, "backup.update");
    worker.fail(&assignment, "migration failed", true).await;
    assert!(worker.ack().await.accepted);
    let restored = get(&app, &token, "backup").await.unwrap();
    assert_eq!(restored.status(), pb::ModuleStatus::Enabled);
    assert_eq!(restored.version, "1.0.0");
    assert_eq!(restored.manifest, Some(json_struct(v1)));
    assert!(format!("{:?}", restored.last_error).contains("migration failed"));
    // A second try that succeeds lands the new version.
    new_version(&app, &token, "backup", "2.0.0", Some(v2.clone()))
        .await
        .unwrap();
    let assignment = worker.assignment().await;
    worker.complete(&assignment, json!({})).await;
    assert!(worker.ack().await.accepted);
    let updated = get(&app, &token, "backup").await.unwrap();
    assert_eq!(updated.status(), pb::ModuleStatus::Enabled);
    assert_eq!(updated.version, "2.0.0");
    assert_eq!(updated.manifest, Some(json_struct(v2)));
    app.stop().await;
}

#[tokio::test]
async fn cancelling_a_hook_job_undoes_its_transition() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    register(&app, &token, "backup", hooked(&["install"], 3))
        .await
        .unwrap();
    let installing = enable(&app, &token, "backup").await.unwrap();
    JobServiceClient::new(app.channel().await)
        .cancel_job(authed(
            &token,
            pb::CancelJobRequest {
                id: installing.hook_job_id.clone(),
            },
        ))
        .await
        .unwrap();
    let module = get(&app, &token, "backup").await.unwrap();
    assert_eq!(module.status(), pb::ModuleStatus::Registered);
    assert!(format!("{:?}", module.last_error).contains("cancelled"));
    app.stop().await;
}

/// N callers enable the same module at once: one transition, one hook job,
/// and every other caller is told the state it found.
#[tokio::test]
async fn concurrent_transitions_make_exactly_one() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    register(&app, &token, "backup", hooked(&["install"], 3))
        .await
        .unwrap();
    let results = futures::future::join_all((0..12).map(|_| enable(&app, &token, "backup"))).await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for status in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("INSTALLING"), "{status:?}");
    }
    let hook_jobs = JobServiceClient::new(app.channel().await)
        .list_jobs(authed(
            &token,
            pb::ListJobsRequest {
                module_name: "backup".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(hook_jobs.len(), 1);
    // And a race of disable against delete on an enabled module: one wins.
    register(&app, &token, "other", json!({})).await.unwrap();
    enable(&app, &token, "other").await.unwrap();
    let (disabled, deleted) = tokio::join!(
        disable(&app, &token, "other"),
        delete(&app, &token, "other")
    );
    match (disabled, deleted) {
        // Disable first, then delete of the DISABLED module: both legal.
        (Ok(_), Ok(removal)) => assert!(removal.deleted),
        (Err(status), Ok(_)) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
        other => panic!("{other:?}"),
    }
    app.stop().await;
}

#[tokio::test]
async fn disabling_holds_pending_jobs_until_enabled_again() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    register(&app, &token, "reports", json!({})).await.unwrap();
    enable(&app, &token, "reports").await.unwrap();
    let keyed = pb::CreateJobRequest {
        idempotency_key: "reports-nightly".into(),
        ..module_job("reports.build", "reports")
    };
    let held = app.create_job(&token, keyed.clone()).await;
    disable(&app, &token, "reports").await.unwrap();
    // Repeating a create the module accepted returns that job, whatever
    // state the module is in now.
    assert_eq!(app.create_job(&token, keyed).await.id, held.id);
    let mut worker = app.worker(4).await;
    // A job of no module still runs: the worker is there and idle.
    let free = app
        .create_job(&token, new_job("unrelated", json!({})))
        .await;
    let assignment = worker.assignment().await;
    assert_eq!(job_id(&assignment), free.id);
    worker.silent_for(Duration::from_millis(700)).await;
    assert_eq!(
        app.job(&token, &held.id).await.status(),
        pb::JobStatus::Pending
    );
    let status = JobServiceClient::new(app.channel().await)
        .create_job(authed(&token, module_job("reports.build", "reports")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("DISABLED"), "{status:?}");
    enable(&app, &token, "reports").await.unwrap();
    let assignment = worker.assignment().await;
    assert_eq!(job_id(&assignment), held.id);
    app.stop().await;
}

#[tokio::test]
async fn deleting_cancels_pending_jobs_tells_running_workers_and_runs_the_remove_hook() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let manifest = json!({
        "jobs": [{"name": "backup.run"}, {"name": "backup.remove"}],
        "hooks": {"remove": "backup.remove"},
    });
    register(&app, &token, "backup", manifest).await.unwrap();
    enable(&app, &token, "backup").await.unwrap();
    let mut worker = app.worker(1).await;
    let running = app
        .create_job(&token, module_job("backup.run", "backup"))
        .await;
    let assignment = worker.assignment().await;
    assert_eq!(job_id(&assignment), running.id);
    let pending = app
        .create_job(&token, module_job("backup.run", "backup"))
        .await;
    let removal = delete(&app, &token, "backup").await.unwrap();
    assert!(!removal.deleted);
    let removing = removal.module.unwrap();
    assert_eq!(removing.status(), pb::ModuleStatus::Removing);
    let cancellation = worker.cancellation().await;
    assert_eq!(cancellation.lease.as_ref().unwrap().job_id, running.id);
    assert_eq!(cancellation.cause(), pb::CancellationCause::ModuleRemoved);
    for id in [&running.id, &pending.id] {
        assert_eq!(app.job(&token, id).await.status(), pb::JobStatus::Cancelled);
    }
    // The cancellation freed the worker's slot: the remove hook comes next.
    let hook = worker.assignment().await;
    assert_eq!(job_id(&hook), removing.hook_job_id);
    // The worker's late report on the cancelled job changes nothing.
    worker.complete(&assignment, json!({})).await;
    assert!(!worker.ack().await.accepted);
    let mut watch = client_of(app.channel().await)
        .watch_module(authed(
            &token,
            pb::WatchModuleRequest {
                id: "backup".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch
            .message()
            .await
            .unwrap()
            .unwrap()
            .module
            .unwrap()
            .status(),
        pb::ModuleStatus::Removing
    );
    worker.complete(&hook, json!({})).await;
    assert!(worker.ack().await.accepted);
    let last = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(last.deleted);
    assert!(
        tokio::time::timeout(PATIENCE, watch.message())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
    assert_eq!(
        get(&app, &token, "backup").await.unwrap_err().code(),
        Code::NotFound
    );
    app.stop().await;
}

/// `modules:execute` means running a module's code: creating its jobs and
/// any transition that runs a hook.
#[tokio::test]
async fn running_module_code_needs_modules_execute() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    register(
        &app,
        &admin,
        "plain",
        json!({"jobs": [{"name": "plain.run"}]}),
    )
    .await
    .unwrap();
    enable(&app, &admin, "plain").await.unwrap();
    register(&app, &admin, "hooked", hooked(&["install"], 3))
        .await
        .unwrap();
    let (_, writer) = account(
        &app,
        "writer",
        &["jobs:write", "jobs:read", "modules:write", "modules:read"],
    )
    .await;
    let (_, executor) = account(
        &app,
        "executor",
        &["jobs:write", "modules:write", "modules:execute"],
    )
    .await;

    let mut jobs = JobServiceClient::new(app.channel().await);
    let status = jobs
        .create_job(authed(&writer, module_job("plain.run", "plain")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("modules:execute"), "{status:?}");
    // Leaving module_name out changes nothing: the name is the module's.
    let status = jobs
        .create_job(authed(&writer, new_job("plain.run", json!({}))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // A job of no module needs only jobs:write.
    jobs.create_job(authed(&writer, new_job("unowned.run", json!({}))))
        .await
        .unwrap();
    let status = enable(&app, &writer, "hooked").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        get(&app, &admin, "hooked").await.unwrap().status(),
        pb::ModuleStatus::Registered
    );

    // Nor can it strip the hooks (so that a version change skips them).
    let status = client_of(app.channel().await)
        .update_module(authed(
            &writer,
            pb::UpdateModuleRequest {
                module: Some(pb::Module {
                    id: "hooked".into(),
                    manifest: Some(json_struct(json!({"jobs": [{"name": "backup.run"}]}))),
                    ..Default::default()
                }),
                update_mask: mask(&["manifest"]),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    jobs.create_job(authed(&executor, module_job("plain.run", "plain")))
        .await
        .unwrap();
    let status = jobs
        .create_job(authed(&executor, module_job("plain.other", "plain")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("name:"), "{status:?}");
    // In a batch, each request is checked against the module read once.
    let status = jobs
        .batch_create_jobs(authed(
            &executor,
            pb::BatchCreateJobsRequest {
                requests: vec![
                    module_job("plain.run", "plain"),
                    module_job("plain.run", "plain"),
                    module_job("plain.other", "plain"),
                ],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("requests[2].name:"),
        "{status:?}"
    );
    assert_eq!(
        enable(&app, &executor, "hooked").await.unwrap().status(),
        pb::ModuleStatus::Installing
    );
    app.stop().await;
}

/// A hook on its last attempt whose worker vanishes fails for good in the
/// same transaction that takes the lease back: the module never stays in
/// its transition.
#[tokio::test]
async fn a_hook_lost_with_its_worker_on_the_last_attempt_undoes_the_transition() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    register(&app, &token, "backup", hooked(&["install"], 1))
        .await
        .unwrap();
    enable(&app, &token, "backup").await.unwrap();
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    drop(worker.close());
    let module = tokio::time::timeout(PATIENCE, async {
        loop {
            let module = get(&app, &token, "backup").await.unwrap();
            if module.status() != pb::ModuleStatus::Installing {
                return module;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the module leaves INSTALLING");
    assert_eq!(module.status(), pb::ModuleStatus::Registered);
    assert!(format!("{:?}", module.last_error).contains("stream ended"));
    assert_eq!(
        app.job(&token, &job_id(&assignment)).await.status(),
        pb::JobStatus::Failed
    );
    app.stop().await;
}

/// README: CancelJob/RetryJob need `modules:execute` for a job that names a
/// module. A caller with only jobs:write aborts a module's install.
#[tokio::test]
async fn cancel_of_a_hook_job_needs_modules_execute() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let manifest = json!({"jobs": [{"name": "m.install"}], "hooks": {"install": "m.install"}});
    register_then_enable(&app, &admin, "victim", manifest).await;
    let module = ModuleServiceClient::new(app.channel().await)
        .get_module(authed(
            &admin,
            pb::GetModuleRequest {
                id: "victim".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .module
        .unwrap();
    assert_eq!(module.status(), pb::ModuleStatus::Installing);
    let (_, writer) = account(&app, "jobwriter", &["jobs:write"]).await;
    let result = JobServiceClient::new(app.channel().await)
        .cancel_job(authed(
            &writer,
            pb::CancelJobRequest {
                id: module.hook_job_id.clone(),
            },
        ))
        .await;
    let module = ModuleServiceClient::new(app.channel().await)
        .get_module(authed(
            &admin,
            pb::GetModuleRequest {
                id: "victim".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .module
        .unwrap();
    assert_eq!(
        result.as_ref().map_err(|s| s.code()).err(),
        Some(Code::PermissionDenied),
        "jobs:write alone cancelled the install hook; module now {:?}",
        module.status()
    );
    app.stop().await;
}

#[tokio::test]
async fn retry_of_a_module_job_needs_modules_execute() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    register_then_enable(
        &app,
        &admin,
        "plain",
        json!({"jobs": [{"name": "plain.run"}]}),
    )
    .await;
    let job = app
        .create_job(
            &admin,
            pb::CreateJobRequest {
                module_name: "plain".into(),
                max_attempts: 1,
                ..new_job("plain.run", json!({}))
            },
        )
        .await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    worker.fail(&assignment, "boom", true).await;
    worker.ack().await;
    let (_, writer) = account(&app, "jobwriter", &["jobs:write"]).await;
    let status = JobServiceClient::new(app.channel().await)
        .retry_job(authed(&writer, pb::RetryJobRequest { id: job.id.clone() }))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    app.stop().await;
}

async fn register_then_enable(app: &TestApp, token: &str, name: &str, manifest: Value) {
    register(app, token, name, manifest).await.unwrap();
    enable(app, token, name).await.unwrap();
}

/// A running job of a module disabled meanwhile that comes back to the
/// queue (released, failed, lost) is held like the module's other pending
/// jobs, and runs once the module is enabled again.
#[tokio::test]
async fn a_job_returning_to_a_disabled_module_is_held() {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    register_then_enable(&app, &token, "reports", json!({})).await;
    let mut worker = app.worker(1).await;
    let job = app
        .create_job(&token, module_job("reports.build", "reports"))
        .await;
    let assignment = worker.assignment().await;
    disable(&app, &token, "reports").await.unwrap();
    worker
        .send(
            automation_control_plane::proto::automation_v1::work_request::Kind::Release(
                pb::JobRelease {
                    lease: Some(common::worker::lease_of(&assignment)),
                    reason: "later".into(),
                },
            ),
        )
        .await;
    assert!(worker.ack().await.accepted);
    let held: bool = {
        use automation_control_plane::schema::jobs::dsl::*;
        let mut conn = app.pool.get().await.unwrap();
        jobs.filter(id.eq(job.id.parse::<uuid::Uuid>().unwrap()))
            .select(held)
            .first(&mut conn)
            .await
            .unwrap()
    };
    assert!(
        held,
        "the released job is held while its module is DISABLED"
    );
    worker.silent_for(Duration::from_millis(300)).await;
    enable(&app, &token, "reports").await.unwrap();
    assert_eq!(job_id(&worker.assignment().await), job.id);
    app.stop().await;
}
