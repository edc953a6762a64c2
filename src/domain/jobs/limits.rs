//! The concurrency key a job is created with: given by the client, or
//! derived from its payload by its job type's declaration in the module's
//! manifest. The claim enforces it (`store::jobs::claim`); here are its
//! shapes.

use serde_json::Value;

use crate::{domain::modules::manifest::JobDeclaration, error::AppError};

/// Longest concurrency key, in bytes (the column is `VARCHAR(255)`).
pub const MAX_KEY_BYTES: usize = 255;
/// The range of a key's maximum.
pub use crate::domain::validate::CONCURRENCY_MAX_RANGE as MAX_RANGE;

/// Checks a client-given key and maximum; `prefix` is the request's path.
pub fn validate(prefix: &str, key: Option<&str>, max: Option<i32>) -> Result<(), AppError> {
    if let Some(key) = key {
        let field = format!("{prefix}concurrency_key");
        check_key(&field, key)?;
        if key.starts_with(DERIVED_KEY_PREFIX) {
            return Err(AppError::invalid(
                field,
                format!(
                    "must not start with '{DERIVED_KEY_PREFIX}': keys starting with it are \
                     derived from job types' declarations"
                ),
            ));
        }
    }
    if let Some(max) = max {
        let field = format!("{prefix}concurrency_max");
        if key.is_none() {
            return Err(AppError::invalid(
                field,
                "is only accepted with concurrency_key",
            ));
        }
        if !MAX_RANGE.contains(&max) {
            return Err(AppError::invalid(
                field,
                format!(
                    "must be within {}..{} (0 for 1)",
                    MAX_RANGE.start(),
                    MAX_RANGE.end()
                ),
            ));
        }
    }
    Ok(())
}

/// Keys derived from a job type's declaration start with this, and keys a
/// client gives may not: a caller who may not run a module's jobs cannot
/// share (and so resize or starve) the slots of that module's keys.
pub const DERIVED_KEY_PREFIX: &str = "@";

fn check_key(field: &str, key: &str) -> Result<(), AppError> {
    if key.trim().is_empty() || key.chars().any(char::is_control) {
        return Err(AppError::invalid(field, "must be printable and not blank"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(AppError::invalid(
            field,
            format!("must be at most {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The key and maximum a new job gets: the client's, else its job type's
/// declaration read from the payload (`<job name>:<field value>`, so two job
/// types declaring the same field do not share slots), else none.
pub fn resolve(
    prefix: &str,
    name: &str,
    payload: &Value,
    key: Option<&str>,
    max: Option<i32>,
    declaration: Option<&JobDeclaration>,
) -> Result<Option<(String, i32)>, AppError> {
    if let Some(key) = key {
        return Ok(Some((key.to_owned(), max.unwrap_or(1))));
    }
    let Some(declared) = declaration.and_then(|d| d.concurrency.as_ref()) else {
        return Ok(None);
    };
    let field = format!("{prefix}payload.{}", declared.key);
    let value = match payload.get(&declared.key) {
        Some(Value::String(text)) => text.clone(),
        Some(value @ (Value::Number(_) | Value::Bool(_))) => value.to_string(),
        _ => {
            return Err(AppError::invalid(
                field,
                format!(
                    "job type '{name}' takes its concurrency key from this field: it must be a \
                     string, number or boolean"
                ),
            ));
        }
    };
    let key = format!("{DERIVED_KEY_PREFIX}{name}:{value}");
    check_key(&field, &key)?;
    Ok(Some((key, declared.max)))
}

/// Checks a client-given rate limit's name; a job takes a concurrency key
/// or a rate limit, not both (the claim serves each from its own index).
pub fn validate_rate_limit(
    prefix: &str,
    rate_limit: Option<&str>,
    keyed: bool,
) -> Result<(), AppError> {
    let Some(name) = rate_limit else {
        return Ok(());
    };
    let field = format!("{prefix}rate_limit");
    crate::domain::validate::job_name(&field, name)?;
    if keyed {
        return Err(AppError::invalid(
            field,
            "a job takes a concurrency key or a rate limit, not both",
        ));
    }
    Ok(())
}

/// The rate limit a new job of a declared type gets: the request's, else
/// the declaration's (unless the request gave a concurrency key).
pub fn rate_limit_of(
    prefix: &str,
    given: Option<&str>,
    keyed: bool,
    declaration: Option<&JobDeclaration>,
) -> Result<Option<String>, AppError> {
    if let Some(name) = given {
        if keyed {
            return Err(AppError::invalid(
                format!("{prefix}rate_limit"),
                "the job has a concurrency key (given, or declared by its job type): a job takes \
                 a concurrency key or a rate limit, not both",
            ));
        }
        return Ok(Some(name.to_owned()));
    }
    match declaration.and_then(|d| d.rate_limit.as_deref()) {
        Some(_) if keyed || declaration.is_some_and(|d| d.concurrency.is_some()) => {
            Err(AppError::invalid(
                format!("{prefix}concurrency_key"),
                "the job type declares a rate limit: a job takes a concurrency key or a rate \
                 limit, not both",
            ))
        }
        declared => Ok(declared.map(str::to_owned)),
    }
}

/// Checks that the rate limits `jobs` name exist, and holds them (key-share
/// locked) until the transaction commits, so that a concurrent
/// DeleteRateLimit waits and then sees the jobs. An unknown one is
/// INVALID_ARGUMENT on the first request naming it.
pub async fn lock_rate_limits(
    conn: &mut diesel_async::AsyncPgConnection,
    jobs: &[crate::store::jobs::NewJob],
    batch: bool,
) -> Result<(), AppError> {
    let mut names: Vec<String> = jobs.iter().filter_map(|j| j.rate_limit.clone()).collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    names.dedup();
    let existing = crate::store::rate_limits::lock_existing(conn, &names).await?;
    for (index, job) in jobs.iter().enumerate() {
        if let Some(name) = &job.rate_limit
            && !existing.contains(name)
        {
            return Err(AppError::invalid(
                format!("{}rate_limit", super::request_prefix(batch, index)),
                format!("no rate limit is named '{name}' (PutRateLimit declares one)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::modules::manifest::ConcurrencyDeclaration;

    fn declared(max: i32) -> JobDeclaration {
        JobDeclaration {
            name: "mail.send".into(),
            priority: None,
            max_attempts: None,
            concurrency: Some(ConcurrencyDeclaration {
                key: "customer_id".into(),
                max,
            }),
            rate_limit: None,
        }
    }

    #[test]
    fn a_given_key_wins_over_the_declaration() {
        let got = resolve(
            "",
            "mail.send",
            &json!({"customer_id": 7}),
            Some("k"),
            None,
            Some(&declared(2)),
        )
        .unwrap();
        assert_eq!(got, Some(("k".into(), 1)));
    }

    #[test]
    fn a_client_key_may_not_take_the_derived_prefix() {
        let refused = validate("", Some("@mail.send:7"), None);
        assert!(format!("{refused:?}").contains("concurrency_key"));
        assert!(validate("", Some("customer-7"), Some(2)).is_ok());
    }

    #[test]
    fn a_declared_key_is_read_from_the_payload() {
        let got = resolve(
            "",
            "mail.send",
            &json!({"customer_id": 7}),
            None,
            None,
            Some(&declared(2)),
        )
        .unwrap();
        assert_eq!(got, Some(("@mail.send:7".into(), 2)));
        let missing = resolve(
            "requests[1].",
            "mail.send",
            &json!({}),
            None,
            None,
            Some(&declared(2)),
        );
        assert!(format!("{missing:?}").contains("requests[1].payload.customer_id"));
    }

    #[test]
    fn bad_shapes_name_their_field() {
        let long = "k".repeat(256);
        assert!(format!("{:?}", validate("", Some(&long), None)).contains("concurrency_key"));
        assert!(format!("{:?}", validate("", Some("k"), Some(0))).contains("concurrency_max"));
        assert!(format!("{:?}", validate("", None, Some(2))).contains("concurrency_max"));
        assert!(validate("", Some("k"), Some(10_000)).is_ok());
    }
}
