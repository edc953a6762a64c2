//! `google.protobuf.FieldMask`: which fields an `Update*` call changes.

use crate::error::AppError;

/// The field names of an update mask, each checked against `allowed`, in
/// the order the client gave them.
pub fn mask_paths<'a>(
    mask: Option<&'a prost_types::FieldMask>,
    allowed: &[&str],
) -> Result<Vec<&'a str>, AppError> {
    let paths: Vec<&str> = mask
        .map(|m| m.paths.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if paths.is_empty() {
        return Err(AppError::invalid(
            "update_mask",
            format!(
                "is required; name the fields to change: {}",
                allowed.join(", ")
            ),
        ));
    }
    if let Some(unknown) = paths.iter().find(|p| !allowed.contains(p)) {
        return Err(AppError::invalid(
            "update_mask",
            format!(
                "'{unknown}' cannot be updated; allowed: {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(paths: &[&str]) -> prost_types::FieldMask {
        prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn paths_keep_the_clients_order() {
        let mask = mask(&["b", "a"]);
        assert_eq!(mask_paths(Some(&mask), &["a", "b"]).unwrap(), ["b", "a"]);
    }

    #[test]
    fn an_empty_or_unknown_path_is_refused() {
        let error = mask_paths(None, &["a", "b"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "update_mask: is required; name the fields to change: a, b"
        );
        let unknown = mask(&["a", "c"]);
        let error = mask_paths(Some(&unknown), &["a", "b"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "update_mask: 'c' cannot be updated; allowed: a, b"
        );
    }
}
