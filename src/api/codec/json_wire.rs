//! Measures a JSON document from its protobuf encoding
//! (`google.protobuf.Struct`, `Value` and `ListValue` on the wire) without
//! decoding it: its length as JSON text and how many values, objects and
//! strings a decoded tree of it would hold.
//!
//! Why: a decoded document costs far more than its bytes. Each one-key object
//! is a `BTreeMap` node of its own (~600 bytes) in the prost tree and again
//! in the `serde_json` tree, and a CreateJob holds about four such trees
//! while it is handled, so 1 MiB of `[{"k":0},…]` took ~370 MB. Walking the
//! bytes first lets the server refuse a document that is too large as JSON
//! before any tree exists, and reserve the memory a legal one will take (see
//! [`super::budget`]). The walk is linear in the message, allocates nothing
//! and recurses no deeper than prost does.
//!
//! The JSON length is the one the server measures after decoding
//! (`serde_json` of the converted value, see `wire::json`): exact for what
//! protobuf encoders write. A message that repeats a field which decoding
//! would merge or overwrite (a map key twice, two `kind`s in one `Value`)
//! counts each occurrence, as sent; no standard encoder writes those.

use crate::error::AppError;

/// How deep messages nest before prost refuses to decode them (its
/// `RECURSION_LIMIT`: a Struct is one level, each of its map entries
/// another, each Value a third).
pub const MAX_MESSAGE_DEPTH: usize = 100;

/// What a JSON document would cost once decoded, measured on the wire.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JsonMeasure {
    /// Its length as JSON text.
    pub json_bytes: usize,
    /// JSON values: every null, bool, number, string, list and object.
    pub values: usize,
    /// Objects with at least one member: each is a tree node of its own.
    pub objects: usize,
    /// Members of all objects.
    pub members: usize,
    /// Strings and keys (each its own allocation).
    pub strings: usize,
    /// Bytes of all strings and keys.
    pub text_bytes: usize,
}

/// Bytes per decoded value, per copy: prost's `Value` and serde_json's are
/// 32, but a list's elements are converted one by one, so its copies overlap
/// less (a CreateJob of 518,000 numbers peaked at 38 MB, 73 bytes a value
/// for all its copies together).
const VALUE_BYTES: usize = 24;
/// Bytes per non-empty object: a `BTreeMap` leaf of 11 keys and values.
const OBJECT_BYTES: usize = 560;
/// Bytes per object member beyond the first node's share.
const MEMBER_BYTES: usize = 48;
/// Allocator overhead per string.
const STRING_BYTES: usize = 16;

impl JsonMeasure {
    /// The measure of `{}`, which an unset document stands for.
    pub const EMPTY_OBJECT: Self = Self {
        json_bytes: 2,
        values: 1,
        objects: 0,
        members: 0,
        strings: 0,
        text_bytes: 0,
    };

    /// The measure of `null`, which an unset value stands for.
    pub const NULL: Self = Self {
        json_bytes: 4,
        values: 1,
        objects: 0,
        members: 0,
        strings: 0,
        text_bytes: 0,
    };

    /// Bytes one decoded tree of the document takes in memory (prost's and
    /// serde_json's are alike). The constants were calibrated against the
    /// release server: 1 MiB of `[{"k":0},…]` estimates at 88 MB a tree,
    /// where one CreateJob's four copies peaked at 357 MB together.
    pub fn tree_bytes(&self) -> usize {
        self.values
            .saturating_mul(VALUE_BYTES)
            .saturating_add(self.objects.saturating_mul(OBJECT_BYTES))
            .saturating_add(self.members.saturating_mul(MEMBER_BYTES))
            .saturating_add(self.strings.saturating_mul(STRING_BYTES))
            .saturating_add(self.text_bytes)
    }

    /// Two occurrences of one field, merged (counted as sent).
    pub fn add(&mut self, other: &Self) {
        self.json_bytes = self.json_bytes.saturating_add(other.json_bytes);
        self.values = self.values.saturating_add(other.values);
        self.objects = self.objects.saturating_add(other.objects);
        self.members = self.members.saturating_add(other.members);
        self.strings = self.strings.saturating_add(other.strings);
        self.text_bytes = self.text_bytes.saturating_add(other.text_bytes);
    }
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

fn malformed(what: &str) -> AppError {
    AppError::Malformed(what.to_owned())
}

/// A cursor over one message's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Wire<'a> {
    bytes: &'a [u8],
}

impl<'a> Wire<'a> {
    /// The fields in `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn varint(&mut self) -> Result<u64, AppError> {
        let mut value = 0u64;
        for (index, byte) in self.bytes.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                if index == 9 && *byte > 1 {
                    break;
                }
                self.bytes = &self.bytes[index + 1..];
                return Ok(value);
            }
        }
        Err(malformed("invalid varint"))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], AppError> {
        if len > self.bytes.len() {
            return Err(malformed("buffer underflow"));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    /// The next field's number and wire type; `None` at the end.
    pub fn field(&mut self) -> Result<Option<(u32, u8)>, AppError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| malformed("invalid key value"))?;
        let (number, wire_type) = (key >> 3, (key & 7) as u8);
        if number == 0 || wire_type > FIXED32 {
            return Err(malformed("invalid key value"));
        }
        Ok(Some((number, wire_type)))
    }

    /// The bytes of a length-delimited field.
    pub fn len_delimited(&mut self) -> Result<&'a [u8], AppError> {
        let len = self.varint()?;
        self.take(usize::try_from(len).map_err(|_| malformed("buffer underflow"))?)
    }

    /// Skips a field's value, as prost does for fields it does not know.
    pub fn skip(&mut self, number: u32, wire_type: u8, depth: usize) -> Result<(), AppError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            FIXED32 => self.take(4).map(drop),
            LEN => self.len_delimited().map(drop),
            START_GROUP => {
                let depth = enter(depth)?;
                loop {
                    match self.field()? {
                        Some((inner, END_GROUP)) if inner == number => return Ok(()),
                        Some((_, END_GROUP)) | None => {
                            return Err(malformed("unexpected end group tag"));
                        }
                        Some((inner, inner_type)) => self.skip(inner, inner_type, depth)?,
                    }
                }
            }
            _ => Err(malformed("unexpected end group tag")),
        }
    }

    /// The bytes of a field that must be a message.
    pub fn message(&mut self, wire_type: u8) -> Result<&'a [u8], AppError> {
        if wire_type != LEN {
            return Err(malformed("invalid wire type"));
        }
        self.len_delimited()
    }
}

/// One level deeper; refused past prost's limit.
pub fn enter(depth: usize) -> Result<usize, AppError> {
    if depth >= MAX_MESSAGE_DEPTH {
        Err(malformed("recursion limit reached"))
    } else {
        Ok(depth + 1)
    }
}

/// The measure of a `google.protobuf.Struct` message (`bytes`, nested
/// `depth` levels below the request).
pub fn measure_struct(bytes: &[u8], depth: usize) -> Result<JsonMeasure, AppError> {
    let mut measure = JsonMeasure::EMPTY_OBJECT;
    let mut wire = Wire::new(bytes);
    while let Some((number, wire_type)) = wire.field()? {
        if number != 1 {
            wire.skip(number, wire_type, depth)?;
            continue;
        }
        // A map entry: a key and a Value, either possibly left out.
        let entry = wire.message(wire_type)?;
        let entry_depth = enter(depth)?;
        let mut key = 2; // `""`
        let mut key_bytes = 0;
        let mut value: Option<JsonMeasure> = None;
        let mut fields = Wire::new(entry);
        while let Some((number, wire_type)) = fields.field()? {
            match number {
                1 => {
                    let text = fields.message(wire_type)?;
                    key = string_json_len(text)?;
                    key_bytes = text.len();
                }
                2 => {
                    let inner = fields.message(wire_type)?;
                    let measured = measure_value(inner, enter(entry_depth)?)?;
                    value.get_or_insert_default().add(&measured);
                }
                _ => fields.skip(number, wire_type, entry_depth)?,
            }
        }
        let value = value.unwrap_or(JsonMeasure::NULL);
        // A comma before every member but the first, the key, a colon.
        let comma = usize::from(measure.members > 0);
        measure.json_bytes += comma + key + 1;
        measure.add(&JsonMeasure {
            json_bytes: 0,
            values: 0,
            objects: usize::from(measure.members == 0),
            members: 1,
            strings: 1,
            text_bytes: key_bytes,
        });
        measure.add(&value);
    }
    Ok(measure)
}

/// The measure of a `google.protobuf.Value` message.
pub fn measure_value(bytes: &[u8], depth: usize) -> Result<JsonMeasure, AppError> {
    let mut kinds: Option<JsonMeasure> = None;
    let mut wire = Wire::new(bytes);
    while let Some((number, wire_type)) = wire.field()? {
        let kind = match (number, wire_type) {
            // null_value (an enum) and bool_value.
            (1, VARINT) => {
                wire.varint()?;
                JsonMeasure::NULL
            }
            (4, VARINT) => {
                let json_bytes = if wire.varint()? != 0 { 4 } else { 5 };
                JsonMeasure {
                    json_bytes,
                    values: 1,
                    ..JsonMeasure::default()
                }
            }
            (2, FIXED64) => {
                let raw = wire.take(8)?;
                let bits = u64::from_le_bytes(raw.try_into().expect("8 bytes"));
                JsonMeasure {
                    json_bytes: number_json_len(f64::from_bits(bits)),
                    values: 1,
                    ..JsonMeasure::default()
                }
            }
            (3, LEN) => {
                let text = wire.len_delimited()?;
                JsonMeasure {
                    json_bytes: string_json_len(text)?,
                    values: 1,
                    strings: 1,
                    text_bytes: text.len(),
                    ..JsonMeasure::default()
                }
            }
            (5, LEN) => measure_struct(wire.len_delimited()?, enter(depth)?)?,
            (6, LEN) => measure_list(wire.len_delimited()?, enter(depth)?)?,
            (1..=6, _) => return Err(malformed("invalid wire type")),
            _ => {
                wire.skip(number, wire_type, depth)?;
                continue;
            }
        };
        kinds.get_or_insert_default().add(&kind);
    }
    Ok(kinds.unwrap_or(JsonMeasure::NULL))
}

/// The measure of a `google.protobuf.ListValue` message.
fn measure_list(bytes: &[u8], depth: usize) -> Result<JsonMeasure, AppError> {
    let mut measure = JsonMeasure {
        json_bytes: 2,
        values: 1,
        ..JsonMeasure::default()
    };
    let mut items = 0usize;
    let mut wire = Wire::new(bytes);
    while let Some((number, wire_type)) = wire.field()? {
        if number != 1 {
            wire.skip(number, wire_type, depth)?;
            continue;
        }
        let item = measure_value(wire.message(wire_type)?, enter(depth)?)?;
        measure.json_bytes += usize::from(items > 0);
        measure.add(&item);
        items += 1;
    }
    Ok(measure)
}

/// The length of a string as JSON (quoted and escaped as serde_json does);
/// a string that is not UTF-8 is refused, as prost refuses it.
fn string_json_len(bytes: &[u8]) -> Result<usize, AppError> {
    std::str::from_utf8(bytes)
        .map_err(|_| malformed("invalid string value: data is not UTF-8 encoded"))?;
    let escapes: usize = bytes
        .iter()
        .map(|byte| match byte {
            b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 1,
            0..0x20 => 5,
            _ => 0,
        })
        .sum();
    Ok(bytes.len() + escapes + 2)
}

/// The length of a number as JSON, as `wire::json` converts it: whole numbers
/// within ±2^53 as integers, other finite ones as floats, the rest `null`.
fn number_json_len(n: f64) -> usize {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        let whole = n as i64;
        usize::from(whole < 0) + whole.unsigned_abs().checked_ilog10().unwrap_or(0) as usize + 1
    } else if let Some(number) = serde_json::Number::from_f64(n) {
        let mut counter = Counter(0);
        serde_json::to_writer(&mut counter, &number).expect("counting cannot fail");
        counter.0
    } else {
        4
    }
}

/// Counts what is written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::{ListValue, Struct, Value, value::Kind};

    use super::*;
    use crate::wire::json::{json_to_struct, struct_to_json};

    fn json_len(value: &serde_json::Value) -> usize {
        serde_json::to_vec(value).unwrap().len()
    }

    fn measured(document: &Struct) -> JsonMeasure {
        measure_struct(&document.encode_to_vec(), 1).unwrap()
    }

    #[test]
    fn the_json_length_is_the_one_the_server_measures() {
        let documents = [
            serde_json::json!({}),
            serde_json::json!({"": null}),
            serde_json::json!({"a": [], "b": {}, "c": [[], {}, [{}]]}),
            serde_json::json!({"n": [0, -1, 7, 10, 99, 100, -12345, 1.5, -0.25, 1e20, 1e300,
                                     9007199254740991u64, -9007199254740991i64,
                                     9007199254740992u64, 3.0e-7, 123456.789]}),
            serde_json::json!({"s": ["", "x", "é€𝄞", "\"\\/", "\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f}\u{7f}"],
                               "esc\"key\n": true, "f": false}),
            serde_json::json!({"a": [{"k": 0}, {"k": 0}], "deep": {"x": {"y": {"z": [1, [2, [3]]]}}}}),
        ];
        for document in documents {
            let proto = json_to_struct(document.clone());
            let measure = measured(&proto);
            assert_eq!(
                measure.json_bytes,
                json_len(&struct_to_json(proto)),
                "{document}"
            );
        }
    }

    #[test]
    fn every_ascii_character_is_escaped_as_serde_json_does() {
        for byte in 0u8..128 {
            let text = (byte as char).to_string();
            let expected = serde_json::to_string(&text).unwrap().len();
            assert_eq!(
                string_json_len(text.as_bytes()).unwrap(),
                expected,
                "{byte}"
            );
        }
    }

    #[test]
    fn numbers_json_cannot_hold_are_null_and_kinds_left_out_are_null() {
        let number = |n: f64| Value {
            kind: Some(Kind::NumberValue(n)),
        };
        let document = Struct {
            fields: [
                ("nan".to_owned(), number(f64::NAN)),
                ("inf".to_owned(), number(f64::NEG_INFINITY)),
                ("unset".to_owned(), Value { kind: None }),
                (
                    "null".to_owned(),
                    Value {
                        kind: Some(Kind::NullValue(7)),
                    },
                ),
            ]
            .into(),
        };
        assert_eq!(
            measured(&document).json_bytes,
            json_len(&struct_to_json(document))
        );
    }

    #[test]
    fn objects_values_and_strings_are_counted() {
        let document =
            json_to_struct(serde_json::json!({"a": [{"k": 0}, {"k": 0}, {}], "s": "xyz"}));
        let measure = measured(&document);
        // The document, the list, three objects, two numbers and a string.
        assert_eq!(measure.values, 8);
        // The document and the two one-key objects.
        assert_eq!(measure.objects, 3);
        assert_eq!(measure.members, 4);
        assert_eq!(measure.strings, 5);
        assert_eq!(measure.text_bytes, 1 + 1 + 1 + 1 + 3);
    }

    #[test]
    fn what_prost_decodes_is_measured_and_what_it_refuses_is_refused() {
        // Values nested until prost gives up: the walk follows to the same
        // depth and refuses beyond it.
        let mut value = Value {
            kind: Some(Kind::NumberValue(1.0)),
        };
        for level in 0.. {
            let document = Struct {
                fields: [("k".to_owned(), value.clone())].into(),
            };
            let bytes = document.encode_to_vec();
            let decoded = Struct::decode(&bytes[..]);
            let walked = measure_struct(&bytes, 0);
            assert_eq!(decoded.is_ok(), walked.is_ok(), "level {level}");
            if decoded.is_err() {
                break;
            }
            value = Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![value],
                })),
            };
        }
        // Truncated, not UTF-8, a wrong wire type: refused, as prost does.
        let bytes = json_to_struct(serde_json::json!({"k": "v"})).encode_to_vec();
        assert!(measure_struct(&bytes[..bytes.len() - 1], 0).is_err());
        let mut not_utf8 = bytes.clone();
        let last = not_utf8.len() - 1;
        not_utf8[last] = 0xff;
        assert!(Struct::decode(&not_utf8[..]).is_err());
        assert!(measure_struct(&not_utf8, 0).is_err());
        // number_value (a double) sent as a varint.
        assert!(Value::decode(&[0x10, 0][..]).is_err());
        assert!(measure_value(&[0x10, 0], 0).is_err());
    }
}
