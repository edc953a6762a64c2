//! The size cap of one method's messages (see [`super::message_caps`]).

use tonic::Status;

use crate::error::AppError;

/// The cap of one method: its largest message, and the setting it follows
/// from, named in refusals so that an operator knows what to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageCap {
    /// Largest message, in bytes (the gRPC length prefix).
    pub max_bytes: usize,
    /// The setting's environment variable, when one sets the cap.
    pub limit: Option<&'static str>,
}

impl MessageCap {
    /// A cap no setting changes.
    pub fn fixed(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            limit: None,
        }
    }

    /// A cap that `limit` sets.
    pub fn set_by(limit: &'static str, max_bytes: usize) -> Self {
        Self {
            max_bytes,
            limit: Some(limit),
        }
    }

    /// This cap, or the outer bound when that is smaller.
    pub fn within(self, outer: usize) -> Self {
        if self.max_bytes <= outer {
            self
        } else {
            Self::set_by("GRPC_MAX_MESSAGE_BYTES", outer)
        }
    }

    /// The refusal of a message of `size` bytes.
    pub fn refusal(self, size: usize) -> Status {
        AppError::MessageTooLarge {
            size,
            max_bytes: self.max_bytes,
            limit: self.limit,
        }
        .into()
    }
}
