package meridian

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-rt/meridian/sdk/go/canonical"
	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// Idempotency is the Idempotency API of one agent: run a command once per
// idempotency key, following the IETF Idempotency-Key draft and Stripe's
// semantics. Get it from Client.Idempotency. It is safe for concurrent use.
//
// Keys are scoped by the caller's identity (scope), so two callers may use
// the same key. By default the agent keeps the records in a global bucket,
// so "once" holds across regions.
//
// Once is the whole protocol in one call; Begin, Complete and Abort are its
// steps, for callers that store the response themselves.
type Idempotency struct {
	rpc meridianv1.IdempotencyServiceClient
}

// Outcome is what Begin found.
type Outcome int

// The outcomes, in the order of the proto enum.
const (
	OutcomeUnspecified Outcome = iota
	// OutcomeNew: the caller holds the key; run the command, then Complete or Abort.
	OutcomeNew
	// OutcomeInProgress: another caller holds the key now; try again after
	// Begun.LeaseExpiresAt.
	OutcomeInProgress
	// OutcomeCompleted: the command ran before; Begun.Response is what it returned.
	OutcomeCompleted
	// OutcomeMismatch: the key was used with a different request
	// (Begun.Fingerprint is that request's).
	OutcomeMismatch
)

func (o Outcome) String() string {
	switch o {
	case OutcomeNew:
		return "new"
	case OutcomeInProgress:
		return "in_progress"
	case OutcomeCompleted:
		return "completed"
	case OutcomeMismatch:
		return "mismatch"
	}
	return "unspecified"
}

// StoredResponse is what a command returned, stored as given (errors
// included) and replayed to every later caller with the same key.
type StoredResponse struct {
	// Status is the caller's own: an HTTP status, a gRPC code, or anything else.
	Status int32
	// Body is at most 1 MiB.
	Body []byte
	// Headers are at most 64, of at most 8 KiB in all.
	Headers map[string]string
}

func (r StoredResponse) proto() *meridianv1.StoredResponse {
	return &meridianv1.StoredResponse{Status: r.Status, Body: r.Body, Headers: r.Headers}
}

func storedFrom(r *meridianv1.StoredResponse) StoredResponse {
	out := StoredResponse{Status: r.GetStatus(), Body: r.GetBody()}
	if h := r.GetHeaders(); len(h) > 0 {
		out.Headers = maps.Clone(h)
	}
	return out
}

// Begun is the answer to Begin.
type Begun struct {
	Outcome Outcome
	// Fingerprint is the one the key is bound to (for OutcomeMismatch, the
	// other request's).
	Fingerprint string
	// FencingToken is set for OutcomeNew: pass it to Complete or Abort. Every
	// token issued for a key is larger than those before, so a resource can
	// refuse writes from older holders.
	FencingToken uint64
	// LeaseExpiresAt is set for OutcomeNew and OutcomeInProgress: when the
	// current holder's lease expires (zero otherwise).
	LeaseExpiresAt time.Time
	// Response is set for OutcomeCompleted: the stored response.
	Response *StoredResponse
	// TookOver is set for OutcomeNew when the key was taken over from a
	// holder whose lease expired.
	TookOver bool
	// ExpiresAt is set for OutcomeCompleted: when the agent will forget the
	// record (zero otherwise).
	ExpiresAt time.Time
}

// BeginOption configures Begin and Once: Binary() or Lease(d).
type BeginOption func(*beginOptions)

type beginOptions struct {
	kind  canonical.Kind
	lease time.Duration
}

// Binary fingerprints the request byte for byte. Without it the request must
// be JSON and is fingerprinted by its RFC 8785 canonical form, so the same
// object respaced or with its members reordered is the same request.
func Binary() BeginOption { return func(o *beginOptions) { o.kind = canonical.Binary } }

// Lease is how long the caller holds the key before another caller may take
// it over. Without it the agent's idempotency.default_lease_s applies; it
// must be positive and at most the agent's idempotency.max_lease_s.
func Lease(d time.Duration) BeginOption { return func(o *beginOptions) { o.lease = d } }

// Begin claims key (in scope) for request, or says why not.
//
// The request's fingerprint is computed here (canonical.Fingerprint), so
// only the 64-hex digest travels. A request that is not I-JSON (without
// Binary) fails with ErrInvalidArgument on field "payload" before any call.
// A scope or key the agent refuses fails with ErrInvalidArgument naming
// "scope" or "key".
func (i *Idempotency) Begin(ctx context.Context, scope, key string, request []byte, opts ...BeginOption) (Begun, error) {
	o := beginOptions{kind: canonical.JSON}
	for _, opt := range opts {
		opt(&o)
	}
	fp, err := canonical.Fingerprint(request, o.kind)
	if err != nil {
		return Begun{}, payloadError(err)
	}
	req := &meridianv1.BeginRequest{Scope: scope, Key: key, Fingerprint: fp, PayloadKind: meridianv1.PayloadKind_PAYLOAD_KIND_JSON}
	if o.kind == canonical.Binary {
		req.PayloadKind = meridianv1.PayloadKind_PAYLOAD_KIND_BINARY
	}
	if o.lease != 0 {
		req.Lease = durationpb.New(o.lease)
	}
	resp, err := unary(ctx, i.rpc.Begin, req)
	if err != nil {
		return Begun{}, err
	}
	out := Begun{
		Outcome:        Outcome(resp.GetOutcome()),
		Fingerprint:    resp.GetFingerprint(),
		FencingToken:   resp.GetFencingToken(),
		LeaseExpiresAt: timeFrom(resp.GetLeaseExpiresAt()),
		TookOver:       resp.GetTookOver(),
		ExpiresAt:      timeFrom(resp.GetExpiresAt()),
	}
	if resp.GetResponse() != nil {
		r := storedFrom(resp.GetResponse())
		out.Response = &r
	}
	return out, nil
}

// Complete stores response as the result of the command run under token,
// and returns when the agent will forget it (now + its retention).
// Completing again with the same token is a no-op. A token that no longer
// holds the key (its lease expired and another caller took over, or it was
// aborted) fails with ErrFenced.
func (i *Idempotency) Complete(ctx context.Context, scope, key string, token uint64, response StoredResponse) (time.Time, error) {
	resp, err := unary(ctx, i.rpc.Complete, &meridianv1.CompleteRequest{
		Scope: scope, Key: key, FencingToken: token, Response: response.proto(),
	})
	if err != nil {
		return time.Time{}, err
	}
	return timeFrom(resp.GetExpiresAt()), nil
}

// Abort releases the key without a response, so the command may run again.
// A token that no longer holds the key fails with ErrFenced.
func (i *Idempotency) Abort(ctx context.Context, scope, key string, token uint64) error {
	_, err := unary(ctx, i.rpc.Abort, &meridianv1.AbortRequest{Scope: scope, Key: key, FencingToken: token})
	return err
}

// OnceResult is the answer to Once.
type OnceResult struct {
	Response StoredResponse
	// Replayed is true when the command had run before and Response is the
	// stored one; false when this call ran it.
	Replayed bool
}

// abortTimeout bounds the Abort that Once sends after a failed command; it
// runs even when the caller's context is done, so that a canceled command
// releases its key at once instead of when its lease runs out.
const abortTimeout = 5 * time.Second

// Once runs fn at most once per (scope, key) and returns its response; a
// repeat of the same request returns the stored response, with Replayed set,
// without running fn.
//
// fn gets the fencing token, which it may pass on to resources that refuse
// writes from older holders. It reports the command's own failures in the
// response it returns (they are stored and replayed like successes). If it
// returns an error instead, Once aborts the key (ignoring a failed abort:
// the lease then runs out on its own) and returns fn's error, so a retry
// runs fn again.
//
// Once fails with ErrIdempotencyInProgress while another caller runs the
// command (retry after its lease), and with ErrIdempotencyMismatch if the
// key was used for a different request. If storing the response fails, the
// error is returned along with the response fn produced: fn has run.
func (i *Idempotency) Once(ctx context.Context, scope, key string, request []byte,
	fn func(ctx context.Context, token uint64) (StoredResponse, error), opts ...BeginOption,
) (OnceResult, error) {
	begun, err := i.Begin(ctx, scope, key, request, opts...)
	if err != nil {
		return OnceResult{}, err
	}
	switch begun.Outcome {
	case OutcomeCompleted:
		var r StoredResponse
		if begun.Response != nil {
			r = *begun.Response
		}
		return OnceResult{Response: r, Replayed: true}, nil
	case OutcomeInProgress:
		msg := fmt.Sprintf("idempotency key %q is being run by another caller; retry after its lease (until %s)",
			key, begun.LeaseExpiresAt.Format(time.RFC3339Nano))
		return OnceResult{}, &Error{Code: CodeIdempotencyInProgress, Message: msg, status: status.New(codes.Aborted, msg)}
	case OutcomeMismatch:
		msg := fmt.Sprintf("idempotency key %q was used with a different request (fingerprint %s)", key, begun.Fingerprint)
		return OnceResult{}, &Error{Code: CodeIdempotencyMismatch, Message: msg, status: status.New(codes.FailedPrecondition, msg)}
	case OutcomeNew:
	default:
		msg := fmt.Sprintf("idempotency key %q: the agent answered Begin with an unknown outcome %d", key, begun.Outcome)
		return OnceResult{}, &Error{Code: CodeInternal, Message: msg, status: status.New(codes.Internal, msg)}
	}
	response, err := fn(ctx, begun.FencingToken)
	if err != nil {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		_ = i.Abort(actx, scope, key, begun.FencingToken)
		return OnceResult{}, err
	}
	if _, err := i.Complete(ctx, scope, key, begun.FencingToken, response); err != nil {
		return OnceResult{Response: response}, err
	}
	return OnceResult{Response: response}, nil
}

// payloadError is the *Error for a request canonical refused, in the form
// the agent would have sent had it fingerprinted the payload itself.
func payloadError(err error) *Error {
	rule := err.Error()
	var cerr *canonical.Error
	if errors.As(err, &cerr) {
		rule = cerr.Rule
	}
	msg := "payload: " + rule
	return &Error{
		Code:       CodeInvalidArgument,
		Message:    msg,
		Field:      "payload",
		Rule:       rule,
		Violations: []FieldViolation{{Field: "payload", Rule: rule}},
		status:     status.New(codes.InvalidArgument, msg),
	}
}

func timeFrom(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}
