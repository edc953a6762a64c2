//! Repositories: the only code that writes SQL. Functions take a connection so
//! that callers can compose them inside one transaction; they return
//! `diesel::QueryResult`, and the error mapping happens once, in `error.rs`.

pub mod api_keys;
pub mod audit;
pub mod caller_changes;
pub mod console;
pub mod fleet;
pub mod jobs;
pub mod kept;
pub mod models;
pub mod modules;
pub mod pagination;
pub mod rate_limits;
pub mod retention;
pub mod roles;
pub mod schedules;
pub mod sessions;
pub mod stats;
pub mod throttle;
pub mod users;

use chrono::{NaiveDateTime, Timelike as _, Utc};

/// A Rust enum for one of the seed's PostgreSQL enum types, read and written
/// by label.
macro_rules! pg_enum {
    ($(#[$meta:meta])* $name:ident => $sql:ty { $($(#[$vmeta:meta])* $variant:ident = $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow)]
        #[diesel(sql_type = $sql)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in the enum's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The enum label in the database.
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }

            /// Parses a label.
            pub fn from_label(label: &str) -> Option<Self> {
                match label {
                    $($label => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl diesel::serialize::ToSql<$sql, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                use std::io::Write as _;
                out.write_all(self.label().as_bytes())?;
                Ok(diesel::serialize::IsNull::No)
            }
        }

        impl diesel::deserialize::FromSql<$sql, diesel::pg::Pg> for $name {
            fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let label = std::str::from_utf8(bytes.as_bytes())?;
                Self::from_label(label)
                    .ok_or_else(|| format!("unknown {} label {label}", stringify!($name)).into())
            }
        }
    };
}
pub(crate) use pg_enum;

/// The seed schema stores `TIMESTAMP(3)` without time zone; the service
/// always writes and reads UTC, cut to milliseconds so that values read back
/// compare equal to values written.
pub fn now() -> NaiveDateTime {
    let now = Utc::now().naive_utc();
    now.with_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(now)
}
