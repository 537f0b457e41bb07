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

mod parse;
mod write;

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use self::parse::parse;
use self::write::write_value;

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

#[cfg(test)]
mod tests;
