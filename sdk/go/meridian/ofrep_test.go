package meridian_test

// The agent's OFREP endpoints (OpenFeature Remote Evaluation Protocol) as a
// stock OpenFeature client sees them: github.com/open-feature/go-sdk with
// the OFREP provider of go-sdk-contrib, given the test identity's mutual
// TLS client (ofrep.WithClient). Flags are set with the Meridian client.

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"testing"

	"github.com/open-feature/go-sdk-contrib/providers/ofrep"
	"github.com/open-feature/go-sdk/openfeature"

	"github.com/meridian-rt/meridian/sdk/go/internal/agenttest"
)

// openFeatureClient is a stock OpenFeature client whose provider is OFREP
// at MERIDIAN_TEST_HTTP, in a domain of its own (so tests don't share the
// global provider).
func openFeatureClient(t *testing.T, domain string) *openfeature.Client {
	t.Helper()
	base := requireEnv(t, "MERIDIAN_TEST_HTTP")
	provider := ofrep.NewProvider(base, ofrep.WithClient(agenttest.HTTPClient(t)))
	if err := openfeature.SetNamedProviderAndWait(domain, provider); err != nil {
		t.Fatalf("SetNamedProviderAndWait: %v", err)
	}
	t.Cleanup(func() { _ = openfeature.SetNamedProviderAndWait(domain, openfeature.NoopProvider{}) })
	return openfeature.NewClient(domain)
}

func TestOFREPWithTheStockOpenFeatureClient(t *testing.T) {
	c := usEast(t)
	ctx := context.Background()
	key := newFlagKey(t)
	setFlag(t, c, key, regionFlag)
	of := openFeatureClient(t, key)

	// The us-east agent serves it, so its targeting matches "on".
	d, err := of.BooleanValueDetails(ctx, key, false, openfeature.NewEvaluationContext("user-1", map[string]any{"plan": "pro"}))
	if err != nil {
		t.Fatalf("BooleanValueDetails(%s): %v", key, err)
	}
	if !d.Value || d.Variant != "on" || d.Reason != openfeature.TargetingMatchReason || d.ErrorCode != "" {
		t.Errorf("OFREP evaluation %+v, want true (on), TARGETING_MATCH", d)
	}
	if owner, err := d.FlagMetadata.GetString("owner"); err != nil || owner != "go-sdk" {
		t.Errorf("flag metadata %v, want owner go-sdk", d.FlagMetadata)
	}

	// An unknown flag: the code default, FLAG_NOT_FOUND.
	missing := newFlagKey(t)
	d, err = of.BooleanValueDetails(ctx, missing, true, openfeature.NewEvaluationContext("user-1", nil))
	if err == nil || !d.Value || d.ErrorCode != openfeature.FlagNotFoundCode || d.Reason != openfeature.ErrorReason {
		t.Errorf("unknown flag: %+v, %v; want the default (true) with FLAG_NOT_FOUND", d, err)
	}

	// Killed: DISABLED with the off variant (the provider then gives the
	// code default, as OpenFeature says for a disabled flag).
	_, err = c.KillFlag(ctx, key, "")
	check(t, "KillFlag", err)
	d, err = of.BooleanValueDetails(ctx, key, true, openfeature.NewEvaluationContext("user-1", nil))
	if err != nil || d.Reason != openfeature.DisabledReason || d.Variant != "off" {
		t.Errorf("killed flag: %+v, %v; want DISABLED, variant off", d, err)
	}
}

// ofrepEvaluation is OFREP's successful evaluation.
type ofrepEvaluation struct {
	Key      string         `json:"key"`
	Value    any            `json:"value"`
	Variant  string         `json:"variant"`
	Reason   string         `json:"reason"`
	Metadata map[string]any `json:"metadata"`
}

// The OFREP wire shapes the stock Go provider does not exercise: the bulk
// evaluation with its ETag, and the 400s.
func TestOFREPBulkAndErrors(t *testing.T) {
	c := usEast(t)
	key := newFlagKey(t)
	setFlag(t, c, key, regionFlag)
	base := requireEnv(t, "MERIDIAN_TEST_HTTP")
	hc := agenttest.HTTPClient(t)
	post := func(path, body string, header http.Header) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, base+path, bytes.NewBufferString(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}

	resp, body := post("/ofrep/v1/evaluate/flags", `{"context":{"targetingKey":"user-1"}}`, nil)
	var bulk struct {
		Flags []ofrepEvaluation `json:"flags"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &bulk) != nil {
		t.Fatalf("bulk: %d %s, want 200 {\"flags\": [...]}", resp.StatusCode, body)
	}
	i := slices.IndexFunc(bulk.Flags, func(f ofrepEvaluation) bool { return f.Key == key })
	if i < 0 || bulk.Flags[i].Value != true || bulk.Flags[i].Variant != "on" || bulk.Flags[i].Reason != "TARGETING_MATCH" ||
		bulk.Flags[i].Metadata["owner"] != "go-sdk" {
		t.Errorf("bulk: %s has no %s on (true), TARGETING_MATCH", body, key)
	}
	etag := resp.Header.Get("ETag")
	if etag == "" {
		t.Fatalf("bulk: no ETag in %v", resp.Header)
	}
	resp, body = post("/ofrep/v1/evaluate/flags", `{"context":{"targetingKey":"user-1"}}`, http.Header{"If-None-Match": {etag}})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("bulk with If-None-Match of the current ETag: %d %s, want 304", resp.StatusCode, body)
	}

	for _, tc := range []struct{ name, path, body, code string }{
		{"a body that is not JSON", "/ofrep/v1/evaluate/flags/" + key, `{"context":`, "PARSE_ERROR"},
		{"a context that is not an object", "/ofrep/v1/evaluate/flags/" + key, `{"context":[1]}`, "INVALID_CONTEXT"},
		{"a targetingKey that is not a string", "/ofrep/v1/evaluate/flags/" + key, `{"context":{"targetingKey":7}}`, "INVALID_CONTEXT"},
	} {
		resp, body := post(tc.path, tc.body, nil)
		var e struct {
			Key          string `json:"key"`
			ErrorCode    string `json:"errorCode"`
			ErrorDetails string `json:"errorDetails"`
		}
		if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(body, &e) != nil ||
			e.Key != key || e.ErrorCode != tc.code || e.ErrorDetails == "" {
			t.Errorf("%s: %d %s, want 400 {\"key\": %q, \"errorCode\": %q, \"errorDetails\": ...}", tc.name, resp.StatusCode, body, key, tc.code)
		}
	}
}
