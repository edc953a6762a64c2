//! Workers: the Work streams connected to this replica, as the dispatcher's
//! registry knows them (a read-only snapshot), with the account each works
//! for. Needs what ListJobs needs.

use std::collections::HashMap;

use axum::response::Response;
use uuid::Uuid;

use super::{Console, rpc, session::Viewer, views};

/// `GET /console/workers`
pub async fn page(Console(ctx): Console, viewer: Viewer) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_JOBS).await {
        return refused;
    }
    let streams = ctx.dispatcher.workers();
    // One read per distinct account (a handful: workers share accounts).
    let mut callers: HashMap<Uuid, String> = HashMap::new();
    for stream in &streams {
        if let std::collections::hash_map::Entry::Vacant(entry) = callers.entry(stream.caller) {
            let name = match ctx.identity.accounts.get(stream.caller).await {
                Ok(account) => account.user.username,
                Err(_) => stream.caller.to_string(),
            };
            entry.insert(name);
        }
    }
    let mut keys: HashMap<Uuid, String> = HashMap::new();
    for key in streams.iter().filter_map(|s| s.api_key) {
        if let std::collections::hash_map::Entry::Vacant(entry) = keys.entry(key) {
            let name = ctx.api_keys.name_of(key).await.ok().flatten();
            entry.insert(name.unwrap_or_else(|| key.to_string()));
        }
    }
    views::page(
        &viewer,
        views::Shell {
            title: "Workers",
            current: "Workers",
            live: None,
        },
        views::workers::content(&streams, &callers, &keys, &ctx.replica),
    )
}
