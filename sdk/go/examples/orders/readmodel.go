package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meridian-rt/meridian/sdk/go/meridian"
)

// readModel is this region's view of every order's status, built from the
// events of topicOrders published in every region. It lives in memory, so
// it is rebuilt from the start of the stream whenever the process starts.
type readModel struct {
	mu     sync.RWMutex
	status map[string]string // order id -> status
}

func newReadModel() *readModel { return &readModel{status: map[string]string{}} }

// rank orders the statuses: an order only moves forward. Events of one
// order from different regions (placed in one, cancelled in another) may
// arrive in either order; applying them by rank gives the same model
// whatever the order, and however often each is delivered.
var rank = map[string]int{statusPlaced: 1, statusCancelled: 2}

var eventStatus = map[string]string{eventPlaced: statusPlaced, eventCancelled: statusCancelled}

// apply folds one event into the model; it reports false for an event it
// does not know.
func (m *readModel) apply(e OrderEvent) bool {
	next, ok := eventStatus[e.Type]
	if !ok || e.OrderID == "" {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if rank[next] > rank[m.status[e.OrderID]] {
		m.status[e.OrderID] = next
	}
	return true
}

func (m *readModel) get(id string) (string, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	s, ok := m.status[id]
	return s, ok
}

// summary is the body of GET /readmodel. Two regions whose models hold the
// same orders in the same statuses have the same hashes.
type summary struct {
	Count    int            `json:"count"`
	ByStatus map[string]int `json:"by_status"`
	// IDsHash is the SHA-256 of the sorted order ids, one per line.
	IDsHash string `json:"ids_hash"`
	// StateHash is the SHA-256 of the sorted "<id> <status>" lines.
	StateHash string `json:"state_hash"`
}

func (m *readModel) summary() summary {
	m.mu.RLock()
	ids := make([]string, 0, len(m.status))
	for id := range m.status {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := summary{Count: len(ids), ByStatus: map[string]int{}}
	idsHash, stateHash := sha256.New(), sha256.New()
	for _, id := range ids {
		st := m.status[id]
		out.ByStatus[st]++
		fmt.Fprintf(idsHash, "%s\n", id)
		fmt.Fprintf(stateHash, "%s %s\n", id, st)
	}
	m.mu.RUnlock()
	out.IDsHash = hex.EncodeToString(idsHash.Sum(nil))
	out.StateHash = hex.EncodeToString(stateHash.Sum(nil))
	return out
}

// handle is the subscription's handler. An event it can't read is
// returned as an error: after a few attempts the agent moves it to the
// dead-letter stream, where someone can look at it.
func (m *readModel) handle(_ context.Context, d meridian.Delivery) error {
	var e OrderEvent
	if err := json.Unmarshal(d.Event.Payload, &e); err != nil {
		return fmt.Errorf("event %s: %w", d.Event.EventID, err)
	}
	if !m.apply(e) {
		return fmt.Errorf("event %s: unknown type %q or no order_id", d.Event.EventID, e.Type)
	}
	return nil
}

// readModelGroup is the consumer group of the read model in region at
// version: one per region, so that each region's model sees every event,
// and one per version, so that while two versions run side by side (a
// rollout) neither takes events from the other's model.
func readModelGroup(region, version string) string {
	v := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + ('a' - 'A')
		}
		return '-'
	}, version)
	g := "orders-readmodel-" + region + "-" + v
	if len(g) > 64 { // the agent's limit on group names
		g = g[:64]
	}
	return g
}

// run feeds the model until ctx is done: it first moves the group back to
// the start of the stream (the model is empty at start-up), then
// subscribes, and subscribes again after the stream fails, where the group
// left off. It returns nil once ctx is done.
//
// One instance per region and version holds the whole model. Instances of
// one version in one region share the group and so split its events; give
// each its own group to have each hold everything.
func (m *readModel) run(ctx context.Context, ev *meridian.Events, group string, log *slog.Logger) error {
	source := meridian.Topic(topicOrders)
	backoff := newBackoff()
	for {
		err := ev.Replay(ctx, group, source, meridian.StartSequence(1))
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("read model: replay from the start failed; retrying", "group", group, "err", err)
		if !backoff.wait(ctx) {
			return nil
		}
	}
	for {
		err := ev.Subscribe(ctx, group, source, m.handle, meridian.MaxInFlight(256))
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, meridian.ErrInvalidArgument) {
			return fmt.Errorf("read model: the agent refused the subscription: %w", err)
		}
		log.Warn("read model: subscription ended; subscribing again", "group", group, "err", err)
		if !backoff.wait(ctx) {
			return nil
		}
	}
}

// backoff waits 100 ms, then twice as long each time, up to 5 s.
type backoff struct{ next time.Duration }

func newBackoff() *backoff { return &backoff{next: 100 * time.Millisecond} }

// wait sleeps, or returns false as soon as ctx is done.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(2*b.next, 5*time.Second)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// getSummary is GET /readmodel.
func (m *readModel) getSummary(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, m.summary())
}

// getOrder is GET /readmodel/{id}.
func (m *readModel) getOrder(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	st, ok := m.get(id)
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "no order "+id+" in this region's read model (yet)")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": id, "status": st})
}
