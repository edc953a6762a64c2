//! The `automation.v1` contract of the automation control plane, generated
//! from `proto/` at build time: every message, every enum and a client per
//! service, plus the encoded descriptor set reflection serves.
//!
//! Servers are not here: the control plane generates its own, with a codec
//! that checks each request against the field bounds the contract declares.

pub mod json;

/// The `automation.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod automation_v1 {
    tonic::include_proto!("automation.v1");
}

/// Encoded descriptor set of the contract (with its imports, comments and
/// custom options), as gRPC reflection serves it.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/automation_v1_descriptor.bin"));
