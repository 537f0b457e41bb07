package meridian

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Handler processes one delivery. Returning nil acks it; returning an error
// nacks it (redelivered after the backoff, or NackDelay; dead-lettered after
// MaxDeliveries attempts). ctx is canceled when Subscribe's context is done
// or the stream fails, and carries the producer's trace context (see
// Subscribe).
type Handler func(ctx context.Context, d Delivery) error

// Subscribe joins consumer group group (of the agent's region) as one
// subscriber of source, and calls handler for every delivery, one at a time,
// in the order the agent delivers them (so events of one key from one
// region are handled in order). It acks a delivery when handler returns nil
// and nacks it when handler returns an error.
//
// It runs until ctx is done, then stops taking deliveries, lets the running
// handler finish (its ctx is canceled too; an error it returns then is not
// nacked: the delivery just goes back to the group), closes its side of the
// stream and waits (at most the DrainTimeout) for the agent to apply the
// acks sent and end the stream. It then returns nil (also when ctx was done
// before it subscribed), or ErrDeadlineExceeded if the agent did not confirm
// in time. If the subscription is refused (a bad argument:
// ErrInvalidArgument naming the field) or the stream fails (ErrUnavailable,
// ...), it returns that typed error; subscribing again resumes where the
// group left off.
//
// Tracing: handler's ctx carries the trace context of the event's
// "traceparent" header (written by the agent from the Publish call's span)
// as its remote parent, read with the Client's propagator, and a consumer
// span "<topic> process" with a link to the producer's span is started in it
// from the global OpenTelemetry TracerProvider. Without a configured
// provider, that span records nothing but the ctx still carries the
// producer's trace, so spans the handler starts join it.
func (e *Events) Subscribe(ctx context.Context, group string, source Source, handler Handler, opts ...SubscribeOption) error {
	o := subscribeOptions{drainTimeout: DefaultDrainTimeout}
	for _, opt := range opts {
		opt.applySubscribe(&o)
	}
	if ctx.Err() != nil {
		return nil
	}
	// The stream outlives ctx by the drain, so that acks are applied; while
	// opening, ctx still cancels it.
	streamCtx, cancelStream := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelStream()
	unwatch := context.AfterFunc(ctx, cancelStream)
	sub, err := e.open(streamCtx, group, source, &o)
	if !unwatch() { // ctx was done while opening
		if sub != nil {
			_ = sub.Close()
		}
		return nil
	}
	if err != nil {
		return err
	}
	// Handlers stop when ctx is done or the stream fails.
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	go func() {
		select {
		case <-sub.done:
			cancelRun()
		case <-runCtx.Done():
		}
	}()
	for {
		d, err := sub.Recv(runCtx)
		if err != nil {
			return stop(ctx, sub, err)
		}
		herr := e.handle(runCtx, group, d, handler)
		if herr != nil && runCtx.Err() != nil {
			// Stopping: don't spend an attempt on a nack; the end of the
			// stream hands the delivery back.
			continue
		}
		var serr error
		switch {
		case herr == nil:
			serr = sub.Ack(d)
		case o.nackDelay != nil:
			serr = sub.NackAfter(d, *o.nackDelay)
		default:
			serr = sub.Nack(d)
		}
		if serr != nil {
			return stop(ctx, sub, serr)
		}
	}
}

// stop ends Subscribe: gracefully when ctx is done, else with the error the
// stream failed with (err is what noticed it).
func stop(ctx context.Context, sub *Subscription, err error) error {
	cerr := sub.Close()
	if ctx.Err() != nil || cerr != nil {
		return cerr
	}
	return err
}

const tracerName = "github.com/meridian-rt/meridian/sdk/go/meridian"

// handle runs handler in a consumer span that continues the producer's trace.
func (e *Events) handle(ctx context.Context, group string, d Delivery, handler Handler) error {
	ctx = e.propagator.Extract(ctx, propagation.MapCarrier(d.Event.Headers))
	spanOpts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "meridian"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", d.Event.Topic),
			attribute.String("messaging.consumer.group.name", group),
			attribute.String("messaging.message.id", d.Event.EventID),
			attribute.Int64("messaging.message.delivery_attempt", int64(d.Attempt)),
		),
	}
	if producer := trace.SpanContextFromContext(ctx); producer.IsValid() && producer.IsRemote() {
		spanOpts = append(spanOpts, trace.WithLinks(trace.Link{SpanContext: producer}))
	}
	ctx, span := otel.Tracer(tracerName).Start(ctx, d.Event.Topic+" process", spanOpts...)
	defer span.End()
	err := handler(ctx, d)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(otelcodes.Error, err.Error())
	}
	return err
}
