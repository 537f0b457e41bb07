package meridian_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

// These examples need a running agent (./scripts/demo starts one per
// region), so they are compiled but not run.

func Example() {
	ctx := context.Background()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	st := c.State()
	w, err := st.Put(ctx, "accounts", "alice", []byte("100"))
	if err != nil {
		log.Fatal(err)
	}
	// Compare-and-set: only if nobody wrote alice since.
	_, err = st.Put(ctx, "accounts", "alice", []byte("90"), meridian.IfRevision(w.Revision))
	var merr *meridian.Error
	if errors.As(err, &merr) && merr.Code == meridian.CodeConflict {
		fmt.Println("lost the race; alice is now at revision", merr.CurrentRevision)
	} else if err != nil {
		log.Fatal(err)
	}

	r, err := st.Get(ctx, "accounts", "alice", meridian.Bounded(500*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s at revision %d, written in %s at %v; served %v, at most %v stale\n",
		r.Value, r.Revision, r.Region, r.HLC.Time(), r.Served, r.StalenessBound)
}

func ExampleState_Get() {
	ctx := context.Background()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	r, err := c.State().Get(ctx, "accounts", "bob", meridian.Strong())
	switch {
	case errors.Is(err, meridian.ErrNotFound):
		fmt.Println("no bob")
	case errors.Is(err, meridian.ErrQuorumUnavailable):
		fmt.Println("this region is cut off from the global quorum; try Eventual()")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Printf("bob: %s\n", r.Value)
	}
}

func ExampleState_Scan() {
	ctx := context.Background()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	for e, err := range c.State().Scan(ctx, "accounts", "al", meridian.Limit(500)) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(e.Key, string(e.Value))
	}
}

func ExampleState_Watch() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	for ev, err := range c.State().Watch(ctx, "accounts", "al") {
		if errors.Is(err, context.DeadlineExceeded) {
			return
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(ev.Kind, ev.Entry.Key, ev.Entry.Revision)
	}
}

func ExampleState_Increment() {
	ctx := context.Background()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// "stock" is a replicated keyspace with conflict = "counter".
	if _, err := c.State().Increment(ctx, "stock", "sku-1", -1); err != nil {
		log.Fatal(err)
	}
	r, err := c.State().Get(ctx, "stock", "sku-1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("sku-1 in stock:", r.Counter)
}

func ExampleIdempotency_Once() {
	ctx := context.Background()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// The client's Idempotency-Key header, and the request body it came with.
	key, request := "order-7f3a", []byte(`{"sku":"A-1","qty":2}`)
	res, err := c.Idempotency().Once(ctx, "shop-frontend", key, request,
		func(ctx context.Context, token uint64) (meridian.StoredResponse, error) {
			// Runs once per key, in whichever region gets there first. A
			// failure the client should see again is a response, not an error.
			return meridian.StoredResponse{
				Status:  201,
				Body:    []byte(`{"order":"o-1"}`),
				Headers: map[string]string{"content-type": "application/json"},
			}, nil
		})
	switch {
	case errors.Is(err, meridian.ErrIdempotencyInProgress):
		fmt.Println("409: the same request is still running; retry later")
	case errors.Is(err, meridian.ErrIdempotencyMismatch):
		fmt.Println("422: this key was used for another request")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println(res.Response.Status, string(res.Response.Body), "replayed:", res.Replayed)
	}
}

func ExampleEvents_Publish() {
	ctx := context.Background()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// The event id is the event's identity: a retry (even in another region)
	// is absorbed, so derive it from what happened, not from the attempt.
	res, err := c.Events().Publish(ctx, "orders.placed", "o-1", []byte(`{"total":42}`), "order-o-1-placed",
		meridian.Headers(map[string]string{"content-type": "application/json"}))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stored at", res.Region, res.Sequence, "duplicate:", res.Duplicate)
}

func ExampleEvents_Subscribe() {
	// Stop on SIGINT/SIGTERM: Subscribe then finishes the running handler,
	// has the agent apply the acks sent, and returns nil.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Group "billing" of this region gets every event of orders.* from every
	// region, once; its other subscribers (other replicas) share the work.
	err = c.Events().Subscribe(ctx, "billing", meridian.Topic("orders.*"),
		func(ctx context.Context, d meridian.Delivery) error {
			// ctx continues the publisher's trace.
			fmt.Printf("%s %s from %s (attempt %d): %s\n",
				d.Event.Topic, d.Event.Key, d.Event.OriginRegion, d.Attempt, d.Event.Payload)
			if len(d.Event.Payload) == 0 {
				return errors.New("empty order") // nacked: redelivered with backoff, dead-lettered after 5 attempts
			}
			return nil // acked
		},
		meridian.StartSequence(1), // a new group starts at the beginning, not with new events only
		meridian.MaxInFlight(16),
		meridian.AckWait(time.Minute))
	if err != nil {
		log.Fatal(err) // the subscription was refused, or its stream failed
	}
}

func ExampleEvents_Open() {
	ctx := context.Background()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// The change feed of the carts keyspace, acked by hand.
	sub, err := c.Events().Open(ctx, "cart-audit", meridian.Keyspace("carts"))
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close() // applies the acks sent, hands back the rest
	for range 10 {
		d, err := sub.Recv(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(d.Event.Headers["operation"], d.Event.Key)
		if err := sub.Ack(d); err != nil {
			log.Fatal(err)
		}
	}
}

func ExampleClient_Invoke() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // travels with the call
	defer cancel()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// POST inventory/reservations on a healthy instance, this region's first.
	resp, err := c.Invoke(ctx, "inventory", "reservations", []byte(`{"order_id":"o-1","sku":"sku-1","qty":2}`),
		meridian.Header("Content-Type", "application/json"),
		meridian.Header("Idempotency-Key", "o-1")) // makes the POST safe for the agent to retry
	switch {
	case errors.Is(err, meridian.ErrResourceExhausted):
		fmt.Println("inventory's bulkhead is full: shed load or retry later")
	case errors.Is(err, meridian.ErrUnavailable):
		fmt.Println("no healthy inventory instance in any region")
	case err != nil:
		log.Fatal(err)
	default:
		// A 4xx or 5xx from the instance is a response, not an error.
		fmt.Println(resp.Status, string(resp.Body), "served by", resp.Instance, "in", resp.Region,
			"after", resp.Attempts, "attempt(s)")
	}
	// GET with a query string.
	_, _ = c.Invoke(ctx, "inventory", "stock/sku-1", nil, meridian.Verb("GET"), meridian.Query(url.Values{"fresh": {"1"}}))
}

func ExampleClient_SetFlag() {
	ctx := context.Background()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// 10% of the users in eu-west, by their targetingKey; nobody elsewhere.
	f, err := c.SetFlag(ctx, "new-checkout", []byte(`{"state":"ENABLED","variants":{"on":true,"off":false},
		"defaultVariant":"off","targeting":{"if":[{"==":[{"var":"region"},"eu-west"]},
		{"fractional":[["on",10],["off",90]]},"off"]}}`))
	var merr *meridian.Error
	if errors.As(err, &merr) && merr.Code == meridian.CodeInvalidArgument {
		log.Fatalf("refused: %s %s", merr.Field, merr.Rule) // e.g. definition.defaultVariant
	} else if err != nil {
		log.Fatal(err)
	}
	// Widen it only if nobody changed it since.
	_, err = c.SetFlag(ctx, "new-checkout", []byte(`{"state":"ENABLED","variants":{"on":true,"off":false},
		"defaultVariant":"off","targeting":{"fractional":[["on",50],["off",50]]}}`), meridian.IfRevision(f.Revision))
	if errors.Is(err, meridian.ErrConflict) {
		fmt.Println("someone else changed new-checkout; read it again")
	}
	// The kill switch, in every region at once.
	if _, err := c.KillFlag(ctx, "new-checkout", ""); err != nil {
		log.Fatal(err)
	}
}

func ExampleClient_EvaluateFlag() {
	ctx := context.Background()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ev, err := c.EvaluateFlag(ctx, "new-checkout", map[string]any{"targetingKey": "user-1", "plan": "pro"})
	if err != nil {
		log.Fatal(err) // the call failed: unreachable agent, bad key, ...
	}
	if ev.ErrorCode != "" {
		fmt.Println("evaluation failed, using the default:", ev.ErrorCode, ev.ErrorDetails)
	}
	newCheckout := ev.Value == true
	fmt.Println(newCheckout, ev.Variant, ev.Reason)
}

func ExampleRegistry_Register() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// Serve first (the agent health-checks GET /healthz), then register.
	reg, err := c.Registry().Register(ctx, meridian.Instance{
		Service:    "orders",
		Version:    "1.4.0",
		Endpoint:   "127.0.0.1:8080",
		Protocol:   meridian.ProtocolHTTP,
		HealthPath: "/healthz",
		Metadata:   map[string]string{"commit": "3f9e2c1"},
	}, 10*time.Second, meridian.OnHeartbeatError(func(err error) { log.Print("heartbeat: ", err) }))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("registered as", reg.ID())

	<-ctx.Done()
	// Deregister before closing the client, with a fresh context.
	closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := reg.Close(closeCtx); err != nil {
		log.Print("deregister: ", err)
	}
}

func ExampleRegistry_ListInstances() {
	ctx := context.Background()
	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	list, err := c.Registry().ListInstances(ctx, "inventory", "") // every region
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range list {
		fmt.Println(s.Region, s.ID, s.Endpoint, s.Health, s.HealthDetail)
	}
}

func ExampleWithTLSDir() {
	ctx := context.Background()
	// The service's identity from `meridian ca issue service/orders`:
	// cert.pem, key.pem and bundle.pem, read again whenever they change.
	c, err := meridian.Dial(ctx, "127.0.0.1:14020",
		meridian.WithTLSDir(".meridian/ca/identities/service-orders"))
	var merr *meridian.Error
	if errors.As(err, &merr) && merr.Code == meridian.CodeInvalidArgument {
		log.Fatalf("the TLS files can't be used: %s: %s", merr.Field, merr.Rule)
	} else if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("connected over mutual TLS to the agent of", c.Region())
}

func ExampleTLSConfigDir() {
	// The same identity for the agent's HTTP/JSON API.
	cfg, err := meridian.TLSConfigDir(".meridian/ca/identities/service-orders")
	if err != nil {
		log.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	resp, err := hc.Get("https://127.0.0.1:14021/v1/health")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
}
