//! The writer: a [`Value`] in its RFC 8785 canonical form.

use std::cmp::Ordering;
use std::fmt::Write as _;

use super::Value;

pub(super) fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(*n, out),
        Value::String(units) => write_string(units, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<&(Vec<u16>, Value)> = members.iter().collect();
            // RFC 8785 §3.2.3: by UTF-16 code units, which is how Vec<u16> compares.
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

fn write_number(n: f64, out: &mut String) {
    // ECMAScript prints -0 as 0; do not depend on the formatter for it.
    if n.partial_cmp(&0.0) == Some(Ordering::Equal) {
        out.push('0');
        return;
    }
    let mut buffer = ryu_js::Buffer::new();
    out.push_str(buffer.format_finite(n));
}

fn write_string(units: &[u16], out: &mut String) {
    out.push('"');
    // Lone surrogates were rejected before serialization; the replacement
    // character can't appear here.
    for ch in char::decode_utf16(units.iter().copied()) {
        match ch.unwrap_or(char::REPLACEMENT_CHARACTER) {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
