//! Modules: the registry with each module's state and version, its
//! lifecycle actions (Enable, Disable, Remove: the RPCs of the same names,
//! with their permissions) and the hook job of a transition, linked.

use axum::{
    Form,
    extract::Path,
    response::{IntoResponse, Redirect, Response},
};

use super::{Console, rpc, session::CsrfForm, session::Viewer, views};
use crate::{
    error::AppError,
    store::pagination::{MAX_PAGE_SIZE, PageRequest},
};

/// `GET /console/modules`
pub async fn page(Console(ctx): Console, viewer: Viewer) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_MODULES).await {
        return refused;
    }
    match ctx
        .modules
        .list(None, PageRequest::first(MAX_PAGE_SIZE))
        .await
    {
        Ok(page) => views::page(
            &viewer,
            views::Shell {
                title: "Modules",
                current: "Modules",
                live: None,
            },
            views::modules::content(&viewer, &page.items, !page.next_page_token.is_empty()),
        ),
        Err(error) => views::error_response(&error),
    }
}

/// `POST /console/modules/{name}/{enable|disable|remove}`
pub async fn act(
    Console(ctx): Console,
    viewer: Viewer,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let rpc = match action.as_str() {
        "enable" => rpc::ENABLE_MODULE,
        "disable" => rpc::DISABLE_MODULE,
        "remove" => rpc::DELETE_MODULE,
        _ => {
            return views::error_response(&AppError::NotFound(format!("action {action}")));
        }
    };
    if let Err(refused) = viewer.authorize(&ctx, &form.csrf, rpc).await {
        return refused;
    }
    let actor = &viewer.actor;
    let result = match action.as_str() {
        "enable" => ctx.modules.enable(actor, &name).await.map(|_| ()),
        "disable" => ctx.modules.disable(actor, &name).await.map(|_| ()),
        _ => ctx.modules.delete(actor, &name).await.map(|_| ()),
    };
    match result {
        Ok(()) => Redirect::to("/console/modules").into_response(),
        Err(error) => views::error_response(&error),
    }
}
