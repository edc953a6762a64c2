//! The Modules page.

use maud::{Markup, html};

use super::{action_button, badge, json, maybe_time, overview::encode};
use crate::{
    console::{rpc, viewer::Viewer},
    store::modules::{ModuleRow, ModuleStatus},
};

/// The registry table with each module's actions.
pub fn content(viewer: &Viewer, modules: &[ModuleRow], more: bool) -> Markup {
    html! {
        @if modules.is_empty() {
            p.empty { "No module is registered." }
        } @else {
            table.modules {
                thead { tr {
                    th { "Module" } th { "Version" } th { "State" } th { "Hook job" }
                    th { "Enabled" } th { "Actions" }
                } }
                tbody {
                    @for module in modules {
                        tr id={ "module-" (module.name) } {
                            td { strong { (module.name) } br; span.muted { (module.display_name) } }
                            td { (module.version) }
                            td { (badge(module.status.label()))
                                @if let Some(error) = &module.last_error { details { summary { "last error" } (json(error)) } } }
                            td { @if let Some(hook) = module.hook_job_id {
                                a.hook href={ "/console/jobs/" (hook) } { "hook job" }
                            } @else { span.muted { "—" } } }
                            td { (maybe_time(module.enabled_at)) }
                            td.actions { (actions(viewer, module)) }
                        }
                    }
                }
            }
            @if more { p.muted { "Only the first modules are shown." } }
        }
    }
}

fn actions(viewer: &Viewer, module: &ModuleRow) -> Markup {
    let base = format!("/console/modules/{}", encode(&module.name));
    let can_enable = matches!(
        module.status,
        ModuleStatus::Registered | ModuleStatus::Disabled
    );
    let can_disable = module.status == ModuleStatus::Enabled;
    let can_remove = !matches!(module.status, ModuleStatus::Removing);
    html! {
        @if can_enable && viewer.may(rpc::ENABLE_MODULE) {
            (action_button(viewer, &format!("{base}/enable"), "Enable", None))
        }
        @if can_disable && viewer.may(rpc::DISABLE_MODULE) {
            (action_button(viewer, &format!("{base}/disable"), "Disable", Some("Disable this module?")))
        }
        @if can_remove && viewer.may(rpc::DELETE_MODULE) {
            (action_button(viewer, &format!("{base}/remove"), "Remove", Some("Remove this module?")))
        }
    }
}
