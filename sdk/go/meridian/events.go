package meridian

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// Events is the Event API of one agent: publish events, consume them in
// durable consumer groups of the agent's region (with acks, redelivery and a
// dead-letter stream), consume a keyspace's change feed, replay a group, and
// fan cache invalidations out to every region. Get it from Client.Events. It
// is safe for concurrent use.
//
// Delivery is effectively once per group: JetStream drops an event id
// republished inside its duplicate window, and each group's inbox of
// processed event ids absorbs any later copy (published again, or in another
// region). The event id is the identity across topics too.
type Events struct {
	rpc        meridianv1.EventServiceClient
	propagator propagation.TextMapPropagator
}

// DefaultDrainTimeout bounds how long Subscription.Close (and Subscribe,
// when its context is done) waits for the agent to apply the acks already
// sent and end the stream.
const DefaultDrainTimeout = 5 * time.Second

// InvalidateTopicPrefix is the topic prefix of cache invalidations:
// Invalidate(ctx, ns, keys) publishes to "_invalidate.<ns>", so subscribe to
// Topic("_invalidate.<ns>") (or "_invalidate.>") to receive them.
const InvalidateTopicPrefix = "_invalidate."

// Event is one published event, or one write of a keyspace's change feed.
type Event struct {
	// Topic is the event's topic; "_state.<keyspace>" for a change feed and
	// "_invalidate.<namespace>" for an invalidation.
	Topic string
	Key   string
	// Payload is the event's bytes; for a change feed, the value written
	// (for a replicated keyspace, the key's merged state).
	Payload []byte
	// EventID is the identity deduplication uses; for a change feed,
	// "<keyspace>:<origin region>:<sequence>".
	EventID string
	// Headers are the publisher's headers plus the traceparent of the
	// Publish call; for a change feed, "operation" ("put" or "delete") and
	// "hlc".
	Headers map[string]string
	// OriginRegion and OriginSequence are where it was published: the region
	// and the sequence in that region's stream.
	OriginRegion   string
	OriginSequence uint64
	// PublishedAt is when it was published (zero if unknown).
	PublishedAt time.Time
}

// Delivery is one delivery of an event to a subscriber of a group. Ack it
// or nack it (Subscribe does so from the handler's result).
type Delivery struct {
	// ID names the delivery in Ack and Nack, on its own subscription.
	ID uint64
	// Attempt is 1 on the first delivery, 2 on the first redelivery, ...
	Attempt uint32
	// Sequence is the event's sequence in this region's aggregate stream
	// (or the keyspace's stream): a StartSequence for Replay.
	Sequence uint64
	Event    Event
}

func deliveryFrom(d *meridianv1.Delivery) Delivery {
	e := d.GetEvent()
	out := Delivery{
		ID:       d.GetDeliveryId(),
		Attempt:  d.GetAttempt(),
		Sequence: d.GetSequence(),
		Event: Event{
			Topic:          e.GetTopic(),
			Key:            e.GetKey(),
			Payload:        e.GetPayload(),
			EventID:        e.GetEventId(),
			Headers:        e.GetHeaders(),
			OriginRegion:   e.GetOriginRegion(),
			OriginSequence: e.GetOriginSequence(),
		},
	}
	if out.Event.Headers == nil {
		out.Event.Headers = map[string]string{}
	}
	if ts := e.GetPublishedAt(); ts != nil {
		out.Event.PublishedAt = ts.AsTime()
	}
	return out
}

// ---------------------------------------------------------------------------
// Publish

// PublishResult is what Publish stored.
type PublishResult struct {
	// Sequence is the event's sequence in the publishing region's stream.
	Sequence uint64
	// Region is the publishing region (the agent's).
	Region string
	// Duplicate: JetStream recognised the event id as one published inside
	// its duplicate window, and stored nothing new. Not an error: a retried
	// Publish is safe.
	Duplicate bool
}

// PublishOption configures Publish: Headers.
type PublishOption func(*meridianv1.PublishRequest)

// Headers adds headers to the event: at most 32, 8 KiB in all, names of
// A-Z a-z 0-9 -, not starting with "Nats-" or "Meridian-". The agent adds a
// "traceparent" from the Publish call's span.
func Headers(h map[string]string) PublishOption {
	return func(r *meridianv1.PublishRequest) {
		if r.Headers == nil {
			r.Headers = make(map[string]string, len(h))
		}
		for k, v := range h {
			r.Headers[k] = v
		}
	}
}

// Publish writes an event to this region's stream; every region's groups
// receive it. topic is dot-separated tokens of a-z 0-9 _ - ("orders.placed";
// topics starting with "_" are reserved); order is kept per key within the
// publishing region; payload is at most 1 MiB; eventID (required, 1..128
// printable ASCII) is the event's identity for deduplication, across topics
// and regions, so derive it from what the event is about, not from the
// attempt.
//
// The trace context of ctx is sent along, and the agent stores it in the
// event's "traceparent" header, so consumers can join the trace. A bad
// argument fails with ErrInvalidArgument naming the field ("topic", "key",
// "event_id", "payload", "headers"), and nothing is published.
func (e *Events) Publish(ctx context.Context, topic, key string, payload []byte, eventID string, opts ...PublishOption) (PublishResult, error) {
	req := &meridianv1.PublishRequest{Topic: topic, Key: key, Payload: payload, EventId: eventID}
	for _, opt := range opts {
		opt(req)
	}
	resp, err := unary(ctx, e.rpc.Publish, req)
	if err != nil {
		return PublishResult{}, err
	}
	return publishedFrom(resp), nil
}

func publishedFrom(r *meridianv1.PublishResponse) PublishResult {
	return PublishResult{Sequence: r.GetSequence(), Region: r.GetRegion(), Duplicate: r.GetDuplicate()}
}

// OutgoingEvent is one event of PublishBatch, with the arguments of Publish.
type OutgoingEvent struct {
	Topic   string
	Key     string
	Payload []byte
	EventID string
	Headers map[string]string
}

// PublishBatch publishes up to 1000 events (8 MiB of payloads in all) in one
// call, for throughput; the results are in the order of events. Every event
// is checked first: one bad event fails the call with ErrInvalidArgument
// naming "events[i].<field>", and nothing is published. If an event is not
// stored the call fails and others of the batch may have been: send the same
// batch again, and those come back with Duplicate set.
func (e *Events) PublishBatch(ctx context.Context, events []OutgoingEvent) ([]PublishResult, error) {
	req := &meridianv1.PublishBatchRequest{Events: make([]*meridianv1.PublishRequest, len(events))}
	for i, ev := range events {
		req.Events[i] = &meridianv1.PublishRequest{Topic: ev.Topic, Key: ev.Key, Payload: ev.Payload,
			EventId: ev.EventID, Headers: ev.Headers}
	}
	resp, err := unary(ctx, e.rpc.PublishBatch, req)
	if err != nil {
		return nil, err
	}
	out := make([]PublishResult, len(resp.GetResults()))
	for i, r := range resp.GetResults() {
		out[i] = publishedFrom(r)
	}
	return out, nil
}

// Invalidate tells every region's subscribers of the topic
// "_invalidate.<namespace>" to drop keys from their caches; they get it
// within the replication lag. The event's payload is the JSON
// {"namespace": ..., "keys": [...]}. It returns the event's sequence in
// this region's stream.
func (e *Events) Invalidate(ctx context.Context, namespace string, keys []string) (uint64, error) {
	resp, err := unary(ctx, e.rpc.Invalidate, &meridianv1.InvalidateRequest{Namespace: namespace, Keys: keys})
	if err != nil {
		return 0, err
	}
	return resp.GetSequence(), nil
}

// ---------------------------------------------------------------------------
// Sources and start positions

// Source is what a group consumes: Topic(filter) or Keyspace(name).
type Source struct {
	topicFilter string
	keyspace    string
	isKeyspace  bool
}

// Topic consumes the events of topics matching filter: a topic
// ("orders.placed"), or a pattern where "*" matches one token and a final
// ">" one or more ("orders.*", "orders.>").
func Topic(filter string) Source { return Source{topicFilter: filter} }

// Keyspace consumes the change feed of a keyspace: every write is one event
// (topic "_state.<keyspace>", header "operation" = "put" or "delete").
func Keyspace(name string) Source { return Source{keyspace: name, isKeyspace: true} }

func (s Source) String() string {
	if s.isKeyspace {
		return "keyspace " + s.keyspace
	}
	return "topic " + s.topicFilter
}

// Start is where a new group starts (a SubscribeOption), or where Replay
// moves a group to: StartSequence(n) or StartTime(t). Without one, a new
// group starts with the events published after it is created.
type Start struct {
	sequence uint64
	time     time.Time
	isTime   bool
}

// StartSequence starts at sequence n (at least 1) of this region's
// aggregate stream (Delivery.Sequence); StartSequence(1) is from the
// beginning.
func StartSequence(n uint64) Start { return Start{sequence: n} }

// StartTime starts with the first event stored at or after t.
func StartTime(t time.Time) Start { return Start{time: t, isTime: true} }

func (s Start) proto() *meridianv1.StartPosition {
	if s.isTime {
		return &meridianv1.StartPosition{Position: &meridianv1.StartPosition_Time{Time: timestamppb.New(s.time)}}
	}
	return &meridianv1.StartPosition{Position: &meridianv1.StartPosition_Sequence{Sequence: s.sequence}}
}

func (s Start) applySubscribe(o *subscribeOptions) { o.start = &s }

// Replay moves group's position (for source, in this region) back or
// forward to start; its subscribers then get the events from there on
// again, including ones they acked.
func (e *Events) Replay(ctx context.Context, group string, source Source, start Start) error {
	req := &meridianv1.ReplayRequest{Group: group, Start: start.proto()}
	if source.isKeyspace {
		req.Source = &meridianv1.ReplayRequest_Keyspace{Keyspace: source.keyspace}
	} else {
		req.Source = &meridianv1.ReplayRequest_TopicFilter{TopicFilter: source.topicFilter}
	}
	_, err := unary(ctx, e.rpc.Replay, req)
	return err
}

// ---------------------------------------------------------------------------
// Subscriptions

// SubscribeOption configures Subscribe and Open: a Start (StartSequence,
// StartTime), MaxInFlight, MaxDeliveries, AckWait, NackDelay, DrainTimeout.
type SubscribeOption interface{ applySubscribe(*subscribeOptions) }

type subscribeOptions struct {
	start         *Start
	maxInFlight   uint32
	maxDeliveries uint32
	ackWait       *time.Duration
	nackDelay     *time.Duration
	drainTimeout  time.Duration
}

type subscribeOption func(*subscribeOptions)

func (f subscribeOption) applySubscribe(o *subscribeOptions) { f(o) }

// MaxInFlight is how many deliveries the agent sends this subscriber ahead
// of its acks (default 64, at most 1024). Subscribe runs its handler on one
// delivery at a time, so the last of them waits for all the others: keep
// n * (handler time) well under AckWait.
func MaxInFlight(n uint32) SubscribeOption {
	return subscribeOption(func(o *subscribeOptions) { o.maxInFlight = n })
}

// MaxDeliveries is how many attempts an event gets (nacked, or not acked
// within AckWait) before it moves to the dead-letter stream (default 5, at
// most 100). It is fixed when the group is created.
func MaxDeliveries(n uint32) SubscribeOption {
	return subscribeOption(func(o *subscribeOptions) { o.maxDeliveries = n })
}

// AckWait is how long a delivery may stay unacked before it is redelivered
// (default 30 s, 0.1 s at least).
func AckWait(d time.Duration) SubscribeOption {
	return subscribeOption(func(o *subscribeOptions) { o.ackWait = &d })
}

// NackDelay makes Subscribe nack a failed delivery with this redelivery
// delay, instead of the agent's exponential backoff by attempt (0.1 s,
// 0.2 s, 0.4 s, ... up to 30 s). Open ignores it (Subscription.NackAfter).
func NackDelay(d time.Duration) SubscribeOption {
	return subscribeOption(func(o *subscribeOptions) { o.nackDelay = &d })
}

// DrainTimeout bounds the wait for the agent to apply the acks already sent
// and end the stream, on Close or when Subscribe's context is done
// (default DefaultDrainTimeout).
func DrainTimeout(d time.Duration) SubscribeOption {
	return subscribeOption(func(o *subscribeOptions) { o.drainTimeout = d })
}

func (o *subscribeOptions) open(group string, source Source) *meridianv1.SubscribeRequest {
	op := &meridianv1.SubscribeOpen{Group: group, MaxInFlight: o.maxInFlight, MaxDeliveries: o.maxDeliveries}
	if source.isKeyspace {
		op.Source = &meridianv1.SubscribeOpen_Keyspace{Keyspace: source.keyspace}
	} else {
		op.Source = &meridianv1.SubscribeOpen_TopicFilter{TopicFilter: source.topicFilter}
	}
	if o.start != nil {
		op.Start = o.start.proto()
	}
	if o.ackWait != nil {
		op.AckWait = durationpb.New(*o.ackWait)
	}
	return &meridianv1.SubscribeRequest{Kind: &meridianv1.SubscribeRequest_Open{Open: op}}
}

// Subscription is one subscriber of a consumer group: one gRPC stream, with
// deliveries coming down and acks and nacks going up. Receive with Recv
// (from one goroutine at a time); Ack or Nack every delivery (from any
// goroutine); Close when done. Subscribe is the simpler way to consume.
//
// Deliveries not acked when the subscription ends are handed back to the
// group at once (and count as an attempt).
type Subscription struct {
	stream       grpc.BidiStreamingClient[meridianv1.SubscribeRequest, meridianv1.Delivery]
	cancel       context.CancelFunc
	drainTimeout time.Duration

	deliveries chan Delivery
	done       chan struct{} // closed when the stream has ended; err says how
	err        error         // the stream's end: nil after a clean Close

	closing   chan struct{} // closed by Close: deliveries from now on are dropped
	closeOnce sync.Once
	closeErr  error

	sendMu     sync.Mutex
	sendClosed bool
}

// Open joins consumer group group (of the agent's region) as one
// subscriber of source, and returns once the agent has accepted it: the
// group exists, and with no Start it gets every event published from now
// on. A bad argument fails with ErrInvalidArgument naming the field
// ("group", "topic_filter", "keyspace", "start.sequence", "max_in_flight",
// ...).
//
// ctx bounds the whole subscription: canceling it ends the stream at once,
// and acks not yet applied may be lost (their events are redelivered). To
// end it gracefully, call Close.
func (e *Events) Open(ctx context.Context, group string, source Source, opts ...SubscribeOption) (*Subscription, error) {
	o := subscribeOptions{drainTimeout: DefaultDrainTimeout}
	for _, opt := range opts {
		opt.applySubscribe(&o)
	}
	return e.open(ctx, group, source, &o)
}

func (e *Events) open(ctx context.Context, group string, source Source, o *subscribeOptions) (*Subscription, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := e.rpc.Subscribe(ctx)
	if err != nil {
		cancel()
		return nil, fromRPC(err, nil)
	}
	if err := stream.Send(o.open(group, source)); err != nil {
		err = endOf(stream, err)
		cancel()
		return nil, err
	}
	// The agent sends its headers once it has validated the request and
	// created (or found) the group's consumer; a refusal comes without them.
	if md, err := stream.Header(); err != nil || md == nil {
		err = endOf(stream, err)
		cancel()
		return nil, err
	}
	s := &Subscription{
		stream:       stream,
		cancel:       cancel,
		drainTimeout: o.drainTimeout,
		deliveries:   make(chan Delivery),
		done:         make(chan struct{}),
		closing:      make(chan struct{}),
	}
	go s.pump()
	return s, nil
}

// endOf is the typed error a stream ended with, reading it with Recv when
// err (from Send or Header) does not carry it.
func endOf(stream grpc.BidiStreamingClient[meridianv1.SubscribeRequest, meridianv1.Delivery], err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		for {
			if _, err = stream.Recv(); err != nil {
				break
			}
		}
	}
	if errors.Is(err, io.EOF) {
		return &Error{Code: CodeUnavailable, Message: "the agent ended the subscription"}
	}
	return fromRPC(err, stream.Trailer())
}

// pump is the one reader of the stream.
func (s *Subscription) pump() {
	defer close(s.done)
	for {
		d, err := s.stream.Recv()
		if err != nil {
			select {
			case <-s.closing:
				if errors.Is(err, io.EOF) {
					return // the clean end Close asked for
				}
			default:
			}
			s.err = endOf(s.stream, err)
			return
		}
		select {
		case s.deliveries <- deliveryFrom(d):
		case <-s.closing:
			// Closing: the agent hands it back to the group when the stream ends.
		}
	}
}

// Recv waits for the next delivery. ctx bounds only this wait (an *Error
// matching context.DeadlineExceeded or context.Canceled; the subscription
// goes on). When the stream has ended it returns the typed error it ended
// with, e.g. ErrUnavailable; after Close, ErrCanceled.
func (s *Subscription) Recv(ctx context.Context) (Delivery, error) {
	select {
	case d := <-s.deliveries:
		return d, nil
	case <-s.done:
		return Delivery{}, s.ended()
	case <-s.closing:
		return Delivery{}, &Error{Code: CodeCanceled, Message: "the subscription is closed"}
	case <-ctx.Done():
		return Delivery{}, ctxError(ctx)
	}
}

func (s *Subscription) ended() error {
	if s.err != nil {
		return s.err
	}
	return &Error{Code: CodeCanceled, Message: "the subscription is closed"}
}

// Ack settles d: the group records its event as processed (so a later copy
// is absorbed) and it is not delivered again.
func (s *Subscription) Ack(d Delivery) error {
	return s.send(&meridianv1.SubscribeRequest{Kind: &meridianv1.SubscribeRequest_Ack{Ack: &meridianv1.Ack{DeliveryId: d.ID}}})
}

// Nack hands d back for redelivery after the agent's backoff for its
// attempt (0.1 s, 0.2 s, 0.4 s, ... up to 30 s). On its MaxDeliveries-th
// attempt it moves to the dead-letter stream instead.
func (s *Subscription) Nack(d Delivery) error {
	return s.send(&meridianv1.SubscribeRequest{Kind: &meridianv1.SubscribeRequest_Nack{Nack: &meridianv1.Nack{DeliveryId: d.ID}}})
}

// NackAfter is Nack with the redelivery delay given (0: at once).
func (s *Subscription) NackAfter(d Delivery, delay time.Duration) error {
	return s.send(&meridianv1.SubscribeRequest{Kind: &meridianv1.SubscribeRequest_Nack{Nack: &meridianv1.Nack{
		DeliveryId: d.ID, Delay: durationpb.New(delay),
	}}})
}

func (s *Subscription) send(req *meridianv1.SubscribeRequest) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if s.sendClosed {
		return &Error{Code: CodeCanceled, Message: "the subscription is closed"}
	}
	if err := s.stream.Send(req); err != nil {
		// The stream broke; its reader learns why.
		<-s.done
		return s.ended()
	}
	return nil
}

// Close ends the subscription gracefully: it stops sending, waits (at most
// the DrainTimeout) until the agent has applied every ack and nack already
// sent and ended the stream, then releases it. Deliveries not acked go back
// to the group at once. It returns nil when the agent confirmed the end, the
// error the stream ended with if it had already failed, or ErrDeadlineExceeded
// if the agent did not end it in time (acks may then be lost). It is safe to
// call more than once and concurrently with the other methods.
func (s *Subscription) Close() error {
	s.closeOnce.Do(func() {
		s.sendMu.Lock()
		s.sendClosed = true
		close(s.closing)
		sendErr := s.stream.CloseSend()
		s.sendMu.Unlock()
		if sendErr == nil {
			timer := time.NewTimer(s.drainTimeout)
			select {
			case <-s.done:
			case <-timer.C:
				s.closeErr = &Error{Code: CodeDeadlineExceeded, Message: fmt.Sprintf(
					"the agent did not end the subscription within %v; acks may not have been applied", s.drainTimeout)}
			}
			timer.Stop()
		}
		s.cancel()
		<-s.done
		if s.closeErr == nil {
			s.closeErr = s.err
		}
	})
	return s.closeErr
}

// ---------------------------------------------------------------------------
// Subscribe

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

// ctxError is the *Error for a context that is done.
func ctxError(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &Error{Code: CodeDeadlineExceeded, Message: ctx.Err().Error()}
	}
	return &Error{Code: CodeCanceled, Message: ctx.Err().Error()}
}
