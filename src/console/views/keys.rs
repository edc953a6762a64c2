//! The API keys page.

use maud::{Markup, html};

use super::{action_button, csrf, maybe_time, time};
use crate::{
    console::{rpc, viewer::Viewer},
    store::{api_keys::ApiKeyRow, models::permission_list},
};

/// The viewer's keys, the secret of one just created, the form.
pub fn content(viewer: &Viewer, keys: &[ApiKeyRow], created: Option<(&str, &str)>) -> Markup {
    html! {
        @if let Some((name, secret)) = created {
            div.notice role="status" {
                p { "Key " strong { (name) } " created. Copy it now: it is shown only once." }
                pre.secret { (secret) }
            }
        }
        @if keys.is_empty() {
            p.empty { "You have no API key." }
        } @else {
            table.keys {
                thead { tr { th { "Name" } th { "Permissions" } th { "Created" } th { "Expires" } th { "State" } th {} } }
                tbody {
                    @for key in keys {
                        tr {
                            td { (key.name) br; span.muted { (key.id) } }
                            td { code { (permission_list(&key.permissions).join(" ")) } }
                            td { (time(key.created_at)) }
                            td { (maybe_time(key.expires_at)) }
                            td { @if key.revoked_at.is_some() { span.muted { "revoked" } } @else { "active" } }
                            td { @if key.revoked_at.is_none() && viewer.may(rpc::REVOKE_API_KEY) {
                                (action_button(viewer, &format!("/console/keys/{}/revoke", key.id), "Revoke", Some("Revoke this key?")))
                            } }
                        }
                    }
                }
            }
        }
        @if viewer.may(rpc::CREATE_API_KEY) {
            h2 { "New key" }
            form.create method="post" action="/console/keys" {
                (csrf(viewer))
                label { "Name " input name="name" required placeholder="nightly-worker"; }
                label { "Permissions " input name="permissions" required placeholder="jobs:execute jobs:read"; }
                button type="submit" { "Create key" }
            }
        }
    }
}
