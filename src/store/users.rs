//! The `users` aggregate.

use chrono::NaiveDateTime;
use diesel::{dsl::sql, prelude::*, sql_types::Bool};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::{NewUser, UserRow, permission_list};
use crate::schema::{roles, user_roles, users};

/// Finds a user by id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<UserRow>> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// An account as the reads that show one see it: the row, the names of its
/// roles and the union of their permissions (sorted, each once).
#[derive(Debug, Clone)]
pub struct Account {
    /// The row.
    pub user: UserRow,
    /// Names of the roles held.
    pub roles: Vec<String>,
    /// The union of their permissions.
    pub permissions: Vec<String>,
}

/// Finds a user by id with their role names and permissions: one round
/// trip, for the reads that show an account (GetUser, GetCurrentUser).
pub async fn find_with_grants(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<Account>> {
    let rows: Vec<(UserRow, Option<(String, serde_json::Value)>)> = users::table
        .left_join(user_roles::table.inner_join(roles::table))
        .filter(users::id.eq(id))
        .select((
            UserRow::as_select(),
            (roles::name, roles::permissions).nullable(),
        ))
        .order(roles::name.nullable())
        .load(conn)
        .await?;
    let mut rows = rows.into_iter();
    let Some((user, first)) = rows.next() else {
        return Ok(None);
    };
    let mut names = Vec::new();
    let mut permissions = Vec::new();
    for (name, grants) in first.into_iter().chain(rows.filter_map(|(_, role)| role)) {
        names.push(name);
        permissions.extend(permission_list(&grants));
    }
    permissions.sort();
    permissions.dedup();
    Ok(Some(Account {
        user,
        roles: names,
        permissions,
    }))
}

/// Finds a user by id and locks the row for the rest of the transaction, so
/// that the checks made on it (its permissions, the last admin) hold until
/// the change commits. Role assignments lock the same row.
pub async fn find_for_update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<UserRow>> {
    users::table
        .find(id)
        .select(UserRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// The permissions a user holds, with their roles share-locked so that no
/// role widens between a check against them and the change it guards.
pub async fn held_permissions_locked(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Vec<String>> {
    let grants: Vec<serde_json::Value> = user_roles::table
        .inner_join(roles::table)
        .filter(user_roles::user_id.eq(id))
        .select(roles::permissions)
        .for_share()
        .load(conn)
        .await?;
    let mut permissions: Vec<String> = grants.iter().flat_map(permission_list).collect();
    permissions.sort();
    permissions.dedup();
    Ok(permissions)
}

/// Finds a user by email (case-insensitive) or exact username.
pub async fn find_by_login(
    conn: &mut AsyncPgConnection,
    login: &str,
) -> QueryResult<Option<UserRow>> {
    users::table
        .filter(
            sql::<Bool>("lower(\"email\") = lower(")
                .bind::<diesel::sql_types::Text, _>(login)
                .sql(")")
                .or(users::username.eq(login)),
        )
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Whether any user exists (an empty database gets seeded).
pub async fn any_exist(conn: &mut AsyncPgConnection) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(users::table.select(users::id)))
        .get_result(conn)
        .await
}

/// Inserts a user.
pub async fn insert(conn: &mut AsyncPgConnection, user: &NewUser<'_>) -> QueryResult<UserRow> {
    diesel::insert_into(users::table)
        .values(user)
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
}

/// Inserts a user unless the email or username is taken (seeding, which
/// several replicas may run at once); `None` when it was.
pub async fn insert_if_missing(
    conn: &mut AsyncPgConnection,
    user: &NewUser<'_>,
) -> QueryResult<Option<UserRow>> {
    diesel::insert_into(users::table)
        .values(user)
        .on_conflict_do_nothing()
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Filters of [`list`].
#[derive(Debug, Default)]
pub struct UserFilter {
    /// Substring of email, username, first or last name, any case.
    pub query: Option<String>,
    /// Only active or only inactive users.
    pub is_active: Option<bool>,
    /// Start after this (createdAt, id).
    pub after: Option<(NaiveDateTime, Uuid)>,
}

/// Lists users by creation time then id.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &UserFilter,
    limit: i64,
) -> QueryResult<Vec<UserRow>> {
    let mut query = users::table.select(UserRow::as_select()).into_boxed();
    if let Some(text) = &filter.query {
        let pattern = format!("%{}%", escape_like(text));
        query = query.filter(
            users::email
                .ilike(pattern.clone())
                .or(users::username.ilike(pattern.clone()))
                .or(users::first_name.ilike(pattern.clone()))
                .or(users::last_name.ilike(pattern)),
        );
    }
    if let Some(active) = filter.is_active {
        query = query.filter(users::is_active.eq(active));
    }
    if let Some((time, id)) = filter.after {
        query = query.filter(
            users::created_at
                .gt(time)
                .or(users::created_at.eq(time).and(users::id.gt(id))),
        );
    }
    query
        .order((users::created_at.asc(), users::id.asc()))
        .limit(limit)
        .load(conn)
        .await
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// The changes of an update; `None` leaves a column alone.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChanges {
    pub email: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub is_active: Option<bool>,
    pub updated_at: Option<NaiveDateTime>,
}

/// Applies changes; `None` when the user does not exist.
pub async fn update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    changes: &UserChanges,
) -> QueryResult<Option<UserRow>> {
    diesel::update(users::table.find(id))
        .set(changes)
        .returning(UserRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Replaces the password hash; false when the user does not exist.
pub async fn set_password_hash(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    hash: &str,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let rows = diesel::update(users::table.find(id))
        .set((users::password.eq(hash), users::updated_at.eq(now)))
        .execute(conn)
        .await?;
    Ok(rows == 1)
}

/// Records a successful login.
pub async fn touch_last_login(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::update(users::table.find(id))
        .set(users::last_login.eq(now))
        .execute(conn)
        .await
        .map(drop)
}

/// Deletes a user; sessions and role assignments go with it (FK cascade).
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    let rows = diesel::delete(users::table.find(id)).execute(conn).await?;
    Ok(rows == 1)
}

/// Role names and the union of permissions of each given user.
pub async fn roles_and_permissions(
    conn: &mut AsyncPgConnection,
    user_ids: &[Uuid],
) -> QueryResult<Vec<(Uuid, Vec<String>, Vec<String>)>> {
    let rows: Vec<(Uuid, String, serde_json::Value)> = user_roles::table
        .inner_join(roles::table)
        .filter(user_roles::user_id.eq_any(user_ids))
        .select((user_roles::user_id, roles::name, roles::permissions))
        .order((user_roles::user_id, roles::name))
        .load(conn)
        .await?;
    Ok(user_ids
        .iter()
        .map(|id| {
            let mut names = Vec::new();
            let mut permissions = Vec::new();
            for (_, name, perms) in rows.iter().filter(|(uid, _, _)| uid == id) {
                names.push(name.clone());
                for p in permission_list(perms) {
                    if !permissions.contains(&p) {
                        permissions.push(p);
                    }
                }
            }
            permissions.sort();
            (*id, names, permissions)
        })
        .collect())
}

/// The active holders of the role named `role_name`.
pub async fn active_holders(
    conn: &mut AsyncPgConnection,
    role_name: &str,
) -> QueryResult<Vec<Uuid>> {
    users::table
        .inner_join(user_roles::table.inner_join(roles::table))
        .filter(roles::name.eq(role_name))
        .filter(users::is_active.eq(true))
        .select(users::id)
        .load(conn)
        .await
}

/// Serialises, for the rest of the transaction, every change that could
/// remove an active administrator (a transaction-level advisory lock, taken
/// before any row lock, so such changes queue instead of deadlocking).
pub async fn serialize_admin_changes(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    /// The lock's key: "ctlpadm" in ASCII.
    const ADMIN_CHANGES: i64 = 0x0063_746c_7061_646d;
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(ADMIN_CHANGES)
        .execute(conn)
        .await
        .map(drop)
}

/// Locks the accounts holding the role `role_id` (in id order, the order
/// every multi-account lock takes) and returns the union of each one's
/// permissions, so that a caller changing the role can be checked against
/// everyone it would affect.
pub async fn lock_holders_of_role(
    conn: &mut AsyncPgConnection,
    role_id: Uuid,
) -> QueryResult<Vec<(Uuid, Vec<String>)>> {
    #[derive(QueryableByName)]
    struct Holder {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
    }
    let holders: Vec<Uuid> = diesel::sql_query(
        r#"SELECT u.id FROM users u JOIN user_roles ur ON ur."userId" = u.id
           WHERE ur."roleId" = $1 ORDER BY u.id FOR UPDATE OF u"#,
    )
    .bind::<diesel::sql_types::Uuid, _>(role_id)
    .load::<Holder>(conn)
    .await?
    .into_iter()
    .map(|h| h.id)
    .collect();
    let grants = roles_and_permissions(conn, &holders).await?;
    Ok(grants
        .into_iter()
        .map(|(id, _, permissions)| (id, permissions))
        .collect())
}
