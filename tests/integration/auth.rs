//! AuthService end to end: login, refresh rotation and reuse, logout,
//! password changes, sessions and brute-force throttling.

use crate::common;

use automation_control_plane::{proto::automation_v1 as pb, seed::ADMIN_EMAIL};
use common::{ADMIN_PASSWORD, AuditServiceClient, AuthServiceClient, TestApp, authed};
use futures::future::join_all;
use tonic::Code;

async fn audit_actions(app: &TestApp, action: &str) -> Vec<pb::AuditLog> {
    let admin = app.admin_token().await;
    AuditServiceClient::new(app.channel().await)
        .list_audit_logs(authed(
            &admin,
            pb::ListAuditLogsRequest {
                action: action.into(),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_logs
}

#[tokio::test]
async fn login_by_email_or_username_returns_tokens_and_the_user() {
    let app = TestApp::spawn().await;
    let by_email = app
        .login(&ADMIN_EMAIL.to_uppercase(), ADMIN_PASSWORD)
        .await
        .expect("email, any case");
    assert_eq!(by_email.token_type, "Bearer");
    assert_eq!(by_email.expires_in, 900);
    assert!(!by_email.refresh_token.is_empty());
    let user = by_email.user.expect("user");
    assert_eq!(user.email, ADMIN_EMAIL);
    assert_eq!(user.roles, ["admin"]);
    assert_eq!(user.permissions, ["*:*"]);
    assert!(user.last_login_time.is_some());

    app.login("admin", ADMIN_PASSWORD).await.expect("username");

    // The same answer whether the account exists or not.
    let wrong = app.login("admin", "wrong-password").await.unwrap_err();
    let unknown = app
        .login("nobody@example.test", "wrong-password")
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());

    let missing = app.login("", "x").await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().starts_with("login:"));

    // The refresh token is stored only as a hash.
    let stored = common::stored_refresh_tokens(&app).await;
    assert!(!stored.contains(&by_email.refresh_token));
    assert!(stored.iter().all(|t| t.len() == 64));

    let logins = audit_actions(&app, "auth.login").await;
    assert!(logins.iter().any(|l| l.outcome == "success"));
    let failure = logins
        .iter()
        .find(|l| l.outcome == "failure")
        .expect("failure audited");
    assert_eq!(
        failure.user_agent.split(' ').next(),
        Some("control-plane-tests/1.0")
    );
    assert_eq!(failure.ip_address, "127.0.0.1");
    assert!(!format!("{:?}", failure.details).contains("wrong-password"));
    app.stop().await;
}

#[tokio::test]
async fn refresh_rotates_and_exactly_one_concurrent_refresh_wins() {
    let app = TestApp::spawn().await;
    let login = app.login("admin", ADMIN_PASSWORD).await.unwrap();
    let channel = app.channel().await;

    let attempts = join_all((0..10).map(|_| {
        let mut client = AuthServiceClient::new(channel.clone());
        let token = login.refresh_token.clone();
        async move {
            client
                .refresh(pb::RefreshRequest {
                    refresh_token: token,
                })
                .await
        }
    }))
    .await;
    let winners: Vec<_> = attempts.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(winners.len(), 1, "{attempts:?}");
    for loser in attempts.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(loser.code(), Code::Unauthenticated);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_the_session() {
    let app = TestApp::spawn().await;
    let mut client = AuthServiceClient::new(app.channel().await);
    let login = app.login("admin", ADMIN_PASSWORD).await.unwrap();
    let first = client
        .refresh(pb::RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .expect("first rotation")
        .into_inner();
    assert_ne!(first.refresh_token, login.refresh_token);
    let second = client
        .refresh(pb::RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .expect("second rotation")
        .into_inner();
    client
        .get_current_user(authed(&second.access_token, pb::GetCurrentUserRequest {}))
        .await
        .expect("fresh access token works");

    // The first, spent token comes back: the whole chain dies.
    let reuse = client
        .refresh(pb::RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    let after = client
        .refresh(pb::RefreshRequest {
            refresh_token: second.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);
    let status = client
        .get_current_user(authed(&second.access_token, pb::GetCurrentUserRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let reuse_rows = audit_actions(&app, "auth.refresh_reuse").await;
    assert_eq!(reuse_rows.len(), 1);
    assert_eq!(reuse_rows[0].outcome, "failure");
    app.stop().await;
}

#[tokio::test]
async fn logout_ends_the_session_at_once() {
    let app = TestApp::spawn().await;
    let mut client = AuthServiceClient::new(app.channel().await);
    let login = app.login("admin", ADMIN_PASSWORD).await.unwrap();
    let other = app.login("admin", ADMIN_PASSWORD).await.unwrap();
    client
        .logout(authed(&login.access_token, pb::LogoutRequest {}))
        .await
        .expect("logout");
    for status in [
        client
            .get_current_user(authed(&login.access_token, pb::GetCurrentUserRequest {}))
            .await
            .unwrap_err(),
        client
            .refresh(pb::RefreshRequest {
                refresh_token: login.refresh_token.clone(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // Other sessions are untouched.
    client
        .get_current_user(authed(&other.access_token, pb::GetCurrentUserRequest {}))
        .await
        .expect("other session lives");
    assert_eq!(audit_actions(&app, "auth.logout").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn changing_the_password_ends_other_sessions() {
    let app = TestApp::spawn().await;
    let (_, _) = app.user_with_roles("carol", &["viewer"]).await;
    let mut client = AuthServiceClient::new(app.channel().await);
    let current = app.login("carol", "user-password-1").await.unwrap();
    let other = app.login("carol", "user-password-1").await.unwrap();

    let sessions = client
        .list_sessions(authed(&current.access_token, pb::ListSessionsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 3, "user_with_roles logged in once too");
    assert_eq!(sessions.iter().filter(|s| s.current).count(), 1);

    let wrong = client
        .change_password(authed(
            &current.access_token,
            pb::ChangePasswordRequest {
                current_password: "not-it".into(),
                new_password: "new-password-2".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    let too_long = client
        .change_password(authed(
            &current.access_token,
            pb::ChangePasswordRequest {
                current_password: "user-password-1".into(),
                new_password: "x".repeat(73),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::InvalidArgument);
    assert!(too_long.message().starts_with("new_password:"));

    client
        .change_password(authed(
            &current.access_token,
            pb::ChangePasswordRequest {
                current_password: "user-password-1".into(),
                new_password: "new-password-2".into(),
            },
        ))
        .await
        .expect("change");
    client
        .get_current_user(authed(&current.access_token, pb::GetCurrentUserRequest {}))
        .await
        .expect("this session stays");
    let status = client
        .get_current_user(authed(&other.access_token, pb::GetCurrentUserRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        app.login("carol", "user-password-1")
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    app.login("carol", "new-password-2")
        .await
        .expect("new password");

    // Revoking one's own other session by id.
    app.login("carol", "new-password-2").await.unwrap();
    let listed = client
        .list_sessions(authed(&current.access_token, pb::ListSessionsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let target = listed.iter().find(|s| !s.current).expect("another session");
    client
        .revoke_session(authed(
            &current.access_token,
            pb::RevokeSessionRequest {
                id: target.id.clone(),
            },
        ))
        .await
        .expect("revoke");
    let gone = client
        .revoke_session(authed(
            &current.access_token,
            pb::RevokeSessionRequest {
                id: target.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_wrong_passwords_cannot_outrun_the_throttle() {
    let app = TestApp::spawn().await;
    let attempts = join_all((0..50).map(|_| app.login("admin", "wrong-password"))).await;
    let unauthenticated = attempts
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::Unauthenticated))
        .count();
    let throttled: Vec<_> = attempts
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| s.code() == Code::ResourceExhausted)
        .collect();
    let codes: Vec<_> = attempts
        .iter()
        .map(|r| r.as_ref().err().map(|s| (s.code(), s.message().to_owned())))
        .collect();
    assert_eq!(
        unauthenticated, 5,
        "only the allowed attempts were checked: {codes:?}"
    );
    assert_eq!(throttled.len(), 45);
    assert!(throttled[0].metadata().get("retry-after").is_some());

    // Even the right password waits for the lock to end.
    let locked = app.login("admin", ADMIN_PASSWORD).await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted);
    let retry: u64 = locked
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");

    // Unknown logins are throttled the same way (no enumeration by timing
    // out differently).
    let unknown = join_all((0..8).map(|_| app.login("ghost", "wrong-password"))).await;
    assert!(
        unknown
            .iter()
            .any(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
    );

    // Every checked password is audited; refusals that cost the caller
    // nothing are sampled: the first per client now, the rest
    // counted into a summary row when the window ends.
    let failures = common::audit_count(&app, "auth.login", "failure").await;
    assert_eq!(
        failures,
        5 + 5 + 1,
        "checked ones plus one sample per client"
    );
    app.stop().await;
}

#[tokio::test]
async fn concurrent_logins_of_one_account_all_succeed() {
    let app = TestApp::spawn().await;
    let logins = join_all((0..32).map(|_| app.login("admin", ADMIN_PASSWORD))).await;
    for login in &logins {
        assert!(login.is_ok(), "{login:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn deactivation_and_deletion_end_access_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (dave_id, dave_token) = app.user_with_roles("dave", &["viewer"]).await;
    let (erin_id, erin_token) = app.user_with_roles("erin", &["viewer"]).await;
    let mut users = common::UserServiceClient::new(app.channel().await);
    let mut auth = AuthServiceClient::new(app.channel().await);
    auth.get_current_user(authed(&dave_token, pb::GetCurrentUserRequest {}))
        .await
        .expect("works before");

    users
        .update_user(authed(
            &admin,
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: dave_id.clone(),
                    is_active: false,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["is_active".into()],
                }),
            },
        ))
        .await
        .expect("deactivate");
    let status = auth
        .get_current_user(authed(&dave_token, pb::GetCurrentUserRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let login = app.login("dave", "user-password-1").await.unwrap_err();
    assert_eq!(login.code(), Code::Unauthenticated);

    users
        .delete_user(authed(
            &admin,
            pb::DeleteUserRequest {
                id: erin_id.clone(),
            },
        ))
        .await
        .expect("delete");
    let status = auth
        .get_current_user(authed(&erin_token, pb::GetCurrentUserRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Erin's audit rows stay, with the user cleared.
    let orphaned = common::audit_rows_without_user(&app, "auth.login").await;
    assert!(orphaned >= 1);
    app.stop().await;
}
