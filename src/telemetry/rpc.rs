//! The RPC layer, outermost in front of every gRPC service: counts each
//! call with the grpc-prometheus names, times it until its last message
//! (a stream is handled when it ends), and writes one log line per call
//! with its method, code, duration, caller, API key, peer and request id.
//! The request id is taken from `x-request-id` (when it is short and
//! printable) or made, and returned in the response headers.
//!
//! The caller is only known inside the authorization layer, below this
//! one: [`CallerTapLayer`], placed after it, copies the caller's ids (never
//! its credentials) into a slot this layer left in the request.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame};
use tonic::{body::Body, transport::server::TcpConnectInfo};
use tower::{Layer, Service};
use tracing::Instrument as _;
use uuid::Uuid;

use super::names;
use crate::auth::{caller::Caller, policy};

/// The request-id header, read and returned.
pub const REQUEST_ID: &str = "x-request-id";
/// Longest request id taken from a client; a longer or unprintable one is
/// replaced by a fresh one.
const MAX_REQUEST_ID: usize = 128;

/// A call's valid W3C `traceparent` header, in its extensions for the
/// handlers that store it with what they create (jobs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(pub String);

/// Who called, as the authorization layer established it: ids only.
#[derive(Debug, Clone, Copy, Default)]
struct CallerIds {
    user: Option<Uuid>,
    api_key: Option<Uuid>,
}

/// Where [`CallerTapLayer`] leaves the caller's ids for this layer.
#[derive(Debug, Clone, Default)]
struct CallerSlot(Arc<Mutex<CallerIds>>);

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct RpcLayer;

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for RpcService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let (service, method) = split_path(&path);
        let request_id = request_id(request.headers());
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let trace = traceparent(request.headers());
        if trace.is_some()
            && let Some(value) = request
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
        {
            request.extensions_mut().insert(TraceParent(value));
        }
        let slot = CallerSlot::default();
        request.extensions_mut().insert(slot.clone());
        let labels = [
            ("grpc_service", service.clone()),
            ("grpc_method", method.clone()),
        ];
        metrics::counter!(names::GRPC_STARTED, &labels).increment(1);
        // What the handler logs carries the request id and the trace.
        let span = tracing::info_span!(
            "rpc",
            request_id = %request_id,
            trace_id = trace.as_ref().map(|(trace, _)| trace.as_str()),
        );
        let call = Call {
            path: path.trim_start_matches('/').chars().take(200).collect(),
            service,
            method,
            request_id: request_id.clone(),
            trace,
            peer,
            slot,
            started,
            code: None,
            done: false,
        };
        Box::pin(async move {
            let mut response = inner.call(request).instrument(span).await?;
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            let mut call = call;
            // A trailers-only answer (every error of a unary call) has its
            // status in the headers.
            call.code = grpc_status(response.headers());
            Ok(response.map(|body| Body::new(MeteredBody { inner: body, call })))
        })
    }
}

/// A call in flight: recorded once, when its body ends or is dropped.
struct Call {
    /// The path as asked (bounded), for the log line.
    path: String,
    service: String,
    method: String,
    request_id: String,
    /// The W3C trace context the call came with: (trace id, parent id).
    trace: Option<(String, String)>,
    peer: Option<std::net::SocketAddr>,
    slot: CallerSlot,
    started: Instant,
    code: Option<i32>,
    done: bool,
}

impl Call {
    fn finish(&mut self, ended: bool) {
        if self.done {
            return;
        }
        self.done = true;
        // A body dropped before its end: the client went away.
        let code = match (self.code, ended) {
            (Some(code), _) => code,
            (None, true) => tonic::Code::Unknown as i32,
            (None, false) => tonic::Code::Cancelled as i32,
        };
        let code = code_name(code);
        let elapsed = self.started.elapsed();
        let labels = [
            ("grpc_service", self.service.clone()),
            ("grpc_method", self.method.clone()),
        ];
        metrics::histogram!(names::GRPC_HANDLING_SECONDS, &labels).record(elapsed.as_secs_f64());
        metrics::counter!(
            names::GRPC_HANDLED,
            "grpc_service" => self.service.clone(),
            "grpc_method" => self.method.clone(),
            "grpc_code" => code,
        )
        .increment(1);
        let caller = self.slot.0.lock().map(|ids| *ids).unwrap_or_default();
        tracing::info!(
            target: "rpc",
            method = %self.path,
            code,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            caller_id = caller.user.map(tracing::field::display),
            api_key_id = caller.api_key.map(tracing::field::display),
            peer = self.peer.map(tracing::field::display),
            request_id = %self.request_id,
            trace_id = self.trace.as_ref().map(|(trace, _)| trace.as_str()),
            parent_span_id = self.trace.as_ref().map(|(_, parent)| parent.as_str()),
            "rpc finished"
        );
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The response body, watched for its trailers and its end.
struct MeteredBody {
    inner: Body,
    call: Call,
}

impl HttpBody for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.code = Some(code);
                    this.call.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.call.code.get_or_insert(tonic::Code::Internal as i32);
                this.call.finish(true);
            }
            Poll::Ready(None) => this.call.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Copies the caller's ids (set by the authorization layer) into the slot
/// [`RpcLayer`] left in the request. Place it after the authorization
/// layer.
#[derive(Debug, Clone, Default)]
pub struct CallerTapLayer;

impl<S> Layer<S> for CallerTapLayer {
    type Service = CallerTap<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerTap { inner }
    }
}

/// See [`CallerTapLayer`].
#[derive(Debug, Clone)]
pub struct CallerTap<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for CallerTap<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let (Some(slot), Some(caller)) = (
            request.extensions().get::<CallerSlot>(),
            request.extensions().get::<Caller>(),
        ) && let Ok(mut ids) = slot.0.lock()
        {
            *ids = CallerIds {
                user: Some(caller.user_id),
                api_key: caller.api_key,
            };
        }
        self.inner.call(request)
    }
}

/// `/automation.v1.UserService/GetUser` → (`automation.v1.UserService`,
/// `GetUser`). A path that is not a method of this server is `unknown`
/// (it is answered UNIMPLEMENTED): a client inventing paths must not
/// create a series each.
fn split_path(path: &str) -> (String, String) {
    let known = policy::rule_for(path).is_some()
        || path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/");
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if known && method.len() <= 64 && !method.contains('/') => {
            (service.to_owned(), method.to_owned())
        }
        _ => ("unknown".to_owned(), "unknown".to_owned()),
    }
}

/// The client's request id when it is short and printable, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned)
}

/// The trace id and parent id of a valid W3C `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero); `None` otherwise.
fn traceparent(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("traceparent")?.to_str().ok()?.trim();
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then(|| (trace.to_owned(), parent.to_owned()))
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The code as grpc-go (and so grpc-prometheus) spells it.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/automation.v1.UserService/GetUser"),
            ("automation.v1.UserService".into(), "GetUser".into())
        );
        assert_eq!(
            split_path("/automation.v1.UserService/Invented123"),
            ("unknown".into(), "unknown".into())
        );
        assert_eq!(
            split_path("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health".into(), "Check".into())
        );
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn only_valid_traceparents_are_continued() {
        let parse = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", HeaderValue::from_static(value));
            traceparent(&headers)
        };
        assert_eq!(
            parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into()
            ))
        );
        assert_eq!(
            parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(parse("garbage"), None);
    }

    /// Captures what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn one_json_line_per_call_with_its_fields_and_no_secret() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let user = Uuid::now_v7();
        let key = Uuid::now_v7();
        let caller = Caller {
            user_id: user,
            session_id: Uuid::now_v7(),
            permissions: vec![],
            scope: None,
            api_key: Some(key),
        };
        // The handler: answers trailers-only PERMISSION_DENIED.
        let handler = tower::service_fn(|_request: http::Request<Body>| async {
            let mut response = http::Response::new(Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from_static("7"));
            Ok::<_, std::convert::Infallible>(response)
        });
        let tapped = CallerTapLayer.layer(handler);
        // What the authorization layer does: the caller in the extensions.
        let authorized = tower::service_fn(move |mut request: http::Request<Body>| {
            request.extensions_mut().insert(caller.clone());
            let mut tapped = tapped.clone();
            async move { tapped.call(request).await }
        });
        let mut service = RpcLayer.layer(authorized);
        let request = http::Request::builder()
            .uri("/automation.v1.ApiKeyService/CreateApiKey")
            .header("authorization", "Bearer acp_key_sekret-material")
            .header(REQUEST_ID, "req-7")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(Body::empty())
            .expect("request");
        let response = service.call(request).await.expect("response");
        assert_eq!(response.headers()[REQUEST_ID], "req-7");
        drop(response);

        let output = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("UTF-8");
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 1, "{output}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
        let fields = &line["fields"];
        assert_eq!(line["target"], "rpc");
        assert_eq!(fields["method"], "automation.v1.ApiKeyService/CreateApiKey");
        assert_eq!(fields["code"], "PermissionDenied");
        assert_eq!(fields["caller_id"], user.to_string());
        assert_eq!(fields["api_key_id"], key.to_string());
        assert_eq!(fields["request_id"], "req-7");
        assert!(fields["duration_ms"].is_number(), "{line}");
        assert_eq!(fields["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(fields["parent_span_id"], "00f067aa0ba902b7");
        assert!(!output.contains("sekret"), "{output}");
        assert!(!output.to_lowercase().contains("bearer"), "{output}");
    }
}
