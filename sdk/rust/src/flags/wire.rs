//! Conversions between the flag types and their protobuf messages, and
//! between `google.protobuf.Struct`/`Value` and JSON.
//!
//! A `Value` number is a double, so a JSON integer travels as one: integers
//! up to 2^53 in magnitude arrive unchanged, larger ones are rounded to the
//! nearest double (as in JavaScript). An integral number that comes back is
//! given back as a JSON integer (`1`, not `1.0`), so `json!(1)` compares
//! equal; a double that is not finite (which JSON cannot carry) becomes
//! `null`.

use serde_json::{Map, Number, Value};

use super::{Flag, FlagEvaluation};
use crate::error::Error;
use crate::pb;

/// 2^53: past it, not every integer is a double.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// An evaluation context as a `Struct`: a JSON object, or `null` for none.
pub(super) fn context_to_proto(context: Value) -> Result<Option<prost_types::Struct>, Error> {
    match context {
        Value::Null => Ok(None),
        Value::Object(fields) => Ok(Some(struct_to_proto(fields))),
        other => Err(Error::InvalidArgument {
            field: "context".into(),
            rule: format!(
                "an evaluation context is a JSON object (or null), not {}",
                json_kind(&other)
            ),
        }),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn struct_to_proto(fields: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k, value_to_proto(v)))
            .collect(),
    }
}

pub(super) fn value_to_proto(value: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(b),
        // Some for every number serde_json holds (it has no NaN).
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(value_to_proto).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(struct_to_proto(fields)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub(super) fn struct_from_proto(s: prost_types::Struct) -> Map<String, Value> {
    s.fields
        .into_iter()
        .map(|(k, v)| (k, value_from_proto(v)))
        .collect()
}

pub(super) fn value_from_proto(value: prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => number_from_f64(n),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.into_iter().map(value_from_proto).collect())
        }
        Some(Kind::StructValue(s)) => Value::Object(struct_from_proto(s)),
    }
}

fn number_from_f64(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
        // Exact: an integral double of at most 2^53 is an i64 (and -0 is 0).
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

impl FlagEvaluation {
    pub(super) fn from_proto(e: pb::FlagEvaluation) -> Self {
        FlagEvaluation {
            key: e.key,
            value: e.value.map_or(Value::Null, value_from_proto),
            variant: Some(e.variant).filter(|v| !v.is_empty()),
            reason: e.reason,
            error_code: Some(e.error_code).filter(|c| !c.is_empty()),
            error_details: Some(e.error_details).filter(|d| !d.is_empty()),
            metadata: e.metadata.map(struct_from_proto).unwrap_or_default(),
        }
    }
}

impl Flag {
    pub(super) fn from_proto(f: pb::Flag) -> Self {
        Flag {
            key: f.key,
            definition: f.definition,
            revision: f.revision,
            author: f.author,
            updated_at: f
                .updated_at
                .and_then(|t| std::time::SystemTime::try_from(t).ok()),
            killed_variant: Some(f.killed_variant).filter(|v| !v.is_empty()),
        }
    }
}
