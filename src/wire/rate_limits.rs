//! Rate limits on the wire.

use crate::{
    domain::jobs::rate_limits::RateLimitSpec, proto::automation_v1 as pb,
    store::rate_limits::RateLimitRow, wire::time::timestamp,
};

/// The spec of a `RateLimit` message (shapes are checked by the domain).
pub fn rate_limit_spec(message: Option<pb::RateLimit>) -> RateLimitSpec {
    let message = message.unwrap_or_default();
    RateLimitSpec {
        name: message.name,
        units: message.units,
        interval_ms: message.interval.and_then(|d| {
            let ms = i128::from(d.seconds) * 1000 + i128::from(d.nanos) / 1_000_000;
            (d.nanos >= 0 && d.seconds >= 0)
                .then(|| i64::try_from(ms).ok())
                .flatten()
        }),
        burst: message.burst,
    }
}

/// The wire `RateLimit` of a row.
pub fn rate_limit_message(row: RateLimitRow) -> pb::RateLimit {
    pb::RateLimit {
        name: row.name,
        units: row.units,
        interval: Some(prost_types::Duration {
            seconds: row.interval_ms / 1000,
            nanos: ((row.interval_ms % 1000) * 1_000_000) as i32,
        }),
        burst: row.burst,
        tokens: row.tokens,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
    }
}
