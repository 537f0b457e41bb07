package hlc_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/meridian-rt/meridian/sdk/go/hlc"
)

type vectors struct {
	Valid []struct {
		WallMs  uint64 `json:"wall_ms"`
		Logical uint16 `json:"logical"`
		Int     string `json:"int"`
		Encoded string `json:"encoded"`
	} `json:"valid"`
	Invalid []struct {
		Text string `json:"text"`
		Rule string `json:"rule"`
	} `json:"invalid"`
}

func load(t *testing.T) vectors {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", "hlc.json"))
	if err != nil {
		t.Fatalf("shared vectors: %v", err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("testdata/hlc.json: %v", err)
	}
	if len(v.Valid) == 0 || len(v.Invalid) == 0 {
		t.Fatal("testdata/hlc.json has no vectors")
	}
	return v
}

func TestSharedVectorsValid(t *testing.T) {
	for _, c := range load(t).Valid {
		want, err := strconv.ParseUint(c.Int, 10, 64)
		if err != nil {
			t.Fatalf("vector int %q: %v", c.Int, err)
		}
		ts, err := hlc.New(c.WallMs, c.Logical)
		if err != nil {
			t.Fatalf("New(%d, %d): %v", c.WallMs, c.Logical, err)
		}
		if got := ts.Int(); got != want {
			t.Errorf("New(%d, %d).Int() = %d, want %d", c.WallMs, c.Logical, got, want)
		}
		if got := ts.Encode(); got != c.Encoded {
			t.Errorf("New(%d, %d).Encode() = %q, want %q", c.WallMs, c.Logical, got, c.Encoded)
		}
		if got := hlc.FromInt(want); got != ts {
			t.Errorf("FromInt(%d) = %v, want %v", want, got, ts)
		}
		dec, err := hlc.Decode(c.Encoded)
		if err != nil || dec != ts {
			t.Errorf("Decode(%q) = %v, %v; want %v", c.Encoded, dec, err, ts)
		}
	}
}

func TestSharedVectorsInvalid(t *testing.T) {
	for _, c := range load(t).Invalid {
		_, err := hlc.Decode(c.Text)
		if err == nil {
			t.Errorf("Decode(%q) accepted, want an error containing %q", c.Text, c.Rule)
			continue
		}
		if !strings.Contains(err.Error(), c.Rule) {
			t.Errorf("Decode(%q) = %q, want it to contain %q", c.Text, err, c.Rule)
		}
	}
}

func TestNewRejectsWallPast48Bits(t *testing.T) {
	if _, err := hlc.New(hlc.MaxWallMs+1, 0); err == nil || !strings.Contains(err.Error(), "48 bits") {
		t.Fatalf("New(2^48, 0) = %v, want a 48 bits error", err)
	}
}

func TestOrderMatchesEncodingOrder(t *testing.T) {
	a := hlc.Timestamp{WallMs: 1764000000000, Logical: 65535}
	b := hlc.Timestamp{WallMs: 1764000000001}
	if a.Compare(b) != -1 || b.Compare(a) != 1 || a.Compare(a) != 0 {
		t.Fatalf("Compare disagrees with time order")
	}
	if !(a.Encode() < b.Encode()) {
		t.Fatalf("Encode order %q !< %q", a.Encode(), b.Encode())
	}
}

func FuzzDecodeEncode(f *testing.F) {
	f.Add("019ab697e8000007")
	f.Add("ffffffffffffffff")
	f.Add("0x000019a8b7e1c0")
	f.Fuzz(func(t *testing.T, s string) {
		ts, err := hlc.Decode(s)
		if err != nil {
			return
		}
		if ts.Encode() != s {
			t.Fatalf("Decode(%q).Encode() = %q", s, ts.Encode())
		}
	})
}
