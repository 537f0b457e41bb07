package meridian

import (
	"context"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// FlagEvaluation is one flag evaluated for one context, as OpenFeature
// reports it. An evaluation that fails (an unknown flag, targeting that
// names no variant, a bad context) is not an error of the call: Reason is
// "ERROR", ErrorCode says why, Value is nil and Variant "". The caller
// then uses its code default, as an OpenFeature provider would.
type FlagEvaluation struct {
	Key string
	// Value is the variant's value, as encoding/json decodes JSON: bool,
	// string, float64, []any, map[string]any, or nil.
	Value any
	// Variant is the variant's name.
	Variant string
	// Reason is OpenFeature's: "STATIC" (no targeting), "TARGETING_MATCH",
	// "DEFAULT" (targeting chose no variant: the default one), "DISABLED"
	// (the flag is disabled or killed: its off variant) or "ERROR".
	Reason string
	// ErrorCode is set when Reason is "ERROR": "FLAG_NOT_FOUND",
	// "PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL"
	// or "PROVIDER_NOT_READY" (the agent has not loaded the flags yet).
	ErrorCode    string
	ErrorDetails string
	// Metadata is the flag's `metadata`, as defined (nil if none).
	Metadata map[string]any
}

func evaluationFrom(e *meridianv1.FlagEvaluation) FlagEvaluation {
	out := FlagEvaluation{
		Key:          e.GetKey(),
		Variant:      e.GetVariant(),
		Reason:       e.GetReason(),
		ErrorCode:    e.GetErrorCode(),
		ErrorDetails: e.GetErrorDetails(),
	}
	if v := e.GetValue(); v != nil {
		out.Value = v.AsInterface()
	}
	if m := e.GetMetadata(); m != nil {
		out.Metadata = m.AsMap()
	}
	return out
}

// Flag is a flag as the agent stores it.
type Flag struct {
	Key string
	// Definition is the flag in flagd's format (`state`, `variants`,
	// `defaultVariant`, and optionally `targeting` and `metadata`), as
	// RFC 8785 canonical JSON.
	Definition string
	// Revision is the storage revision: pass it to IfRevision to change the
	// flag only if nobody else has since.
	Revision uint64
	// Author is the identity (a SPIFFE ID) that stored this revision.
	Author    string
	UpdatedAt time.Time
	// KilledVariant is set while the flag is killed (KillFlag): the variant
	// every evaluation returns, with reason "DISABLED".
	KilledVariant string
}

func flagFrom(f *meridianv1.Flag) Flag {
	return Flag{
		Key:           f.GetKey(),
		Definition:    f.GetDefinition(),
		Revision:      f.GetRevision(),
		Author:        f.GetAuthor(),
		UpdatedAt:     timeFrom(f.GetUpdatedAt()),
		KilledVariant: f.GetKilledVariant(),
	}
}

// evalContext is evalCtx as a Struct (nil for nil); a value a Struct can't
// hold is the caller's invalid argument.
func evalContext(evalCtx map[string]any) (*structpb.Struct, error) {
	if evalCtx == nil {
		return nil, nil
	}
	s, err := structpb.NewStruct(evalCtx)
	if err != nil {
		return nil, invalidArgument("context", "must hold only JSON values (nil, bool, numbers, strings, []any, map[string]any): "+err.Error())
	}
	return s, nil
}

// flagRevision is the IfRevision of a flag change; Supersedes is refused.
func flagRevision(opts []WriteOption) (*uint64, error) {
	var o writeOptions
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.supersedes) > 0 {
		return nil, invalidArgument("supersedes", "applies to Put only")
	}
	return o.ifRevision, nil
}

// invalidArgument is the *Error of a request refused before it was sent,
// in the form the agent would have sent.
func invalidArgument(field, rule string) *Error {
	msg := field + ": " + rule
	return &Error{
		Code:       CodeInvalidArgument,
		Message:    msg,
		Field:      field,
		Rule:       rule,
		Violations: []FieldViolation{{Field: field, Rule: rule}},
		status:     status.New(codes.InvalidArgument, msg),
	}
}

// EvaluateFlag evaluates the flag key for evalCtx, the evaluation context:
// "targetingKey" (which fractional rollouts bucket by, with the flag key)
// and any attributes the flag's targeting reads. The agent adds its own
// region as "region", replacing any given, so a region-scoped flag is plain
// targeting. The agent evaluates its local copy of the flags: the call never
// leaves the region.
//
// A failed evaluation is reported in the FlagEvaluation (ErrorCode
// "FLAG_NOT_FOUND", "INVALID_CONTEXT", ...), not as an error. The error is
// the call's own: ErrInvalidArgument for a bad key (Field "key") or an
// evalCtx value that is not JSON (Field "context", refused before sending),
// ErrPermissionDenied, ErrUnavailable, ErrDeadlineExceeded, ErrCanceled.
func (c *Client) EvaluateFlag(ctx context.Context, key string, evalCtx map[string]any) (FlagEvaluation, error) {
	s, err := evalContext(evalCtx)
	if err != nil {
		return FlagEvaluation{}, err
	}
	resp, err := unary(ctx, c.flagsRPC.Evaluate, &meridianv1.EvaluateFlagRequest{Key: key, Context: s})
	if err != nil {
		return FlagEvaluation{}, err
	}
	return evaluationFrom(resp.GetEvaluation()), nil
}

// EvaluateAllFlags evaluates every flag the agent holds for evalCtx (as in
// EvaluateFlag), in key order, and returns the revision of the flag set it
// evaluated (the highest revision among the flags): it changes whenever a
// flag does. A context the agent refuses fails the call with
// ErrInvalidArgument (Field "context").
func (c *Client) EvaluateAllFlags(ctx context.Context, evalCtx map[string]any) ([]FlagEvaluation, uint64, error) {
	s, err := evalContext(evalCtx)
	if err != nil {
		return nil, 0, err
	}
	resp, err := unary(ctx, c.flagsRPC.EvaluateAll, &meridianv1.EvaluateAllFlagsRequest{Context: s})
	if err != nil {
		return nil, 0, err
	}
	out := make([]FlagEvaluation, 0, len(resp.GetEvaluations()))
	for _, e := range resp.GetEvaluations() {
		out = append(out, evaluationFrom(e))
	}
	return out, resp.GetRevision(), nil
}

// SetFlag stores the flag key with definition, flagd's flag format as JSON
// (at most 64 KiB), for every region: one write to the global quorum. It
// returns once this agent's copy holds the change, so an evaluation here
// right after sees it; the other regions' agents see it as soon as their
// watch delivers it. Setting a killed flag revives it. With IfRevision(rev) it is
// stored only if the flag is at revision rev (0: only if it does not exist),
// else it fails with ErrConflict carrying the current revision.
//
// A definition that does not validate fails with ErrInvalidArgument naming
// the field and the rule ("definition.defaultVariant",
// "definition.targeting.if[0]", ...) and nothing is stored. Other errors:
// ErrQuorumUnavailable (whether it was stored is unknown),
// ErrPermissionDenied (the caller may not administer flags).
func (c *Client) SetFlag(ctx context.Context, key string, definition []byte, opts ...WriteOption) (Flag, error) {
	rev, err := flagRevision(opts)
	if err != nil {
		return Flag{}, err
	}
	if !utf8.Valid(definition) {
		return Flag{}, invalidArgument("definition", "must be JSON in UTF-8")
	}
	resp, err := unary(ctx, c.flagsRPC.SetFlag, &meridianv1.SetFlagRequest{Key: key, Definition: string(definition), IfRevision: rev})
	if err != nil {
		return Flag{}, err
	}
	return flagFrom(resp.GetFlag()), nil
}

// GetFlag returns the flag key as this agent holds it (its local copy, as
// evaluations see it), or ErrNotFound.
func (c *Client) GetFlag(ctx context.Context, key string) (Flag, error) {
	resp, err := unary(ctx, c.flagsRPC.GetFlag, &meridianv1.GetFlagRequest{Key: key})
	if err != nil {
		return Flag{}, err
	}
	return flagFrom(resp.GetFlag()), nil
}

// ListFlags returns every flag this agent holds, in key order.
func (c *Client) ListFlags(ctx context.Context) ([]Flag, error) {
	resp, err := unary(ctx, c.flagsRPC.ListFlags, &meridianv1.ListFlagsRequest{})
	if err != nil {
		return nil, err
	}
	out := make([]Flag, 0, len(resp.GetFlags()))
	for _, f := range resp.GetFlags() {
		out = append(out, flagFrom(f))
	}
	return out, nil
}

// KillFlag is the kill switch: from its one global write on, the flag key
// evaluates to variant in every region, whatever its targeting, with reason
// "DISABLED". An empty variant means the flag's variant named "off", else
// its one variant whose value is false; a flag with neither (or a variant
// it does not define) fails with ErrInvalidArgument (Field "variant"). The
// definition is kept: SetFlag revives the flag. With IfRevision it kills
// only at that revision (else ErrConflict); without, it retries a few times
// if another change lands in between. An unknown flag is ErrNotFound.
func (c *Client) KillFlag(ctx context.Context, key, variant string, opts ...WriteOption) (Flag, error) {
	rev, err := flagRevision(opts)
	if err != nil {
		return Flag{}, err
	}
	resp, err := unary(ctx, c.flagsRPC.KillFlag, &meridianv1.KillFlagRequest{Key: key, Variant: variant, IfRevision: rev})
	if err != nil {
		return Flag{}, err
	}
	return flagFrom(resp.GetFlag()), nil
}

// DeleteFlag removes the flag key from every region (with IfRevision, only
// at that revision, else ErrConflict) and returns the revision of the
// deletion. Evaluations of it then report ErrorCode "FLAG_NOT_FOUND". An
// unknown flag is ErrNotFound.
func (c *Client) DeleteFlag(ctx context.Context, key string, opts ...WriteOption) (uint64, error) {
	rev, err := flagRevision(opts)
	if err != nil {
		return 0, err
	}
	resp, err := unary(ctx, c.flagsRPC.DeleteFlag, &meridianv1.DeleteFlagRequest{Key: key, IfRevision: rev})
	if err != nil {
		return 0, err
	}
	return resp.GetRevision(), nil
}
