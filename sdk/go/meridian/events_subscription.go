package meridian

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

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

// ctxError is the *Error for a context that is done.
func ctxError(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &Error{Code: CodeDeadlineExceeded, Message: ctx.Err().Error()}
	}
	return &Error{Code: CodeCanceled, Message: ctx.Err().Error()}
}
