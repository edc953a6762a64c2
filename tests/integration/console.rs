//! The web console (`/console/` on the HTTP port), in a real headless
//! Chromium over WebDriver against a live server with a real worker, and
//! with a plain HTTP client (a browser with scripts off, or a forger).
//! Without Chromium the browser tests print SKIPPED (and fail under CI).
//! `CONSOLE_SCREENSHOTS=1` saves a screenshot of each page in
//! `docs/console/`.

use crate::common;

use std::{net::SocketAddr, time::Duration};

use automation_control_plane::{http::HttpListener, proto::automation_v1 as pb, seed};
use common::{
    ADMIN_PASSWORD, AuthServiceClient, ModuleServiceClient, TestApp, TestOptions, account,
    audit_count, authed,
    browser::{self, Browser, request, submit},
    new_job,
    worker::{PATIENCE, job_id, json_struct},
};
use serde_json::json;

/// A server whose HTTP port (and so the console) is on.
async fn console_app() -> (TestApp, SocketAddr) {
    let listener = HttpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr();
    let mut options = TestOptions::default();
    options.server.http_listener = Some(listener);
    (TestApp::spawn_with(options).await, addr)
}

async fn wait_for_status(app: &TestApp, token: &str, id: &str, status: pb::JobStatus) -> pb::Job {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let job = app.job(token, id).await;
        if job.status() == status {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} stayed {:?}",
            job.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register_backup(app: &TestApp, token: &str) {
    ModuleServiceClient::new(app.channel().await)
        .register_module(authed(
            token,
            pb::RegisterModuleRequest {
                name: "backup".into(),
                version: "1.0.0".into(),
                display_name: "Backups".into(),
                description: String::new(),
                manifest: Some(json_struct(json!({
                    "jobs": [{"name": "backup.run"}, {"name": "backup.install"}],
                    "hooks": {"install": "backup.install"},
                }))),
            },
        ))
        .await
        .expect("register module");
}

#[tokio::test]
async fn an_operator_finds_a_failed_job_retries_it_and_cancels_it_while_it_runs() {
    let Some(browser) = Browser::start("console::an_operator_finds_a_failed_job").await else {
        return;
    };
    let (app, http) = console_app().await;
    let base = format!("http://{http}");
    let token = app.admin_token().await;
    let mut worker = app.worker(4).await;
    // A job that fails for good, and another one that stays pending.
    let failed = app
        .create_job(&token, new_job("report.build", json!({"month": "2026-11"})))
        .await;
    let assignment = worker.assignment().await;
    assert_eq!(job_id(&assignment), failed.id);
    worker.fail(&assignment, "disk full", true).await;
    worker.ack().await;
    wait_for_status(&app, &token, &failed.id, pb::JobStatus::Failed).await;

    browser
        .login(&base, seed::ADMIN_EMAIL, ADMIN_PASSWORD)
        .await;
    browser.wait_for_text("report.build").await;
    browser.screenshot("overview").await;

    // Found through the filters.
    browser
        .client
        .goto(&format!("{base}/console/jobs"))
        .await
        .expect("jobs");
    let form = browser
        .client
        .form(fantoccini::Locator::Css("form.filters"))
        .await
        .expect("filters");
    form.set_by_name("name", "report.build")
        .await
        .expect("name");
    form.set_by_name("status", "FAILED").await.expect("status");
    form.submit().await.expect("filter");
    browser.wait_for_url("status=FAILED").await;
    browser.wait_for_text("badge failed").await;
    assert!(
        browser.source().await.contains(&failed.id[..8]),
        "the failed job is listed"
    );
    browser.screenshot("jobs").await;
    browser.click("table.jobs a.id").await;
    browser.wait_for_text("disk full").await;
    browser.screenshot("job-failed").await;

    // Retry: the worker gets it again.
    browser.click("form[action$='/retry'] button").await;
    let again = worker.assignment().await;
    assert_eq!(job_id(&again), failed.id);
    assert_eq!(audit_count(&app, "jobs.retry", "success").await, 1);

    // Running now: the page follows it and offers Cancel.
    browser.wait_for_text("RUNNING").await;
    browser.screenshot("job-running").await;
    browser.click("form[action$='/cancel'] button").await;
    // The script asks for confirmation (if it has not loaded, the form
    // posts at once, which is what scripts off do).
    let _ = browser.client.accept_alert().await;
    let cancellation = worker.cancellation().await;
    assert_eq!(
        cancellation.lease.as_ref().map(|l| l.job_id.as_str()),
        Some(failed.id.as_str())
    );
    wait_for_status(&app, &token, &failed.id, pb::JobStatus::Cancelled).await;
    browser.wait_for_text("CANCELLED").await;
    assert_eq!(audit_count(&app, "jobs.cancel", "success").await, 1);
    browser.close().await;
}

#[tokio::test]
async fn enabling_a_module_runs_its_hook_job_and_a_revoked_session_ends_the_console() {
    let Some(browser) = Browser::start("console::enabling_a_module").await else {
        return;
    };
    let (app, http) = console_app().await;
    let base = format!("http://{http}");
    let token = app.admin_token().await;
    register_backup(&app, &token).await;
    let mut worker = app.worker(2).await;

    browser
        .login(&base, seed::ADMIN_EMAIL, ADMIN_PASSWORD)
        .await;
    browser
        .client
        .goto(&format!("{base}/console/modules"))
        .await
        .expect("modules");
    browser.wait_for_text("REGISTERED").await;
    browser
        .click("tr#module-backup form[action$='/enable'] button")
        .await;
    browser.wait_for_text("INSTALLING").await;

    // The worker carries the hook out; its job's page, open meanwhile,
    // follows it live (server-sent events: no reload by the test).
    let hook = worker.assignment().await;
    browser.click("tr#module-backup a.hook").await;
    browser.wait_for_text("badge running").await;
    worker.complete(&hook, json!({"installed": true})).await;
    worker.ack().await;
    browser.wait_live("badge completed").await;
    assert!(browser.source().await.contains(&job_id(&hook)));
    browser.screenshot("job-completed").await;
    browser
        .client
        .goto(&format!("{base}/console/modules"))
        .await
        .expect("modules");
    browser.wait_for_text("ENABLED").await;
    browser.screenshot("modules").await;

    // The other pages, with what they hold now.
    browser
        .client
        .goto(&format!("{base}/console/workers"))
        .await
        .expect("workers");
    browser.wait_for_text("test-worker").await;
    browser.screenshot("workers").await;
    browser
        .client
        .goto(&format!("{base}/console/users"))
        .await
        .expect("users");
    browser.wait_for_text("admin").await;
    browser.screenshot("users").await;
    browser
        .client
        .goto(&format!("{base}/console/keys"))
        .await
        .expect("keys");
    let form = browser
        .client
        .form(fantoccini::Locator::Css("form.create"))
        .await
        .expect("new key form");
    form.set_by_name("name", "nightly").await.expect("name");
    form.set_by_name("permissions", "jobs:read")
        .await
        .expect("permissions");
    form.submit().await.expect("create key");
    browser.wait_for_text("shown only once").await;
    assert!(browser.source().await.contains("acp_"));
    browser.screenshot("keys").await;
    browser
        .client
        .goto(&format!("{base}/console/audit"))
        .await
        .expect("audit");
    browser.wait_for_text("modules.enable").await;
    browser.screenshot("audit").await;

    // Revoked elsewhere (RevokeSession from another session): the console
    // session ends at once.
    let sessions = AuthServiceClient::new(app.channel().await)
        .list_sessions(authed(&token, pb::ListSessionsRequest {}))
        .await
        .expect("sessions")
        .into_inner()
        .sessions;
    let console = sessions
        .iter()
        .find(|s| s.user_agent.contains("Chrome"))
        .expect("the browser's session");
    AuthServiceClient::new(app.channel().await)
        .revoke_session(authed(
            &token,
            pb::RevokeSessionRequest {
                id: console.id.clone(),
            },
        ))
        .await
        .expect("revoke");
    browser
        .client
        .goto(&format!("{base}/console/jobs"))
        .await
        .expect("jobs");
    browser.wait_for_text("Sign in").await;
    assert!(
        browser
            .client
            .current_url()
            .await
            .expect("url")
            .path()
            .ends_with("/console/login")
    );
    browser.screenshot("login").await;
    browser.close().await;
}

#[tokio::test]
async fn a_viewer_sees_no_write_buttons_and_a_forged_post_is_refused_and_audited() {
    let Some(browser) = Browser::start("console::a_viewer_sees_no_write_buttons").await else {
        return;
    };
    let (app, http) = console_app().await;
    let base = format!("http://{http}");
    let token = app.admin_token().await;
    register_backup(&app, &token).await;
    let job = app
        .create_job(&token, new_job("report.build", json!({})))
        .await;
    account(&app, "viewer", &["jobs:read", "modules:read"]).await;

    browser.login(&base, "viewer", "user-password-1").await;
    browser
        .client
        .goto(&format!("{base}/console/jobs/{}", job.id))
        .await
        .expect("job page");
    browser.wait_for_text("PENDING").await;
    assert!(!browser.has("form[action$='/cancel']").await);
    browser
        .client
        .goto(&format!("{base}/console/modules"))
        .await
        .expect("modules");
    browser.wait_for_text("REGISTERED").await;
    assert!(!browser.has("form[action*='/modules/']").await);
    let page = browser.source().await;
    assert!(!page.contains("Users &amp; roles") && !page.contains("Audit trail"));
    browser.close().await;

    // The same person forging the POST, with a valid CSRF token: refused
    // and audited as a denial; the job is untouched.
    let cookie = browser::login(http, "viewer", "user-password-1").await;
    let page = request(
        http,
        "GET",
        &format!("/console/jobs/{}", job.id),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(page.status, 200);
    let csrf = page.csrf();
    let forged = request(
        http,
        "POST",
        &format!("/console/jobs/{}/cancel", job.id),
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(forged.body.contains("missing permission jobs:write"));
    assert_eq!(
        app.job(&token, &job.id).await.status(),
        pb::JobStatus::Pending
    );
    assert_eq!(audit_count(&app, "auth.denied", "failure").await, 1);
    let refused = request(
        http,
        "POST",
        "/console/modules/backup/enable",
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(refused.status, 403);
}

#[tokio::test]
async fn a_post_without_the_right_csrf_token_is_refused() {
    let (app, http) = console_app().await;
    let token = app.admin_token().await;
    let job = app
        .create_job(&token, new_job("report.build", json!({})))
        .await;
    let cookie = browser::login(http, seed::ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let path = format!("/console/jobs/{}/cancel", job.id);
    for form in ["", "csrf=", "csrf=00112233445566778899aabbccddeeff"] {
        let answer = request(http, "POST", &path, Some(&cookie), Some(form)).await;
        assert_eq!(answer.status, 403, "form {form:?}: {answer:?}");
        assert!(answer.body.contains("CSRF"));
    }
    assert_eq!(
        app.job(&token, &job.id).await.status(),
        pb::JobStatus::Pending
    );
    assert!(audit_count(&app, "auth.denied", "failure").await >= 1);
    // A token of another session does not pass either.
    let other = browser::login(http, seed::ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let csrf = request(http, "GET", "/console/jobs", Some(&other), None)
        .await
        .csrf();
    let answer = request(
        http,
        "POST",
        &path,
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(answer.status, 403);
    // The login form needs its own token too.
    let answer = request(
        http,
        "POST",
        "/console/login",
        None,
        Some("login=admin&password=x&csrf=abc"),
    )
    .await;
    assert_eq!(answer.status, 403);
    // With the right token, the same POST cancels.
    let csrf = request(http, "GET", "/console/jobs", Some(&cookie), None)
        .await
        .csrf();
    let answer = request(
        http,
        "POST",
        &path,
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(
        app.job(&token, &job.id).await.status(),
        pb::JobStatus::Cancelled
    );
}

#[tokio::test]
async fn pages_render_with_scripts_off_under_a_strict_policy() {
    let (app, http) = console_app().await;
    let token = app.admin_token().await;
    let job = app
        .create_job(&token, new_job("report.build", json!({"month": "2026-11"})))
        .await;
    // Signed out: every page sends the browser to the login form.
    let answer = request(http, "GET", "/console/jobs", None, None).await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.header("location"), Some("/console/login"));

    let cookie = browser::login(http, seed::ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let pages = [
        ("/console/", "report.build"),
        (
            "/console/jobs?status=PENDING&name=report.build",
            &job.id[..8],
        ),
        (
            &format!("/console/jobs/{}", job.id) as &str,
            "&quot;month&quot;",
        ),
        ("/console/workers", "No worker is connected"),
        ("/console/modules", "No module is registered"),
        ("/console/users", "admin"),
        ("/console/keys", "You have no API key"),
        ("/console/audit", "auth.login"),
    ];
    for (path, expected) in pages {
        let page = request(http, "GET", path, Some(&cookie), None).await;
        assert_eq!(page.status, 200, "{path}: {page:?}");
        assert!(
            page.body.contains(expected),
            "{path} lacks {expected:?}: {}",
            page.body
        );
        let policy = page.header("content-security-policy").expect("CSP");
        assert!(
            policy.starts_with("default-src 'self'") && policy.contains("frame-ancestors 'none'")
        );
        assert_eq!(page.header("x-frame-options"), Some("DENY"));
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
        assert!(page.header("referrer-policy").is_some());
        // No inline script: the one script is a file of the console's own.
        assert!(
            !page.body.contains("<script>"),
            "{path} has an inline script"
        );
    }
    // A worker connected with an API key is shown with the key's name.
    let secret = pb::api_key_service_client::ApiKeyServiceClient::new(app.channel().await)
        .create_api_key(authed(
            &token,
            pb::CreateApiKeyRequest {
                name: "nightly-worker".into(),
                permissions: vec!["jobs:execute".into()],
                ..Default::default()
            },
        ))
        .await
        .expect("API key")
        .into_inner()
        .secret;
    let _worker =
        common::worker::TestWorker::connect(app.channel().await, &secret, common::worker::hello(1))
            .await
            .expect("a worker with the key");
    let page = request(http, "GET", "/console/workers", Some(&cookie), None).await;
    assert!(
        page.body.contains("test-worker") && page.body.contains("API key nightly-worker"),
        "{}",
        page.body
    );

    // The cookie is HttpOnly, SameSite=Strict and scoped to the console.
    let login = request(http, "GET", "/console/login", None, None).await;
    let token_cookie = login.cookie("console_login").expect("login cookie");
    let answer = request(
        http,
        "POST",
        "/console/login",
        Some(&format!("console_login={token_cookie}")),
        Some(&format!(
            "login={}&password={}&csrf={token_cookie}",
            browser::encode(seed::ADMIN_EMAIL),
            ADMIN_PASSWORD
        )),
    )
    .await;
    let set = answer
        .headers
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("console_session="))
        .map(|(_, v)| v.clone())
        .expect("session cookie");
    assert!(
        set.contains("HttpOnly")
            && set.contains("SameSite=Strict")
            && set.contains("Path=/console")
    );
    // The job's page follows it without scripts too (a refresh).
    let page = request(
        http,
        "GET",
        &format!("/console/jobs/{}", job.id),
        Some(&cookie),
        None,
    )
    .await;
    assert!(page.body.contains(r#"http-equiv="refresh""#));
    // A wrong password answers the form again, like Login.
    let answer = request(
        http,
        "POST",
        "/console/login",
        Some(&format!("console_login={token_cookie}")),
        Some(&format!("login=admin&password=wrong&csrf={token_cookie}")),
    )
    .await;
    assert_eq!(answer.status, 401);
    assert!(answer.body.contains("invalid login or password"));
    // Logging out ends the session for good.
    let csrf = request(http, "GET", "/console/", Some(&cookie), None)
        .await
        .csrf();
    let answer = request(
        http,
        "POST",
        "/console/logout",
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(answer.status, 303);
    let answer = request(http, "GET", "/console/", Some(&cookie), None).await;
    assert_eq!(answer.status, 303);
    assert_eq!(audit_count(&app, "auth.logout", "success").await, 1);
}

/// The id in the first `/console/users/<id>/…` action after the row of
/// `username`.
fn user_id_on_page(page: &str, username: &str) -> String {
    let row = page
        .find(&format!(r#"id="user-{username}""#))
        .expect("the user's row");
    let marker = "/console/users/";
    let start = row + page[row..].find(marker).expect("an action on the row") + marker.len();
    page[start..start + 36].to_owned()
}

#[tokio::test]
async fn users_are_created_given_roles_and_deactivated_from_the_console() {
    let (app, http) = console_app().await;
    let admin = browser::login(http, seed::ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let created = submit(
        http,
        &admin,
        "/console/users",
        "/console/users",
        "email=ops%40example.test&username=ops&password=ops-password-1&role=viewer",
    )
    .await;
    assert_eq!(created.status, 303, "{created:?}");
    assert_eq!(audit_count(&app, "users.create", "success").await, 1);
    let page = request(http, "GET", "/console/users", Some(&admin), None).await;
    let id = user_id_on_page(&page.body, "ops");

    // The new account signs in; then it is given a role, then deactivated,
    // which ends its console session at once.
    let ops = browser::login(http, "ops", "ops-password-1").await;
    assert_eq!(
        request(http, "GET", "/console/jobs", Some(&ops), None)
            .await
            .status,
        200
    );
    let assigned = submit(
        http,
        &admin,
        "/console/users",
        &format!("/console/users/{id}/roles"),
        "role=operator",
    )
    .await;
    assert_eq!(assigned.status, 303, "{assigned:?}");
    assert_eq!(audit_count(&app, "roles.assign", "success").await, 1);
    let page = request(http, "GET", "/console/users", Some(&admin), None).await;
    assert!(page.body.contains("operator, viewer") || page.body.contains("viewer, operator"));
    let deactivated = submit(
        http,
        &admin,
        "/console/users",
        &format!("/console/users/{id}/deactivate"),
        "",
    )
    .await;
    assert_eq!(deactivated.status, 303, "{deactivated:?}");
    assert_eq!(audit_count(&app, "users.update", "success").await, 1);
    let answer = request(http, "GET", "/console/jobs", Some(&ops), None).await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.header("location"), Some("/console/login"));

    // Console logins are throttled like Login.
    let page = request(http, "GET", "/console/login", None, None).await;
    let token = page.cookie("console_login").expect("login cookie");
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let answer = request(
            http,
            "POST",
            "/console/login",
            Some(&format!("console_login={token}")),
            Some(&format!("login=admin&password=wrong&csrf={token}")),
        )
        .await;
        statuses.push(answer.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

mod flow_control;
