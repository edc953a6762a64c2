//! The per-replica cache of callers never outlives a change: two replicas on
//! one database; each kind of change is made through replica A while
//! replica B has the caller cached, and B's very next call sees it. Each
//! race runs many rounds. Also: the cache does serve (a change hidden from
//! it is not seen until it is told), a change made with plain SQL reaches
//! it, and a replica whose LISTEN connection is cut does not serve from it.

use std::time::Duration;

use tonic::{Code, transport::Channel};

use crate::common::{
    self, AuthServiceClient, RoleServiceClient, TestApp, TestOptions, UserServiceClient, authed,
    mask,
};
use automation_control_plane::proto::automation_v1::{
    self as pb, api_key_service_client::ApiKeyServiceClient,
};

const ROUNDS: usize = 50;

/// Replica A, replica B on the same database, the admin's token, the admin's
/// id, and a role `reader` holding `users:read`.
pub(crate) struct Pair {
    pub(crate) a: TestApp,
    pub(crate) b: TestApp,
    pub(crate) admin: String,
    pub(crate) admin_id: String,
}

impl Pair {
    pub(crate) async fn start(b_options: TestOptions) -> Self {
        let a = TestApp::spawn().await;
        let b = a.replica(b_options).await;
        let admin = a.admin_token().await;
        let admin_id = a.current_user(&admin).await.id;
        common::role(&a, "reader", &["users:read"]).await;
        Self {
            a,
            b,
            admin,
            admin_id,
        }
    }

    pub(crate) async fn users(&self, app: &TestApp) -> UserServiceClient<Channel> {
        UserServiceClient::new(app.channel().await)
    }

    /// A call needing `users:read` that reads nothing of the caller's own
    /// rows (so only the authorization can refuse it).
    async fn read(&self, app: &TestApp, token: &str) -> Result<(), tonic::Status> {
        self.users(app)
            .await
            .get_user(authed(
                token,
                pb::GetUserRequest {
                    id: self.admin_id.clone(),
                },
            ))
            .await
            .map(drop)
    }

    /// Calls B a few times, so that the caller is cached there.
    async fn warm(&self, token: &str) {
        for _ in 0..3 {
            self.read(&self.b, token).await.expect("warm call on B");
        }
    }

    pub(crate) async fn login(&self, name: &str) -> String {
        self.a
            .login(name, "user-password-1")
            .await
            .expect("login")
            .access_token
    }

    pub(crate) async fn set_active(&self, id: &str, active: bool) {
        self.users(&self.a)
            .await
            .update_user(authed(
                &self.admin,
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
            .expect("update user");
    }

    async fn refused_on_b(&self, token: &str, code: Code, round: usize) {
        let status = self
            .read(&self.b, token)
            .await
            .expect_err(&format!("round {round}: B still accepted the old caller"));
        assert_eq!(status.code(), code, "round {round}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_revoked_sessions_end_at_once_on_the_other_replica() {
    let pair = Pair::start(TestOptions::default()).await;
    pair.a.user_with_roles("walker", &["reader"]).await;
    for round in 0..ROUNDS {
        let token = pair.login("walker").await;
        pair.warm(&token).await;
        AuthServiceClient::new(pair.a.channel().await)
            .logout(authed(&token, pb::LogoutRequest {}))
            .await
            .expect("logout");
        pair.refused_on_b(&token, Code::Unauthenticated, round)
            .await;

        let (other, current) = (pair.login("walker").await, pair.login("walker").await);
        pair.warm(&other).await;
        let sessions = AuthServiceClient::new(pair.a.channel().await)
            .list_sessions(authed(&current, pb::ListSessionsRequest {}))
            .await
            .expect("sessions")
            .into_inner()
            .sessions;
        for session in sessions.into_iter().filter(|s| !s.current) {
            AuthServiceClient::new(pair.a.channel().await)
                .revoke_session(authed(
                    &current,
                    pb::RevokeSessionRequest { id: session.id },
                ))
                .await
                .expect("revoke");
        }
        pair.refused_on_b(&other, Code::Unauthenticated, round)
            .await;
        pair.read(&pair.b, &current)
            .await
            .expect("the kept session");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_and_password_resets_end_sessions_at_once_on_the_other_replica() {
    let pair = Pair::start(TestOptions::default()).await;
    let (id, _) = pair.a.user_with_roles("sleeper", &["reader"]).await;
    for round in 0..ROUNDS {
        let token = pair.login("sleeper").await;
        pair.warm(&token).await;
        pair.set_active(&id, false).await;
        pair.refused_on_b(&token, Code::Unauthenticated, round)
            .await;
        pair.set_active(&id, true).await;

        let token = pair.login("sleeper").await;
        pair.warm(&token).await;
        pair.users(&pair.a)
            .await
            .reset_user_password(authed(
                &pair.admin,
                pb::ResetUserPasswordRequest {
                    id: id.clone(),
                    new_password: "user-password-1".into(),
                },
            ))
            .await
            .expect("reset");
        pair.refused_on_b(&token, Code::Unauthenticated, round)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_accounts_stop_at_once_on_the_other_replica() {
    let pair = Pair::start(TestOptions::default()).await;
    for round in 0..ROUNDS {
        let name = format!("gone-{round}");
        let (id, token) = pair.a.user_with_roles(&name, &["reader"]).await;
        pair.warm(&token).await;
        pair.users(&pair.a)
            .await
            .delete_user(authed(&pair.admin, pb::DeleteUserRequest { id }))
            .await
            .expect("delete");
        pair.refused_on_b(&token, Code::Unauthenticated, round)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_and_assignments_apply_at_once_on_the_other_replica() {
    let pair = Pair::start(TestOptions::default()).await;
    let role_id = common::role(&pair.a, "shifting", &["users:read", "jobs:read"]).await;
    let (id, token) = pair.a.user_with_roles("shifter", &["shifting"]).await;
    let roles = || async { RoleServiceClient::new(pair.a.channel().await) };
    for round in 0..ROUNDS {
        pair.warm(&token).await;
        set_permissions(&pair, &role_id, &["jobs:read"]).await;
        pair.refused_on_b(&token, Code::PermissionDenied, round)
            .await;
        set_permissions(&pair, &role_id, &["users:read", "jobs:read"]).await;
        pair.read(&pair.b, &token).await.expect("granted again");

        pair.warm(&token).await;
        roles()
            .await
            .unassign_role(authed(
                &pair.admin,
                pb::UnassignRoleRequest {
                    user_id: id.clone(),
                    role: "shifting".into(),
                },
            ))
            .await
            .expect("unassign");
        pair.refused_on_b(&token, Code::PermissionDenied, round)
            .await;
        roles()
            .await
            .assign_role(authed(
                &pair.admin,
                pb::AssignRoleRequest {
                    user_id: id.clone(),
                    role: "shifting".into(),
                },
            ))
            .await
            .expect("assign");
        pair.read(&pair.b, &token).await.expect("assigned again");
    }
}

pub(crate) async fn set_permissions(pair: &Pair, role_id: &str, permissions: &[&str]) {
    RoleServiceClient::new(pair.a.channel().await)
        .update_role(authed(
            &pair.admin,
            pb::UpdateRoleRequest {
                role: Some(pb::Role {
                    id: role_id.into(),
                    permissions: permissions.iter().map(|p| p.to_string()).collect(),
                    ..Default::default()
                }),
                update_mask: mask(&["permissions"]),
            },
        ))
        .await
        .expect("update role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_api_keys_stop_at_once_on_the_other_replica() {
    let pair = Pair::start(TestOptions::default()).await;
    let (_, owner) = pair.a.user_with_roles("keeper", &["reader"]).await;
    for round in 0..ROUNDS {
        let created = ApiKeyServiceClient::new(pair.a.channel().await)
            .create_api_key(authed(
                &owner,
                pb::CreateApiKeyRequest {
                    user_id: String::new(),
                    name: format!("key {round}"),
                    permissions: vec!["users:read".into()],
                    expire_time: None,
                },
            ))
            .await
            .expect("create key")
            .into_inner();
        pair.warm(&created.secret).await;
        ApiKeyServiceClient::new(pair.a.channel().await)
            .revoke_api_key(authed(
                &owner,
                pb::RevokeApiKeyRequest {
                    id: created.api_key.expect("key").id,
                },
            ))
            .await
            .expect("revoke key");
        pair.refused_on_b(&created.secret, Code::Unauthenticated, round)
            .await;
    }
}

pub(crate) async fn sql(app: &TestApp, statement: &str) {
    use diesel_async::{RunQueryDsl as _, SimpleAsyncConnection as _};
    let mut conn = app.pool.get().await.expect("connection");
    let _ = diesel::sql_query("SELECT 1").execute(&mut conn).await;
    conn.batch_execute(statement).await.expect(statement);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_and_plain_sql_reaches_it() {
    let pair = Pair::start(TestOptions::default()).await;
    let (id, token) = pair.a.user_with_roles("hidden", &["reader"]).await;
    // A change the cache is not told about (the trigger is off) is not
    // seen while the caller stays cached: proof that B answers from its
    // cache. Told (an operator's bare NOTIFY empties every cache), it is.
    pair.warm(&token).await;
    sql(
        &pair.a,
        &format!(
            "ALTER TABLE users DISABLE TRIGGER caller_changes; \
             UPDATE users SET \"isActive\" = false WHERE id = '{id}'; \
             ALTER TABLE users ENABLE TRIGGER caller_changes"
        ),
    )
    .await;
    pair.read(&pair.b, &token)
        .await
        .expect("served from the cache");
    sql(&pair.a, "NOTIFY caller_changes").await;
    eventually_refused(&pair, &token).await;

    // Plain SQL with the triggers on: seen within a short bound.
    sql(
        &pair.a,
        &format!("UPDATE users SET \"isActive\" = true WHERE id = '{id}'"),
    )
    .await;
    let token = pair.login("hidden").await;
    pair.warm(&token).await;
    sql(
        &pair.a,
        &format!("UPDATE sessions SET \"revokedAt\" = now() WHERE \"userId\" = '{id}'"),
    )
    .await;
    eventually_refused(&pair, &token).await;
}

/// B refuses `token` within a few seconds (notifications arrive in
/// milliseconds; the bound only keeps a broken build from hanging).
async fn eventually_refused(pair: &Pair, token: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match pair.read(&pair.b, token).await {
            Err(status) if status.code() == Code::Unauthenticated => return,
            other if tokio::time::Instant::now() > deadline => {
                panic!("B still answers {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_its_notifications_does_not_serve_from_its_cache() {
    let pair = Pair::start(TestOptions {
        through_proxy: true,
        ..TestOptions::default()
    })
    .await;
    pair.a.user_with_roles("cut", &["reader"]).await;
    let token = pair.login("cut").await;
    pair.warm(&token).await;
    let proxy = pair.b.proxy.as_ref().expect("proxy");
    proxy.cut();
    // The session ends through A while B hears nothing: once A has
    // answered, B no longer answers from its cache (it cannot reach the
    // database either, so it answers UNAVAILABLE).
    AuthServiceClient::new(pair.a.channel().await)
        .logout(authed(&token, pb::LogoutRequest {}))
        .await
        .expect("logout");
    for _ in 0..5 {
        let status = pair
            .read(&pair.b, &token)
            .await
            .expect_err("B served a cached caller while cut off");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    proxy.restore();
    // Back: what it missed applies from the first call that reaches the
    // database.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = pair
            .read(&pair.b, &token)
            .await
            .expect_err("B accepted a session ended while it was cut off");
        if status.code() == Code::Unauthenticated {
            break;
        }
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(tokio::time::Instant::now() < deadline, "B never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Any role that can connect may NOTIFY on any channel. An attacker who
/// listens learns the replicas' names from their pings and acknowledges
/// every fence on behalf of the others: unsigned, those acknowledgements
/// are ignored, so a lagging replica B still refuses a logged-out session
/// on its very next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_acknowledgements_do_not_release_a_fence() {
    use automation_control_plane::db;
    use diesel_async::RunQueryDsl as _;
    use futures_util::StreamExt as _;

    let pair = Pair::start(TestOptions {
        db_latency: Duration::from_millis(100),
        ..TestOptions::default()
    })
    .await;
    pair.a.user_with_roles("forged", &["reader"]).await;
    let url = pair.a.db.url();
    let attacker = tokio::spawn(async move {
        let connect = || db::dedicated_connection(&url, "attacker", "", Duration::from_secs(5));
        let (mut listen, mut send) = (connect().await.unwrap(), connect().await.unwrap());
        diesel::sql_query("LISTEN caller_changes")
            .execute(&mut listen)
            .await
            .unwrap();
        let mut replicas = std::collections::HashSet::<String>::new();
        loop {
            let next = {
                let mut stream = std::pin::pin!(listen.notifications_stream());
                stream.next().await
            };
            let Some(Ok(notification)) = next else { return };
            let parts: Vec<&str> = notification.payload.split(':').collect();
            let forged: Vec<String> = match parts.as_slice() {
                ["ping", replica, ..] => {
                    replicas.insert(replica.to_string());
                    vec![]
                }
                ["fence", writer, n, ..] => replicas
                    .iter()
                    .filter(|r| r.as_str() != *writer)
                    .flat_map(|r| {
                        [
                            format!("ack:{writer}:{n}:{r}"),
                            format!("ack:{writer}:{n}:{r}:00000000000000000000000000000000"),
                        ]
                    })
                    .collect(),
                _ => vec![],
            };
            for payload in forged {
                diesel::sql_query("SELECT pg_notify('caller_changes', $1)")
                    .bind::<diesel::sql_types::Text, _>(payload)
                    .execute(&mut send)
                    .await
                    .unwrap();
            }
        }
    });
    // The attacker hears the replicas' pings before the rounds begin.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for round in 0..10 {
        let token = pair.login("forged").await;
        pair.warm(&token).await;
        AuthServiceClient::new(pair.a.channel().await)
            .logout(authed(&token, pb::LogoutRequest {}))
            .await
            .expect("logout");
        pair.refused_on_b(&token, Code::Unauthenticated, round)
            .await;
    }
    attacker.abort();
}
