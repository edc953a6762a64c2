//! UserService end to end: create, read, list, update with masks, reset
//! passwords and delete, with bad input named field by field.

use crate::common;

use automation_control_plane::proto::automation_v1 as pb;
use common::{AuthServiceClient, TestApp, UserServiceClient, authed, mask, new_user};
use tonic::Code;

#[tokio::test]
async fn users_are_created_listed_updated_and_deleted() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mut users = UserServiceClient::new(app.channel().await);

    let mut request = new_user("frank");
    request.roles = vec!["viewer".into()];
    let frank = users
        .create_user(authed(&admin, request))
        .await
        .expect("create")
        .into_inner()
        .user
        .unwrap();
    assert_eq!(frank.roles, ["viewer"]);
    assert!(frank.permissions.contains(&"jobs:read".to_owned()));
    assert!(frank.is_active);

    // Clashes name the field; the email clash ignores case.
    let mut clash = new_user("frank2");
    clash.email = "FRANK@example.test".into();
    let status = users.create_user(authed(&admin, clash)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("email"), "{}", status.message());
    let mut clash = new_user("frank3");
    clash.username = "frank".into();
    let status = users.create_user(authed(&admin, clash)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("username"));

    // Bad input names the field.
    for (request, field) in [
        (
            pb::CreateUserRequest {
                email: "not-an-email".into(),
                ..new_user("bad-1")
            },
            "email",
        ),
        (
            pb::CreateUserRequest {
                username: "a b".into(),
                ..new_user("bad-2")
            },
            "username",
        ),
        (
            pb::CreateUserRequest {
                password: "short".into(),
                ..new_user("bad-3")
            },
            "password",
        ),
        (
            pb::CreateUserRequest {
                password: "p".repeat(73),
                ..new_user("bad-4")
            },
            "password",
        ),
        (
            pb::CreateUserRequest {
                roles: vec!["no-such-role".into()],
                ..new_user("bad-5")
            },
            "roles",
        ),
    ] {
        let status = users
            .create_user(authed(&admin, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{status:?}"
        );
    }

    // Get.
    let got = users
        .get_user(authed(
            &admin,
            pb::GetUserRequest {
                id: frank.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(got.email, "frank@example.test");
    let missing = users
        .get_user(authed(
            &admin,
            pb::GetUserRequest {
                id: uuid::Uuid::new_v4().to_string(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let malformed = users
        .get_user(authed(&admin, pb::GetUserRequest { id: "42".into() }))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);

    // List, page by page.
    for name in ["user-a", "user-b", "user-c", "user-d"] {
        users
            .create_user(authed(&admin, new_user(name)))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = users
            .list_users(authed(
                &admin,
                pb::ListUsersRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 2);
        seen.extend(page.users.into_iter().map(|u| u.username));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        ["admin", "frank", "user-a", "user-b", "user-c", "user-d"]
    );
    let found = users
        .list_users(authed(
            &admin,
            pb::ListUsersRequest {
                query: "FRANK".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(found.len(), 1);
    let bad_token = users
        .list_users(authed(
            &admin,
            pb::ListUsersRequest {
                page_token: "garbage!".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);

    // Update with a mask; only named fields change.
    let updated = users
        .update_user(authed(
            &admin,
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: frank.id.clone(),
                    username: "franklin".into(),
                    email: "ignored@example.test".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["username", "last_name"]),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(updated.username, "franklin");
    assert_eq!(updated.email, "frank@example.test");
    assert_eq!(updated.last_name, "");
    for bad_mask in [None, mask(&["password"])] {
        let status = users
            .update_user(authed(
                &admin,
                pb::UpdateUserRequest {
                    user: Some(pb::User {
                        id: frank.id.clone(),
                        ..Default::default()
                    }),
                    update_mask: bad_mask,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("update_mask:"));
    }

    // Administrative password reset ends the user's sessions.
    let frank_login = app.login("franklin", "long-enough-1").await.unwrap();
    users
        .reset_user_password(authed(
            &admin,
            pb::ResetUserPasswordRequest {
                id: frank.id.clone(),
                new_password: "brand-new-pass".into(),
            },
        ))
        .await
        .expect("reset");
    let status = AuthServiceClient::new(app.channel().await)
        .get_current_user(authed(
            &frank_login.access_token,
            pb::GetCurrentUserRequest {},
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    app.login("franklin", "brand-new-pass")
        .await
        .expect("new password");

    // Delete.
    users
        .delete_user(authed(
            &admin,
            pb::DeleteUserRequest {
                id: frank.id.clone(),
            },
        ))
        .await
        .expect("delete");
    let status = users
        .delete_user(authed(
            &admin,
            pb::DeleteUserRequest {
                id: frank.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    for action in [
        "users.create",
        "users.update",
        "users.reset_password",
        "users.delete",
    ] {
        assert!(
            common::audit_count(&app, action, "success").await >= 1,
            "{action} audited"
        );
    }
    app.stop().await;
}
