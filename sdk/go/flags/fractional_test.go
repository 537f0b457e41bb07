package flags

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// vectors is testdata/flag_bucketing.json, shared with the agent (Python)
// and the Rust SDK.
type vectors struct {
	Description string `json:"description"`
	Hash        []struct {
		Input string `json:"input"`
		Want  uint32 `json:"murmur3_x86_32"`
	} `json:"hash"`
	Fractional []fractionalVector `json:"fractional"`
}

type fractionalVector struct {
	BucketBy string
	Weights  []Weight
	Variant  string
}

// UnmarshalJSON reads a vector strictly: weights are [variant, weight]
// pairs of a string and a whole number that fits a uint32.
func (v *fractionalVector) UnmarshalJSON(b []byte) error {
	var raw struct {
		BucketBy *string             `json:"bucket_by"`
		Weights  [][]json.RawMessage `json:"weights"`
		Variant  *string             `json:"variant"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if raw.BucketBy == nil || raw.Variant == nil || len(raw.Weights) == 0 {
		return fmt.Errorf("vector %s lacks bucket_by, weights or variant", b)
	}
	v.BucketBy, v.Variant = *raw.BucketBy, *raw.Variant
	for _, pair := range raw.Weights {
		if len(pair) != 2 {
			return fmt.Errorf("weight %v is not [variant, weight]", pair)
		}
		var w Weight
		if err := json.Unmarshal(pair[0], &w.Variant); err != nil {
			return fmt.Errorf("variant %s: %w", pair[0], err)
		}
		if err := json.Unmarshal(pair[1], &w.Weight); err != nil {
			return fmt.Errorf("weight %s: %w", pair[1], err)
		}
		v.Weights = append(v.Weights, w)
	}
	return nil
}

// load reads the shared vectors; a missing, unreadable or empty file fails
// the test (it never skips).
func load(t *testing.T) vectors {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", "flag_bucketing.json"))
	if err != nil {
		t.Fatalf("shared vectors: %v", err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("testdata/flag_bucketing.json: %v", err)
	}
	if len(v.Hash) == 0 || len(v.Fractional) == 0 {
		t.Fatalf("testdata/flag_bucketing.json has %d hash and %d fractional vectors, want some of each",
			len(v.Hash), len(v.Fractional))
	}
	return v
}

func TestSharedVectorsHash(t *testing.T) {
	for _, c := range load(t).Hash {
		if got := hash(c.Input); got != c.Want {
			t.Errorf("hash(%q) = %d, want %d", c.Input, got, c.Want)
		}
	}
}

func TestSharedVectorsFractional(t *testing.T) {
	for _, c := range load(t).Fractional {
		got, ok := Fractional(c.BucketBy, c.Weights)
		if !ok || got != c.Variant {
			t.Errorf("Fractional(%q, %v) = %q, %v; want %q", c.BucketBy, c.Weights, got, ok, c.Variant)
		}
	}
}

// The vectors are not matched by accident: other weights, or another
// bucketing value, put some of them in another variant. An implementation
// that ignored either would fail this test or the one above.
func TestSharedVectorsDependOnWeightsAndBucketBy(t *testing.T) {
	var reordered, rebucketed, variants int
	seen := map[string]bool{}
	for _, c := range load(t).Fractional {
		if c.Variant == "" {
			t.Fatalf("vector %+v expects no variant", c)
		}
		if !seen[c.Variant] {
			seen[c.Variant] = true
			variants++
		}
		// The same shares in the opposite order.
		reversed := slices.Clone(c.Weights)
		slices.Reverse(reversed)
		if got, _ := Fractional(c.BucketBy, reversed); got != c.Variant {
			reordered++
		}
		if got, _ := Fractional(c.BucketBy+"!", c.Weights); got != c.Variant {
			rebucketed++
		}
	}
	if reordered == 0 || rebucketed == 0 || variants < 2 {
		t.Fatalf("reordered weights changed %d variants, another bucket_by %d, over %d distinct variants: "+
			"the vectors don't tell implementations apart", reordered, rebucketed, variants)
	}
}

// A wrong weight set gives a wrong answer for the shared vectors: the check
// above would catch an implementation that read the weights wrongly.
func TestChangedWeightsBreakTheVectors(t *testing.T) {
	wrong := 0
	for _, c := range load(t).Fractional {
		if len(c.Weights) < 2 {
			continue
		}
		changed := slices.Clone(c.Weights)
		changed[0].Weight += changed[1].Weight // the first variant takes the second's share
		changed[1].Weight = 0
		if got, ok := Fractional(c.BucketBy, changed); !ok || got != c.Variant {
			wrong++
		}
	}
	if wrong == 0 {
		t.Fatal("no vector changed its variant when its first variant took the second's share")
	}
}

func TestNoWeightNoVariant(t *testing.T) {
	for _, weights := range [][]Weight{
		nil,
		{},
		{{Variant: "a", Weight: 0}, {Variant: "b", Weight: 0}},
		{{Variant: "a", Weight: MaxWeightSum}, {Variant: "b", Weight: 1}},
	} {
		if got, ok := Fractional("user-1", weights); ok || got != "" {
			t.Errorf("Fractional(user-1, %v) = %q, %v; want \"\", false", weights, got, ok)
		}
	}
	if got, ok := Fractional("user-1", []Weight{{Variant: "all", Weight: MaxWeightSum}}); !ok || got != "all" {
		t.Errorf("Fractional with the largest weight sum = %q, %v; want all, true", got, ok)
	}
}

// Raising the first variant's share only moves users into it; a variant of
// weight 0 is never chosen.
func TestGrowingRolloutKeepsUsers(t *testing.T) {
	for i := range 2000 {
		user := BucketBy("new-checkout", fmt.Sprintf("user-%d", i))
		prev := ""
		for pct := uint32(0); pct <= 100; pct += 5 {
			got, ok := Fractional(user, []Weight{{"on", pct}, {"off", 100 - pct}})
			if !ok {
				t.Fatalf("%s at %d%%: no variant", user, pct)
			}
			if pct == 0 && got != "off" || pct == 100 && got != "on" {
				t.Fatalf("%s at %d%%: %s", user, pct, got)
			}
			if prev == "on" && got != "on" {
				t.Fatalf("%s went from on back to %s when the rollout grew to %d%%", user, got, pct)
			}
			prev = got
		}
	}
}
