//! Compiles the `automation.v1` contract without a system `protoc` and turns
//! each RPC's `(automation.v1.access)` option into a table the server enforces.
//! A method without an access option, or with one that grants nothing
//! (`public: false`, an empty permission), fails the build: no RPC ships
//! unguarded or guarded by a rule nobody meant.

use std::{env, fmt::Write as _, fs, path::PathBuf};

use prost_reflect::{DescriptorPool, DynamicMessage, Value};

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "automation/v1/options.proto",
    "automation/v1/users.proto",
    "automation/v1/auth.proto",
    "automation/v1/roles.proto",
    "automation/v1/modules.proto",
    "automation/v1/jobs.proto",
    "automation/v1/audit.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTO_FILES)?;
    // Reflection serves these bytes. They come from protox's own pool, which
    // keeps extension options such as `(automation.v1.access)`; the
    // `prost_types` set below drops them and is only good for codegen.
    fs::write(
        out_dir.join("automation_v1_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    fs::write(
        out_dir.join("access_policies.rs"),
        access_table(&compiler.descriptor_pool())?,
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // RPCs of services whose issue has not landed yet answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// Renders `METHOD_ACCESS`: one `(grpc path, rule)` row per RPC.
fn access_table(pool: &DescriptorPool) -> Result<String, Box<dyn std::error::Error>> {
    let access = pool
        .get_extension_by_name("automation.v1.access")
        .ok_or("extension automation.v1.access is not defined")?;
    let mut rows = String::new();
    for service in pool
        .services()
        .filter(|s| s.package_name() == "automation.v1")
    {
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
fn access_rule(path: &str, policy: &DynamicMessage) -> Result<String, Box<dyn std::error::Error>> {
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
