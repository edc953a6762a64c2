//! The console's templates (maud): the page shell and the small pieces
//! every page uses. Each page area has its own module; nothing here runs
//! a query.

pub mod attempts;
pub mod audit;
pub mod dead_letters;
pub mod jobs;
pub mod keys;
pub mod login;
pub mod modules;
pub mod overview;
pub mod people;
pub mod queues;
pub mod schedules;
pub mod workers;

use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use chrono::NaiveDateTime;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{BASE, NAV, viewer::Viewer};
use crate::error::AppError;

/// What the shell needs besides the content.
#[derive(Debug, Default)]
pub struct Shell<'a> {
    /// The page title.
    pub title: &'a str,
    /// The navigation entry to highlight.
    pub current: &'a str,
    /// For a page that follows a record: the server-sent events URL the
    /// script listens to (it reloads on each event), and, with scripts off,
    /// a refresh every few seconds instead.
    pub live: Option<String>,
}

/// A whole page for a signed-in person.
pub fn page(viewer: &Viewer, shell: Shell<'_>, content: Markup) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (shell.title) " · Control plane" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
                @if shell.live.is_some() {
                    noscript { meta http-equiv="refresh" content="3"; }
                }
            }
            body data-live=[shell.live.as_deref()] {
                header.top {
                    a.brand href="/console/" { "Control plane" }
                    nav {
                        @for entry in NAV {
                            @if entry.rpc.is_none_or(|rpc| viewer.may(rpc)) {
                                a href={ (BASE) (entry.path) }
                                    class=[(entry.label == shell.current).then_some("current")] {
                                    (entry.label)
                                }
                            }
                        }
                    }
                    form.logout method="post" action="/console/logout" {
                        (csrf(viewer))
                        button type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (shell.title) }
                    (content)
                }
            }
        }
    };
    Html(body.into_string()).into_response()
}

/// A page outside a session (login, errors).
pub fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Control plane" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body.bare {
                main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// A short page saying what happened.
pub fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = bare(
        title,
        html! {
            p.error { (message) }
            p { a href="/console/" { "Back to the console" } }
        },
    );
    (status, Html(body.into_string())).into_response()
}

/// The HTTP status for an error, as the gRPC code would say it.
pub fn status_of(error: &AppError) -> StatusCode {
    use tonic::Code;
    match error.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error as a page (internal errors say no more than the API would).
pub fn error_response(error: &AppError) -> Response {
    let status = status_of(error);
    let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::warn!(%error, "console");
        "internal error".to_owned()
    } else {
        error.to_string()
    };
    let title = status.canonical_reason().unwrap_or("Error");
    message_page(status, title, &message)
}

/// The hidden CSRF field of a form.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A form of one button posting to `action`; `confirm` is asked by the
/// script before it is sent.
pub fn action_button(viewer: &Viewer, action: &str, label: &str, confirm: Option<&str>) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf(viewer))
            button type="submit" { (label) }
        }
    }
}

/// A time as UTC.
pub fn time(at: NaiveDateTime) -> Markup {
    html! { time datetime={ (at.format("%Y-%m-%dT%H:%M:%SZ")) } { (at.format("%Y-%m-%d %H:%M:%S")) } }
}

/// An optional time, or a dash.
pub fn maybe_time(at: Option<NaiveDateTime>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { span.muted { "—" } },
    }
}

/// A duration in seconds, shortly (`3m 2s`).
pub fn age(secs: f64) -> String {
    let secs = secs.max(0.0) as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h", secs / 86400, (secs % 86400) / 3600),
    }
}

/// A JSON document, indented.
pub fn json(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { (text) } }
}

/// A status badge.
pub fn badge(label: &str) -> Markup {
    html! { span class={ "badge " (label.to_ascii_lowercase()) } { (label) } }
}

/// Text that is already HTML (the SVG chart).
pub fn raw(text: String) -> Markup {
    PreEscaped(text)
}
