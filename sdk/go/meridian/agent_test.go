package meridian_test

// These tests run against a real agent: scripts/test-sdks go starts a
// three-region sandbox and exports where its agents listen. Without it they
// fail; they never skip. With MERIDIAN_TEST_TLS_DIR set they connect with
// mutual TLS as that identity (internal/agenttest).
//
// They use keyspaces the sandbox must declare: accounts (global), carts
// (replicated, lww), stock (replicated, counter) and tags (replicated, set).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meridian-rt/meridian/sdk/go/internal/agenttest"
	"github.com/meridian-rt/meridian/sdk/go/meridian"
	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

const (
	globalKS  = "accounts"
	lwwKS     = "carts"
	counterKS = "stock"
	setKS     = "tags"
)

func requireEnv(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: this test needs a real Meridian agent. Run it with scripts/test-sdks go, "+
			"which starts a three-region sandbox and exports MERIDIAN_TEST_GRPC, MERIDIAN_TEST_HTTP and MERIDIAN_TEST_REGIONS", name)
	}
	return v
}

// regionAddrs parses MERIDIAN_TEST_REGIONS: "us-east=host:port,eu-west=...".
func regionAddrs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, part := range strings.Split(requireEnv(t, "MERIDIAN_TEST_REGIONS"), ",") {
		name, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || name == "" || addr == "" {
			t.Fatalf("MERIDIAN_TEST_REGIONS: %q is not region=host:port", part)
		}
		out[name] = addr
	}
	if len(out) < 2 {
		t.Fatalf("MERIDIAN_TEST_REGIONS names %d region(s); the tests need at least two", len(out))
	}
	return out
}

func dial(t *testing.T, addr string) *meridian.Client {
	t.Helper()
	c, err := meridian.Dial(context.Background(), addr, agenttest.DialOptions()...)
	if err != nil {
		t.Fatalf("Dial(%s): %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// usEast dials the agent of MERIDIAN_TEST_GRPC.
func usEast(t *testing.T) *meridian.Client {
	t.Helper()
	return dial(t, requireEnv(t, "MERIDIAN_TEST_GRPC"))
}

var keyUnsafe = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// newKey is a key no other test (or earlier run) uses.
func newKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "go/" + keyUnsafe.ReplaceAllString(t.Name(), "_") + "/" + hex.EncodeToString(b)
}

// check fails the test on err, with a hint when the sandbox lacks a keyspace.
func check(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var merr *meridian.Error
	if errors.As(err, &merr) && merr.Code == meridian.CodeInvalidArgument && merr.Field == "keyspace" {
		t.Fatalf("%s: %v\n(the sandbox must declare the keyspaces %s, %s, %s and %s; see the top of agent_test.go)",
			what, err, globalKS, lwwKS, counterKS, setKS)
	}
	t.Fatalf("%s: %v", what, err)
}

// eventually retries read (a bounded number of times) until it reports done:
// eventual and bounded reads may trail an acknowledged write.
func eventually(t *testing.T, what string, read func() (bool, error)) {
	t.Helper()
	var err error
	for range 600 {
		var done bool
		if done, err = read(); done {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s never happened (last error: %v)", what, err)
}

func TestHealthAndStatus(t *testing.T) {
	c := usEast(t)
	ctx := context.Background()
	h, err := c.Health(ctx)
	check(t, "Health", err)
	if h.Region != "us-east" || h.Region != c.Region() {
		t.Errorf("Health().Region = %q, Client.Region() = %q, want us-east", h.Region, c.Region())
	}
	if !h.Serving() {
		t.Errorf("agent does not serve: %v %v", h.Status, h.Reasons)
	}
	st, err := c.Status(ctx)
	check(t, "Status", err)
	if st.GetRegion() != "us-east" || len(st.GetPeers()) != 2 {
		t.Errorf("Status: region %q with %d peers, want us-east with 2", st.GetRegion(), len(st.GetPeers()))
	}
}

// The agent's HTTP/JSON API answers the same client identity as its gRPC
// API (MERIDIAN_TEST_HTTP is https:// when the sandbox serves mutual TLS).
func TestHTTPHealth(t *testing.T) {
	base := requireEnv(t, "MERIDIAN_TEST_HTTP")
	resp, err := agenttest.HTTPClient(t).Get(base + "/v1/health")
	if err != nil {
		t.Fatalf("GET %s/v1/health: %v", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var h meridianv1.HealthCheckResponse
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &h); err != nil {
		t.Fatalf("GET /v1/health: %d %s: %v", resp.StatusCode, body, err)
	}
	if resp.StatusCode != http.StatusOK || h.GetRegion() != "us-east" {
		t.Errorf("GET /v1/health: %d, region %q; want 200 from us-east", resp.StatusCode, h.GetRegion())
	}
}

func TestPutGetRoundTripAtEachConsistency(t *testing.T) {
	c := usEast(t)
	ctx := context.Background()
	key := newKey(t)
	value := []byte("100 \x00\xff") // values are bytes, not text
	w, err := c.State().Put(ctx, globalKS, key, value)
	check(t, "Put", err)
	if w.Revision == 0 || w.HLC.WallMs == 0 {
		t.Fatalf("Put = %+v, want a revision and an HLC", w)
	}

	same := func(r meridian.ReadResult) bool {
		return r.Revision == w.Revision && string(r.Value) == string(value) && r.HLC == w.HLC &&
			r.Region == "us-east" && r.Key == key
	}

	for _, tc := range []struct {
		name   string
		opts   []meridian.ReadOption
		served []meridian.Level
		bound  time.Duration
	}{
		{"default", nil, []meridian.Level{meridian.LevelStrong}, 0},
		{"strong", []meridian.ReadOption{meridian.Strong()}, []meridian.Level{meridian.LevelStrong}, 0},
		{"bounded", []meridian.ReadOption{meridian.Bounded(5 * time.Second)}, []meridian.Level{meridian.LevelBounded, meridian.LevelStrong}, 5 * time.Second},
		{"eventual", []meridian.ReadOption{meridian.Eventual()}, []meridian.Level{meridian.LevelEventual}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got meridian.ReadResult
			eventually(t, tc.name+" read of the write", func() (bool, error) {
				var err error
				got, err = c.State().Get(ctx, globalKS, key, tc.opts...)
				if err != nil && !errors.Is(err, meridian.ErrNotFound) {
					check(t, "Get", err)
				}
				return err == nil && same(got), err
			})
			if !slices.Contains(tc.served, got.Served) {
				t.Errorf("served %v, want one of %v", got.Served, tc.served)
			}
			if got.Served == meridian.LevelStrong && got.StalenessBound != 0 {
				t.Errorf("strong read with staleness bound %v", got.StalenessBound)
			}
			if tc.bound >= 0 && got.StalenessBound > tc.bound {
				t.Errorf("staleness bound %v, asked for at most %v", got.StalenessBound, tc.bound)
			}
		})
	}
}

func TestCompareAndSet(t *testing.T) {
	st := usEast(t).State()
	ctx := context.Background()
	key := newKey(t)
	w1, err := st.Put(ctx, globalKS, key, []byte("100"))
	check(t, "Put", err)
	w2, err := st.Put(ctx, globalKS, key, []byte("90"), meridian.IfRevision(w1.Revision))
	check(t, "Put at the current revision", err)
	if w2.Revision <= w1.Revision || w2.HLC.Compare(w1.HLC) <= 0 {
		t.Fatalf("second write %+v does not follow the first %+v", w2, w1)
	}

	_, err = st.Put(ctx, globalKS, key, []byte("80"), meridian.IfRevision(w1.Revision))
	if !errors.Is(err, meridian.ErrConflict) {
		t.Fatalf("Put at a stale revision: %v, want ErrConflict", err)
	}
	var merr *meridian.Error
	if !errors.As(err, &merr) || merr.CurrentRevision != w2.Revision {
		t.Fatalf("conflict %#v, want CurrentRevision %d", merr, w2.Revision)
	}
	if errors.Is(err, meridian.ErrNotFound) || errors.Is(err, meridian.ErrInvalidArgument) {
		t.Fatalf("a conflict matches other sentinels too: %v", err)
	}

	_, err = st.Delete(ctx, globalKS, key, meridian.IfRevision(w1.Revision))
	if !errors.Is(err, meridian.ErrConflict) {
		t.Fatalf("Delete at a stale revision: %v, want ErrConflict", err)
	}
	got, err := st.Get(ctx, globalKS, key)
	check(t, "Get", err)
	if string(got.Value) != "90" || got.Revision != w2.Revision {
		t.Fatalf("after the lost CAS: %q at %d, want \"90\" at %d", got.Value, got.Revision, w2.Revision)
	}
	_, err = st.Delete(ctx, globalKS, key, meridian.IfRevision(w2.Revision))
	check(t, "Delete at the current revision", err)
	if _, err := st.Get(ctx, globalKS, key); !errors.Is(err, meridian.ErrNotFound) {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
}

func TestPutManyAndGetManyHavePerItemResults(t *testing.T) {
	st := usEast(t).State()
	ctx := context.Background()
	base := newKey(t)
	first, err := st.Put(ctx, globalKS, base+"-cas", []byte("1"))
	check(t, "Put", err)
	_, err = st.Put(ctx, globalKS, base+"-cas", []byte("2"), meridian.IfRevision(first.Revision))
	check(t, "Put at the current revision", err)
	stale := first.Revision
	puts := []meridian.PutItem{
		{Keyspace: globalKS, Key: base + "-a", Value: []byte("a")},
		{Keyspace: globalKS, Key: base + "-cas", Value: []byte("lost"), IfRevision: &stale},
		{Keyspace: globalKS, Key: base + "-b", Value: []byte("b")},
	}
	ws, err := st.PutMany(ctx, puts)
	check(t, "PutMany", err)
	if len(ws) != 3 || ws[0].Err != nil || ws[2].Err != nil || ws[0].Revision == 0 {
		t.Fatalf("PutMany = %+v", ws)
	}
	var merr *meridian.Error
	if !errors.Is(ws[1].Err, meridian.ErrConflict) || !errors.As(ws[1].Err, &merr) || merr.CurrentRevision <= stale {
		t.Fatalf("the lost CAS in a batch: %v, want ErrConflict with a newer revision", ws[1].Err)
	}
	rs, err := st.GetMany(ctx, globalKS, []string{base + "-a", base + "-missing", base + "-b"}, meridian.Strong())
	check(t, "GetMany", err)
	if len(rs) != 3 || rs[0].Err != nil || string(rs[0].Value) != "a" || rs[0].Revision != ws[0].Revision ||
		string(rs[2].Value) != "b" || !errors.Is(rs[1].Err, meridian.ErrNotFound) {
		t.Fatalf("GetMany = %+v", rs)
	}
	// One bad Put refuses the batch, naming it, and writes nothing.
	_, err = st.PutMany(ctx, []meridian.PutItem{
		{Keyspace: globalKS, Key: base + "-c", Value: []byte("c")},
		{Keyspace: "no-such-keyspace", Key: "k", Value: []byte("x")},
	})
	if !errors.Is(err, meridian.ErrInvalidArgument) || !errors.As(err, &merr) || merr.Field != "puts[1].keyspace" {
		t.Fatalf("a bad Put in a batch: %v, want ErrInvalidArgument on puts[1].keyspace", err)
	}
	if _, err := st.Get(ctx, globalKS, base+"-c"); !errors.Is(err, meridian.ErrNotFound) {
		t.Fatalf("Get after the refused batch: %v, want ErrNotFound", err)
	}
}

func TestCreateOnExistingKeyConflicts(t *testing.T) {
	st := usEast(t).State()
	ctx := context.Background()
	key := newKey(t)
	w, err := st.Create(ctx, globalKS, key, []byte("first"))
	check(t, "Create", err)
	_, err = st.Create(ctx, globalKS, key, []byte("second"))
	var merr *meridian.Error
	if !errors.Is(err, meridian.ErrConflict) || !errors.As(err, &merr) {
		t.Fatalf("second Create: %v, want ErrConflict", err)
	}
	if merr.CurrentRevision != w.Revision {
		t.Fatalf("conflict names revision %d, want %d", merr.CurrentRevision, w.Revision)
	}
}

func TestGetMissingKeyIsNotFound(t *testing.T) {
	st := usEast(t).State()
	_, err := st.Get(context.Background(), globalKS, newKey(t))
	if !errors.Is(err, meridian.ErrNotFound) {
		t.Fatalf("Get of a missing key: %v, want ErrNotFound", err)
	}
	var merr *meridian.Error
	if !errors.As(err, &merr) || merr.Code != meridian.CodeNotFound || merr.Message == "" {
		t.Fatalf("error %#v, want an *Error with code NOT_FOUND and a message", err)
	}
}

func TestInvalidArgumentsNameTheField(t *testing.T) {
	st := usEast(t).State()
	ctx := context.Background()
	for _, tc := range []struct {
		name, field, rule string
		call              func() error
	}{
		{"bad characters", "key", "may only contain", func() error {
			_, err := st.Put(ctx, globalKS, "no spaces!", []byte("x"))
			return err
		}},
		{"too long", "key", "at most 1024 bytes", func() error {
			_, err := st.Get(ctx, globalKS, strings.Repeat("k", 1025))
			return err
		}},
		{"unknown keyspace", "keyspace", "unknown keyspace", func() error {
			_, err := st.Get(ctx, "no-such-keyspace", "k")
			return err
		}},
		{"bounded without staleness", "consistency.max_staleness", "above zero", func() error {
			_, err := st.Get(ctx, globalKS, "k", meridian.Bounded(0))
			return err
		}},
		{"strong read of a replicated keyspace", "consistency.level", "BOUNDED or EVENTUAL", func() error {
			_, err := st.Get(ctx, lwwKS, "k", meridian.Strong())
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var merr *meridian.Error
			if !errors.Is(err, meridian.ErrInvalidArgument) || !errors.As(err, &merr) {
				t.Fatalf("got %v, want ErrInvalidArgument", err)
			}
			if merr.Field != tc.field || !strings.Contains(merr.Rule, tc.rule) {
				t.Fatalf("field %q rule %q, want field %q and a rule containing %q", merr.Field, merr.Rule, tc.field, tc.rule)
			}
			if len(merr.Violations) == 0 || merr.Violations[0].Field != tc.field {
				t.Fatalf("violations %+v, want the first to name %q", merr.Violations, tc.field)
			}
		})
	}
}

func TestStrongReadInEveryRegionSeesAnAcknowledgedWrite(t *testing.T) {
	regions := regionAddrs(t)
	ctx := context.Background()
	writer := dial(t, regions["us-east"])
	key := newKey(t)
	w, err := writer.State().Put(ctx, globalKS, key, []byte("from us-east"))
	check(t, "Put in us-east", err)
	for name, addr := range regions {
		// Right after the acknowledgement: no retry, a strong read must see it.
		got, err := dial(t, addr).State().Get(ctx, globalKS, key, meridian.Strong())
		check(t, "strong Get in "+name, err)
		if got.Revision != w.Revision || string(got.Value) != "from us-east" || got.Served != meridian.LevelStrong {
			t.Errorf("%s read %q at revision %d (served %v), want %q at %d, strong",
				name, got.Value, got.Revision, got.Served, "from us-east", w.Revision)
		}
	}
}

func TestReplicatedLastWriterWins(t *testing.T) {
	st := usEast(t).State()
	ctx := context.Background()
	key := newKey(t)
	_, err := st.Put(ctx, lwwKS, key, []byte("one"))
	check(t, "Put", err)
	w, err := st.Put(ctx, lwwKS, key, []byte("two"))
	check(t, "Put", err)
	// The writing agent reads its own writes.
	got, err := st.Get(ctx, lwwKS, key)
	check(t, "Get", err)
	if string(got.Value) != "two" || got.HLC != w.HLC || got.Served != meridian.LevelEventual {
		t.Fatalf("Get = %q (hlc %v, served %v), want \"two\" (hlc %v), eventual", got.Value, got.HLC, got.Served, w.HLC)
	}
}

func TestCounterIncrements(t *testing.T) {
	st := usEast(t).State()
	ctx := context.Background()
	key := newKey(t)
	for _, d := range []int64{5, 10, -2} {
		_, err := st.Increment(ctx, counterKS, key, d)
		check(t, fmt.Sprintf("Increment(%d)", d), err)
	}
	got, err := st.Get(ctx, counterKS, key, meridian.Eventual())
	check(t, "Get", err)
	if got.Counter != 13 || len(got.Value) != 0 {
		t.Fatalf("counter = %d (value %q), want 13", got.Counter, got.Value)
	}
	if _, err := st.Increment(ctx, globalKS, key, 1); !errors.Is(err, meridian.ErrInvalidArgument) {
		t.Fatalf("Increment on a global keyspace: %v, want ErrInvalidArgument", err)
	}
}

func TestSetAddRemove(t *testing.T) {
	st := usEast(t).State()
	ctx := context.Background()
	key := newKey(t)
	_, err := st.SetAdd(ctx, setKS, key, "red", "green", "blue")
	check(t, "SetAdd", err)
	_, err = st.SetRemove(ctx, setKS, key, "green")
	check(t, "SetRemove", err)
	_, err = st.SetAdd(ctx, setKS, key, "amber")
	check(t, "SetAdd", err)
	got, err := st.Get(ctx, setKS, key)
	check(t, "Get", err)
	if want := []string{"amber", "blue", "red"}; !slices.Equal(got.Elements, want) {
		t.Fatalf("elements %q, want %q", got.Elements, want)
	}
}

func TestScan(t *testing.T) {
	st := usEast(t).State()
	ctx := context.Background()
	prefix := newKey(t) + "/"
	var want []string
	for i := range 5 {
		key := fmt.Sprintf("%sk%d", prefix, i)
		_, err := st.Put(ctx, globalKS, key, []byte{byte('a' + i)})
		check(t, "Put", err)
		want = append(want, key)
	}

	page, err := st.ScanPage(ctx, globalKS, prefix, meridian.Limit(2), meridian.Strong())
	check(t, "ScanPage", err)
	if len(page.Entries) != 2 || page.NextPageToken == "" || page.Served != meridian.LevelStrong {
		t.Fatalf("first page: %d entries, next %q, served %v; want 2, a token, strong",
			len(page.Entries), page.NextPageToken, page.Served)
	}

	var got []string
	for e, err := range st.Scan(ctx, globalKS, prefix, meridian.Limit(2), meridian.Strong()) {
		check(t, "Scan", err)
		if len(e.Value) != 1 || e.Value[0] != byte('a'+len(got)) {
			t.Errorf("%s has value %q", e.Key, e.Value)
		}
		got = append(got, e.Key)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Scan gave %q, want %q", got, want)
	}
}

func TestWatchSeesPutsAndDeletes(t *testing.T) {
	st := usEast(t).State()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	key := newKey(t)
	w1, err := st.Put(ctx, globalKS, key, []byte("v1"))
	check(t, "Put", err)

	// From w1 on: the first event is w1 replayed, so the watch is known to be
	// subscribed before the next writes are made.
	var seen []meridian.WatchEvent
	var w2, w3 meridian.WriteResult
	for ev, err := range st.Watch(ctx, globalKS, key, meridian.FromRevision(w1.Revision)) {
		check(t, "Watch", err)
		if ev.Entry.Key != key {
			continue
		}
		seen = append(seen, ev)
		switch len(seen) {
		case 1:
			w2, err = st.Put(ctx, globalKS, key, []byte("v2"))
			check(t, "Put", err)
		case 2:
			w3, err = st.Delete(ctx, globalKS, key)
			check(t, "Delete", err)
		}
		if len(seen) == 3 {
			break
		}
	}
	want := []struct {
		kind  meridian.EventKind
		rev   uint64
		value string
	}{{meridian.EventPut, w1.Revision, "v1"}, {meridian.EventPut, w2.Revision, "v2"}, {meridian.EventDelete, w3.Revision, ""}}
	for i, ev := range seen {
		if ev.Kind != want[i].kind || ev.Entry.Revision != want[i].rev || string(ev.Entry.Value) != want[i].value {
			t.Errorf("event %d: %v rev %d %q, want %v rev %d %q", i, ev.Kind, ev.Entry.Revision, ev.Entry.Value,
				want[i].kind, want[i].rev, want[i].value)
		}
	}
}

func TestContextDeadlineIsHonoured(t *testing.T) {
	st := usEast(t).State()
	// A strong read of a global keyspace commits a barrier through a quorum
	// of regions, at least one WAN round trip (70 ms in the sandbox), so it
	// can't beat a 1 ms deadline however fast the machine is.
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	_, err := st.Get(ctx, globalKS, newKey(t), meridian.Strong())
	if !errors.Is(err, meridian.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with a 1ms deadline: %v, want ErrDeadlineExceeded (and context.DeadlineExceeded)", err)
	}
	if errors.Is(err, meridian.ErrUnavailable) {
		t.Fatalf("a deadline error also matches ErrUnavailable: %v", err)
	}

	// A stream too: a watch that sees nothing ends when its deadline passes.
	wctx, wcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer wcancel()
	for ev, err := range st.Watch(wctx, globalKS, newKey(t)) {
		if err == nil {
			t.Fatalf("unexpected event %+v", ev)
		}
		if !errors.Is(err, meridian.ErrDeadlineExceeded) {
			t.Fatalf("watch past its deadline: %v, want ErrDeadlineExceeded", err)
		}
	}
}

func TestCanceledContext(t *testing.T) {
	st := usEast(t).State()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := st.Put(ctx, globalKS, newKey(t), []byte("x"))
	if !errors.Is(err, meridian.ErrCanceled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a canceled context: %v, want ErrCanceled (and context.Canceled)", err)
	}
}

// traceparentOf parses "00-<trace id>-<span id>-<flags>".
func traceparentOf(t *testing.T, tp string) (traceID, spanID string) {
	t.Helper()
	parts := strings.Split(tp, "-")
	if len(parts) != 4 || parts[0] != "00" || len(parts[1]) != 32 || len(parts[2]) != 16 {
		t.Fatalf("agent returned traceparent %q, not a W3C traceparent", tp)
	}
	return parts[1], parts[2]
}

func TestTraceContextIsPropagated(t *testing.T) {
	c := usEast(t)
	var tid trace.TraceID
	var sid trace.SpanID
	_, _ = rand.Read(tid[:])
	_, _ = rand.Read(sid[:])
	caller := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	ctx := trace.ContextWithSpanContext(context.Background(), caller)

	// A successful call, through the Client's connection: the agent's span
	// is in the caller's trace, with a span id of its own.
	var trailer metadata.MD
	_, err := meridianv1.NewStateServiceClient(c.Conn()).Put(ctx,
		&meridianv1.PutRequest{Keyspace: globalKS, Key: newKey(t), Value: []byte("x")}, grpc.Trailer(&trailer))
	check(t, "Put", err)
	tps := trailer.Get("traceparent")
	if len(tps) != 1 {
		t.Fatalf("trailer %v has no traceparent", trailer)
	}
	gotTrace, gotSpan := traceparentOf(t, tps[0])
	if gotTrace != tid.String() {
		t.Fatalf("agent span in trace %s, want the caller's %s", gotTrace, tid)
	}
	if gotSpan == sid.String() {
		t.Fatalf("agent reused the caller's span id %s", gotSpan)
	}

	// A failed call through the wrapper: the error carries the agent's span.
	_, err = c.State().Get(ctx, globalKS, newKey(t))
	var merr *meridian.Error
	if !errors.As(err, &merr) || merr.Code != meridian.CodeNotFound {
		t.Fatalf("Get of a missing key: %v, want NOT_FOUND", err)
	}
	if got, _ := traceparentOf(t, merr.TraceParent); got != tid.String() {
		t.Fatalf("failed call's agent span in trace %s, want %s", got, tid)
	}

	// Without a span in the context, the agent starts a trace of its own.
	_, err = c.State().Get(context.Background(), globalKS, newKey(t))
	if !errors.As(err, &merr) {
		t.Fatalf("Get of a missing key: %v", err)
	}
	if got, _ := traceparentOf(t, merr.TraceParent); got == tid.String() {
		t.Fatalf("a call without a span joined trace %s", got)
	}
}

func TestDialWithoutAgent(t *testing.T) {
	// Port 1 on loopback: nothing listens there.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c, err := meridian.Dial(ctx, "127.0.0.1:1")
	if err == nil {
		_ = c.Close()
		t.Fatal("Dial succeeded with no agent")
	}
	if !errors.Is(err, meridian.ErrDeadlineExceeded) && !errors.Is(err, meridian.ErrUnavailable) {
		t.Fatalf("Dial with no agent: %v, want ErrDeadlineExceeded or ErrUnavailable", err)
	}
}
