package meridian

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/propagation"
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
