//! API keys over real gRPC: a key acts with its scope intersected with its
//! owner's roles now; revocation and expiry apply on the next call and on
//! an open Work stream; a key cannot manage keys, sessions or passwords;
//! keys of other accounts follow the rule for acting on accounts.

use crate::common;

use std::time::Duration;

use automation_control_plane::{domain::jobs::JobSettings, proto::automation_v1 as pb};
use common::{
    AuthServiceClient, JobServiceClient, RoleServiceClient, TestApp, TestOptions,
    UserServiceClient, account, authed, mask, new_job,
    worker::{TestWorker, hello},
};
use serde_json::json;
use tonic::{Code, Status, transport::Channel};

type Keys = pb::api_key_service_client::ApiKeyServiceClient<Channel>;

async fn keys(app: &TestApp) -> Keys {
    Keys::new(app.channel().await)
}

async fn create_key(
    app: &TestApp,
    token: &str,
    user_id: &str,
    permissions: &[&str],
) -> Result<pb::CreateApiKeyResponse, Status> {
    keys(app)
        .await
        .create_api_key(authed(
            token,
            pb::CreateApiKeyRequest {
                user_id: user_id.into(),
                name: "backup worker".into(),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
                expire_time: None,
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn create_job(app: &TestApp, key: &str) -> Result<pb::Job, Status> {
    JobServiceClient::new(app.channel().await)
        .create_job(authed(key, new_job("backup.run", json!({}))))
        .await
        .map(|r| r.into_inner().job.unwrap())
}

async fn list_users(app: &TestApp, key: &str) -> Result<(), Status> {
    UserServiceClient::new(app.channel().await)
        .list_users(authed(key, pb::ListUsersRequest::default()))
        .await
        .map(drop)
}

async fn sql(app: &TestApp, statement: &str) {
    use diesel_async::SimpleAsyncConnection as _;
    let mut conn = app.pool.get().await.unwrap();
    conn.batch_execute(statement).await.unwrap();
}

#[tokio::test]
async fn a_key_acts_with_its_scope_within_its_owners_roles() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (bot_id, bot) = account(&app, "bot", &["jobs:read", "jobs:write", "users:read"]).await;

    // Never more than the caller holds.
    let status = create_key(&app, &bot, "", &["jobs:write", "users:write"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = create_key(&app, &bot, "", &[]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("permissions:"), "{status:?}");

    let created = create_key(&app, &bot, "", &["jobs:read", "jobs:write"])
        .await
        .unwrap();
    let key = created.secret;
    assert!(key.starts_with("acp_"), "{key}");
    let listed = keys(&app)
        .await
        .list_api_keys(authed(&bot, pb::ListApiKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].user_id, bot_id);
    assert!(!format!("{listed:?}").contains(key.rsplit('_').next().unwrap()));

    // Within scope: works. Outside it (though the owner holds it): refused.
    let job = create_job(&app, &key).await.unwrap();
    assert_eq!(job.creator, bot_id);
    assert_eq!(
        list_users(&app, &key).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // The owner losing a permission takes it from the key at once.
    let role_id = RoleServiceClient::new(app.channel().await)
        .get_role(authed(
            &admin,
            pb::GetRoleRequest {
                id: "bot-role".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap()
        .id;
    RoleServiceClient::new(app.channel().await)
        .update_role(authed(
            &admin,
            pb::UpdateRoleRequest {
                role: Some(pb::Role {
                    id: role_id,
                    permissions: vec!["jobs:read".into(), "users:read".into()],
                    ..Default::default()
                }),
                update_mask: mask(&["permissions"]),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        create_job(&app, &key).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // A key is audited: its use (sampled) and in the rows its calls write.
    assert_eq!(
        common::audit_count(&app, "api_keys.create", "success").await,
        1
    );
    assert!(common::audit_count(&app, "api_keys.use", "success").await >= 1);
    let tagged = {
        use automation_control_plane::schema::audit_logs::dsl::*;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut conn = app.pool.get().await.unwrap();
        audit_logs
            .filter(action.eq("jobs.create"))
            .select(details)
            .first::<serde_json::Value>(&mut conn)
            .await
            .unwrap()
    };
    let key_id = created.api_key.unwrap().id;
    assert_eq!(tagged["api_key"], json!(key_id));
    // A denial of a key's call names the account and the key too.
    let denied = {
        use automation_control_plane::schema::audit_logs::dsl::*;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut conn = app.pool.get().await.unwrap();
        audit_logs
            .filter(action.eq("auth.denied"))
            .select((user_id, details))
            .first::<(Option<uuid::Uuid>, serde_json::Value)>(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(denied.0.map(|id| id.to_string()), Some(bot_id.clone()));
    assert_eq!(denied.1["api_key"], json!(key_id));
    app.stop().await;
}

#[tokio::test]
async fn revoked_and_expired_keys_stop_at_the_next_call() {
    let app = TestApp::spawn().await;
    let (_, bot) = account(&app, "bot", &["jobs:write"]).await;
    let first = create_key(&app, &bot, "", &["jobs:write"]).await.unwrap();
    let second = create_key(&app, &bot, "", &["jobs:write"]).await.unwrap();
    create_job(&app, &first.secret).await.unwrap();
    let revoked = keys(&app)
        .await
        .revoke_api_key(authed(
            &bot,
            pb::RevokeApiKeyRequest {
                id: first.api_key.unwrap().id,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert!(revoked.revoke_time.is_some());
    assert_eq!(
        create_job(&app, &first.secret).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    sql(
        &app,
        &format!(
            r#"UPDATE api_keys SET "expiresAt" = now() - interval '1 second' WHERE id = '{}'"#,
            second.api_key.unwrap().id
        ),
    )
    .await;
    assert_eq!(
        create_job(&app, &second.secret).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // A forged secret for a live key's id is refused like any bad key.
    let third = create_key(&app, &bot, "", &["jobs:write"]).await.unwrap();
    let forged = format!(
        "{}_{}",
        third.secret.rsplit_once('_').unwrap().0,
        "A".repeat(43)
    );
    assert_eq!(
        create_job(&app, &forged).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    app.stop().await;
}

#[tokio::test]
async fn a_key_cannot_manage_keys_sessions_or_passwords() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let key = create_key(&app, &admin, "", &["*:*"]).await.unwrap().secret;
    let me = AuthServiceClient::new(app.channel().await)
        .get_current_user(authed(&key, pb::GetCurrentUserRequest {}))
        .await
        .unwrap();
    assert_eq!(me.into_inner().user.unwrap().username, "admin");
    let mut auth = AuthServiceClient::new(app.channel().await);
    let refusals = [
        auth.logout(authed(&key, pb::LogoutRequest {}))
            .await
            .map(drop),
        auth.list_sessions(authed(&key, pb::ListSessionsRequest {}))
            .await
            .map(drop),
        auth.change_password(authed(
            &key,
            pb::ChangePasswordRequest {
                current_password: common::ADMIN_PASSWORD.into(),
                new_password: "another-password-1".into(),
            },
        ))
        .await
        .map(drop),
        create_key(&app, &key, "", &["jobs:read"]).await.map(drop),
        keys(&app)
            .await
            .list_api_keys(authed(&key, pb::ListApiKeysRequest::default()))
            .await
            .map(drop),
    ];
    for refusal in refusals {
        assert_eq!(refusal.unwrap_err().code(), Code::PermissionDenied);
    }
    app.stop().await;
}

#[tokio::test]
async fn keys_of_other_accounts_need_every_permission_they_hold() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let admin_id = app.current_user(&admin).await.id;
    let (helpdesk_id, helpdesk) = account(&app, "helpdesk", &["users:read", "users:write"]).await;
    let (bot_id, _) = account(&app, "bot", &["users:read"]).await;
    // The helpdesk cannot mint a key for the admin (a takeover)…
    let status = create_key(&app, &helpdesk, &admin_id, &["users:read"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // …but can for an account it covers; and the admin for anyone.
    create_key(&app, &helpdesk, &bot_id, &["users:read"])
        .await
        .unwrap();
    let for_helpdesk = create_key(&app, &admin, &helpdesk_id, &["users:read"])
        .await
        .unwrap();
    // Nor can it revoke or list the admin's keys.
    let admins_key = create_key(&app, &admin, "", &["users:read"]).await.unwrap();
    let status = keys(&app)
        .await
        .revoke_api_key(authed(
            &helpdesk,
            pb::RevokeApiKeyRequest {
                id: admins_key.api_key.unwrap().id,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = keys(&app)
        .await
        .list_api_keys(authed(
            &helpdesk,
            pb::ListApiKeysRequest {
                user_id: admin_id,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // The owner sees the key the admin made for it.
    let own = keys(&app)
        .await
        .list_api_keys(authed(&helpdesk, pb::ListApiKeysRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(own[0].id, for_helpdesk.api_key.unwrap().id);
    app.stop().await;
}

#[tokio::test]
async fn revoking_a_key_ends_its_work_stream_within_a_heartbeat() {
    let app = TestApp::spawn_with(TestOptions {
        jobs: JobSettings {
            lease: Duration::from_secs(3),
            ..TestOptions::default().jobs
        },
        ..TestOptions::default()
    })
    .await;
    let (_, bot) = account(&app, "worker-bot", &["jobs:execute"]).await;
    let created = create_key(&app, &bot, "", &["jobs:execute"]).await.unwrap();
    let mut worker = TestWorker::connect(app.channel().await, &created.secret, hello(1))
        .await
        .expect("a key opens a Work stream");
    keys(&app)
        .await
        .revoke_api_key(authed(
            &bot,
            pb::RevokeApiKeyRequest {
                id: created.api_key.unwrap().id,
            },
        ))
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), worker.end())
        .await
        .expect("the stream ends within a heartbeat interval");
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    app.stop().await;
}

async fn set_active(app: &TestApp, id: &str, active: bool) {
    UserServiceClient::new(app.channel().await)
        .update_user(authed(
            &app.admin_token().await,
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: id.into(),
                    is_active: active,
                    ..Default::default()
                }),
                update_mask: mask(&["is_active"]),
            },
        ))
        .await
        .unwrap();
}

/// A key made for another account ends with its maker (deactivated) and
/// with an admin's password reset of its owner; it never holds more than
/// its owner; reactivating an account does not bring its keys back.
#[tokio::test]
async fn keys_end_with_their_maker_a_reset_or_a_deactivation() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (helpdesk_id, helpdesk) = account(&app, "helpdesk", &["users:read", "users:write"]).await;
    let (colleague_id, _) = account(&app, "colleague", &["users:read", "users:write"]).await;
    let (reader_id, _) = account(&app, "reader", &["users:read"]).await;
    // Never more than the owner holds, even from a maker who holds it.
    let status = create_key(&app, &helpdesk, &reader_id, &["users:write"])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let minted = create_key(&app, &helpdesk, &colleague_id, &["users:read"])
        .await
        .unwrap()
        .secret;
    list_users(&app, &minted).await.unwrap();
    set_active(&app, &helpdesk_id, false).await;
    assert_eq!(
        list_users(&app, &minted).await.unwrap_err().code(),
        Code::Unauthenticated,
        "the maker's deactivation ends the keys it made"
    );

    let own = create_key(&app, &admin, &colleague_id, &["users:read"])
        .await
        .unwrap()
        .secret;
    UserServiceClient::new(app.channel().await)
        .reset_user_password(authed(
            &admin,
            pb::ResetUserPasswordRequest {
                id: colleague_id.clone(),
                new_password: "fresh-password-1".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        list_users(&app, &own).await.unwrap_err().code(),
        Code::Unauthenticated,
        "an admin's password reset ends the account's keys"
    );

    let again = create_key(&app, &admin, &colleague_id, &["users:read"])
        .await
        .unwrap()
        .secret;
    set_active(&app, &colleague_id, false).await;
    set_active(&app, &colleague_id, true).await;
    assert_eq!(
        list_users(&app, &again).await.unwrap_err().code(),
        Code::Unauthenticated,
        "reactivation does not bring keys back"
    );
    app.stop().await;
}

/// The audit rows of `action` on `resource`: (account, details).
async fn audit_rows(
    app: &TestApp,
    action: &str,
    resource: &str,
) -> Vec<(String, serde_json::Value)> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        user_id: String,
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        details: serde_json::Value,
    }
    use diesel_async::RunQueryDsl as _;
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query(
        r#"SELECT "userId"::text AS user_id, details FROM audit_logs
           WHERE action = $1 AND resource = $2"#,
    )
    .bind::<diesel::sql_types::Text, _>(action)
    .bind::<diesel::sql_types::Text, _>(resource)
    .load::<Row>(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|row| (row.user_id, row.details))
    .collect()
}

/// Revocation ends the key, not what it did: an account a key with
/// `users:write` and `roles:assign` made keeps working after the key is
/// revoked (the README says so), and the audit trail names the key that
/// made it and gave it its role, so that a leaked key's work can be found
/// and undone.
#[tokio::test]
async fn an_account_a_key_made_outlives_the_key_and_the_trail_names_the_key() {
    let app = TestApp::spawn().await;
    common::role(&app, "job-writer", &["jobs:write"]).await;
    let (owner_id, owner) = account(
        &app,
        "helpdesk",
        &["users:write", "roles:assign", "jobs:write"],
    )
    .await;
    let created = create_key(
        &app,
        &owner,
        "",
        &["users:write", "roles:assign", "jobs:write"],
    )
    .await
    .unwrap();
    let key_id = created.api_key.unwrap().id;
    let key = created.secret;

    let made = UserServiceClient::new(app.channel().await)
        .create_user(authed(&key, common::new_user("shadow")))
        .await
        .expect("a key with users:write creates an account")
        .into_inner()
        .user
        .unwrap();
    RoleServiceClient::new(app.channel().await)
        .assign_role(authed(
            &key,
            pb::AssignRoleRequest {
                user_id: made.id.clone(),
                role: "job-writer".into(),
            },
        ))
        .await
        .expect("and gives it a role");

    keys(&app)
        .await
        .revoke_api_key(authed(
            &owner,
            pb::RevokeApiKeyRequest { id: key_id.clone() },
        ))
        .await
        .unwrap();
    assert_eq!(
        create_job(&app, &key).await.unwrap_err().code(),
        Code::Unauthenticated,
        "the key is over"
    );
    // The account is not: revocation does not reach what the key made.
    let shadow = app
        .login("shadow", "long-enough-1")
        .await
        .expect("the account outlives the key")
        .access_token;
    create_job(&app, &shadow).await.expect("with its role");

    // The trail says which key made it, and as whom.
    let resource = format!("users/{}", made.id);
    let created_rows = audit_rows(&app, "users.create", &resource).await;
    assert_eq!(created_rows.len(), 1, "{created_rows:?}");
    assert_eq!(created_rows[0].0, owner_id);
    assert_eq!(
        created_rows[0].1["api_key"],
        json!(key_id),
        "{created_rows:?}"
    );
    assert_eq!(created_rows[0].1["username"], json!("shadow"));
    let role_id = RoleServiceClient::new(app.channel().await)
        .get_role(authed(
            &app.admin_token().await,
            pb::GetRoleRequest {
                id: "job-writer".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap()
        .id;
    let assigned = audit_rows(&app, "roles.assign", &format!("{resource}/roles/{role_id}")).await;
    assert_eq!(assigned.len(), 1, "{assigned:?}");
    assert_eq!(assigned[0].0, owner_id);
    assert_eq!(assigned[0].1["api_key"], json!(key_id), "{assigned:?}");
    app.stop().await;
}
