//! JSON documents (job payloads, results, error details, module manifests)
//! travel as `google.protobuf.Struct`/`Value`. These convert them to and from
//! `serde_json`.

use prost_types::{ListValue, Struct, Value, value::Kind};

/// A JSON object as a protobuf `Struct` (other JSON values are wrapped as
/// `{"value": ...}`).
pub fn json_to_struct(value: serde_json::Value) -> Struct {
    match json_to_value(value).kind {
        Some(Kind::StructValue(s)) => s,
        other => Struct {
            fields: [("value".to_owned(), Value { kind: other })].into(),
        },
    }
}

/// Any JSON value as a protobuf `Value`.
pub fn json_to_value(value: serde_json::Value) -> Value {
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

/// A protobuf `Struct` as a JSON object.
pub fn struct_to_json(value: Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

/// A protobuf `Value` as JSON. Numbers that JSON cannot hold (NaN,
/// infinities) become null, as protobuf's JSON mapping has no form for them.
pub fn value_to_json(value: Value) -> serde_json::Value {
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => number_to_json(n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.into_iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// Whole numbers stay integers (so `3` reads back as `3`, not `3.0`);
/// others are floats.
fn number_to_json(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_struct() {
        let json = serde_json::json!({
            "n": 3, "f": 1.5, "s": "x", "b": true, "z": null, "l": [1, "a", {"k": []}]
        });
        assert_eq!(struct_to_json(json_to_struct(json.clone())), json);
    }

    #[test]
    fn non_objects_are_wrapped_and_non_finite_numbers_become_null() {
        assert_eq!(
            struct_to_json(json_to_struct(serde_json::json!([1, 2]))),
            serde_json::json!({ "value": [1, 2] })
        );
        let nan = Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert_eq!(value_to_json(nan), serde_json::Value::Null);
    }
}
