//! The audit trail page.

use maud::{Markup, html};
use serde::Deserialize;

use super::{overview::encode, time};
use crate::{domain::Page, store::models::AuditLogRow};

/// The filters, as the query string carries them (empty: any).
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    pub action: String,
    /// An account id.
    #[serde(default)]
    pub user: String,
    /// The exact subject (`jobs/<id>`).
    #[serde(default)]
    pub resource: String,
    /// `success` or `failure`.
    #[serde(default)]
    pub outcome: String,
    #[serde(default)]
    pub page: String,
}

/// Where a row's subject is shown in the console, if anywhere.
pub fn subject_link(resource: &str) -> Option<String> {
    let (kind, rest) = resource.split_once('/')?;
    let id = rest.split('/').next().unwrap_or(rest);
    match kind {
        "jobs" => Some(format!("/console/jobs/{id}")),
        "users" => Some(format!("/console/audit?user={id}")),
        "modules" => Some("/console/modules".to_owned()),
        "api_keys" => Some("/console/keys".to_owned()),
        "work-streams" => Some("/console/workers".to_owned()),
        _ => None,
    }
}

/// The filter form and the rows.
pub fn content(query: &AuditQuery, page: &Page<AuditLogRow>) -> Markup {
    let next = format!(
        "/console/audit?action={}&user={}&resource={}&outcome={}&page={}",
        encode(&query.action),
        encode(&query.user),
        encode(&query.resource),
        encode(&query.outcome),
        encode(&page.next_page_token)
    );
    html! {
        form.filters method="get" action="/console/audit" {
            label { "Action " input name="action" value=(query.action) placeholder="jobs.retry"; }
            label { "Account id " input name="user" value=(query.user); }
            label { "Subject " input name="resource" value=(query.resource) placeholder="jobs/…"; }
            label { "Outcome "
                select name="outcome" {
                    option value="" selected[query.outcome.is_empty()] { "any" }
                    option value="success" selected[query.outcome == "success"] { "success" }
                    option value="failure" selected[query.outcome == "failure"] { "failure" }
                }
            }
            button type="submit" { "Filter" }
            " " a href="/console/audit" { "Clear" }
        }
        @if page.items.is_empty() {
            p.empty { "No record matches." }
        } @else {
            table.audit {
                thead { tr { th { "When" } th { "Action" } th { "Subject" } th { "Outcome" } th { "Account" } th { "From" } th { "Details" } } }
                tbody {
                    @for row in &page.items {
                        tr class=[(row.outcome == "failure").then_some("failure")] {
                            td { (time(row.created_at)) }
                            td { code { (row.action) } }
                            td { @match subject_link(&row.resource) {
                                Some(link) => { a href=(link) { (row.resource) } }
                                None => { (row.resource) }
                            } }
                            td { (row.outcome) }
                            td { @if let Some(user) = row.user_id {
                                a href={ "/console/audit?user=" (user) } { (user.to_string().get(..8).unwrap_or_default()) }
                            } }
                            td { (row.ip_address) }
                            td { code.details { (row.details.to_string()) } }
                        }
                    }
                }
            }
        }
        @if !page.next_page_token.is_empty() {
            p { a href=(next) { "Older records →" } }
        }
    }
}
