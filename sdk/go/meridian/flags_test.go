package meridian_test

// Feature flags against the real sandbox (see agent_test.go): every test
// sets flags of its own, under keys unique to the test and the run, and
// deletes them at the end.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-rt/meridian/sdk/go/canonical"
	"github.com/meridian-rt/meridian/sdk/go/flags"
	"github.com/meridian-rt/meridian/sdk/go/internal/agenttest"
	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

// regionFlag is "on" in us-east, "off" elsewhere: the agent puts its own
// region in the context.
const regionFlag = `{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off",` +
	`"targeting":{"if":[{"==":[{"var":"region"},"us-east"]},"on","off"]},"metadata":{"owner":"go-sdk"}}`

// newFlagKey is a flag key no other test (or earlier run) uses: letters,
// digits, '-', '_' and '.', as flag keys must be.
func newFlagKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := keyUnsafe.ReplaceAllString(t.Name(), "_")
	return "go-" + name[:min(len(name), 80)] + "-" + hex.EncodeToString(b)
}

// setFlag stores a new flag (it must not exist) and deletes it when the test ends.
func setFlag(t *testing.T, c *meridian.Client, key, definition string) meridian.Flag {
	t.Helper()
	f, err := c.SetFlag(context.Background(), key, []byte(definition), meridian.IfRevision(0))
	check(t, "SetFlag "+key, err)
	t.Cleanup(func() {
		_, err := c.DeleteFlag(context.Background(), key)
		if err != nil && !errors.Is(err, meridian.ErrNotFound) {
			t.Errorf("DeleteFlag %s: %v", key, err)
		}
	})
	return f
}

func evaluateFlag(t *testing.T, c *meridian.Client, key string, evalCtx map[string]any) meridian.FlagEvaluation {
	t.Helper()
	ev, err := c.EvaluateFlag(context.Background(), key, evalCtx)
	check(t, "EvaluateFlag "+key, err)
	if ev.Key != key {
		t.Fatalf("EvaluateFlag(%s) answered for %q", key, ev.Key)
	}
	return ev
}

func TestFlagLifecycle(t *testing.T) {
	c := usEast(t)
	ctx := context.Background()
	key := newFlagKey(t)
	start := time.Now()

	set := setFlag(t, c, key, regionFlag)
	want, err := canonical.Canonicalize([]byte(regionFlag))
	if err != nil {
		t.Fatal(err)
	}
	if set.Key != key || set.Definition != string(want) || set.Revision == 0 || set.KilledVariant != "" {
		t.Fatalf("SetFlag = %+v, want the canonical definition %s at a revision", set, want)
	}
	if d := set.UpdatedAt.Sub(start); d < -5*time.Second || d > time.Minute {
		t.Errorf("UpdatedAt %v is not about now (%v)", set.UpdatedAt, start)
	}
	if agenttest.TLSDir() != "" && !strings.HasSuffix(set.Author, "/service/sdk-test") {
		t.Errorf("Author %q, want the test's identity, spiffe://<td>/service/sdk-test", set.Author)
	}
	// IfRevision(0): only if the flag does not exist.
	_, err = c.SetFlag(ctx, key, []byte(regionFlag), meridian.IfRevision(0))
	var merr *meridian.Error
	if !errors.Is(err, meridian.ErrConflict) || !errors.As(err, &merr) || merr.CurrentRevision != set.Revision {
		t.Fatalf("SetFlag of an existing flag at revision 0: %v, want ErrConflict at %d", err, set.Revision)
	}

	got, err := c.GetFlag(ctx, key)
	check(t, "GetFlag", err)
	if got != set {
		t.Errorf("GetFlag = %+v, want %+v", got, set)
	}
	list, err := c.ListFlags(ctx)
	check(t, "ListFlags", err)
	i := slices.IndexFunc(list, func(f meridian.Flag) bool { return f.Key == key })
	if i < 0 || list[i] != set {
		t.Errorf("ListFlags has %d flags, not %+v", len(list), set)
	}
	if !slices.IsSortedFunc(list, func(a, b meridian.Flag) int { return strings.Compare(a.Key, b.Key) }) {
		t.Errorf("ListFlags is not in key order")
	}

	// The agent's region decides, whatever region the caller claims.
	ev := evaluateFlag(t, c, key, map[string]any{"targetingKey": "user-1", "region": "eu-west"})
	if ev.Value != true || ev.Variant != "on" || ev.Reason != "TARGETING_MATCH" || ev.ErrorCode != "" ||
		ev.Metadata["owner"] != "go-sdk" {
		t.Errorf("in us-east: %+v, want on (true), TARGETING_MATCH, metadata owner go-sdk", ev)
	}
	euWest := dial(t, regionAddrs(t)["eu-west"])
	eventually(t, "eu-west evaluating the flag", func() (bool, error) {
		ev, err := euWest.EvaluateFlag(ctx, key, map[string]any{"region": "us-east"})
		return err == nil && ev.ErrorCode == "", err
	})
	if ev := evaluateFlag(t, euWest, key, nil); ev.Value != false || ev.Variant != "off" || ev.Reason != "TARGETING_MATCH" {
		t.Errorf("in eu-west: %+v, want off (false), TARGETING_MATCH", ev)
	}

	all, rev, err := c.EvaluateAllFlags(ctx, map[string]any{"targetingKey": "user-1"})
	check(t, "EvaluateAllFlags", err)
	i = slices.IndexFunc(all, func(e meridian.FlagEvaluation) bool { return e.Key == key })
	if i < 0 || all[i].Value != true || all[i].Variant != "on" || rev < set.Revision {
		t.Errorf("EvaluateAllFlags: %d evaluations at revision %d, want %s on at a revision >= %d", len(all), rev, key, set.Revision)
	}

	// The kill switch: the off variant, DISABLED, whatever the targeting.
	killed, err := c.KillFlag(ctx, key, "")
	check(t, "KillFlag", err)
	if killed.KilledVariant != "off" || killed.Revision <= set.Revision || killed.Definition != set.Definition {
		t.Fatalf("KillFlag = %+v, want killed to off at a later revision, the definition kept", killed)
	}
	if ev := evaluateFlag(t, c, key, nil); ev.Value != false || ev.Variant != "off" || ev.Reason != "DISABLED" || ev.ErrorCode != "" {
		t.Errorf("killed: %+v, want off (false), DISABLED", ev)
	}
	eventually(t, "eu-west seeing the kill", func() (bool, error) {
		ev, err := euWest.EvaluateFlag(ctx, key, nil)
		return err == nil && ev.Reason == "DISABLED" && ev.Variant == "off", err
	})
	// Setting it again revives it.
	revived, err := c.SetFlag(ctx, key, []byte(regionFlag), meridian.IfRevision(killed.Revision))
	check(t, "SetFlag of the killed flag", err)
	if revived.KilledVariant != "" {
		t.Errorf("revived flag %+v is still killed", revived)
	}
	if ev := evaluateFlag(t, c, key, nil); ev.Value != true || ev.Reason != "TARGETING_MATCH" {
		t.Errorf("revived: %+v, want on, TARGETING_MATCH", ev)
	}

	if _, err := c.DeleteFlag(ctx, key, meridian.IfRevision(set.Revision)); !errors.Is(err, meridian.ErrConflict) {
		t.Fatalf("DeleteFlag at a stale revision: %v, want ErrConflict", err)
	}
	deleted, err := c.DeleteFlag(ctx, key, meridian.IfRevision(revived.Revision))
	check(t, "DeleteFlag", err)
	if deleted <= revived.Revision {
		t.Errorf("DeleteFlag revision %d, want after %d", deleted, revived.Revision)
	}
	ev = evaluateFlag(t, c, key, nil)
	if ev.ErrorCode != "FLAG_NOT_FOUND" || ev.Reason != "ERROR" || ev.Value != nil || ev.Variant != "" {
		t.Errorf("deleted: %+v, want ERROR FLAG_NOT_FOUND without a value", ev)
	}
	if _, err := c.GetFlag(ctx, key); !errors.Is(err, meridian.ErrNotFound) {
		t.Errorf("GetFlag of a deleted flag: %v, want ErrNotFound", err)
	}
	if _, err := c.DeleteFlag(ctx, key); !errors.Is(err, meridian.ErrNotFound) {
		t.Errorf("DeleteFlag of a deleted flag: %v, want ErrNotFound", err)
	}
}

// The agent buckets a fractional rollout exactly as package flags does.
func TestFlagFractionalRolloutMatchesPackageFlags(t *testing.T) {
	c := usEast(t)
	key := newFlagKey(t)
	weights := []flags.Weight{{Variant: "red", Weight: 50}, {Variant: "blue", Weight: 30}, {Variant: "green", Weight: 20}}
	setFlag(t, c, key, `{"state":"ENABLED","variants":{"red":"#f00","blue":"#00f","green":"#0f0"},`+
		`"defaultVariant":"red","targeting":{"fractional":[["red",50],["blue",30],["green",20]]}}`)
	// Bucketed by another attribute the rule names.
	byEmail := newFlagKey(t)
	setFlag(t, c, byEmail, `{"state":"ENABLED","variants":{"red":"#f00","blue":"#00f","green":"#0f0"},`+
		`"defaultVariant":"red","targeting":{"fractional":[{"var":"email"},["red",50],["blue",30],["green",20]]}}`)
	colors := map[string]string{"red": "#f00", "blue": "#00f", "green": "#0f0"}

	seen := map[string]int{}
	for i := range 40 {
		user, email := fmt.Sprintf("user-%d", i), fmt.Sprintf("u%d@example.com", i)
		want, ok := flags.Fractional(flags.BucketBy(key, user), weights)
		if !ok {
			t.Fatalf("flags.Fractional(%s) buckets nobody", user)
		}
		ev := evaluateFlag(t, c, key, map[string]any{"targetingKey": user})
		if ev.Variant != want || ev.Value != colors[want] || ev.Reason != "TARGETING_MATCH" {
			t.Errorf("%s: %+v, want %s (%s), TARGETING_MATCH", user, ev, want, colors[want])
		}
		seen[ev.Variant]++
		want, _ = flags.Fractional(email, weights)
		if ev := evaluateFlag(t, c, byEmail, map[string]any{"targetingKey": user, "email": email}); ev.Variant != want {
			t.Errorf("%s bucketed by %s: %+v, want %s", user, email, ev, want)
		}
	}
	if len(seen) < 2 {
		t.Errorf("40 users all got %v: the rollout does not split", seen)
	}
	// No targetingKey: nothing to bucket by, so the default variant.
	if ev := evaluateFlag(t, c, key, nil); ev.Variant != "red" || ev.Reason != "DEFAULT" {
		t.Errorf("without a targetingKey: %+v, want red, DEFAULT", ev)
	}
}

func TestFlagInvalidArgumentsNameTheField(t *testing.T) {
	c := usEast(t)
	ctx := context.Background()
	key := newFlagKey(t)
	setFlag(t, c, key, `{"state":"ENABLED","variants":{"a":1,"b":2},"defaultVariant":"a"}`)
	for _, tc := range []struct {
		name, field, rule string
		call              func() error
	}{
		{"a default variant that is no variant", "definition.defaultVariant", "", func() error {
			_, err := c.SetFlag(ctx, newFlagKey(t), []byte(`{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"maybe"}`))
			return err
		}},
		{"a definition that is not JSON", "definition", "", func() error {
			_, err := c.SetFlag(ctx, newFlagKey(t), []byte(`{"state":`))
			return err
		}},
		{"an empty key", "key", "is required", func() error {
			_, err := c.SetFlag(ctx, "", []byte(regionFlag))
			return err
		}},
		{"a key with a slash", "key", "letters, digits", func() error {
			_, err := c.EvaluateFlag(ctx, "a/b", nil)
			return err
		}},
		{"killing to a variant the flag lacks", "variant", "not a variant", func() error {
			_, err := c.KillFlag(ctx, key, "zzz")
			return err
		}},
		{"killing a flag with no off variant", "variant", "is required", func() error {
			_, err := c.KillFlag(ctx, key, "")
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var merr *meridian.Error
			if !errors.Is(err, meridian.ErrInvalidArgument) || !errors.As(err, &merr) {
				t.Fatalf("got %v, want ErrInvalidArgument", err)
			}
			if merr.Field != tc.field || !strings.Contains(merr.Rule, tc.rule) || merr.Rule == "" {
				t.Fatalf("field %q rule %q, want field %q and a rule containing %q", merr.Field, merr.Rule, tc.field, tc.rule)
			}
		})
	}
	// Nothing refused was stored, and the kills left the flag as it was.
	list, err := c.ListFlags(ctx)
	check(t, "ListFlags", err)
	for _, f := range list {
		if f.Key == key && f.KilledVariant != "" {
			t.Errorf("a refused kill killed %+v", f)
		}
		if strings.HasPrefix(f.Key, "go-"+keyUnsafe.ReplaceAllString(t.Name(), "_")) && f.Key != key {
			t.Errorf("a refused definition was stored: %+v", f)
		}
	}
}
