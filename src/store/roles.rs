//! The `roles` aggregate and `user_roles` assignments.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::{NewRole, RoleRow, UserRoleRow};
use crate::schema::{roles, user_roles};

/// Finds a role by id, or by name when `key` is not a UUID.
pub async fn find(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<Option<RoleRow>> {
    let query = roles::table.select(RoleRow::as_select());
    match key.parse::<Uuid>() {
        Ok(id) => query.filter(roles::id.eq(id)).first(conn).await,
        Err(_) => query.filter(roles::name.eq(key)).first(conn).await,
    }
    .optional()
}

/// Finds a role by id or name and locks it for the rest of the transaction
/// (it is about to change).
pub async fn find_for_update(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> QueryResult<Option<RoleRow>> {
    let query = roles::table.select(RoleRow::as_select()).for_update();
    match key.parse::<Uuid>() {
        Ok(id) => query.filter(roles::id.eq(id)).first(conn).await,
        Err(_) => query.filter(roles::name.eq(key)).first(conn).await,
    }
    .optional()
}

/// Finds a role by id or name and share-locks it for the rest of the
/// transaction: a check against its permissions holds until commit.
pub async fn find_shared(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<Option<RoleRow>> {
    let query = roles::table.select(RoleRow::as_select()).for_share();
    match key.parse::<Uuid>() {
        Ok(id) => query.filter(roles::id.eq(id)).first(conn).await,
        Err(_) => query.filter(roles::name.eq(key)).first(conn).await,
    }
    .optional()
}

/// Finds roles by name; missing names are simply absent from the result.
pub async fn find_by_names(
    conn: &mut AsyncPgConnection,
    names: &[String],
) -> QueryResult<Vec<RoleRow>> {
    roles::table
        .filter(roles::name.eq_any(names))
        .select(RoleRow::as_select())
        .load(conn)
        .await
}

/// Inserts a role.
pub async fn insert(conn: &mut AsyncPgConnection, role: &NewRole<'_>) -> QueryResult<RoleRow> {
    diesel::insert_into(roles::table)
        .values(role)
        .returning(RoleRow::as_returning())
        .get_result(conn)
        .await
}

/// Inserts a role unless one of that name exists (seeding).
pub async fn insert_if_missing(
    conn: &mut AsyncPgConnection,
    role: &NewRole<'_>,
) -> QueryResult<bool> {
    let rows = diesel::insert_into(roles::table)
        .values(role)
        .on_conflict(roles::name)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(rows == 1)
}

/// Lists roles by name, after `after_name` when given.
pub async fn list(
    conn: &mut AsyncPgConnection,
    after_name: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<RoleRow>> {
    let mut query = roles::table.select(RoleRow::as_select()).into_boxed();
    if let Some(name) = after_name {
        query = query.filter(roles::name.gt(name.to_owned()));
    }
    query.order(roles::name.asc()).limit(limit).load(conn).await
}

/// The changes of an update; `None` leaves a column alone.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = roles)]
pub struct RoleChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub permissions: Option<serde_json::Value>,
    pub updated_at: Option<NaiveDateTime>,
}

/// Applies changes; `None` when the role does not exist.
pub async fn update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    changes: &RoleChanges,
) -> QueryResult<Option<RoleRow>> {
    diesel::update(roles::table.find(id))
        .set(changes)
        .returning(RoleRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Deletes a role; its assignments go with it (FK cascade).
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    Ok(diesel::delete(roles::table.find(id)).execute(conn).await? == 1)
}

/// Assigns a role; returns the assignment, the existing one if the user
/// already held the role.
pub async fn assign(
    conn: &mut AsyncPgConnection,
    assignment: &UserRoleRow,
) -> QueryResult<UserRoleRow> {
    diesel::insert_into(user_roles::table)
        .values(assignment)
        .on_conflict((user_roles::user_id, user_roles::role_id))
        .do_nothing()
        .execute(conn)
        .await?;
    user_roles::table
        .filter(user_roles::user_id.eq(assignment.user_id))
        .filter(user_roles::role_id.eq(assignment.role_id))
        .select(UserRoleRow::as_select())
        .first(conn)
        .await
}

/// Removes an assignment; false when the user did not hold the role.
pub async fn unassign(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    role_id: Uuid,
) -> QueryResult<bool> {
    let rows = diesel::delete(
        user_roles::table
            .filter(user_roles::user_id.eq(user_id))
            .filter(user_roles::role_id.eq(role_id)),
    )
    .execute(conn)
    .await?;
    Ok(rows == 1)
}

/// The roles a user holds with their assignments, by role name.
pub async fn of_user(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> QueryResult<Vec<(UserRoleRow, RoleRow)>> {
    user_roles::table
        .inner_join(roles::table)
        .filter(user_roles::user_id.eq(user_id))
        .select((UserRoleRow::as_select(), RoleRow::as_select()))
        .order(roles::name.asc())
        .load(conn)
        .await
}
