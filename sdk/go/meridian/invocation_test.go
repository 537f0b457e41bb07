package meridian_test

// Registry and Invoke against the real sandbox (see agent_test.go): an HTTP
// server started here registers with the us-east agent, and is called
// through it, and through eu-west's, which has no instance of its own and
// fails over to us-east. Service names are unique per test and run.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// echoed is what the test server saw of a request.
type echoed struct {
	Method string      `json:"method"`
	Path   string      `json:"path"`
	Query  string      `json:"query"`
	Header http.Header `json:"header"`
	Body   string      `json:"body"`
}

// startEchoServer serves /healthz (200, or 503 once sick is set), /echo/...
// (the request, as JSON), /fail (500) and /slow (answers after 2 s) on a
// free loopback port, until the test ends.
func startEchoServer(t *testing.T) (addr string, sick *atomic.Bool) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sick = new(atomic.Bool)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if sick.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/echo/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Add("X-Multi", "1")
		w.Header().Add("X-Multi", "2")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(echoed{r.Method, r.URL.Path, r.URL.RawQuery, r.Header, string(body)})
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "failed on purpose", http.StatusInternalServerError)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return lis.Addr().String(), sick
}

// waitForInstance waits until c's registry lists instance id of service
// with the given health.
func waitForInstance(t *testing.T, c *meridian.Client, service, id string, health meridian.Health) meridian.InstanceStatus {
	t.Helper()
	var found meridian.InstanceStatus
	eventually(t, "instance "+id+" listed as "+health.String()+" by the "+c.Region()+" agent", func() (bool, error) {
		list, err := c.Registry().ListInstances(context.Background(), service, "")
		if err != nil {
			return false, err
		}
		for _, s := range list {
			if s.ID == id && s.Health == health {
				found = s
				return true, nil
			}
		}
		return false, nil
	})
	return found
}

func waitForNoInstance(t *testing.T, c *meridian.Client, service, id string) {
	t.Helper()
	eventually(t, "instance "+id+" gone from the "+c.Region()+" agent's registry", func() (bool, error) {
		list, err := c.Registry().ListInstances(context.Background(), service, "")
		if err != nil {
			return false, err
		}
		for _, s := range list {
			if s.ID == id {
				return false, nil
			}
		}
		return true, nil
	})
}

func register(t *testing.T, c *meridian.Client, service, endpoint string, ttl time.Duration) *meridian.Registration {
	t.Helper()
	reg, err := c.Registry().Register(context.Background(), meridian.Instance{
		Service: service, Version: "test", Endpoint: endpoint, Protocol: meridian.ProtocolHTTP,
		Metadata: map[string]string{"test": t.Name()}, HealthPath: "/healthz", HealthInterval: 200 * time.Millisecond,
	}, ttl)
	check(t, "Register", err)
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	return reg
}

func TestRegisterInvokeDeregister(t *testing.T) {
	c := usEast(t)
	service := uniqueName(t, "echo")
	addr, _ := startEchoServer(t)
	reg := register(t, c, service, addr, 3*time.Second)
	if reg.ID() == "" || reg.TTL() != 3*time.Second || !reg.LeaseExpiresAt().After(time.Now()) {
		t.Fatalf("Registration: id %q ttl %v lease until %v", reg.ID(), reg.TTL(), reg.LeaseExpiresAt())
	}
	st := waitForInstance(t, c, service, reg.ID(), meridian.HealthHealthy)
	if st.Region != "us-east" || st.Endpoint != addr || st.Protocol != meridian.ProtocolHTTP ||
		st.Version != "test" || st.Metadata["test"] != t.Name() || st.HealthPath != "/healthz" || st.CheckedAt.IsZero() {
		t.Errorf("listed as %+v", st)
	}

	// A call with a span and a deadline.
	var tid trace.TraceID
	_, _ = rand.Read(tid[:])
	caller := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}, TraceFlags: trace.FlagsSampled})
	ctx, cancel := context.WithTimeout(trace.ContextWithSpanContext(context.Background(), caller), 10*time.Second)
	defer cancel()
	resp, err := c.Invoke(ctx, service, "/echo/a/b", []byte(`{"n":1}`), meridian.Verb("PUT"),
		meridian.Header("X-Test", "v1"), meridian.Header("Content-Type", "application/json"),
		meridian.Query(url.Values{"q": {"1", "two words"}}))
	check(t, "Invoke", err)
	if resp.Status != http.StatusAccepted || resp.Region != "us-east" || resp.Instance != reg.ID() || resp.Attempts != 1 {
		t.Fatalf("response: status %d region %q instance %q attempts %d body %s", resp.Status, resp.Region, resp.Instance, resp.Attempts, resp.Body)
	}
	if got := resp.Header.Values("X-Multi"); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Errorf("X-Multi %v, want [1 2]", got)
	}
	var e echoed
	if err := json.Unmarshal(resp.Body, &e); err != nil {
		t.Fatalf("body %s: %v", resp.Body, err)
	}
	if e.Method != "PUT" || e.Path != "/echo/a/b" || e.Query != "q=1&q=two+words" || e.Body != `{"n":1}` || e.Header.Get("X-Test") != "v1" {
		t.Errorf("the instance saw %+v", e)
	}
	if ms, err := strconv.Atoi(e.Header.Get("Meridian-Timeout-Ms")); err != nil || ms <= 0 || ms > 10_000 {
		t.Errorf("the instance got Meridian-Timeout-Ms %q, want what is left of the caller's 10s", e.Header.Get("Meridian-Timeout-Ms"))
	}
	// The agent's span for the call is in the caller's trace. (The agent
	// does not pass a traceparent on to the instance yet: e.Header has none.)
	var trailer metadata.MD
	_, err = meridianv1.NewInvocationServiceClient(c.Conn()).Invoke(ctx,
		&meridianv1.InvokeRequest{Service: service, Method: "echo/traced"}, grpc.Trailer(&trailer))
	check(t, "Invoke through the generated client", err)
	if tps := trailer.Get("traceparent"); len(tps) != 1 || !strings.HasPrefix(tps[0], "00-"+tid.String()+"-") {
		t.Errorf("the agent's span: traceparent %v, want one in the caller's trace %s", tps, tid)
	}

	// An instance's 500 is a response; a POST is not retried.
	resp, err = c.Invoke(context.Background(), service, "fail", nil)
	check(t, "Invoke fail", err)
	if resp.Status != http.StatusInternalServerError || resp.Attempts != 1 || !strings.Contains(string(resp.Body), "failed on purpose") {
		t.Errorf("POST /fail: status %d attempts %d body %q", resp.Status, resp.Attempts, resp.Body)
	}

	// The caller's deadline bounds the call.
	dctx, dcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer dcancel()
	_, err = c.Invoke(dctx, service, "slow", nil, meridian.Verb("GET"))
	if !errors.Is(err, meridian.ErrDeadlineExceeded) {
		t.Errorf("Invoke past its deadline: %v, want ErrDeadlineExceeded", err)
	}

	// Deregistered: gone from the registry, and no longer called.
	check(t, "Close", reg.Close(context.Background()))
	waitForNoInstance(t, c, service, reg.ID())
	_, err = c.Invoke(context.Background(), service, "echo/x", nil)
	if !errors.Is(err, meridian.ErrUnavailable) {
		t.Errorf("Invoke of a service with no instance: %v, want ErrUnavailable", err)
	}
}

func TestInvokeFailsOverToAnotherRegion(t *testing.T) {
	east := usEast(t)
	west := regionClient(t, "eu-west")
	service := uniqueName(t, "echo")
	addr, _ := startEchoServer(t)
	reg := register(t, east, service, addr, 3*time.Second)
	// eu-west learns of the instance from us-east's announcements.
	waitForInstance(t, west, service, reg.ID(), meridian.HealthHealthy)

	var resp *meridian.Response
	eventually(t, "a call through eu-west served by us-east", func() (bool, error) {
		var err error
		resp, err = west.Invoke(context.Background(), service, "echo/from-west", []byte("hi"))
		return err == nil, err
	})
	if resp.Status != http.StatusAccepted || resp.Region != "us-east" || resp.Instance != reg.ID() {
		t.Fatalf("through eu-west: status %d region %q instance %q body %s", resp.Status, resp.Region, resp.Instance, resp.Body)
	}
	var e echoed
	if err := json.Unmarshal(resp.Body, &e); err != nil || e.Path != "/echo/from-west" || e.Body != "hi" {
		t.Errorf("the instance saw %+v (%v)", e, err)
	}
}

func TestUnhealthyInstanceIsNotCalled(t *testing.T) {
	c := usEast(t)
	service := uniqueName(t, "echo")
	addr, sick := startEchoServer(t)
	reg := register(t, c, service, addr, 3*time.Second)
	waitForInstance(t, c, service, reg.ID(), meridian.HealthHealthy)

	sick.Store(true)
	st := waitForInstance(t, c, service, reg.ID(), meridian.HealthUnhealthy)
	if st.HealthDetail == "" {
		t.Errorf("unhealthy without a detail: %+v", st)
	}
	_, err := c.Invoke(context.Background(), service, "echo/x", nil)
	if !errors.Is(err, meridian.ErrUnavailable) {
		t.Errorf("Invoke with the only instance unhealthy: %v, want ErrUnavailable", err)
	}
	sick.Store(false)
	waitForInstance(t, c, service, reg.ID(), meridian.HealthHealthy)
}

func TestRegistrationSurvivesALostLease(t *testing.T) {
	c := usEast(t)
	service := uniqueName(t, "echo")
	addr, _ := startEchoServer(t)
	reg := register(t, c, service, addr, time.Second)
	waitForInstance(t, c, service, reg.ID(), meridian.HealthHealthy)

	// Someone else deregisters it: the next heartbeat finds no lease and the
	// Registration registers again, under the same ID.
	_, err := meridianv1.NewRegistryServiceClient(c.Conn()).Deregister(context.Background(), &meridianv1.DeregisterRequest{InstanceId: reg.ID()})
	check(t, "Deregister behind the Registration's back", err)
	waitForNoInstance(t, c, service, reg.ID())
	waitForInstance(t, c, service, reg.ID(), meridian.HealthHealthy)
	if err := reg.Err(); err != nil {
		t.Errorf("Err() = %v after registering again", err)
	}
}

func TestRegistryInvalidArguments(t *testing.T) {
	c := usEast(t)
	_, err := c.Registry().Register(context.Background(), meridian.Instance{Service: uniqueName(t, "x"), Protocol: meridian.ProtocolHTTP}, time.Second)
	var merr *meridian.Error
	if !errors.As(err, &merr) || merr.Code != meridian.CodeInvalidArgument || !strings.Contains(merr.Field, "endpoint") {
		t.Errorf("Register without an endpoint: %v (field %q), want INVALID_ARGUMENT naming the endpoint", err, fieldOf(merr))
	}
	_, err = c.Invoke(context.Background(), uniqueName(t, "x"), "m", nil, meridian.Verb("BREW"))
	if !errors.As(err, &merr) || merr.Code != meridian.CodeInvalidArgument || !strings.Contains(merr.Field, "verb") {
		t.Errorf("Invoke with verb BREW: %v (field %q), want INVALID_ARGUMENT naming the verb", err, fieldOf(merr))
	}
}

func fieldOf(e *meridian.Error) string {
	if e == nil {
		return ""
	}
	return e.Field
}
