package meridian_test

// The Event API against the real sandbox (see agent_test.go). Topics, groups,
// namespaces and event ids are unique per test and run: event ids are the
// dedup identity across topics, and groups keep their position.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

// uniqueName is a topic token, group or namespace no other test or run uses.
func uniqueName(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + "-" + hex.EncodeToString(b)
}

// regionClient dials one region of MERIDIAN_TEST_REGIONS.
func regionClient(t *testing.T, region string) *meridian.Client {
	t.Helper()
	addr, ok := regionAddrs(t)[region]
	if !ok {
		t.Fatalf("MERIDIAN_TEST_REGIONS has no %s", region)
	}
	c := dial(t, addr)
	if c.Region() != region {
		t.Fatalf("the agent at %s is in %s, want %s", addr, c.Region(), region)
	}
	return c
}

func publish(t *testing.T, c *meridian.Client, topic, key, payload, eventID string, opts ...meridian.PublishOption) meridian.PublishResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Events().Publish(ctx, topic, key, []byte(payload), eventID, opts...)
	check(t, "Publish "+eventID, err)
	return res
}

// consumer runs Subscribe in the background and records every delivery its
// handler saw.
type consumer struct {
	mu     sync.Mutex
	got    []meridian.Delivery
	cancel context.CancelFunc
	done   chan struct{} // closed when Subscribe returned err
	err    error
}

// consume subscribes; handle decides each delivery's fate (nil: ack all).
func consume(t *testing.T, c *meridian.Client, group string, source meridian.Source,
	handle func(ctx context.Context, d meridian.Delivery) error, opts ...meridian.SubscribeOption) *consumer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cs := &consumer{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(cs.done)
		cs.err = c.Events().Subscribe(ctx, group, source, func(ctx context.Context, d meridian.Delivery) error {
			cs.mu.Lock()
			cs.got = append(cs.got, d)
			cs.mu.Unlock()
			if handle != nil {
				return handle(ctx, d)
			}
			return nil
		}, opts...)
	}()
	t.Cleanup(func() { _ = cs.stop(t) })
	return cs
}

// deliveries is a copy of what the handler saw so far.
func (cs *consumer) deliveries() []meridian.Delivery {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return slices.Clone(cs.got)
}

// stop ends Subscribe gracefully and returns its result.
func (cs *consumer) stop(t *testing.T) error {
	t.Helper()
	cs.cancel()
	select {
	case <-cs.done:
		return cs.err
	case <-time.After(15 * time.Second):
		t.Fatal("Subscribe did not return within 15 s of its context being canceled")
		return nil
	}
}

// waitFor polls the consumer until want holds of its deliveries, failing
// early if Subscribe returned.
func (cs *consumer) waitFor(t *testing.T, what string, timeout time.Duration, want func([]meridian.Delivery) bool) []meridian.Delivery {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := cs.deliveries()
		if want(got) {
			return got
		}
		select {
		case <-cs.done:
			t.Fatalf("%s: Subscribe returned %v", what, cs.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened within %v; deliveries: %s", what, timeout, describe(got))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func describe(ds []meridian.Delivery) string {
	out := "["
	for i, d := range ds {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%s#%d", d.Event.EventID, d.Attempt)
	}
	return out + "]"
}

func ofEvent(ds []meridian.Delivery, eventID string) []meridian.Delivery {
	var out []meridian.Delivery
	for _, d := range ds {
		if d.Event.EventID == eventID {
			out = append(out, d)
		}
	}
	return out
}

func attempts(ds []meridian.Delivery) []uint32 {
	out := make([]uint32, len(ds))
	for i, d := range ds {
		out[i] = d.Attempt
	}
	return out
}

// recv takes the next delivery of a low-level subscription.
func recv(t *testing.T, sub *meridian.Subscription, timeout time.Duration) meridian.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d, err := sub.Recv(ctx)
	check(t, "Recv", err)
	return d
}

// nothingMore fails if sub gets a delivery within wait.
func nothingMore(t *testing.T, sub *meridian.Subscription, wait time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	d, err := sub.Recv(ctx)
	if err == nil {
		t.Fatalf("unexpected delivery %s (attempt %d)", d.Event.EventID, d.Attempt)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv: %v, want its deadline to pass", err)
	}
}

func TestEventsPublishedInOneRegionReachAGroupInAnother(t *testing.T) {
	us, eu := regionClient(t, "us-east"), regionClient(t, "eu-west")
	topic := uniqueName(t, "go-orders")
	eventID := topic + "-1"

	// Publish inside a span: the event carries its trace, and the
	// consumer's handler continues it.
	var tid trace.TraceID
	var sid trace.SpanID
	_, _ = rand.Read(tid[:])
	_, _ = rand.Read(sid[:])
	ctx := trace.ContextWithSpanContext(context.Background(),
		trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	res, err := us.Events().Publish(ctx, topic+".placed", "o-1", []byte(`{"total":42}`), eventID,
		meridian.Headers(map[string]string{"x-tenant": "acme"}))
	check(t, "Publish", err)
	if res.Region != "us-east" || res.Sequence == 0 || res.Duplicate {
		t.Fatalf("Publish = %+v, want a new event in us-east", res)
	}
	// A retry is a duplicate, not a second event.
	again, err := us.Events().Publish(ctx, topic+".placed", "o-1", []byte(`{"total":42}`), eventID)
	check(t, "Publish again", err)
	if !again.Duplicate {
		t.Fatalf("republished event id: %+v, want Duplicate", again)
	}

	var handlerTrace trace.SpanContext
	var mu sync.Mutex
	cs := consume(t, eu, uniqueName(t, "billing"), meridian.Topic(topic+".*"),
		func(ctx context.Context, d meridian.Delivery) error {
			mu.Lock()
			handlerTrace = trace.SpanContextFromContext(ctx)
			mu.Unlock()
			return nil
		}, meridian.StartSequence(1))
	// Right after the sandbox starts, a region's aggregate stream can take a
	// while to start sourcing another region's stream (JetStream retries a
	// source whose stream did not exist yet with a backoff): allow for it.
	start := time.Now()
	got := cs.waitFor(t, "eu-west's group got the event", 2*time.Minute,
		func(ds []meridian.Delivery) bool { return len(ds) >= 1 })
	t.Logf("us-east -> eu-west delivery after %v", time.Since(start).Round(time.Millisecond))
	d := got[0]
	e := d.Event
	if e.Topic != topic+".placed" || e.Key != "o-1" || string(e.Payload) != `{"total":42}` || e.EventID != eventID {
		t.Errorf("event = %+v", e)
	}
	if e.OriginRegion != "us-east" || e.OriginSequence != res.Sequence {
		t.Errorf("origin = %s #%d, want us-east #%d", e.OriginRegion, e.OriginSequence, res.Sequence)
	}
	if e.Headers["x-tenant"] != "acme" {
		t.Errorf("headers = %v, want x-tenant: acme", e.Headers)
	}
	if e.PublishedAt.IsZero() || time.Since(e.PublishedAt) > time.Minute || time.Since(e.PublishedAt) < -time.Minute {
		t.Errorf("PublishedAt = %v, want about now", e.PublishedAt)
	}
	if d.Attempt != 1 || d.Sequence == 0 || d.ID == 0 {
		t.Errorf("delivery attempt %d, sequence %d, id %d", d.Attempt, d.Sequence, d.ID)
	}
	if tp, _ := traceparentOf(t, e.Headers["traceparent"]); tp != tid.String() {
		t.Errorf("event traceparent %q, want trace %s", e.Headers["traceparent"], tid)
	}
	mu.Lock()
	if handlerTrace.TraceID() != tid {
		t.Errorf("handler ctx in trace %s, want the publisher's %s", handlerTrace.TraceID(), tid)
	}
	mu.Unlock()
	time.Sleep(time.Second)
	if n := len(cs.deliveries()); n != 1 {
		t.Errorf("%d deliveries, want 1: %s", n, describe(cs.deliveries()))
	}
	if err := cs.stop(t); err != nil {
		t.Errorf("Subscribe after its context was canceled: %v, want nil", err)
	}
}

func TestEventsPublishBatchStoresInOrderAndRecognisesARetry(t *testing.T) {
	c := usEast(t)
	topic := uniqueName(t, "batch")
	batch := make([]meridian.OutgoingEvent, 40)
	for i := range batch {
		batch[i] = meridian.OutgoingEvent{Topic: topic, Key: fmt.Sprintf("k-%d", i%3),
			Payload: []byte(fmt.Sprint(i)), EventID: fmt.Sprintf("%s-%d", topic, i)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := c.Events().PublishBatch(ctx, batch)
	check(t, "PublishBatch", err)
	if len(got) != len(batch) {
		t.Fatalf("%d results for %d events", len(got), len(batch))
	}
	for i, r := range got {
		if r.Duplicate || r.Region != "us-east" || (i > 0 && r.Sequence != got[0].Sequence+uint64(i)) {
			t.Fatalf("result %d: %+v (first %+v)", i, r, got[0])
		}
	}
	// The caller's retry of the whole batch stores nothing new.
	again, err := c.Events().PublishBatch(ctx, batch)
	check(t, "PublishBatch again", err)
	for i, r := range again {
		if !r.Duplicate || r.Sequence != got[i].Sequence {
			t.Fatalf("retry %d: %+v, want duplicate of %+v", i, r, got[i])
		}
	}
	// A group reading the topic gets each event once, in order per key.
	cs := consume(t, c, uniqueName(t, "g"), meridian.Topic(topic), nil, meridian.StartSequence(1))
	ds := cs.waitFor(t, "every event of the batch delivered", time.Minute,
		func(ds []meridian.Delivery) bool { return len(ds) >= len(batch) })
	last := map[string]int{}
	for _, d := range ds {
		var n int
		if _, err := fmt.Sscan(string(d.Event.Payload), &n); err != nil {
			t.Fatalf("payload %q: %v", d.Event.Payload, err)
		}
		if prev, ok := last[d.Event.Key]; ok && n <= prev {
			t.Fatalf("key %s: event %d after %d; deliveries: %s", d.Event.Key, n, prev, describe(ds))
		}
		last[d.Event.Key] = n
	}
	if len(ds) != len(batch) {
		t.Fatalf("%d deliveries of %d events: %s", len(ds), len(batch), describe(ds))
	}
}

func TestEventsHandlerErrorIsRedelivered(t *testing.T) {
	c := usEast(t)
	topic := uniqueName(t, "go-retry")
	publish(t, c, topic, "k", "x", topic+"-1")
	cs := consume(t, c, uniqueName(t, "g"), meridian.Topic(topic),
		func(ctx context.Context, d meridian.Delivery) error {
			if d.Attempt == 1 {
				return errors.New("transient")
			}
			return nil
		}, meridian.StartSequence(1), meridian.NackDelay(50*time.Millisecond))
	got := cs.waitFor(t, "a redelivery", 30*time.Second,
		func(ds []meridian.Delivery) bool { return len(ds) >= 2 })
	time.Sleep(time.Second) // acked on attempt 2: nothing more
	got = cs.deliveries()
	if !slices.Equal(attempts(got), []uint32{1, 2}) || got[1].Event.EventID != topic+"-1" {
		t.Fatalf("deliveries %s, want attempts 1 then 2 of %s-1", describe(got), topic)
	}
	if got[0].ID == got[1].ID {
		t.Errorf("the redelivery reused delivery id %d", got[0].ID)
	}
	if err := cs.stop(t); err != nil {
		t.Errorf("Subscribe: %v", err)
	}
}

func TestEventsPoisonEventIsDeadLetteredAfterMaxDeliveries(t *testing.T) {
	c := usEast(t)
	topic := uniqueName(t, "go-poison")
	group := uniqueName(t, "parser")
	poison, fine := topic+"-poison", topic+"-fine"
	publish(t, c, topic, "k", "cannot parse", poison)
	publish(t, c, topic, "k", "ok", fine)
	cs := consume(t, c, group, meridian.Topic(topic),
		func(ctx context.Context, d meridian.Delivery) error {
			if d.Event.EventID == poison {
				return errors.New("cannot parse")
			}
			return nil
		}, meridian.StartSequence(1), meridian.MaxDeliveries(3)) // default backoff: 0.1 s, 0.2 s
	cs.waitFor(t, "three attempts of the poison event", 30*time.Second,
		func(ds []meridian.Delivery) bool { return len(ofEvent(ds, poison)) >= 3 })
	time.Sleep(2 * time.Second) // a fourth attempt would come after 0.4 s
	got := cs.deliveries()
	if a := attempts(ofEvent(got, poison)); !slices.Equal(a, []uint32{1, 2, 3}) {
		t.Errorf("poison event attempts %v, want [1 2 3]", a)
	}
	if a := attempts(ofEvent(got, fine)); !slices.Equal(a, []uint32{1}) {
		t.Errorf("fine event attempts %v, want [1]", a)
	}
	if err := cs.stop(t); err != nil {
		t.Errorf("Subscribe: %v", err)
	}
	// It is gone from the group: a new subscriber does not get it either.
	sub, err := c.Events().Open(context.Background(), group, meridian.Topic(topic))
	check(t, "Open", err)
	nothingMore(t, sub, 1500*time.Millisecond)
	if err := sub.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestEventsSameEventIDInTwoRegionsIsDeliveredOnce(t *testing.T) {
	us, eu := regionClient(t, "us-east"), regionClient(t, "eu-west")
	topic := uniqueName(t, "go-dup")
	// A producer retried in another region after a timeout: same event id.
	retried, after := topic+"-retried", topic+"-after"
	publish(t, us, topic, "k", "x", retried)
	publish(t, eu, topic, "k", "x", retried)
	publish(t, eu, topic, "k", "y", after)
	group := uniqueName(t, "billing")
	for region, c := range map[string]*meridian.Client{"us-east": us, "eu-west": eu} {
		cs := consume(t, c, group, meridian.Topic(topic), nil, meridian.StartSequence(1))
		// Cross-region: allow for a slow start of sourcing (see the first test).
		cs.waitFor(t, region+" saw both events", 2*time.Minute, func(ds []meridian.Delivery) bool {
			return len(ofEvent(ds, retried)) > 0 && len(ofEvent(ds, after)) > 0
		})
		time.Sleep(2 * time.Second) // both copies have long been delivered or absorbed
		if got := cs.deliveries(); len(got) != 2 {
			t.Errorf("%s's group: deliveries %s, want each event once", region, describe(got))
		}
		if err := cs.stop(t); err != nil {
			t.Errorf("%s: Subscribe: %v", region, err)
		}
	}
}

func TestEventsKeyspaceChangeFeedDeliversAPut(t *testing.T) {
	c := usEast(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Open returns once the group exists, so it gets the put below.
	sub, err := c.Events().Open(ctx, uniqueName(t, "feed"), meridian.Keyspace(lwwKS))
	check(t, "Open", err)
	key := newKey(t)
	_, err = c.State().Put(ctx, lwwKS, key, []byte("apples"))
	check(t, "Put", err)
	var d meridian.Delivery
	for {
		d = recv(t, sub, 30*time.Second)
		check(t, "Ack", sub.Ack(d))
		if d.Event.Key == key {
			break
		}
	}
	e := d.Event
	if e.Topic != "_state."+lwwKS || e.Headers["operation"] != "put" || e.OriginRegion != "us-east" {
		t.Errorf("change event = topic %q, headers %v, origin %q; want _state.%s, a put, from us-east",
			e.Topic, e.Headers, e.OriginRegion, lwwKS)
	}
	if e.Headers["hlc"] == "" || e.PublishedAt.IsZero() || e.EventID == "" || len(e.Payload) == 0 {
		t.Errorf("change event %+v lacks its hlc, time, id or state", e)
	}
	if err := sub.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := sub.Recv(ctx); !errors.Is(err, meridian.ErrCanceled) {
		t.Errorf("Recv after Close: %v, want ErrCanceled", err)
	}
}

func TestEventsInvalidateReachesSubscribersInEveryRegion(t *testing.T) {
	us, eu := regionClient(t, "us-east"), regionClient(t, "eu-west")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := uniqueName(t, "go-products")
	sub, err := eu.Events().Open(ctx, uniqueName(t, "cache"), meridian.Topic(meridian.InvalidateTopicPrefix+ns))
	check(t, "Open", err)
	defer sub.Close()
	seq, err := us.Events().Invalidate(ctx, ns, []string{"sku-1", "sku-2"})
	check(t, "Invalidate", err)
	if seq == 0 {
		t.Errorf("Invalidate returned sequence 0")
	}
	d := recv(t, sub, 2*time.Minute) // cross-region: see the first test
	check(t, "Ack", sub.Ack(d))
	var body struct {
		Namespace string   `json:"namespace"`
		Keys      []string `json:"keys"`
	}
	if err := json.Unmarshal(d.Event.Payload, &body); err != nil {
		t.Fatalf("invalidation payload %q: %v", d.Event.Payload, err)
	}
	if body.Namespace != ns || !slices.Equal(body.Keys, []string{"sku-1", "sku-2"}) {
		t.Errorf("invalidation = %+v, want %s [sku-1 sku-2]", body, ns)
	}
	if d.Event.Topic != "_invalidate."+ns || d.Event.OriginRegion != "us-east" {
		t.Errorf("invalidation topic %q from %q", d.Event.Topic, d.Event.OriginRegion)
	}
}

func TestEventsGracefulStopAppliesAcks(t *testing.T) {
	c := usEast(t)
	topic := uniqueName(t, "go-stop")
	group := uniqueName(t, "g")
	publish(t, c, topic, "k", "1", topic+"-1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var seen []string
	err := c.Events().Subscribe(ctx, group, meridian.Topic(topic),
		func(_ context.Context, d meridian.Delivery) error {
			seen = append(seen, d.Event.EventID)
			cancel() // stop right after this one: its ack must still be applied
			return nil
		}, meridian.StartSequence(1))
	if err != nil {
		t.Fatalf("Subscribe after its context was canceled: %v, want nil", err)
	}
	if !slices.Equal(seen, []string{topic + "-1"}) {
		t.Fatalf("handled %v", seen)
	}
	// The group resumes after the acked event.
	sub, err := c.Events().Open(context.Background(), group, meridian.Topic(topic))
	check(t, "Open", err)
	defer sub.Close()
	publish(t, c, topic, "k", "2", topic+"-2")
	d := recv(t, sub, 30*time.Second)
	if d.Event.EventID != topic+"-2" || d.Attempt != 1 {
		t.Fatalf("next delivery %s attempt %d, want %s-2 attempt 1", d.Event.EventID, d.Attempt, topic)
	}
	check(t, "Ack", sub.Ack(d))

	// Replay moves the group back: both events again.
	check(t, "Close", sub.Close())
	check(t, "Replay", c.Events().Replay(context.Background(), group, meridian.Topic(topic), meridian.StartTime(time.Now().Add(-time.Hour))))
	sub2, err := c.Events().Open(context.Background(), group, meridian.Topic(topic))
	check(t, "Open after Replay", err)
	defer sub2.Close()
	var again []string
	for range 2 {
		d := recv(t, sub2, 30*time.Second)
		again = append(again, d.Event.EventID)
		check(t, "Ack", sub2.Ack(d))
	}
	if !slices.Equal(again, []string{topic + "-1", topic + "-2"}) {
		t.Errorf("after Replay: %v, want both events in order", again)
	}
}

func TestEventsInvalidArgumentsNameTheField(t *testing.T) {
	ev := usEast(t).Events()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	noop := func(context.Context, meridian.Delivery) error { return nil }
	for _, tc := range []struct {
		what  string
		field string
		call  func() error
	}{
		{"bad topic", "topic", func() error {
			_, err := ev.Publish(ctx, "Bad Topic", "k", []byte("x"), uniqueName(t, "e"))
			return err
		}},
		{"reserved topic", "topic", func() error {
			_, err := ev.Publish(ctx, "_reserved", "k", []byte("x"), uniqueName(t, "e"))
			return err
		}},
		{"missing event id", "event_id", func() error {
			_, err := ev.Publish(ctx, "ok", "k", []byte("x"), "")
			return err
		}},
		{"reserved header", "headers", func() error {
			_, err := ev.Publish(ctx, "ok", "k", []byte("x"), uniqueName(t, "e"),
				meridian.Headers(map[string]string{"Nats-Msg-Id": "sneaky"}))
			return err
		}},
		{"bad group", "group", func() error {
			return ev.Subscribe(ctx, "Bad Group", meridian.Topic("x"), noop)
		}},
		{"bad topic filter", "topic_filter", func() error {
			return ev.Subscribe(ctx, "g", meridian.Topic("a.>.b"), noop)
		}},
		{"unknown keyspace", "keyspace", func() error {
			_, err := ev.Open(ctx, "g", meridian.Keyspace("nope"))
			return err
		}},
		{"start sequence 0", "start.sequence", func() error {
			_, err := ev.Open(ctx, "g", meridian.Topic("x"), meridian.StartSequence(0))
			return err
		}},
		{"max deliveries", "max_deliveries", func() error {
			_, err := ev.Open(ctx, "g", meridian.Topic("x"), meridian.MaxDeliveries(1000))
			return err
		}},
		{"ack wait", "ack_wait", func() error {
			_, err := ev.Open(ctx, "g", meridian.Topic("x"), meridian.AckWait(time.Millisecond))
			return err
		}},
		{"bad event in a batch", "events[1].key", func() error {
			_, err := ev.PublishBatch(ctx, []meridian.OutgoingEvent{
				{Topic: "ok", Key: "k", EventID: uniqueName(t, "e")},
				{Topic: "ok", Key: "", EventID: uniqueName(t, "e")},
			})
			return err
		}},
		{"empty batch", "events", func() error {
			_, err := ev.PublishBatch(ctx, nil)
			return err
		}},
		{"empty namespace", "namespace", func() error {
			_, err := ev.Invalidate(ctx, "", []string{"k"})
			return err
		}},
	} {
		err := tc.call()
		var merr *meridian.Error
		if !errors.Is(err, meridian.ErrInvalidArgument) || !errors.As(err, &merr) {
			t.Errorf("%s: %v, want ErrInvalidArgument", tc.what, err)
			continue
		}
		if merr.Field != tc.field {
			t.Errorf("%s: field %q (%v), want %q", tc.what, merr.Field, err, tc.field)
		}
	}
}
