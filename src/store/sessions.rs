//! Login sessions: one row per refresh-token chain. Only SHA-256 hashes of
//! refresh tokens are stored.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::SessionRow;
use crate::schema::{roles, session_spent_tokens, sessions, user_roles, users};

/// Opens a session.
pub async fn insert(conn: &mut AsyncPgConnection, session: &SessionRow) -> QueryResult<()> {
    diesel::insert_into(sessions::table)
        .values(session)
        .execute(conn)
        .await
        .map(drop)
}

/// Swaps the session's refresh token for a new one, atomically: of several
/// concurrent rotations of one token exactly one matches the row. The new
/// expiry is `new_expiry`, but never past the session's creation plus
/// `max_lifetime`. Returns the session after the swap (it was live,
/// unexpired and of an active user), or `None` when the presented hash is
/// not current.
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    presented_hash: &str,
    new_hash: &str,
    new_expiry: NaiveDateTime,
    max_lifetime: chrono::Duration,
    now: NaiveDateTime,
) -> QueryResult<Option<SessionRow>> {
    use diesel::{
        data_types::PgInterval,
        dsl::sql,
        sql_types::{Interval, Timestamp},
    };
    let capped_expiry = sql::<Timestamp>("LEAST(")
        .bind::<Timestamp, _>(new_expiry)
        .sql(", \"createdAt\" + ")
        .bind::<Interval, _>(PgInterval::from_microseconds(
            max_lifetime.num_microseconds().unwrap_or(i64::MAX),
        ))
        .sql(")");
    let active_users = users::table
        .filter(users::is_active.eq(true))
        .select(users::id);
    let rotated: Option<SessionRow> = diesel::update(
        sessions::table
            .filter(sessions::refresh_token.eq(presented_hash))
            .filter(sessions::revoked_at.is_null())
            .filter(sessions::expires_at.gt(now))
            .filter(sessions::user_id.eq_any(active_users)),
    )
    .set((
        sessions::refresh_token.eq(new_hash),
        sessions::expires_at.eq(capped_expiry),
    ))
    .returning(SessionRow::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    if let Some(session) = &rotated {
        diesel::insert_into(session_spent_tokens::table)
            .values((
                session_spent_tokens::token_hash.eq(presented_hash),
                session_spent_tokens::session_id.eq(session.id),
                session_spent_tokens::spent_at.eq(now),
            ))
            .execute(conn)
            .await?;
    }
    Ok(rotated)
}

/// Forgets spent refresh tokens of sessions that ended (revoked or expired)
/// before `ended_before`: presenting one again can revoke nothing more.
pub async fn prune_spent_tokens(
    conn: &mut AsyncPgConnection,
    ended_before: NaiveDateTime,
) -> QueryResult<usize> {
    let ended = sessions::table
        .filter(
            sessions::expires_at
                .lt(ended_before)
                .or(sessions::revoked_at.lt(ended_before)),
        )
        .select(sessions::id);
    diesel::delete(
        session_spent_tokens::table.filter(session_spent_tokens::session_id.eq_any(ended)),
    )
    .execute(conn)
    .await
}

/// The session a spent refresh token belonged to, if it is one.
pub async fn session_of_spent_token(
    conn: &mut AsyncPgConnection,
    hash: &str,
) -> QueryResult<Option<SessionRow>> {
    session_spent_tokens::table
        .inner_join(sessions::table)
        .filter(session_spent_tokens::token_hash.eq(hash))
        .select(SessionRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Revokes one session; false when it was not live (or not the user's).
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    user_id: Uuid,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    let rows = diesel::update(
        sessions::table
            .filter(sessions::id.eq(id))
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::revoked_at.is_null()),
    )
    .set(sessions::revoked_at.eq(now))
    .execute(conn)
    .await?;
    Ok(rows == 1)
}

/// Revokes every live session of a user except `keep`; returns how many.
pub async fn revoke_all_of_user(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    keep: Option<Uuid>,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    let mut target = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .into_boxed();
    if let Some(keep) = keep {
        target = target.filter(sessions::id.ne(keep));
    }
    let ids: Vec<Uuid> = target.select(sessions::id).load(conn).await?;
    diesel::update(sessions::table.filter(sessions::id.eq_any(&ids)))
        .set(sessions::revoked_at.eq(now))
        .execute(conn)
        .await
}

/// A user's live sessions, newest first.
pub async fn list_live(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    now: NaiveDateTime,
) -> QueryResult<Vec<SessionRow>> {
    sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(now))
        .select(SessionRow::as_select())
        .order(sessions::created_at.desc())
        .load(conn)
        .await
}

/// What the authorization layer needs about a caller, read when it is not
/// cached (and on every re-check of a long stream): `None` when the session
/// is revoked or expired or the user inactive or gone; otherwise the
/// session's expiry and the permissions of the user's roles.
pub async fn caller_permissions(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    user_id: Uuid,
    now: NaiveDateTime,
) -> QueryResult<Option<(NaiveDateTime, Vec<String>)>> {
    // One round trip: no row means no live session; a NULL grant means a
    // live session of a user without roles.
    let grants: Vec<(NaiveDateTime, Option<serde_json::Value>)> = sessions::table
        .inner_join(users::table)
        .left_join(user_roles::table.on(user_roles::user_id.eq(users::id)))
        .left_join(roles::table.on(roles::id.eq(user_roles::role_id)))
        .filter(sessions::id.eq(session_id))
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .filter(sessions::expires_at.gt(now))
        .filter(users::is_active.eq(true))
        .select((sessions::expires_at, roles::permissions.nullable()))
        .load(conn)
        .await?;
    let Some(expires_at) = <[_]>::first(&grants).map(|(at, _)| *at) else {
        return Ok(None);
    };
    Ok(Some((
        expires_at,
        grants
            .iter()
            .filter_map(|(_, permissions)| permissions.as_ref())
            .flat_map(super::models::permission_list)
            .collect(),
    )))
}
