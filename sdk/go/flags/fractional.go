// Package flags holds the pure parts of Meridian's feature flags that a
// client may want to compute itself: flagd's fractional bucketing, which
// decides which variant of a percentage rollout a user gets.
//
// The agent evaluates flags (Client.EvaluateFlag in package meridian); this
// package lets a service or a test predict, offline, where a rollout puts a
// given user, and agrees with the agent (Python) and the Rust SDK byte for
// byte on the vectors of testdata/flag_bucketing.json. It does no I/O.
package flags

import "github.com/spaolacci/murmur3"

// MaxWeightSum is the largest sum of a fractional distribution's weights
// (flagd's, an int32). The agent refuses a definition whose weights sum to
// more, and a distribution past it buckets nobody.
const MaxWeightSum = 1<<31 - 1

// Weight is one variant's share of a fractional distribution: the
// `[variant, weight]` pairs of flagd's `fractional` operator. A variant
// gets Weight out of the sum of all the weights.
type Weight struct {
	Variant string
	Weight  uint32
}

// BucketBy is the value a `fractional` rule buckets by when it names none:
// the flag's key followed by the context's targetingKey, as flagd does
// ("new-checkout" and "user-1" bucket by "new-checkoutuser-1"). Bucketing by
// the flag key too keeps a user's variants of different flags independent.
func BucketBy(flagKey, targetingKey string) string {
	return flagKey + targetingKey
}

// Fractional is the variant that bucketBy falls in, as flagd's `fractional`
// operator computes it: the MurmurHash3 (x86, 32-bit, seed 0) of bucketBy's
// UTF-8 bytes, as an unsigned number h, gives the bucket
// h * total >> 32 in [0, total), where total is the sum of the weights; the
// first variant whose running sum of weights exceeds the bucket wins.
//
// The same bucketBy always gets the same variant for the same weights, and
// raising one variant's weight at the expense of the ones after it only
// moves users into that variant. A variant of weight 0 is never chosen.
//
// ok is false, and variant "", when the weights sum to 0 or to more than
// MaxWeightSum: the agent then serves the flag's default variant.
func Fractional(bucketBy string, weights []Weight) (variant string, ok bool) {
	var total uint64
	for _, w := range weights {
		total += uint64(w.Weight)
	}
	if total == 0 || total > MaxWeightSum {
		return "", false
	}
	// hash < 2^32 and total < 2^31: the product can't overflow.
	bucket := uint64(hash(bucketBy)) * total >> 32
	var end uint64
	for _, w := range weights {
		end += uint64(w.Weight)
		if bucket < end {
			return w.Variant, true
		}
	}
	return "", false // unreachable: bucket < total
}

// hash is the bucketing hash: MurmurHash3 x86 32-bit, seed 0, of s's bytes
// (a Go string is its UTF-8 bytes, whatever they are).
func hash(s string) uint32 {
	return murmur3.Sum32([]byte(s))
}
