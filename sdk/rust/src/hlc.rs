//! Hybrid logical clock timestamps (DESIGN §3).
//!
//! A timestamp is 64 bits: 48 bits of wall-clock milliseconds, then 16 bits of
//! logical counter. Every [`Entry`](crate::Entry) and write result carries the
//! HLC of its write. Timestamps order the same way as their `u64` form and as
//! their [encoded](Timestamp::encode) text, which is exactly 16 lowercase hex
//! digits; the shared vectors in `testdata/hlc.json` pin both forms down.

use std::fmt;
use std::str::FromStr;

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;
/// Largest wall-clock part: 2^48 - 1 milliseconds.
pub const MAX_WALL_MS: u64 = (1 << 48) - 1;

/// One HLC reading.
///
/// Ordering is by `(wall_ms, logical)`, the same as by [`Timestamp::to_u64`]
/// and by [`Timestamp::encode`]. Every `u64` is a valid timestamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    wall_ms: u64,
    logical: u16,
}

/// A text that is not an encoded timestamp, or a wall clock that does not fit
/// 48 bits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("hlc: {rule}")]
pub struct HlcError {
    rule: String,
}

impl HlcError {
    /// The broken rule, e.g. `must be exactly 16 lowercase hex digits, got "0x1"`.
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

impl Timestamp {
    /// The timestamp `(wall_ms, logical)`.
    ///
    /// # Errors
    /// [`HlcError`] if `wall_ms` is above [`MAX_WALL_MS`].
    pub fn new(wall_ms: u64, logical: u16) -> Result<Self, HlcError> {
        if wall_ms > MAX_WALL_MS {
            return Err(HlcError {
                rule: format!("wall_ms must fit 48 bits, got {wall_ms}"),
            });
        }
        Ok(Self { wall_ms, logical })
    }

    /// Milliseconds since the Unix epoch (48 bits).
    pub fn wall_ms(self) -> u64 {
        self.wall_ms
    }

    /// The logical counter that orders events within one millisecond.
    pub fn logical(self) -> u16 {
        self.logical
    }

    /// The 64-bit form `wall_ms << 16 | logical`, as the wire carries it.
    pub fn to_u64(self) -> u64 {
        (self.wall_ms << LOGICAL_BITS) | u64::from(self.logical)
    }

    /// Inverse of [`Timestamp::to_u64`]; every `u64` is a timestamp.
    pub fn from_u64(value: u64) -> Self {
        Self {
            wall_ms: value >> LOGICAL_BITS,
            // The low 16 bits, exactly: truncation is the point.
            logical: (value & 0xffff) as u16,
        }
    }

    /// Exactly 16 lowercase hex digits, zero-padded, so that string order is
    /// time order.
    pub fn encode(self) -> String {
        format!("{:016x}", self.to_u64())
    }

    /// Inverse of [`Timestamp::encode`].
    ///
    /// Only the canonical form is accepted, so every timestamp has exactly one
    /// encoding.
    ///
    /// # Errors
    /// [`HlcError`] saying `must be exactly 16 lowercase hex digits` for any
    /// other text (upper case, a `0x` prefix, a sign, spaces, another length).
    pub fn decode(text: &str) -> Result<Self, HlcError> {
        let canonical =
            text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !canonical {
            let mut shown = format!("{text:?}");
            if shown.chars().count() > 40 {
                shown = shown.chars().take(37).collect::<String>() + "...";
            }
            return Err(HlcError {
                rule: format!("must be exactly 16 lowercase hex digits, got {shown}"),
            });
        }
        let value = u64::from_str_radix(text, 16).map_err(|e| HlcError {
            rule: format!("must be exactly 16 lowercase hex digits: {e}"),
        })?;
        Ok(Self::from_u64(value))
    }
}

impl From<u64> for Timestamp {
    fn from(value: u64) -> Self {
        Self::from_u64(value)
    }
}

impl From<Timestamp> for u64 {
    fn from(ts: Timestamp) -> Self {
        ts.to_u64()
    }
}

impl fmt::Display for Timestamp {
    /// The [encoded](Timestamp::encode) form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.to_u64())
    }
}

impl FromStr for Timestamp {
    type Err = HlcError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::decode(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_like_its_integer_and_its_text() {
        let a = Timestamp::new(5, 65535).unwrap();
        let b = Timestamp::new(6, 0).unwrap();
        assert!(a < b);
        assert!(a.to_u64() < b.to_u64());
        assert!(a.encode() < b.encode());
    }

    #[test]
    fn rejects_a_wall_clock_past_48_bits() {
        assert!(Timestamp::new(MAX_WALL_MS + 1, 0).is_err());
        assert_eq!(
            Timestamp::new(MAX_WALL_MS, 0).unwrap().to_u64(),
            0xffff_ffff_ffff_0000
        );
    }
}
