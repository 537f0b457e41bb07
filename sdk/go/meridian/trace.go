package meridian

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// mdCarrier adapts outgoing gRPC metadata to OpenTelemetry's propagators.
type mdCarrier struct {
	md  metadata.MD
	set bool
}

func (c *mdCarrier) Get(key string) string {
	if v := c.md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c *mdCarrier) Set(key, value string) {
	c.md.Set(key, value)
	c.set = true
}

func (c *mdCarrier) Keys() []string {
	keys := make([]string, 0, len(c.md))
	for k := range c.md {
		keys = append(keys, k)
	}
	return keys
}

// injectTrace puts the trace context of ctx (the caller's current span, as a
// W3C traceparent by default) into the call's outgoing metadata, so that the
// agent's span for the call is a child of the caller's.
func injectTrace(ctx context.Context, p propagation.TextMapPropagator) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	c := &mdCarrier{md: md.Copy()}
	p.Inject(ctx, c)
	if !c.set {
		return ctx // no span in ctx: nothing to propagate
	}
	return metadata.NewOutgoingContext(ctx, c.md)
}

func traceUnary(p propagation.TextMapPropagator) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(injectTrace(ctx, p), method, req, reply, cc, opts...)
	}
}

func traceStream(p propagation.TextMapPropagator) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(injectTrace(ctx, p), desc, cc, method, opts...)
	}
}
