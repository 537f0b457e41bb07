package meridian

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// Code is a stable Meridian error code. The agent sends it with every error
// (the reason of the status's google.rpc.ErrorInfo detail), and it never
// changes meaning, so match on it, through errors.Is with the Err* values,
// rather than on messages.
type Code string

// The codes of the agent's error table (src/meridian/transport/errors.py,
// written out as testdata/errors.json).
const (
	CodeInvalidArgument       Code = "INVALID_ARGUMENT"
	CodeNotFound              Code = "NOT_FOUND"
	CodeConflict              Code = "CONFLICT"
	CodeClockSkew             Code = "CLOCK_SKEW"
	CodeQuorumUnavailable     Code = "QUORUM_UNAVAILABLE"
	CodeUnavailable           Code = "UNAVAILABLE"
	CodeDeadlineExceeded      Code = "DEADLINE_EXCEEDED"
	CodeInternal              Code = "INTERNAL"
	CodeFenced                Code = "FENCED"
	CodeIdempotencyInProgress Code = "IDEMPOTENCY_IN_PROGRESS"
	CodeIdempotencyMismatch   Code = "IDEMPOTENCY_MISMATCH"
	CodeResourceExhausted     Code = "RESOURCE_EXHAUSTED"
	CodePermissionDenied      Code = "PERMISSION_DENIED"
	CodeResidencyViolation    Code = "RESIDENCY_VIOLATION"
	// CodeCanceled is never sent by the agent: the caller's context was
	// canceled before the call finished.
	CodeCanceled Code = "CANCELED"
)

// Sentinels for errors.Is. Every error a *Client method returns is an *Error
// that matches exactly one of them, by its Code:
//
//	if errors.Is(err, meridian.ErrConflict) { ... }
//
// For the details (the current revision of a conflict, the field of an
// invalid argument), use errors.As with *Error.
var (
	// ErrInvalidArgument: the request broke a rule; nothing was written.
	// Error.Field and Error.Rule say which.
	ErrInvalidArgument error = sentinel(CodeInvalidArgument)
	// ErrNotFound: the key does not exist.
	ErrNotFound error = sentinel(CodeNotFound)
	// ErrConflict: a conditional write (IfRevision, Create) lost.
	// Error.CurrentRevision is the key's revision now (0: absent).
	ErrConflict error = sentinel(CodeConflict)
	// ErrClockSkew: the agent's clock is too far off its peers' for it to
	// stamp writes; it says why. Another region's agent may serve the write.
	ErrClockSkew error = sentinel(CodeClockSkew)
	// ErrQuorumUnavailable: the agent's region can't reach a quorum of
	// regions, so a global write or strong read could not be served. Whether
	// a write that failed this way took effect is unknown.
	ErrQuorumUnavailable error = sentinel(CodeQuorumUnavailable)
	// ErrUnavailable: the agent, or something it depends on, can't be reached.
	ErrUnavailable error = sentinel(CodeUnavailable)
	// ErrDeadlineExceeded: the call's deadline passed. An *Error with this
	// code also matches context.DeadlineExceeded.
	ErrDeadlineExceeded error = sentinel(CodeDeadlineExceeded)
	// ErrInternal: a bug in the agent, which logged it.
	ErrInternal error = sentinel(CodeInternal)
	// ErrFenced: an idempotency Complete or Abort carried a fencing token
	// that no longer holds the key.
	ErrFenced error = sentinel(CodeFenced)
	// ErrIdempotencyInProgress: another caller is running the command with
	// this idempotency key right now.
	ErrIdempotencyInProgress error = sentinel(CodeIdempotencyInProgress)
	// ErrIdempotencyMismatch: the idempotency key was used before with a
	// different request.
	ErrIdempotencyMismatch error = sentinel(CodeIdempotencyMismatch)
	// ErrResourceExhausted: the agent refused the call because a limit is
	// full (e.g. the bulkhead of the service an Invoke targets); nothing was
	// sent on. Back off and retry, or shed the load.
	ErrResourceExhausted error = sentinel(CodeResourceExhausted)
	// ErrPermissionDenied: the caller's identity (the SPIFFE ID of its
	// client certificate) may not do this; nothing was done. Retrying with
	// the same identity fails the same way.
	ErrPermissionDenied error = sentinel(CodePermissionDenied)
	// ErrResidencyViolation: the keyspace or topic may only be stored and
	// served in certain regions (its residency), and the agent called is in
	// none of them; nothing was done. Retrying this agent fails the same
	// way: call an agent in an allowed region.
	ErrResidencyViolation error = sentinel(CodeResidencyViolation)
	// ErrCanceled: the caller's context was canceled. An *Error with this
	// code also matches context.Canceled.
	ErrCanceled error = sentinel(CodeCanceled)
)

type sentinel Code

func (s sentinel) Error() string { return "meridian: " + string(s) }

// FieldViolation is one rule a request broke.
type FieldViolation struct {
	Field string
	Rule  string
}

// Error is a failed call, rebuilt from the google.rpc details the agent sent
// with its status (never from the message text).
type Error struct {
	// Code is the stable code; it decides which Err* sentinel matches.
	Code Code
	// Message is the agent's description. It is for people, not for matching.
	Message string
	// CurrentRevision is set for CodeConflict: the key's revision now
	// (0 when the key does not exist).
	CurrentRevision uint64
	// Field and Rule are set for CodeInvalidArgument: the first field that
	// broke a rule (e.g. "key", "keyspace", "consistency.max_staleness") and
	// the rule. Violations lists every one (the BadRequest detail's field
	// violations; "request" and the message when the agent sent none).
	Field      string
	Rule       string
	Violations []FieldViolation
	// TraceParent is the W3C traceparent of the agent's span for the call,
	// when the agent returned one: its trace id finds the call's logs.
	TraceParent string

	status *status.Status
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("meridian: ")
	b.WriteString(string(e.Code))
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Code == CodeConflict {
		fmt.Fprintf(&b, " (current revision %d)", e.CurrentRevision)
	}
	return b.String()
}

// Is reports whether target is the sentinel for e.Code, or the context error
// that a deadline or cancellation code stands for.
func (e *Error) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.Code == CodeDeadlineExceeded
	case context.Canceled:
		return e.Code == CodeCanceled
	}
	s, ok := target.(sentinel)
	return ok && Code(s) == e.Code
}

// GRPCStatus is the gRPC status the call ended with, so status.Code(err)
// and status.FromError(err) keep working. For the error of one item of a
// GetMany or PutMany, it is the status the agent's error table gives its
// code.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// errorDomain is the google.rpc.ErrorInfo domain of the agent's errors; a
// reason from another domain is not a Meridian code.
const errorDomain = "meridian.dev"

// currentRevisionKey is the ErrorInfo metadata key of a conflict's current
// revision (decimal).
const currentRevisionKey = "currentRevision"

// traceparentKey is the trailer with the W3C traceparent of the agent's span.
const traceparentKey = "traceparent"

// codeRow is one row of the agent's error table.
type codeRow struct {
	grpc codes.Code
	http int
	// retryable: the same call may succeed if sent again after a backoff.
	retryable bool
}

// codeTable is the agent's error table (src/meridian/transport/errors.py),
// as testdata/errors.json writes it out; errors_table_test.go keeps the two
// in step. fromItem uses it to give a batch item's error its gRPC status;
// the HTTP status and retryability are not used by this gRPC client, which
// leaves retries to its caller, but are kept so the table reads the same in
// every language.
var codeTable = map[Code]codeRow{
	CodeInvalidArgument:       {codes.InvalidArgument, 400, false},
	CodeNotFound:              {codes.NotFound, 404, false},
	CodeConflict:              {codes.Aborted, 409, false},
	CodeClockSkew:             {codes.FailedPrecondition, 503, true},
	CodeQuorumUnavailable:     {codes.Unavailable, 503, true},
	CodeUnavailable:           {codes.Unavailable, 503, true},
	CodeDeadlineExceeded:      {codes.DeadlineExceeded, 504, false},
	CodeInternal:              {codes.Internal, 500, false},
	CodeFenced:                {codes.FailedPrecondition, 409, false},
	CodeIdempotencyInProgress: {codes.Aborted, 409, true},
	CodeIdempotencyMismatch:   {codes.FailedPrecondition, 422, false},
	CodeResourceExhausted:     {codes.ResourceExhausted, 503, true},
	CodePermissionDenied:      {codes.PermissionDenied, 403, false},
	CodeResidencyViolation:    {codes.FailedPrecondition, 451, false},
}

// fromRPC rebuilds the typed error of a failed call from its status's
// google.rpc details: ErrorInfo.reason is the stable code, its metadata the
// structured fields (the current revision of a conflict), BadRequest the
// field violations of an invalid argument. A status without a Meridian
// reason (no details, unreadable ones, another domain's) maps by its gRPC
// code. trailer gives the traceparent. err must be non-nil.
func fromRPC(err error, trailer metadata.MD) *Error {
	st, _ := status.FromError(err)
	e := &Error{Message: st.Message(), status: st, TraceParent: first(trailer, traceparentKey)}
	var info *errdetails.ErrorInfo
	var badRequest *errdetails.BadRequest
	for _, d := range st.Details() {
		// A detail that does not decode is an error value here: skip it.
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if info == nil && d.GetDomain() == errorDomain && d.GetReason() != "" {
				info = d
			}
		case *errdetails.BadRequest:
			if badRequest == nil {
				badRequest = d
			}
		}
	}
	switch {
	case info != nil:
		// A reason this SDK does not know (a newer agent's) is kept as
		// the Code: it matches no sentinel.
		e.Code = Code(info.GetReason())
	case st.Code() == codes.DeadlineExceeded:
		e.Code = CodeDeadlineExceeded
	case st.Code() == codes.Canceled:
		e.Code = CodeCanceled
	default:
		// No Meridian reason: the call failed before reaching the agent's
		// service layer (connection refused, TLS, message too large, an
		// older agent without the method) or passed something that
		// rewrote the status. Same rule as the Python client.
		e.Code = CodeUnavailable
		e.Message = st.Code().String() + ": " + st.Message()
	}
	switch e.Code {
	case CodeConflict:
		e.CurrentRevision, _ = strconv.ParseUint(info.GetMetadata()[currentRevisionKey], 10, 64)
	case CodeInvalidArgument:
		for _, v := range badRequest.GetFieldViolations() {
			field := v.GetField()
			if field == "" {
				field = "request"
			}
			e.Violations = append(e.Violations, FieldViolation{Field: field, Rule: v.GetDescription()})
		}
		if len(e.Violations) == 0 {
			e.Violations = []FieldViolation{{Field: "request", Rule: e.Message}}
		}
		e.Field, e.Rule = e.Violations[0].Field, e.Violations[0].Rule
	}
	return e
}

// fromItem is the typed error of one item of a GetMany or PutMany. Its
// GRPCStatus is the status the table gives its code.
func fromItem(e *meridianv1.ItemError) *Error {
	out := &Error{Code: Code(e.GetCode()), Message: e.GetMessage(), CurrentRevision: e.GetCurrentRevision()}
	grpcCode := codes.Unknown
	if row, ok := codeTable[out.Code]; ok {
		grpcCode = row.grpc
	}
	out.status = status.New(grpcCode, out.Message)
	return out
}

func first(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}
