//! Workers: the Work streams connected to every replica — this one's read
//! live from the dispatcher's registry, the others' as they last published
//! them (`domain::fleet`, at most a few seconds old) — with the account and
//! API key each works for. Needs what ListJobs needs.

use std::collections::HashMap;

use axum::response::Response;
use uuid::Uuid;

use super::{Console, rpc, session::Viewer, views};
use crate::domain::fleet::ReplicaWorkers;

/// `GET /console/workers`
pub async fn page(Console(ctx): Console, viewer: Viewer) -> Response {
    if let Err(refused) = viewer.require(&ctx, rpc::LIST_JOBS).await {
        return refused;
    }
    let streams = ctx.dispatcher.workers();
    let mut replicas = vec![ReplicaWorkers {
        replica: ctx.fleet.replica(),
        label: ctx.fleet.label().to_owned(),
        total: streams.len(),
        streams,
        age_secs: 0.0,
    }];
    // Another replica's streams missing is no reason to hide this one's.
    let others = match ctx.fleet.others().await {
        Ok(others) => Some(others),
        Err(error) => {
            tracing::warn!(%error, "could not read the other replicas' workers");
            None
        }
    };
    replicas.extend(others.clone().unwrap_or_default());
    // Names are shown as the API shows them: accounts' to whoever may list
    // users (others see the account's id), API keys' to their owner only
    // (others see that a key was used). One read per distinct account and
    // key (a handful: workers share them).
    let me = viewer.caller().user_id;
    let sees_usernames = viewer.may(rpc::LIST_USERS);
    let mut callers: HashMap<Uuid, String> = HashMap::new();
    let mut keys: HashMap<Uuid, String> = HashMap::new();
    for stream in replicas.iter().flat_map(|r| &r.streams) {
        let own = stream.caller == me;
        if !(own || sees_usernames) {
            continue;
        }
        if let std::collections::hash_map::Entry::Vacant(entry) = callers.entry(stream.caller) {
            let name = match ctx.identity.accounts.get(stream.caller).await {
                Ok(account) => account.user.username,
                Err(_) => stream.caller.to_string(),
            };
            entry.insert(name);
        }
        if let Some(key) = stream.api_key.filter(|_| own)
            && let std::collections::hash_map::Entry::Vacant(entry) = keys.entry(key)
        {
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
        views::workers::content(&replicas, others.is_some(), &callers, &keys),
    )
}
