//! Server reflection over loopback, through real clients of both protocol
//! versions: the served files keep each RPC's `(automation.v1.access)`
//! option (what `grpcurl describe` shows), bring their dependencies along
//! once per stream, and unknown names get a NOT_FOUND answer without ending
//! the stream.

use crate::common;

use std::collections::BTreeSet;

use common::TestApp;
use prost::Message as _;
use prost_reflect::{DescriptorPool, Value};
use tonic::Code;
use tonic_reflection::pb::{v1, v1alpha};

/// What the tests ask, whatever the protocol version.
#[derive(Clone, Copy)]
enum Query {
    FileContainingSymbol(&'static str),
    ListServices,
}

/// What the server answered, whatever the protocol version.
#[derive(Debug)]
enum Answer {
    Files(Vec<Vec<u8>>),
    Services(BTreeSet<String>),
    Error(Code, String),
}

/// Defines `$name`, which sends `queries` on one `grpc.reflection.$version`
/// stream, half-closes it, and returns every answer; it panics unless the
/// stream then ends with OK. The two protocol versions have the same shape
/// in different generated types, hence a macro.
macro_rules! reflection_asker {
    ($name:ident, $version:ident) => {
        async fn $name(app: &TestApp, queries: &[Query]) -> Vec<Answer> {
            use $version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            let requests: Vec<_> = queries
                .iter()
                .map(|query| ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(match *query {
                        Query::FileContainingSymbol(s) => {
                            MessageRequest::FileContainingSymbol(s.into())
                        }
                        Query::ListServices => MessageRequest::ListServices(String::new()),
                    }),
                })
                .collect();
            let mut responses = ServerReflectionClient::new(app.channel().await)
                .server_reflection_info(tokio_stream::iter(requests))
                .await
                .expect(concat!(stringify!($version), " reflection stream"))
                .into_inner();
            let mut answers = Vec::new();
            while let Some(response) = responses.message().await.expect("the stream ends with OK") {
                answers.push(match response.message_response {
                    Some(MessageResponse::FileDescriptorResponse(f)) => {
                        Answer::Files(f.file_descriptor_proto)
                    }
                    Some(MessageResponse::ListServicesResponse(l)) => {
                        Answer::Services(l.service.into_iter().map(|s| s.name).collect())
                    }
                    Some(MessageResponse::ErrorResponse(e)) => {
                        Answer::Error(Code::from(e.error_code), e.error_message)
                    }
                    other => panic!("unexpected answer {other:?}"),
                });
            }
            answers
        }
    };
}

reflection_asker!(ask_v1, v1);
reflection_asker!(ask_v1alpha, v1alpha);

/// The bytes of a file answer.
fn files(answer: &Answer) -> &[Vec<u8>] {
    match answer {
        Answer::Files(files) => files,
        other => panic!("expected files, got {other:?}"),
    }
}

/// The names of the files of an answer, in the order they came.
fn file_names(answer: &Answer) -> Vec<String> {
    files(answer)
        .iter()
        .map(|bytes| {
            prost_types::FileDescriptorProto::decode(bytes.as_slice())
                .expect("a FileDescriptorProto")
                .name
                .expect("a file name")
        })
        .collect()
}

/// A pool of every file the answers carried, decoded with their extension
/// options as a reflection client would.
fn pool_of(answers: &[&Answer]) -> DescriptorPool {
    // A FileDescriptorSet is its files' bytes as repeated field 1.
    #[derive(Clone, PartialEq, prost::Message)]
    struct EncodedFileSet {
        #[prost(bytes = "vec", repeated, tag = "1")]
        file: Vec<Vec<u8>>,
    }
    let set = EncodedFileSet {
        file: answers.iter().flat_map(|a| files(a).to_vec()).collect(),
    };
    DescriptorPool::decode(set.encode_to_vec().as_slice()).expect("the served files build a pool")
}

/// The `(automation.v1.access)` policy of `service`'s `method`, as
/// (field name, value).
fn access_of(pool: &DescriptorPool, service: &str, method: &str) -> (String, Value) {
    let access = pool
        .get_extension_by_name("automation.v1.access")
        .expect("options.proto came along");
    let method = pool
        .get_service_by_name(service)
        .unwrap_or_else(|| panic!("{service} served"))
        .methods()
        .find(|m| m.name() == method)
        .unwrap_or_else(|| panic!("{service}.{method} served"));
    let options = method.options();
    assert!(
        options.has_extension(&access),
        "{} lost its access option",
        method.full_name()
    );
    let policy = options.get_extension(&access);
    let Value::Message(policy) = policy.as_ref() else {
        panic!("access is a message");
    };
    let mut set = policy.fields();
    let (field, value) = set.next().expect("a rule");
    assert!(set.next().is_none(), "one rule only");
    (field.name().to_owned(), value.clone())
}

/// The checks both versions must pass; `own` is the reflection service
/// the version lists.
fn check_answers(answers: &[Answer], own: &str) {
    let [users, missing, auth, services] = answers else {
        panic!("one answer per request, got {answers:?}");
    };

    // The file comes first, then every dependency it needs.
    let users_files = file_names(users);
    assert_eq!(users_files[0], "automation/v1/users.proto");
    assert_eq!(
        users_files[1..].iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "automation/v1/options.proto".to_owned(),
            "google/protobuf/descriptor.proto".to_owned(),
            "google/protobuf/field_mask.proto".to_owned(),
            "google/protobuf/timestamp.proto".to_owned(),
        ])
    );

    // An unknown symbol is an error answer, and the stream goes on.
    let Answer::Error(code, message) = missing else {
        panic!("expected NOT_FOUND, got {missing:?}");
    };
    assert_eq!(*code, Code::NotFound);
    assert!(message.contains("automation.v1.NoSuchService"), "{message}");

    // Files already sent on this stream are not sent again.
    assert_eq!(file_names(auth), ["automation/v1/auth.proto"]);

    let pool = pool_of(&[users, auth]);
    assert_eq!(
        access_of(&pool, "automation.v1.UserService", "DeleteUser"),
        (
            "permission".to_owned(),
            Value::String("users:delete".into())
        )
    );
    assert_eq!(
        access_of(&pool, "automation.v1.AuthService", "Login"),
        ("public".to_owned(), Value::Bool(true))
    );

    let Answer::Services(services) = services else {
        panic!("expected services, got {services:?}");
    };
    let mut expected: BTreeSet<String> = [
        "automation.v1.ApiKeyService",
        "automation.v1.AuditService",
        "automation.v1.AuthService",
        "automation.v1.JobService",
        "automation.v1.ModuleService",
        "automation.v1.RoleService",
        "automation.v1.ScheduleService",
        "automation.v1.UserService",
        "grpc.health.v1.Health",
    ]
    .map(String::from)
    .into();
    expected.insert(own.to_owned());
    assert_eq!(*services, expected);
}

const QUERIES: &[Query] = &[
    Query::FileContainingSymbol("automation.v1.UserService"),
    Query::FileContainingSymbol("automation.v1.NoSuchService"),
    Query::FileContainingSymbol("automation.v1.AuthService"),
    Query::ListServices,
];

#[tokio::test]
async fn v1_serves_access_options_and_dependencies() {
    let app = TestApp::spawn().await;
    check_answers(
        &ask_v1(&app, QUERIES).await,
        "grpc.reflection.v1.ServerReflection",
    );
    app.stop().await;
}

#[tokio::test]
async fn v1alpha_serves_access_options_and_dependencies() {
    let app = TestApp::spawn().await;
    check_answers(
        &ask_v1alpha(&app, QUERIES).await,
        "grpc.reflection.v1alpha.ServerReflection",
    );
    app.stop().await;
}
