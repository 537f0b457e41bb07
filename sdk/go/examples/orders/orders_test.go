package main

// Handler logic that needs no agent: input checks (which answer before any
// call), the read model, error statuses, configuration. agent_test.go runs
// the handlers against a real agent.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

// offlineHandler serves the routes with no agent behind them: only requests
// refused before any call can be answered.
func offlineHandler() (http.Handler, *readModel) {
	m := newReadModel()
	return newHandler(&service{region: "us-east", keyspace: keyspaceOrders, log: slog.New(slog.DiscardHandler)}, m), m
}

func do(t *testing.T, h http.Handler, method, target, body string, header ...string) (*http.Response, errorBody) {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	var eb errorBody
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &eb)
	return resp, eb
}

func TestPlaceOrderRefusesBadRequestsBeforeAnyCall(t *testing.T) {
	h, _ := offlineHandler()
	good := `{"sku":"sku-1","qty":2,"customer":"c-1"}`
	for _, tc := range []struct {
		name, body, key, code, detail string
	}{
		{"no key", good, "", "missing_idempotency_key", "Idempotency-Key: required"},
		{"not JSON", `sku=1`, "k", "invalid_request", "body:"},
		{"unknown field", `{"sku":"a","qty":1,"customer":"c","price":3}`, "k", "invalid_request", "body:"},
		{"two objects", good + good, "k", "invalid_request", "body: must hold one JSON object"},
		{"no sku", `{"qty":1,"customer":"c"}`, "k", "invalid_request", "sku:"},
		{"sku with a slash", `{"sku":"a/b","qty":1,"customer":"c"}`, "k", "invalid_request", "sku:"},
		{"zero qty", `{"sku":"a","qty":0,"customer":"c"}`, "k", "invalid_request", "qty:"},
		{"fractional qty", `{"sku":"a","qty":1.5,"customer":"c"}`, "k", "invalid_request", "body:"},
		{"no customer", `{"sku":"a","qty":1}`, "k", "invalid_request", "customer:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var header []string
			if tc.key != "" {
				header = []string{"Idempotency-Key", tc.key}
			}
			resp, eb := do(t, h, "POST", "/orders", tc.body, header...)
			if resp.StatusCode != http.StatusBadRequest || eb.Error != tc.code || !strings.HasPrefix(eb.Detail, tc.detail) {
				t.Errorf("got %d %+v, want 400 %s %q...", resp.StatusCode, eb, tc.code, tc.detail)
			}
		})
	}
}

func TestParseConsistency(t *testing.T) {
	for _, tc := range []struct {
		query string
		level meridian.Level
		err   string
	}{
		{"", meridian.LevelStrong, ""},
		{"consistency=strong", meridian.LevelStrong, ""},
		{"consistency=eventual", meridian.LevelEventual, ""},
		{"consistency=bounded&max_staleness_ms=250", meridian.LevelBounded, ""},
		{"consistency=bounded", 0, "max_staleness_ms:"},
		{"consistency=bounded&max_staleness_ms=0", 0, "max_staleness_ms:"},
		{"consistency=bounded&max_staleness_ms=soon", 0, "max_staleness_ms:"},
		{"consistency=linearizable", 0, "consistency:"},
	} {
		c, err := parseConsistency(httptest.NewRequest("GET", "/orders/o-1?"+tc.query, nil))
		switch {
		case tc.err != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.err)):
			t.Errorf("%q: err %v, want %s...", tc.query, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.query, err)
		case tc.err == "" && c != consistencyOf(tc.level):
			t.Errorf("%q: %+v, want %v", tc.query, c, tc.level)
		}
	}
	// And through the handler: 400 before any read.
	h, _ := offlineHandler()
	if resp, eb := do(t, h, "GET", "/orders/o-1?consistency=bounded", ""); resp.StatusCode != 400 || eb.Error != "invalid_request" {
		t.Errorf("GET with a bad consistency: %d %+v", resp.StatusCode, eb)
	}
}

// consistencyOf is the Consistency parseConsistency should return for level
// (bounded: 250 ms).
func consistencyOf(level meridian.Level) meridian.Consistency {
	switch level {
	case meridian.LevelStrong:
		return meridian.Strong()
	case meridian.LevelEventual:
		return meridian.Eventual()
	}
	return meridian.Bounded(250 * time.Millisecond)
}

func TestInventoryAnswers(t *testing.T) {
	for _, tc := range []struct {
		status  int
		body    string
		refusal string // "" for a 200
		stored  int    // what place's caller stores: 0 for an error
	}{
		{200, `{"reservation_id":"r-1"}`, "", 201},
		{409, `{"error":"out_of_stock","available":1}`, "out_of_stock", 409},
		{409, `{"error":"reservation_released","released_because":"expired"}`, "reservation_released", 409},
		{409, `{"error":"reservation_mismatch"}`, "upstream", 0},
		{404, `{"error":"unknown_reservation"}`, "upstream", 0},
		{503, `{"error":"unavailable"}`, "upstream", 0},
		{409, `not json`, "upstream", 0},
	} {
		err := inventoryError(&meridian.Response{Status: tc.status, Body: []byte(tc.body)})
		var refused *refusedError
		var upstream *upstreamError
		switch {
		case tc.refusal == "" && err != nil,
			tc.refusal == "upstream" && !errors.As(err, &upstream),
			tc.refusal != "" && tc.refusal != "upstream" && (!errors.As(err, &refused) || refused.reason != tc.refusal):
			t.Errorf("%d %s: %v, want %q", tc.status, tc.body, err, tc.refusal)
		}
		resp, serr := storedAnswer(Order{ID: "o-1"}, err)
		if int(resp.Status) != tc.stored || (tc.stored == 0) != (serr != nil) {
			t.Errorf("%d %s: stored %d (err %v), want %d", tc.status, tc.body, resp.Status, serr, tc.stored)
		}
		if tc.stored == 409 && string(resp.Body) != `{"error":"`+tc.refusal+`"}` {
			t.Errorf("%d %s: stored body %s", tc.status, tc.body, resp.Body)
		}
	}
}

func TestOrderIDIsTheKeys(t *testing.T) {
	if orderID("k-1") != orderID("k-1") || orderID("k-1") == orderID("k-2") {
		t.Fatal("order ids must be a function of the key, one per key")
	}
	if id := orderID("k-1"); !strings.HasPrefix(id, "o-") || len(id) != 22 {
		t.Fatalf("order id %q", id)
	}
}

func TestReadModelIsTheSameWhateverTheDeliveryOrder(t *testing.T) {
	var events []OrderEvent
	for i := range 50 {
		id := fmt.Sprintf("o-%d", i)
		events = append(events, OrderEvent{Type: eventPlaced, OrderID: id})
		if i%3 == 0 {
			events = append(events, OrderEvent{Type: eventCancelled, OrderID: id})
		}
	}
	ref := newReadModel()
	for _, e := range events {
		ref.apply(e)
	}
	want := ref.summary()
	if want.Count != 50 || want.ByStatus[statusCancelled] != 17 || want.ByStatus[statusPlaced] != 33 {
		t.Fatalf("summary %+v", want)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		m := newReadModel()
		// Shuffled, with duplicates: as redeliveries and other regions' events arrive.
		shuffled := append(append([]OrderEvent{}, events...), events[:10]...)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		for _, e := range shuffled {
			m.apply(e)
		}
		if got := m.summary(); got.IDsHash != want.IDsHash || got.StateHash != want.StateHash || got.Count != want.Count {
			t.Fatalf("shuffled: %+v, want %+v", got, want)
		}
	}
	if st, _ := ref.get("o-3"); st != statusCancelled {
		t.Errorf("o-3 is %q, want cancelled", st)
	}
}

func TestReadModelHandlerAndEndpoints(t *testing.T) {
	h, m := offlineHandler()
	payload, _ := json.Marshal(OrderEvent{Type: eventPlaced, OrderID: "o-1", SKU: "sku-1", Qty: 1, Region: "eu-west"})
	if err := m.handle(t.Context(), meridian.Delivery{Event: meridian.Event{EventID: "order-o-1-placed", Payload: payload}}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`{"type":"OrderShipped","order_id":"o-1"}`, `{"type":"OrderPlaced"}`, `not json`} {
		if err := m.handle(t.Context(), meridian.Delivery{Event: meridian.Event{EventID: "x", Payload: []byte(bad)}}); err == nil {
			t.Errorf("handle(%s) = nil, want an error (so it ends up dead-lettered)", bad)
		}
	}

	req := httptest.NewRequest("GET", "/readmodel", nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var sum summary
	if err := json.Unmarshal(rec.Body.Bytes(), &sum); err != nil || rec.Code != 200 || sum.Count != 1 || sum.ByStatus[statusPlaced] != 1 {
		t.Errorf("GET /readmodel: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readmodel/o-1", nil))
	if rec.Code != 200 || strings.TrimSpace(rec.Body.String()) != `{"id":"o-1","status":"placed"}` {
		t.Errorf("GET /readmodel/o-1: %d %s", rec.Code, rec.Body)
	}
	if resp, eb := do(t, h, "GET", "/readmodel/o-2", ""); resp.StatusCode != 404 || eb.Error != "not_found" {
		t.Errorf("GET /readmodel/o-2: %d %+v", resp.StatusCode, eb)
	}
	if resp, _ := do(t, h, "GET", "/healthz", ""); resp.StatusCode != 200 {
		t.Errorf("GET /healthz: %d", resp.StatusCode)
	}
}

func TestErrorStatuses(t *testing.T) {
	for _, tc := range []struct {
		err        error
		status     int
		code       string
		retryAfter bool
	}{
		{&meridian.Error{Code: meridian.CodeResourceExhausted}, 503, "unavailable", true},
		{fmt.Errorf("reserve stock: %w", &meridian.Error{Code: meridian.CodeUnavailable}), 503, "unavailable", true},
		{&meridian.Error{Code: meridian.CodeQuorumUnavailable}, 503, "unavailable", true},
		{&meridian.Error{Code: meridian.CodeDeadlineExceeded}, 504, "timeout", false},
		{&upstreamError{service: "inventory", status: 500, body: []byte("boom")}, 502, "bad_gateway", false},
		{errors.New("a bug"), 500, "internal", false},
	} {
		rec := httptest.NewRecorder()
		writeMeridianError(rec, slog.New(slog.DiscardHandler), "test", tc.err)
		var eb errorBody
		_ = json.Unmarshal(rec.Body.Bytes(), &eb)
		if rec.Code != tc.status || eb.Error != tc.code || (rec.Header().Get("Retry-After") != "") != tc.retryAfter {
			t.Errorf("%v: %d %+v (Retry-After %q), want %d %s", tc.err, rec.Code, eb, rec.Header().Get("Retry-After"), tc.status, tc.code)
		}
	}
}

func TestConfig(t *testing.T) {
	env := map[string]string{"MERIDIAN_AGENT": "10.0.0.1:14120", "MERIDIAN_REGION": "eu-west"}
	cfg, err := parseConfig([]string{"-listen", ":9000", "-ttl", "3s"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.agent != "10.0.0.1:14120" || cfg.region != "eu-west" || cfg.listen != ":9000" || cfg.ttl != 3*time.Second || cfg.keyspace != "orders" {
		t.Errorf("config %+v", cfg)
	}
	if cfg.tlsDir != "" {
		t.Errorf("tls dir %q by default, want none (plaintext)", cfg.tlsDir)
	}
	env["MERIDIAN_TLS_DIR"] = "/etc/meridian/service-orders"
	if cfg, err := parseConfig(nil, func(k string) string { return env[k] }); err != nil || cfg.tlsDir != "/etc/meridian/service-orders" {
		t.Errorf("MERIDIAN_TLS_DIR: tls dir %q, %v", cfg.tlsDir, err)
	}
	if cfg, err := parseConfig([]string{"-tls-dir", "ids/orders"}, func(k string) string { return env[k] }); err != nil || cfg.tlsDir != "ids/orders" {
		t.Errorf("-tls-dir over MERIDIAN_TLS_DIR: tls dir %q, %v", cfg.tlsDir, err)
	}
	if _, err := parseConfig([]string{"extra"}, func(string) string { return "" }); err == nil {
		t.Error("a stray argument was accepted")
	}
}

func TestAdvertised(t *testing.T) {
	for _, tc := range []struct{ flag, addr, want string }{
		{"", "[::]:8080", "127.0.0.1:8080"},
		{"", "0.0.0.0:8080", "127.0.0.1:8080"},
		{"", "10.1.2.3:8080", "10.1.2.3:8080"},
		{"orders.internal:80", "[::]:8080", "orders.internal:80"},
	} {
		addr, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := advertised(tc.flag, addr); got != tc.want {
			t.Errorf("advertised(%q, %s) = %s, want %s", tc.flag, tc.addr, got, tc.want)
		}
	}
}
