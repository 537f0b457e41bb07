package meridian

// testdata/errors.json, the agent's error table written out by
// scripts/gen-vectors, against this SDK: its codeTable, its sentinels and
// what fromRPC and fromItem make of each row. Python and Rust check the same
// file.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

var errorsTablePath = filepath.Join("..", "..", "..", "testdata", "errors.json")

type errorsTable struct {
	About  string          `json:"about"`
	Domain string          `json:"domain"`
	Errors []errorTableRow `json:"errors"`
}

type errorTableRow struct {
	Code       Code       `json:"code"`
	GRPCCode   codes.Code `json:"grpc_code"` // codes.Code reads "ABORTED" and the like
	HTTPStatus int        `json:"http_status"`
	Retryable  bool       `json:"retryable"`
}

// sentinels is every Err* value but ErrCanceled, which the agent never sends.
var sentinels = []error{
	ErrInvalidArgument, ErrNotFound, ErrConflict, ErrClockSkew, ErrQuorumUnavailable,
	ErrUnavailable, ErrDeadlineExceeded, ErrInternal, ErrFenced, ErrIdempotencyInProgress,
	ErrIdempotencyMismatch, ErrResourceExhausted, ErrPermissionDenied, ErrResidencyViolation,
}

func loadErrorsTable(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile(errorsTablePath)
	if err != nil {
		t.Fatalf("read %s: %v", errorsTablePath, err)
	}
	return raw
}

// errorsTableProblems says what is wrong with raw as the error table, by
// this SDK's codeTable; nil when nothing is.
func errorsTableProblems(raw []byte, table map[Code]codeRow) []string {
	var doc errorsTable
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return []string{"not an error table: " + err.Error()}
	}
	var problems []string
	if doc.Domain != errorDomain {
		problems = append(problems, fmt.Sprintf("domain is %q, the SDK reads %q", doc.Domain, errorDomain))
	}
	seen := map[Code]bool{}
	for i, row := range doc.Errors {
		if seen[row.Code] {
			problems = append(problems, fmt.Sprintf("row %d: %s appears twice", i, row.Code))
			continue
		}
		seen[row.Code] = true
		want, ok := table[row.Code]
		if !ok {
			problems = append(problems, fmt.Sprintf("row %d: %s is not a code this SDK knows", i, row.Code))
			continue
		}
		got := codeRow{row.GRPCCode, row.HTTPStatus, row.Retryable}
		if got != want {
			problems = append(problems, fmt.Sprintf("row %d: %s is %+v in the file, %+v in the SDK", i, row.Code, got, want))
		}
	}
	for code := range table {
		if !seen[code] {
			problems = append(problems, fmt.Sprintf("%s is in the SDK but has no row", code))
		}
	}
	slices.Sort(problems)
	return problems
}

func TestErrorsTableMatchesTheSDK(t *testing.T) {
	if problems := errorsTableProblems(loadErrorsTable(t), codeTable); problems != nil {
		t.Fatalf("testdata/errors.json and codeTable differ:\n%v", problems)
	}
}

func TestEveryCodeOfTheTableDecodes(t *testing.T) {
	var doc errorsTable
	if err := json.Unmarshal(loadErrorsTable(t), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Errors) != len(sentinels) {
		t.Fatalf("%d rows, %d sentinels", len(doc.Errors), len(sentinels))
	}
	for _, row := range doc.Errors {
		// What the agent sends for the row: its gRPC code and its reason.
		err := fromRPC(agentStatus(row.GRPCCode, row.Code, "why", nil).Err(), nil)
		if err.Code != row.Code || status.Code(err) != row.GRPCCode {
			t.Errorf("%s: decoded as %s with gRPC code %v", row.Code, err.Code, status.Code(err))
		}
		var matched []error
		for _, s := range sentinels {
			if errors.Is(err, s) {
				matched = append(matched, s)
			}
		}
		if len(matched) != 1 {
			t.Errorf("%s matches %d sentinels: %v", row.Code, len(matched), matched)
		}
		// A batch item carries only the code: the table gives its status.
		item := fromItem(&meridianv1.ItemError{Code: string(row.Code), Message: "why"})
		if status.Code(item) != row.GRPCCode || !errors.Is(item, matched[0]) {
			t.Errorf("item %s: gRPC code %v", row.Code, status.Code(item))
		}
	}
}

func TestErrorsTableCheckerNoticesAWrongRow(t *testing.T) {
	raw := loadErrorsTable(t)
	broken := func(change func(*errorsTable)) []byte {
		var doc errorsTable
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		change(&doc)
		out, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	conflict := func(doc *errorsTable) *errorTableRow {
		for i := range doc.Errors {
			if doc.Errors[i].Code == CodeConflict {
				return &doc.Errors[i]
			}
		}
		t.Fatal("no CONFLICT row")
		return nil
	}
	for name, doc := range map[string][]byte{
		"wrong gRPC code": broken(func(d *errorsTable) { conflict(d).GRPCCode = codes.FailedPrecondition }),
		"wrong HTTP":      broken(func(d *errorsTable) { conflict(d).HTTPStatus = 412 }),
		"wrong retryable": broken(func(d *errorsTable) { conflict(d).Retryable = true }),
		"missing row": broken(func(d *errorsTable) {
			d.Errors = slices.DeleteFunc(d.Errors, func(r errorTableRow) bool { return r.Code == CodeConflict })
		}),
		"unknown code": broken(func(d *errorsTable) {
			d.Errors = append(d.Errors, errorTableRow{Code: "TEAPOT", GRPCCode: codes.Aborted})
		}),
		"duplicate row":    broken(func(d *errorsTable) { d.Errors = append(d.Errors, *conflict(d)) }),
		"wrong domain":     broken(func(d *errorsTable) { d.Domain = "example.com" }),
		"unknown gRPC":     []byte(`{"domain": "meridian.dev", "errors": [{"code": "CONFLICT", "grpc_code": "NO_SUCH_CODE", "http_status": 409, "retryable": false}]}`),
		"unexpected field": []byte(`{"domain": "meridian.dev", "errors": [], "extra": 1}`),
	} {
		if problems := errorsTableProblems(doc, codeTable); len(problems) == 0 {
			t.Errorf("%s: not noticed", name)
		}
	}
	tooFew := map[Code]codeRow{}
	for code, row := range codeTable {
		if code != CodeFenced {
			tooFew[code] = row
		}
	}
	if problems := errorsTableProblems(raw, tooFew); !slices.Contains(problems, "row 8: FENCED is not a code this SDK knows") {
		t.Errorf("a row the SDK lacks: %v", problems)
	}
}
