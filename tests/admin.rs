//! UserService, RoleService and AuditService end to end, with the guards
//! against escalation and against losing the last admin.

mod common;

use std::collections::BTreeSet;

use automation_control_plane::proto::automation_v1 as pb;
use common::{
    AuditServiceClient, AuthServiceClient, RoleServiceClient, TestApp, UserServiceClient, authed,
};
use prost_types::FieldMask;
use tonic::Code;

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn new_user(name: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        email: format!("{name}@example.test"),
        username: name.into(),
        password: "long-enough-1".into(),
        first_name: "First".into(),
        last_name: "Last".into(),
        roles: vec![],
    }
}

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

#[tokio::test]
async fn roles_are_managed_and_apply_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mut roles = RoleServiceClient::new(app.channel().await);
    let mut users = UserServiceClient::new(app.channel().await);

    for bad in ["users", "us*:read", "users:read:all", "Users:Read"] {
        let status = roles
            .create_role(authed(
                &admin,
                pb::CreateRoleRequest {
                    name: "broken".into(),
                    description: String::new(),
                    permissions: vec![bad.into()],
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(status.message().starts_with("permissions:"));
    }
    let auditor = roles
        .create_role(authed(
            &admin,
            pb::CreateRoleRequest {
                name: "auditor".into(),
                description: "Reads the audit trail".into(),
                permissions: vec!["audit:read".into(), "users:*".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    let by_name = roles
        .get_role(authed(
            &admin,
            pb::GetRoleRequest {
                id: "auditor".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    assert_eq!(by_name.id, auditor.id);
    let names: Vec<String> = roles
        .list_roles(authed(&admin, pb::ListRolesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .roles
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["admin", "auditor", "operator", "viewer"]);

    // A viewer cannot read the audit trail until their role changes, and
    // then can at once.
    let (viewer_id, viewer_token) = app.user_with_roles("vera", &["viewer"]).await;
    let mut audit = AuditServiceClient::new(app.channel().await);
    let denied = audit
        .list_audit_logs(authed(&viewer_token, pb::ListAuditLogsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let assignment = roles
        .assign_role(authed(
            &admin,
            pb::AssignRoleRequest {
                user_id: viewer_id.clone(),
                role: "auditor".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignment
        .unwrap();
    let admin_id = AuthServiceClient::new(app.channel().await)
        .get_current_user(authed(&admin, pb::GetCurrentUserRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .id;
    assert_eq!(assignment.assigned_by, admin_id);
    audit
        .list_audit_logs(authed(&viewer_token, pb::ListAuditLogsRequest::default()))
        .await
        .expect("granted at once");
    let held: Vec<String> = roles
        .list_user_roles(authed(
            &admin,
            pb::ListUserRolesRequest {
                user_id: viewer_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .assignments
        .into_iter()
        .map(|a| a.role.unwrap().name)
        .collect();
    assert_eq!(held, ["auditor", "viewer"]);

    // Narrowing the role takes the permission away at once.
    roles
        .update_role(authed(
            &admin,
            pb::UpdateRoleRequest {
                role: Some(pb::Role {
                    id: auditor.id.clone(),
                    permissions: vec!["users:read".into()],
                    ..Default::default()
                }),
                update_mask: mask(&["permissions"]),
            },
        ))
        .await
        .unwrap();
    let denied = audit
        .list_audit_logs(authed(&viewer_token, pb::ListAuditLogsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Unassign, then delete the role.
    roles
        .unassign_role(authed(
            &admin,
            pb::UnassignRoleRequest {
                user_id: viewer_id.clone(),
                role: "auditor".into(),
            },
        ))
        .await
        .unwrap();
    let again = roles
        .unassign_role(authed(
            &admin,
            pb::UnassignRoleRequest {
                user_id: viewer_id.clone(),
                role: "auditor".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    roles
        .delete_role(authed(
            &admin,
            pb::DeleteRoleRequest {
                id: auditor.id.clone(),
            },
        ))
        .await
        .unwrap();

    // The built-in admin role stays whole.
    let admin_role = roles
        .get_role(authed(&admin, pb::GetRoleRequest { id: "admin".into() }))
        .await
        .unwrap()
        .into_inner()
        .role
        .unwrap();
    let status = roles
        .delete_role(authed(
            &admin,
            pb::DeleteRoleRequest {
                id: admin_role.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    for (paths, role) in [
        (
            &["permissions"][..],
            pb::Role {
                id: admin_role.id.clone(),
                permissions: vec!["users:read".into()],
                ..Default::default()
            },
        ),
        (
            &["name"][..],
            pb::Role {
                id: admin_role.id.clone(),
                name: "root".into(),
                ..Default::default()
            },
        ),
    ] {
        let status = roles
            .update_role(authed(
                &admin,
                pb::UpdateRoleRequest {
                    role: Some(role),
                    update_mask: mask(paths),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{paths:?}");
    }
    let _ = &mut users;
    for action in [
        "roles.create",
        "roles.update",
        "roles.assign",
        "roles.unassign",
        "roles.delete",
    ] {
        assert!(
            common::audit_count(&app, action, "success").await >= 1,
            "{action}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn nobody_grants_what_they_do_not_hold() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mut roles = RoleServiceClient::new(app.channel().await);
    roles
        .create_role(authed(
            &admin,
            pb::CreateRoleRequest {
                name: "delegator".into(),
                description: String::new(),
                permissions: vec!["roles:*".into(), "users:read".into(), "users:write".into()],
            },
        ))
        .await
        .unwrap();
    let (delegate_id, delegate) = app.user_with_roles("delia", &["delegator"]).await;

    let refusals = [
        roles
            .assign_role(authed(
                &delegate,
                pb::AssignRoleRequest {
                    user_id: delegate_id.clone(),
                    role: "admin".into(),
                },
            ))
            .await
            .unwrap_err(),
        roles
            .assign_role(authed(
                &delegate,
                pb::AssignRoleRequest {
                    user_id: delegate_id.clone(),
                    role: "viewer".into(),
                },
            ))
            .await
            .unwrap_err(),
        roles
            .create_role(authed(
                &delegate,
                pb::CreateRoleRequest {
                    name: "mine".into(),
                    description: String::new(),
                    permissions: vec!["*:*".into()],
                },
            ))
            .await
            .unwrap_err(),
        UserServiceClient::new(app.channel().await)
            .create_user(authed(
                &delegate,
                pb::CreateUserRequest {
                    roles: vec!["admin".into()],
                    ..new_user("sock-puppet")
                },
            ))
            .await
            .unwrap_err(),
    ];
    for status in &refusals {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    // What they do hold, they may hand on.
    let own = roles
        .create_role(authed(
            &delegate,
            pb::CreateRoleRequest {
                name: "reader".into(),
                description: String::new(),
                permissions: vec!["users:read".into()],
            },
        ))
        .await
        .expect("a subset of their own")
        .into_inner()
        .role
        .unwrap();
    let widen = roles
        .update_role(authed(
            &delegate,
            pb::UpdateRoleRequest {
                role: Some(pb::Role {
                    id: own.id,
                    permissions: vec!["audit:read".into()],
                    ..Default::default()
                }),
                update_mask: mask(&["permissions"]),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(widen.code(), Code::PermissionDenied);
    app.stop().await;
}

#[tokio::test]
async fn the_last_admin_cannot_be_removed() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let admin_id = AuthServiceClient::new(app.channel().await)
        .get_current_user(authed(&admin, pb::GetCurrentUserRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .id;
    let mut users = UserServiceClient::new(app.channel().await);
    let mut roles = RoleServiceClient::new(app.channel().await);
    let deactivate = |id: &str| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: id.to_owned(),
            is_active: false,
            ..Default::default()
        }),
        update_mask: mask(&["is_active"]),
    };

    let refusals = [
        users
            .update_user(authed(&admin, deactivate(&admin_id)))
            .await
            .unwrap_err(),
        users
            .delete_user(authed(
                &admin,
                pb::DeleteUserRequest {
                    id: admin_id.clone(),
                },
            ))
            .await
            .unwrap_err(),
        roles
            .unassign_role(authed(
                &admin,
                pb::UnassignRoleRequest {
                    user_id: admin_id.clone(),
                    role: "admin".into(),
                },
            ))
            .await
            .unwrap_err(),
    ];
    for status in &refusals {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }

    // With a second admin, the first may go; then the second is the last.
    let (second_id, second) = app.user_with_roles("second-admin", &["admin"]).await;
    roles
        .unassign_role(authed(
            &second,
            pb::UnassignRoleRequest {
                user_id: admin_id.clone(),
                role: "admin".into(),
            },
        ))
        .await
        .expect("one of two admins may go");
    let status = users
        .update_user(authed(&second, deactivate(&second_id)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.stop().await;
}

#[tokio::test]
async fn the_audit_trail_is_filtered_and_paged() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (viewer_id, viewer) = app.user_with_roles("walt", &["viewer"]).await;
    // A denied call is audited with the caller.
    let denied = UserServiceClient::new(app.channel().await)
        .create_user(authed(&viewer, new_user("nope")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let _ = app.login("walt", "wrong-password").await;

    let mut audit = AuditServiceClient::new(app.channel().await);
    let list = |request: pb::ListAuditLogsRequest| {
        let mut audit = audit.clone();
        let admin = admin.clone();
        async move {
            audit
                .list_audit_logs(authed(&admin, request))
                .await
                .map(|r| r.into_inner())
        }
    };
    let denials = list(pb::ListAuditLogsRequest {
        action: "auth.denied".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .audit_logs;
    assert_eq!(denials.len(), 1);
    assert_eq!(denials[0].user_id, viewer_id);
    assert_eq!(denials[0].resource, "automation.v1.UserService/CreateUser");
    assert_eq!(denials[0].outcome, "failure");

    let walts = list(pb::ListAuditLogsRequest {
        user_id: viewer_id.clone(),
        outcome: "failure".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .audit_logs;
    let actions: BTreeSet<String> = walts.iter().map(|l| l.action.clone()).collect();
    assert_eq!(
        actions,
        ["auth.denied", "auth.login"].map(String::from).into()
    );

    // Pages are newest first and cover everything once.
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(pb::ListAuditLogsRequest {
            page_size: 3,
            page_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        ids.extend(page.audit_logs.iter().map(|l| {
            let t = l.create_time.unwrap();
            (t.seconds, t.nanos, l.id.clone())
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(ids, sorted);
    let unique: BTreeSet<_> = ids.iter().map(|(_, _, id)| id.clone()).collect();
    assert_eq!(unique.len(), ids.len());
    assert!(ids.len() >= 6);

    // A time window in the future is empty.
    let later = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3600,
        nanos: 0,
    };
    let none = list(pb::ListAuditLogsRequest {
        start_time: Some(later),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(none.audit_logs.is_empty());

    let bad = list(pb::ListAuditLogsRequest {
        outcome: "maybe".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let _ = &mut audit;
    app.stop().await;
}
