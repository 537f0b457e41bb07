package meridian

import (
	"context"
	"errors"
	"io"
	"iter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meridian-rt/meridian/sdk/go/hlc"
	meridianv1 "github.com/meridian-rt/meridian/sdk/go/meridianpb/v1"
)

// State is the State API of one agent: reads and writes of keys in the
// keyspaces declared in the agent's configuration. Get it from
// Client.State. It is safe for concurrent use.
type State struct {
	rpc meridianv1.StateServiceClient
}

// Level is a read consistency level.
type Level int

// The levels, in the order of the proto enum.
const (
	LevelUnspecified Level = iota
	// LevelStrong is linearizable: the latest acknowledged write.
	LevelStrong
	// LevelBounded is at most a given staleness old.
	LevelBounded
	// LevelEventual is the agent's cache, kept current by the change feed.
	LevelEventual
)

func (l Level) String() string {
	switch l {
	case LevelStrong:
		return "strong"
	case LevelBounded:
		return "bounded"
	case LevelEventual:
		return "eventual"
	}
	return "unspecified"
}

// Consistency is what a read asks for: Strong(), Bounded(d) or Eventual().
// It is a ReadOption and a ScanOption. Without one, the agent uses the
// keyspace's default: Strong for Get on a global keyspace, Eventual
// otherwise.
type Consistency struct {
	level        Level
	maxStaleness time.Duration
}

// Strong reads the latest acknowledged write (global keyspaces only).
func Strong() Consistency { return Consistency{level: LevelStrong} }

// Bounded reads a value at most maxStaleness old. On a global keyspace the
// agent serves it from its cache when it can prove the cache is fresh
// enough, else as Strong; on a replicated keyspace it fails with
// ErrUnavailable when it can't prove that. maxStaleness must be positive.
func Bounded(maxStaleness time.Duration) Consistency {
	return Consistency{level: LevelBounded, maxStaleness: maxStaleness}
}

// Eventual reads the agent's cache.
func Eventual() Consistency { return Consistency{level: LevelEventual} }

func (c Consistency) proto() *meridianv1.Consistency {
	out := &meridianv1.Consistency{Level: meridianv1.Consistency_Level(c.level)}
	if c.level == LevelBounded {
		out.MaxStaleness = durationpb.New(c.maxStaleness)
	}
	return out
}

func (c Consistency) applyRead(o *readOptions) { o.consistency = &c }
func (c Consistency) applyScan(o *scanOptions) { o.consistency = &c }

// ReadOption configures Get: a Consistency.
type ReadOption interface{ applyRead(*readOptions) }

type readOptions struct{ consistency *Consistency }

// Entry is one stored value.
type Entry struct {
	Key   string
	Value []byte
	// Revision increases with every write to the keyspace; use it with
	// IfRevision for compare-and-set.
	Revision uint64
	// HLC is the hybrid logical clock timestamp of the write.
	HLC hlc.Timestamp
	// Region is the region whose agent made the write.
	Region string
	// Counter is the value of a key of a counter keyspace (Value is empty).
	Counter int64
	// Elements are the elements of a key of a set keyspace, sorted (Value is empty).
	Elements []string
	// Siblings are the concurrent values of a key of a multi_value keyspace,
	// oldest first; Value is the newest. Name their HLCs in Supersedes to
	// resolve them.
	Siblings []Sibling
}

// Sibling is one of several concurrent values of a multi_value key.
type Sibling struct {
	Value  []byte
	HLC    hlc.Timestamp
	Region string
}

// ReadResult is the answer to Get: the entry, and how it was served.
type ReadResult struct {
	Entry
	// Served is the level actually served: a Bounded read of a global
	// keyspace may be served as Strong.
	Served Level
	// StalenessBound is how stale the answer may be: zero for Strong.
	StalenessBound time.Duration
}

// WriteResult is the outcome of an acknowledged write.
type WriteResult struct {
	// Revision is the key's new revision.
	Revision uint64
	// HLC is the write's timestamp.
	HLC hlc.Timestamp
}

func entryFrom(e *meridianv1.Entry) Entry {
	out := Entry{
		Key:      e.GetKey(),
		Value:    e.GetValue(),
		Revision: e.GetRevision(),
		HLC:      hlc.FromInt(e.GetHlc()),
		Region:   e.GetRegion(),
		Counter:  e.GetCounter(),
		Elements: e.GetElements(),
	}
	for _, s := range e.GetSiblings() {
		out.Siblings = append(out.Siblings, Sibling{Value: s.GetValue(), HLC: hlc.FromInt(s.GetHlc()), Region: s.GetRegion()})
	}
	return out
}

func writeFrom(w *meridianv1.WriteResponse) WriteResult {
	return WriteResult{Revision: w.GetRevision(), HLC: hlc.FromInt(w.GetHlc())}
}

// unary runs one call with its trailer captured, and turns a failure into
// an *Error.
func unary[Req, Resp any](ctx context.Context, call func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	var trailer metadata.MD
	resp, err := call(ctx, req, grpc.Trailer(&trailer))
	if err != nil {
		var zero Resp
		return zero, fromRPC(err, trailer)
	}
	return resp, nil
}

// Get reads key. It fails with ErrNotFound if the key does not exist.
func (s *State) Get(ctx context.Context, keyspace, key string, opts ...ReadOption) (ReadResult, error) {
	req := &meridianv1.GetRequest{Keyspace: keyspace, Key: key, Consistency: readConsistency(opts)}
	resp, err := unary(ctx, s.rpc.Get, req)
	if err != nil {
		return ReadResult{}, err
	}
	return readResultFrom(resp), nil
}

// readConsistency is the consistency the read options ask for (nil: the agent's default).
func readConsistency(opts []ReadOption) *meridianv1.Consistency {
	var o readOptions
	for _, opt := range opts {
		opt.applyRead(&o)
	}
	if o.consistency == nil {
		return nil
	}
	return o.consistency.proto()
}

func readResultFrom(r *meridianv1.GetResponse) ReadResult {
	return ReadResult{
		Entry:          entryFrom(r.GetEntry()),
		Served:         Level(r.GetServed()),
		StalenessBound: r.GetStalenessBound().AsDuration(),
	}
}

// ManyRead is one key's outcome in GetMany: its ReadResult, or its own error
// (ErrNotFound for a missing key).
type ManyRead struct {
	ReadResult
	Err error
}

// GetMany reads up to 1000 keys of one keyspace at one consistency in one
// call, for throughput; the results are in the order of keys, each as Get
// would have read it. A missing key is that key's ErrNotFound. A bad request
// (keyspace, consistency, a key) fails the whole call with
// ErrInvalidArgument naming the field ("keys[i]").
func (s *State) GetMany(ctx context.Context, keyspace string, keys []string, opts ...ReadOption) ([]ManyRead, error) {
	req := &meridianv1.GetManyRequest{Keyspace: keyspace, Keys: keys, Consistency: readConsistency(opts)}
	resp, err := unary(ctx, s.rpc.GetMany, req)
	if err != nil {
		return nil, err
	}
	out := make([]ManyRead, len(resp.GetResults()))
	for i, r := range resp.GetResults() {
		if e := r.GetError(); e != nil {
			out[i].Err = fromItem(e)
			continue
		}
		out[i].ReadResult = readResultFrom(r.GetResponse())
	}
	return out, nil
}

// PutItem is one write of PutMany, with the arguments of Put.
type PutItem struct {
	Keyspace string
	Key      string
	Value    []byte
	// IfRevision, when set, makes the write a compare-and-set (global keyspaces).
	IfRevision *uint64
}

// ManyWrite is one write's outcome in PutMany: its WriteResult, or its own
// error (ErrConflict with the current revision, ErrQuorumUnavailable, ...).
type ManyWrite struct {
	WriteResult
	Err error
}

// PutMany makes up to 1000 independent Puts (8 MiB of values in all) in one
// call, for throughput; not a transaction. Every Put is checked first: a bad
// one fails the call with ErrInvalidArgument naming "puts[i].<field>", and
// nothing is written. Then each is written, with its own result, in order.
func (s *State) PutMany(ctx context.Context, puts []PutItem) ([]ManyWrite, error) {
	req := &meridianv1.PutManyRequest{Puts: make([]*meridianv1.PutRequest, len(puts))}
	for i, p := range puts {
		req.Puts[i] = &meridianv1.PutRequest{Keyspace: p.Keyspace, Key: p.Key, Value: p.Value, IfRevision: p.IfRevision}
	}
	resp, err := unary(ctx, s.rpc.PutMany, req)
	if err != nil {
		return nil, err
	}
	out := make([]ManyWrite, len(resp.GetResults()))
	for i, r := range resp.GetResults() {
		if e := r.GetError(); e != nil {
			out[i].Err = fromItem(e)
			continue
		}
		out[i].WriteResult = writeFrom(r.GetWritten())
	}
	return out, nil
}

// WriteOption configures Put and Delete, and the flag changes SetFlag,
// KillFlag and DeleteFlag (IfRevision only).
type WriteOption func(*writeOptions)

type writeOptions struct {
	ifRevision *uint64
	supersedes []uint64
}

// IfRevision makes a Put or Delete conditional: it happens only if the key's
// current revision is exactly rev, else it fails with ErrConflict carrying
// the current revision (global keyspaces). It makes a flag change
// conditional the same way, on the flag's Revision (0 for SetFlag: only if
// the flag does not exist yet).
func IfRevision(rev uint64) WriteOption {
	return func(o *writeOptions) { o.ifRevision = &rev }
}

// Supersedes names the sibling HLCs a Put to a multi_value key resolves
// (and any older sibling from the same regions). Put only.
func Supersedes(hlcs ...hlc.Timestamp) WriteOption {
	return func(o *writeOptions) {
		for _, h := range hlcs {
			o.supersedes = append(o.supersedes, h.Int())
		}
	}
}

// Put writes key. Without IfRevision it writes unconditionally.
func (s *State) Put(ctx context.Context, keyspace, key string, value []byte, opts ...WriteOption) (WriteResult, error) {
	var o writeOptions
	for _, opt := range opts {
		opt(&o)
	}
	req := &meridianv1.PutRequest{Keyspace: keyspace, Key: key, Value: value, IfRevision: o.ifRevision, Supersedes: o.supersedes}
	resp, err := unary(ctx, s.rpc.Put, req)
	if err != nil {
		return WriteResult{}, err
	}
	return writeFrom(resp), nil
}

// Create writes key only if it does not exist (or was deleted), else it
// fails with ErrConflict carrying the current revision (global keyspaces).
func (s *State) Create(ctx context.Context, keyspace, key string, value []byte) (WriteResult, error) {
	resp, err := unary(ctx, s.rpc.Create, &meridianv1.CreateRequest{Keyspace: keyspace, Key: key, Value: value})
	if err != nil {
		return WriteResult{}, err
	}
	return writeFrom(resp), nil
}

// Delete removes key; with IfRevision, only at that revision.
func (s *State) Delete(ctx context.Context, keyspace, key string, opts ...WriteOption) (WriteResult, error) {
	var o writeOptions
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.supersedes) > 0 {
		return WriteResult{}, &Error{
			Code: CodeInvalidArgument, Message: "supersedes: applies to Put only",
			Field: "supersedes", Rule: "applies to Put only",
			Violations: []FieldViolation{{Field: "supersedes", Rule: "applies to Put only"}},
		}
	}
	resp, err := unary(ctx, s.rpc.Delete, &meridianv1.DeleteRequest{Keyspace: keyspace, Key: key, IfRevision: o.ifRevision})
	if err != nil {
		return WriteResult{}, err
	}
	return writeFrom(resp), nil
}

// Increment adds delta (which may be negative) to a key of a counter
// keyspace. Read the total with Get: Entry.Counter.
func (s *State) Increment(ctx context.Context, keyspace, key string, delta int64) (WriteResult, error) {
	resp, err := unary(ctx, s.rpc.Increment, &meridianv1.IncrementRequest{Keyspace: keyspace, Key: key, Delta: delta})
	if err != nil {
		return WriteResult{}, err
	}
	return writeFrom(resp), nil
}

// SetAdd adds elements to a key of a set keyspace. When an add and a remove
// of the same element are concurrent, the add wins.
func (s *State) SetAdd(ctx context.Context, keyspace, key string, elements ...string) (WriteResult, error) {
	resp, err := unary(ctx, s.rpc.SetAdd, &meridianv1.SetRequest{Keyspace: keyspace, Key: key, Elements: elements})
	if err != nil {
		return WriteResult{}, err
	}
	return writeFrom(resp), nil
}

// SetRemove removes from a key of a set keyspace the elements this region
// has seen.
func (s *State) SetRemove(ctx context.Context, keyspace, key string, elements ...string) (WriteResult, error) {
	resp, err := unary(ctx, s.rpc.SetRemove, &meridianv1.SetRequest{Keyspace: keyspace, Key: key, Elements: elements})
	if err != nil {
		return WriteResult{}, err
	}
	return writeFrom(resp), nil
}

// ScanOption configures Scan and ScanPage: a Consistency, Limit, PageToken.
type ScanOption interface{ applyScan(*scanOptions) }

type scanOptions struct {
	consistency *Consistency
	limit       uint32
	pageToken   string
}

type scanOption func(*scanOptions)

func (f scanOption) applyScan(o *scanOptions) { f(o) }

// Limit sets the page size of a scan: at most n entries per page (the agent's
// default is 100, its maximum 1000).
func Limit(n uint32) ScanOption { return scanOption(func(o *scanOptions) { o.limit = n }) }

// PageToken continues a ScanPage from Page.NextPageToken.
func PageToken(token string) ScanOption {
	return scanOption(func(o *scanOptions) { o.pageToken = token })
}

// Page is one page of a scan.
type Page struct {
	Entries []Entry
	// NextPageToken continues the scan (PageToken); "" on the last page.
	NextPageToken string
	Served        Level
	// StalenessBound is how stale the page may be: zero for Strong.
	StalenessBound time.Duration
}

// ScanPage lists keys under prefix ("" for all) in key order, one page.
// Scans read Eventual by default.
func (s *State) ScanPage(ctx context.Context, keyspace, prefix string, opts ...ScanOption) (Page, error) {
	var o scanOptions
	for _, opt := range opts {
		opt.applyScan(&o)
	}
	req := &meridianv1.ScanRequest{Keyspace: keyspace, Prefix: prefix, Limit: o.limit, PageToken: o.pageToken}
	if o.consistency != nil {
		req.Consistency = o.consistency.proto()
	}
	resp, err := unary(ctx, s.rpc.Scan, req)
	if err != nil {
		return Page{}, err
	}
	page := Page{
		NextPageToken:  resp.GetNextPageToken(),
		Served:         Level(resp.GetServed()),
		StalenessBound: resp.GetStalenessBound().AsDuration(),
	}
	for _, e := range resp.GetEntries() {
		page.Entries = append(page.Entries, entryFrom(e))
	}
	return page, nil
}

// Scan iterates over every entry under prefix in key order, fetching pages
// as it goes (Limit sets their size; PageToken resumes). An error ends the iteration after it
// is yielded:
//
//	for e, err := range st.Scan(ctx, "accounts", "al") {
//		if err != nil { return err }
//		...
//	}
//
// Each page is a separate read: a long scan is not a snapshot.
func (s *State) Scan(ctx context.Context, keyspace, prefix string, opts ...ScanOption) iter.Seq2[Entry, error] {
	return func(yield func(Entry, error) bool) {
		var o scanOptions
		for _, opt := range opts {
			opt.applyScan(&o)
		}
		token := o.pageToken
		for {
			page, err := s.ScanPage(ctx, keyspace, prefix, append(opts[:len(opts):len(opts)], PageToken(token))...)
			if err != nil {
				yield(Entry{}, err)
				return
			}
			for _, e := range page.Entries {
				if !yield(e, nil) {
					return
				}
			}
			if page.NextPageToken == "" {
				return
			}
			token = page.NextPageToken
		}
	}
}

// EventKind says what happened to a key.
type EventKind int

// The kinds of WatchEvent.
const (
	// EventPut: the key now has Entry.
	EventPut EventKind = iota + 1
	// EventDelete: the key was deleted; Entry has its key and revision.
	EventDelete
)

func (k EventKind) String() string {
	if k == EventDelete {
		return "delete"
	}
	return "put"
}

// WatchEvent is one change to a watched key.
type WatchEvent struct {
	Kind  EventKind
	Entry Entry
}

// WatchOption configures Watch.
type WatchOption func(*meridianv1.WatchRequest)

// FromRevision makes Watch first replay the changes from revision rev on
// (global keyspaces keep the last 64 changes of each key; replicated ones
// the merged state after each change still held), then follow new ones.
func FromRevision(rev uint64) WatchOption {
	return func(r *meridianv1.WatchRequest) { r.FromRevision = &rev }
}

// Watch follows every change to keys under prefix, in the order this
// region applied them, starting with the next change (or FromRevision).
// The stream opens when iteration starts and closes when the loop exits or
// ctx is done. It never ends on its own: an error (the agent went away,
// ctx was canceled) is yielded last.
//
//	for ev, err := range st.Watch(ctx, "accounts", "al") {
//		if err != nil { return err }
//		fmt.Println(ev.Kind, ev.Entry.Key, ev.Entry.Revision)
//	}
func (s *State) Watch(ctx context.Context, keyspace, prefix string, opts ...WatchOption) iter.Seq2[WatchEvent, error] {
	return func(yield func(WatchEvent, error) bool) {
		req := &meridianv1.WatchRequest{Keyspace: keyspace, Prefix: prefix}
		for _, opt := range opts {
			opt(req)
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel() // ends the stream when the caller stops iterating
		stream, err := s.rpc.Watch(ctx, req)
		if err != nil {
			yield(WatchEvent{}, fromRPC(err, nil))
			return
		}
		for {
			ev, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					// The agent ended the stream cleanly; it only does so
					// when shutting down.
					err = &Error{Code: CodeUnavailable, Message: "the agent ended the watch"}
				} else {
					err = fromRPC(err, stream.Trailer())
				}
				yield(WatchEvent{}, err)
				return
			}
			kind := EventPut
			if ev.GetKind() == meridianv1.WatchEvent_KIND_DELETE {
				kind = EventDelete
			}
			if !yield(WatchEvent{Kind: kind, Entry: entryFrom(ev.GetEntry())}, nil) {
				return
			}
		}
	}
}
