//! `User` messages and the requests of `UserService`: accounts to the wire,
//! new accounts, changes and queries to the domain, whose
//! [`NewAccount::validated`] and [`AccountChanges::validated`] check the
//! fields' shapes.

use uuid::Uuid;

use super::{mask::mask_paths, time::timestamp};
use crate::{
    domain::{
        accounts::{Account, AccountChanges, AccountQuery, NewAccount},
        validate,
    },
    error::AppError,
    proto::automation_v1 as pb,
};

/// The fields UpdateUser may change.
const UPDATABLE: [&str; 5] = ["email", "username", "first_name", "last_name", "is_active"];

/// The wire `User` of an account (never its password hash).
pub fn user_message(account: Account) -> pb::User {
    let row = account.user;
    pb::User {
        id: row.id.to_string(),
        email: row.email,
        username: row.username,
        first_name: row.first_name.unwrap_or_default(),
        last_name: row.last_name.unwrap_or_default(),
        is_active: row.is_active,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
        last_login_time: row.last_login.map(timestamp),
        roles: account.roles,
        permissions: account.permissions,
    }
}

/// A `CreateUserRequest` as a new account, as sent.
pub fn new_account(request: pb::CreateUserRequest) -> NewAccount {
    NewAccount {
        email: request.email,
        username: request.username,
        first_name: Some(request.first_name),
        last_name: Some(request.last_name),
        password: request.password,
        roles: request.roles,
    }
}

/// An `UpdateUserRequest` as the account's id and the changes its mask
/// names, as sent.
pub fn account_changes(request: pb::UpdateUserRequest) -> Result<(Uuid, AccountChanges), AppError> {
    let paths = mask_paths(request.update_mask.as_ref(), &UPDATABLE)?;
    let user = request
        .user
        .as_ref()
        .ok_or_else(|| AppError::invalid("user", "is required"))?;
    let id = validate::id("user.id", &user.id)?;
    let mut changes = AccountChanges {
        fields: paths.iter().map(|p| p.to_string()).collect(),
        ..AccountChanges::default()
    };
    for path in paths {
        match path {
            "email" => changes.email = Some(user.email.clone()),
            "username" => changes.username = Some(user.username.clone()),
            "first_name" => changes.first_name = Some(Some(user.first_name.clone())),
            "last_name" => changes.last_name = Some(Some(user.last_name.clone())),
            _ => changes.is_active = Some(user.is_active),
        }
    }
    Ok((id, changes))
}

/// The filters of a `ListUsersRequest` (its page is read apart): a blank
/// query matches everyone.
pub fn account_query(request: &pb::ListUsersRequest) -> AccountQuery {
    let text = request.query.trim();
    AccountQuery {
        text: (!text.is_empty()).then(|| text.to_owned()),
        is_active: request.is_active,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_the_masked_fields_only() {
        let request = pb::UpdateUserRequest {
            user: Some(pb::User {
                id: Uuid::nil().to_string(),
                username: "ignored".into(),
                first_name: "Ada".into(),
                is_active: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["first_name".into(), "is_active".into()],
            }),
        };
        let (id, changes) = account_changes(request).unwrap();
        assert_eq!(id, Uuid::nil());
        assert_eq!(changes.fields, ["first_name", "is_active"]);
        assert_eq!(changes.first_name, Some(Some("Ada".into())));
        assert_eq!(changes.is_active, Some(false));
        assert_eq!(changes.username, None);
    }

    #[test]
    fn changes_need_the_users_id() {
        let request = pb::UpdateUserRequest {
            user: Some(pb::User::default()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["email".into()],
            }),
        };
        assert_eq!(
            account_changes(request).unwrap_err().to_string(),
            "user.id: is required"
        );
    }

    #[test]
    fn a_blank_query_matches_everyone() {
        let request = pb::ListUsersRequest {
            query: "  ".into(),
            ..Default::default()
        };
        assert_eq!(account_query(&request).text, None);
    }
}
