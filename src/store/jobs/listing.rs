//! The jobs ListJobs and the dead-letter actions select: the filters and
//! the newest-first page.

use chrono::NaiveDateTime;
use diesel::{
    dsl::sql,
    pg::Pg,
    prelude::*,
    sql_types::{Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{JobRow, JobStatus};
use crate::schema::jobs;

/// Filters of [`list`]; they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub module_name: Option<String>,
    pub name: Option<String>,
    /// Created at or after.
    pub created_from: Option<NaiveDateTime>,
    /// Created before.
    pub created_until: Option<NaiveDateTime>,
    /// Continue before this (createdAt, id): the list runs newest first.
    pub before: Option<(NaiveDateTime, Uuid)>,
    /// The last error's `message` starts with this.
    pub error_prefix: Option<String>,
    /// FAILED at or after.
    pub failed_from: Option<NaiveDateTime>,
    /// FAILED before.
    pub failed_until: Option<NaiveDateTime>,
    /// Finished (COMPLETED, FAILED, CANCELLED) at or after.
    pub finished_from: Option<NaiveDateTime>,
    /// Finished before.
    pub finished_until: Option<NaiveDateTime>,
    /// Created by this schedule.
    pub schedule_id: Option<Uuid>,
}

/// Jobs newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &JobFilter,
    limit: i64,
) -> QueryResult<Vec<JobRow>> {
    filtered(filter)
        .order((jobs::created_at.desc(), jobs::id.desc()))
        .limit(limit)
        .load(conn)
        .await
}

/// The jobs `filter` selects, unordered.
pub(super) fn filtered(
    filter: &JobFilter,
) -> jobs::BoxedQuery<'static, diesel::pg::Pg, diesel::dsl::AsSelect<JobRow, diesel::pg::Pg>> {
    let mut query = jobs::table.select(JobRow::as_select()).into_boxed();
    if let Some(status) = filter.status {
        // A literal, so that the planner can use the partial indexes of a
        // state whatever plan it keeps for the statement.
        query = query.filter(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "jobs.status = '{}'",
            status.label()
        )));
    }
    if let Some(module) = &filter.module_name {
        query = query.filter(jobs::module_name.eq(module.clone()));
    }
    if let Some(name) = &filter.name {
        query = query.filter(jobs::name.eq(name.clone()));
    }
    if let Some(from) = filter.created_from {
        query = query.filter(jobs::created_at.ge(from));
    }
    if let Some(until) = filter.created_until {
        query = query.filter(jobs::created_at.lt(until));
    }
    if let Some(schedule) = filter.schedule_id {
        query = query.filter(jobs::schedule_id.eq(schedule));
    }
    if let Some((time, id)) = filter.before {
        query = query.filter(
            jobs::created_at
                .lt(time)
                .or(jobs::created_at.eq(time).and(jobs::id.lt(id))),
        );
    }
    dead_letter_filters(query, filter)
}

/// Characters of an error message the prefix index keeps.
const INDEXED_PREFIX_CHARS: usize = 200;

/// The dead-letter filters of [`list`] (error prefix, failure and
/// finish times) on a boxed query of `jobs`. The states they imply are
/// written as literals, so that the planner can prove the predicates of
/// the partial indexes that serve them.
fn dead_letter_filters<'a>(
    mut query: jobs::BoxedQuery<'a, Pg, diesel::dsl::AsSelect<JobRow, Pg>>,
    filter: &JobFilter,
) -> jobs::BoxedQuery<'a, Pg, diesel::dsl::AsSelect<JobRow, Pg>> {
    if let Some(prefix) = filter.error_prefix.as_deref().filter(|p| !p.is_empty()) {
        let indexed: String = prefix.chars().take(INDEXED_PREFIX_CHARS).collect();
        query = query.filter(
            sql::<Bool>(r#"(left(jobs.error ->> 'message', 200) COLLATE "C") >= "#)
                .bind::<Text, _>(indexed.clone()),
        );
        if let Some(upper) = successor(&indexed) {
            query = query.filter(
                sql::<Bool>(r#"(left(jobs.error ->> 'message', 200) COLLATE "C") < "#)
                    .bind::<Text, _>(upper),
            );
        }
        query = query.filter(
            sql::<Bool>("starts_with(jobs.error ->> 'message', ")
                .bind::<Text, _>(prefix.to_owned())
                .sql(")"),
        );
    }
    if filter.failed_from.is_some() || filter.failed_until.is_some() {
        query = query.filter(sql::<Bool>("jobs.status = 'FAILED'"));
    }
    if let Some(from) = filter.failed_from {
        query = query.filter(jobs::failed_at.ge(from));
    }
    if let Some(until) = filter.failed_until {
        query = query.filter(jobs::failed_at.lt(until));
    }
    if filter.finished_from.is_some() || filter.finished_until.is_some() {
        query = query.filter(sql::<Bool>(
            "jobs.status IN ('COMPLETED', 'FAILED', 'CANCELLED')",
        ));
    }
    if let Some(from) = filter.finished_from {
        query = query.filter(jobs::updated_at.ge(from));
    }
    if let Some(until) = filter.finished_until {
        query = query.filter(jobs::updated_at.lt(until));
    }
    query
}

/// The smallest string above every string that starts with `prefix`, in
/// byte order (the `C` collation): its last character incremented (the
/// last ones dropped while they cannot be); `None` when there is none.
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::successor;

    #[test]
    fn the_successor_of_a_prefix_bounds_every_string_starting_with_it() {
        assert_eq!(successor("disk full").as_deref(), Some("disk fulm"));
        assert_eq!(successor(""), None);
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        // The surrogate range is skipped.
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        let upper = successor("timeout").unwrap();
        assert!("timeout: 30s".as_bytes() < upper.as_bytes());
    }
}
