// Package meridian is the Go client of a Meridian agent.
//
// A service talks to the agent of its own region over gRPC:
//
//	c, err := meridian.Dial(ctx, "127.0.0.1:14020")
//	if err != nil { ... }
//	defer c.Close()
//	w, err := c.State().Put(ctx, "accounts", "alice", []byte("100"))
//	r, err := c.State().Get(ctx, "accounts", "alice", meridian.Bounded(500*time.Millisecond))
//	_, err = c.State().Put(ctx, "accounts", "alice", []byte("90"), meridian.IfRevision(r.Revision))
//	if errors.Is(err, meridian.ErrConflict) { ... }
//
// # Mutual TLS
//
// Without a TLS option Dial connects in plaintext, for an agent in insecure
// mode. An agent that serves mutual TLS needs the service's identity from
// `meridian ca issue service/<name>`: WithTLSDir(dir) reads its cert.pem,
// key.pem and bundle.pem, presents the certificate, and accepts only an
// agent (spiffe://<trust domain>/region/<region>/agent) whose certificate
// chains to the bundle; host names are not checked. The files are read again
// when they change, so re-issued certificates and a rotated root take effect
// without a restart:
//
//	c, err := meridian.Dial(ctx, "127.0.0.1:14020",
//		meridian.WithTLSDir(".meridian/ca/identities/service-orders"))
//
// TLSConfig and TLSConfigDir give the same configuration for an
// http.Transport, to call the agent's HTTP/JSON API (https://host:port).
//
// # Consistency
//
// A read of a global keyspace is Strong by default (linearizable), or
// Bounded(d) (at most d stale, else served as Strong), or Eventual (the
// agent's cache). A replicated keyspace reads Eventual by default, or
// Bounded(d); Strong is an invalid argument there. Every read says what was
// served and how stale it may be.
//
// # Idempotency
//
// Client.Idempotency runs a command once per idempotency key, across
// regions: Once(ctx, scope, key, request, fn) runs fn the first time and
// replays its stored response after that.
//
// # Events
//
// Client.Events publishes events and consumes them in durable consumer
// groups of the agent's region, effectively once per group across regions:
//
//	_, err = c.Events().Publish(ctx, "orders.placed", "o-1", body, "order-o-1-placed")
//	err = c.Events().Subscribe(ctx, "billing", meridian.Topic("orders.*"),
//		func(ctx context.Context, d meridian.Delivery) error { return bill(ctx, d.Event) })
//
// # Calls between services
//
// Client.Registry registers an instance with the agent, which health-checks
// it and keeps it in a registry every region sees; Client.Invoke calls a
// service through the agent, which picks a healthy instance (its own region
// first) and fails over to other regions:
//
//	reg, err := c.Registry().Register(ctx, meridian.Instance{Service: "orders", Endpoint: "127.0.0.1:8080",
//		Protocol: meridian.ProtocolHTTP, HealthPath: "/healthz"}, 10*time.Second)
//	defer reg.Close(context.Background())
//	resp, err := c.Invoke(ctx, "inventory", "reservations", body, meridian.Header("Content-Type", "application/json"))
//	fmt.Println(resp.Status, resp.Region, resp.Instance)
//
// # Feature flags
//
// Flags are written in flagd's flag format and stored for every region by
// SetFlag; each agent evaluates its own copy, with its region in the
// evaluation context as "region". KillFlag is the kill switch, served
// everywhere from one global write. Package flags computes fractional
// rollouts offline, as the agent does.
//
//	_, err = c.SetFlag(ctx, "new-checkout", []byte(`{"state":"ENABLED","variants":{"on":true,"off":false},
//		"defaultVariant":"off","targeting":{"fractional":[["on",10],["off",90]]}}`))
//	ev, err := c.EvaluateFlag(ctx, "new-checkout", map[string]any{"targetingKey": userID})
//	if ev.Value == true { ... }
//
// # Errors
//
// Every method returns nil or an *Error carrying the stable code the agent
// sent. Match it with errors.Is against ErrConflict, ErrNotFound,
// ErrInvalidArgument, ErrQuorumUnavailable, ErrClockSkew, ErrUnavailable,
// ErrFenced, ErrIdempotencyInProgress, ErrIdempotencyMismatch,
// ErrResourceExhausted, ErrPermissionDenied, ErrResidencyViolation,
// ErrDeadlineExceeded (also context.DeadlineExceeded), ErrCanceled (also
// context.Canceled), and read its details with errors.As:
//
//	var merr *meridian.Error
//	if errors.As(err, &merr) && merr.Code == meridian.CodeConflict {
//		retryFrom(merr.CurrentRevision)
//	}
//
// # Deadlines, cancellation and tracing
//
// Every call honours its context: its deadline becomes the gRPC deadline and
// the agent's, and canceling it cancels the call. The W3C trace context of
// the span in the context (OpenTelemetry) is sent along, so the agent's span
// joins the caller's trace.
package meridian

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// DefaultDialTimeout bounds Dial when its context has no deadline.
const DefaultDialTimeout = 10 * time.Second

// maxMessageBytes is room for the largest value (8 MiB) plus the envelope;
// the agent uses the same limit.
const maxMessageBytes = 10 << 20

// Option configures Dial.
type Option func(*options)

type options struct {
	creds       credentials.TransportCredentials
	tlsFiles    *tlsFiles // WithTLSFiles; creds is nil then
	propagator  propagation.TextMapPropagator
	dialOptions []grpc.DialOption
}

// WithTransportCredentials sets the connection's credentials, for TLS set
// up by the caller. For mutual TLS with an identity from `meridian ca`, use
// WithTLSDir or WithTLSFiles instead; this option and those replace each
// other (the last one given applies). The default is plaintext, for an
// agent in insecure mode on the same host or pod.
func WithTransportCredentials(c credentials.TransportCredentials) Option {
	return func(o *options) { o.creds, o.tlsFiles = c, nil }
}

// WithPropagator replaces the propagator that writes the caller's trace
// context into each call's metadata. The default is W3C Trace Context
// (traceparent, tracestate), which is what the agent reads; pass
// otel.GetTextMapPropagator() to add baggage or other formats.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(o *options) { o.propagator = p }
}

// WithDialOptions adds gRPC dial options, e.g. a stats handler such as
// otelgrpc.NewClientHandler() for client spans and metrics. They are applied
// after Meridian's own, so they can override them.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// Client is a connection to one agent. It is safe for concurrent use; make
// one per process and agent, and Close it when done.
type Client struct {
	conn   *grpc.ClientConn
	region string
	state  *State
	idem   *Idempotency
	events *Events
	reg    *Registry
	// The unwrapped services.
	healthRPC     meridianv1.HealthServiceClient
	statusRPC     meridianv1.StatusServiceClient
	invocationRPC meridianv1.InvocationServiceClient
	flagsRPC      meridianv1.FlagServiceClient

	closeOnce sync.Once
	closeErr  error
}

// Dial connects to the agent at addr ("host:port") and waits until it
// answers a health check, or until ctx is done (DefaultDialTimeout if ctx
// has no deadline). The agent may answer that it is degraded: Dial only
// proves it is there and learns its region. ctx bounds only Dial itself.
//
// On failure it returns an *Error and holds no resources: ErrInvalidArgument
// at once for a bad addr or TLS files that can't be used (Field "addr",
// "tls.cert", "tls.key" or "tls.bundle"); ErrUnavailable or
// ErrDeadlineExceeded when the agent does not answer, or refuses the
// handshake, or its certificate is not an agent's (the message says why).
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	o := options{creds: insecure.NewCredentials(), propagator: propagation.TraceContext{}}
	for _, opt := range opts {
		opt(&o)
	}
	if o.tlsFiles != nil {
		cfg, err := TLSConfig(o.tlsFiles.cert, o.tlsFiles.key, o.tlsFiles.bundle)
		if err != nil {
			return nil, err
		}
		o.creds = credentials.NewTLS(cfg)
	}
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(o.creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)),
		grpc.WithChainUnaryInterceptor(traceUnary(o.propagator)),
		grpc.WithChainStreamInterceptor(traceStream(o.propagator)),
	}
	conn, err := grpc.NewClient(addr, append(dialOpts, o.dialOptions...)...)
	if err != nil {
		return nil, &Error{Code: CodeInvalidArgument, Field: "addr", Rule: err.Error(), Message: fmt.Sprintf("addr: %v", err)}
	}
	c := NewClient(conn)
	c.events.propagator = o.propagator
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}
	h, err := c.health(ctx, grpc.WaitForReady(true))
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	c.region = h.Region
	return c, nil
}

// NewClient wraps a gRPC connection made by the caller (its own dialer,
// interceptors, load balancing). It does not add Meridian's trace
// propagation; use Dial for that. Closing the Client closes conn.
func NewClient(conn *grpc.ClientConn) *Client {
	return &Client{
		conn:          conn,
		state:         &State{rpc: meridianv1.NewStateServiceClient(conn)},
		idem:          &Idempotency{rpc: meridianv1.NewIdempotencyServiceClient(conn)},
		events:        &Events{rpc: meridianv1.NewEventServiceClient(conn), propagator: propagation.TraceContext{}},
		reg:           &Registry{rpc: meridianv1.NewRegistryServiceClient(conn)},
		healthRPC:     meridianv1.NewHealthServiceClient(conn),
		statusRPC:     meridianv1.NewStatusServiceClient(conn),
		invocationRPC: meridianv1.NewInvocationServiceClient(conn),
		flagsRPC:      meridianv1.NewFlagServiceClient(conn),
	}
}

// State is the State API: keys in the keyspaces the agent declares.
func (c *Client) State() *State { return c.state }

// Idempotency is the Idempotency API: run a command once per idempotency key.
func (c *Client) Idempotency() *Idempotency { return c.idem }

// Events is the Event API: publish events, consume them in consumer groups,
// replay, and invalidate caches in every region.
func (c *Client) Events() *Events { return c.events }

// Registry is the Registry API: register this process's service instance
// with the agent, and list the instances of every region.
func (c *Client) Registry() *Registry { return c.reg }

// Region is the region of the agent, as it said when Dial checked it
// ("" for a Client made by NewClient).
func (c *Client) Region() string { return c.region }

// Conn is the underlying connection, for the generated clients in
// meridianpb/v1 (e.g. services this package does not wrap yet). Calls on it
// carry the trace context like the Client's own.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection; calls in flight fail with ErrCanceled or
// ErrUnavailable. It is safe to call more than once.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.conn.Close() })
	return c.closeErr
}

// HealthStatus is the agent's answer to a health check.
type HealthStatus struct {
	// Status is SERVING, DEGRADED (it serves its region, but the global
	// quorum, a peer or the clock is off) or NOT_SERVING (no NATS).
	Status meridianv1.HealthCheckResponse_ServingStatus
	Region string
	// Reasons explain anything other than SERVING.
	Reasons []string
}

// Serving reports whether the agent serves its region (SERVING or DEGRADED).
func (h HealthStatus) Serving() bool {
	return h.Status == meridianv1.HealthCheckResponse_SERVING_STATUS_SERVING ||
		h.Status == meridianv1.HealthCheckResponse_SERVING_STATUS_DEGRADED
}

// Health asks the agent whether it can serve its region. It is the cheap
// probe; Status has the full picture.
func (c *Client) Health(ctx context.Context) (HealthStatus, error) {
	return c.health(ctx)
}

func (c *Client) health(ctx context.Context, opts ...grpc.CallOption) (HealthStatus, error) {
	var trailer metadata.MD
	resp, err := c.healthRPC.Check(ctx, &meridianv1.HealthCheckRequest{}, append(opts, grpc.Trailer(&trailer))...)
	if err != nil {
		return HealthStatus{}, fromRPC(err, trailer)
	}
	return HealthStatus{Status: resp.GetStatus(), Region: resp.GetRegion(), Reasons: resp.GetReasons()}, nil
}

// Status returns what the agent last observed of NATS, JetStream, the
// global quorum, its peer regions and its clock. It never blocks on the
// network: the agent refreshes it in the background.
func (c *Client) Status(ctx context.Context) (*meridianv1.AgentStatus, error) {
	var trailer metadata.MD
	resp, err := c.statusRPC.GetStatus(ctx, &meridianv1.GetStatusRequest{}, grpc.Trailer(&trailer))
	if err != nil {
		return nil, fromRPC(err, trailer)
	}
	return resp.GetStatus(), nil
}
