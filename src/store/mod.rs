//! Repositories: the only code that writes SQL. Functions take a connection so
//! that callers can compose them inside one transaction; they return
//! `diesel::QueryResult`, and the error mapping happens once, in `error.rs`.

pub mod audit;
pub mod jobs;
pub mod models;
pub mod modules;
pub mod pagination;
pub mod roles;
pub mod sessions;
pub mod throttle;
pub mod users;

use chrono::{NaiveDateTime, Timelike as _, Utc};

/// The seed schema stores `TIMESTAMP(3)` without time zone; the service
/// always writes and reads UTC, cut to milliseconds so that values read back
/// compare equal to values written.
pub fn now() -> NaiveDateTime {
    let now = Utc::now().naive_utc();
    now.with_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(now)
}
