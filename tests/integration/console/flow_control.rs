//! The console's flow-control pages: Queues (pause and resume), Dead
//! letters (bulk retry of a group), Schedules (create, trigger) and the
//! job page's progress and schedule, in headless Chromium with a real
//! worker; and, with a plain client, what a person without the write
//! permissions sees and what a forged POST gets.

use std::time::Duration;

use automation_control_plane::{proto::automation_v1 as pb, seed};
use pb::work_request::Kind as Out;
use serde_json::json;

use super::{console_app, wait_for_status};
use crate::common::{
    ADMIN_PASSWORD, account, audit_count,
    browser::{self, Browser, request, submit},
    new_job,
    worker::{TestWorker, job_id, json_struct, lease_of},
};

/// How long a worker is watched for a job it must not get.
const QUIET: Duration = Duration::from_millis(1500);

/// The next `n` assignments (they may come before any report is acked).
async fn assignments(worker: &mut TestWorker, n: usize) -> Vec<pb::JobAssignment> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(worker.assignment().await);
    }
    got
}

#[tokio::test]
async fn a_paused_queue_holds_its_jobs_and_a_dead_letter_group_is_retried_in_bulk() {
    let Some(browser) = Browser::start("console::flow_control::a_paused_queue").await else {
        return;
    };
    let (app, http) = console_app().await;
    let base = format!("http://{http}");
    let token = app.admin_token().await;
    let mut held = Vec::new();
    for n in 0..2 {
        held.push(
            app.create_job(&token, new_job("mail-send", json!({"n": n})))
                .await
                .id,
        );
    }
    browser
        .login(&base, seed::ADMIN_EMAIL, ADMIN_PASSWORD)
        .await;

    // Paused from the Queues page: a worker that connects gets nothing.
    browser
        .client
        .goto(&format!("{base}/console/queues"))
        .await
        .expect("queues");
    browser.wait_for_text("mail-send").await;
    browser
        .click("tr#queue-mail-send form[action$='/pause'] button")
        .await;
    browser.wait_for_text("badge paused").await;
    assert_eq!(audit_count(&app, "jobs.pause_queue", "success").await, 1);
    browser.screenshot("queues").await;
    let mut worker = app.worker(4).await;
    worker.silent_for(QUIET).await;

    // Resumed: the worker gets both.
    browser
        .click("tr#queue-mail-send form[action$='/resume'] button")
        .await;
    browser.wait_for_text("badge active").await;
    assert_eq!(audit_count(&app, "jobs.resume_queue", "success").await, 1);
    let mut got = Vec::new();
    for assignment in assignments(&mut worker, 2).await {
        got.push(job_id(&assignment));
        worker.complete(&assignment, json!({})).await;
        worker.ack().await;
    }
    got.sort();
    held.sort();
    assert_eq!(got, held);

    // Four failures of one job name: three alike, one not.
    let other = app
        .create_job(&token, new_job("report-build", json!({"n": 0})))
        .await;
    let assignment = worker.assignment().await;
    worker
        .fail(&assignment, "timeout talking to the warehouse", true)
        .await;
    worker.ack().await;
    wait_for_status(&app, &token, &other.id, pb::JobStatus::Failed).await;
    let mut alike = Vec::new();
    for n in 1..4 {
        let job = app
            .create_job(&token, new_job("report-build", json!({"n": n})))
            .await;
        let assignment = worker.assignment().await;
        worker
            .fail(&assignment, &format!("disk full on /dev/sda{n}"), true)
            .await;
        worker.ack().await;
        wait_for_status(&app, &token, &job.id, pb::JobStatus::Failed).await;
        alike.push(job.id);
    }

    // Grouped by name and message start; retried in bulk.
    browser
        .client
        .goto(&format!("{base}/console/dead-letters?chars=20"))
        .await
        .expect("dead letters");
    browser.wait_for_text("disk full on /dev/s").await;
    let page = browser.source().await;
    assert!(page.contains("timeout talking to t"), "{page}");
    browser.screenshot("dead-letters").await;
    browser
        .click("tr.group form[action$='/retry']:has(input[value^='disk full']) button")
        .await;
    let _ = browser.client.accept_alert().await;
    browser.wait_for_text("Retried 3 jobs").await;
    assert_eq!(audit_count(&app, "jobs.batch_retry", "success").await, 1);
    let mut again = Vec::new();
    for assignment in assignments(&mut worker, 3).await {
        again.push(job_id(&assignment));
        worker.complete(&assignment, json!({"ok": true})).await;
        worker.ack().await;
    }
    again.sort();
    alike.sort();
    assert_eq!(again, alike, "the group's jobs run again");
    for id in &alike {
        wait_for_status(&app, &token, id, pb::JobStatus::Completed).await;
    }
    // The other group stays a dead letter.
    assert_eq!(
        app.job(&token, &other.id).await.status(),
        pb::JobStatus::Failed
    );
    worker.silent_for(QUIET).await;
    browser.close().await;
}

#[tokio::test]
async fn a_schedule_is_created_and_triggered_and_its_job_shows_progress_live() {
    let Some(browser) = Browser::start("console::flow_control::a_schedule").await else {
        return;
    };
    let (app, http) = console_app().await;
    let base = format!("http://{http}");
    let token = app.admin_token().await;
    browser
        .login(&base, seed::ADMIN_EMAIL, ADMIN_PASSWORD)
        .await;

    // Created through the form.
    browser
        .client
        .goto(&format!("{base}/console/schedules"))
        .await
        .expect("schedules");
    let form = browser
        .client
        .form(fantoccini::Locator::Css("form.create"))
        .await
        .expect("new schedule form");
    form.set_by_name("name", "nightly-report")
        .await
        .expect("name");
    form.set_by_name("cron", "0 3 * * *").await.expect("cron");
    form.set_by_name("time_zone", "Europe/Paris")
        .await
        .expect("zone");
    form.set_by_name("job_name", "report-build")
        .await
        .expect("job name");
    form.set_by_name("payload", r#"{"month": "2026-11"}"#)
        .await
        .expect("payload");
    form.submit().await.expect("create");
    browser.wait_for_text("Trigger now").await;
    assert_eq!(audit_count(&app, "schedules.create", "success").await, 1);
    let url = browser.client.current_url().await.expect("url");
    let schedule = url
        .path()
        .rsplit('/')
        .next()
        .expect("the schedule's id")
        .to_owned();
    assert_eq!(schedule.len(), 36, "{url}");

    // Triggered: a job of the schedule, whose page links the schedule.
    browser.click("form[action$='/trigger'] button").await;
    let _ = browser.client.accept_alert().await;
    browser.wait_for_url("/console/jobs/").await;
    browser.wait_for_text("badge pending").await;
    assert!(
        browser
            .source()
            .await
            .contains(&format!("/console/schedules/{schedule}")),
        "the job's page links its schedule"
    );
    assert_eq!(audit_count(&app, "schedules.trigger", "success").await, 1);
    let url = browser.client.current_url().await.expect("url");
    let job = url.path().rsplit('/').next().expect("job id").to_owned();
    assert_eq!(
        app.job(&token, &job).await.schedule_id,
        schedule,
        "the job is the schedule's"
    );

    // The worker reports progress: the open page follows it by itself.
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    assert_eq!(job_id(&assignment), job);
    browser.wait_live("badge running").await;
    worker
        .send(Out::Progress(pb::JobProgressReport {
            lease: Some(lease_of(&assignment)),
            percent: Some(40.0),
            message: "copying files".into(),
            details: Some(json_struct(json!({"files": 12}))),
        }))
        .await;
    browser.wait_live("copying files").await;
    let page = browser.source().await;
    assert!(
        page.contains("40.0%") && page.contains("\"files\": 12"),
        "{page}"
    );
    browser.screenshot("job-progress").await;

    // The job list filters by schedule; the schedule links its last job.
    browser
        .client
        .goto(&format!("{base}/console/jobs?schedule={schedule}"))
        .await
        .expect("jobs of the schedule");
    browser.wait_for_text(&job[..8]).await;
    browser
        .client
        .goto(&format!("{base}/console/schedules/{schedule}"))
        .await
        .expect("schedule");
    browser.wait_for_text("Recent jobs").await;
    assert!(browser.source().await.contains(&job));
    browser.screenshot("schedule").await;
    browser
        .client
        .goto(&format!("{base}/console/schedules"))
        .await
        .expect("schedules");
    browser.wait_for_text("Europe/Paris").await;
    browser.screenshot("schedules").await;
    worker.complete(&assignment, json!({"rows": 3})).await;
    worker.ack().await;

    // Paused from the list, then deleted from its page.
    browser
        .click("tr#schedule-nightly-report form[action$='/pause'] button")
        .await;
    browser.wait_for_text("badge paused").await;
    assert_eq!(audit_count(&app, "schedules.pause", "success").await, 1);
    browser
        .client
        .goto(&format!("{base}/console/schedules/{schedule}"))
        .await
        .expect("schedule");
    browser.click("form[action$='/delete'] button").await;
    let _ = browser.client.accept_alert().await;
    browser.wait_for_text("No schedule.").await;
    assert_eq!(audit_count(&app, "schedules.delete", "success").await, 1);
    browser.close().await;
}

/// The forms of the new pages' write actions.
const WRITE_FORMS: &[&str] = &[
    "action=\"/console/queues/pause\"",
    "action=\"/console/queues/resume\"",
    "action=\"/console/dead-letters/retry\"",
    "action=\"/console/dead-letters/cancel\"",
    "/trigger\"",
    "/pause\"",
    "/delete\"",
    "New schedule",
];

#[tokio::test]
async fn a_reader_sees_no_flow_control_actions_and_a_forged_post_is_refused_and_audited() {
    let (app, http) = console_app().await;
    let token = app.admin_token().await;
    let admin = browser::login(http, seed::ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let created = submit(
        http,
        &admin,
        "/console/schedules",
        "/console/schedules",
        "name=hourly&cron=0+*+*+*+*&time_zone=&job_name=report-build&payload=&overlap=SKIP&missed=SKIP",
    )
    .await;
    assert_eq!(created.status, 303, "{created:?}");
    let schedule = created.location_id();
    // A refused form says why, naming the field, and keeps what was typed.
    let refused = submit(
        http,
        &admin,
        "/console/schedules",
        "/console/schedules",
        "name=broken&cron=not+a+cron&job_name=report-build",
    )
    .await;
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.body.contains("cron") && refused.body.contains("value=\"broken\""));

    // A failure and a pause, so that every page has rows and actions.
    let job = app
        .create_job(&token, new_job("report-build", json!({})))
        .await;
    let mut worker = app.worker(1).await;
    let assignment = worker.assignment().await;
    worker.fail(&assignment, "disk full", true).await;
    worker.ack().await;
    wait_for_status(&app, &token, &job.id, pb::JobStatus::Failed).await;
    let pause = submit(
        http,
        &admin,
        "/console/queues",
        "/console/queues/pause",
        "kind=job&name=mail-send",
    )
    .await;
    assert_eq!(pause.status, 303, "{pause:?}");

    // The admin sees the actions; the reader sees none.
    let pages = [
        ("/console/queues".to_owned(), "mail-send"),
        ("/console/dead-letters".to_owned(), "disk full"),
        ("/console/schedules".to_owned(), "hourly"),
        (format!("/console/schedules/{schedule}"), "hourly"),
    ];
    for (path, expected) in &pages {
        let page = request(http, "GET", path, Some(&admin), None).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.body.contains(expected), "{path}: {}", page.body);
        assert!(
            WRITE_FORMS.iter().any(|form| page.body.contains(form)),
            "{path}: the admin has actions"
        );
        assert!(!page.body.contains("<script>"), "{path}: inline script");
        assert!(
            page.header("content-security-policy")
                .is_some_and(|p| p.starts_with("default-src 'self'"))
        );
    }
    account(&app, "reader", &["jobs:read", "schedules:read"]).await;
    let reader = browser::login(http, "reader", "user-password-1").await;
    for (path, expected) in &pages {
        let page = request(http, "GET", path, Some(&reader), None).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.body.contains(expected), "{path}");
        for form in WRITE_FORMS {
            assert!(
                !page.body.contains(form),
                "{path} offers {form} to a reader"
            );
        }
    }

    // The reader forging each action, with a valid CSRF token: refused,
    // audited as denials, nothing changed.
    let csrf = request(http, "GET", "/console/queues", Some(&reader), None)
        .await
        .csrf();
    let forged = [
        (
            "/console/queues/resume".to_owned(),
            "kind=job&name=mail-send",
        ),
        (
            "/console/dead-letters/retry".to_owned(),
            "name=report-build&prefix=disk&window=7d",
        ),
        (format!("/console/schedules/{schedule}/trigger"), ""),
        (format!("/console/schedules/{schedule}/delete"), ""),
        (
            "/console/schedules".to_owned(),
            "name=x&cron=*+*+*+*+*&job_name=y",
        ),
    ];
    let denials = audit_count(&app, "auth.denied", "failure").await;
    for (path, form) in &forged {
        let answer = request(
            http,
            "POST",
            path,
            Some(&reader),
            Some(&format!("csrf={csrf}&{form}")),
        )
        .await;
        assert_eq!(answer.status, 403, "{path}: {answer:?}");
        assert!(answer.body.contains("missing permission"), "{path}");
    }
    assert!(audit_count(&app, "auth.denied", "failure").await >= denials + forged.len() as i64);
    assert_eq!(
        app.job(&token, &job.id).await.status(),
        pb::JobStatus::Failed
    );
    let page = request(http, "GET", "/console/queues", Some(&admin), None).await;
    assert!(page.body.contains("badge paused"), "still paused");
    let page = request(http, "GET", "/console/schedules", Some(&admin), None).await;
    assert!(page.body.contains("hourly") && !page.body.contains(">x<"));
    // And without the token, even the admin is refused.
    let answer = request(
        http,
        "POST",
        "/console/queues/resume",
        Some(&admin),
        Some("kind=job&name=mail-send"),
    )
    .await;
    assert_eq!(answer.status, 403);
    assert_eq!(audit_count(&app, "jobs.resume_queue", "success").await, 0);
}

#[tokio::test]
async fn a_partial_permission_set_gets_exactly_its_actions() {
    let (app, http) = console_app().await;
    let token = app.admin_token().await;
    super::register_backup(&app, &token).await;
    let admin = browser::login(http, seed::ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let created = submit(
        http,
        &admin,
        "/console/schedules",
        "/console/schedules",
        "name=hourly&cron=0+*+*+*+*&job_name=report-build",
    )
    .await;
    assert_eq!(created.status, 303, "{created:?}");
    let schedule = created.location_id();
    app.create_job(&token, new_job("mail-send", json!({})))
        .await;

    // Jobs' reader and writer, schedules' reader only, no module rights.
    account(
        &app,
        "operator",
        &["jobs:read", "jobs:write", "schedules:read"],
    )
    .await;
    let operator = browser::login(http, "operator", "user-password-1").await;
    let page = request(http, "GET", "/console/queues", Some(&operator), None).await;
    assert!(page.body.contains("action=\"/console/queues/pause\""));
    let page = request(
        http,
        "GET",
        &format!("/console/schedules/{schedule}"),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("/trigger\"") && !page.body.contains("/pause\""));
    let csrf = page.csrf();

    // A schedule action: refused by its permission.
    let answer = request(
        http,
        "POST",
        &format!("/console/schedules/{schedule}/trigger"),
        Some(&operator),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(answer.body.contains("schedules:write"));
    // A module's queue: refused by the domain's rule (modules:execute),
    // as PauseQueue refuses it.
    let answer = request(
        http,
        "POST",
        "/console/queues/pause",
        Some(&operator),
        Some(&format!("csrf={csrf}&kind=module&name=backup")),
    )
    .await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(answer.body.contains("modules:execute"), "{}", answer.body);
    // A job name's queue: allowed, audited as the RPC.
    let answer = request(
        http,
        "POST",
        "/console/queues/pause",
        Some(&operator),
        Some(&format!("csrf={csrf}&kind=job&name=mail-send")),
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(audit_count(&app, "jobs.pause_queue", "success").await, 1);
    assert_eq!(audit_count(&app, "schedules.trigger", "success").await, 0);
    let page = request(http, "GET", "/console/queues", Some(&operator), None).await;
    assert!(page.body.contains("badge paused"));
}
