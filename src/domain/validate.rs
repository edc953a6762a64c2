//! The shapes of values people and programs send: checked once, here, with
//! the request field named in the error. Lengths are bounded earlier, by
//! the codec, from the limits each field declares in the proto.

use uuid::Uuid;

use crate::{auth::policy::validate_permission, error::AppError};

/// The range of a concurrency key's maximum (a job's, or a job type's
/// declaration's).
pub const CONCURRENCY_MAX_RANGE: std::ops::RangeInclusive<i32> = 1..=10_000;
/// Attempts a job gets when neither the request nor its module says.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;
/// Most attempts a job may ask for.
pub const MAX_ATTEMPTS_LIMIT: i32 = 100;
/// The range of job priorities.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;

/// A required UUID field.
pub fn id(field: &str, value: &str) -> Result<Uuid, AppError> {
    if value.is_empty() {
        return Err(AppError::invalid(field, "is required"));
    }
    value
        .parse()
        .map_err(|_| AppError::invalid(field, "is not a UUID"))
}

/// A required non-blank string, trimmed.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, AppError> {
    let value = value.trim();
    if value.is_empty() {
        Err(AppError::invalid(field, "is required"))
    } else {
        Ok(value)
    }
}

/// An email address: one `@`, a non-empty local part, a dotted domain, no
/// spaces or control characters.
pub fn email(field: &str, email: &str) -> Result<String, AppError> {
    let email = email.trim();
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if ok {
        Ok(email.to_owned())
    } else {
        Err(AppError::invalid(field, "is not a valid email address"))
    }
}

/// A username: 3 to 64 letters, digits, `.`, `_` or `-`.
pub fn username(field: &str, username: &str) -> Result<String, AppError> {
    let ok = (3..=64).contains(&username.len())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(username.to_owned())
    } else {
        Err(AppError::invalid(
            field,
            "must be 3 to 64 letters, digits, '.', '_' or '-'",
        ))
    }
}

/// An optional personal name: trimmed, no control characters; empty means
/// none.
pub fn personal_name(field: &str, name: &str) -> Result<Option<String>, AppError> {
    let name = name.trim();
    if name.chars().any(char::is_control) {
        return Err(AppError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok((!name.is_empty()).then(|| name.to_owned()))
}

/// A role name: 1 to 64 lowercase letters, digits, `-` or `_`, and not a
/// UUID (roles are looked up by id or name).
pub fn role_name(field: &str, name: &str) -> Result<String, AppError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.parse::<Uuid>().is_err();
    if ok {
        Ok(name.to_owned())
    } else {
        Err(AppError::invalid(
            field,
            "must be 1 to 64 lowercase letters, digits, '-' or '_'",
        ))
    }
}

/// Permission strings: each well-formed, at least one, duplicates dropped.
pub fn permissions(field: &str, permissions: &[String]) -> Result<Vec<String>, AppError> {
    if permissions.is_empty() {
        return Err(AppError::invalid(
            field,
            "must name at least one permission",
        ));
    }
    let mut unique: Vec<String> = Vec::with_capacity(permissions.len());
    for (index, permission) in permissions.iter().enumerate() {
        validate_permission(permission)
            .map_err(|message| AppError::invalid(format!("{field}[{index}]"), message))?;
        if !unique.contains(permission) {
            unique.push(permission.clone());
        }
    }
    Ok(unique)
}

/// Free text such as a description: trimmed, no control characters other
/// than newlines and tabs.
pub fn text(field: &str, value: &str) -> Result<String, AppError> {
    let value = value.trim();
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(AppError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// A job type: 1 to 128 letters, digits, `.`, `_`, `-`, `:` or `/`.
pub fn job_name(field: &str, name: &str) -> Result<String, AppError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(AppError::invalid(
            field,
            "must be 1 to 128 letters, digits, '.', '_', '-', ':' or '/'",
        ))
    }
}

/// A module name: kebab-case, 1 to 64 lowercase letters and digits in
/// words joined by single `-`, starting with a letter.
pub fn module_name(field: &str, name: &str) -> Result<String, AppError> {
    if is_module_name(name) {
        Ok(name.to_owned())
    } else {
        Err(AppError::invalid(
            field,
            "must be kebab-case: lowercase letters and digits in words joined by '-', \
             starting with a letter, at most 64 characters",
        ))
    }
}

/// Whether `name` is a well-formed module name (see [`module_name`]).
pub fn is_module_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The namespace of a job name: the part before its first `.` when that is
/// a module name (`backup` of `backup.run`). A job whose namespace names a
/// registered module is that module's job.
pub fn job_namespace(job: &str) -> Option<&str> {
    job.split_once('.')
        .map(|(namespace, _)| namespace)
        .filter(|namespace| is_module_name(namespace))
}

/// Free-form JSON a client or worker sends: at most `max_bytes` when
/// encoded as JSON, and no NUL characters (PostgreSQL's JSONB cannot hold
/// them).
pub fn json_document(
    field: &str,
    value: &serde_json::Value,
    max_bytes: usize,
) -> Result<(), AppError> {
    fn has_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(has_nul),
            serde_json::Value::Object(map) => {
                map.iter().any(|(k, v)| k.contains('\0') || has_nul(v))
            }
            _ => false,
        }
    }
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > max_bytes {
        return Err(AppError::invalid(
            field,
            format!("is {size} bytes as JSON; at most {max_bytes} are accepted"),
        ));
    }
    if has_nul(value) {
        return Err(AppError::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_usernames() {
        assert!(email("email", "a@b.example").is_ok());
        assert!(email("email", "a b@c.example").is_err());
        assert!(email("email", "a@b").is_err());
        assert!(username("username", "ab").is_err());
        assert!(username("username", "al.ice_1-x").is_ok());
    }

    #[test]
    fn job_and_module_names() {
        assert!(job_name("name", "backup.run").is_ok());
        assert!(job_name("name", "a b").is_err());
        assert!(module_name("m", "backup-runner").is_ok());
        for bad in ["Backup", "backup--x", "-x", "x-", "1x", "x_y", ""] {
            assert!(module_name("m", bad).is_err(), "{bad}");
        }
        assert_eq!(job_namespace("backup.run"), Some("backup"));
        assert_eq!(job_namespace("backup-runner.a.b"), Some("backup-runner"));
        for plain in ["backup", "Backup.run", ".run", "a_b.run", "x/y.run"] {
            assert_eq!(job_namespace(plain), None, "{plain}");
        }
    }

    #[test]
    fn json_documents_are_bounded_and_nul_free() {
        let small = serde_json::json!({"a": "b"});
        assert!(json_document("payload", &small, 100).is_ok());
        assert!(json_document("payload", &small, 5).is_err());
        let nul = serde_json::json!({"a": "x\u{0}y"});
        assert!(json_document("payload", &nul, 100).is_err());
    }

    #[test]
    fn permissions_name_the_bad_element() {
        let error = permissions("permissions", &["jobs:read".into(), "bad".into()]).unwrap_err();
        assert!(error.to_string().starts_with("permissions[1]:"), "{error}");
        assert_eq!(
            permissions("p", &["a:b".into(), "a:b".into()]).unwrap(),
            vec!["a:b".to_owned()]
        );
    }

    // Users and roles check their shapes in the domain, as jobs and modules
    // do: the types' `validated` name the fields as the requests do.

    #[test]
    fn a_new_account_is_checked_and_normalized() {
        use crate::domain::accounts::NewAccount;
        let new = NewAccount {
            email: " a@b.example ".into(),
            username: "al.ice".into(),
            password: String::new(),
            first_name: Some("  ".into()),
            last_name: Some(" Lovelace ".into()),
            roles: vec![],
        };
        let checked = new.clone().validated().unwrap();
        assert_eq!(checked.email, "a@b.example");
        assert_eq!(checked.first_name, None);
        assert_eq!(checked.last_name.as_deref(), Some("Lovelace"));
        let bad = NewAccount {
            username: "x".into(),
            ..new
        };
        assert_eq!(
            bad.validated().unwrap_err().to_string(),
            "username: must be 3 to 64 letters, digits, '.', '_' or '-'"
        );
    }

    #[test]
    fn account_changes_report_the_first_bad_field_the_mask_named() {
        use crate::domain::accounts::AccountChanges;
        let changes = AccountChanges {
            email: Some("not an email".into()),
            username: Some("x".into()),
            fields: vec!["username".into(), "email".into()],
            ..AccountChanges::default()
        };
        assert_eq!(
            changes.validated().unwrap_err().to_string(),
            "user.username: must be 3 to 64 letters, digits, '.', '_' or '-'"
        );
        let clear = AccountChanges {
            first_name: Some(Some(" ".into())),
            fields: vec!["first_name".into()],
            ..AccountChanges::default()
        };
        assert_eq!(clear.validated().unwrap().first_name, Some(None));
    }

    #[test]
    fn roles_are_checked_with_their_request_field_names() {
        use crate::domain::roles::{NewRoleSpec, RoleUpdate};
        let spec = NewRoleSpec {
            name: "ops".into(),
            description: " on call ".into(),
            permissions: vec!["jobs:read".into(), "jobs:read".into()],
        };
        let checked = spec.validated().unwrap();
        assert_eq!(checked.description, "on call");
        assert_eq!(checked.permissions, ["jobs:read"]);
        let update = RoleUpdate {
            permissions: Some(vec![]),
            fields: vec!["permissions".into()],
            ..RoleUpdate::default()
        };
        assert_eq!(
            update.validated().unwrap_err().to_string(),
            "role.permissions: must name at least one permission"
        );
        let rename = RoleUpdate {
            name: Some("Ops".into()),
            fields: vec!["name".into()],
            ..RoleUpdate::default()
        };
        assert!(
            rename
                .validated()
                .unwrap_err()
                .to_string()
                .starts_with("role.name: ")
        );
    }
}
