//! Time on the wire is `google.protobuf.Timestamp` and `Duration`; in the
//! database it is a UTC `timestamp` (chrono's `NaiveDateTime`).
//!
//! What can go wrong: a client may send a timestamp outside the range the
//! protobuf type allows (0001-01-01 to 9999-12-31) or nanos outside
//! `0..1e9`; both are refused with the field named, never wrapped or
//! clamped.

use std::time::Duration;

use chrono::NaiveDateTime;
use prost_types::Timestamp;

use crate::error::AppError;

/// A stored UTC timestamp as a protobuf one.
pub fn timestamp(time: NaiveDateTime) -> Timestamp {
    let utc = time.and_utc();
    Timestamp {
        seconds: utc.timestamp(),
        nanos: utc.timestamp_subsec_nanos() as i32,
    }
}

/// The range `google.protobuf.Timestamp` allows: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59Z (PostgreSQL holds all of it).
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A protobuf timestamp as a stored UTC one; `field` names it in a refusal.
pub fn naive_time(field: &str, time: &Timestamp) -> Result<NaiveDateTime, AppError> {
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err(AppError::invalid(field, "nanos must be within 0..1e9"));
    }
    if !TIMESTAMP_SECONDS.contains(&time.seconds) {
        return Err(AppError::invalid(
            field,
            "must be within 0001-01-01 and 9999-12-31",
        ));
    }
    chrono::DateTime::from_timestamp(time.seconds, time.nanos as u32)
        .map(|t| t.naive_utc())
        .ok_or_else(|| AppError::invalid(field, "is out of range"))
}

/// An optional protobuf timestamp as a stored one (unset: `None`).
pub fn optional_time(
    field: &str,
    time: Option<&Timestamp>,
) -> Result<Option<NaiveDateTime>, AppError> {
    time.map(|t| naive_time(field, t)).transpose()
}

/// A duration as a protobuf one.
pub fn duration_message(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    #[test]
    fn timestamps_round_trip_to_the_nanosecond() {
        for (seconds, nanos) in [(0, 0), (1_700_000_000, 123_456_789), (-1, 999_999_999)] {
            let time = naive_time("t", &at(seconds, nanos)).unwrap();
            assert_eq!(timestamp(time), at(seconds, nanos));
        }
    }

    #[test]
    fn the_ends_of_the_protobuf_range_are_accepted() {
        let first = naive_time("t", &at(-62_135_596_800, 0)).unwrap();
        assert_eq!(first.to_string(), "0001-01-01 00:00:00");
        let last = naive_time("t", &at(253_402_300_799, 999_999_999)).unwrap();
        assert_eq!(last.to_string(), "9999-12-31 23:59:59.999999999");
    }

    #[test]
    fn timestamps_out_of_range_are_refused_with_the_field_named() {
        for bad in [
            at(-62_135_596_801, 0),
            at(253_402_300_800, 0),
            at(i64::MAX, 0),
            at(i64::MIN, 0),
        ] {
            let error = naive_time("schedule_time", &bad).unwrap_err();
            assert_eq!(
                error.to_string(),
                "schedule_time: must be within 0001-01-01 and 9999-12-31",
                "{bad:?}"
            );
        }
        for nanos in [-1, 1_000_000_000] {
            let error = naive_time("end_time", &at(0, nanos)).unwrap_err();
            assert_eq!(error.to_string(), "end_time: nanos must be within 0..1e9");
        }
    }

    #[test]
    fn an_unset_timestamp_is_none() {
        assert_eq!(optional_time("t", None).unwrap(), None);
        assert!(optional_time("t", Some(&at(0, -5))).is_err());
    }

    #[test]
    fn durations_keep_their_nanoseconds() {
        let message = duration_message(Duration::from_millis(1_500));
        assert_eq!((message.seconds, message.nanos), (1, 500_000_000));
    }
}
