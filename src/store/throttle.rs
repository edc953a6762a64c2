//! `login_throttles`: one counter row per key (a client, an account, a
//! client on an account). The rules that read and change the counters live
//! in `domain::throttle`; this is their SQL.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::schema::login_throttles;

/// A `login_throttles` row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = login_throttles, check_for_backend(diesel::pg::Pg))]
#[diesel(treat_none_as_null = true)]
pub struct ThrottleRow {
    pub key: String,
    /// Failures counted in the current window.
    pub failures: i32,
    pub window_started_at: NaiveDateTime,
    /// Attempts are refused until then.
    pub locked_until: Option<NaiveDateTime>,
    /// Attempts admitted whose outcome is not recorded yet.
    pub in_flight: i32,
    pub in_flight_since: Option<NaiveDateTime>,
}

/// Locks the rows of `keys` that exist, in key order, without waiting: a
/// row another admission holds is an error ("could not obtain lock"), and
/// the caller retries later instead of queueing on a pooled connection.
pub async fn lock_existing(
    conn: &mut AsyncPgConnection,
    keys: &[String],
) -> QueryResult<Vec<ThrottleRow>> {
    login_throttles::table
        .filter(login_throttles::key.eq_any(keys))
        .select(ThrottleRow::as_select())
        .order(login_throttles::key.asc())
        .for_update()
        .no_wait()
        .load(conn)
        .await
}

/// Locks the rows of `keys` (creating missing ones) for the rest of the
/// transaction and returns them in key order. Rows are created and locked in
/// key order, so concurrent callers never deadlock.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    keys: &[String],
    now: NaiveDateTime,
) -> QueryResult<Vec<ThrottleRow>> {
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    sorted.dedup();
    let fresh: Vec<_> = sorted
        .iter()
        .map(|key| {
            (
                login_throttles::key.eq(key.as_str()),
                login_throttles::window_started_at.eq(now),
            )
        })
        .collect();
    diesel::insert_into(login_throttles::table)
        .values(fresh)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    login_throttles::table
        .filter(login_throttles::key.eq_any(sorted))
        .select(ThrottleRow::as_select())
        .order(login_throttles::key.asc())
        .for_update()
        .load(conn)
        .await
}

/// Writes a counter back.
pub async fn save(conn: &mut AsyncPgConnection, row: &ThrottleRow) -> QueryResult<()> {
    diesel::update(login_throttles::table.find(&row.key))
        .set(row)
        .execute(conn)
        .await
        .map(drop)
}

/// Deletes the counters `key` and every key starting with `prefix`, after
/// locking them in key order (the order admissions lock them in).
pub async fn delete(conn: &mut AsyncPgConnection, key: &str, prefix: &str) -> QueryResult<usize> {
    let pattern = format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let keys: Vec<String> = login_throttles::table
        .filter(
            login_throttles::key
                .eq(key)
                .or(login_throttles::key.like(pattern)),
        )
        .select(login_throttles::key)
        .order(login_throttles::key.asc())
        .for_update()
        .load(conn)
        .await?;
    diesel::delete(login_throttles::table.filter(login_throttles::key.eq_any(keys)))
        .execute(conn)
        .await
}

/// Deletes counters that remember nothing any more: not locked, nothing in
/// flight (or only attempts abandoned before `abandoned_before`), and a
/// window that started before `window_started_before`.
pub async fn sweep(
    conn: &mut AsyncPgConnection,
    now: NaiveDateTime,
    window_started_before: NaiveDateTime,
    abandoned_before: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::delete(
        login_throttles::table
            .filter(
                login_throttles::locked_until
                    .is_null()
                    .or(login_throttles::locked_until.lt(now)),
            )
            .filter(login_throttles::window_started_at.lt(window_started_before))
            .filter(
                login_throttles::in_flight
                    .eq(0)
                    .or(login_throttles::in_flight_since.lt(abandoned_before)),
            ),
    )
    .execute(conn)
    .await
}
