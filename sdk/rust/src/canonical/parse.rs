//! The parser: JSON text to a [`Value`], enforcing the rules of the module
//! docs with an explicit stack (no recursion, whatever the input).

use super::{CanonicalError, MAX_DEPTH, MAX_DOCUMENT_BYTES, Rule, Value};

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

pub(super) fn parse(data: &[u8]) -> Result<Value, CanonicalError> {
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
