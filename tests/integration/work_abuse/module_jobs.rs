//! A caller holding `jobs:execute` only must not run modules' code: its
//! streams are given jobs of no module, whatever its hello names.

use automation_control_plane::proto::automation_v1::{self as pb, work_response::Kind as In};
use serde_json::json;
use tonic::Code;

use std::time::Duration;

use crate::common::{
    TestApp, TestOptions, account, authed, mask, new_job,
    worker::{TestWorker, hello, job_id, json_struct},
};

/// Registers and enables module `name` (a manifest declaring nothing).
async fn enabled_module(app: &TestApp, token: &str, name: &str) {
    let mut modules = pb::module_service_client::ModuleServiceClient::new(app.channel().await);
    modules
        .register_module(authed(
            token,
            pb::RegisterModuleRequest {
                name: name.into(),
                version: "1.0.0".into(),
                display_name: name.into(),
                description: String::new(),
                manifest: Some(json_struct(json!({}))),
            },
        ))
        .await
        .expect("register");
    modules
        .enable_module(authed(token, pb::EnableModuleRequest { id: name.into() }))
        .await
        .expect("enable");
}

fn module_job(name: &str, module: &str) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        module_name: module.into(),
        ..new_job(name, json!({}))
    }
}

#[tokio::test]
async fn a_jobs_execute_only_stream_gets_no_module_jobs() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    enabled_module(&app, &admin, "reports").await;
    let module_job = app
        .create_job(&admin, module_job("reports.build", "reports"))
        .await;
    let plain = app
        .create_job(&admin, new_job("plain.job", json!({})))
        .await;
    let (_, bot) = account(&app, "bot", &["jobs:execute"]).await;
    let channel = app.channel().await;

    // Asking for any job: the plain one only.
    let mut any = TestWorker::connect(channel.clone(), &bot, hello(10))
        .await
        .expect("connects");
    let assignment = any.assignment().await;
    assert_eq!(job_id(&assignment), plain.id);
    any.complete(&assignment, json!(1)).await;
    assert!(any.ack().await.accepted);
    any.silent_for(Duration::from_millis(800)).await;
    drop(any);

    // Naming the module's job: nothing.
    let mut named = TestWorker::connect(
        channel.clone(),
        &bot,
        pb::WorkerHello {
            job_names: vec!["reports.build".into()],
            ..hello(10)
        },
    )
    .await
    .expect("connects");
    named.silent_for(Duration::from_millis(800)).await;
    drop(named);

    // Naming the module: refused, the permission named.
    let status = TestWorker::connect(
        channel.clone(),
        &bot,
        pb::WorkerHello {
            module_names: vec!["reports".into()],
            ..hello(10)
        },
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("modules:execute"), "{status:?}");

    // The module's job waited for a caller that may run it; an admin's
    // stream gets it, and plain jobs too.
    let mut admin_worker = app.worker(10).await;
    assert_eq!(job_id(&admin_worker.assignment().await), module_job.id);
    let plain_again = app
        .create_job(&admin, new_job("plain.job", json!({})))
        .await;
    match admin_worker.next().await {
        Ok(Some(In::Assignment(assignment))) => assert_eq!(job_id(&assignment), plain_again.id),
        other => panic!("expected the plain job, got {other:?}"),
    }
    app.stop().await;
}

/// A stream given modules' jobs ends once its caller loses
/// `modules:execute`, the jobs it held going back to the queue.
#[tokio::test]
async fn losing_modules_execute_ends_a_stream_running_module_jobs() {
    let mut options = TestOptions::default();
    // Re-checked every second.
    options.jobs.lease = Duration::from_secs(3);
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    enabled_module(&app, &admin, "reports").await;
    let (_, runner) = account(&app, "runner", &["jobs:execute", "modules:execute"]).await;
    let mut worker = TestWorker::connect(
        app.channel().await,
        &runner,
        pb::WorkerHello {
            module_names: vec!["reports".into()],
            ..hello(10)
        },
    )
    .await
    .expect("connects");
    let job = app
        .create_job(&admin, module_job("reports.build", "reports"))
        .await;
    assert_eq!(job_id(&worker.assignment().await), job.id);

    let mut roles = pb::role_service_client::RoleServiceClient::new(app.channel().await);
    let role_id = roles
        .get_role(authed(
            &admin,
            pb::GetRoleRequest {
                id: "runner-role".into(),
            },
        ))
        .await
        .expect("role")
        .into_inner()
        .role
        .expect("role")
        .id;
    roles
        .update_role(authed(
            &admin,
            pb::UpdateRoleRequest {
                role: Some(pb::Role {
                    id: role_id,
                    permissions: vec!["jobs:execute".into()],
                    ..Default::default()
                }),
                update_mask: mask(&["permissions"]),
            },
        ))
        .await
        .expect("narrowed");

    loop {
        match worker.next().await {
            Ok(Some(In::Cancellation(_))) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
                assert!(status.message().contains("modules:execute"), "{status:?}");
                break;
            }
            other => panic!("expected the end, got {other:?}"),
        }
    }
    let back = app.job(&admin, &job.id).await;
    assert_eq!(back.status, pb::JobStatus::Pending as i32, "{back:?}");
    app.stop().await;
}
