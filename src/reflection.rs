//! gRPC server reflection (`grpc.reflection.v1` and `v1alpha`), so that
//! grpcurl and other tools need no proto files.
//!
//! Why not tonic-reflection's server: it decodes the descriptor sets into
//! `prost_types::FileDescriptorProto`, which has no room for extension
//! options, so every RPC's `(automation.v1.access)` rule would vanish from
//! `grpcurl describe`. Here the files stay as prost-reflect holds them and
//! go out as [`FileDescriptor::encode_to_vec`], options intact.
//! tonic-reflection remains the source of the generated protocol types.
//!
//! One `Catalog` answers both protocol versions. Their messages are the
//! same on the wire (v1alpha is v1 under its older package name), so the
//! v1alpha service converts each message through its encoding and the rules
//! live in one place, `ReflectionStream::answer`.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    pin::Pin,
    sync::Arc,
};

use futures_util::{Stream, StreamExt as _};
use prost::Message;
use prost_reflect::{DescriptorError, DescriptorPool, FileDescriptor};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_reflection::pb::{
    v1::{
        self, ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
        ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        server_reflection_server::ServerReflectionServer as V1Server,
    },
    v1alpha::{self, server_reflection_server::ServerReflectionServer as V1AlphaServer},
};

/// `grpc.reflection.v1.ServerReflection`.
const V1_SERVICE: &str = v1::server_reflection_server::SERVICE_NAME;
/// `grpc.reflection.v1alpha.ServerReflection`.
const V1ALPHA_SERVICE: &str = v1alpha::server_reflection_server::SERVICE_NAME;
/// The reflection service of each protocol version.
const REFLECTION_SERVICES: [&str; 2] = [V1_SERVICE, V1ALPHA_SERVICE];

/// The reflection service, ready to be added to a server in both versions.
#[derive(Clone)]
pub struct Reflection {
    catalog: Arc<Catalog>,
}

impl Reflection {
    /// Reflection over the given encoded `FileDescriptorSet`s plus the
    /// reflection protocol's own files. The sets must be encoded with their
    /// extension options (protox's `encode_file_descriptor_set`, not a
    /// `prost_types` round trip), since what is registered is what is served.
    pub fn new(encoded_sets: &[&[u8]]) -> Result<Self, DescriptorError> {
        Ok(Self {
            catalog: Arc::new(Catalog::new(encoded_sets)?),
        })
    }

    /// The `grpc.reflection.v1.ServerReflection` service.
    pub fn v1(&self) -> V1Server<Self> {
        V1Server::new(self.clone()).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// The `grpc.reflection.v1alpha.ServerReflection` service, the only one
    /// older clients (grpcurl 1.8, many language runtimes) know.
    pub fn v1alpha(&self) -> V1AlphaServer<Self> {
        V1AlphaServer::new(self.clone()).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

/// A stream of reflection answers.
type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = Answers<ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let mut session = ReflectionStream::new(self.catalog.clone(), V1_SERVICE);
        // One answer per request; the answers end when the requests do.
        let answers = request
            .into_inner()
            .map(move |request| Ok(session.answer(request?)));
        Ok(Response::new(Box::pin(answers)))
    }
}

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = Answers<v1alpha::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let mut session = ReflectionStream::new(self.catalog.clone(), V1ALPHA_SERVICE);
        let answers = request
            .into_inner()
            .map(move |request| transcode(&session.answer(transcode(&request?)?)));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// Converts between the v1 and v1alpha forms of a message, which share one
/// wire format.
fn transcode<From: Message, To: Message + Default>(message: &From) -> Result<To, Status> {
    To::decode(message.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("reflection: converting between versions: {e}")))
}

/// Every registered file, and where each symbol is defined.
struct Catalog {
    pool: DescriptorPool,
    /// Fully-qualified name of each service, method, message (nested ones
    /// too), field, oneof, enum, enum value and extension → its file.
    symbols: HashMap<String, FileDescriptor>,
}

impl Catalog {
    fn new(encoded_sets: &[&[u8]]) -> Result<Self, DescriptorError> {
        let mut pool = DescriptorPool::new();
        for set in encoded_sets
            .iter()
            .chain(&[v1::FILE_DESCRIPTOR_SET, v1alpha::FILE_DESCRIPTOR_SET])
        {
            pool.decode_file_descriptor_set(*set)?;
        }

        let mut symbols = HashMap::new();
        let mut define = |name: &str, file: FileDescriptor| {
            symbols.insert(name.to_owned(), file);
        };
        for service in pool.services() {
            define(service.full_name(), service.parent_file());
            for method in service.methods() {
                define(method.full_name(), method.parent_file());
            }
        }
        for message in pool.all_messages() {
            define(message.full_name(), message.parent_file());
            for field in message.fields() {
                define(field.full_name(), field.parent_file());
            }
            for oneof in message.oneofs() {
                define(oneof.full_name(), oneof.parent_file());
            }
        }
        for enumeration in pool.all_enums() {
            define(enumeration.full_name(), enumeration.parent_file());
            for value in enumeration.values() {
                define(value.full_name(), value.parent_file());
            }
        }
        for extension in pool.all_extensions() {
            define(extension.full_name(), extension.parent_file());
        }
        Ok(Self { pool, symbols })
    }

    fn file_by_name(&self, name: &str) -> Result<FileDescriptor, Status> {
        self.pool
            .get_file_by_name(name)
            .ok_or_else(|| Status::not_found(format!("file '{name}' is not known here")))
    }

    fn file_containing_symbol(&self, symbol: &str) -> Result<FileDescriptor, Status> {
        self.symbols
            .get(symbol)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("symbol '{symbol}' is not known here")))
    }

    fn file_containing_extension(
        &self,
        extended: &str,
        number: i32,
    ) -> Result<FileDescriptor, Status> {
        u32::try_from(number)
            .ok()
            .and_then(|number| {
                self.pool
                    .get_message_by_name(extended)?
                    .get_extension(number)
            })
            .map(|extension| extension.parent_file())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no extension {number} of '{extended}' is known here"
                ))
            })
    }

    fn extension_numbers(&self, extended: &str) -> Result<ExtensionNumberResponse, Status> {
        let message = self
            .pool
            .get_message_by_name(extended)
            .ok_or_else(|| Status::not_found(format!("type '{extended}' is not known here")))?;
        Ok(ExtensionNumberResponse {
            base_type_name: message.full_name().to_owned(),
            extension_number: message
                .extensions()
                .map(|extension| extension.number() as i32)
                .collect(),
        })
    }
}

/// Largest reflection request decoded (names are short).
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Longest symbol, file name or host a request may carry.
const MAX_NAME_BYTES: usize = 1024;

fn oversized(request: &ServerReflectionRequest) -> bool {
    let name = match &request.message_request {
        Some(MessageRequest::FileByFilename(name))
        | Some(MessageRequest::FileContainingSymbol(name))
        | Some(MessageRequest::AllExtensionNumbersOfType(name))
        | Some(MessageRequest::ListServices(name)) => name.len(),
        Some(MessageRequest::FileContainingExtension(extension)) => extension.containing_type.len(),
        None => 0,
    };
    name > MAX_NAME_BYTES || request.host.len() > MAX_NAME_BYTES
}

/// One client's reflection stream: what it has been sent so far.
struct ReflectionStream {
    catalog: Arc<Catalog>,
    /// The reflection service this stream speaks; listed instead of the
    /// other version's, as tonic-reflection did before.
    reflection_service: &'static str,
    /// Names of the files already sent on this stream, so that each
    /// dependency goes out once (the C++ and Go servers do the same).
    sent: HashSet<String>,
}

impl ReflectionStream {
    fn new(catalog: Arc<Catalog>, reflection_service: &'static str) -> Self {
        Self {
            catalog,
            reflection_service,
            sent: HashSet::new(),
        }
    }

    /// The response to one request. Failures are answers too (an
    /// `ErrorResponse`), so one unknown symbol does not end the stream. A
    /// request naming something longer than any real name is refused
    /// without being echoed, so answers never amplify requests.
    fn answer(&mut self, request: ServerReflectionRequest) -> ServerReflectionResponse {
        if oversized(&request) {
            return ServerReflectionResponse {
                valid_host: String::new(),
                original_request: None,
                message_response: Some(MessageResponse::ErrorResponse(ErrorResponse {
                    error_code: Code::InvalidArgument as i32,
                    error_message: format!("names and hosts are at most {MAX_NAME_BYTES} bytes"),
                })),
            };
        }
        let message_response = self
            .respond(request.message_request.as_ref())
            .unwrap_or_else(|status| {
                MessageResponse::ErrorResponse(ErrorResponse {
                    error_code: status.code() as i32,
                    error_message: status.message().to_owned(),
                })
            });
        ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request),
            message_response: Some(message_response),
        }
    }

    fn respond(&mut self, request: Option<&MessageRequest>) -> Result<MessageResponse, Status> {
        let catalog = Arc::clone(&self.catalog);
        match request {
            Some(MessageRequest::FileByFilename(name)) => {
                Ok(self.with_unsent_dependencies(catalog.file_by_name(name)?))
            }
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                Ok(self.with_unsent_dependencies(catalog.file_containing_symbol(symbol)?))
            }
            Some(MessageRequest::FileContainingExtension(extension)) => Ok(self
                .with_unsent_dependencies(catalog.file_containing_extension(
                    &extension.containing_type,
                    extension.extension_number,
                )?)),
            Some(MessageRequest::AllExtensionNumbersOfType(extended)) => Ok(
                MessageResponse::AllExtensionNumbersResponse(catalog.extension_numbers(extended)?),
            ),
            Some(MessageRequest::ListServices(_)) => {
                Ok(MessageResponse::ListServicesResponse(self.services()))
            }
            None => Err(Status::invalid_argument(
                "the request carries no query this server understands",
            )),
        }
    }

    /// Every service of the catalog, with this stream's reflection service
    /// and not the other version's.
    fn services(&self) -> ListServiceResponse {
        ListServiceResponse {
            service: self
                .catalog
                .pool
                .services()
                .map(|service| service.full_name().to_owned())
                .filter(|name| {
                    name == self.reflection_service || !REFLECTION_SERVICES.contains(&name.as_str())
                })
                .map(|name| ServiceResponse { name })
                .collect(),
        }
    }

    /// `file` (always: the client asked for it) followed by those of its
    /// transitive dependencies not yet sent on this stream, so the client
    /// can build every file it holds.
    fn with_unsent_dependencies(&mut self, file: FileDescriptor) -> MessageResponse {
        self.sent.insert(file.name().to_owned());
        let mut encoded = vec![file.encode_to_vec()];
        let mut pending: VecDeque<FileDescriptor> = file.dependencies().collect();
        while let Some(dependency) = pending.pop_front() {
            // A file sent earlier went out with its own dependencies.
            if self.sent.insert(dependency.name().to_owned()) {
                encoded.push(dependency.encode_to_vec());
                pending.extend(dependency.dependencies());
            }
        }
        MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
            file_descriptor_proto: encoded,
        })
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::Value;
    use tonic_reflection::pb::v1::ExtensionRequest;

    use super::*;
    use crate::proto::FILE_DESCRIPTOR_SET;

    fn session() -> ReflectionStream {
        let catalog = Catalog::new(&[FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET])
            .expect("descriptor sets build a catalog");
        ReflectionStream::new(Arc::new(catalog), V1_SERVICE)
    }

    fn ask(session: &mut ReflectionStream, request: MessageRequest) -> MessageResponse {
        session
            .answer(ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            })
            .message_response
            .expect("every request is answered")
    }

    /// The files of a file answer, by name, each decoded as prost-reflect
    /// would from the wire.
    fn file_names(response: MessageResponse) -> Vec<String> {
        let MessageResponse::FileDescriptorResponse(files) = response else {
            panic!("expected files, got {response:?}");
        };
        files
            .file_descriptor_proto
            .iter()
            .map(|bytes| {
                prost_types::FileDescriptorProto::decode(bytes.as_slice())
                    .expect("a FileDescriptorProto")
                    .name
                    .expect("a file name")
            })
            .collect()
    }

    fn error_code(response: MessageResponse) -> Code {
        let MessageResponse::ErrorResponse(error) = response else {
            panic!("expected an error, got {response:?}");
        };
        Code::from(error.error_code)
    }

    #[test]
    fn every_kind_of_symbol_resolves_to_its_file() {
        let mut session = session();
        for (symbol, file) in [
            ("automation.v1.UserService", "automation/v1/users.proto"),
            (
                "automation.v1.UserService.DeleteUser",
                "automation/v1/users.proto",
            ),
            ("automation.v1.AccessPolicy", "automation/v1/options.proto"),
            (
                "automation.v1.AccessPolicy.permission",
                "automation/v1/options.proto",
            ),
            (
                "automation.v1.AccessPolicy.rule",
                "automation/v1/options.proto",
            ),
            ("automation.v1.access", "automation/v1/options.proto"),
            (
                "grpc.health.v1.HealthCheckResponse.ServingStatus",
                "health.proto",
            ),
            (
                "google.protobuf.FileDescriptorProto",
                "google/protobuf/descriptor.proto",
            ),
        ] {
            let names = file_names(ask(
                &mut session,
                MessageRequest::FileContainingSymbol(symbol.into()),
            ));
            assert_eq!(names[0], file, "{symbol}");
        }
    }

    #[test]
    fn dependencies_go_out_once_per_stream() {
        let mut session = session();
        let first = file_names(ask(
            &mut session,
            MessageRequest::FileByFilename("automation/v1/users.proto".into()),
        ));
        assert!(first.contains(&"automation/v1/options.proto".to_owned()));
        assert!(first.contains(&"google/protobuf/descriptor.proto".to_owned()));
        let again = file_names(ask(
            &mut session,
            MessageRequest::FileByFilename("automation/v1/options.proto".into()),
        ));
        assert_eq!(again, ["automation/v1/options.proto"]);
    }

    #[test]
    fn served_files_keep_the_access_option() {
        let mut session = session();
        let MessageResponse::FileDescriptorResponse(files) = ask(
            &mut session,
            MessageRequest::FileContainingSymbol("automation.v1.AuthService".into()),
        ) else {
            panic!("expected files");
        };
        // A FileDescriptorSet is its files' bytes as repeated field 1, and
        // prost-reflect accepts a set's files in any order.
        #[derive(Clone, PartialEq, prost::Message)]
        struct EncodedFileSet {
            #[prost(bytes = "vec", repeated, tag = "1")]
            file: Vec<Vec<u8>>,
        }
        let set = EncodedFileSet {
            file: files.file_descriptor_proto,
        };
        let pool = DescriptorPool::decode(set.encode_to_vec().as_slice()).expect("valid files");
        let access = pool.get_extension_by_name("automation.v1.access").unwrap();
        let login = pool
            .get_service_by_name("automation.v1.AuthService")
            .unwrap()
            .methods()
            .find(|m| m.name() == "Login")
            .unwrap();
        let options = login.options();
        let policy = options.get_extension(&access);
        let Value::Message(policy) = policy.as_ref() else {
            panic!("access is a message");
        };
        assert_eq!(
            policy.get_field_by_name("public").as_deref(),
            Some(&Value::Bool(true))
        );
    }

    #[test]
    fn extensions_are_found_by_type_and_number() {
        let mut session = session();
        let MessageResponse::AllExtensionNumbersResponse(numbers) = ask(
            &mut session,
            MessageRequest::AllExtensionNumbersOfType("google.protobuf.MethodOptions".into()),
        ) else {
            panic!("expected extension numbers");
        };
        assert_eq!(numbers.base_type_name, "google.protobuf.MethodOptions");
        assert_eq!(numbers.extension_number, [51001]);
        let names = file_names(ask(
            &mut session,
            MessageRequest::FileContainingExtension(ExtensionRequest {
                containing_type: "google.protobuf.MethodOptions".into(),
                extension_number: 51001,
            }),
        ));
        assert_eq!(names[0], "automation/v1/options.proto");
        let unknown = ask(
            &mut session,
            MessageRequest::FileContainingExtension(ExtensionRequest {
                containing_type: "google.protobuf.MethodOptions".into(),
                extension_number: 51002,
            }),
        );
        assert_eq!(error_code(unknown), Code::NotFound);
    }

    #[test]
    fn huge_names_are_refused_without_an_echo() {
        let mut session = session();
        let request = ServerReflectionRequest {
            host: "h".repeat(5000),
            message_request: Some(MessageRequest::FileContainingSymbol("x".repeat(100_000))),
        };
        let answer = session.answer(request);
        assert!(answer.original_request.is_none());
        assert!(answer.valid_host.is_empty());
        assert!(answer.encoded_len() < 200, "{}", answer.encoded_len());
    }

    #[test]
    fn unknown_names_and_empty_requests_are_error_answers() {
        let mut session = session();
        for request in [
            MessageRequest::FileContainingSymbol("automation.v1.NoSuchService".into()),
            MessageRequest::FileByFilename("automation/v1/nothing.proto".into()),
            MessageRequest::AllExtensionNumbersOfType("automation.v1.NoSuchType".into()),
        ] {
            assert_eq!(error_code(ask(&mut session, request)), Code::NotFound);
        }
        let empty = session.answer(ServerReflectionRequest::default());
        assert_eq!(
            error_code(empty.message_response.unwrap()),
            Code::InvalidArgument
        );
    }

    #[test]
    fn each_version_lists_its_own_reflection_service() {
        let catalog = Arc::new(
            Catalog::new(&[FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET]).unwrap(),
        );
        for own in REFLECTION_SERVICES {
            let names: Vec<String> = ReflectionStream::new(catalog.clone(), own)
                .services()
                .service
                .into_iter()
                .map(|s| s.name)
                .collect();
            assert!(names.contains(&own.to_owned()));
            assert!(names.contains(&"grpc.health.v1.Health".to_owned()));
            assert!(names.contains(&"automation.v1.UserService".to_owned()));
            assert_eq!(names.iter().filter(|n| n.contains("reflection")).count(), 1);
        }
    }
}
