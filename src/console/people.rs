//! Users and roles: the accounts with their roles, creating an account,
//! deactivating one and assigning a role — CreateUser, UpdateUser
//! (`is_active`) and AssignRole, with their permissions and rules (the last
//! admin stays, nobody grants what they do not hold). Identity writes wait
//! for the replicas' caller caches, as through the gRPC layer.

use axum::{
    Form,
    extract::{Path, Query},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    Console, Ctx, rpc, session::CsrfForm, session::Viewer, views, views::people::PeopleQuery,
};
use crate::{
    domain::accounts::{AccountChanges, AccountQuery, NewAccount},
    error::AppError,
    store::pagination::{Cursor, PageRequest},
};

/// Rows per page.
const PAGE_SIZE: i64 = 50;

/// `GET /console/users`
pub async fn page(
    Console(ctx): Console,
    viewer: Viewer,
    Query(query): Query<PeopleQuery>,
) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_USERS).await {
        return refused;
    }
    let result = async {
        let page = PageRequest {
            limit: PAGE_SIZE,
            after: Cursor::decode(&query.page)?,
        };
        let text = Some(query.q.trim().to_owned()).filter(|q| !q.is_empty());
        let accounts = ctx
            .identity
            .accounts
            .list(
                AccountQuery {
                    text,
                    is_active: None,
                },
                page,
            )
            .await?;
        let roles = if viewer.may(rpc::LIST_ROLES) {
            ctx.identity
                .roles
                .list(PageRequest::first(500))
                .await?
                .items
        } else {
            Vec::new()
        };
        Ok::<_, AppError>((accounts, roles))
    }
    .await;
    match result {
        Ok((accounts, roles)) => views::page(
            &viewer,
            views::Shell {
                title: "Users & roles",
                current: "Users & roles",
                live: None,
            },
            views::people::content(&viewer, &query, &accounts, &roles),
        ),
        Err(error) => views::error_response(&error),
    }
}

/// The new account's fields.
#[derive(Debug, Deserialize)]
pub struct NewUserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
}

/// `POST /console/users`: CreateUser.
pub async fn create(
    Console(ctx): Console,
    viewer: Viewer,
    Form(form): Form<NewUserForm>,
) -> Response {
    if let Err(refused) = viewer.authorize(&ctx, &form.csrf, rpc::CREATE_USER).await {
        return refused;
    }
    let new = NewAccount {
        email: form.email,
        username: form.username,
        password: form.password,
        first_name: None,
        last_name: None,
        roles: Some(form.role.trim().to_owned())
            .filter(|r| !r.is_empty())
            .into_iter()
            .collect(),
    };
    let result = ctx.identity.accounts.create(&viewer.actor, new).await;
    done(&ctx, result.map(|_| ())).await
}

async fn done(ctx: &Ctx, result: Result<(), AppError>) -> Response {
    ctx.callers.fence().await;
    match result {
        Ok(()) => Redirect::to("/console/users").into_response(),
        Err(error) => views::error_response(&error),
    }
}

fn user_id(text: &str) -> Result<Uuid, AppError> {
    Uuid::try_parse(text).map_err(|_| AppError::invalid("id", "is not a user id"))
}

/// `POST /console/users/{id}/deactivate`: UpdateUser with `is_active`
/// false (its sessions and keys end with it).
pub async fn deactivate(
    Console(ctx): Console,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = viewer.authorize(&ctx, &form.csrf, rpc::UPDATE_USER).await {
        return refused;
    }
    let result = match user_id(&id) {
        Ok(id) => ctx
            .identity
            .accounts
            .update(
                &viewer.actor,
                id,
                AccountChanges {
                    is_active: Some(false),
                    fields: vec!["is_active".into()],
                    ..AccountChanges::default()
                },
            )
            .await
            .map(|_| ()),
        Err(error) => Err(error),
    };
    done(&ctx, result).await
}

/// The role to assign.
#[derive(Debug, Deserialize)]
pub struct AssignForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
}

/// `POST /console/users/{id}/roles`: AssignRole.
pub async fn assign(
    Console(ctx): Console,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<AssignForm>,
) -> Response {
    if let Err(refused) = viewer.authorize(&ctx, &form.csrf, rpc::ASSIGN_ROLE).await {
        return refused;
    }
    let result = match user_id(&id) {
        Ok(id) => ctx
            .identity
            .roles
            .assign(&viewer.actor, id, form.role.trim())
            .await
            .map(|_| ()),
        Err(error) => Err(error),
    };
    done(&ctx, result).await
}
