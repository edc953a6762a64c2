//! The codec of every `automation.v1` RPC: prost encoding, plus two checks
//! on everything decoded, before any handler (or database) sees it:
//!
//! - a message that does not parse is the caller's mistake: INVALID_ARGUMENT,
//!   not the INTERNAL that tonic's prost codec answers;
//! - every field is within the bound its proto declares as
//!   `(automation.v1.limit)` (build.rs turns those declarations into the
//!   [`CheckLimits`] impls included below, and refuses a request field
//!   without one), answered INVALID_ARGUMENT naming the field's path.
//!
//! Because the codec is generated into every service and every stream, no
//! RPC can forget the check, and worker stream messages get it too.
//!
//! Before either, [`message_caps`] refuses a message longer than its
//! method's cap from its length prefix, so that no oversized message is
//! buffered or decoded at all; and the messages that carry JSON documents
//! are looked at on the wire first ([`inspect`]: a document too large as
//! JSON is refused by name without a tree being built) and decoded only when
//! the replica's request budget has room for what they will cost
//! ([`budget`]).

pub mod body;
pub mod budget;
pub mod cap;
pub mod inspect;
pub mod json_wire;
pub mod message_caps;

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use crate::{error::AppError, proto::automation_v1 as pb};

/// A message whose fields can be checked against their declared bounds.
pub trait CheckLimits {
    /// Checks every bounded field; `at` is the path of this message in the
    /// request (`""` at the top), used to name the offending field.
    fn check_limits(&self, at: &str) -> Result<(), AppError>;
}

include!(concat!(env!("OUT_DIR"), "/field_limits.rs"));

/// How long a string may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextLimit {
    /// At most this many UTF-8 bytes.
    Bytes(usize),
    /// At most this many characters.
    Chars(usize),
}

/// Most paths an update mask may name, and the longest path.
const MAX_MASK_PATHS: usize = 16;
const MAX_MASK_PATH_BYTES: usize = 64;

fn field_path(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

fn item_path(at: &str, name: &str, index: usize) -> String {
    format!("{}[{index}]", field_path(at, name))
}

fn text_error(path: String, limit: TextLimit) -> AppError {
    match limit {
        TextLimit::Bytes(n) => AppError::invalid(path, format!("must be at most {n} bytes")),
        TextLimit::Chars(n) => AppError::invalid(path, format!("must be at most {n} characters")),
    }
}

fn within(value: &str, limit: TextLimit) -> bool {
    match limit {
        TextLimit::Bytes(n) => value.len() <= n,
        // Only count when the bytes could exceed the bound.
        TextLimit::Chars(n) => value.len() <= n || value.chars().count() <= n,
    }
}

/// NUL is never meaningful in a request string, and PostgreSQL cannot store
/// it in text: refused everywhere, before it can reach a query.
fn nul_error(path: String) -> AppError {
    AppError::invalid(path, "must not contain NUL characters")
}

fn check_str(at: &str, name: &str, value: &str, limit: TextLimit) -> Result<(), AppError> {
    if !within(value, limit) {
        Err(text_error(field_path(at, name), limit))
    } else if value.contains('\0') {
        Err(nul_error(field_path(at, name)))
    } else {
        Ok(())
    }
}

fn check_str_item(
    at: &str,
    name: &str,
    index: usize,
    value: &str,
    limit: TextLimit,
) -> Result<(), AppError> {
    if !within(value, limit) {
        Err(text_error(item_path(at, name, index), limit))
    } else if value.contains('\0') {
        Err(nul_error(item_path(at, name, index)))
    } else {
        Ok(())
    }
}

fn check_items(at: &str, name: &str, count: usize, max: usize) -> Result<(), AppError> {
    if count <= max {
        Ok(())
    } else {
        Err(AppError::invalid(
            field_path(at, name),
            format!("must have at most {max} elements"),
        ))
    }
}

fn check_field_mask(path: &str, mask: &prost_types::FieldMask) -> Result<(), AppError> {
    check_items(path, "paths", mask.paths.len(), MAX_MASK_PATHS)?;
    for (index, value) in mask.paths.iter().enumerate() {
        check_str_item(
            path,
            "paths",
            index,
            value,
            TextLimit::Bytes(MAX_MASK_PATH_BYTES),
        )?;
    }
    Ok(())
}

/// The codec named in build.rs (`codec_path`).
#[derive(Debug, Clone)]
pub struct CheckedCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for CheckedCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + CheckLimits + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder { _type: PhantomData }
    }
}

/// Decodes with prost, then checks the declared bounds.
#[derive(Debug)]
pub struct CheckedDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default + CheckLimits> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let message = U::decode(buf).map_err(|error| AppError::Malformed(error.to_string()))?;
        message.check_limits("")?;
        Ok(Some(message))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// The buffers each call starts with, in and out: small, since a stream
/// holds both for as long as it is open (tonic's default is 8 KiB each,
/// for every idle Work stream: see BENCHMARKS.md, "Idle workers with job
/// names of their own"); a larger message grows its
/// buffer as it needs. The yield threshold stays tonic's (32 KiB).
fn buffer_settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, 32 * 1024)
}

/// What [`buffer_settings`] starts a call's buffers with.
const INITIAL_BUFFER: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_measured_in_the_declared_unit() {
        assert!(within("ééé", TextLimit::Chars(3)));
        assert!(!within("ééé", TextLimit::Bytes(3)));
        assert!(!within("abcd", TextLimit::Chars(3)));
    }

    #[test]
    fn nested_fields_are_named_by_path() {
        let request = pb::UpdateUserRequest {
            user: Some(pb::User {
                email: "x".repeat(255),
                ..Default::default()
            }),
            update_mask: None,
        };
        let error = request.check_limits("").unwrap_err();
        assert_eq!(error.to_string(), "user.email: must be at most 254 bytes");

        let request = pb::CreateRoleRequest {
            name: "ops".into(),
            description: String::new(),
            permissions: vec!["jobs:read".into(), "x".repeat(200)],
        };
        let error = request.check_limits("").unwrap_err();
        assert_eq!(
            error.to_string(),
            "permissions[1]: must be at most 129 bytes"
        );
    }

    #[test]
    fn nul_characters_are_refused() {
        let request = pb::LoginRequest {
            login: "ad\0min".into(),
            password: "x".into(),
        };
        let error = request.check_limits("").unwrap_err();
        assert_eq!(error.to_string(), "login: must not contain NUL characters");
    }

    #[test]
    fn update_masks_are_bounded() {
        let request = pb::UpdateUserRequest {
            user: None,
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["email".into(); 17],
            }),
        };
        let error = request.check_limits("").unwrap_err();
        assert_eq!(
            error.to_string(),
            "update_mask.paths: must have at most 16 elements"
        );
    }
}
