package meridian

import (
	"context"
	"errors"
	"net"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/anypb"

	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// The agent's errors as its gRPC transport sends them: status code, message
// and google.rpc details (src/meridian/transport/errors.py). These tests need
// no agent; agent_test.go checks the same against a real one.

// agentStatus is a status as the agent sends it: an ErrorInfo with the
// stable code, metadata, and a BadRequest when violations are given.
func agentStatus(grpcCode codes.Code, code Code, msg string, md map[string]string, violations ...FieldViolation) *status.Status {
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: string(code), Domain: "meridian.dev", Metadata: md}}
	if len(violations) > 0 {
		bad := &errdetails.BadRequest{}
		for _, v := range violations {
			bad.FieldViolations = append(bad.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Rule})
		}
		details = append(details, bad)
	}
	st, err := status.New(grpcCode, msg).WithDetails(details...)
	if err != nil {
		panic(err)
	}
	return st
}

// withRawDetails is a status whose details are exactly these Any values.
func withRawDetails(grpcCode codes.Code, msg string, details ...*anypb.Any) error {
	return status.FromProto(&spb.Status{Code: int32(grpcCode), Message: msg, Details: details}).Err()
}

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
		{codes.PermissionDenied, CodePermissionDenied, ErrPermissionDenied},
		{codes.FailedPrecondition, CodeResidencyViolation, ErrResidencyViolation},
	} {
		err := fromRPC(agentStatus(tc.grpc, tc.code, "boom", nil).Err(), nil)
		if err.Code != tc.code || !errors.Is(err, tc.sentinel) || err.Message != "boom" {
			t.Errorf("%s: got %v", tc.code, err)
		}
		if status.Code(err) != tc.grpc {
			t.Errorf("%s: status.Code = %v, want %v", tc.code, status.Code(err), tc.grpc)
		}
		for _, other := range []error{ErrInvalidArgument, ErrNotFound, ErrConflict, ErrQuorumUnavailable, ErrUnavailable, ErrResourceExhausted, ErrPermissionDenied, ErrResidencyViolation} {
			if other != tc.sentinel && errors.Is(err, other) {
				t.Errorf("%s also matches %v", tc.code, other)
			}
		}
	}
}

func TestFromRPCConflictCarriesTheRevision(t *testing.T) {
	st := agentStatus(codes.Aborted, CodeConflict, "accounts/alice is at revision 42", map[string]string{"currentRevision": "42"})
	err := fromRPC(st.Err(), metadata.Pairs(traceparentKey, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
	if err.CurrentRevision != 42 || err.TraceParent == "" {
		t.Fatalf("got %#v", err)
	}
	if want := "meridian: CONFLICT: accounts/alice is at revision 42 (current revision 42)"; err.Error() != want {
		t.Fatalf("Error() = %q, want %q", err.Error(), want)
	}
	// The message is for people: a revision in it is not read.
	err = fromRPC(agentStatus(codes.Aborted, CodeConflict, "accounts/alice is at revision 42", nil).Err(), nil)
	if err.CurrentRevision != 0 {
		t.Fatalf("read the revision from the message: %#v", err)
	}
}

func TestFromRPCInvalidArgumentViolations(t *testing.T) {
	want := []FieldViolation{{"key", "is 2000 bytes; at most 1024 bytes allowed"}, {"value", "must be bytes"}}
	// The message is for people; the violations come from BadRequest alone.
	err := fromRPC(agentStatus(codes.InvalidArgument, CodeInvalidArgument, "anything at all", nil, want...).Err(), nil)
	if err.Field != "key" || err.Rule != want[0].Rule || len(err.Violations) != 2 || err.Violations[1] != want[1] {
		t.Fatalf("got field %q rule %q violations %+v", err.Field, err.Rule, err.Violations)
	}
	bare := fromRPC(agentStatus(codes.InvalidArgument, CodeInvalidArgument, "key: something odd", nil).Err(), nil)
	if bare.Field != "request" || bare.Rule != "key: something odd" || len(bare.Violations) != 1 {
		t.Fatalf("no BadRequest: field %q rule %q violations %+v", bare.Field, bare.Rule, bare.Violations)
	}
}

func TestFromRPCReadsNoTrailerCodes(t *testing.T) {
	// The trailers of agents older than the details are not read.
	err := fromRPC(status.Error(codes.Aborted, "moved"), metadata.Pairs("meridian-error-code", "CONFLICT", "meridian-current-revision", "7"))
	if err.Code != CodeUnavailable || err.CurrentRevision != 0 {
		t.Fatalf("got %#v", err)
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

// Malformed details: the gRPC code decides, and nothing panics.
func TestFromRPCMalformedDetails(t *testing.T) {
	info := func(reason, domain string) *anypb.Any {
		a, err := anypb.New(&errdetails.ErrorInfo{Reason: reason, Domain: domain})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	garbage := &anypb.Any{TypeUrl: "type.googleapis.com/google.rpc.ErrorInfo", Value: []byte{0xff, 0xff, 0xff}}
	unknownType := &anypb.Any{TypeUrl: "type.googleapis.com/example.Nothing", Value: []byte("x")}
	for _, tc := range []struct {
		name    string
		err     error
		code    Code
		message string
	}{
		{"no details", withRawDetails(codes.Aborted, "x"), CodeUnavailable, "Aborted: x"},
		{"empty reason", withRawDetails(codes.NotFound, "x", info("", "meridian.dev")), CodeUnavailable, "NotFound: x"},
		{"another domain", withRawDetails(codes.NotFound, "x", info("NOT_FOUND", "example.com")), CodeUnavailable, "NotFound: x"},
		{"undecodable ErrorInfo", withRawDetails(codes.DeadlineExceeded, "late", garbage), CodeDeadlineExceeded, "late"},
		{"unknown detail type", withRawDetails(codes.Unavailable, "x", unknownType), CodeUnavailable, "Unavailable: x"},
		{"a good ErrorInfo after a broken one", withRawDetails(codes.NotFound, "gone", garbage, info("NOT_FOUND", "meridian.dev")), CodeNotFound, "gone"},
		{"unknown reason", withRawDetails(codes.FailedPrecondition, "new", info("SOMETHING_NEW", "meridian.dev")), Code("SOMETHING_NEW"), "new"},
		{"a bad current revision", agentStatus(codes.Aborted, CodeConflict, "moved", map[string]string{"currentRevision": "-3"}).Err(), CodeConflict, "moved"},
	} {
		got := fromRPC(tc.err, nil)
		if got.Code != tc.code || got.Message != tc.message || got.CurrentRevision != 0 {
			t.Errorf("%s: got %#v, want code %s message %q", tc.name, got, tc.code, tc.message)
		}
	}
	unknown := fromRPC(withRawDetails(codes.FailedPrecondition, "new", info("SOMETHING_NEW", "meridian.dev")), nil)
	for _, s := range []error{ErrInvalidArgument, ErrNotFound, ErrConflict, ErrClockSkew, ErrUnavailable, ErrInternal, ErrFenced, ErrIdempotencyMismatch} {
		if errors.Is(unknown, s) {
			t.Errorf("an unknown reason matches %v", s)
		}
	}
}

// A grpc-status-details-bin trailer that is not a google.rpc.Status, sent
// by a real server: grpc-go drops it, and the code decides.
func TestGarbageStatusDetailsOverTheWire(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	meridianv1.RegisterHealthServiceServer(srv, garbageHealth{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	// NewClient, not Dial: Dial's own health check would fail first.
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_, err = NewClient(conn).Health(context.Background())
	var merr *Error
	if !errors.As(err, &merr) || merr.Code != CodeUnavailable || merr.Message != "NotFound: gone" || status.Code(err) != codes.NotFound {
		t.Fatalf("got %T %v (code %v)", err, err, status.Code(err))
	}
}

type garbageHealth struct {
	meridianv1.UnimplementedHealthServiceServer
}

func (garbageHealth) Check(ctx context.Context, _ *meridianv1.HealthCheckRequest) (*meridianv1.HealthCheckResponse, error) {
	// Sent as is when the status itself has no details.
	_ = grpc.SetTrailer(ctx, metadata.Pairs("grpc-status-details-bin", "\xff\xfe garbage"))
	return nil, status.Error(codes.NotFound, "gone")
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
