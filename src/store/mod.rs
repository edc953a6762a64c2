//! Repositories: the only code that writes SQL. Functions take a connection so
//! that callers can compose them inside one transaction; they return
//! `diesel::QueryResult`, and the error mapping happens once, in `error.rs`.

pub mod audit;
pub mod models;
pub mod pagination;
pub mod roles;
pub mod sessions;
pub mod throttle;
pub mod users;

use chrono::{NaiveDateTime, Utc};

/// The seed schema stores `TIMESTAMP` without time zone; the service always
/// writes and reads them as UTC.
pub fn now() -> NaiveDateTime {
    // Millisecond precision, as the columns are TIMESTAMP(3): values read back
    // compare equal to values written.
    let now = Utc::now().naive_utc();
    now.with_nanosecond_ms()
}

trait TruncateToMillis {
    fn with_nanosecond_ms(self) -> Self;
}

impl TruncateToMillis for NaiveDateTime {
    fn with_nanosecond_ms(self) -> Self {
        use chrono::Timelike as _;
        let nanos = self.nanosecond() / 1_000_000 * 1_000_000;
        self.with_nanosecond(nanos).unwrap_or(self)
    }
}
