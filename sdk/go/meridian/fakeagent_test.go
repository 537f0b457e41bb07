package meridian

// Registry and Invoke against an in-process gRPC server that implements the
// agent's Registry and Invocation services (with its error trailers), for
// what a real agent can't be made to do on cue: lose a lease, fail
// heartbeats for a while. invocation_test.go runs the same API against a
// real agent.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

type fakeAgent struct {
	meridianv1.UnimplementedHealthServiceServer
	meridianv1.UnimplementedRegistryServiceServer
	meridianv1.UnimplementedInvocationServiceServer

	mu             sync.Mutex
	leases         map[string]*meridianv1.RegisterRequest
	registered     []*meridianv1.RegisterRequest // every Register, in order
	heartbeats     int
	deregistered   []string
	failHeartbeats bool
	invoked        *meridianv1.InvokeRequest
	invokeMD       metadata.MD
	invokeDeadline time.Time
}

// meridianError is an error as the agent sends it: a gRPC status with the
// stable code as its ErrorInfo detail.
func meridianError(_ context.Context, grpcCode codes.Code, code Code, msg string) error {
	return agentStatus(grpcCode, code, msg, nil).Err()
}

func (f *fakeAgent) Check(context.Context, *meridianv1.HealthCheckRequest) (*meridianv1.HealthCheckResponse, error) {
	return &meridianv1.HealthCheckResponse{Status: meridianv1.HealthCheckResponse_SERVING_STATUS_SERVING, Region: "test-region"}, nil
}

func (f *fakeAgent) Register(_ context.Context, req *meridianv1.RegisterRequest) (*meridianv1.RegisterResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.registered = append(f.registered, proto.Clone(req).(*meridianv1.RegisterRequest))
	req = proto.Clone(req).(*meridianv1.RegisterRequest)
	if req.Instance.InstanceId == "" {
		req.Instance.InstanceId = fmt.Sprintf("%s-test-region-%d", req.Instance.Service, len(f.registered))
	}
	f.leases[req.Instance.InstanceId] = req
	ttl := req.GetTtl().AsDuration()
	if req.Ttl == nil {
		ttl = 10 * time.Second
	}
	return &meridianv1.RegisterResponse{
		InstanceId:     req.Instance.InstanceId,
		LeaseExpiresAt: timestamppb.New(time.Now().Add(ttl)),
		Ttl:            durationpb.New(ttl),
	}, nil
}

func (f *fakeAgent) Heartbeat(ctx context.Context, req *meridianv1.HeartbeatRequest) (*meridianv1.HeartbeatResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.heartbeats++
	if f.failHeartbeats {
		return nil, meridianError(ctx, codes.Unavailable, CodeUnavailable, "the registry is unavailable")
	}
	lease, ok := f.leases[req.InstanceId]
	if !ok {
		return nil, meridianError(ctx, codes.NotFound, CodeNotFound, "no lease for "+req.InstanceId)
	}
	return &meridianv1.HeartbeatResponse{LeaseExpiresAt: timestamppb.New(time.Now().Add(lease.GetTtl().AsDuration()))}, nil
}

func (f *fakeAgent) Deregister(ctx context.Context, req *meridianv1.DeregisterRequest) (*meridianv1.DeregisterResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deregistered = append(f.deregistered, req.InstanceId)
	if _, ok := f.leases[req.InstanceId]; !ok {
		return nil, meridianError(ctx, codes.NotFound, CodeNotFound, "no lease for "+req.InstanceId)
	}
	delete(f.leases, req.InstanceId)
	return &meridianv1.DeregisterResponse{}, nil
}

func (f *fakeAgent) ListInstances(_ context.Context, req *meridianv1.ListInstancesRequest) (*meridianv1.ListInstancesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &meridianv1.ListInstancesResponse{}
	for _, lease := range f.leases {
		if req.Service != "" && lease.Instance.Service != req.Service {
			continue
		}
		inst := proto.Clone(lease.Instance).(*meridianv1.Instance)
		inst.Region = "test-region"
		resp.Instances = append(resp.Instances, &meridianv1.InstanceStatus{
			Instance:       inst,
			Health:         meridianv1.InstanceHealth_INSTANCE_HEALTH_UNHEALTHY,
			HealthDetail:   "GET /healthz: 503",
			LeaseExpiresAt: timestamppb.New(time.Unix(1000, 0)),
			CheckedAt:      timestamppb.New(time.Unix(990, 0)),
			AnnouncedAt:    timestamppb.New(time.Unix(995, 0)),
		})
	}
	return resp, nil
}

func (f *fakeAgent) Invoke(ctx context.Context, req *meridianv1.InvokeRequest) (*meridianv1.InvokeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.invoked = req
	f.invokeMD, _ = metadata.FromIncomingContext(ctx)
	f.invokeDeadline, _ = ctx.Deadline()
	switch req.Service {
	case "full":
		return nil, meridianError(ctx, codes.ResourceExhausted, CodeResourceExhausted, "the bulkhead of full is full (8 calls)")
	case "broken":
		return &meridianv1.InvokeResponse{Status: 503, Body: []byte("down"), Region: "test-region", InstanceId: "broken-1", Attempts: 3}, nil
	}
	return &meridianv1.InvokeResponse{
		Status: 201,
		Headers: []*meridianv1.Header{
			{Name: "content-type", Value: "text/plain"},
			{Name: "Set-Cookie", Value: "a=1"},
			{Name: "Set-Cookie", Value: "b=2"},
		},
		Body:       append([]byte("echo "), req.Body...),
		Region:     "test-region",
		InstanceId: req.Service + "-1",
		Attempts:   1,
	}, nil
}

func (f *fakeAgent) drop(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.leases, id)
}

func (f *fakeAgent) setFailHeartbeats(fail bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failHeartbeats = fail
}

func (f *fakeAgent) counts() (registers, heartbeats, deregisters int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.registered), f.heartbeats, len(f.deregistered)
}

// startFakeAgent serves a fakeAgent on a free loopback port and dials it.
func startFakeAgent(t *testing.T) (*fakeAgent, *Client) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAgent{leases: map[string]*meridianv1.RegisterRequest{}}
	srv := grpc.NewServer()
	meridianv1.RegisterHealthServiceServer(srv, f)
	meridianv1.RegisterRegistryServiceServer(srv, f)
	meridianv1.RegisterInvocationServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	c, err := Dial(context.Background(), lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return f, c
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFakeInvokeSendsTheRequestAndReturnsTheResponse(t *testing.T) {
	f, c := startFakeAgent(t)
	tid := trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}, TraceFlags: trace.FlagsSampled})
	ctx, cancel := context.WithTimeout(trace.ContextWithSpanContext(context.Background(), sc), 5*time.Second)
	defer cancel()

	resp, err := c.Invoke(ctx, "inventory", "/reservations/7", []byte(`{"qty":1}`),
		Verb("put"), Header("Idempotency-Key", "k-1"), Header("X-A", "1"), Header("X-A", "2"),
		Query(url.Values{"b": {"2"}, "a": {"1", "x y"}}))
	if err != nil {
		t.Fatal(err)
	}

	got := f.invoked
	if got.Service != "inventory" || got.Method != "reservations/7" || got.HttpVerb != "PUT" ||
		got.Query != "a=1&a=x+y&b=2" || string(got.Body) != `{"qty":1}` {
		t.Errorf("the agent got %v", got)
	}
	var headers []string
	for _, h := range got.Headers {
		headers = append(headers, h.Name+"="+h.Value)
	}
	if want := []string{"Idempotency-Key=k-1", "X-A=1", "X-A=2"}; !slices.Equal(headers, want) {
		t.Errorf("headers %v, want %v", headers, want)
	}
	if tp := f.invokeMD.Get("traceparent"); len(tp) != 1 || tp[0] != "00-"+tid.String()+"-0102030405060708-01" {
		t.Errorf("traceparent %v, want the caller's span", tp)
	}
	if left := time.Until(f.invokeDeadline); f.invokeDeadline.IsZero() || left > 5*time.Second {
		t.Errorf("the agent's deadline is %v away, want the caller's (at most 5s)", left)
	}

	if resp.Status != 201 || string(resp.Body) != `echo {"qty":1}` || resp.Region != "test-region" ||
		resp.Instance != "inventory-1" || resp.Attempts != 1 {
		t.Errorf("response %+v", resp)
	}
	if resp.Header.Get("Content-Type") != "text/plain" || !slices.Equal(resp.Header.Values("Set-Cookie"), []string{"a=1", "b=2"}) {
		t.Errorf("response headers %v", resp.Header)
	}
}

func TestFakeInvokeDefaultsAndErrors(t *testing.T) {
	f, c := startFakeAgent(t)
	ctx := context.Background()

	// No verb: the agent's default (POST) applies; no deadline: none is sent.
	resp, err := c.Invoke(ctx, "broken", "health", nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.invoked.HttpVerb != "" || !f.invokeDeadline.IsZero() {
		t.Errorf("verb %q, deadline %v: want neither", f.invoked.HttpVerb, f.invokeDeadline)
	}
	// An instance's 5xx is a response.
	if resp.Status != 503 || resp.Attempts != 3 || len(resp.Header) != 0 {
		t.Errorf("response %+v", resp)
	}

	_, err = c.Invoke(ctx, "full", "x", nil)
	var merr *Error
	if !errors.As(err, &merr) || !errors.Is(err, ErrResourceExhausted) || status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Invoke of a full bulkhead: %v, want ErrResourceExhausted", err)
	}
	if errors.Is(err, ErrUnavailable) {
		t.Errorf("ErrResourceExhausted also matches ErrUnavailable")
	}
}

func TestFakeRegistrationHeartbeatsUntilClose(t *testing.T) {
	f, c := startFakeAgent(t)
	ctx := context.Background()
	inst := Instance{
		Service: "orders", Version: "1.2.0", Endpoint: "127.0.0.1:8080", Protocol: ProtocolHTTP,
		Metadata: map[string]string{"zone": "a"}, HealthPath: "/healthz", HealthInterval: 500 * time.Millisecond,
	}
	reg, err := c.Registry().Register(ctx, inst, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	inst.Metadata["zone"] = "changed after Register" // must not reach the agent

	sent := f.registered[0]
	want := &meridianv1.RegisterRequest{
		Instance: &meridianv1.Instance{
			Service: "orders", Version: "1.2.0", Endpoint: "127.0.0.1:8080", Protocol: meridianv1.Protocol_PROTOCOL_HTTP,
			Metadata:    map[string]string{"zone": "a"},
			HealthCheck: &meridianv1.HealthCheck{HttpPath: "/healthz", Interval: durationpb.New(500 * time.Millisecond)},
		},
		Ttl: durationpb.New(300 * time.Millisecond),
	}
	if !proto.Equal(sent, want) {
		t.Errorf("Register sent %v, want %v", sent, want)
	}
	if reg.ID() != "orders-test-region-1" || reg.TTL() != 300*time.Millisecond || reg.LeaseExpiresAt().IsZero() {
		t.Errorf("registration %q ttl %v lease until %v", reg.ID(), reg.TTL(), reg.LeaseExpiresAt())
	}

	waitFor(t, "three heartbeats", func() bool { _, hb, _ := f.counts(); return hb >= 3 })
	if err := reg.Err(); err != nil {
		t.Errorf("Err() = %v after good heartbeats", err)
	}

	if err := reg.Close(ctx); err != nil {
		t.Fatal(err)
	}
	_, hbAtClose, _ := f.counts()
	time.Sleep(300 * time.Millisecond) // three heartbeat intervals
	registers, hb, deregisters := f.counts()
	if registers != 1 || hb != hbAtClose || deregisters != 1 || f.deregistered[0] != reg.ID() {
		t.Errorf("after Close: %d registers, %d heartbeats (%d at Close), deregistered %v", registers, hb, hbAtClose, f.deregistered)
	}
	if err := reg.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, _, deregisters := f.counts(); deregisters != 1 {
		t.Errorf("second Close deregistered again")
	}
}

func TestFakeRegistrationRegistersAgainWhenTheLeaseIsGone(t *testing.T) {
	f, c := startFakeAgent(t)
	ctx := context.Background()
	reg, err := c.Registry().Register(ctx, Instance{ID: "orders-7", Service: "orders", Endpoint: "127.0.0.1:1"}, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close(ctx)
	f.drop("orders-7") // as if the lease ran out, or the agent restarted

	waitFor(t, "a second registration", func() bool { r, _, _ := f.counts(); return r >= 2 })
	f.mu.Lock()
	again := f.registered[1]
	_, held := f.leases["orders-7"]
	f.mu.Unlock()
	if again.Instance.InstanceId != "orders-7" || !held || reg.ID() != "orders-7" {
		t.Errorf("registered again as %q (held: %v), Registration.ID %q: want orders-7", again.Instance.InstanceId, held, reg.ID())
	}
	waitFor(t, "a good heartbeat after registering again", func() bool { return reg.Err() == nil })
}

func TestFakeRegistrationKeepsTryingThroughFailures(t *testing.T) {
	f, c := startFakeAgent(t)
	ctx := context.Background()
	errs := make(chan error, 100)
	reg, err := c.Registry().Register(ctx, Instance{Service: "orders", Endpoint: "127.0.0.1:1"}, 300*time.Millisecond,
		OnHeartbeatError(func(err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close(ctx)

	f.setFailHeartbeats(true)
	select {
	case err := <-errs:
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("OnHeartbeatError got %v, want ErrUnavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnHeartbeatError was never called")
	}
	if !errors.Is(reg.Err(), ErrUnavailable) {
		t.Errorf("Err() = %v during failures", reg.Err())
	}
	f.setFailHeartbeats(false)
	waitFor(t, "a good heartbeat after the failures", func() bool { return reg.Err() == nil })
}

func TestFakeCloseOfALeaseAlreadyGone(t *testing.T) {
	f, c := startFakeAgent(t)
	ctx := context.Background()
	reg, err := c.Registry().Register(ctx, Instance{Service: "orders", Endpoint: "127.0.0.1:1"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	f.drop(reg.ID())
	if err := reg.Close(ctx); err != nil {
		t.Fatalf("Close of a lease the agent no longer holds: %v, want nil", err)
	}
}

func TestFakeListInstances(t *testing.T) {
	_, c := startFakeAgent(t)
	ctx := context.Background()
	for _, svc := range []string{"orders", "inventory"} {
		reg, err := c.Registry().Register(ctx, Instance{Service: svc, Endpoint: "127.0.0.1:1", Protocol: ProtocolGRPC, HealthService: svc}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		defer reg.Close(ctx)
	}
	got, err := c.Registry().ListInstances(ctx, "inventory", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("ListInstances(inventory) = %+v, want one", got)
	}
	s := got[0]
	if s.Service != "inventory" || s.Region != "test-region" || s.Protocol != ProtocolGRPC || s.HealthService != "inventory" ||
		s.Health != HealthUnhealthy || s.Healthy() || s.HealthDetail != "GET /healthz: 503" ||
		!s.LeaseExpiresAt.Equal(time.Unix(1000, 0)) || !s.CheckedAt.Equal(time.Unix(990, 0)) || !s.AnnouncedAt.Equal(time.Unix(995, 0)) {
		t.Errorf("ListInstances(inventory) = %+v", s)
	}
	if all, err := c.Registry().ListInstances(ctx, "", ""); err != nil || len(all) != 2 {
		t.Errorf("ListInstances() = %d instances, %v; want 2", len(all), err)
	}
}
