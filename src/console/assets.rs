//! The console's stylesheet and script, embedded in the binary: nothing is
//! built or fetched at run time.

use axum::{
    http::header,
    response::{IntoResponse, Response},
};

/// The stylesheet.
pub const CSS: &str = include_str!("assets/console.css");
/// The script: live updates and confirmations; every page works without it.
pub const JS: &str = include_str!("assets/console.js");

/// `GET /console/assets/console.css`
pub async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

/// `GET /console/assets/console.js`
pub async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        JS,
    )
        .into_response()
}
