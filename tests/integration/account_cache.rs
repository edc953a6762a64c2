//! The per-replica cache of accounts (what GetUser and GetCurrentUser show)
//! never outlives a change: two replicas on one database; each change that
//! alters what GetUser returns is made through replica A while replica B
//! has the account cached, and B's very next GetUser shows it. Each race
//! runs many rounds, and B's hit counter proves B answered from its cache
//! right before each write. Also: plain SQL reaches it, a replica cut from
//! its notifications does not answer from it, one whose account trigger is
//! off keeps no account, and failed logins send no fence.

use std::time::Duration;

use tonic::Code;

use crate::{
    caller_cache::{Pair, set_permissions, sql},
    common::{self, AuthServiceClient, RoleServiceClient, TestApp, TestOptions, authed, mask},
};
use automation_control_plane::proto::automation_v1 as pb;

const ROUNDS: usize = 30;

/// Replica B hears its notifications late (its database is 50 ms away),
/// so a writer that did not wait for B's acknowledgement would let B's
/// next read answer from its cache before the eviction arrives.
fn lagging() -> TestOptions {
    TestOptions {
        db_latency: Duration::from_millis(50),
        ..TestOptions::default()
    }
}

impl Pair {
    /// GetUser of `id` on `app`, as the admin.
    async fn shown(&self, app: &TestApp, id: &str) -> Result<pb::User, tonic::Status> {
        self.users(app)
            .await
            .get_user(authed(&self.admin, pb::GetUserRequest { id: id.into() }))
            .await
            .map(|r| r.into_inner().user.expect("user"))
    }

    /// GetUser of `id` on B until B answers it from its cache (its hit
    /// counter says so: a race proves nothing if B was not serving); what
    /// B shows.
    async fn warm_account(&self, id: &str) -> pb::User {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (hits, _) = self.b.callers.account_lookups();
            let shown = self.shown(&self.b, id).await.expect("warm GetUser on B");
            if self.b.callers.account_lookups().0 > hits {
                return shown;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "B never answered from its account cache"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// GetUser of `id` on B a few times (where B may not cache it).
    async fn read_on_b(&self, id: &str) {
        for _ in 0..3 {
            self.shown(&self.b, id).await.expect("GetUser on B");
        }
    }

    async fn update(&self, user: pb::User, paths: &[&str]) {
        self.users(&self.a)
            .await
            .update_user(authed(
                &self.admin,
                pb::UpdateUserRequest {
                    user: Some(user),
                    update_mask: mask(paths),
                },
            ))
            .await
            .expect("update user");
    }

    async fn roles(&self) -> RoleServiceClient<tonic::transport::Channel> {
        RoleServiceClient::new(self.a.channel().await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_updates_and_deactivation_show_at_once_on_the_other_replica() {
    let pair = Pair::start(lagging()).await;
    let (id, _) = pair.a.user_with_roles("renamed", &["reader"]).await;
    for round in 0..ROUNDS {
        pair.warm_account(&id).await;
        let name = format!("Name {round}");
        pair.update(
            pb::User {
                id: id.clone(),
                first_name: name.clone(),
                email: format!("renamed-{round}@example.test"),
                ..Default::default()
            },
            &["first_name", "email"],
        )
        .await;
        let shown = pair.shown(&pair.b, &id).await.expect("GetUser on B");
        assert_eq!(shown.first_name, name, "round {round}");
        assert_eq!(shown.email, format!("renamed-{round}@example.test"));

        pair.warm_account(&id).await;
        pair.set_active(&id, false).await;
        let shown = pair.shown(&pair.b, &id).await.expect("GetUser on B");
        assert!(!shown.is_active, "round {round}: B still shows it active");
        pair.set_active(&id, true).await;
        assert!(pair.shown(&pair.b, &id).await.expect("GetUser").is_active);

        // A reset changes nothing but the update time it shows.
        let before = pair.warm_account(&id).await.update_time;
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
        let after = pair.shown(&pair.b, &id).await.expect("GetUser").update_time;
        assert_ne!(after, before, "round {round}: B shows the old update time");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_role_permissions_show_at_once_on_the_other_replica() {
    let pair = Pair::start(lagging()).await;
    let role_id = common::role(&pair.a, "moving", &["jobs:read"]).await;
    let (id, _) = pair.a.user_with_roles("mover", &["reader"]).await;
    for round in 0..ROUNDS {
        pair.warm_account(&id).await;
        pair.roles()
            .await
            .assign_role(authed(
                &pair.admin,
                pb::AssignRoleRequest {
                    user_id: id.clone(),
                    role: "moving".into(),
                },
            ))
            .await
            .expect("assign");
        let shown = pair.shown(&pair.b, &id).await.expect("GetUser on B");
        assert_eq!(shown.roles, ["moving", "reader"], "round {round}");

        pair.warm_account(&id).await;
        set_permissions(&pair, &role_id, &["jobs:read", "jobs:write"]).await;
        let shown = pair.shown(&pair.b, &id).await.expect("GetUser on B");
        assert!(
            shown.permissions.contains(&"jobs:write".to_string()),
            "round {round}: {:?}",
            shown.permissions
        );
        set_permissions(&pair, &role_id, &["jobs:read"]).await;
        let shown = pair.shown(&pair.b, &id).await.expect("GetUser on B");
        assert!(!shown.permissions.contains(&"jobs:write".to_string()));

        pair.warm_account(&id).await;
        pair.roles()
            .await
            .unassign_role(authed(
                &pair.admin,
                pb::UnassignRoleRequest {
                    user_id: id.clone(),
                    role: "moving".into(),
                },
            ))
            .await
            .expect("unassign");
        let shown = pair.shown(&pair.b, &id).await.expect("GetUser on B");
        assert_eq!(shown.roles, ["reader"], "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_shows_its_time_at_once_on_the_other_replica() {
    let pair = Pair::start(lagging()).await;
    let (id, token) = pair.a.user_with_roles("regular", &["reader"]).await;
    for round in 0..ROUNDS {
        let before = pair.warm_account(&id).await.last_login_time;
        // Its own view on B, through GetCurrentUser, is cached too.
        let own = pair.b.current_user(&token).await.last_login_time;
        assert_eq!(own, before);
        pair.login("regular").await;
        let after = pair
            .shown(&pair.b, &id)
            .await
            .expect("GetUser")
            .last_login_time;
        assert_ne!(after, before, "round {round}: B shows the previous login");
        assert_eq!(pair.b.current_user(&token).await.last_login_time, after);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_accounts_are_gone_at_once_on_the_other_replica() {
    let pair = Pair::start(lagging()).await;
    for round in 0..ROUNDS {
        let (id, _) = pair
            .a
            .user_with_roles(&format!("deleted-{round}"), &["reader"])
            .await;
        pair.warm_account(&id).await;
        pair.users(&pair.a)
            .await
            .delete_user(authed(
                &pair.admin,
                pb::DeleteUserRequest { id: id.clone() },
            ))
            .await
            .expect("delete");
        let status = pair
            .shown(&pair.b, &id)
            .await
            .expect_err(&format!("round {round}: B still shows a deleted account"));
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
}

/// B's GetUser of `id` shows `first_name` within a few seconds
/// (notifications arrive in milliseconds; the bound only keeps a broken
/// build from hanging).
async fn eventually_shown(pair: &Pair, id: &str, first_name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let shown = pair.shown(&pair.b, id).await.expect("GetUser on B");
        if shown.first_name == first_name {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B still shows {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_cache_serves_and_plain_sql_reaches_it() {
    let pair = Pair::start(TestOptions::default()).await;
    let (id, _) = pair.a.user_with_roles("behind", &["reader"]).await;
    // B answers from its cache (its hit counter says so; the races rest on
    // it), and an operator's bare NOTIFY empties it: the next read misses.
    pair.warm_account(&id).await;
    sql(&pair.a, "NOTIFY caller_changes").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pair.b.callers.accounts_len() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B kept its accounts after NOTIFY"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, misses) = pair.b.callers.account_lookups();
    pair.shown(&pair.b, &id).await.expect("GetUser on B");
    assert!(
        pair.b.callers.account_lookups().1 > misses,
        "B did not read"
    );

    // Plain SQL with the triggers on: seen within a short bound, callers
    // untouched (the admin's calls keep working throughout).
    pair.warm_account(&id).await;
    sql(
        &pair.a,
        &format!("UPDATE users SET \"firstName\" = 'Seen' WHERE id = '{id}'"),
    )
    .await;
    eventually_shown(&pair, &id, "Seen").await;
    pair.warm_account(&id).await;
    sql(
        &pair.a,
        "UPDATE roles SET name = 'renamed-reader' WHERE name = 'reader'",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pair.shown(&pair.b, &id).await.expect("GetUser").roles != ["renamed-reader"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B kept the old role name"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_its_notifications_does_not_answer_from_its_account_cache() {
    let pair = Pair::start(TestOptions {
        through_proxy: true,
        ..TestOptions::default()
    })
    .await;
    let (id, _) = pair.a.user_with_roles("cut-off", &["reader"]).await;
    pair.warm_account(&id).await;
    let proxy = pair.b.proxy.as_ref().expect("proxy");
    proxy.cut();
    pair.update(
        pb::User {
            id: id.clone(),
            first_name: "Changed".into(),
            ..Default::default()
        },
        &["first_name"],
    )
    .await;
    // B cannot reach the database: it answers UNAVAILABLE, never the
    // cached account.
    for _ in 0..5 {
        let status = pair
            .shown(&pair.b, &id)
            .await
            .expect_err("B answered from its cache while cut off");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match pair.shown(&pair.b, &id).await {
            Ok(shown) => {
                assert_eq!(shown.first_name, "Changed", "B came back with a stale view");
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(tokio::time::Instant::now() < deadline, "B never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_account_cache_reads_still_answer() {
    let mut options = TestOptions::default();
    options.auth.account_cache_size = 0;
    let pair = Pair::start(options).await;
    let (id, token) = pair.a.user_with_roles("uncached", &["reader"]).await;
    pair.read_on_b(&id).await;
    pair.login("uncached").await;
    let shown = pair.shown(&pair.b, &id).await.expect("GetUser on B");
    assert_eq!(
        shown.last_login_time,
        pair.shown(&pair.a, &id)
            .await
            .expect("GetUser on A")
            .last_login_time
    );
    let own = AuthServiceClient::new(pair.b.channel().await)
        .get_current_user(authed(&token, pb::GetCurrentUserRequest {}))
        .await
        .expect("GetCurrentUser on B");
    assert_eq!(own.into_inner().user.expect("user").id, id);
}

/// A test's own ear on the `caller_changes` channel.
struct Ear {
    listen: diesel_async::AsyncPgConnection,
    send: diesel_async::AsyncPgConnection,
    marks: u64,
}

impl Ear {
    async fn new(app: &TestApp) -> Self {
        use diesel_async::RunQueryDsl as _;
        let url = app.db.url();
        let connect = || {
            automation_control_plane::db::dedicated_connection(
                &url,
                "test ear",
                "",
                Duration::from_secs(5),
            )
        };
        let mut listen = connect().await.expect("connect");
        diesel::sql_query("LISTEN caller_changes")
            .execute(&mut listen)
            .await
            .expect("listen");
        Self {
            listen,
            send: connect().await.expect("connect"),
            marks: 0,
        }
    }

    /// How many fences were sent since the last call (everything sent
    /// before this call has been committed: it reads up to a mark of its
    /// own sent now, in commit order).
    async fn fences(&mut self) -> usize {
        use diesel_async::RunQueryDsl as _;
        use futures_util::StreamExt as _;
        self.marks += 1;
        let mark = format!("test-mark-{}", self.marks);
        diesel::sql_query("SELECT pg_notify('caller_changes', $1)")
            .bind::<diesel::sql_types::Text, _>(&mark)
            .execute(&mut self.send)
            .await
            .expect("mark");
        let mut fences = 0;
        loop {
            let next = {
                let mut stream = std::pin::pin!(self.listen.notifications_stream());
                tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .expect("the mark came back")
            };
            let payload = next.expect("stream").expect("notification").payload;
            if payload == mark {
                return fences;
            }
            fences += usize::from(payload.starts_with("fence:"));
        }
    }
}

/// Only a successful Login writes (`lastLogin`): a failed one sends no
/// fence, so a flood of failing logins costs no fence (and no wait) each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_successful_logins_fence() {
    let pair = Pair::start(TestOptions::default()).await;
    pair.a.user_with_roles("fenced", &["reader"]).await;
    let mut ear = Ear::new(&pair.a).await;
    // Until A's listener has listened for a second, A waits out the window
    // instead of sending fences: log in until one is sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        pair.login("fenced").await;
        if ear.fences().await > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "A never fenced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        let status = pair
            .a
            .login("fenced", "wrong-password")
            .await
            .expect_err("a wrong password");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    pair.a
        .login("nobody-by-that-name", "wrong-password")
        .await
        .expect_err("an unknown account");
    pair.a.login("", "").await.expect_err("a malformed login");
    assert_eq!(ear.fences().await, 0, "failed logins sent fences");
    pair.login("fenced").await;
    assert_eq!(ear.fences().await, 1, "a successful login sent no fence");
}

/// With the trigger that announces account changes disabled (or missing:
/// the migration pending or reverted) when B connects, a name changed
/// behind the service's back would never reach B's cache: B keeps no
/// account and shows the change at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_account_trigger_no_account_is_cached() {
    let a = TestApp::spawn().await;
    sql(&a, "ALTER TABLE users DISABLE TRIGGER account_changes").await;
    let b = a.replica(TestOptions::default()).await;
    let admin = a.admin_token().await;
    let admin_id = a.current_user(&admin).await.id;
    common::role(&a, "reader", &["users:read"]).await;
    let pair = Pair {
        a,
        b,
        admin,
        admin_id,
    };
    let (id, _) = pair.a.user_with_roles("unannounced", &["reader"]).await;
    for round in 0..5 {
        pair.read_on_b(&id).await;
        let name = format!("Unannounced {round}");
        sql(
            &pair.a,
            &format!("UPDATE users SET \"firstName\" = '{name}' WHERE id = '{id}'"),
        )
        .await;
        let shown = pair.shown(&pair.b, &id).await.expect("GetUser on B");
        assert_eq!(shown.first_name, name, "B answered from its cache");
    }
    assert_eq!(pair.b.callers.account_lookups().0, 0, "B served accounts");
    assert_eq!(pair.b.callers.accounts_len(), 0);
}
