//! Canonical JSON (RFC 8785, JCS) and idempotency request fingerprints
//! (DESIGN §4).
//!
//! An idempotency key is bound to a fingerprint of its request: the SHA-256 of
//! the request's RFC 8785 canonical form when it is JSON, or of its raw bytes
//! when it is binary. The Python agent, the Go SDK and this crate must produce
//! the same bytes; the shared vectors in `testdata/` pin the rules down:
//!
//! - the input is one UTF-8 JSON value, at most [`MAX_DOCUMENT_BYTES`] long,
//!   at most [`MAX_DEPTH`] arrays/objects deep, without a byte order mark;
//! - object keys are unique and strings are valid Unicode (no lone surrogate
//!   escapes), as I-JSON (RFC 7493) requires;
//! - every number is an IEEE 754 double: `1.0` is `1`, `-0` is `0`, an integer
//!   past 2^53 rounds to the nearest double, and a number that overflows a
//!   double (`1e400`) is an error; `NaN` and `Infinity` are not JSON;
//! - the output sorts keys by UTF-16 code units, prints numbers as ECMAScript
//!   does, and escapes only `"`, `\` and U+0000..U+001F.
//!
//! ```
//! use meridian::canonical::{canonicalize, fingerprint, PayloadKind};
//!
//! let text = canonicalize(br#"{ "qty": 2.0, "sku": "A-1" }"#).unwrap();
//! assert_eq!(text, br#"{"qty":2,"sku":"A-1"}"#);
//! let same = fingerprint(br#"{"sku":"A-1","qty":2}"#, PayloadKind::Json).unwrap();
//! assert_eq!(same, fingerprint(br#"{ "qty": 2.0, "sku": "A-1" }"#, PayloadKind::Json).unwrap());
//! ```
//!
//! # Why a parser of our own
//!
//! `serde_json` is the obvious parser, but it does not enforce these rules: it
//! keeps the last of two equal keys without a word, parses integers as exact
//! `u64`/`i64` (so `9007199254740993` would not round like a double, and
//! integers past `u64` take a less exact path unless a crate-wide feature is
//! switched on), and its errors can't be told apart without matching their
//! text. The grammar is small (RFC 8259), so this module parses it by hand with
//! an explicit stack (no recursion, whatever the input) and reports each broken
//! rule with the phrase the shared vectors expect. Decimal-to-double rounding
//! is Rust's own correctly rounded `str::parse::<f64>`, and ECMAScript number
//! printing is `ryu-js`.
//!
//! Which error wins when a document breaks several rules is the same as in
//! the Python implementation: a syntax, duplicate-key, number or NaN error is
//! reported where the parser meets it (duplicates when their object closes);
//! the depth and lone-surrogate rules are checked once the whole text parsed,
//! and the first violation in document order is reported.

use std::cmp::Ordering;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// Largest JSON document accepted, in bytes (1 MiB, the agent's value limit).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 128;

/// How a payload is fingerprinted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// JSON text: hashed in its canonical form, so equal JSON gives equal
    /// fingerprints whatever its spacing, key order or number spelling.
    Json,
    /// Opaque bytes: hashed as they are.
    Binary,
}

/// Which rule a rejected document broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// Not JSON text: a syntax error, trailing data, an empty input.
    NotJson,
    /// `NaN`, `Infinity` or `-Infinity`.
    NanOrInfinity,
    /// A number too large for an IEEE 754 double.
    NotADouble,
    /// The same key twice in one object.
    DuplicateKey,
    /// A `\uD800`-style escape without its other half.
    LoneSurrogate,
    /// The bytes are not UTF-8.
    NotUtf8,
    /// The text starts with U+FEFF.
    ByteOrderMark,
    /// More than [`MAX_DEPTH`] arrays/objects deep.
    TooDeep,
    /// More than [`MAX_DOCUMENT_BYTES`] bytes.
    TooLarge,
}

/// A payload that has no canonical form. The message names the field
/// (`payload`) and the rule, in the same words as the agent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("payload: {message}")]
pub struct CanonicalError {
    rule: Rule,
    message: String,
}

impl CanonicalError {
    fn new(rule: Rule, message: impl Into<String>) -> Self {
        Self {
            rule,
            message: message.into(),
        }
    }

    /// The broken rule.
    pub fn rule(&self) -> Rule {
        self.rule
    }
}

/// The RFC 8785 canonical form of the JSON text `data`.
///
/// # Errors
/// [`CanonicalError`] if `data` breaks any rule in the [module docs](self).
/// Never panics, whatever the input.
pub fn canonicalize(data: &[u8]) -> Result<Vec<u8>, CanonicalError> {
    let value = parse(data)?;
    let mut out = String::with_capacity(data.len());
    write_value(&value, &mut out);
    Ok(out.into_bytes())
}

/// SHA-256 of the canonical JSON of `payload` ([`PayloadKind::Json`]) or of
/// its raw bytes ([`PayloadKind::Binary`]), as 64 lowercase hex digits.
///
/// # Errors
/// [`CanonicalError`] if `kind` is `Json` and `payload` has no canonical form.
pub fn fingerprint(payload: &[u8], kind: PayloadKind) -> Result<String, CanonicalError> {
    let digest = match kind {
        PayloadKind::Json => Sha256::digest(canonicalize(payload)?),
        PayloadKind::Binary => Sha256::digest(payload),
    };
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

/// A parsed JSON value. Strings are kept as UTF-16 code units: that is the
/// order RFC 8785 sorts keys in, and it can hold a lone surrogate until the
/// check that rejects it.
enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(Vec<u16>),
    Array(Vec<Value>),
    Object(Vec<(Vec<u16>, Value)>),
}

/// An array or object still open, innermost last.
enum Frame {
    Array(Vec<Value>),
    Object {
        members: Vec<(Vec<u16>, Value)>,
        key: Vec<u16>,
    },
}

fn not_json(what: impl std::fmt::Display, at: usize) -> CanonicalError {
    CanonicalError::new(
        Rule::NotJson,
        format!("is not valid JSON: {what} at byte {at}"),
    )
}

fn too_deep() -> CanonicalError {
    CanonicalError::new(
        Rule::TooDeep,
        format!("JSON must be nested at most {MAX_DEPTH} deep"),
    )
}

fn lone_surrogate() -> CanonicalError {
    CanonicalError::new(
        Rule::LoneSurrogate,
        "strings must be valid Unicode (I-JSON): no lone surrogates",
    )
}

fn parse(data: &[u8]) -> Result<Value, CanonicalError> {
    if data.len() > MAX_DOCUMENT_BYTES {
        return Err(CanonicalError::new(
            Rule::TooLarge,
            format!(
                "must be at most {MAX_DOCUMENT_BYTES} bytes, got {}",
                data.len()
            ),
        ));
    }
    let text = std::str::from_utf8(data)
        .map_err(|_| CanonicalError::new(Rule::NotUtf8, "must be UTF-8 text"))?;
    if text.starts_with('\u{feff}') {
        return Err(CanonicalError::new(
            Rule::ByteOrderMark,
            "must not start with a byte order mark",
        ));
    }
    let mut parser = Parser {
        text,
        bytes: data,
        pos: 0,
        deferred: None,
    };
    let value = parser.document()?;
    match parser.deferred {
        Some(error) => Err(error),
        None => Ok(value),
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// The first depth or lone-surrogate violation in document order; reported
    /// only if the text parses (see the module docs).
    deferred: Option<CanonicalError>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn defer(&mut self, error: CanonicalError) {
        if self.deferred.is_none() {
            self.deferred = Some(error);
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), CanonicalError> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(not_json(format!("expected {what}"), self.pos))
        }
    }

    /// A string, then `:`, as at the start of an object member.
    fn member_key(&mut self) -> Result<Vec<u16>, CanonicalError> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return Err(not_json("expected a string key", self.pos));
        }
        let key = self.string()?;
        self.expect(b':', "':'")?;
        Ok(key)
    }

    fn document(&mut self) -> Result<Value, CanonicalError> {
        let mut stack: Vec<Frame> = Vec::new();
        loop {
            self.skip_ws();
            let start = self.pos;
            let mut value = match self.peek() {
                Some(open @ (b'[' | b'{')) => {
                    self.pos += 1;
                    if stack.len() >= MAX_DEPTH {
                        self.defer(too_deep());
                    }
                    self.skip_ws();
                    if open == b'[' {
                        if self.peek() == Some(b']') {
                            self.pos += 1;
                            Value::Array(Vec::new())
                        } else {
                            stack.push(Frame::Array(Vec::new()));
                            continue;
                        }
                    } else if self.peek() == Some(b'}') {
                        self.pos += 1;
                        Value::Object(Vec::new())
                    } else {
                        let key = self.member_key()?;
                        stack.push(Frame::Object {
                            members: Vec::new(),
                            key,
                        });
                        continue;
                    }
                }
                Some(b'"') => Value::String(self.string()?),
                Some(b't') => self.literal("true", Value::Bool(true))?,
                Some(b'f') => self.literal("false", Value::Bool(false))?,
                Some(b'n') => self.literal("null", Value::Null)?,
                Some(b'-' | b'0'..=b'9' | b'N' | b'I') => self.number()?,
                Some(_) => return Err(not_json("expected a value", start)),
                None => return Err(not_json("expected a value", start)),
            };
            // Fold the finished value into the open containers, closing those
            // that end here, until one wants another element.
            loop {
                let depth = stack.len();
                match stack.last_mut() {
                    None => {
                        self.skip_ws();
                        if self.pos != self.bytes.len() {
                            return Err(not_json("extra data after the value", self.pos));
                        }
                        return Ok(value);
                    }
                    Some(Frame::Array(items)) => {
                        items.push(value);
                        self.skip_ws();
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                break;
                            }
                            Some(b']') => {
                                self.pos += 1;
                                let Some(Frame::Array(items)) = stack.pop() else {
                                    unreachable!("the top frame is an array")
                                };
                                value = close(Value::Array(items), depth);
                            }
                            _ => return Err(not_json("expected ',' or ']'", self.pos)),
                        }
                    }
                    Some(Frame::Object { members, key }) => {
                        members.push((std::mem::take(key), value));
                        self.skip_ws();
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                *key = self.member_key()?;
                                break;
                            }
                            Some(b'}') => {
                                self.pos += 1;
                                let Some(Frame::Object { members, .. }) = stack.pop() else {
                                    unreachable!("the top frame is an object")
                                };
                                check_unique(&members)?;
                                value = close(Value::Object(members), depth);
                            }
                            _ => return Err(not_json("expected ',' or '}'", self.pos)),
                        }
                    }
                }
            }
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, CanonicalError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(not_json("expected a value", self.pos))
        }
    }

    fn number(&mut self) -> Result<Value, CanonicalError> {
        let start = self.pos;
        let rest = &self.bytes[start..];
        for constant in ["NaN", "Infinity", "-Infinity"] {
            if rest.starts_with(constant.as_bytes()) {
                return Err(CanonicalError::new(
                    Rule::NanOrInfinity,
                    format!("NaN and Infinity are not JSON, got {constant}"),
                ));
            }
        }
        // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(not_json("expected a value", start)),
        }
        if self.peek() == Some(b'.') && self.bytes.get(self.pos + 1).is_some_and(u8::is_ascii_digit)
        {
            self.pos += 1;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            let mut end = self.pos + 1;
            if let Some(b'+' | b'-') = self.bytes.get(end) {
                end += 1;
            }
            if self.bytes.get(end).is_some_and(u8::is_ascii_digit) {
                self.pos = end;
                self.digits();
            }
        }
        let text = &self.text[start..self.pos];
        // Rust's float parsing is correctly rounded for any length of input.
        let value: f64 = text.parse().map_err(|_| not_json("bad number", start))?;
        if value.is_infinite() {
            let shown: String = text.chars().take(32).collect();
            return Err(CanonicalError::new(
                Rule::NotADouble,
                format!("numbers must fit an IEEE 754 double, got {shown}"),
            ));
        }
        Ok(Value::Number(value))
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// A string starting at the opening quote, as UTF-16 code units.
    fn string(&mut self) -> Result<Vec<u16>, CanonicalError> {
        let start = self.pos;
        self.pos += 1;
        let mut units = Vec::new();
        loop {
            let Some(byte) = self.peek() else {
                return Err(not_json("unterminated string", start));
            };
            match byte {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    let escape = self.bytes.get(self.pos + 1).copied();
                    self.pos += 2;
                    let unit = match escape {
                        Some(b'"') => 0x22,
                        Some(b'\\') => 0x5c,
                        Some(b'/') => 0x2f,
                        Some(b'b') => 0x08,
                        Some(b'f') => 0x0c,
                        Some(b'n') => 0x0a,
                        Some(b'r') => 0x0d,
                        Some(b't') => 0x09,
                        Some(b'u') => self.hex4()?,
                        _ => return Err(not_json("invalid escape", self.pos - 2)),
                    };
                    units.push(unit);
                }
                0x00..=0x1f => return Err(not_json("unescaped control character", self.pos)),
                0x20..=0x7f => {
                    units.push(u16::from(byte));
                    self.pos += 1;
                }
                _ => {
                    // The input is valid UTF-8, so a whole character starts here.
                    let ch = self.text[self.pos..]
                        .chars()
                        .next()
                        .ok_or_else(|| not_json("truncated character", self.pos))?;
                    let mut buf = [0u16; 2];
                    units.extend_from_slice(ch.encode_utf16(&mut buf));
                    self.pos += ch.len_utf8();
                }
            }
        }
        if char::decode_utf16(units.iter().copied()).any(|c| c.is_err()) {
            self.defer(lone_surrogate());
        }
        Ok(units)
    }

    fn hex4(&mut self) -> Result<u16, CanonicalError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .filter(|d| d.iter().all(u8::is_ascii_hexdigit))
            .ok_or_else(|| not_json("invalid \\uXXXX escape", self.pos - 2))?;
        let mut unit = 0u16;
        for &d in digits {
            // Hex digits were checked above, so to_digit cannot fail.
            let nibble = char::from(d).to_digit(16).unwrap_or(0);
            unit = (unit << 4) | nibble as u16;
        }
        self.pos += 4;
        Ok(unit)
    }
}

/// A container closed at `depth` (its own nesting level, 1 for the top one).
/// Past [`MAX_DEPTH`] its contents are dropped: the document is already
/// rejected, and a value that deep would overflow the stack when dropped.
fn close(value: Value, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        Value::Null
    } else {
        value
    }
}

fn check_unique(members: &[(Vec<u16>, Value)]) -> Result<(), CanonicalError> {
    let mut keys: Vec<(&[u16], usize)> = members
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.as_slice(), i))
        .collect();
    keys.sort_unstable();
    // The first repeated key in document order, as the agent reports it.
    let first_repeat = keys
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[1].1)
        .min();
    if let Some(index) = first_repeat {
        let key = String::from_utf16_lossy(&members[index].0);
        let shown = if key.chars().count() <= 40 {
            key
        } else {
            key.chars().take(37).collect::<String>() + "..."
        };
        return Err(CanonicalError::new(
            Rule::DuplicateKey,
            format!("object keys must be unique (I-JSON), {shown:?} appears twice"),
        ));
    }
    Ok(())
}

fn write_value(value: &Value, out: &mut String) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> Result<String, Rule> {
        canonicalize(text.as_bytes())
            .map(|b| String::from_utf8(b).unwrap())
            .map_err(|e| e.rule())
    }

    #[test]
    fn a_deep_document_is_rejected_without_overflowing_the_stack() {
        let deep = "[".repeat(200_000) + &"]".repeat(200_000);
        assert_eq!(canon(&deep), Err(Rule::TooDeep));
        let open = "{\"a\":".repeat(100_000);
        assert_eq!(canon(&open), Err(Rule::NotJson));
    }

    #[test]
    fn a_syntax_error_wins_over_a_deferred_rule() {
        assert_eq!(canon(r#"["\ud800",]"#), Err(Rule::NotJson));
        assert_eq!(canon(r#"["\ud800", 1e999]"#), Err(Rule::NotADouble));
    }

    #[test]
    fn the_first_deferred_violation_in_document_order_wins() {
        let deep = "[".repeat(130) + &"]".repeat(130);
        assert_eq!(
            canon(&format!(r#"["\udc00",{deep}]"#)),
            Err(Rule::LoneSurrogate)
        );
        assert_eq!(canon(&format!(r#"[{deep},"\udc00"]"#)), Err(Rule::TooDeep));
    }

    #[test]
    fn distinct_lone_surrogates_are_distinct_keys() {
        assert_eq!(
            canon(r#"{"\ud800":1,"\ud801":2}"#),
            Err(Rule::LoneSurrogate)
        );
    }

    #[test]
    fn a_too_large_document_is_rejected() {
        let big = format!("\"{}\"", "a".repeat(MAX_DOCUMENT_BYTES));
        assert_eq!(canon(&big), Err(Rule::TooLarge));
    }

    #[test]
    fn a_tiny_number_rounds_to_zero() {
        assert_eq!(canon("1e-400").as_deref(), Ok("0"));
        assert_eq!(canon("-1e-400").as_deref(), Ok("0"));
    }
}
