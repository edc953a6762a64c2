//! The sign-in page.

use maud::{Markup, html};

/// The form; `token` is the double-submit value the cookie also holds.
pub fn page(token: &str, error: Option<&str>) -> axum::response::Html<String> {
    let content: Markup = html! {
        @if let Some(error) = error {
            p.error role="alert" { (error) }
        }
        form.login method="post" action="/console/login" {
            input type="hidden" name="csrf" value=(token);
            label { "Email or username" input name="login" autocomplete="username" required autofocus; }
            label { "Password" input name="password" type="password" autocomplete="current-password" required; }
            button type="submit" { "Sign in" }
        }
    };
    axum::response::Html(super::bare("Sign in", content).into_string())
}
