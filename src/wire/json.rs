//! JSON on the wire is `google.protobuf.Struct`/`Value`; in the database it
//! is JSONB (`serde_json::Value` in between). The conversions live in the
//! protocol crate, because the worker SDK needs exactly the same rules
//! (whole numbers stay integers, NaN becomes null); their tests are there.

pub use automation_protocol::json::{json_to_struct, json_to_value, struct_to_json, value_to_json};
