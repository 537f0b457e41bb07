package meridian

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// Registry is the Registry API of one agent: service instances register
// with the agent of their region, which health-checks them and announces
// them to every region, so that Invoke can find them. Get it from
// Client.Registry. It is safe for concurrent use.
type Registry struct {
	rpc meridianv1.RegistryServiceClient
}

// Protocol is how the agent talks to an instance.
type Protocol int

// The protocols, in the order of the proto enum.
const (
	ProtocolUnspecified Protocol = iota
	// ProtocolHTTP: plain HTTP/1.1; health-checked with a GET of HealthPath.
	ProtocolHTTP
	// ProtocolGRPC: gRPC; health-checked with grpc.health.v1.Health/Check.
	ProtocolGRPC
)

func (p Protocol) String() string {
	switch p {
	case ProtocolHTTP:
		return "http"
	case ProtocolGRPC:
		return "grpc"
	}
	return "unspecified"
}

// Health is what the agent of an instance's region last found when it
// checked the instance.
type Health int

// The health states, in the order of the proto enum.
const (
	HealthUnspecified Health = iota
	// HealthUnknown: registered, not checked yet.
	HealthUnknown
	HealthHealthy
	HealthUnhealthy
)

func (h Health) String() string {
	switch h {
	case HealthUnknown:
		return "unknown"
	case HealthHealthy:
		return "healthy"
	case HealthUnhealthy:
		return "unhealthy"
	}
	return "unspecified"
}

// Instance is one instance of a service, as it registers.
type Instance struct {
	// ID is unique per instance. Leave it empty to let the agent make one
	// ("<service>-<region>-<random>"); Registration.ID is the one in use.
	ID      string
	Service string
	Version string
	// Region is the region of the agent the instance registered with; the
	// agent fills it in (Register ignores it).
	Region string
	// Endpoint is the host:port the local agent reaches the instance at.
	Endpoint string
	Protocol Protocol
	Metadata map[string]string
	// HealthPath is the path an HTTP instance answers health checks on with
	// a 2xx ("" for the agent's default, "/healthz").
	HealthPath string
	// HealthService is the service name a gRPC instance is asked about in
	// grpc.health.v1.Health/Check ("" for the server as a whole).
	HealthService string
	// HealthInterval is the time between checks (0 for the agent's default,
	// 1 s; at least 100 ms).
	HealthInterval time.Duration
}

func (i Instance) proto() *meridianv1.Instance {
	out := &meridianv1.Instance{
		InstanceId: i.ID,
		Service:    i.Service,
		Version:    i.Version,
		Endpoint:   i.Endpoint,
		Protocol:   meridianv1.Protocol(i.Protocol),
		Metadata:   maps.Clone(i.Metadata), // the heartbeat goroutine may send it again
		HealthCheck: &meridianv1.HealthCheck{
			HttpPath:    i.HealthPath,
			GrpcService: i.HealthService,
		},
	}
	if i.HealthInterval != 0 {
		out.HealthCheck.Interval = durationpb.New(i.HealthInterval)
	}
	return out
}

func instanceFrom(i *meridianv1.Instance) Instance {
	out := Instance{
		ID:            i.GetInstanceId(),
		Service:       i.GetService(),
		Version:       i.GetVersion(),
		Region:        i.GetRegion(),
		Endpoint:      i.GetEndpoint(),
		Protocol:      Protocol(i.GetProtocol()),
		HealthPath:    i.GetHealthCheck().GetHttpPath(),
		HealthService: i.GetHealthCheck().GetGrpcService(),
	}
	if m := i.GetMetadata(); len(m) > 0 {
		out.Metadata = maps.Clone(m)
	}
	if d := i.GetHealthCheck().GetInterval(); d != nil {
		out.HealthInterval = d.AsDuration()
	}
	return out
}

// InstanceStatus is an instance as the registry knows it.
type InstanceStatus struct {
	Instance
	Health Health
	// HealthDetail says why the last check failed, if it did.
	HealthDetail string
	// LeaseExpiresAt is when the instance is dropped unless it heartbeats.
	LeaseExpiresAt time.Time
	// CheckedAt is when its agent last checked its health.
	CheckedAt time.Time
	// AnnouncedAt is when its agent last announced it to the other regions.
	AnnouncedAt time.Time
}

// Healthy reports whether the last health check passed.
func (s InstanceStatus) Healthy() bool { return s.Health == HealthHealthy }

// ListInstances returns the instances of service in region as this agent's
// replica of the registry knows them: its own region's first hand, the
// others' as their agents last announced them. An empty service or region
// matches every one.
func (r *Registry) ListInstances(ctx context.Context, service, region string) ([]InstanceStatus, error) {
	resp, err := unary(ctx, r.rpc.ListInstances, &meridianv1.ListInstancesRequest{Service: service, Region: region})
	if err != nil {
		return nil, err
	}
	out := make([]InstanceStatus, 0, len(resp.GetInstances()))
	for _, s := range resp.GetInstances() {
		out = append(out, InstanceStatus{
			Instance:       instanceFrom(s.GetInstance()),
			Health:         Health(s.GetHealth()),
			HealthDetail:   s.GetHealthDetail(),
			LeaseExpiresAt: timeFrom(s.GetLeaseExpiresAt()),
			CheckedAt:      timeFrom(s.GetCheckedAt()),
			AnnouncedAt:    timeFrom(s.GetAnnouncedAt()),
		})
	}
	return out, nil
}

// RegisterOption configures Register: OnHeartbeatError.
type RegisterOption func(*registerOptions)

type registerOptions struct {
	onError func(error)
}

// OnHeartbeatError calls fn, from the heartbeat goroutine, with every
// failure to renew the lease (a failed heartbeat, or a failed registration
// after the agent had lost the lease). The Registration keeps trying; fn
// is for logging and metrics, and must not block.
func OnHeartbeatError(fn func(error)) RegisterOption {
	return func(o *registerOptions) { o.onError = fn }
}

// Register registers inst with the agent under a lease of ttl (0 for the
// agent's default, 10 s; at least 1 s, at most the agent's maximum), and
// keeps the lease alive in the background until Close: it heartbeats every
// third of the ttl the agent granted, and registers again, under the same
// ID, if a heartbeat finds the lease gone (the agent restarted, or the
// process was paused past the ttl).
//
// ctx bounds only the first registration; the heartbeats run until Close.
// A bad instance fails with ErrInvalidArgument naming the field
// ("instance.service", "instance.endpoint", "ttl", ...).
func (r *Registry) Register(ctx context.Context, inst Instance, ttl time.Duration, opts ...RegisterOption) (*Registration, error) {
	var o registerOptions
	for _, opt := range opts {
		opt(&o)
	}
	req := &meridianv1.RegisterRequest{Instance: inst.proto()}
	if ttl != 0 {
		req.Ttl = durationpb.New(ttl)
	}
	reg := &Registration{reg: r, req: req, onError: o.onError, done: make(chan struct{})}
	if err := reg.register(ctx); err != nil {
		return nil, err
	}
	var loopCtx context.Context
	loopCtx, reg.cancel = context.WithCancel(context.Background())
	go reg.run(loopCtx)
	return reg, nil
}

// Registration is a registered instance whose lease is kept alive in the
// background. Close it to deregister. Its methods are safe for concurrent
// use.
type Registration struct {
	reg     *Registry
	req     *meridianv1.RegisterRequest // Instance.InstanceId set once known
	onError func(error)
	cancel  context.CancelFunc // stops the heartbeats
	done    chan struct{}      // closed when they have stopped

	mu        sync.Mutex
	ttl       time.Duration
	expiresAt time.Time
	err       error

	closeOnce sync.Once
	closeErr  error
}

// ID is the instance's ID, as the agent knows it.
func (r *Registration) ID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.req.GetInstance().GetInstanceId()
}

// TTL is the lease the agent granted.
func (r *Registration) TTL() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ttl
}

// LeaseExpiresAt is when the lease runs out unless renewed, as of the last
// successful heartbeat.
func (r *Registration) LeaseExpiresAt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.expiresAt
}

// Err is the error of the last attempt to renew the lease, or nil if it
// succeeded.
func (r *Registration) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// defaultTTL is the agent's default lease, for an agent that did not say
// which ttl it granted.
const defaultTTL = 10 * time.Second

func (r *Registration) register(ctx context.Context) error {
	r.mu.Lock()
	req := r.req
	r.mu.Unlock()
	resp, err := unary(ctx, r.reg.rpc.Register, req)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Later registrations keep the ID, so the instance stays the same one
	// to the registry and to callers.
	r.req.Instance.InstanceId = resp.GetInstanceId()
	r.ttl = defaultTTL
	if d := resp.GetTtl(); d != nil && d.AsDuration() > 0 {
		r.ttl = d.AsDuration()
	} else if d := req.GetTtl(); d != nil && d.AsDuration() > 0 {
		r.ttl = d.AsDuration()
	}
	r.expiresAt = timeFrom(resp.GetLeaseExpiresAt())
	return nil
}

// run renews the lease until ctx is canceled: every ttl/3, or every ttl/10
// (at least 100 ms) after a failure, so that a lease survives a couple of
// lost heartbeats.
func (r *Registration) run(ctx context.Context) {
	defer close(r.done)
	timer := time.NewTimer(r.TTL() / 3)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		ttl := r.TTL()
		err := r.renew(ctx, ttl/3)
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		r.err = err
		r.mu.Unlock()
		if err == nil {
			timer.Reset(ttl / 3)
			continue
		}
		if r.onError != nil {
			r.onError(err)
		}
		timer.Reset(max(ttl/10, 100*time.Millisecond))
	}
}

// renew sends one heartbeat, and registers again if the agent no longer
// holds the lease. timeout bounds each call.
func (r *Registration) renew(ctx context.Context, timeout time.Duration) error {
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := unary(hctx, r.reg.rpc.Heartbeat, &meridianv1.HeartbeatRequest{InstanceId: r.ID()})
	if errors.Is(err, ErrNotFound) {
		rctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return r.register(rctx)
	}
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.expiresAt = timeFrom(resp.GetLeaseExpiresAt())
	r.mu.Unlock()
	return nil
}

// Close stops the heartbeats and deregisters the instance, so callers stop
// being sent to it as soon as the agents have applied the withdrawal (a
// moment), rather than when its lease runs out. ctx bounds
// the Deregister call (use a fresh one on shutdown, not the one that was
// just canceled). An instance the agent no longer knows counts as
// deregistered. Close the Registration before the Client. It is safe to
// call more than once; later calls return the first one's result.
func (r *Registration) Close(ctx context.Context) error {
	r.closeOnce.Do(func() {
		r.cancel()
		<-r.done
		_, err := unary(ctx, r.reg.rpc.Deregister, &meridianv1.DeregisterRequest{InstanceId: r.ID()})
		if errors.Is(err, ErrNotFound) {
			err = nil
		}
		r.closeErr = err
	})
	return r.closeErr
}
