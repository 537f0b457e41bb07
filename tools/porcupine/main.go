// Command porcupine checks a Meridian chaos history for linearizability
// against a compare-and-set register, one register per key, with
// github.com/anishathalye/porcupine.
//
// Usage:
//
//	porcupine -history history.json -out verdict.json [-html viz.html] [-timeout 60s]
//
// The history is the JSON written by meridian.chaos.history: an object with an
// "events" array. Each event has "index", "type" (invoke|ok|fail|info),
// "process", "region", "f", "key", "value" and "time" (monotonic nanoseconds).
// Only events whose f is read, write or cas take part; others are ignored, so
// a mixed history can be fed as it is.
//
//   - read: invoke value null; ok value is the integer read, or null when the
//     key was absent.
//   - write: value is the integer written.
//   - cas: value is [from, to].
//   - refused: value is [from, to], a cas answered CONFLICT: its ok means the
//     register held something other than from at some instant during the
//     call (CONFLICT promises that a committed write beat the caller).
//
// An invoke is completed by the next event of the same process. A fail means
// the operation certainly did not take effect, so it is dropped. An info (a
// timeout, a lost connection) may or may not have taken effect: it is kept
// with an infinite return time, so Porcupine may linearize it anywhere after
// its call, or never observe it. An invoke with no completion counts as info.
// An info read says nothing and is dropped.
//
// The verdict is JSON: {"result": "Ok"|"Illegal"|"Unknown", "valid": bool,
// "keys": {key: result}, "operations": n, "indeterminate": n, "html": path}.
// The exit code is 0 whatever the verdict; 2 means the tool itself failed.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

type event struct {
	Index   int             `json:"index"`
	Type    string          `json:"type"`
	Process int             `json:"process"`
	Region  string          `json:"region"`
	F       string          `json:"f"`
	Key     *string         `json:"key"`
	Value   json.RawMessage `json:"value"`
	Time    int64           `json:"time"`
}

type history struct {
	Events []event `json:"events"`
}

// absent is the register's value before any write (the key does not exist).
const absent int64 = math.MinInt64

type input struct {
	Op    string // "read", "write", "cas" or "refused"
	Key   string
	Value int64 // write: the value; cas: to
	From  int64 // cas: the expected value
}

type output struct {
	Value         int64 // read: the value seen
	Indeterminate bool
}

type meta struct {
	Region string
	Index  int
}

func fmtValue(v int64) string {
	if v == absent {
		return "nil"
	}
	return fmt.Sprint(v)
}

var model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(input).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() interface{} { return absent },
	Step: func(state, in, out interface{}) (bool, interface{}) {
		s := state.(int64)
		i := in.(input)
		o := out.(output)
		switch i.Op {
		case "read":
			return o.Value == s, s
		case "write":
			return true, i.Value
		case "cas":
			if s == i.From {
				return true, i.Value
			}
			// An acknowledged CAS needs its expected value; an
			// indeterminate one may simply not have happened.
			return o.Indeterminate, s
		case "refused":
			return s != i.From, s
		}
		return false, s
	},
	Equal: func(a, b interface{}) bool { return a.(int64) == b.(int64) },
	DescribeOperation: func(in, out interface{}) string {
		i := in.(input)
		o := out.(output)
		suffix := ""
		if o.Indeterminate {
			suffix = " (info)"
		}
		switch i.Op {
		case "read":
			if o.Indeterminate {
				return fmt.Sprintf("read(%s) ?", i.Key)
			}
			return fmt.Sprintf("read(%s) -> %s", i.Key, fmtValue(o.Value))
		case "write":
			return fmt.Sprintf("write(%s, %d)%s", i.Key, i.Value, suffix)
		case "refused":
			return fmt.Sprintf("cas(%s, %s -> %d) CONFLICT", i.Key, fmtValue(i.From), i.Value)
		default:
			return fmt.Sprintf("cas(%s, %s -> %d)%s", i.Key, fmtValue(i.From), i.Value, suffix)
		}
	},
	DescribeState: func(state interface{}) string { return fmtValue(state.(int64)) },
	DescribeOperationMetadata: func(info interface{}) string {
		if m, ok := info.(meta); ok {
			return fmt.Sprintf("region %s, event %d", m.Region, m.Index)
		}
		return ""
	},
}

func parseInt(raw json.RawMessage) (int64, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return absent, nil
	}
	var v int64
	err := json.Unmarshal(raw, &v)
	return v, err
}

// operations pairs each invoke with its completion and builds Porcupine operations.
func operations(h history) ([]porcupine.Operation, int, error) {
	pending := map[int]event{}
	var ops []porcupine.Operation
	indeterminate := 0
	emit := func(inv event, done *event) error {
		if inv.Key == nil {
			return fmt.Errorf("event %d: %s has no key", inv.Index, inv.F)
		}
		in := input{Op: inv.F, Key: *inv.Key}
		switch inv.F {
		case "write":
			v, err := parseInt(inv.Value)
			if err != nil || v == absent {
				return fmt.Errorf("event %d: write needs an integer value", inv.Index)
			}
			in.Value = v
		case "cas", "refused":
			var pair []json.RawMessage
			if err := json.Unmarshal(inv.Value, &pair); err != nil || len(pair) != 2 {
				return fmt.Errorf("event %d: cas needs [from, to]", inv.Index)
			}
			from, err1 := parseInt(pair[0])
			to, err2 := parseInt(pair[1])
			if err1 != nil || err2 != nil || to == absent {
				return fmt.Errorf("event %d: cas needs integer [from, to]", inv.Index)
			}
			in.From, in.Value = from, to
		}
		op := porcupine.Operation{ClientId: inv.Process, Input: in, Call: inv.Time, Metadata: meta{inv.Region, inv.Index}}
		if done == nil || done.Type == "info" {
			if inv.F == "read" || inv.F == "refused" {
				return nil // says nothing
			}
			indeterminate++
			op.Output = output{Indeterminate: true}
			op.Return = math.MaxInt64
		} else {
			out := output{}
			if inv.F == "read" {
				v, err := parseInt(done.Value)
				if err != nil {
					return fmt.Errorf("event %d: read must return an integer or null", done.Index)
				}
				out.Value = v
			}
			op.Output = out
			op.Return = done.Time
		}
		ops = append(ops, op)
		return nil
	}
	for _, e := range h.Events {
		if e.F != "read" && e.F != "write" && e.F != "cas" && e.F != "refused" {
			continue
		}
		switch e.Type {
		case "invoke":
			if prev, ok := pending[e.Process]; ok {
				return nil, 0, fmt.Errorf("event %d: process %d invoked again while event %d is open", e.Index, e.Process, prev.Index)
			}
			pending[e.Process] = e
		case "ok", "fail", "info":
			inv, ok := pending[e.Process]
			if !ok {
				return nil, 0, fmt.Errorf("event %d: %s completion without an invoke for process %d", e.Index, e.Type, e.Process)
			}
			delete(pending, e.Process)
			if e.Type == "fail" {
				continue // certainly did not happen
			}
			done := e
			if err := emit(inv, &done); err != nil {
				return nil, 0, err
			}
		default:
			return nil, 0, fmt.Errorf("event %d: unknown type %q", e.Index, e.Type)
		}
	}
	procs := make([]int, 0, len(pending))
	for p := range pending {
		procs = append(procs, p)
	}
	sort.Ints(procs)
	for _, p := range procs {
		if err := emit(pending[p], nil); err != nil {
			return nil, 0, err
		}
	}
	// Porcupine wants zero-based, dense client ids for its visualization.
	ids := map[int]int{}
	for i := range ops {
		id, ok := ids[ops[i].ClientId]
		if !ok {
			id = len(ids)
			ids[ops[i].ClientId] = id
		}
		ops[i].ClientId = id
	}
	return ops, indeterminate, nil
}

type verdict struct {
	Result        porcupine.CheckResult            `json:"result"`
	Valid         bool                             `json:"valid"`
	Keys          map[string]porcupine.CheckResult `json:"keys"`
	Operations    int                              `json:"operations"`
	Indeterminate int                              `json:"indeterminate"`
	HTML          string                           `json:"html,omitempty"`
	Error         string                           `json:"error,omitempty"`
}

func run(historyPath, outPath, htmlPath string, timeout time.Duration) error {
	raw, err := os.ReadFile(historyPath)
	if err != nil {
		return err
	}
	var h history
	if err := json.Unmarshal(raw, &h); err != nil {
		return fmt.Errorf("%s: %w", historyPath, err)
	}
	ops, indeterminate, err := operations(h)
	if err != nil {
		return fmt.Errorf("%s: %w", historyPath, err)
	}
	v := verdict{Keys: map[string]porcupine.CheckResult{}, Operations: len(ops), Indeterminate: indeterminate}
	for _, part := range model.Partition(ops) {
		key := part[0].Input.(input).Key
		v.Keys[key] = porcupine.CheckOperationsTimeout(model, part, timeout)
	}
	v.Result = porcupine.Ok
	for _, r := range v.Keys {
		if r == porcupine.Illegal {
			v.Result = porcupine.Illegal
			break
		}
		if r == porcupine.Unknown {
			v.Result = porcupine.Unknown
		}
	}
	v.Valid = v.Result == porcupine.Ok
	if htmlPath != "" {
		_, info := porcupine.CheckOperationsVerbose(model, ops, timeout)
		if err := porcupine.VisualizePath(model, info, htmlPath); err != nil {
			return err
		}
		v.HTML = htmlPath
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if outPath == "" || outPath == "-" {
		_, err = os.Stdout.Write(append(out, '\n'))
		return err
	}
	return os.WriteFile(outPath, append(out, '\n'), 0o644)
}

func main() {
	historyPath := flag.String("history", "", "JSON history to check (required)")
	outPath := flag.String("out", "-", "where to write the verdict JSON (- for stdout)")
	htmlPath := flag.String("html", "", "where to write Porcupine's HTML visualization")
	timeout := flag.Duration("timeout", time.Minute, "give up (result Unknown) after this long per key")
	flag.Parse()
	if *historyPath == "" {
		fmt.Fprintln(os.Stderr, "porcupine: -history is required")
		os.Exit(2)
	}
	if err := run(*historyPath, *outPath, *htmlPath, *timeout); err != nil {
		fmt.Fprintf(os.Stderr, "porcupine: %v\n", err)
		os.Exit(2)
	}
}
