//! API keys: the viewer's own keys, creating one (its secret shown once,
//! on the answer to the POST, never again) and revoking one —
//! CreateApiKey, ListApiKeys and RevokeApiKey with their rules (a key never
//! holds what its owner does not).

use axum::{
    Form,
    extract::Path,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use uuid::Uuid;

use super::{Console, Ctx, rpc, session::CsrfForm, session::Viewer, views};
use crate::{
    domain::api_keys::NewApiKey,
    error::AppError,
    store::pagination::{MAX_PAGE_SIZE, PageRequest},
};

async fn render(ctx: &Ctx, viewer: &Viewer, created: Option<(&str, &str)>) -> Response {
    match ctx
        .api_keys
        .list(&viewer.actor, None, PageRequest::first(MAX_PAGE_SIZE))
        .await
    {
        Ok(page) => views::page(
            viewer,
            views::Shell {
                title: "API keys",
                current: "API keys",
                live: None,
            },
            views::keys::content(viewer, &page.items, created),
        ),
        Err(error) => views::error_response(&error),
    }
}

/// `GET /console/keys`
pub async fn page(Console(ctx): Console, viewer: Viewer) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_API_KEYS).await {
        return refused;
    }
    render(&ctx, &viewer, None).await
}

/// The new key's fields.
#[derive(Debug, Deserialize)]
pub struct NewKeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    /// Permissions separated by spaces or commas.
    #[serde(default)]
    permissions: String,
}

/// `POST /console/keys`: CreateApiKey; the answer shows the secret once.
pub async fn create(
    Console(ctx): Console,
    viewer: Viewer,
    Form(form): Form<NewKeyForm>,
) -> Response {
    if let Err(refused) = viewer
        .authorize(&ctx, &form.csrf, rpc::CREATE_API_KEY)
        .await
    {
        return refused;
    }
    let permissions = form
        .permissions
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let created = ctx
        .api_keys
        .create(
            &viewer.actor,
            NewApiKey {
                user_id: None,
                name: form.name,
                permissions,
                expires_at: None,
            },
        )
        .await;
    ctx.callers.fence().await;
    match created {
        Ok((row, secret)) => {
            let mut response = render(&ctx, &viewer, Some((&row.name, &secret))).await;
            response.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(error) => views::error_response(&error),
    }
}

/// `POST /console/keys/{id}/revoke`: RevokeApiKey.
pub async fn revoke(
    Console(ctx): Console,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = viewer
        .authorize(&ctx, &form.csrf, rpc::REVOKE_API_KEY)
        .await
    {
        return refused;
    }
    let result = match Uuid::try_parse(&id) {
        Ok(id) => ctx.api_keys.revoke(&viewer.actor, id).await.map(|_| ()),
        Err(_) => Err(AppError::invalid("id", "is not a key id")),
    };
    ctx.callers.fence().await;
    match result {
        Ok(()) => Redirect::to("/console/keys").into_response(),
        Err(error) => views::error_response(&error),
    }
}
