package main

// The build-time version and failure share (build.go), with no real agent:
// a stand-in agent in process answers the health check and registration
// and records every other call, to show what a request did or did not do.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

func TestFailPercentBuildValues(t *testing.T) {
	for _, good := range []struct {
		in   string
		want int
	}{{"0", 0}, {"30", 30}, {"100", 100}} {
		if n, err := parseFailPercent(good.in); err != nil || n != good.want {
			t.Errorf("parseFailPercent(%q) = %d, %v; want %d", good.in, n, err, good.want)
		}
	}
	for _, bad := range []string{"", "-1", "101", "30%", "1.5", "thirty", " 30"} {
		if _, err := parseFailPercent(bad); err == nil || !strings.Contains(err.Error(), "main.failPercent") {
			t.Errorf("parseFailPercent(%q): %v, want an error naming main.failPercent", bad, err)
		}
	}
	// The service refuses to start with one.
	setBuild(t, "1.0.0", "150")
	if _, err := parseConfig(nil, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "main.failPercent") {
		t.Errorf("a build with failPercent 150 started: %v", err)
	}
}

func TestFailsOrderShare(t *testing.T) {
	const n = 10_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = orderID(fmt.Sprintf("key-%d", i))
	}
	count := func(percent int) int {
		failed := 0
		for _, id := range ids {
			if failsOrder(id, percent) {
				failed++
			}
		}
		return failed
	}
	if got := count(0); got != 0 {
		t.Errorf("failPercent 0 failed %d of %d orders, want none", got, n)
	}
	if got := count(100); got != n {
		t.Errorf("failPercent 100 failed %d of %d orders, want all", got, n)
	}
	// The standard deviation is about 46 orders; ±300 is a loose bound that
	// still catches a wrong modulus or comparison.
	if got := count(30); got < 2_700 || got > 3_300 {
		t.Errorf("failPercent 30 failed %d of %d orders, want about 3000", got, n)
	}
	for _, id := range ids[:100] {
		if failsOrder(id, 30) != failsOrder(id, 30) {
			t.Fatalf("order %s: failsOrder is not a function of the id", id)
		}
		// A larger share fails the same orders and more.
		if failsOrder(id, 30) && !failsOrder(id, 50) {
			t.Errorf("order %s fails at 30%% but not at 50%%", id)
		}
	}
}

func TestFaultyBuildFailsBeforeAnyAgentCall(t *testing.T) {
	agent, client := startFakeAgent(t)
	svc := &service{client: client, region: client.Region(), keyspace: keyspaceOrders, log: slog.New(slog.DiscardHandler), version: "v2", failPercent: 30}
	h := newHandler(svc, newReadModel())
	var failing, passing string
	for i := 0; failing == "" || passing == ""; i++ {
		key := fmt.Sprintf("key-%d", i)
		switch fails := failsOrder(orderID(key), 30); {
		case fails && failing == "":
			failing = key
		case !fails && passing == "":
			passing = key
		}
	}
	body := `{"sku":"sku-1","qty":2,"customer":"c-1"}`

	for attempt := range 3 { // retries of the same order fail the same way
		resp, eb := do(t, h, "POST", "/orders", body, "Idempotency-Key", failing)
		if resp.StatusCode != http.StatusInternalServerError || eb.Error != "faulty_build" ||
			!strings.Contains(eb.Detail, "deliberately faulty") || !strings.Contains(eb.Detail, "v2") {
			t.Fatalf("attempt %d of a failed order: %d %+v, want 500 faulty_build", attempt+1, resp.StatusCode, eb)
		}
	}
	if calls := agent.othersCalled(); len(calls) != 0 {
		t.Errorf("a failed order called the agent: %v (nothing should be claimed, reserved or written)", calls)
	}
	// Reads of the same order fail alike, before reading anything.
	resp, eb := do(t, h, "GET", "/orders/"+orderID(failing), "")
	if resp.StatusCode != http.StatusInternalServerError || eb.Error != "faulty_build" {
		t.Fatalf("a read of a failed order: %d %+v, want 500 faulty_build", resp.StatusCode, eb)
	}
	if calls := agent.othersCalled(); len(calls) != 0 {
		t.Errorf("a failed read called the agent: %v", calls)
	}

	// Any other order goes on to the agent (which this stand-in can't
	// serve): the check above is not vacuous.
	if resp, eb := do(t, h, "POST", "/orders", body, "Idempotency-Key", passing); eb.Error == "faulty_build" {
		t.Fatalf("an order outside the share failed as the faulty build: %d %+v", resp.StatusCode, eb)
	}
	if calls := agent.othersCalled(); !slices.ContainsFunc(calls, func(m string) bool { return strings.Contains(m, "IdempotencyService") }) {
		t.Errorf("an order outside the share did not reach the agent's Idempotency API: %v", calls)
	}
}

func TestBuildVersionIsTheDefaultAndIsRegistered(t *testing.T) {
	setBuild(t, "v2", "30")
	none := func(string) string { return "" }
	cfg, err := parseConfig(nil, none)
	if err != nil || cfg.version != "v2" || cfg.failPercent != 30 {
		t.Fatalf("config %+v, %v; want version v2, failPercent 30 from the build", cfg, err)
	}
	if c, _ := parseConfig(nil, func(k string) string { return map[string]string{"ORDERS_VERSION": "v3"}[k] }); c.version != "v3" {
		t.Errorf("ORDERS_VERSION: version %q, want v3", c.version)
	}
	if c, _ := parseConfig([]string{"-version", "v4"}, none); c.version != "v4" {
		t.Errorf("-version: version %q, want v4", c.version)
	}

	agent, _ := startFakeAgent(t)
	cfg.agent, cfg.ttl, cfg.grace = agent.addr, time.Minute, 5*time.Second
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, lis, slog.New(slog.DiscardHandler)) }()
	deadline := time.Now().Add(10 * time.Second)
	for agent.registration() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
	reg := agent.registration()
	if reg == nil {
		t.Fatal("serve never registered")
	}
	if inst := reg.GetInstance(); inst.GetService() != "orders" || inst.GetVersion() != "v2" {
		t.Errorf("registered %s version %q, want orders version v2 (the build's)", inst.GetService(), inst.GetVersion())
	}
}

// setBuild sets the build-time variables for the test.
func setBuild(t *testing.T, v, fail string) {
	t.Helper()
	oldVersion, oldFail := version, failPercent
	version, failPercent = v, fail
	t.Cleanup(func() { version, failPercent = oldVersion, oldFail })
}

// fakeAgent answers the health check (region us-east), Register and
// Deregister, and records every other call, answering it Unimplemented.
type fakeAgent struct {
	meridianv1.UnimplementedHealthServiceServer
	meridianv1.UnimplementedRegistryServiceServer

	addr       string
	mu         sync.Mutex
	registered *meridianv1.RegisterRequest
	others     []string // full method names
}

func startFakeAgent(t *testing.T) (*fakeAgent, *meridian.Client) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAgent{addr: lis.Addr().String()}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(stream)
		f.mu.Lock()
		f.others = append(f.others, method)
		f.mu.Unlock()
		return status.Error(codes.Unimplemented, "not in this stand-in agent: "+method)
	}))
	meridianv1.RegisterHealthServiceServer(srv, f)
	meridianv1.RegisterRegistryServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	c, err := meridian.Dial(context.Background(), f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return f, c
}

func (f *fakeAgent) Check(context.Context, *meridianv1.HealthCheckRequest) (*meridianv1.HealthCheckResponse, error) {
	return &meridianv1.HealthCheckResponse{Status: meridianv1.HealthCheckResponse_SERVING_STATUS_SERVING, Region: "us-east"}, nil
}

func (f *fakeAgent) Register(_ context.Context, req *meridianv1.RegisterRequest) (*meridianv1.RegisterResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.registered = proto.Clone(req).(*meridianv1.RegisterRequest)
	ttl := req.GetTtl().AsDuration()
	return &meridianv1.RegisterResponse{
		InstanceId: "orders-us-east-1", LeaseExpiresAt: timestamppb.New(time.Now().Add(ttl)), Ttl: durationpb.New(ttl),
	}, nil
}

func (f *fakeAgent) Deregister(context.Context, *meridianv1.DeregisterRequest) (*meridianv1.DeregisterResponse, error) {
	return &meridianv1.DeregisterResponse{}, nil
}

func (f *fakeAgent) registration() *meridianv1.RegisterRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.registered
}

func (f *fakeAgent) othersCalled() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.others)
}

func TestEachVersionHasItsOwnReadModelGroup(t *testing.T) {
	for _, tc := range []struct{ region, version, want string }{
		{"us-east", "1.0.0", "orders-readmodel-us-east-1-0-0"},
		{"ap-south", "V2+build.7", "orders-readmodel-ap-south-v2-build-7"},
	} {
		if got := readModelGroup(tc.region, tc.version); got != tc.want {
			t.Errorf("readModelGroup(%q, %q) = %q, want %q", tc.region, tc.version, got, tc.want)
		}
	}
	if readModelGroup("us-east", "1.0.0") == readModelGroup("us-east", "2.0.0") {
		t.Error("two versions in one region share a read model group: they would split its events")
	}
}
