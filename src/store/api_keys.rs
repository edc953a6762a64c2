//! The `api_keys` table: credentials for machines, stored as hashes.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::{api_keys, roles, user_roles, users};

/// An `api_keys` row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// SHA-256 of the secret.
    pub secret_hash: Vec<u8>,
    /// The scope, a JSON list of permissions.
    pub permissions: serde_json::Value,
    pub expires_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
    pub created_by: Option<Uuid>,
    pub created_at: NaiveDateTime,
}

/// Stores a new key.
pub async fn insert(conn: &mut AsyncPgConnection, key: &ApiKeyRow) -> QueryResult<ApiKeyRow> {
    diesel::insert_into(api_keys::table)
        .values(key)
        .returning(ApiKeyRow::as_returning())
        .get_result(conn)
        .await
}

/// The keys of `user`, newest first, after the (time, id) cursor.
pub async fn list(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    before: Option<(NaiveDateTime, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<ApiKeyRow>> {
    let mut query = api_keys::table
        .filter(api_keys::user_id.eq(user))
        .select(ApiKeyRow::as_select())
        .into_boxed();
    if let Some((time, id)) = before {
        query = query.filter(
            api_keys::created_at
                .lt(time)
                .or(api_keys::created_at.eq(time).and(api_keys::id.lt(id))),
        );
    }
    query
        .order((api_keys::created_at.desc(), api_keys::id.desc()))
        .limit(limit)
        .load(conn)
        .await
}

/// One key.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ApiKeyRow>> {
    api_keys::table
        .find(id)
        .select(ApiKeyRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// One key, locked until the transaction ends.
pub async fn find_for_update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<ApiKeyRow>> {
    api_keys::table
        .find(id)
        .select(ApiKeyRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Marks a key revoked.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: NaiveDateTime,
) -> QueryResult<ApiKeyRow> {
    diesel::update(api_keys::table.find(id))
        .set(api_keys::revoked_at.eq(Some(now)))
        .returning(ApiKeyRow::as_returning())
        .get_result(conn)
        .await
}

/// Revokes every live key `user` owns or created for someone else (the
/// account is deactivated, deleted, or its password reset by an admin);
/// returns how many.
pub async fn revoke_all_of(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        api_keys::table
            .filter(api_keys::user_id.eq(user).or(api_keys::created_by.eq(user)))
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(Some(now)))
    .execute(conn)
    .await
}

/// A live key (not revoked, not expired, its owner active) and the
/// permissions of its owner's roles right now; `None` otherwise. One round
/// trip, run on every call made with a key.
pub async fn resolve(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    now: NaiveDateTime,
) -> QueryResult<Option<(ApiKeyRow, Vec<String>)>> {
    let rows: Vec<(ApiKeyRow, Option<serde_json::Value>)> = api_keys::table
        .inner_join(users::table)
        .left_join(user_roles::table.on(user_roles::user_id.eq(users::id)))
        .left_join(roles::table.on(roles::id.eq(user_roles::role_id)))
        .filter(api_keys::id.eq(id))
        .filter(api_keys::revoked_at.is_null())
        .filter(
            api_keys::expires_at
                .is_null()
                .or(api_keys::expires_at.gt(now)),
        )
        .filter(users::is_active.eq(true))
        .select((ApiKeyRow::as_select(), roles::permissions.nullable()))
        .load(conn)
        .await?;
    let Some((key, _)) = <[_]>::first(&rows).cloned() else {
        return Ok(None);
    };
    let held = rows
        .iter()
        .filter_map(|(_, permissions)| permissions.as_ref())
        .flat_map(super::models::permission_list)
        .collect();
    Ok(Some((key, held)))
}
