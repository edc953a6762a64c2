//! The Users & roles page.

use maud::{Markup, html};
use serde::Deserialize;

use super::{action_button, csrf, maybe_time, overview::encode};
use crate::{
    console::{rpc, viewer::Viewer},
    domain::{Page, accounts::Account},
    store::models::RoleRow,
};

/// The list's filter and page.
#[derive(Debug, Default, Deserialize)]
pub struct PeopleQuery {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub page: String,
}

/// Accounts, roles and the forms the viewer may use.
pub fn content(
    viewer: &Viewer,
    query: &PeopleQuery,
    accounts: &Page<Account>,
    roles: &[RoleRow],
) -> Markup {
    let may_assign = viewer.may(rpc::ASSIGN_ROLE) && !roles.is_empty();
    html! {
        form.filters method="get" action="/console/users" {
            label { "Search " input name="q" value=(query.q) placeholder="name or email"; }
            button type="submit" { "Search" }
        }
        table.users {
            thead { tr {
                th { "User" } th { "Roles" } th { "State" } th { "Last login" } th { "Actions" }
            } }
            tbody {
                @for account in &accounts.items {
                    @let user = &account.user;
                    tr id={ "user-" (user.username) } {
                        td { strong { (user.username) } br; span.muted { (user.email) } }
                        td { (account.roles.join(", ")) }
                        td { @if user.is_active { "active" } @else { span.muted { "deactivated" } } }
                        td { (maybe_time(user.last_login)) }
                        td.actions {
                            @if user.is_active && viewer.may(rpc::UPDATE_USER) && user.id != viewer.caller().user_id {
                                (action_button(viewer, &format!("/console/users/{}/deactivate", user.id), "Deactivate", Some("Deactivate this account? Its sessions and keys end at once.")))
                            }
                            @if may_assign {
                                form.inline method="post" action={ "/console/users/" (user.id) "/roles" } {
                                    (csrf(viewer))
                                    select name="role" aria-label="Role" {
                                        @for role in roles { option value=(role.name) { (role.name) } }
                                    }
                                    button type="submit" { "Assign" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !accounts.next_page_token.is_empty() {
            p { a href={ "/console/users?q=" (encode(&query.q)) "&page=" (encode(&accounts.next_page_token)) } { "More users →" } }
        }
        @if viewer.may(rpc::CREATE_USER) {
            h2 { "New user" }
            form.create method="post" action="/console/users" {
                (csrf(viewer))
                label { "Email " input name="email" type="email" required; }
                label { "Username " input name="username" required; }
                label { "Password " input name="password" type="password" autocomplete="new-password" required; }
                label { "Role "
                    select name="role" {
                        option value="" { "none" }
                        @for role in roles { option value=(role.name) { (role.name) } }
                    }
                }
                button type="submit" { "Create" }
            }
        }
        @if !roles.is_empty() {
            h2 { "Roles" }
            table.roles {
                thead { tr { th { "Role" } th { "Permissions" } } }
                tbody {
                    @for role in roles {
                        tr { td { strong { (role.name) } br; span.muted { (role.description) } }
                             td { code { (role.permission_list().join(" ")) } } }
                    }
                }
            }
        }
    }
}
