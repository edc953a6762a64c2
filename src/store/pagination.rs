//! Keyset page tokens: opaque to clients, stable under concurrent inserts.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::NaiveDateTime;
use uuid::Uuid;

use crate::error::AppError;

/// Default and largest page sizes of every `List*` RPC.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// See [`DEFAULT_PAGE_SIZE`].
pub const MAX_PAGE_SIZE: i64 = 500;

/// Where the next page starts: after the row with this sort key and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Sort key of the last row returned (a timestamp or a name).
    pub key: String,
    /// Id of the last row returned; breaks ties.
    pub id: Uuid,
}

impl Cursor {
    /// Cursor after a row sorted by timestamp.
    pub fn at_time(time: NaiveDateTime, id: Uuid) -> Self {
        Self {
            key: time.and_utc().timestamp_micros().to_string(),
            id,
        }
    }

    /// The timestamp of a cursor made by [`Cursor::at_time`] (a forged
    /// token out of the years 1 to 9999 is refused like any other).
    pub fn time(&self) -> Result<NaiveDateTime, AppError> {
        use chrono::Datelike as _;
        self.key
            .parse::<i64>()
            .ok()
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.naive_utc())
            .filter(|t| (1..=9999).contains(&t.year()))
            .ok_or_else(|| AppError::invalid("page_token", "is not a token from this list"))
    }

    /// The opaque token.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}", self.id, self.key))
    }

    /// Parses a token; empty means the first page.
    pub fn decode(token: &str) -> Result<Option<Self>, AppError> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || AppError::invalid("page_token", "is not a token from this list");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (id, key) = raw.split_once('|').ok_or_else(bad)?;
        Ok(Some(Self {
            key: key.to_owned(),
            id: id.parse().map_err(|_| bad())?,
        }))
    }
}

/// Clamps a requested page size: 0 → default; above the maximum → maximum.
pub fn page_size(requested: i32) -> Result<i64, AppError> {
    match requested {
        n if n < 0 => Err(AppError::invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

/// One page asked for: how many rows, after which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Rows to return.
    pub limit: i64,
    /// Where the previous page ended; `None` for the first page.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// Parses the `page_size` and `page_token` of a `List*` request.
    pub fn parse(page_size_field: i32, page_token: &str) -> Result<Self, AppError> {
        Ok(Self {
            limit: page_size(page_size_field)?,
            after: Cursor::decode(page_token)?,
        })
    }

    /// The first page of `limit` rows.
    pub fn first(limit: i64) -> Self {
        Self { limit, after: None }
    }

    /// The cursor as (timestamp, id), for lists sorted by a timestamp.
    pub fn after_time(&self) -> Result<Option<(NaiveDateTime, Uuid)>, AppError> {
        self.after
            .as_ref()
            .map(|cursor| Ok((cursor.time()?, cursor.id)))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            key: "alice".into(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), Some(cursor));
        assert_eq!(Cursor::decode("").unwrap(), None);
        assert!(Cursor::decode("!!").is_err());
    }

    #[test]
    fn page_sizes_are_clamped() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
