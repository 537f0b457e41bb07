// Package canonical computes RFC 8785 (JCS) canonical JSON and Meridian's
// idempotency request fingerprints (DESIGN §4).
//
// An idempotency key is bound to a fingerprint of its request: the SHA-256 of
// the request's canonical JSON, or of its raw bytes when it is binary. The
// agent (Python), this SDK and the Rust SDK must produce the same bytes, so
// the rules are pinned down by the shared vectors in testdata/ at the root of
// the repository:
//
//   - the input is one UTF-8 JSON value, at most MaxDocumentBytes long and
//     at most MaxDepth arrays/objects deep, with no byte order mark;
//   - object keys are unique and strings are valid Unicode (no lone surrogate
//     escapes), as I-JSON (RFC 7493) requires;
//   - every number is an IEEE 754 double: 1.0 is 1, -0 is 0, integers past
//     2^53 round to the nearest double, and a number too large for a double
//     (1e400) is an error; NaN and Infinity are not JSON.
//
// Every rejection is an *Error whose message contains the broken rule.
package canonical

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

const (
	// MaxDocumentBytes is the largest JSON document Canonicalize accepts
	// (the agent's value limit).
	MaxDocumentBytes = 1 << 20
	// MaxDepth is the deepest nesting of arrays and objects Canonicalize accepts.
	MaxDepth = 128
)

// Error reports input that is not I-JSON text within the limits above.
// Its message names the rule, with one of the phrases of testdata/README.md:
// "not valid JSON", "NaN and Infinity", "IEEE 754 double", "unique",
// "lone surrogates", "UTF-8", "byte order mark", "nested at most", or the
// size limit.
type Error struct {
	// Rule is the rule broken, e.g. "must not start with a byte order mark".
	Rule string
	// Offset is the byte offset in the input where it was found.
	Offset int
}

func (e *Error) Error() string {
	return fmt.Sprintf("canonical: payload: %s (at byte %d)", e.Rule, e.Offset)
}

// Kind says how a payload is fingerprinted.
type Kind string

const (
	// JSON payloads are fingerprinted by their canonical form, so
	// {"a":1.0, "b":2} and {"b":2,"a":1} have the same fingerprint.
	JSON Kind = "json"
	// Binary payloads are fingerprinted byte for byte.
	Binary Kind = "binary"
)

// Canonicalize returns the RFC 8785 canonical form of the JSON text data.
//
// It is a fixed point: Canonicalize(Canonicalize(x)) equals Canonicalize(x).
// Input breaking a rule of the package documentation yields an *Error and no
// output.
func Canonicalize(data []byte) ([]byte, error) {
	if err := Validate(data); err != nil {
		return nil, err
	}
	// Serialization (UTF-16 key order, ECMAScript number printing, the
	// minimal escapes) is gowebpki/jcs's. It parses again, and strictly, so
	// if it ever refuses what Validate accepted, that is reported, not hidden.
	out, err := jcs.Transform(data)
	if err != nil {
		return nil, fmt.Errorf("canonical: RFC 8785 serializer refused input that passed validation: %w", err)
	}
	return out, nil
}

// Fingerprint is the SHA-256 of the canonical JSON of payload (kind JSON) or
// of payload itself (kind Binary), as 64 lowercase hex digits. It is what
// the agent binds an idempotency key to.
func Fingerprint(payload []byte, kind Kind) (string, error) {
	var body []byte
	switch kind {
	case JSON:
		c, err := Canonicalize(payload)
		if err != nil {
			return "", err
		}
		body = c
	case Binary:
		body = payload
	default:
		return "", fmt.Errorf("canonical: unknown payload kind %q; use %q or %q", kind, JSON, Binary)
	}
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:]), nil
}

// Validate checks that data is I-JSON text within the limits, without
// producing output. Canonicalize calls it first.
//
// It is written by hand because no Go parser enforces these rules with
// these messages: encoding/json silently accepts duplicate keys and replaces
// lone surrogates and invalid UTF-8 with U+FFFD, and gowebpki/jcs allows
// nesting 10,000 deep and a byte order mark. The error a document gets must
// name the same rule in every language.
func Validate(data []byte) error {
	if len(data) > MaxDocumentBytes {
		return &Error{Rule: fmt.Sprintf("must be at most %d bytes, got %d", MaxDocumentBytes, len(data)), Offset: MaxDocumentBytes}
	}
	if !utf8.Valid(data) {
		return &Error{Rule: "must be UTF-8 text", Offset: firstInvalidUTF8(data)}
	}
	if bytes.HasPrefix(data, []byte("\uFEFF")) {
		return &Error{Rule: "must not start with a byte order mark"}
	}
	v := validator{data: data, loneSurrogate: -1}
	v.space()
	if err := v.value(); err != nil {
		return err
	}
	v.space()
	if v.pos != len(v.data) {
		return v.invalid("extra data after the value")
	}
	// Reported last, as the Python reference checks strings after parsing,
	// so a document breaking two rules gets the same message everywhere.
	if v.loneSurrogate >= 0 {
		return &Error{Rule: "strings must be valid Unicode (I-JSON): no lone surrogates", Offset: v.loneSurrogate}
	}
	return nil
}

func firstInvalidUTF8(data []byte) int {
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(data)
}

// validator is a recursive-descent check of RFC 8259 grammar plus the I-JSON
// rules. Recursion is bounded by MaxDepth.
type validator struct {
	data          []byte
	pos           int
	depth         int
	loneSurrogate int // offset of the first lone surrogate escape, or -1
}

func (v *validator) invalid(what string) error {
	return &Error{Rule: "is not valid JSON: " + what, Offset: v.pos}
}

func (v *validator) space() {
	for v.pos < len(v.data) {
		switch v.data[v.pos] {
		case ' ', '\t', '\n', '\r':
			v.pos++
		default:
			return
		}
	}
}

func (v *validator) value() error {
	if v.pos >= len(v.data) {
		return v.invalid("expecting a value")
	}
	rest := v.data[v.pos:]
	switch c := rest[0]; {
	case c == '{':
		return v.object()
	case c == '[':
		return v.array()
	case c == '"':
		_, err := v.str(false)
		return err
	case c == '-' || ('0' <= c && c <= '9'):
		return v.number()
	}
	for _, lit := range [...]string{"true", "false", "null"} {
		if bytes.HasPrefix(rest, []byte(lit)) {
			v.pos += len(lit)
			return nil
		}
	}
	for _, lit := range [...]string{"NaN", "Infinity"} {
		if bytes.HasPrefix(rest, []byte(lit)) {
			return &Error{Rule: "NaN and Infinity are not JSON, got " + lit, Offset: v.pos}
		}
	}
	return v.invalid("expecting a value")
}

func (v *validator) enter() error {
	v.depth++
	if v.depth > MaxDepth {
		return &Error{Rule: fmt.Sprintf("JSON must be nested at most %d deep", MaxDepth), Offset: v.pos}
	}
	return nil
}

func (v *validator) array() error {
	if err := v.enter(); err != nil {
		return err
	}
	v.pos++ // '['
	v.space()
	if v.pos < len(v.data) && v.data[v.pos] == ']' {
		v.pos++
		v.depth--
		return nil
	}
	for {
		v.space()
		if err := v.value(); err != nil {
			return err
		}
		v.space()
		if v.pos >= len(v.data) {
			return v.invalid("unterminated array")
		}
		switch v.data[v.pos] {
		case ',':
			v.pos++
		case ']':
			v.pos++
			v.depth--
			return nil
		default:
			return v.invalid("expecting ',' or ']'")
		}
	}
}

func (v *validator) object() error {
	if err := v.enter(); err != nil {
		return err
	}
	v.pos++ // '{'
	v.space()
	if v.pos < len(v.data) && v.data[v.pos] == '}' {
		v.pos++
		v.depth--
		return nil
	}
	seen := make(map[string]struct{})
	for {
		v.space()
		if v.pos >= len(v.data) || v.data[v.pos] != '"' {
			return v.invalid("expecting a property name in double quotes")
		}
		at := v.pos
		key, err := v.str(true)
		if err != nil {
			return err
		}
		if _, dup := seen[key]; dup {
			shown := key
			if len(shown) > 40 {
				shown = shown[:37] + "..."
			}
			return &Error{Rule: fmt.Sprintf("object keys must be unique (I-JSON), %q appears twice", shown), Offset: at}
		}
		seen[key] = struct{}{}
		v.space()
		if v.pos >= len(v.data) || v.data[v.pos] != ':' {
			return v.invalid("expecting ':'")
		}
		v.pos++
		v.space()
		if err := v.value(); err != nil {
			return err
		}
		v.space()
		if v.pos >= len(v.data) {
			return v.invalid("unterminated object")
		}
		switch v.data[v.pos] {
		case ',':
			v.pos++
		case '}':
			v.pos++
			v.depth--
			return nil
		default:
			return v.invalid("expecting ',' or '}'")
		}
	}
}

// str checks the string starting at v.pos (a '"') and, when decode is set,
// returns its decoded value. A lone surrogate escape is remembered (and
// decoded as its WTF-8 bytes, so that it can't collide with another key).
func (v *validator) str(decode bool) (string, error) {
	v.pos++ // opening quote
	var out []byte
	start := v.pos
	for {
		if v.pos >= len(v.data) {
			return "", v.invalid("unterminated string")
		}
		c := v.data[v.pos]
		switch {
		case c == '"':
			if decode {
				out = append(out, v.data[start:v.pos]...)
			}
			v.pos++
			return string(out), nil
		case c < 0x20:
			return "", v.invalid("unescaped control character in a string")
		case c != '\\':
			v.pos++
			continue
		}
		if decode {
			out = append(out, v.data[start:v.pos]...)
		}
		escAt := v.pos
		if v.pos+1 >= len(v.data) {
			return "", v.invalid("unterminated string")
		}
		e := v.data[v.pos+1]
		v.pos += 2
		switch e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := v.hex4()
			if !ok {
				v.pos = escAt
				return "", v.invalid("invalid \\u escape")
			}
			switch {
			case utf16.IsSurrogate(r) && r < 0xDC00:
				// A high surrogate: a pair only if a low one follows.
				if low, ok := v.lowSurrogateEscape(); ok {
					out = utf8.AppendRune(out, utf16.DecodeRune(r, low))
					break
				}
				out = v.lone(out, r, escAt)
			case utf16.IsSurrogate(r):
				out = v.lone(out, r, escAt)
			default:
				out = utf8.AppendRune(out, r)
			}
		default:
			v.pos = escAt
			return "", v.invalid("invalid escape")
		}
		start = v.pos
	}
}

func (v *validator) hex4() (rune, bool) {
	if v.pos+4 > len(v.data) {
		return 0, false
	}
	var r rune
	for _, c := range v.data[v.pos : v.pos+4] {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(d)
	}
	v.pos += 4
	return r, true
}

// lowSurrogateEscape consumes a following \uDC00..\uDFFF escape, if there is one.
func (v *validator) lowSurrogateEscape() (rune, bool) {
	save := v.pos
	if v.pos+2 <= len(v.data) && v.data[v.pos] == '\\' && v.data[v.pos+1] == 'u' {
		v.pos += 2
		if r, ok := v.hex4(); ok && 0xDC00 <= r && r <= 0xDFFF {
			return r, true
		}
	}
	v.pos = save
	return 0, false
}

func (v *validator) lone(out []byte, r rune, at int) []byte {
	if v.loneSurrogate < 0 {
		v.loneSurrogate = at
	}
	return append(out, 0xED, 0xA0|byte(r>>6)&0x1F, 0x80|byte(r)&0x3F)
}

// number checks RFC 8259's grammar
//
//	[ "-" ] ( "0" / digit1-9 *DIGIT ) [ "." 1*DIGIT ] [ ("e"/"E") ["-"/"+"] 1*DIGIT ]
//
// and that the value fits a double. What may follow it is the caller's check.
func (v *validator) number() error {
	start := v.pos
	if v.data[v.pos] == '-' {
		v.pos++
		if bytes.HasPrefix(v.data[v.pos:], []byte("Infinity")) {
			return &Error{Rule: "NaN and Infinity are not JSON, got -Infinity", Offset: start}
		}
	}
	switch {
	case v.pos < len(v.data) && v.data[v.pos] == '0':
		v.pos++
	case v.digits() == 0:
		return v.invalid("expecting a digit")
	}
	if v.pos < len(v.data) && v.data[v.pos] == '.' {
		v.pos++
		if v.digits() == 0 {
			return v.invalid("expecting a digit after '.'")
		}
	}
	if v.pos < len(v.data) && (v.data[v.pos] == 'e' || v.data[v.pos] == 'E') {
		v.pos++
		if v.pos < len(v.data) && (v.data[v.pos] == '+' || v.data[v.pos] == '-') {
			v.pos++
		}
		if v.digits() == 0 {
			return v.invalid("expecting a digit in the exponent")
		}
	}
	text := string(v.data[start:v.pos])
	// ParseFloat rounds to nearest; an underflow is 0 (as in every JSON
	// parser that reads doubles), an overflow is ±Inf.
	f, err := strconv.ParseFloat(text, 64)
	if math.IsInf(f, 0) {
		shown := text
		if len(shown) > 32 {
			shown = shown[:32]
		}
		return &Error{Rule: "numbers must fit an IEEE 754 double, got " + shown, Offset: start}
	}
	if err != nil {
		return &Error{Rule: "is not valid JSON: bad number " + strconv.Quote(text), Offset: start}
	}
	return nil
}

func (v *validator) digits() int {
	n := 0
	for v.pos < len(v.data) && '0' <= v.data[v.pos] && v.data[v.pos] <= '9' {
		v.pos++
		n++
	}
	return n
}
