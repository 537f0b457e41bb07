package meridian

// The flag methods against an in-process gRPC server that implements the
// agent's FlagService (with its error details): what the SDK sends, how it
// reads the answers, and what it refuses before sending. flags_test.go runs
// the same API against a real agent.

import (
	"context"
	"errors"
	"net"
	"reflect"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meridian-rt/meridian/sdk/go/hlc"
	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

type fakeFlags struct {
	meridianv1.UnimplementedHealthServiceServer
	meridianv1.UnimplementedFlagServiceServer

	mu       sync.Mutex
	requests []proto.Message // every FlagService request, in order
}

func (f *fakeFlags) Check(context.Context, *meridianv1.HealthCheckRequest) (*meridianv1.HealthCheckResponse, error) {
	return &meridianv1.HealthCheckResponse{Status: meridianv1.HealthCheckResponse_SERVING_STATUS_SERVING, Region: "test-region"}, nil
}

func (f *fakeFlags) got(req proto.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, proto.Clone(req))
}

func (f *fakeFlags) last(t *testing.T) proto.Message {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.requests) == 0 {
		t.Fatal("the agent got no request")
	}
	return f.requests[len(f.requests)-1]
}

func (f *fakeFlags) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

var fakeUpdatedAt = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeFlag is the flag key at revision 7 (killed to "off" if killed).
func fakeFlag(key, killed string) *meridianv1.Flag {
	return &meridianv1.Flag{
		Key:           key,
		Definition:    `{"defaultVariant":"off","state":"ENABLED","variants":{"off":false,"on":true}}`,
		Revision:      7,
		Author:        "spiffe://td/service/ops",
		UpdatedAt:     timestamppb.New(fakeUpdatedAt),
		KilledVariant: killed,
	}
}

// fakeRevisionCheck is the agent's compare-and-set: the flag is at revision 7.
func fakeRevisionCheck(ifRevision *uint64) error {
	if ifRevision != nil && *ifRevision != 7 {
		return agentStatus(codes.Aborted, CodeConflict, "flag is at revision 7", map[string]string{"currentRevision": "7"}).Err()
	}
	return nil
}

func (f *fakeFlags) Evaluate(_ context.Context, req *meridianv1.EvaluateFlagRequest) (*meridianv1.EvaluateFlagResponse, error) {
	f.got(req)
	if req.Key == "missing" {
		return &meridianv1.EvaluateFlagResponse{Evaluation: &meridianv1.FlagEvaluation{
			Key: req.Key, Reason: "ERROR", ErrorCode: "FLAG_NOT_FOUND", ErrorDetails: "flag 'missing' is not defined",
		}}, nil
	}
	value, _ := structpb.NewValue(map[string]any{"color": "red", "sizes": []any{1, 2}})
	metadata, _ := structpb.NewStruct(map[string]any{"owner": "team-a"})
	return &meridianv1.EvaluateFlagResponse{Evaluation: &meridianv1.FlagEvaluation{
		Key: req.Key, Value: value, Variant: "red", Reason: "TARGETING_MATCH", Metadata: metadata,
	}}, nil
}

func (f *fakeFlags) EvaluateAll(_ context.Context, req *meridianv1.EvaluateAllFlagsRequest) (*meridianv1.EvaluateAllFlagsResponse, error) {
	f.got(req)
	return &meridianv1.EvaluateAllFlagsResponse{Revision: 42, Evaluations: []*meridianv1.FlagEvaluation{
		{Key: "a", Value: structpb.NewBoolValue(true), Variant: "on", Reason: "STATIC"},
		{Key: "b", Value: structpb.NewStringValue("x"), Variant: "x", Reason: "DISABLED"},
	}}, nil
}

func (f *fakeFlags) SetFlag(_ context.Context, req *meridianv1.SetFlagRequest) (*meridianv1.SetFlagResponse, error) {
	f.got(req)
	if err := fakeRevisionCheck(req.IfRevision); err != nil {
		return nil, err
	}
	return &meridianv1.SetFlagResponse{Flag: fakeFlag(req.Key, "")}, nil
}

func (f *fakeFlags) GetFlag(_ context.Context, req *meridianv1.GetFlagRequest) (*meridianv1.GetFlagResponse, error) {
	f.got(req)
	return &meridianv1.GetFlagResponse{Flag: fakeFlag(req.Key, "")}, nil
}

func (f *fakeFlags) ListFlags(_ context.Context, req *meridianv1.ListFlagsRequest) (*meridianv1.ListFlagsResponse, error) {
	f.got(req)
	return &meridianv1.ListFlagsResponse{Flags: []*meridianv1.Flag{fakeFlag("a", ""), fakeFlag("b", "off")}}, nil
}

func (f *fakeFlags) KillFlag(_ context.Context, req *meridianv1.KillFlagRequest) (*meridianv1.KillFlagResponse, error) {
	f.got(req)
	if err := fakeRevisionCheck(req.IfRevision); err != nil {
		return nil, err
	}
	return &meridianv1.KillFlagResponse{Flag: fakeFlag(req.Key, "off")}, nil
}

func (f *fakeFlags) DeleteFlag(_ context.Context, req *meridianv1.DeleteFlagRequest) (*meridianv1.DeleteFlagResponse, error) {
	f.got(req)
	if err := fakeRevisionCheck(req.IfRevision); err != nil {
		return nil, err
	}
	return &meridianv1.DeleteFlagResponse{Revision: 8}, nil
}

func startFakeFlags(t *testing.T) (*fakeFlags, *Client) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFlags{}
	srv := grpc.NewServer()
	meridianv1.RegisterHealthServiceServer(srv, f)
	meridianv1.RegisterFlagServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	c, err := Dial(context.Background(), lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return f, c
}

func TestFakeFlagsEvaluate(t *testing.T) {
	f, c := startFakeFlags(t)
	ctx := context.Background()

	evalCtx := map[string]any{"targetingKey": "user-1", "plan": "pro", "seats": 3, "beta": true, "tags": []any{"a"}}
	ev, err := c.EvaluateFlag(ctx, "colors", evalCtx)
	if err != nil {
		t.Fatal(err)
	}
	sent := f.last(t).(*meridianv1.EvaluateFlagRequest)
	if sent.Key != "colors" || !reflect.DeepEqual(sent.Context.AsMap(),
		map[string]any{"targetingKey": "user-1", "plan": "pro", "seats": 3.0, "beta": true, "tags": []any{"a"}}) {
		t.Errorf("the agent got %v", sent)
	}
	want := FlagEvaluation{
		Key: "colors", Variant: "red", Reason: "TARGETING_MATCH",
		Value:    map[string]any{"color": "red", "sizes": []any{1.0, 2.0}},
		Metadata: map[string]any{"owner": "team-a"},
	}
	if !reflect.DeepEqual(ev, want) {
		t.Errorf("EvaluateFlag = %#v, want %#v", ev, want)
	}

	// A failed evaluation is the evaluation's, not the call's; nil context is no context.
	ev, err = c.EvaluateFlag(ctx, "missing", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sent := f.last(t).(*meridianv1.EvaluateFlagRequest); sent.Context != nil {
		t.Errorf("a nil context was sent as %v", sent.Context)
	}
	if ev.ErrorCode != "FLAG_NOT_FOUND" || ev.Reason != "ERROR" || ev.Value != nil || ev.Variant != "" ||
		ev.Metadata != nil || ev.ErrorDetails == "" {
		t.Errorf("EvaluateFlag(missing) = %#v", ev)
	}

	all, rev, err := c.EvaluateAllFlags(ctx, map[string]any{"targetingKey": "user-2"})
	if err != nil {
		t.Fatal(err)
	}
	if sent := f.last(t).(*meridianv1.EvaluateAllFlagsRequest); sent.Context.AsMap()["targetingKey"] != "user-2" {
		t.Errorf("the agent got %v", sent)
	}
	if rev != 42 || len(all) != 2 || all[0].Key != "a" || all[0].Value != true || all[1].Value != "x" || all[1].Reason != "DISABLED" {
		t.Errorf("EvaluateAllFlags = %#v, %d", all, rev)
	}
}

func TestFakeFlagsChanges(t *testing.T) {
	f, c := startFakeFlags(t)
	ctx := context.Background()
	def := []byte(`{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off"}`)
	wantFlag := Flag{
		Key: "checkout", Definition: `{"defaultVariant":"off","state":"ENABLED","variants":{"off":false,"on":true}}`,
		Revision: 7, Author: "spiffe://td/service/ops", UpdatedAt: fakeUpdatedAt,
	}

	got, err := c.SetFlag(ctx, "checkout", def)
	if err != nil {
		t.Fatal(err)
	}
	if sent := f.last(t).(*meridianv1.SetFlagRequest); sent.Key != "checkout" || sent.Definition != string(def) || sent.IfRevision != nil {
		t.Errorf("the agent got %v", sent)
	}
	if !reflect.DeepEqual(got, wantFlag) {
		t.Errorf("SetFlag = %#v, want %#v", got, wantFlag)
	}

	// IfRevision(0) is sent as 0, not left out: "only if it does not exist".
	_, err = c.SetFlag(ctx, "checkout", def, IfRevision(0))
	if sent := f.last(t).(*meridianv1.SetFlagRequest); sent.IfRevision == nil || *sent.IfRevision != 0 {
		t.Errorf("IfRevision(0) was sent as %v", sent.IfRevision)
	}
	var merr *Error
	if !errors.Is(err, ErrConflict) || !errors.As(err, &merr) || merr.CurrentRevision != 7 {
		t.Fatalf("SetFlag at a stale revision: %v, want ErrConflict at revision 7", err)
	}

	got, err = c.GetFlag(ctx, "checkout")
	if err != nil || !reflect.DeepEqual(got, wantFlag) {
		t.Errorf("GetFlag = %#v, %v; want %#v", got, err, wantFlag)
	}
	list, err := c.ListFlags(ctx)
	if err != nil || len(list) != 2 || list[0].Key != "a" || list[1].KilledVariant != "off" {
		t.Errorf("ListFlags = %#v, %v", list, err)
	}

	killed, err := c.KillFlag(ctx, "checkout", "off", IfRevision(7))
	if err != nil {
		t.Fatal(err)
	}
	if sent := f.last(t).(*meridianv1.KillFlagRequest); sent.Key != "checkout" || sent.Variant != "off" || sent.GetIfRevision() != 7 || sent.IfRevision == nil {
		t.Errorf("the agent got %v", sent)
	}
	if killed.KilledVariant != "off" {
		t.Errorf("KillFlag = %#v", killed)
	}
	if _, err := c.KillFlag(ctx, "checkout", "", IfRevision(6)); !errors.Is(err, ErrConflict) {
		t.Errorf("KillFlag at a stale revision: %v, want ErrConflict", err)
	}

	rev, err := c.DeleteFlag(ctx, "checkout")
	if err != nil || rev != 8 {
		t.Errorf("DeleteFlag = %d, %v; want 8", rev, err)
	}
	if sent := f.last(t).(*meridianv1.DeleteFlagRequest); sent.Key != "checkout" || sent.IfRevision != nil {
		t.Errorf("the agent got %v", sent)
	}
	if _, err := c.DeleteFlag(ctx, "checkout", IfRevision(3)); !errors.Is(err, ErrConflict) {
		t.Errorf("DeleteFlag at a stale revision: %v, want ErrConflict", err)
	}
}

// What can't be sent is refused before sending, as the agent would refuse
// it: ErrInvalidArgument naming the field.
func TestFakeFlagsRefuseBadInputBeforeSending(t *testing.T) {
	f, c := startFakeFlags(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, field string
		call        func() error
	}{
		{"a context value that is not JSON", "context", func() error {
			_, err := c.EvaluateFlag(ctx, "colors", map[string]any{"targetingKey": "u", "when": time.Now()})
			return err
		}},
		{"a context string that is not UTF-8", "context", func() error {
			_, _, err := c.EvaluateAllFlags(ctx, map[string]any{"targetingKey": "\xff"})
			return err
		}},
		{"a definition that is not UTF-8", "definition", func() error {
			_, err := c.SetFlag(ctx, "colors", []byte("{\"state\":\"\xff\"}"))
			return err
		}},
		{"supersedes on a flag change", "supersedes", func() error {
			_, err := c.DeleteFlag(ctx, "colors", Supersedes(hlc.FromInt(1)))
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var merr *Error
			if !errors.Is(err, ErrInvalidArgument) || !errors.As(err, &merr) || merr.Field != tc.field ||
				merr.Rule == "" || len(merr.Violations) != 1 || merr.GRPCStatus().Code() != codes.InvalidArgument {
				t.Fatalf("got %#v, want ErrInvalidArgument on %q", err, tc.field)
			}
		})
	}
	if n := f.count(); n != 0 {
		t.Fatalf("the agent got %d requests, want none", n)
	}
}
