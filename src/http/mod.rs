//! The HTTP port (`HTTP_ADDR`), beside the gRPC one, for the platform's
//! probes and Prometheus:
//!
//! - `GET /health/live`: 200 while the process serves at all;
//! - `GET /health/ready`: 200 when the database answers, the migrations are
//!   applied and the server is not draining; else 503 with
//!   `{"status":"not ready","reason":"…"}`;
//! - `GET /metrics`: the Prometheus text format. A scrape renders what the
//!   recorder holds; nothing here queries the database (the gauges that
//!   need it are sampled on an interval, see `telemetry::sampler`).
//!
//! - `/console/`: the web console (`crate::console`), unless `CONSOLE=off`.
//!
//! It starts with the server and stops after the gRPC server, so that
//! readiness answers 503 during the whole drain. When the server has a
//! certificate (`TLS_CERT_FILE`), this port speaks HTTPS with it too,
//! rotated with it, without asking for a client certificate (probes and
//! Prometheus do not carry one; the console has its login).

mod accept;

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::{console::ConsoleSlot, error::AppError, health::Readiness, tls::TlsServer};

/// A bound HTTP listener, taken by the server when it starts. Bound early
/// (a port in use fails before anything else starts) and cloneable, so
/// that it fits in the server's options.
#[derive(Clone)]
pub struct HttpListener {
    listener: Arc<Mutex<Option<std::net::TcpListener>>>,
    addr: SocketAddr,
}

impl fmt::Debug for HttpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpListener")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HttpListener {
    /// Binds `addr` (port 0 picks a free one).
    pub fn bind(addr: SocketAddr) -> Result<Self, AppError> {
        let refused = |e: std::io::Error| {
            AppError::Config(format!(
                "cannot listen on {addr} for HTTP: {e} (choose another --http-addr, or `off`)"
            ))
        };
        let listener = std::net::TcpListener::bind(addr).map_err(refused)?;
        listener.set_nonblocking(true).map_err(refused)?;
        let addr = listener.local_addr().map_err(refused)?;
        Ok(Self {
            listener: Arc::new(Mutex::new(Some(listener))),
            addr,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn take(&self) -> Option<std::net::TcpListener> {
        crate::sync::lock(&self.listener).take()
    }
}

#[derive(Clone)]
struct HttpState {
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
}

/// The routes.
fn router(readiness: Readiness, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState { readiness, metrics })
}

async fn live() -> Response {
    json_response(StatusCode::OK, serde_json::json!({ "status": "live" }))
}

async fn ready(State(state): State<HttpState>) -> Response {
    match state.readiness.not_ready() {
        None => json_response(StatusCode::OK, serde_json::json!({ "status": "ready" })),
        Some(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "not ready", "reason": reason }),
        ),
    }
}

async fn render_metrics(State(state): State<HttpState>) -> Response {
    let body = state
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Serves the HTTP port until `stop` is cancelled. The listener is taken:
/// a second call with the same one serves nothing. `console`: the web
/// console's routes, answering once the slot is filled. `tls`: the gRPC
/// port's certificate, which this port then serves HTTPS with.
pub async fn serve(
    listener: HttpListener,
    tls: Option<TlsServer>,
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
    console: Option<ConsoleSlot>,
    stop: CancellationToken,
) -> Result<(), AppError> {
    let Some(listener) = listener.take() else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| AppError::internal(format!("HTTP listener: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| AppError::internal(format!("HTTP listener: {e}")))?;
    tracing::info!(address = %local, tls = tls.is_some(), console = console.is_some(), "serving HTTP (health, metrics)");
    let mut routes = router(readiness, metrics);
    if let Some(console) = console {
        routes = routes.merge(crate::console::router(console));
    }
    match tls {
        Some(tls) => accept::serve(accept::https(listener, tls), routes, stop).await,
        None => accept::serve(accept::plaintext(listener), routes, stop).await,
    }
    Ok(())
}
