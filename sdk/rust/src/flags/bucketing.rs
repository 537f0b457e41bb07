//! flagd's fractional bucketing, the pure part of flag evaluation that a
//! service may want to reproduce locally (to predict a rollout, or to check
//! the agent): the same bytes in give the same variant in Python, Go and
//! Rust, pinned by `testdata/flag_bucketing.json`.

/// The MurmurHash3 (x86, 32-bit, seed 0) of `bucket_by`'s UTF-8 bytes, as
/// an unsigned number: the hash flagd's `fractional` operator buckets by.
pub fn bucket_hash(bucket_by: &str) -> u32 {
    let mut bytes = bucket_by.as_bytes();
    // Reading from a byte slice cannot fail: the crate's `io::Result` is for
    // readers that can.
    murmur3::murmur3_32(&mut bytes, 0).unwrap_or_else(|e| unreachable!("reading a slice: {e}"))
}

/// The variant flagd's `fractional` operator picks for `bucket_by` among
/// `weights` (variant, weight), in order.
///
/// The bucket is `bucket_hash(bucket_by) * total_weight >> 32`, a number in
/// `0..total_weight`; the first variant whose running weight sum exceeds it
/// wins, so each variant gets a share of `bucket_by` values in proportion to
/// its weight and a variant of weight 0 never wins. `None` when the weights
/// add up to 0 (or there are none). flagd's rules build `bucket_by` from the
/// flag key followed by the targeting key unless the rule names another
/// expression.
///
/// ```
/// use meridian::flags::fractional;
///
/// let weights = [("on", 50), ("off", 50)];
/// assert_eq!(fractional("new-checkoutuser-1", &weights), Some("on"));
/// assert_eq!(fractional("new-checkoutuser-1", &[("on", 0)]), None);
/// ```
pub fn fractional<'a, S: AsRef<str>>(bucket_by: &str, weights: &'a [(S, u32)]) -> Option<&'a str> {
    // u128: weights may add up past u32, and the product past u64; within
    // flagd's ranges this is exactly `(hash as u64 * total as u64) >> 32`.
    let total: u128 = weights.iter().map(|(_, w)| u128::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let bucket = (u128::from(bucket_hash(bucket_by)) * total) >> 32;
    let mut sum = 0u128;
    weights.iter().find_map(|(variant, weight)| {
        sum += u128::from(*weight);
        (sum > bucket).then(|| variant.as_ref())
    })
}
