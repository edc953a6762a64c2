//! Code generated from `proto/automation/v1` at build time.

/// The `automation.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod automation_v1 {
    tonic::include_proto!("automation.v1");
}

/// Encoded descriptor set of the contract, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/automation_v1_descriptor.bin"));
