//! JSON documents (job payloads, results, error details, module manifests)
//! travel as `google.protobuf.Struct`/`Value`; programs hold them as
//! `serde_json::Value`. These convert between the two, for the server and
//! the worker SDK alike.
//!
//! What can go wrong, and the rule for each: protobuf numbers are doubles,
//! so whole numbers up to 2^53 come back as JSON integers (`3`, not `3.0`)
//! and larger or fractional ones as floats; NaN and the infinities have no
//! JSON form and become null; an unset `Value` is null too.

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

/// Whole numbers stay integers (so `3` reads back as `3`, not `3.0`, and
/// is stored so in JSONB); others are floats.
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

    fn number(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    #[test]
    fn json_round_trips_through_struct() {
        let json = serde_json::json!({
            "n": 3, "f": 1.5, "s": "x", "b": true, "z": null, "l": [1, "a", {"k": []}]
        });
        assert_eq!(struct_to_json(json_to_struct(json.clone())), json);
    }

    #[test]
    fn whole_numbers_stay_integers_up_to_two_to_the_53() {
        assert_eq!(value_to_json(number(3.0)), serde_json::json!(3));
        assert_eq!(value_to_json(number(-0.0)), serde_json::json!(0));
        assert_eq!(
            value_to_json(number(9_007_199_254_740_991.0)),
            serde_json::json!(9_007_199_254_740_991_i64)
        );
        // Beyond 2^53 a double is no longer exact: it stays a float.
        assert!(value_to_json(number(1e300)).is_f64());
        assert_eq!(value_to_json(number(2.5)), serde_json::json!(2.5));
    }

    #[test]
    fn numbers_json_cannot_hold_become_null() {
        for n in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(value_to_json(number(n)), serde_json::Value::Null, "{n}");
        }
    }

    #[test]
    fn unset_and_null_values_are_null() {
        assert_eq!(value_to_json(Value { kind: None }), serde_json::Value::Null);
        assert_eq!(
            value_to_json(Value {
                kind: Some(Kind::NullValue(0))
            }),
            serde_json::Value::Null
        );
        assert_eq!(
            json_to_value(serde_json::Value::Null).kind,
            Some(Kind::NullValue(0))
        );
    }

    #[test]
    fn nested_structs_and_lists_keep_their_shape() {
        let json = serde_json::json!({"a": {"b": {"c": [[1, 2], {"d": null}]}}});
        let message = json_to_struct(json.clone());
        let Some(Kind::StructValue(a)) = &message.fields["a"].kind else {
            panic!("a is not a struct: {message:?}");
        };
        assert!(matches!(a.fields["b"].kind, Some(Kind::StructValue(_))));
        assert_eq!(struct_to_json(message), json);
    }

    #[test]
    fn values_other_than_objects_are_wrapped_in_a_struct() {
        let wrapped = json_to_struct(serde_json::json!([1, 2]));
        assert_eq!(
            struct_to_json(wrapped),
            serde_json::json!({"value": [1, 2]})
        );
        let wrapped = json_to_struct(serde_json::json!("text"));
        assert_eq!(
            struct_to_json(wrapped),
            serde_json::json!({"value": "text"})
        );
    }
}
