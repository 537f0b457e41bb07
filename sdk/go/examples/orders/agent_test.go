package main

// The orders handlers against real agents: scripts/test-sdks go starts a
// three-region sandbox and exports where its agents listen
// (MERIDIAN_TEST_GRPC, MERIDIAN_TEST_REGIONS). Without it these tests fail;
// they never skip, like the SDK's own. With MERIDIAN_TEST_TLS_DIR set, they
// and serve dial the agents with mutual TLS as that identity
// (internal/agenttest).
//
// The sandbox of scripts/test-sdks declares the global keyspace "accounts"
// but not "orders", so the orders are written there (order ids are unique
// per idempotency key, and the keys are unique per run). A stand-in
// inventory registers with the us-east agent as service "inventory"; orders
// placed in eu-west reach it by failing over to us-east.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-rt/meridian/sdk/go/internal/agenttest"
	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

const testKeyspace = "accounts"

func requireEnv(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: this test needs a real Meridian agent. Run it with scripts/test-sdks go, "+
			"which starts a three-region sandbox and exports MERIDIAN_TEST_GRPC, MERIDIAN_TEST_HTTP and MERIDIAN_TEST_REGIONS", name)
	}
	return v
}

// dialRegion dials the agent of region, as MERIDIAN_TEST_REGIONS names it.
func dialRegion(t *testing.T, region string) *meridian.Client {
	t.Helper()
	for _, part := range strings.Split(requireEnv(t, "MERIDIAN_TEST_REGIONS"), ",") {
		name, addr, _ := strings.Cut(strings.TrimSpace(part), "=")
		if name != region {
			continue
		}
		c, err := meridian.Dial(context.Background(), addr, agenttest.DialOptions()...)
		if err != nil {
			t.Fatalf("Dial(%s): %v", addr, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	t.Fatalf("MERIDIAN_TEST_REGIONS has no %s", region)
	return nil
}

func unique(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + "-" + hex.EncodeToString(b)
}

// eventually polls cond (for up to 15 s) until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	eventuallyWithin(t, 15*time.Second, what, cond)
}

func eventuallyWithin(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened (waited %v)", what, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventLag bounds how long an event takes to reach another region's
// consumer group. It is far above the WAN latency because, in a sandbox
// just started, an agent's aggregate stream (EVA_<region>) only starts
// sourcing a peer's stream (EV_<peer>) some 35 s after being created if
// that peer's stream did not exist yet (measured: eu-west to us-east after
// a fresh `sandbox up`); scripts/test-sdks runs these tests right then.
const eventLag = 90 * time.Second

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// inventory is a stand-in for the inventory service (sdk/rust/examples/inventory):
// stock per SKU, one reservation per order id, confirmed by order id.
type inventory struct {
	mu           sync.Mutex
	stock        map[string]int
	reservations map[string]string // order id -> reservation id
	confirmedIDs map[string]bool   // order ids
	calls        int
}

func (inv *inventory) reserve(w http.ResponseWriter, r *http.Request) {
	var req struct {
		OrderID string `json:"order_id"`
		SKU     string `json:"sku"`
		Qty     int    `json:"qty"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.OrderID == "" || r.Header.Get("Idempotency-Key") != req.OrderID {
		http.Error(w, "bad reservation request", http.StatusBadRequest)
		return
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.calls++
	id, ok := inv.reservations[req.OrderID]
	if !ok {
		if inv.stock[req.SKU] < req.Qty {
			writeJSON(w, http.StatusConflict, errorBody{Error: "out_of_stock"})
			return
		}
		inv.stock[req.SKU] -= req.Qty
		id = "r-" + req.OrderID
		inv.reservations[req.OrderID] = id
	}
	writeJSON(w, http.StatusOK, map[string]string{"reservation_id": id, "expires_at": "2030-01-01T00:00:00Z"})
}

// confirm is POST /reservations/{order_id}/confirm.
func (inv *inventory) confirm(w http.ResponseWriter, r *http.Request) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	id, ok := inv.reservations[r.PathValue("order_id")]
	if !ok {
		writeJSON(w, http.StatusNotFound, errorBody{Error: "unknown_reservation"})
		return
	}
	inv.confirmedIDs[r.PathValue("order_id")] = true
	writeJSON(w, http.StatusOK, map[string]string{"reservation_id": id, "state": "confirmed"})
}

func (inv *inventory) confirmed(orderID string) bool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.confirmedIDs[orderID]
}

func (inv *inventory) state(sku string) (stock, calls int) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.stock[sku], inv.calls
}

// startInventory serves a stand-in inventory with stock of sku, registers
// it with c's agent as "inventory", and waits until every region's agent
// in others lists it healthy.
func startInventory(t *testing.T, c *meridian.Client, sku string, stock int, others ...*meridian.Client) *inventory {
	t.Helper()
	inv := &inventory{stock: map[string]int{sku: stock}, reservations: map[string]string{}, confirmedIDs: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /reservations", inv.reserve)
	mux.HandleFunc("POST /reservations/{order_id}/confirm", inv.confirm)
	mux.HandleFunc("GET /healthz", func(http.ResponseWriter, *http.Request) {})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	reg, err := c.Registry().Register(context.Background(), meridian.Instance{
		Service: inventoryService, Version: "test", Endpoint: srv.Listener.Addr().String(),
		Protocol: meridian.ProtocolHTTP, HealthPath: "/healthz", HealthInterval: 200 * time.Millisecond,
	}, 3*time.Second)
	if err != nil {
		t.Fatalf("register inventory: %v", err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	for _, agent := range append([]*meridian.Client{c}, others...) {
		eventually(t, "inventory listed healthy by the "+agent.Region()+" agent", func() bool {
			list, err := agent.Registry().ListInstances(context.Background(), inventoryService, "")
			for _, s := range list {
				if err == nil && s.ID == reg.ID() && s.Healthy() {
					return true
				}
			}
			return false
		})
	}
	return inv
}

// startOrders serves the orders handlers with c's agent behind them, and
// runs their read model under its own group.
func startOrders(t *testing.T, c *meridian.Client) (baseURL string) {
	t.Helper()
	log := testLogger(t)
	model := newReadModel()
	srv := httptest.NewServer(newHandler(&service{client: c, region: c.Region(), keyspace: testKeyspace, log: log}, model))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- model.run(ctx, c.Events(), unique(t, "orders-readmodel-test-"+c.Region()), log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("read model: %v", err)
		}
	})
	return srv.URL
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) order(t *testing.T) Order {
	t.Helper()
	var o Order
	if err := json.Unmarshal(r.body, &o); err != nil {
		t.Fatalf("%d %s: not an order: %v", r.status, r.body, err)
	}
	return o
}

func (r reply) errorCode() string {
	var eb errorBody
	_ = json.Unmarshal(r.body, &eb)
	return eb.Error
}

func call(t *testing.T, method, url, idempotencyKey, body string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if idempotencyKey != "" {
		req.Header.Set("Idempotency-Key", idempotencyKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, b}
}

func TestOrdersAgainstTheAgents(t *testing.T) {
	east, west := dialRegion(t, "us-east"), dialRegion(t, "eu-west")
	sku := unique(t, "sku")
	inv := startInventory(t, east, sku, 5, west)
	eastURL, westURL := startOrders(t, east), startOrders(t, west)

	// Placed once per key.
	key := unique(t, "key")
	body := `{"sku":"` + sku + `","qty":2,"customer":"c-1"}`
	first := call(t, "POST", eastURL+"/orders", key, body)
	if first.status != http.StatusCreated {
		t.Fatalf("POST /orders: %d %s", first.status, first.body)
	}
	order := first.order(t)
	if order.ID != orderID(key) || order.Status != statusPlaced || order.Region != "us-east" || order.SKU != sku ||
		order.Qty != 2 || order.ReservationID != "r-"+order.ID || !inv.confirmed(order.ID) {
		t.Errorf("placed %+v", order)
	}
	if first.header.Get("Idempotent-Replayed") != "" {
		t.Error("the first response says it was replayed")
	}
	again := call(t, "POST", eastURL+"/orders", key, `{"customer":"c-1", "qty":2, "sku":"`+sku+`"}`) // the same order, reordered
	if again.status != http.StatusCreated || !bytes.Equal(again.body, first.body) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the same request again: %d %s (replayed %q), want the first response", again.status, again.body, again.header.Get("Idempotent-Replayed"))
	}
	fromWest := call(t, "POST", westURL+"/orders", key, body) // the record is global
	if fromWest.status != http.StatusCreated || !bytes.Equal(fromWest.body, first.body) {
		t.Errorf("the same request in eu-west: %d %s, want the first response", fromWest.status, fromWest.body)
	}
	if stock, calls := inv.state(sku); stock != 3 || calls != 1 {
		t.Errorf("inventory: stock %d after %d reservation calls, want 3 after 1", stock, calls)
	}
	if r := call(t, "POST", eastURL+"/orders", key, `{"sku":"`+sku+`","qty":3,"customer":"c-1"}`); r.status != http.StatusUnprocessableEntity || r.errorCode() != "idempotency_key_reused" {
		t.Errorf("the key with another order: %d %s, want 422", r.status, r.body)
	}

	if r := call(t, "POST", eastURL+"/orders", strings.Repeat("k", 300), body); r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "Idempotency-Key: ") {
		t.Errorf("a 300-character key: %d %s, want 400 naming the Idempotency-Key", r.status, r.body)
	}

	// Out of stock: a stored answer too.
	key2 := unique(t, "key")
	big := `{"sku":"` + sku + `","qty":4,"customer":"c-2"}`
	for i := range 2 {
		if r := call(t, "POST", eastURL+"/orders", key2, big); r.status != http.StatusConflict || r.errorCode() != "out_of_stock" {
			t.Errorf("attempt %d to order more than the stock: %d %s, want 409 out_of_stock", i+1, r.status, r.body)
		}
	}

	// Placed in eu-west, which has no inventory: its agent calls us-east's.
	key3 := unique(t, "key")
	r := call(t, "POST", westURL+"/orders", key3, `{"sku":"`+sku+`","qty":1,"customer":"c-3"}`)
	if r.status != http.StatusCreated {
		t.Fatalf("POST /orders in eu-west: %d %s", r.status, r.body)
	}
	westOrder := r.order(t)
	if westOrder.Region != "eu-west" {
		t.Errorf("placed in %s, want eu-west", westOrder.Region)
	}
	if stock, _ := inv.state(sku); stock != 2 {
		t.Errorf("stock %d, want 2", stock)
	}

	// Reads at each consistency, in either region.
	r = call(t, "GET", eastURL+"/orders/"+order.ID+"?consistency=strong", "", "")
	if r.status != http.StatusOK || r.order(t).Status != statusPlaced || r.header.Get("Consistency-Served") != "strong" ||
		r.header.Get("Staleness-Bound-Ms") != "0" || r.header.Get("ETag") == "" {
		t.Errorf("strong read: %d %v %s", r.status, r.header, r.body)
	}
	for _, q := range []string{"consistency=bounded&max_staleness_ms=5000", "consistency=eventual"} {
		eventually(t, "eu-west reading the order with "+q, func() bool {
			r := call(t, "GET", westURL+"/orders/"+order.ID+"?"+q, "", "")
			return r.status == http.StatusOK && r.order(t).ID == order.ID
		})
	}
	if r := call(t, "GET", eastURL+"/orders/"+unique(t, "o"), "", ""); r.status != http.StatusNotFound {
		t.Errorf("GET of no order: %d %s", r.status, r.body)
	}

	// Both regions' read models see both orders.
	regions := map[string]string{"us-east": eastURL, "eu-west": westURL}
	for region, base := range regions {
		for _, id := range []string{order.ID, westOrder.ID} {
			eventuallyWithin(t, eventLag, region+"'s read model showing "+id+" placed", func() bool {
				r := call(t, "GET", base+"/readmodel/"+id, "", "")
				return r.status == http.StatusOK && strings.Contains(string(r.body), `"status":"placed"`)
			})
		}
	}

	// Cancelled from eu-west, twice: the same answer.
	for i := range 2 {
		r := call(t, "POST", westURL+"/orders/"+order.ID+"/cancel", "", "")
		if r.status != http.StatusOK || r.order(t).Status != statusCancelled || r.order(t).CancelledAt == nil {
			t.Fatalf("cancel %d: %d %s", i+1, r.status, r.body)
		}
	}
	if r := call(t, "GET", eastURL+"/orders/"+order.ID, "", ""); r.order(t).Status != statusCancelled {
		t.Errorf("after cancel, a strong read in us-east: %s", r.body)
	}
	for region, base := range regions {
		eventuallyWithin(t, eventLag, region+"'s read model showing the cancellation", func() bool {
			r := call(t, "GET", base+"/readmodel/"+order.ID, "", "")
			return strings.Contains(string(r.body), `"status":"cancelled"`)
		})
	}
	if r := call(t, "POST", eastURL+"/orders/"+unique(t, "o")+"/cancel", "", ""); r.status != http.StatusNotFound {
		t.Errorf("cancel of no order: %d %s", r.status, r.body)
	}
	var sum summary
	if r := call(t, "GET", westURL+"/readmodel", "", ""); json.Unmarshal(r.body, &sum) != nil || sum.Count < 2 || sum.ByStatus[statusCancelled] < 1 {
		t.Errorf("GET /readmodel: %s", r.body)
	}
}

func TestServeRegistersAndDeregisters(t *testing.T) {
	addr := requireEnv(t, "MERIDIAN_TEST_GRPC")
	c := dialRegion(t, "us-east")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A lease far longer than the wait below: the instance can only vanish
	// in time by being deregistered.
	cfg := config{agent: addr, tlsDir: agenttest.TLSDir(), version: "test", ttl: time.Minute, grace: 5 * time.Second, keyspace: testKeyspace}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, lis, testLogger(t)) }()

	var id string
	eventually(t, "orders registered and healthy", func() bool {
		list, _ := c.Registry().ListInstances(context.Background(), "orders", "us-east")
		for _, s := range list {
			if s.Endpoint == lis.Addr().String() && s.Healthy() {
				id = s.ID
				return true
			}
		}
		return false
	})

	// Callable through the agent, like any service.
	resp, err := c.Invoke(context.Background(), "orders", "readmodel", nil, meridian.Verb("GET"))
	if err != nil || resp.Status != http.StatusOK || resp.Instance != id {
		t.Fatalf("GET orders/readmodel through the agent: %v %+v", err, resp)
	}

	// SIGTERM (here: ctx canceled) deregisters before it stops serving.
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return within 10s of being stopped")
	}
	// The agent drops it from its listing once the withdrawal has come back
	// through the replicated registry, a moment after Deregister returns.
	eventually(t, "instance "+id+" gone after shutdown", func() bool {
		list, err := c.Registry().ListInstances(context.Background(), "orders", "us-east")
		if err != nil {
			return false
		}
		for _, s := range list {
			if s.ID == id {
				return false
			}
		}
		return true
	})
}

func TestServeRefusesTheWrongRegion(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{agent: requireEnv(t, "MERIDIAN_TEST_GRPC"), tlsDir: agenttest.TLSDir(), region: "mars", ttl: 3 * time.Second, grace: time.Second, keyspace: testKeyspace}
	err = serve(context.Background(), cfg, lis, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "mars") {
		t.Fatalf("serve with -region mars: %v, want an error naming the region", err)
	}
	if errors.Is(err, meridian.ErrUnavailable) {
		t.Fatalf("serve with -region mars: %v", err)
	}
}
