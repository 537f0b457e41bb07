// Package hlc reads and writes Meridian's hybrid logical clock timestamps.
//
// A timestamp packs 48 bits of wall-clock milliseconds and a 16-bit logical
// counter into one unsigned 64-bit integer (wall<<16 | logical), so comparing
// the integers, or their fixed-width hex encodings, compares the timestamps.
// This is the value of Entry.hlc and WriteResponse.hlc in the State API.
//
// The encoding is the one in testdata/hlc.json, shared with the agent
// (Python) and the Rust SDK: exactly 16 lowercase hex digits.
package hlc

import (
	"fmt"
	"strconv"
	"time"
)

const (
	// WallBits is the width of the wall-clock part, in bits.
	WallBits = 48
	// LogicalBits is the width of the logical counter, in bits.
	LogicalBits = 16
	// MaxWallMs is the largest wall-clock part, 2^48-1 milliseconds.
	MaxWallMs = 1<<WallBits - 1
	// MaxLogical is the largest logical counter, 2^16-1.
	MaxLogical = 1<<LogicalBits - 1
)

// Timestamp is one HLC reading. The zero value is the timestamp 0.
//
// Timestamps compare with Compare, or by comparing Int() values.
type Timestamp struct {
	// WallMs is milliseconds since the Unix epoch, 0..MaxWallMs.
	WallMs uint64
	// Logical orders events within one millisecond.
	Logical uint16
}

// New returns the timestamp (wallMs, logical). It fails if wallMs does not
// fit 48 bits.
func New(wallMs uint64, logical uint16) (Timestamp, error) {
	if wallMs > MaxWallMs {
		return Timestamp{}, fmt.Errorf("hlc: wall_ms must be an integer in 0..%d (48 bits), got %d", uint64(MaxWallMs), wallMs)
	}
	return Timestamp{WallMs: wallMs, Logical: logical}, nil
}

// FromInt is the inverse of Int. Every uint64 is a valid timestamp.
func FromInt(v uint64) Timestamp {
	return Timestamp{WallMs: v >> LogicalBits, Logical: uint16(v & MaxLogical)}
}

// Int is the 64-bit value wall<<16 | logical, as carried in the API.
// A WallMs past 48 bits is truncated; use New to build checked timestamps.
func (t Timestamp) Int() uint64 {
	return (t.WallMs&MaxWallMs)<<LogicalBits | uint64(t.Logical)
}

// Encode returns exactly 16 lowercase hex digits of Int, zero-padded, so
// string order is time order.
func (t Timestamp) Encode() string {
	return fmt.Sprintf("%016x", t.Int())
}

// Decode is the inverse of Encode. Only the canonical form is accepted
// (exactly 16 lowercase hex digits), so every timestamp has one encoding;
// anything else is an error saying so.
func Decode(text string) (Timestamp, error) {
	if !canonicalHex(text) {
		shown := strconv.Quote(text)
		if len(shown) > 40 {
			shown = shown[:37] + "..."
		}
		return Timestamp{}, fmt.Errorf("hlc: must be exactly 16 lowercase hex digits, got %s", shown)
	}
	v, err := strconv.ParseUint(text, 16, 64)
	if err != nil { // unreachable: 16 hex digits always fit
		return Timestamp{}, fmt.Errorf("hlc: %w", err)
	}
	return FromInt(v), nil
}

func canonicalHex(s string) bool {
	if len(s) != 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Compare returns -1, 0 or +1 as t is before, equal to or after u.
func (t Timestamp) Compare(u Timestamp) int {
	a, b := t.Int(), u.Int()
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Time is the wall-clock part as a time.Time (the logical counter is dropped).
func (t Timestamp) Time() time.Time {
	return time.UnixMilli(int64(t.WallMs & MaxWallMs))
}

// String formats the timestamp as "wall_ms.logical", as the agent's logs do.
func (t Timestamp) String() string {
	return fmt.Sprintf("%d.%d", t.WallMs, t.Logical)
}
