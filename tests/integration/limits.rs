//! Bounded input, walked from the contract itself: every string and repeated
//! field of every request message (found through the descriptors, with the
//! bound each declares as `(automation.v1.limit)`) is sent one past its
//! bound, and a 300 KB value, over real gRPC. Each answer is INVALID_ARGUMENT
//! naming the field; nothing is INTERNAL and no row is written.

use crate::common;

use automation_control_plane::proto::FILE_DESCRIPTOR_SET;
use common::{TestApp, authed, raw_codec::RawCodec};
use diesel_async::RunQueryDsl as _;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    Value,
};
use tonic::{Code, Status, transport::Channel};

/// One bounded field somewhere in a request.
#[derive(Debug, Clone)]
struct BoundedField {
    /// Field names from the request down to the field.
    path: Vec<FieldDescriptor>,
    max_bytes: u32,
    max_chars: u32,
    max_items: u32,
}

impl BoundedField {
    /// The path as the server names it: a repeated message on the way is
    /// entered at its first element (`requests[0].name`).
    fn display_path(&self) -> String {
        let last = self.path.len() - 1;
        self.path
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if f.is_list() && i < last {
                    format!("{}[0]", f.name())
                } else {
                    f.name().to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}

fn limit_of(field: &FieldDescriptor, limit: &ExtensionDescriptor) -> (u32, u32, u32) {
    let options = field.options();
    if !options.has_extension(limit) {
        return (0, 0, 0);
    }
    let value = options.get_extension(limit);
    let Value::Message(value) = value.as_ref() else {
        panic!("limit is a message");
    };
    let get = |name: &str| {
        value
            .get_field_by_name(name)
            .and_then(|v| v.as_u32())
            .unwrap_or(0)
    };
    (get("max_bytes"), get("max_chars"), get("max_items"))
}

/// Every string and repeated field reachable from `message`.
fn bounded_fields(
    message: &MessageDescriptor,
    limit: &ExtensionDescriptor,
    prefix: &[FieldDescriptor],
    out: &mut Vec<BoundedField>,
) {
    for field in message.fields() {
        let mut path = prefix.to_vec();
        path.push(field.clone());
        let (max_bytes, max_chars, max_items) = limit_of(&field, limit);
        match field.kind() {
            Kind::String => out.push(BoundedField {
                path,
                max_bytes,
                max_chars,
                max_items,
            }),
            Kind::Message(inner) if inner.package_name() == "automation.v1" => {
                if field.is_list() {
                    out.push(BoundedField {
                        path: path.clone(),
                        max_bytes,
                        max_chars,
                        max_items,
                    });
                }
                bounded_fields(&inner, limit, &path, out);
            }
            _ if field.is_list() => out.push(BoundedField {
                path,
                max_bytes,
                max_chars,
                max_items,
            }),
            _ => {}
        }
    }
}

/// A request whose field at `path` holds `value` (nested messages created on
/// the way; repeated fields hold `value` as their one element or as given).
fn request_with(
    message: &MessageDescriptor,
    path: &[FieldDescriptor],
    value: Value,
) -> DynamicMessage {
    let mut root = DynamicMessage::new(message.clone());
    set_path(&mut root, path, value);
    root
}

fn set_path(message: &mut DynamicMessage, path: &[FieldDescriptor], value: Value) {
    let (field, rest) = path.split_first().expect("non-empty path");
    if rest.is_empty() {
        message.set_field(field, value);
        return;
    }
    let Kind::Message(inner) = field.kind() else {
        panic!("{} is not a message", field.name());
    };
    let mut child = DynamicMessage::new(inner);
    set_path(&mut child, rest, value);
    if field.is_list() {
        message.set_field(field, Value::List(vec![Value::Message(child)]));
    } else {
        message.set_field(field, Value::Message(child));
    }
}

/// The value one past the field's bound, and what the error must say.
fn oversized(field: &BoundedField) -> Vec<(Value, String, String)> {
    let last = field.path.last().expect("path");
    let path = field.display_path();
    let mut cases = Vec::new();
    if last.is_list() {
        let element = match last.kind() {
            Kind::String => Value::String("a".into()),
            Kind::Message(inner) => Value::Message(DynamicMessage::new(inner)),
            _ => return cases,
        };
        cases.push((
            Value::List(vec![element; field.max_items as usize + 1]),
            path.clone(),
            format!("must have at most {} elements", field.max_items),
        ));
    }
    if last.kind() == Kind::String {
        let (long, huge, unit) = if field.max_chars > 0 {
            (
                "é".repeat(field.max_chars as usize + 1),
                "é".repeat(150_000),
                format!("must be at most {} characters", field.max_chars),
            )
        } else {
            (
                "x".repeat(field.max_bytes as usize + 1),
                "x".repeat(300_000),
                format!("must be at most {} bytes", field.max_bytes),
            )
        };
        let element_path = if last.is_list() {
            format!("{path}[0]")
        } else {
            path.clone()
        };
        let with_nul = if field.max_bytes >= 3 || field.max_chars >= 3 {
            Some("a\0b".to_owned())
        } else {
            None
        };
        if let Some(text) = with_nul {
            let value = if last.is_list() {
                Value::List(vec![Value::String(text)])
            } else {
                Value::String(text)
            };
            cases.push((
                value,
                element_path.clone(),
                "must not contain NUL characters".to_owned(),
            ));
        }
        for text in [long, huge] {
            let value = if last.is_list() {
                Value::List(vec![Value::String(text)])
            } else {
                Value::String(text)
            };
            cases.push((value, element_path.clone(), unit.clone()));
        }
    }
    cases
}

async fn call(
    channel: Channel,
    path: &str,
    streaming: bool,
    body: Vec<u8>,
    token: Option<&str>,
) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let method = path.to_owned();
    let path: http::uri::PathAndQuery = path.parse().expect("path");
    fn with_token<T>(mut request: tonic::Request<T>, token: Option<&str>) -> tonic::Request<T> {
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }
    let result = if streaming {
        let request = with_token(tonic::Request::new(tokio_stream::iter(vec![body])), token);
        match grpc.streaming(request, path, RawCodec).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(())) => continue,
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    }
                }
            }
            Err(status) => Err(status),
        }
    } else {
        grpc.unary(with_token(tonic::Request::new(body), token), path, RawCodec)
            .await
            .map(drop)
    };
    result.expect_err(&format!("an oversized request to {method} must be refused"))
}

#[derive(diesel::QueryableByName)]
struct Total {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    total: i64,
}

/// Rows in every table the service writes.
async fn rows_everywhere(app: &TestApp) -> i64 {
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(
        "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM roles) \
         + (SELECT count(*) FROM user_roles) + (SELECT count(*) FROM sessions) \
         + (SELECT count(*) FROM audit_logs) + (SELECT count(*) FROM login_throttles) \
         + (SELECT count(*) FROM session_spent_tokens) + (SELECT count(*) FROM modules) \
         + (SELECT count(*) FROM jobs) AS total",
    )
    .get_result::<Total>(&mut conn)
    .await
    .expect("count")
    .total
}

#[tokio::test]
async fn every_request_field_is_bounded_before_any_work() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptors");
    let limit = pool
        .get_extension_by_name("automation.v1.limit")
        .expect("the limit option is served");
    let before = rows_everywhere(&app).await;
    let channel = app.channel().await;
    let mut checked = 0;
    for service in pool
        .services()
        .filter(|s| s.package_name() == "automation.v1")
    {
        for method in service.methods() {
            let mut fields = Vec::new();
            bounded_fields(&method.input(), &limit, &[], &mut fields);
            for field in fields {
                assert!(
                    field.max_bytes + field.max_chars + field.max_items > 0,
                    "{}.{} declares no bound",
                    method.input().full_name(),
                    field.display_path()
                );
                for (value, error_path, error) in oversized(&field) {
                    let body = request_with(&method.input(), &field.path, value).encode_to_vec();
                    let rpc = format!("/{}/{}", service.full_name(), method.name());
                    let streaming = method.is_client_streaming() || method.is_server_streaming();
                    let status = call(channel.clone(), &rpc, streaming, body, Some(&token)).await;
                    let case = format!("{rpc} {error_path}");
                    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
                    assert_eq!(status.message(), format!("{error_path}: {error}"), "{case}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} cases");
    assert_eq!(rows_everywhere(&app).await, before, "no row was written");
    app.stop().await;
}

#[tokio::test]
async fn a_huge_login_is_refused_without_a_trace() {
    let app = TestApp::spawn().await;
    let before = rows_everywhere(&app).await;
    let status = app
        .login(&"a".repeat(300 * 1024), "whatever-password")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "login: must be at most 254 bytes");
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(
        details
            .bad_request()
            .expect("field violations")
            .field_violations[0]
            .field,
        "login"
    );
    assert_eq!(rows_everywhere(&app).await, before);
    // The server is fine afterwards.
    app.admin_token().await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_methods_and_odd_timestamps_cost_nothing() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let before = rows_everywhere(&app).await;
    for n in 0..20 {
        let status = call(
            app.channel().await,
            &format!("/automation.v1.UserService/NoSuchMethod{n}"),
            false,
            vec![],
            None,
        )
        .await;
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    }
    assert_eq!(
        rows_everywhere(&app).await,
        before,
        "no audit row per made-up method"
    );

    let status = common::AuditServiceClient::new(app.channel().await)
        .list_audit_logs(authed(
            &token,
            automation_control_plane::proto::automation_v1::ListAuditLogsRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: -8_000_000_000_000,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("start_time:"), "{status:?}");
    app.stop().await;
}

#[tokio::test]
async fn garbage_bytes_are_the_callers_mistake() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let status = call(
        app.channel().await,
        "/automation.v1.UserService/GetUser",
        false,
        vec![0x0a, 0xff, 0xff, 0xff],
        Some(&token),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // An unbounded search of a huge query costs nothing either.
    let status = common::UserServiceClient::new(app.channel().await)
        .list_users(authed(
            &token,
            automation_control_plane::proto::automation_v1::ListUsersRequest {
                query: "%".repeat(400 * 1024),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::ResourceExhausted
        ),
        "{status:?}"
    );
    app.stop().await;
}
