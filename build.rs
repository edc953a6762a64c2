//! Turns the `automation.v1` contract, as the `automation-protocol` crate
//! compiled it, into what only the server needs: gRPC servers whose codec
//! checks every request (`crate::api::codec::CheckedCodec`), and two tables.
//! Each RPC's `(automation.v1.access)` option becomes a row the server
//! enforces; a method without an access option, or with one that grants
//! nothing (`public: false`, an empty permission), fails the build: no RPC
//! ships unguarded or guarded by a rule nobody meant. Likewise every string
//! and repeated field a request can carry must declare `(automation.v1.limit)`.

use std::{collections::BTreeSet, env, fmt::Write as _, fs, path::PathBuf};

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    OneofDescriptor, Value,
};

const PACKAGE: &str = "automation.v1";

type BuildResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BuildResult<()> {
    // The protocol crate's build script names its encoded descriptor set
    // (extension options intact) through cargo's `links` metadata: the tables
    // describe exactly the types the server links.
    let descriptor_path = env::var("DEP_AUTOMATION_PROTOCOL_DESCRIPTOR_SET")?;
    println!("cargo:rerun-if-changed={descriptor_path}");
    println!("cargo:rustc-env=GIT_COMMIT={}", git_commit());
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let pool = DescriptorPool::decode(fs::read(&descriptor_path)?.as_slice())?;
    fs::write(out_dir.join("access_policies.rs"), access_table(&pool)?)?;
    fs::write(out_dir.join("field_limits.rs"), field_limits(&pool)?)?;

    // Only the services: messages and clients are the protocol crate's.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".automation.v1", "::automation_protocol::automation_v1")
        // Every message a server decodes is checked against the declared
        // field limits before any handler sees it.
        .codec_path("crate::api::codec::CheckedCodec")
        .compile_fds(tonic_prost_build::FileDescriptorSet {
            file: pool.file_descriptor_protos().cloned().collect(),
        })?;
    Ok(())
}

/// Renders `METHOD_ACCESS`: one `(grpc path, rule)` row per RPC.
fn access_table(pool: &DescriptorPool) -> BuildResult<String> {
    let access = pool
        .get_extension_by_name("automation.v1.access")
        .ok_or("extension automation.v1.access is not defined")?;
    let mut rows = String::new();
    for service in pool.services().filter(|s| s.package_name() == PACKAGE) {
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let options = method.options();
            if !options.has_extension(&access) {
                return Err(format!("{path} has no (automation.v1.access) option").into());
            }
            let policy = options.get_extension(&access);
            let Value::Message(policy) = policy.as_ref() else {
                return Err(format!("{path}: access option is not a message").into());
            };
            let rule = access_rule(&path, policy)?;
            writeln!(rows, "    ({path:?}, {rule}),")?;
        }
    }
    Ok(format!(
        "/// Every RPC of `automation.v1` with the access rule its proto declares.\n\
         pub const METHOD_ACCESS: &[(&str, AccessRule)] = &[\n{rows}];\n"
    ))
}

/// The `AccessRule` expression for one method's `AccessPolicy`. Only rules
/// that grant something on purpose pass: `public: false` or
/// `authenticated: false` would otherwise read as "public"/"authenticated"
/// (the oneof is set either way), and an empty permission names nothing.
fn access_rule(path: &str, policy: &DynamicMessage) -> BuildResult<String> {
    let Some((field, value)) = policy.fields().next() else {
        return Err(format!("{path}: (automation.v1.access) names no rule").into());
    };
    match (field.name(), value) {
        ("permission", Value::String(permission)) if !permission.trim().is_empty() => {
            Ok(format!("AccessRule::Permission({permission:?})"))
        }
        ("permission", _) => Err(format!(
            "{path}: (automation.v1.access) has an empty permission; name one, e.g. \
             {{permission: \"users:read\"}}"
        )
        .into()),
        ("public", Value::Bool(true)) => Ok("AccessRule::Public".to_owned()),
        ("authenticated", Value::Bool(true)) => Ok("AccessRule::Authenticated".to_owned()),
        (rule @ ("public" | "authenticated"), _) => Err(format!(
            "{path}: (automation.v1.access) = {{{rule}: false}} is not a rule; only \
             `{rule}: true` is meaningful (or declare a permission)"
        )
        .into()),
        (other, _) => Err(format!("{path}: unknown access rule `{other}`").into()),
    }
}

/// Renders `impl CheckLimits` for every message of `automation.v1`: real
/// checks for messages a request can carry (every string and repeated field
/// must declare `(automation.v1.limit)`, or the build fails), no-ops for the
/// rest (responses), so that one codec serves every RPC.
fn field_limits(pool: &DescriptorPool) -> BuildResult<String> {
    let limit = pool
        .get_extension_by_name("automation.v1.limit")
        .ok_or("extension automation.v1.limit is not defined")?;
    let requests = request_messages(pool);
    let mut code = String::new();
    for message in pool.all_messages().filter(|m| m.package_name() == PACKAGE) {
        let body = if requests.contains(message.full_name()) {
            Some(message_checks(&message, &limit)?)
        } else {
            None
        };
        code.push_str(&check_limits_impl(&rust_path(&message), body.as_deref()));
    }
    Ok(code)
}

/// The full names of the package's messages a request can carry: every
/// RPC's input and, transitively, the package's messages in their fields.
fn request_messages(pool: &DescriptorPool) -> BTreeSet<String> {
    let mut reachable = BTreeSet::new();
    let mut queue: Vec<MessageDescriptor> = pool
        .services()
        .filter(|s| s.package_name() == PACKAGE)
        .flat_map(|s| s.methods().map(|m| m.input()).collect::<Vec<_>>())
        .collect();
    while let Some(message) = queue.pop() {
        if message.package_name() != PACKAGE || !reachable.insert(message.full_name().to_owned()) {
            continue;
        }
        for field in message.fields() {
            if let Kind::Message(inner) = field.kind() {
                queue.push(inner);
            }
        }
    }
    reachable
}

/// `impl CheckLimits` for one message: `body` holds the statements checking
/// its fields; without one the impl checks nothing.
fn check_limits_impl(rust_type: &str, body: Option<&str>) -> String {
    match body {
        None => format!(
            "impl CheckLimits for {rust_type} {{\n    fn check_limits(&self, _at: &str) -> Result<(), AppError> {{\n        Ok(())\n    }}\n}}\n\n"
        ),
        Some(body) => format!(
            "impl CheckLimits for {rust_type} {{\n    fn check_limits(&self, at: &str) -> Result<(), AppError> {{\n        let _ = at;\n{body}        Ok(())\n    }}\n}}\n\n"
        ),
    }
}

/// The statements checking every field of a request message: the plain
/// fields in order, then one `match` per oneof.
fn message_checks(message: &MessageDescriptor, limit: &ExtensionDescriptor) -> BuildResult<String> {
    let mut body = String::new();
    let mut oneofs: Vec<OneofDescriptor> = Vec::new();
    for field in message.fields() {
        let where_ = format!("{}.{}", message.full_name(), field.name());
        let bounds = field_bound(&field, limit, &where_)?;
        if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
            if !oneofs.iter().any(|o| o.full_name() == oneof.full_name()) {
                oneofs.push(oneof);
            }
            continue;
        }
        body.push_str(&field_check(&field, &bounds)?);
    }
    for oneof in oneofs {
        body.push_str(&oneof_check(message, &oneof, limit)?);
    }
    Ok(body)
}

/// The statements checking one field outside a oneof: a string's length (if
/// set, for an optional one), a repeated field's count and each of its
/// elements, a message's own fields.
fn field_check(field: &FieldDescriptor, bounds: &Bound) -> Result<String, String> {
    let name = field.name();
    let member = rust_field(name);
    let quoted = format!("{name:?}");
    let optional = field.supports_presence() && !matches!(field.kind(), Kind::Message(_));
    Ok(match (field.kind(), field.is_list()) {
        (Kind::String, false) => {
            let check = format!("check_str(at, {quoted}, value, {})?;", bounds.text()?);
            if optional {
                format!("        if let Some(value) = &self.{member} {{ {check} }}\n")
            } else {
                format!("        {{ let value = &self.{member}; {check} }}\n")
            }
        }
        (Kind::String, true) => format!(
            "        check_items(at, {quoted}, self.{member}.len(), {})?;\n        for (index, value) in self.{member}.iter().enumerate() {{ check_str_item(at, {quoted}, index, value, {})?; }}\n",
            bounds.items()?,
            bounds.text()?
        ),
        (Kind::Message(inner), true) => {
            let mut lines = format!(
                "        check_items(at, {quoted}, self.{member}.len(), {})?;\n",
                bounds.items()?
            );
            if let Some(check) = message_check(&inner, "value", "&item_path(at, NAME, index)") {
                let check = check.replace("NAME", &quoted);
                lines.push_str(&format!(
                    "        for (index, value) in self.{member}.iter().enumerate() {{ {check} }}\n"
                ));
            }
            lines
        }
        (Kind::Message(inner), false) => message_check(&inner, "value", "&field_path(at, NAME)")
            .map(|check| {
                let check = check.replace("NAME", &quoted);
                format!("        if let Some(value) = &self.{member} {{ {check} }}\n")
            })
            .unwrap_or_default(),
        (_, true) => format!(
            "        check_items(at, {quoted}, self.{member}.len(), {})?;\n",
            bounds.items()?
        ),
        (_, false) => String::new(),
    })
}

/// A `match` checking whichever member of a oneof is set; nothing when no
/// member has anything to check.
fn oneof_check(
    message: &MessageDescriptor,
    oneof: &OneofDescriptor,
    limit: &ExtensionDescriptor,
) -> BuildResult<String> {
    let enum_path = format!("{}::{}", rust_module(message), upper_camel(oneof.name()));
    let mut arms = String::new();
    for field in oneof.fields() {
        let variant = upper_camel(field.name());
        let name = field.name();
        let where_ = format!("{}.{}", message.full_name(), name);
        let check = match field.kind() {
            Kind::String => Some(format!(
                "check_str(at, {name:?}, value, {})?;",
                field_bound(&field, limit, &where_)?.text()?
            )),
            Kind::Message(inner) => message_check(&inner, "value", "&field_path(at, NAME)")
                .map(|c| c.replace("NAME", &format!("{name:?}"))),
            _ => None,
        };
        if let Some(check) = check {
            writeln!(
                arms,
                "            Some({enum_path}::{variant}(value)) => {{ {check} }}"
            )?;
        }
    }
    if arms.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(
        "        match &self.{} {{\n{arms}            _ => {{}}\n        }}\n",
        rust_field(oneof.name())
    ))
}

/// What `(automation.v1.limit)` says of one field.
struct Bound {
    where_: String,
    max_bytes: u32,
    max_chars: u32,
    max_items: u32,
}

impl Bound {
    /// The `TextLimit` expression of a string field.
    fn text(&self) -> Result<String, String> {
        match (self.max_bytes, self.max_chars) {
            (0, 0) => Err(format!(
                "{}: a string field of a request needs (automation.v1.limit).max_bytes or .max_chars",
                self.where_
            )),
            (bytes, 0) => Ok(format!("TextLimit::Bytes({bytes})")),
            (0, chars) => Ok(format!("TextLimit::Chars({chars})")),
            _ => Err(format!(
                "{}: give max_bytes or max_chars, not both",
                self.where_
            )),
        }
    }

    /// The element bound of a repeated field.
    fn items(&self) -> Result<u32, String> {
        if self.max_items == 0 {
            return Err(format!(
                "{}: a repeated field of a request needs (automation.v1.limit).max_items",
                self.where_
            ));
        }
        Ok(self.max_items)
    }
}

fn field_bound(
    field: &FieldDescriptor,
    limit: &ExtensionDescriptor,
    where_: &str,
) -> Result<Bound, String> {
    let mut bound = Bound {
        where_: where_.to_owned(),
        max_bytes: 0,
        max_chars: 0,
        max_items: 0,
    };
    let options = field.options();
    if options.has_extension(limit) {
        let value = options.get_extension(limit);
        let Value::Message(value) = value.as_ref() else {
            return Err(format!("{where_}: limit option is not a message"));
        };
        let number = |name: &str| {
            value
                .get_field_by_name(name)
                .and_then(|v| v.as_u32())
                .unwrap_or(0)
        };
        bound.max_bytes = number("max_bytes");
        bound.max_chars = number("max_chars");
        bound.max_items = number("max_items");
    }
    Ok(bound)
}

/// The statement checking a message-typed value, or `None` when there is
/// nothing to check (well-known types other than FieldMask; JSON is bounded
/// by size where it is used).
fn message_check(message: &MessageDescriptor, value: &str, path: &str) -> Option<String> {
    match message.full_name() {
        "google.protobuf.FieldMask" => Some(format!("check_field_mask({path}, {value})?;")),
        name if name.starts_with(&format!("{PACKAGE}.")) => {
            Some(format!("{value}.check_limits({path})?;"))
        }
        _ => None,
    }
}

/// `pb::Foo` or `pb::outer::Inner` for a message of the package.
fn rust_path(message: &MessageDescriptor) -> String {
    match message.parent_message() {
        Some(parent) => format!("{}::{}", rust_module(&parent), message.name()),
        None => format!("pb::{}", message.name()),
    }
}

/// The module prost generates for a message's nested types and oneofs.
fn rust_module(message: &MessageDescriptor) -> String {
    let snake = snake_case(message.name());
    match message.parent_message() {
        Some(parent) => format!("{}::{snake}", rust_module(&parent)),
        None => format!("pb::{snake}"),
    }
}

fn rust_field(name: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "as", "break", "const", "continue", "crate", "else", "enum", "extern", "fn", "for", "if",
        "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
        "static", "struct", "trait", "type", "unsafe", "use", "where", "while", "async", "await",
        "dyn", "abstract", "become", "box", "do", "final", "macro", "override", "priv", "typeof",
        "unsized", "virtual", "yield", "try", "gen",
    ];
    if KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else {
        name.to_owned()
    }
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn upper_camel(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The commit the binary is built from, for `build_info`: `GIT_COMMIT` if
/// set (a build outside a checkout, e.g. a container), else `git rev-parse`,
/// else "unknown".
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    if let Ok(commit) = env::var("GIT_COMMIT") {
        return commit;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
