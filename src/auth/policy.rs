//! Which RPC needs what. The table comes from the `(automation.v1.access)`
//! option on each RPC in the proto, read at build time, so the contract
//! clients see through reflection is the rule the server enforces.

/// The access rule of one RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessRule {
    /// No token needed.
    Public,
    /// Any valid token.
    Authenticated,
    /// A valid token whose roles grant this `resource:action`.
    Permission(&'static str),
}

include!(concat!(env!("OUT_DIR"), "/access_policies.rs"));

/// The rule of the RPC at `path` (`/automation.v1.UserService/GetUser`), or
/// `None` for a method the contract does not declare.
pub fn rule_for(path: &str) -> Option<AccessRule> {
    METHOD_ACCESS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, rule)| *rule)
}

/// Whether a set of held permissions grants `required`. A held `*` segment
/// matches any value of that segment.
pub fn grants<S: AsRef<str>>(held: &[S], required: &str) -> bool {
    let Some((resource, action)) = required.split_once(':') else {
        return false;
    };
    held.iter().any(|permission| {
        permission
            .as_ref()
            .split_once(':')
            .is_some_and(|(r, a)| (r == "*" || r == resource) && (a == "*" || a == action))
    })
}

/// Checks a permission string: `resource:action`, each segment lowercase
/// letters, digits, `-` or `_`, or exactly `*`.
pub fn validate_permission(permission: &str) -> Result<(), String> {
    let valid_segment = |s: &str| {
        s == "*"
            || (!s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
    };
    match permission.split_once(':') {
        Some((resource, action)) if valid_segment(resource) && valid_segment(action) => Ok(()),
        _ => Err(format!(
            "'{permission}' is not a permission: expected resource:action, each a lowercase \
             word or a whole '*'"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_whole_segments() {
        assert!(grants(&["*:*"], "users:read"));
        assert!(grants(&["jobs:*"], "jobs:write"));
        assert!(grants(&["*:read"], "modules:read"));
        assert!(!grants(&["jobs:*"], "users:read"));
        assert!(!grants(&["users:read"], "users:write"));
        assert!(!grants::<&str>(&[], "users:read"));
    }

    #[test]
    fn permission_syntax_is_checked() {
        assert!(validate_permission("users:read").is_ok());
        assert!(validate_permission("*:*").is_ok());
        assert!(validate_permission("jobs:*").is_ok());
        assert!(validate_permission("users").is_err());
        assert!(validate_permission("us*:read").is_err());
        assert!(validate_permission("users:read:x").is_err());
        assert!(validate_permission(":read").is_err());
    }

    #[test]
    fn every_declared_rpc_has_a_well_formed_rule() {
        assert!(METHOD_ACCESS.len() >= 30);
        for (path, rule) in METHOD_ACCESS {
            assert!(path.starts_with("/automation.v1."), "{path}");
            if let AccessRule::Permission(p) = rule {
                validate_permission(p).unwrap_or_else(|e| panic!("{path}: {e}"));
            }
        }
        assert_eq!(
            rule_for("/automation.v1.AuthService/Login"),
            Some(AccessRule::Public)
        );
        assert_eq!(rule_for("/automation.v1.Nope/Nope"), None);
    }
}
