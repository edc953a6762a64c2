//! RoleService end to end, with the guards against escalation and against
//! losing the last admin.

use crate::common;

use automation_control_plane::proto::automation_v1 as pb;
use common::{
    AuditServiceClient, RoleServiceClient, TestApp, UserServiceClient, authed, mask, new_user,
};
use tonic::Code;

#[tokio::test]
async fn roles_are_managed_and_apply_at_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let mut roles = RoleServiceClient::new(app.channel().await);

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
        assert!(
            status.message().starts_with("permissions[0]:"),
            "{}",
            status.message()
        );
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
    let admin_id = app.current_user(&admin).await.id;
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

    // Unassign (a second time finds nothing), then delete the role.
    let unassign = pb::UnassignRoleRequest {
        user_id: viewer_id.clone(),
        role: "auditor".into(),
    };
    roles
        .unassign_role(authed(&admin, unassign.clone()))
        .await
        .unwrap();
    let again = roles
        .unassign_role(authed(&admin, unassign))
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
    let admin_id = app.current_user(&admin).await.id;
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
