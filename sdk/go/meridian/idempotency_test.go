package meridian_test

// The Idempotency API against the real sandbox (see agent_test.go): its
// agents keep idempotency records in the global bucket, so every region sees
// the same keys.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-rt/meridian/sdk/go/canonical"
	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

const idemScope = "go-sdk"

var (
	order  = []byte(`{"sku":"A-1","qty":2}`)
	okResp = meridian.StoredResponse{
		Status:  201,
		Body:    []byte(`{"order":"o-1"}`),
		Headers: map[string]string{"content-type": "application/json"},
	}
)

func sameResponse(a, b meridian.StoredResponse) bool {
	return a.Status == b.Status && bytes.Equal(a.Body, b.Body) && maps.Equal(a.Headers, b.Headers)
}

func wantResponse(t *testing.T, what string, got *meridian.StoredResponse, want meridian.StoredResponse) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: no response, want %+v", what, want)
	}
	if !sameResponse(*got, want) {
		t.Fatalf("%s: response %+v, want %+v", what, *got, want)
	}
}

func wantOutcome(t *testing.T, what string, got meridian.Begun, want meridian.Outcome) {
	t.Helper()
	if got.Outcome != want {
		t.Fatalf("%s: outcome %v (%+v), want %v", what, got.Outcome, got, want)
	}
}

func fingerprint(t *testing.T, payload []byte) string {
	t.Helper()
	fp, err := canonical.Fingerprint(payload, canonical.JSON)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

func TestIdempotencyNewThenCompletedReplays(t *testing.T) {
	regions := regionAddrs(t)
	east := dial(t, regions["us-east"]).Idempotency()
	west := dial(t, regions["eu-west"]).Idempotency()
	ctx := context.Background()
	key := newKey(t)

	first, err := east.Begin(ctx, idemScope, key, order)
	check(t, "Begin", err)
	wantOutcome(t, "first Begin", first, meridian.OutcomeNew)
	if first.FencingToken == 0 || first.Fingerprint != fingerprint(t, order) || first.TookOver || first.Response != nil {
		t.Fatalf("first Begin = %+v, want a token, the request's fingerprint, no takeover, no response", first)
	}
	if first.LeaseExpiresAt.Before(time.Now().Add(-time.Minute)) {
		t.Fatalf("lease expires at %v, want a time about now + the default lease", first.LeaseExpiresAt)
	}
	expires, err := east.Complete(ctx, idemScope, key, first.FencingToken, okResp)
	check(t, "Complete", err)
	if !expires.After(time.Now()) {
		t.Fatalf("Complete: record expires at %v, want a time in the future", expires)
	}

	// The same request respaced and reordered has the same fingerprint.
	again, err := east.Begin(ctx, idemScope, key, []byte(`{ "qty": 2, "sku": "A-1" }`))
	check(t, "second Begin", err)
	wantOutcome(t, "second Begin", again, meridian.OutcomeCompleted)
	wantResponse(t, "second Begin", again.Response, okResp)
	if again.ExpiresAt.IsZero() {
		t.Errorf("completed Begin without ExpiresAt")
	}

	// Another region sees the same record.
	other, err := west.Begin(ctx, idemScope, key, order)
	check(t, "Begin in eu-west", err)
	wantOutcome(t, "Begin in eu-west", other, meridian.OutcomeCompleted)
	wantResponse(t, "Begin in eu-west", other.Response, okResp)

	// And so does Once, without running the command.
	res, err := west.Once(ctx, idemScope, key, order, func(context.Context, uint64) (meridian.StoredResponse, error) {
		t.Error("Once ran the command of a completed key")
		return meridian.StoredResponse{}, nil
	})
	check(t, "Once in eu-west", err)
	if !res.Replayed {
		t.Errorf("Once of a completed key: Replayed = false")
	}
	wantResponse(t, "Once in eu-west", &res.Response, okResp)
}

func TestIdempotencyErrorResponsesAreStoredAndReplayed(t *testing.T) {
	idem := usEast(t).Idempotency()
	ctx := context.Background()
	key := newKey(t)
	declined := meridian.StoredResponse{Status: 402, Body: []byte(`{"error":"card declined"}`)}
	var runs atomic.Int32
	command := func(_ context.Context, token uint64) (meridian.StoredResponse, error) {
		if token == 0 {
			t.Error("command got fencing token 0")
		}
		runs.Add(1)
		return declined, nil
	}
	first, err := idem.Once(ctx, idemScope, key, order, command)
	check(t, "first Once", err)
	second, err := idem.Once(ctx, idemScope, key, order, command)
	check(t, "second Once", err)
	if first.Replayed || !second.Replayed {
		t.Fatalf("Replayed = %v, %v; want false, true", first.Replayed, second.Replayed)
	}
	wantResponse(t, "first Once", &first.Response, declined)
	wantResponse(t, "second Once", &second.Response, declined)
	if n := runs.Load(); n != 1 {
		t.Fatalf("the command ran %d times, want 1", n)
	}
}

func TestIdempotencyCommandErrorAbortsTheKey(t *testing.T) {
	idem := usEast(t).Idempotency()
	ctx := context.Background()
	key := newKey(t)
	boom := errors.New("handler crashed")
	_, err := idem.Once(ctx, idemScope, key, order, func(context.Context, uint64) (meridian.StoredResponse, error) {
		return meridian.StoredResponse{}, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Once with a failing command: %v, want the command's error", err)
	}
	// The key was released: the next Once runs the command.
	res, err := idem.Once(ctx, idemScope, key, order, func(context.Context, uint64) (meridian.StoredResponse, error) {
		return okResp, nil
	})
	check(t, "Once after the failure", err)
	if res.Replayed {
		t.Fatalf("Once after a failed command replayed %+v; want it to run the command", res.Response)
	}
	wantResponse(t, "Once after the failure", &res.Response, okResp)
}

func TestIdempotencyMismatch(t *testing.T) {
	idem := usEast(t).Idempotency()
	ctx := context.Background()
	key := newKey(t)
	other := []byte(`{"sku":"A-1","qty":3}`)

	begun, err := idem.Begin(ctx, idemScope, key, order)
	check(t, "Begin", err)
	// A mismatch wins even while the first request is in progress.
	during, err := idem.Begin(ctx, idemScope, key, other)
	check(t, "Begin with another request", err)
	wantOutcome(t, "Begin with another request while in progress", during, meridian.OutcomeMismatch)
	_, err = idem.Complete(ctx, idemScope, key, begun.FencingToken, okResp)
	check(t, "Complete", err)

	after, err := idem.Begin(ctx, idemScope, key, other)
	check(t, "Begin with another request", err)
	wantOutcome(t, "Begin with another request after completion", after, meridian.OutcomeMismatch)
	if after.Fingerprint != fingerprint(t, order) {
		t.Errorf("mismatch fingerprint %s, want the first request's %s", after.Fingerprint, fingerprint(t, order))
	}
	_, err = idem.Once(ctx, idemScope, key, other, func(context.Context, uint64) (meridian.StoredResponse, error) {
		t.Error("Once ran the command of a mismatched key")
		return okResp, nil
	})
	var merr *meridian.Error
	if !errors.Is(err, meridian.ErrIdempotencyMismatch) || !errors.As(err, &merr) || merr.Code != meridian.CodeIdempotencyMismatch {
		t.Fatalf("Once with another request: %v, want ErrIdempotencyMismatch", err)
	}

	// Binary payloads are fingerprinted as bytes: the same JSON respaced differs.
	bkey := newKey(t)
	_, err = idem.Begin(ctx, idemScope, bkey, order, meridian.Binary())
	check(t, "binary Begin", err)
	respaced, err := idem.Begin(ctx, idemScope, bkey, []byte(`{ "sku":"A-1","qty":2}`), meridian.Binary())
	check(t, "respaced binary Begin", err)
	wantOutcome(t, "respaced binary Begin", respaced, meridian.OutcomeMismatch)
}

func TestIdempotencyInProgressFromAnotherRegion(t *testing.T) {
	regions := regionAddrs(t)
	east := dial(t, regions["us-east"]).Idempotency()
	west := dial(t, regions["eu-west"]).Idempotency()
	ctx := context.Background()
	key := newKey(t)

	holder, err := east.Begin(ctx, idemScope, key, order, meridian.Lease(30*time.Second))
	check(t, "Begin in us-east", err)
	wantOutcome(t, "Begin in us-east", holder, meridian.OutcomeNew)
	if d := time.Until(holder.LeaseExpiresAt); d < 20*time.Second || d > 40*time.Second {
		t.Errorf("a 30 s lease expires in %v", d)
	}
	busy, err := west.Begin(ctx, idemScope, key, order)
	check(t, "Begin in eu-west", err)
	wantOutcome(t, "Begin in eu-west", busy, meridian.OutcomeInProgress)
	if d := busy.LeaseExpiresAt.Sub(holder.LeaseExpiresAt).Abs(); d > 10*time.Millisecond {
		t.Errorf("in-progress lease expires at %v, the holder's at %v", busy.LeaseExpiresAt, holder.LeaseExpiresAt)
	}
	if busy.FencingToken != 0 || busy.Response != nil {
		t.Errorf("in-progress Begin = %+v, want no token and no response", busy)
	}
	_, err = west.Once(ctx, idemScope, key, order, func(context.Context, uint64) (meridian.StoredResponse, error) {
		t.Error("Once ran the command of a key in progress")
		return okResp, nil
	})
	var merr *meridian.Error
	if !errors.Is(err, meridian.ErrIdempotencyInProgress) || !errors.As(err, &merr) || merr.Code != meridian.CodeIdempotencyInProgress {
		t.Fatalf("Once in eu-west: %v, want ErrIdempotencyInProgress", err)
	}
	check(t, "Abort", east.Abort(ctx, idemScope, key, holder.FencingToken))
}

func TestIdempotencyLeaseTakeoverFencesTheOldHolder(t *testing.T) {
	regions := regionAddrs(t)
	east := dial(t, regions["us-east"]).Idempotency()
	west := dial(t, regions["eu-west"]).Idempotency()
	ctx := context.Background()
	key := newKey(t)

	old, err := east.Begin(ctx, idemScope, key, order, meridian.Lease(200*time.Millisecond))
	check(t, "Begin with a short lease", err)
	wantOutcome(t, "Begin with a short lease", old, meridian.OutcomeNew)
	time.Sleep(400 * time.Millisecond)

	taken, err := west.Begin(ctx, idemScope, key, order, meridian.Lease(30*time.Second))
	check(t, "Begin after the lease expired", err)
	wantOutcome(t, "Begin after the lease expired", taken, meridian.OutcomeNew)
	if !taken.TookOver || taken.FencingToken <= old.FencingToken {
		t.Fatalf("takeover Begin = %+v, want TookOver and a token above %d", taken, old.FencingToken)
	}
	// The late holder can neither complete nor abort.
	if _, err := east.Complete(ctx, idemScope, key, old.FencingToken, okResp); !errors.Is(err, meridian.ErrFenced) {
		t.Fatalf("Complete with the old token: %v, want ErrFenced", err)
	}
	if err := east.Abort(ctx, idemScope, key, old.FencingToken); !errors.Is(err, meridian.ErrFenced) {
		t.Fatalf("Abort with the old token: %v, want ErrFenced", err)
	}
	_, err = west.Complete(ctx, idemScope, key, taken.FencingToken, okResp)
	check(t, "Complete with the new token", err)
	// Completing again with the same token is a no-op.
	_, err = west.Complete(ctx, idemScope, key, taken.FencingToken, okResp)
	check(t, "Complete again with the new token", err)
	done, err := east.Begin(ctx, idemScope, key, order)
	check(t, "Begin after completion", err)
	wantOutcome(t, "Begin after completion", done, meridian.OutcomeCompleted)
	wantResponse(t, "Begin after completion", done.Response, okResp)
}

func TestIdempotencyOnceRunsOnceAcrossConcurrentCallersInTwoRegions(t *testing.T) {
	regions := regionAddrs(t)
	clients := []*meridian.Idempotency{dial(t, regions["us-east"]).Idempotency(), dial(t, regions["eu-west"]).Idempotency()}
	for round := range 3 {
		key := newKey(t)
		var runs atomic.Int32
		command := func(ctx context.Context, token uint64) (meridian.StoredResponse, error) {
			runs.Add(1)
			time.Sleep(50 * time.Millisecond)
			return meridian.StoredResponse{Status: 200, Body: fmt.Appendf(nil, "token %d", token)}, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		const callers = 10
		responses := make([]meridian.StoredResponse, callers)
		errs := make([]error, callers)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				idem := clients[i%2]
				for {
					res, err := idem.Once(ctx, idemScope, key, order, command)
					if errors.Is(err, meridian.ErrIdempotencyInProgress) {
						time.Sleep(20 * time.Millisecond)
						continue
					}
					responses[i], errs[i] = res.Response, err
					return
				}
			})
		}
		wg.Wait()
		cancel()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, caller %d: %v", round, i, err)
			}
		}
		if n := runs.Load(); n != 1 {
			t.Fatalf("round %d: the command ran %d times, want 1", round, n)
		}
		for i, r := range responses {
			if !sameResponse(r, responses[0]) || !strings.HasPrefix(string(r.Body), "token ") {
				t.Fatalf("round %d: caller %d got %+v, caller 0 got %+v", round, i, r, responses[0])
			}
		}
	}
}

func TestIdempotencyInvalidArgumentsNameTheField(t *testing.T) {
	idem := usEast(t).Idempotency()
	ctx := context.Background()
	for _, tc := range []struct {
		name, scope, key, field string
		request                 []byte
		opts                    []meridian.BeginOption
	}{
		{"empty scope", "", "k", "scope", order, nil},
		{"scope with a space", "has space", "k", "scope", order, nil},
		{"scope too long", strings.Repeat("s", 129), "k", "scope", order, nil},
		{"empty key", idemScope, "", "key", order, nil},
		{"key too long", idemScope, strings.Repeat("k", 256), "key", order, nil},
		{"key with a tab", idemScope, "tab\there", "key", order, nil},
		{"duplicate JSON member", idemScope, "k", "payload", []byte(`{"a":1,"a":2}`), nil},
		{"lease above the maximum", idemScope, newKey(t), "lease", order, []meridian.BeginOption{meridian.Lease(time.Hour)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := idem.Begin(ctx, tc.scope, tc.key, tc.request, tc.opts...)
			var merr *meridian.Error
			if !errors.Is(err, meridian.ErrInvalidArgument) || !errors.As(err, &merr) {
				t.Fatalf("got %v, want ErrInvalidArgument", err)
			}
			if merr.Field != tc.field || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("field %q (%v), want %q", merr.Field, err, tc.field)
			}
		})
	}
	_, err := idem.Complete(ctx, idemScope, "k", 0, okResp)
	var merr *meridian.Error
	if !errors.As(err, &merr) || merr.Code != meridian.CodeInvalidArgument || merr.Field != "fencing_token" {
		t.Fatalf("Complete with token 0: %v, want ErrInvalidArgument on fencing_token", err)
	}
}
