package meridian

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// The agent's error table, as its gRPC transport sends it: status code,
// message and trailers (src/meridian/api/errors.py). These tests need no
// agent; agent_test.go checks the same against a real one.

func TestFromRPCRebuildsEachCode(t *testing.T) {
	for _, tc := range []struct {
		grpc     codes.Code
		code     Code
		sentinel error
	}{
		{codes.InvalidArgument, CodeInvalidArgument, ErrInvalidArgument},
		{codes.NotFound, CodeNotFound, ErrNotFound},
		{codes.Aborted, CodeConflict, ErrConflict},
		{codes.FailedPrecondition, CodeClockSkew, ErrClockSkew},
		{codes.Unavailable, CodeQuorumUnavailable, ErrQuorumUnavailable},
		{codes.Unavailable, CodeUnavailable, ErrUnavailable},
		{codes.DeadlineExceeded, CodeDeadlineExceeded, ErrDeadlineExceeded},
		{codes.Internal, CodeInternal, ErrInternal},
		{codes.FailedPrecondition, CodeFenced, ErrFenced},
		{codes.Aborted, CodeIdempotencyInProgress, ErrIdempotencyInProgress},
		{codes.FailedPrecondition, CodeIdempotencyMismatch, ErrIdempotencyMismatch},
		{codes.ResourceExhausted, CodeResourceExhausted, ErrResourceExhausted},
	} {
		err := fromRPC(status.Error(tc.grpc, "boom"), metadata.Pairs(errorCodeKey, string(tc.code)))
		if err.Code != tc.code || !errors.Is(err, tc.sentinel) {
			t.Errorf("%s: got %v", tc.code, err)
		}
		if status.Code(err) != tc.grpc {
			t.Errorf("%s: status.Code = %v, want %v", tc.code, status.Code(err), tc.grpc)
		}
		for _, other := range []error{ErrInvalidArgument, ErrNotFound, ErrConflict, ErrQuorumUnavailable, ErrUnavailable, ErrResourceExhausted} {
			if other != tc.sentinel && errors.Is(err, other) {
				t.Errorf("%s also matches %v", tc.code, other)
			}
		}
	}
}

func TestFromRPCConflictCarriesTheRevision(t *testing.T) {
	err := fromRPC(status.Error(codes.Aborted, "accounts/alice is at revision 42"),
		metadata.Pairs(errorCodeKey, "CONFLICT", currentRevisionKey, "42", traceparentKey, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
	if err.CurrentRevision != 42 || err.TraceParent == "" {
		t.Fatalf("got %#v", err)
	}
	if want := "meridian: CONFLICT: accounts/alice is at revision 42 (current revision 42)"; err.Error() != want {
		t.Fatalf("Error() = %q, want %q", err.Error(), want)
	}
}

func TestFromRPCInvalidArgumentViolations(t *testing.T) {
	err := fromRPC(status.Error(codes.InvalidArgument, "key: is 2000 bytes; at most 1024 bytes allowed; value: must be bytes"),
		metadata.Pairs(errorCodeKey, "INVALID_ARGUMENT", errorFieldKey, "key"))
	want := []FieldViolation{{"key", "is 2000 bytes; at most 1024 bytes allowed"}, {"value", "must be bytes"}}
	if err.Field != "key" || err.Rule != want[0].Rule || len(err.Violations) != 2 || err.Violations[1] != want[1] {
		t.Fatalf("got field %q rule %q violations %+v", err.Field, err.Rule, err.Violations)
	}
	bare := fromRPC(status.Error(codes.InvalidArgument, "something odd"), metadata.Pairs(errorCodeKey, "INVALID_ARGUMENT"))
	if bare.Field != "request" || bare.Rule != "something odd" {
		t.Fatalf("unparseable message: field %q rule %q", bare.Field, bare.Rule)
	}
}

func TestFromRPCWithoutAMeridianCode(t *testing.T) {
	if err := fromRPC(status.Error(codes.DeadlineExceeded, "late"), nil); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrDeadlineExceeded) {
		t.Errorf("deadline: %v", err)
	}
	if err := fromRPC(status.Error(codes.Canceled, "gone"), nil); !errors.Is(err, context.Canceled) || !errors.Is(err, ErrCanceled) {
		t.Errorf("canceled: %v", err)
	}
	if err := fromRPC(status.Error(codes.Unimplemented, "no such method"), nil); !errors.Is(err, ErrUnavailable) || status.Code(err) != codes.Unimplemented {
		t.Errorf("unimplemented: %v", err)
	}
}

func TestInjectTrace(t *testing.T) {
	p := propagation.TraceContext{}
	if ctx := injectTrace(context.Background(), p); ctx != context.Background() {
		t.Fatal("injected metadata without a span")
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c},
		SpanID:     trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31},
		TraceFlags: trace.FlagsSampled,
	})
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-caller", "orders", "traceparent", "stale")
	ctx = injectTrace(trace.ContextWithSpanContext(ctx, sc), p)
	md, _ := metadata.FromOutgoingContext(ctx)
	if got := md.Get("traceparent"); len(got) != 1 || got[0] != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
		t.Fatalf("traceparent %q", got)
	}
	if got := md.Get("x-caller"); len(got) != 1 {
		t.Fatalf("the caller's own metadata was lost: %v", md)
	}
}
