//! Escalation, tried from the attacker's side: callers holding part of a
//! permission set (custom roles an admin can create) try every RPC that acts
//! on an account or a role against targets holding more. The rule: a caller
//! may act on another account, or change, remove or unassign a role, only if
//! it holds every permission the target holds.

use crate::common;

use automation_control_plane::{auth::policy::grants, proto::automation_v1 as pb};
use common::{RoleServiceClient, TestApp, UserServiceClient, account, authed, mask, role};
use tonic::Code;

const PASSWORD: &str = "user-password-1";

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Whether `caller` holds every permission of `target`.
fn covers(caller: &[&str], target: &[&str]) -> bool {
    target.iter().all(|p| grants(caller, p))
}

#[derive(Debug, Clone, Copy)]
enum AccountRpc {
    ChangeEmail,
    Reactivate,
    ResetPassword,
    Delete,
}

impl AccountRpc {
    fn needs(self) -> &'static str {
        match self {
            Self::Delete => "users:delete",
            _ => "users:write",
        }
    }
}

async fn call_account_rpc(
    app: &TestApp,
    rpc: AccountRpc,
    token: &str,
    target: &str,
) -> Result<(), tonic::Status> {
    let mut users = UserServiceClient::new(app.channel().await);
    match rpc {
        AccountRpc::ChangeEmail => users
            .update_user(authed(
                token,
                pb::UpdateUserRequest {
                    user: Some(pb::User {
                        id: target.into(),
                        email: format!("taken-over-{target}@attacker.test"),
                        ..Default::default()
                    }),
                    update_mask: mask(&["email"]),
                },
            ))
            .await
            .map(drop),
        AccountRpc::Reactivate => users
            .update_user(authed(
                token,
                pb::UpdateUserRequest {
                    user: Some(pb::User {
                        id: target.into(),
                        is_active: true,
                        ..Default::default()
                    }),
                    update_mask: mask(&["is_active"]),
                },
            ))
            .await
            .map(drop),
        AccountRpc::ResetPassword => users
            .reset_user_password(authed(
                token,
                pb::ResetUserPasswordRequest {
                    id: target.into(),
                    new_password: "attacker-chosen-1".into(),
                },
            ))
            .await
            .map(drop),
        AccountRpc::Delete => users
            .delete_user(authed(token, pb::DeleteUserRequest { id: target.into() }))
            .await
            .map(drop),
    }
}

#[tokio::test]
async fn acting_on_an_account_needs_every_permission_it_holds() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let callers: &[&[&str]] = &[
        &["users:read", "users:write"],
        &["users:read", "users:write", "users:delete"],
        &["users:*", "modules:read", "jobs:read"],
        &["*:*"],
    ];
    let targets: &[&[&str]] = &[
        &["*:*"],
        &["modules:read", "jobs:read", "users:read"],
        &["users:read"],
        &[],
    ];
    let rpcs = [
        AccountRpc::ChangeEmail,
        AccountRpc::Reactivate,
        AccountRpc::ResetPassword,
        AccountRpc::Delete,
    ];
    let mut cases = 0;
    for (c, caller_permissions) in callers.iter().enumerate() {
        let (_, token) = account(&app, &format!("caller-{c}"), caller_permissions).await;
        for (t, target_permissions) in targets.iter().enumerate() {
            for rpc in rpcs {
                let name = format!("target-{c}-{t}-{rpc:?}").to_lowercase();
                let (target, _) = account(&app, &name, target_permissions).await;
                if matches!(rpc, AccountRpc::Reactivate) {
                    // The attacker wants a deactivated account back.
                    UserServiceClient::new(app.channel().await)
                        .update_user(authed(
                            &admin,
                            pb::UpdateUserRequest {
                                user: Some(pb::User {
                                    id: target.clone(),
                                    is_active: false,
                                    ..Default::default()
                                }),
                                update_mask: mask(&["is_active"]),
                            },
                        ))
                        .await
                        .expect("deactivate");
                }
                let allowed = grants(caller_permissions, rpc.needs())
                    && covers(caller_permissions, target_permissions);
                let result = call_account_rpc(&app, rpc, &token, &target).await;
                let case = format!("{caller_permissions:?} {rpc:?} on {target_permissions:?}");
                if allowed {
                    result.unwrap_or_else(|e| panic!("{case} should be allowed: {e:?}"));
                } else {
                    let status = result.expect_err(&case);
                    assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
                    assert_untouched(&app, &admin, rpc, &target, &name).await;
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, callers.len() * targets.len() * rpcs.len());
    app.stop().await;
}

/// After a refused attempt the target is exactly as before.
async fn assert_untouched(app: &TestApp, admin: &str, rpc: AccountRpc, id: &str, name: &str) {
    let user = UserServiceClient::new(app.channel().await)
        .get_user(authed(admin, pb::GetUserRequest { id: id.into() }))
        .await
        .expect("the target still exists")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(user.email, format!("{name}@example.test"));
    match rpc {
        AccountRpc::Reactivate => assert!(!user.is_active, "{name} stays inactive"),
        _ => {
            assert!(user.is_active);
            app.login(name, PASSWORD)
                .await
                .expect("the old password still works");
        }
    }
}

#[tokio::test]
async fn a_helpdesk_role_cannot_take_over_an_admin() {
    let app = TestApp::spawn().await;
    let (helpdesk_id, helpdesk) = account(
        &app,
        "helpdesk",
        &["users:read", "users:write", "users:delete"],
    )
    .await;
    let (second_admin, _) = account(&app, "second-admin", &["*:*"]).await;
    let seeded_admin = app.current_user(&app.admin_token().await).await.id;
    let mut users = UserServiceClient::new(app.channel().await);

    for target in [&seeded_admin, &second_admin] {
        let status = users
            .reset_user_password(authed(
                &helpdesk,
                pb::ResetUserPasswordRequest {
                    id: target.clone(),
                    new_password: "attacker-chosen-1".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().contains("*:*"), "{}", status.message());
        let status = users
            .delete_user(authed(
                &helpdesk,
                pb::DeleteUserRequest { id: target.clone() },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
    assert_eq!(
        app.login("second-admin", "attacker-chosen-1")
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    app.login("second-admin", PASSWORD)
        .await
        .expect("the admin's password is unchanged");

    // Its own password goes through ChangePassword, which asks for the
    // current one: a stolen token cannot reset it.
    let status = users
        .reset_user_password(authed(
            &helpdesk,
            pb::ResetUserPasswordRequest {
                id: helpdesk_id,
                new_password: "attacker-chosen-1".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    app.stop().await;
}

#[derive(Debug, Clone, Copy)]
enum RoleRpc {
    Rename,
    Narrow,
    Delete,
    Assign,
    Unassign,
}

impl RoleRpc {
    fn needs(self) -> &'static str {
        match self {
            Self::Rename | Self::Narrow => "roles:write",
            Self::Delete => "roles:delete",
            Self::Assign | Self::Unassign => "roles:assign",
        }
    }
}

#[tokio::test]
async fn changing_removing_or_unassigning_a_role_needs_all_it_holds() {
    let app = TestApp::spawn().await;
    let callers: &[&[&str]] = &[
        &["roles:read", "roles:write", "roles:delete", "roles:assign"],
        &["roles:*", "jobs:*"],
        &["*:*"],
    ];
    let target_roles: &[&[&str]] = &[&["jobs:read", "jobs:write"], &["users:read"], &["*:*"]];
    let rpcs = [
        RoleRpc::Rename,
        RoleRpc::Narrow,
        RoleRpc::Delete,
        RoleRpc::Assign,
        RoleRpc::Unassign,
    ];
    let mut roles = RoleServiceClient::new(app.channel().await);
    for (c, caller_permissions) in callers.iter().enumerate() {
        let (_, token) = account(&app, &format!("manager-{c}"), caller_permissions).await;
        for (t, role_permissions) in target_roles.iter().enumerate() {
            for rpc in rpcs {
                let role_name = format!("r-{c}-{t}-{rpc:?}").to_lowercase();
                role(&app, &role_name, role_permissions).await;
                // Someone holding exactly this role, for (un)assignment.
                let held: Vec<&str> = if matches!(rpc, RoleRpc::Unassign) {
                    vec![role_name.as_str()]
                } else {
                    vec![]
                };
                let (holder, _) = app
                    .user_with_roles(&format!("holder-{c}-{t}-{rpc:?}").to_lowercase(), &held)
                    .await;
                let role_id = app_role_id(&app, &role_name).await;
                let result = match rpc {
                    RoleRpc::Rename => roles
                        .update_role(authed(
                            &token,
                            pb::UpdateRoleRequest {
                                role: Some(pb::Role {
                                    id: role_id.clone(),
                                    name: format!("{role_name}-renamed"),
                                    ..Default::default()
                                }),
                                update_mask: mask(&["name"]),
                            },
                        ))
                        .await
                        .map(drop),
                    RoleRpc::Narrow => roles
                        .update_role(authed(
                            &token,
                            pb::UpdateRoleRequest {
                                role: Some(pb::Role {
                                    id: role_id.clone(),
                                    permissions: strings(&role_permissions[..1]),
                                    ..Default::default()
                                }),
                                update_mask: mask(&["permissions"]),
                            },
                        ))
                        .await
                        .map(drop),
                    RoleRpc::Delete => roles
                        .delete_role(authed(
                            &token,
                            pb::DeleteRoleRequest {
                                id: role_id.clone(),
                            },
                        ))
                        .await
                        .map(drop),
                    RoleRpc::Assign => roles
                        .assign_role(authed(
                            &token,
                            pb::AssignRoleRequest {
                                user_id: holder.clone(),
                                role: role_name.clone(),
                            },
                        ))
                        .await
                        .map(drop),
                    RoleRpc::Unassign => roles
                        .unassign_role(authed(
                            &token,
                            pb::UnassignRoleRequest {
                                user_id: holder.clone(),
                                role: role_name.clone(),
                            },
                        ))
                        .await
                        .map(drop),
                };
                let allowed = grants(caller_permissions, rpc.needs())
                    && covers(caller_permissions, role_permissions);
                let case = format!("{caller_permissions:?} {rpc:?} role {role_permissions:?}");
                if allowed {
                    result.unwrap_or_else(|e| panic!("{case} should be allowed: {e:?}"));
                } else {
                    let status = result.expect_err(&case);
                    assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
                    // Nothing changed.
                    let after = roles
                        .get_role(authed(
                            &app.admin_token().await,
                            pb::GetRoleRequest {
                                id: role_id.clone(),
                            },
                        ))
                        .await
                        .expect("role still there")
                        .into_inner()
                        .role
                        .expect("role");
                    assert_eq!(after.name, role_name, "{case}");
                    assert_eq!(after.permissions, strings(role_permissions), "{case}");
                    let held = roles
                        .list_user_roles(authed(
                            &app.admin_token().await,
                            pb::ListUserRolesRequest {
                                user_id: holder.clone(),
                            },
                        ))
                        .await
                        .unwrap()
                        .into_inner()
                        .assignments
                        .len();
                    assert_eq!(
                        held,
                        usize::from(matches!(rpc, RoleRpc::Unassign)),
                        "{case}"
                    );
                }
            }
        }
    }
    app.stop().await;
}

/// A delegated role manager cannot strip `admin` from admins.
#[tokio::test]
async fn a_role_manager_cannot_strip_admins() {
    let app = TestApp::spawn().await;
    let (_, manager) = account(&app, "manager", &["roles:read", "roles:assign"]).await;
    let (second_admin, _) = account(&app, "second-admin", &["*:*"]).await;
    let status = RoleServiceClient::new(app.channel().await)
        .unassign_role(authed(
            &manager,
            pb::UnassignRoleRequest {
                user_id: second_admin.clone(),
                role: "admin".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let admin_view = app
        .current_user(
            &app.login("second-admin", PASSWORD)
                .await
                .unwrap()
                .access_token,
        )
        .await;
    assert_eq!(admin_view.roles, ["admin"]);
    app.stop().await;
}

async fn app_role_id(app: &TestApp, name: &str) -> String {
    RoleServiceClient::new(app.channel().await)
        .get_role(authed(
            &app.admin_token().await,
            pb::GetRoleRequest { id: name.into() },
        ))
        .await
        .expect("role")
        .into_inner()
        .role
        .expect("role")
        .id
}

/// Deleting or narrowing a role acts on everyone holding it.
#[tokio::test]
async fn deleting_or_narrowing_a_role_needs_what_its_holders_hold() {
    let app = TestApp::spawn().await;
    let (_, manager) = account(&app, "manager", &["roles:*", "jobs:read"]).await;
    role(&app, "ops", &["jobs:read", "jobs:write"]).await;
    // A superior holds ops (and admin).
    app.user_with_roles("superior", &["ops", "admin"]).await;
    let mut roles = RoleServiceClient::new(app.channel().await);
    let ops = app_role_id(&app, "ops").await;
    // The manager does not even hold ops; give it a role it does hold.
    role(&app, "readers", &["jobs:read"]).await;
    app.user_with_roles("superior-2", &["readers", "admin"])
        .await;
    let readers = app_role_id(&app, "readers").await;
    let status = roles
        .delete_role(authed(
            &manager,
            pb::DeleteRoleRequest {
                id: readers.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = roles
        .update_role(authed(
            &manager,
            pb::UpdateRoleRequest {
                role: Some(pb::Role {
                    id: ops,
                    permissions: strings(&["jobs:read"]),
                    ..Default::default()
                }),
                update_mask: mask(&["permissions"]),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Widening or describing a role the manager holds takes nothing from
    // anyone.
    roles
        .update_role(authed(
            &manager,
            pb::UpdateRoleRequest {
                role: Some(pb::Role {
                    id: readers,
                    description: "read jobs".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["description"]),
            },
        ))
        .await
        .expect("a harmless change");
    app.stop().await;
}
