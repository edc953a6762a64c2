//! JSON on the wire is `google.protobuf.Struct`/`Value`; in the database it
//! is JSONB. These convert between the two.

use prost_types::{ListValue, Struct, Value, value::Kind};

/// A JSON object as a protobuf `Struct` (other JSON values are wrapped as
/// `{"value": ...}`).
pub(crate) fn json_to_struct(value: serde_json::Value) -> Struct {
    match json_to_value(value).kind {
        Some(Kind::StructValue(s)) => s,
        other => Struct {
            fields: [("value".to_owned(), Value { kind: other })].into(),
        },
    }
}

/// Any JSON value as a protobuf `Value`.
pub(crate) fn json_to_value(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_objects_are_wrapped() {
        let wrapped = json_to_struct(serde_json::json!([1]));
        assert!(wrapped.fields.contains_key("value"));
    }
}
