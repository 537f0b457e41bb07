package canonical_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meridian-rt/meridian/sdk/go/canonical"
)

type canonicalVectors struct {
	Valid []struct {
		Name         string `json:"name"`
		InputHex     string `json:"input_hex"`
		CanonicalHex string `json:"canonical_hex"`
	} `json:"valid"`
	Invalid []struct {
		Name     string `json:"name"`
		InputHex string `json:"input_hex"`
		Rule     string `json:"rule"`
	} `json:"invalid"`
}

type fingerprintVectors struct {
	Cases []struct {
		Name        string `json:"name"`
		Kind        string `json:"kind"`
		PayloadHex  string `json:"payload_hex"`
		Fingerprint string `json:"fingerprint"`
	} `json:"cases"`
}

// readVectors decodes one file of the shared vectors at the repository root.
func readVectors(t testing.TB, name string, into any) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", name))
	if err != nil {
		t.Fatalf("shared vectors: %v", err)
	}
	if err := json.Unmarshal(raw, into); err != nil {
		t.Fatalf("testdata/%s: %v", name, err)
	}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex in vectors: %v", err)
	}
	return b
}

func TestSharedVectorsValid(t *testing.T) {
	var v canonicalVectors
	readVectors(t, "canonical_json.json", &v)
	if len(v.Valid) == 0 {
		t.Fatal("testdata/canonical_json.json has no valid vectors")
	}
	for _, c := range v.Valid {
		t.Run(c.Name, func(t *testing.T) {
			want := unhex(t, c.CanonicalHex)
			got, err := canonical.Canonicalize(unhex(t, c.InputHex))
			if err != nil {
				t.Fatalf("Canonicalize: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Canonicalize:\n got %q\nwant %q", trim(got), trim(want))
			}
			again, err := canonical.Canonicalize(got)
			if err != nil || !bytes.Equal(again, got) {
				t.Fatalf("canonical output is not a fixed point: %q, %v", trim(again), err)
			}
		})
	}
}

func TestSharedVectorsInvalid(t *testing.T) {
	var v canonicalVectors
	readVectors(t, "canonical_json.json", &v)
	if len(v.Invalid) == 0 {
		t.Fatal("testdata/canonical_json.json has no invalid vectors")
	}
	for _, c := range v.Invalid {
		t.Run(c.Name, func(t *testing.T) {
			out, err := canonical.Canonicalize(unhex(t, c.InputHex))
			if err == nil {
				t.Fatalf("accepted, gave %q; want an error containing %q", trim(out), c.Rule)
			}
			var cerr *canonical.Error
			if !errors.As(err, &cerr) {
				t.Fatalf("error %v (%T) is not a *canonical.Error", err, err)
			}
			if !strings.Contains(err.Error(), c.Rule) {
				t.Fatalf("error %q does not contain %q", err, c.Rule)
			}
		})
	}
}

func TestSharedFingerprints(t *testing.T) {
	var v fingerprintVectors
	readVectors(t, "fingerprint.json", &v)
	if len(v.Cases) == 0 {
		t.Fatal("testdata/fingerprint.json has no cases")
	}
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			got, err := canonical.Fingerprint(unhex(t, c.PayloadHex), canonical.Kind(c.Kind))
			if err != nil {
				t.Fatalf("Fingerprint: %v", err)
			}
			if got != c.Fingerprint {
				t.Fatalf("Fingerprint = %s, want %s", got, c.Fingerprint)
			}
		})
	}
}

func TestLimits(t *testing.T) {
	big := append([]byte(`"`), bytes.Repeat([]byte("a"), canonical.MaxDocumentBytes)...)
	big = append(big, '"')
	if _, err := canonical.Canonicalize(big); err == nil || !strings.Contains(err.Error(), "at most 1048576 bytes") {
		t.Errorf("a document over 1 MiB: %v, want a size error", err)
	}
	atLimit := append(bytes.Repeat([]byte("["), canonical.MaxDepth), bytes.Repeat([]byte("]"), canonical.MaxDepth)...)
	if _, err := canonical.Canonicalize(atLimit); err != nil {
		t.Errorf("nesting %d deep: %v", canonical.MaxDepth, err)
	}
	deep := strings.Repeat(`{"a":`, canonical.MaxDepth+1) + "1" + strings.Repeat("}", canonical.MaxDepth+1)
	if _, err := canonical.Canonicalize([]byte(deep)); err == nil || !strings.Contains(err.Error(), "nested at most") {
		t.Errorf("objects nested %d deep: %v, want a depth error", canonical.MaxDepth+1, err)
	}
}

func TestRulesBeyondTheVectors(t *testing.T) {
	for _, c := range []struct{ in, rule string }{
		{`{"a":1,"\u0061":2}`, "unique"},        // keys compare decoded
		{`["\udc00\ud800"]`, "lone surrogates"}, // reversed pair
		{`"\ud800\u0041"`, "lone surrogates"},
		{`{"\ud800":1,"\ud801":2}`, "lone surrogates"}, // not "unique"
		{`-Infinity`, "NaN and Infinity"},
		{`-1e400`, "IEEE 754 double"},
		{"\xed\xa0\x80", "UTF-8"}, // a surrogate encoded in UTF-8
		{`[1.]`, "not valid JSON"},
		{`[.5]`, "not valid JSON"},
		{`[+1]`, "not valid JSON"},
		{`[0x10]`, "not valid JSON"},
		{`"\x"`, "not valid JSON"},
		{`"\u12"`, "not valid JSON"},
		{`{"a" 1}`, "not valid JSON"},
		{`{"a":1,}`, "not valid JSON"},
		{"[1]\v", "not valid JSON"},
		{`tru`, "not valid JSON"},
	} {
		_, err := canonical.Canonicalize([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.rule) {
			t.Errorf("Canonicalize(%q) = %v, want an error containing %q", c.in, err, c.rule)
		}
	}
	for in, want := range map[string]string{
		`1e-400`:           `0`, // underflow rounds to zero, as in the Python reference
		`[1E+2,-0.0e0]`:    `[100,0]`,
		`"\uD83D\uDE00"`:   `"😀"`,
		` {"b":[],"a":{}}`: `{"a":{},"b":[]}`,
	} {
		got, err := canonical.Canonicalize([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("Canonicalize(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestFingerprintUnknownKind(t *testing.T) {
	if _, err := canonical.Fingerprint([]byte("{}"), "yaml"); err == nil {
		t.Fatal("Fingerprint accepted kind \"yaml\"")
	}
}

// FuzzCanonicalize: no input panics; accepted input canonicalizes to a fixed
// point that is itself valid JSON.
func FuzzCanonicalize(f *testing.F) {
	var v canonicalVectors
	readVectors(f, "canonical_json.json", &v)
	for _, c := range v.Valid {
		f.Add(unhex(f, c.InputHex))
	}
	for _, c := range v.Invalid {
		f.Add(unhex(f, c.InputHex))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := canonical.Canonicalize(in)
		if err != nil {
			var cerr *canonical.Error
			if !errors.As(err, &cerr) {
				t.Fatalf("Canonicalize(%q): %v is not a *canonical.Error", in, err)
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("Canonicalize(%q) = %q, not valid JSON", in, out)
		}
		again, err := canonical.Canonicalize(out)
		if err != nil {
			t.Fatalf("Canonicalize(%q) = %q, which is then rejected: %v", in, out, err)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("not a fixed point: %q -> %q -> %q", in, out, again)
		}
	})
}

func trim(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
