//! Schedules over real gRPC: CRUD with a field mask, bad input named by
//! field, pause/resume/trigger, the permissions a schedule needs (from the
//! attacker's side), the default roles' new permissions. How schedules
//! fire (replicas, overlap, missed fire times, modules) is in `firing`.

mod firing;

use crate::common;

use automation_control_plane::proto::automation_v1::{
    self as pb, schedule_service_client::ScheduleServiceClient,
};
use common::{TestApp, account, audit_count, authed, mask, worker::json_struct};
use serde_json::json;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt as _;

pub(crate) fn client(channel: Channel) -> ScheduleServiceClient<Channel> {
    ScheduleServiceClient::new(channel)
}

/// A CreateSchedule request for `name` firing `cron`, creating jobs named
/// `job`.
pub(crate) fn new_schedule(name: &str, cron: &str, job: &str) -> pb::CreateScheduleRequest {
    pb::CreateScheduleRequest {
        name: name.into(),
        cron_expression: cron.into(),
        job_template: Some(pb::JobTemplate {
            name: job.into(),
            payload: Some(json_struct(json!({"from": name}))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) async fn create(
    app: &TestApp,
    token: &str,
    request: pb::CreateScheduleRequest,
) -> Result<pb::Schedule, Status> {
    client(app.channel().await)
        .create_schedule(authed(token, request))
        .await
        .map(|r| r.into_inner().schedule.expect("schedule"))
}

pub(crate) async fn get(app: &TestApp, token: &str, key: &str) -> Result<pb::Schedule, Status> {
    client(app.channel().await)
        .get_schedule(authed(token, pb::GetScheduleRequest { id: key.into() }))
        .await
        .map(|r| r.into_inner().schedule.expect("schedule"))
}

pub(crate) async fn pause(app: &TestApp, token: &str, key: &str) -> Result<pb::Schedule, Status> {
    client(app.channel().await)
        .pause_schedule(authed(token, pb::PauseScheduleRequest { id: key.into() }))
        .await
        .map(|r| r.into_inner().schedule.expect("schedule"))
}

/// The jobs ListJobs finds for a schedule (every page).
pub(crate) async fn jobs_of(app: &TestApp, token: &str, schedule: &str) -> Vec<pb::Job> {
    let mut client = common::JobServiceClient::new(app.channel().await);
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_jobs(authed(
                token,
                pb::ListJobsRequest {
                    schedule_id: schedule.into(),
                    page_size: 500,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("list jobs")
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return jobs;
        }
        page_token = page.next_page_token;
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

fn seconds(time: &Option<prost_types::Timestamp>) -> i64 {
    time.as_ref().expect("a time").seconds
}

#[tokio::test]
async fn create_read_list_update_and_delete() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let created = create(
        &app,
        &token,
        pb::CreateScheduleRequest {
            description: "every night".into(),
            time_zone: "Europe/Paris".into(),
            ..new_schedule("nightly-backup", "0 3 * * *", "backup.run")
        },
    )
    .await
    .expect("create");
    assert_eq!(created.time_zone, "Europe/Paris");
    assert_eq!(created.overlap_policy(), pb::OverlapPolicy::Allow);
    assert_eq!(created.missed_fire_policy(), pb::MissedFirePolicy::Skip);
    assert!(!created.paused);
    assert!(created.last_fire_time.is_none() && created.last_job_id.is_empty());
    let next = seconds(&created.next_fire_time);
    assert!(next > chrono::Utc::now().timestamp());
    // 03:00 in Paris is 01:00 or 02:00 UTC.
    let hour = chrono::DateTime::from_timestamp(next, 0)
        .unwrap()
        .format("%H")
        .to_string();
    assert!(hour == "01" || hour == "02", "{hour}");
    assert_eq!(get(&app, &token, &created.id).await.unwrap(), created);
    assert_eq!(get(&app, &token, "nightly-backup").await.unwrap(), created);

    let status = create(&app, &token, new_schedule("nightly-backup", "@daily", "x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    for name in ["a-first", "b-second", "c-third"] {
        create(&app, &token, new_schedule(name, "@hourly", "report.build"))
            .await
            .unwrap();
    }
    let mut schedules = client(app.channel().await);
    let first = schedules
        .list_schedules(authed(
            &token,
            pb::ListSchedulesRequest {
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = first.schedules.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a-first", "b-second"]);
    let rest = schedules
        .list_schedules(authed(
            &token,
            pb::ListSchedulesRequest {
                page_size: 2,
                page_token: first.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = rest.schedules.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["c-third", "nightly-backup"]);
    assert!(rest.next_page_token.is_empty());

    // Only what the mask names changes; a new expression moves the next
    // fire time.
    let updated = schedules
        .update_schedule(authed(
            &token,
            pb::UpdateScheduleRequest {
                schedule: Some(pb::Schedule {
                    id: created.id.clone(),
                    cron_expression: "*/5 * * * *".into(),
                    description: "not applied".into(),
                    overlap_policy: pb::OverlapPolicy::Skip.into(),
                    ..Default::default()
                }),
                update_mask: mask(&["cron_expression", "overlap_policy"]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(updated.cron_expression, "*/5 * * * *");
    assert_eq!(updated.description, "every night");
    assert_eq!(updated.overlap_policy(), pb::OverlapPolicy::Skip);
    assert_eq!(updated.job_template, created.job_template);
    assert!(seconds(&updated.next_fire_time) - chrono::Utc::now().timestamp() <= 300);
    assert_eq!(seconds(&updated.next_fire_time) % 300, 0);

    let renamed = schedules
        .update_schedule(authed(
            &token,
            pb::UpdateScheduleRequest {
                schedule: Some(pb::Schedule {
                    id: "nightly-backup".into(),
                    name: "five-minutely".into(),
                    job_template: Some(pb::JobTemplate {
                        name: "backup.verify".into(),
                        priority: 7,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                update_mask: mask(&["name", "job_template"]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(renamed.name, "five-minutely");
    let template = renamed.job_template.unwrap();
    assert_eq!(
        (template.name.as_str(), template.priority),
        ("backup.verify", 7)
    );
    assert_eq!(renamed.next_fire_time, updated.next_fire_time);

    schedules
        .delete_schedule(authed(
            &token,
            pb::DeleteScheduleRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .unwrap();
    let status = get(&app, &token, &created.id).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(audit_count(&app, "schedules.create", "success").await, 4);
    assert_eq!(audit_count(&app, "schedules.update", "success").await, 2);
    assert_eq!(audit_count(&app, "schedules.delete", "success").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_names_its_field() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let cases: Vec<(pb::CreateScheduleRequest, &str)> = vec![
        (new_schedule("a", "* * * *", "x"), "cron_expression"),
        (new_schedule("a", "61 * * * *", "x"), "cron_expression"),
        (new_schedule("a", "@reboot", "x"), "cron_expression"),
        (new_schedule("a", "0 0 30 2 *", "x"), "cron_expression"),
        (
            pb::CreateScheduleRequest {
                time_zone: "Mars/Olympus_Mons".into(),
                ..new_schedule("a", "@daily", "x")
            },
            "time_zone",
        ),
        (new_schedule("a b", "@daily", "x"), "name"),
        (
            new_schedule("a", "@daily", "bad name!"),
            "job_template.name",
        ),
        (
            pb::CreateScheduleRequest {
                job_template: None,
                ..new_schedule("a", "@daily", "x")
            },
            "job_template",
        ),
        (
            pb::CreateScheduleRequest {
                job_template: Some(pb::JobTemplate {
                    name: "x".into(),
                    priority: 5000,
                    ..Default::default()
                }),
                ..new_schedule("a", "@daily", "x")
            },
            "job_template.priority",
        ),
        (
            pb::CreateScheduleRequest {
                job_template: Some(pb::JobTemplate {
                    name: "x".into(),
                    payload: Some(json_struct(json!({"blob": "x".repeat(70 * 1024)}))),
                    ..Default::default()
                }),
                ..new_schedule("a", "@daily", "x")
            },
            "job_template.payload",
        ),
        (
            pb::CreateScheduleRequest {
                overlap_policy: 9,
                ..new_schedule("a", "@daily", "x")
            },
            "overlap_policy",
        ),
    ];
    for (request, field) in cases {
        let status = create(&app, &token, request.clone()).await.unwrap_err();
        assert_eq!(field_of(&status), field, "{request:?}");
    }
    let schedule = create(&app, &token, new_schedule("good", "@daily", "x"))
        .await
        .unwrap();
    let status = client(app.channel().await)
        .update_schedule(authed(
            &token,
            pb::UpdateScheduleRequest {
                schedule: Some(pb::Schedule {
                    id: schedule.id.clone(),
                    time_zone: "Nowhere/Special".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["time_zone"]),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "schedule.time_zone");
    let status = client(app.channel().await)
        .update_schedule(authed(
            &token,
            pb::UpdateScheduleRequest {
                schedule: Some(pb::Schedule {
                    id: schedule.id,
                    ..Default::default()
                }),
                update_mask: mask(&["paused"]),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&status), "update_mask");
    app.stop().await;
}

#[tokio::test]
async fn pause_resume_and_trigger() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let schedule = create(
        &app,
        &token,
        pb::CreateScheduleRequest {
            paused: true,
            ..new_schedule("by-hand", "0 0 1 1 *", "report.build")
        },
    )
    .await
    .unwrap();
    assert!(schedule.paused && schedule.next_fire_time.is_none());

    // A run now, paused or not: one job, tied to the schedule, not a fire
    // time.
    let triggered = client(app.channel().await)
        .trigger_schedule(authed(
            &token,
            pb::TriggerScheduleRequest {
                id: "by-hand".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let job = triggered.job.unwrap();
    let after = triggered.schedule.unwrap();
    assert_eq!(job.schedule_id, schedule.id);
    assert_eq!(job.name, "report.build");
    assert_eq!(job.payload, Some(json_struct(json!({"from": "by-hand"}))));
    assert_eq!(after.last_job_id, job.id);
    assert!(after.last_fire_time.is_none() && after.next_fire_time.is_none());
    let listed = jobs_of(&app, &token, &schedule.id).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, job.id);

    let resumed = client(app.channel().await)
        .resume_schedule(authed(
            &token,
            pb::ResumeScheduleRequest {
                id: schedule.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(!resumed.paused);
    let next = chrono::DateTime::from_timestamp(seconds(&resumed.next_fire_time), 0).unwrap();
    assert_eq!(next.format("%m-%d %H:%M").to_string(), "01-01 00:00");
    let paused = pause(&app, &token, &schedule.id).await.unwrap();
    assert!(paused.paused && paused.next_fire_time.is_none());
    assert_eq!(audit_count(&app, "schedules.trigger", "success").await, 1);
    assert_eq!(audit_count(&app, "schedules.resume", "success").await, 1);
    assert_eq!(audit_count(&app, "schedules.pause", "success").await, 1);
    app.stop().await;
}

/// A schedule is a standing CreateJob: holding `schedules:write` is not a
/// way around `jobs:write`, nor `jobs:write` around `modules:execute`.
#[tokio::test]
async fn a_schedule_needs_what_its_jobs_need() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, reader) = account(&app, "reader", &["schedules:read"]).await;
    let (_, writer) = account(&app, "writer", &["schedules:write", "schedules:read"]).await;
    let (_, jobber) = account(
        &app,
        "jobber",
        &[
            "schedules:write",
            "schedules:read",
            "jobs:write",
            "jobs:read",
        ],
    )
    .await;
    let theirs = create(
        &app,
        &admin,
        new_schedule("theirs", "@daily", "report.build"),
    )
    .await
    .unwrap();

    // Read-only: reads, writes nothing.
    assert_eq!(get(&app, &reader, "theirs").await.unwrap().id, theirs.id);
    let status = create(&app, &reader, new_schedule("mine", "@daily", "x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // schedules:write without jobs:write: refused, whichever write.
    let status = create(&app, &writer, new_schedule("mine", "@daily", "x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("jobs:write"), "{status:?}");
    let status = pause(&app, &writer, "theirs").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client(app.channel().await)
        .trigger_schedule(authed(
            &writer,
            pb::TriggerScheduleRequest {
                id: "theirs".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client(app.channel().await)
        .delete_schedule(authed(
            &writer,
            pb::DeleteScheduleRequest {
                id: "theirs".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // jobs:write without modules:execute: no schedule of a module's jobs,
    // and no hands on one.
    firing::module_with_job(&app, &admin, "nightly", "nightly.run").await;
    let status = create(
        &app,
        &jobber,
        new_schedule("mod-run", "@daily", "nightly.run"),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let module_schedule = create(
        &app,
        &admin,
        new_schedule("mod-run", "@daily", "nightly.run"),
    )
    .await
    .unwrap();
    assert_eq!(module_schedule.job_template.unwrap().module_name, "nightly");
    let status = pause(&app, &jobber, "mod-run").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client(app.channel().await)
        .update_schedule(authed(
            &jobber,
            pb::UpdateScheduleRequest {
                schedule: Some(pb::Schedule {
                    id: "theirs".into(),
                    job_template: Some(pb::JobTemplate {
                        name: "nightly.run".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                update_mask: mask(&["job_template"]),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // What it may do, it does.
    create(
        &app,
        &jobber,
        new_schedule("mine", "@daily", "report.build"),
    )
    .await
    .unwrap();
    pause(&app, &jobber, "theirs").await.unwrap();
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct Permissions {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    permissions: serde_json::Value,
}

/// The migration gives a database seeded before schedules existed the new
/// permissions, on `operator` and `viewer` only, and adds nothing twice.
#[tokio::test]
async fn existing_default_roles_get_the_new_permissions() {
    use diesel_async::RunQueryDsl as _;
    let app = TestApp::spawn().await;
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query(
        r#"UPDATE roles SET permissions = permissions - 'schedules:read' - 'schedules:write'"#,
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let up = include_str!("../../migrations/2026-12-02-000001_schedules/up.sql");
    let grants = &up[up.find("-- The default roles").expect("the roles part")..];
    for _ in 0..2 {
        diesel_async::SimpleAsyncConnection::batch_execute(&mut *conn, grants)
            .await
            .unwrap();
    }
    let roles: Vec<Permissions> =
        diesel::sql_query("SELECT name, permissions FROM roles ORDER BY name")
            .load(&mut conn)
            .await
            .unwrap();
    for role in roles {
        let list: Vec<&str> = role
            .permissions
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str())
            .filter(|p| p.starts_with("schedules:"))
            .collect();
        let expected: &[&str] = match role.name.as_str() {
            "operator" => &["schedules:read", "schedules:write"],
            "viewer" => &["schedules:read"],
            _ => &[],
        };
        assert_eq!(list, expected, "{}", role.name);
    }
    app.stop().await;
}

/// `SCHEDULE_MIN_INTERVAL_SECS` refuses an expression firing too often, by
/// field, on create and update; `SCHEDULES_MAX` bounds an account's
/// schedules, also when creates race.
#[tokio::test]
async fn schedules_are_bounded_in_rate_and_number() {
    let mut options = common::TestOptions::default();
    options.server.schedules.min_interval = std::time::Duration::from_secs(60);
    options.server.schedules.max_per_creator = 2;
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    for cron in ["* * * * * *", "0,30 * * * * *", "*/5 0 * * * *"] {
        let refused = create(&app, &token, new_schedule("often", cron, "often.job"))
            .await
            .unwrap_err();
        assert_eq!(field_of(&refused), "cron_expression", "{cron}");
        assert!(
            refused.message().contains("SCHEDULE_MIN_INTERVAL_SECS"),
            "{refused:?}"
        );
    }
    let first = create(
        &app,
        &token,
        new_schedule("minutely", "0 * * * * *", "m.job"),
    )
    .await
    .unwrap();
    let refused = client(app.channel().await)
        .update_schedule(authed(
            &token,
            pb::UpdateScheduleRequest {
                schedule: Some(pb::Schedule {
                    id: first.id.clone(),
                    cron_expression: "*/10 * * * * *".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["cron_expression"]),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&refused), "schedule.cron_expression");

    // One left under the bound: of eight racing creates, exactly one wins.
    let racers = (0..8).map(|n| {
        let (app, token) = (&app, &token);
        async move {
            create(
                app,
                token,
                new_schedule(&format!("racer-{n}"), "@hourly", "r.job"),
            )
            .await
        }
    });
    let results = futures::future::join_all(racers).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        let info = refused.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "LIMIT_EXCEEDED");
        assert_eq!(
            info.metadata.get("limit").map(String::as_str),
            Some("SCHEDULES_MAX")
        );
    }
    // Deleting one makes room.
    client(app.channel().await)
        .delete_schedule(authed(&token, pb::DeleteScheduleRequest { id: first.id }))
        .await
        .unwrap();
    create(&app, &token, new_schedule("again", "@daily", "r.job"))
        .await
        .unwrap();
    app.stop().await;
}
